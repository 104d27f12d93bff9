"""Capped exponential backoff with full jitter, as plain arithmetic (no sleeping here).

Full jitter (a uniform draw in [0, capped exponential]) spreads the retries
of many clients so that a restarted server never sees them all at once; the
floor keeps a retry from being immediate, which is what a handshake storm is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    floor: float = 0.1

    def ceiling(self, attempt: int) -> float:
        """The capped exponential for retry number `attempt` (1 for the first), unjittered."""
        return min(self.maximum, self.initial * self.multiplier ** min(attempt - 1, 64))

    def delay(self, attempt: int, *, rng: random.Random | None = None) -> float:
        """Delay before retry number `attempt` (1 for the first retry)."""
        if attempt < 1:
            return 0.0
        draw = (rng or _RNG).uniform(0.0, self.ceiling(attempt))
        return max(min(self.floor, self.maximum), draw)


_RNG = random.Random()


@dataclass(slots=True)
class Backoff:
    """A running count of failures against a policy."""

    policy: BackoffPolicy = field(default_factory=BackoffPolicy)
    attempt: int = 0
    rng: random.Random | None = None

    def next_delay(self) -> float:
        self.attempt += 1
        return self.policy.delay(self.attempt, rng=self.rng)

    def reset(self) -> None:
        self.attempt = 0
