"""Steady demo traffic: call, device and chat notifications for random subscribed users.

While the rate (`settings.activity_per_second`, read afresh every few hundred
milliseconds, so a runtime change takes effect at once) is above zero, `run()`
publishes about that many notifications a second in total, each for one user
drawn at random among those with a subscribed Bayeux client, its kind drawn
among `KINDS`.

Rules it keeps: the gaps are jittered around 1/rate (uniform, ±50 %), never
bunched; after a stall (a busy event loop) it does not catch up in a burst but
picks up from now; it publishes nothing while no user is subscribed; it never
blocks and stops as soon as its task is cancelled. Whom to pick and how to
publish are the caller's (`subscribed`, `publish`): this module knows neither
Bayeux nor GWS.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from typing import Final

__all__ = ["KINDS", "Activity"]

KINDS: Final = ("call", "device", "chat")
# How often a rate of zero (or a changed rate) is looked at again.
_LOOK_AGAIN_SECONDS: Final = 0.2
# Behind by more than this, the schedule restarts from now instead of catching up.
_MAX_LAG_SECONDS: Final = 0.25


class Activity:
    """Publishes at a rate to random subscribed users until cancelled."""

    def __init__(
        self,
        *,
        rate: Callable[[], float],
        subscribed: Callable[[], Sequence[str]],
        publish: Callable[[str, str], object],
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`subscribed()`: the users one may pick now; `publish(user, kind)`: one notification."""
        self._rate = rate
        self._subscribed = subscribed
        self._publish = publish
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self.published = 0

    async def run(self) -> None:
        """Publish at the rate of the moment, forever (until cancelled)."""
        rate_in_use = 0.0
        due = 0.0
        while True:
            rate = self._rate()
            now = self._clock()
            if rate <= 0:
                rate_in_use = 0.0
                await asyncio.sleep(_LOOK_AGAIN_SECONDS)
                continue
            if rate != rate_in_use or now - due > _MAX_LAG_SECONDS:
                rate_in_use = rate
                due = now + self._gap(rate)
            if due <= now:
                users = self._subscribed()  # once per wake-up, however many are due
                while due <= now:
                    self._publish_one(users)
                    due += self._gap(rate)
            await asyncio.sleep(min(due - now, _LOOK_AGAIN_SECONDS))

    def _gap(self, rate: float) -> float:
        return self._rng.uniform(0.5, 1.5) / rate

    def _publish_one(self, users: Sequence[str]) -> None:
        if users:
            self._publish(self._rng.choice(users), self._rng.choice(KINDS))
            self.published += 1
