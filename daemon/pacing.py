"""A shared pace for logins and handshakes: at most `rate` turns a second.

A thousand accounts that lose GWS at once (it restarted) would otherwise all
log in and handshake within the same second: a herd GWS answers slowly, or
not at all. Each turn is given a slot of its own, first come first served,
1/rate seconds after the previous one; waiting for a slot costs nothing while
the pace is not reached.
"""

from __future__ import annotations

import asyncio
import time


class Pacer:
    def __init__(self, rate: float) -> None:
        """`rate`: turns per second (> 0)."""
        self._interval = 1.0 / rate
        self._next = 0.0

    async def turn(self) -> None:
        """Return when it is this caller's turn."""
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)
