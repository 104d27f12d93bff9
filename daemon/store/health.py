"""Which of the daemon's duties are failing on the store, since when, and for how long is too long.

Every part that works on the store in the background (the group-commit writer,
each sink worker, housekeeping) reports here when a store call fails and when
one succeeds again. While any duty is failing, readiness names `store`; a duty
that has been failing for `exit_after_seconds` is fatal: `wait_too_long()`
returns, and the service exits 70 so that systemd starts it afresh. It does
no I/O and never retries anything itself: the duties do, with their own backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger(logger_name="daemon.store")


@dataclass(slots=True)
class _Failure:
    since: float
    error: str
    attempts: int = 1


class StoreHealth:
    def __init__(
        self, *, exit_after_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.exit_after_seconds = exit_after_seconds
        self._clock = clock
        # One entry per failing duty: as many as there are duties (a few, plus one per sink).
        self._failing: dict[str, _Failure] = {}
        self._changed = asyncio.Event()

    def failed(
        self, duty: str, error: BaseException | str, *, retry_in: float, **context: object
    ) -> float:
        """`duty` failed on the store (again) and retries in `retry_in` s; logged as
        `store_retry`. Returns for how long it has been failing."""
        now = self._clock()
        failure = self._failing.get(duty)
        if failure is None:
            failure = self._failing[duty] = _Failure(now, str(error))
        else:
            failure.error = str(error)
            failure.attempts += 1
        self._changed.set()
        log.warning(
            "store_retry",
            duty=duty,
            error=failure.error,
            attempt=failure.attempts,
            retry_in_seconds=round(retry_in, 3),
            failing_seconds=round(now - failure.since, 3),
            **context,
        )
        return now - failure.since

    def recovered(self, duty: str) -> None:
        """`duty` succeeded on the store: it is no longer failing."""
        failure = self._failing.pop(duty, None)
        if failure is None:
            return
        self._changed.set()
        log.info(
            "store_recovered",
            duty=duty,
            after_seconds=round(self._clock() - failure.since, 3),
            attempts=failure.attempts,
        )

    def failing(self) -> dict[str, str]:
        """The failing duties and their last error."""
        return {duty: failure.error for duty, failure in self._failing.items()}

    def _too_long(self) -> tuple[str | None, float | None]:
        """Why a duty has failed too long (or None), and how long until the next may have."""
        if not self._failing:
            return None, None
        duty, failure = min(self._failing.items(), key=lambda item: item[1].since)
        failing = self._clock() - failure.since
        if failing < self.exit_after_seconds:
            return None, self.exit_after_seconds - failing
        reason = (
            f"{duty} has failed on the store for {failing:.0f} s "
            f"({failure.attempts} attempts): {failure.error}"
        )
        return reason, None

    async def wait_too_long(self) -> str:
        """Return (a one-line reason) once a duty has been failing for `exit_after_seconds`."""
        while True:
            self._changed.clear()
            reason, left = self._too_long()
            if reason is not None:
                return reason
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
