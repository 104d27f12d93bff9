"""Logging in to GWS again after start-up, at a pace that never locks the agent out.

Owns when the next login is tried, and what a failed one is called:

- `refused` (HTTP 401/403, statusCode 8 or 20; see `answers.is_refusal`): a
  burst of failed logins can lock the agent's account in Configuration
  Server, so the next try waits `auth_retry_seconds`, doubling up to 15
  minutes, plus up to a fifth more (jitter). The password is read afresh at
  every try (`GwsSession.login`), and `retry_now()` (SIGHUP) ends the wait;
- `unreachable` (no connection, no answer) and `error` (5xx, anything else):
  a fast first retry, growing to `retry_max_seconds`, fully jittered.

Each failed try is counted (`gws_notifyd_gws_login_failures_total{reason}`),
`gws_notifyd_gws_credentials_refused` says whether the credentials stand
refused, and one `warning` line is logged per try: never the password.

The first login at start-up is the service's (an operator's typo exits 77);
this keeper takes over once the daemon runs. It never sends an email and
never reads a notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

import structlog

from daemon.backoff import Backoff, BackoffPolicy
from daemon.config import GwsSettings
from daemon.errors import GwsError, GwsRequestError
from daemon.gws.answers import is_refusal
from daemon.gws.session import GwsSession
from daemon.metrics import AccountMetrics

log = structlog.get_logger(logger_name="daemon.gws.login")

AUTH_RETRY_MAX_SECONDS = 900.0
# Each wait after a refusal is its step times 1.0 to this (never shorter).
AUTH_JITTER = 1.2
_RNG = random.Random()


def auth_retry_delay(refusals: int, base: float, *, rng: random.Random | None = None) -> float:
    """Seconds to wait after the `refusals`-th refusal in a row (1 for the first)."""
    # Jittered upwards only, never below the doubling: a refusal is never retried sooner.
    step = BackoffPolicy(initial=base, maximum=AUTH_RETRY_MAX_SECONDS).ceiling(max(refusals, 1))
    return max(base, step) * (rng or _RNG).uniform(1.0, AUTH_JITTER)


def transport_retry_policy(maximum: float) -> BackoffPolicy:
    """Retries after GWS was unreachable, reset or failing: a fast first one, growing
    by a quarter each time to `maximum`, fully jittered. A GWS back after a couple of
    seconds is found again within half a second; one down for long is asked about
    once every `maximum` seconds after a minute or so (15 s: 23 tries)."""
    return BackoffPolicy(initial=0.1, maximum=maximum, multiplier=1.25, floor=0.05)


def failure_reason(exc: GwsError) -> str:
    """`refused`, `unreachable` or `error`: the label of a failed login."""
    if isinstance(exc, GwsRequestError):
        return "refused" if is_refusal(exc) else "error"
    return "unreachable"


class SessionKeeper:
    """Keeps one GWS session alive: `ensure()` returns once it is, however long that takes."""

    def __init__(
        self,
        *,
        session: GwsSession,
        settings: GwsSettings,
        metrics: AccountMetrics,
        rng: random.Random | None = None,
    ) -> None:
        self._session = session
        self._settings = settings
        self._metrics = metrics
        self._rng = rng
        self._refusals = 0
        self._attempts = 0
        self._transport = Backoff(transport_retry_policy(settings.retry_max_seconds), rng=rng)
        self._wake = asyncio.Event()

    @property
    def credentials_refused(self) -> bool:
        return self._session.credentials_refused

    def retry_now(self) -> None:
        """End the wait before the next try (SIGHUP: a new password may be in place)."""
        self._wake.set()

    async def ensure(self) -> bool:
        """Until the session lives. True if that took a new login (a new GWS session)."""
        while True:
            self._wake.clear()  # a SIGHUP during this try shortens the wait after it
            self._attempts += 1
            try:
                same = await self._session.ensure()
            except GwsError as exc:
                await self._wait_after(exc)
                continue
            if self._attempts > 1:
                log.info("gws_login_recovered", attempts=self._attempts)
            self._refusals = self._attempts = 0
            self._transport.reset()
            self._metrics.gws_credentials_refused.set(0)
            return not same

    async def wait_after(self, exc: GwsError) -> None:
        """A login failed elsewhere (the first one, at start): count it, and wait as
        after one of our own before `ensure()` tries again."""
        self._attempts += 1
        await self._wait_after(exc)

    async def _wait_after(self, exc: GwsError) -> None:
        reason = failure_reason(exc)
        if reason == "refused":
            self._refusals += 1
            delay = auth_retry_delay(
                self._refusals, self._settings.auth_retry_seconds, rng=self._rng
            )
        else:
            delay = self._transport.next_delay()
        self._metrics.gws_login_failures.labels(reason).inc()
        self._metrics.gws_credentials_refused.set(1 if self.credentials_refused else 0)
        log.warning(
            "gws_login_failed",
            reason=reason,
            attempt=self._attempts,
            delay_seconds=round(delay, 1),
            username=self._settings.username,
            error=str(exc),
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)
