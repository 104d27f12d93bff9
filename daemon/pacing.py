"""A shared pace for logins and handshakes: at most `rate` turns a second.

A thousand accounts that lose GWS at once (it restarted) would otherwise all
log in and handshake within the same second: a herd GWS answers slowly, or
not at all. Each turn is given a slot of its own, first come first served,
1/rate seconds after the previous one; waiting for a slot costs nothing while
the pace is not reached. The spacing is measured when a turn is given, not
planned ahead, so an event loop running late never releases a bunch at once.
"""

from __future__ import annotations

import asyncio
import time


class Pacer:
    def __init__(self, rate: float) -> None:
        """`rate`: turns per second (> 0)."""
        self._interval = 1.0 / rate
        self._last = -self._interval
        self._queue = asyncio.Lock()  # first come, first served

    async def turn(self) -> None:
        """Return when it is this caller's turn."""
        async with self._queue:
            wait = self._last + self._interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._last = time.monotonic()
