"""Waiting on the client's own events: a pause that `close()` cuts short, and work
that `close()` (or a request for a new handshake) cancels.

Plain asyncio helpers; they know nothing of Bayeux.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def pause(seconds: float, stop: asyncio.Event) -> None:
    """Wait `seconds`, or until `stop` is set."""
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)


async def done_unless(work: asyncio.Future[Any], stop: asyncio.Event) -> bool:
    """Wait for `work`, or until `stop` is set: then cancel it. True if `work` is done."""
    try:
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        return work.done() and not work.cancelled()
    finally:
        if not work.done():
            work.cancel()
            with contextlib.suppress(BaseException):
                await work
