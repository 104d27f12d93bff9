"""`wait_until`: the one way tests and benchmarks wait for something to happen.

Nothing sleeps for synchronisation: a wait polls a condition (every POLL_SECONDS)
until it holds, and fails with an AssertionError naming what was awaited when its
deadline passes first.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar, overload

POLL_SECONDS: Final = 0.01

T = TypeVar("T")


@overload
async def wait_until(
    condition: Callable[[], Awaitable[T]], *, timeout: float, what: str = ...
) -> T: ...


@overload
async def wait_until(condition: Callable[[], T], *, timeout: float, what: str = ...) -> T: ...


async def wait_until(
    condition: Callable[[], object], *, timeout: float, what: str = "a condition"
) -> object:
    """Poll `condition` (sync or async) until it returns something truthy; return that.

    The deadline bounds the whole wait, a slow async condition included. An exception
    raised by the condition propagates at once (a condition may raise to give up early).
    """
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            while True:
                result = condition()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return result
                await asyncio.sleep(POLL_SECONDS)
    except TimeoutError:
        if not scope.expired():
            raise  # the condition's own timeout, not ours
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}") from None
