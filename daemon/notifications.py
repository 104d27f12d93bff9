"""The notification listener: subscribes, receives, reconciles, checks deadlines.

Owns the Bayeux client for GWS, the GWS session's life after start-up, and
the read-back duties of README "Correlation":

- the session first, then the handshake: before every re-handshake (and
  after an HTTP 401/403 under Bayeux) the session keeper makes sure the HTTP
  session lives, logging in again, at a pace that never locks the agent out,
  when it does not (`daemon.gws.login`); every Bayeux request carries the
  session's Basic auth and CSRF token;
- after every (re)subscription it reads back every pending send;
- each send past its deadline is read back (one workspace listing when
  several are due, then a GET per email not listed), and every one of them
  ends: resolved, or timed out as `not_sent`, `not_found` or, once its
  read-backs have failed for `read_back_give_up_seconds`, `read_back_failed`.

It hands every batch to the tracker and never waits on a sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import structlog

from daemon.backoff import BackoffPolicy
from daemon.cometd import BayeuxClient, ClientSettings, ConnectionState, Subscribed
from daemon.config import GwsSettings
from daemon.errors import GwsError
from daemon.gws.login import SessionKeeper, transport_retry_policy
from daemon.gws.session import GwsSession
from daemon.metrics import AccountMetrics
from daemon.pacing import Pacer
from daemon.sends import SendRecord, SendStatus
from daemon.tracker import Tracker

log = structlog.get_logger(logger_name="daemon.notifications")

# After a failed deadline check, the next one waits this long (never past the give-up time).
RECHECK_POLICY = BackoffPolicy(initial=5.0, maximum=60.0, floor=1.0)
# Fewer sends than this to read back are read one GET each (`read_back_concurrency` at a
# time); more, with one listing of the workspace first. A listing is the whole workspace
# parsed at once (megabytes for a busy agent, and memory the process keeps): worth it
# only when it saves many round trips.
LIST_AT_LEAST = 16
# Sends read back together (their writes share transactions); more are taken a group
# at a time, so that 100k pending after a restart are not 100k tasks at once (their
# memory, freed, stays with the process as fragments).
READ_BACK_GROUP = 1000
# The deadline loop looks at the clock at least this often.
MAX_DEADLINE_WAIT = 60.0


class NotificationListener:
    def __init__(
        self,
        *,
        session: GwsSession,
        tracker: Tracker,
        metrics: AccountMetrics,
        settings: GwsSettings,
        give_up_seconds: float = 3600.0,
        pacer: Pacer | None = None,
    ) -> None:
        """`pacer`: the pace every account's logins and handshakes share (none: no pace)."""
        self._session = session
        self._pacer = pacer
        self._tracker = tracker
        self._metrics = metrics
        self._keeper = SessionKeeper(session=session, settings=settings, metrics=metrics)
        self._client = BayeuxClient(
            session=session.http,
            settings=ClientSettings(
                url=settings.notifications_url,
                channels=settings.channels,
                allow_websocket=settings.allow_websocket,
                max_response_bytes=settings.max_batch_bytes,
                batch_window=settings.batch_window_seconds,
                backoff=transport_retry_policy(settings.retry_max_seconds),
            ),
            on_batch=tracker.on_batch,
            on_subscribed=self._on_subscribed,
            on_state=self._on_state,
            headers=session.bayeux_headers,
            before_handshake=self._before_handshake,
            # GWS down: every account's retries share the pace too (no herd, no spin).
            before_retry=pacer.turn if pacer is not None else None,
        )
        # A Send answered 401 is news the long-poll may bring only much later.
        session.on_refused(self._client.rehandshake)
        self._subscribed = False
        self.first_subscription = asyncio.Event()
        self._reconciling: asyncio.Task[None] | None = None
        self._limit = asyncio.Semaphore(settings.read_back_concurrency)
        self._give_up_seconds = give_up_seconds
        # send id -> (failed deadline checks, when its read-backs are given up)
        self._failed_checks: dict[str, tuple[int, float]] = {}
        self.reconcile_seconds: float | None = None

    @property
    def subscribed(self) -> bool:
        return self._subscribed

    @property
    def credentials_refused(self) -> bool:
        """True while GWS refuses the credentials (`/readyz` names `gws_auth`)."""
        return self._keeper.credentials_refused

    @property
    def state(self) -> ConnectionState:
        return self._client.state

    @property
    def transport(self) -> str | None:
        return self._client.transport_name

    async def wait_after_failed_login(self, exc: GwsError) -> None:
        """The first login failed (GWS refused it, say): wait as the keeper would."""
        await self._keeper.wait_after(exc)

    def retry_login_now(self) -> None:
        """Try the next login at once (SIGHUP: the password file may have been rotated)."""
        self._keeper.retry_now()

    async def run(self) -> None:
        """Until close(): the Bayeux client, and the deadline checks beside it."""
        deadlines = asyncio.create_task(self._deadline_loop(), name="deadline-checks")
        try:
            await self._client.run()
        finally:
            deadlines.cancel()
            for task in (deadlines, self._reconciling):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def close(self) -> None:
        await self._client.close()

    def _on_state(self, state: ConnectionState) -> None:
        connected = state is ConnectionState.CONNECTED
        self._metrics.cometd_connected.set(1 if connected else 0)
        if state in (
            ConnectionState.RECONNECTING,
            ConnectionState.HANDSHAKING,
            ConnectionState.CLOSED,
        ):
            if self._subscribed and state is ConnectionState.RECONNECTING:
                self._metrics.cometd_reconnects.inc()
            self._subscribed = False
            self._metrics.cometd_subscribed.set(0)
        log.info("cometd_state", state=state.value)

    async def _before_handshake(self) -> None:
        if self._pacer is not None:
            await self._pacer.turn()
        # A handshake on a dead HTTP session never succeeds when GWS authorises
        # CometD by the session cookie: the session first.
        if await self._keeper.ensure():
            self._tracker.new_gws_session()

    async def _on_subscribed(self, _info: Subscribed) -> None:
        self._metrics.cometd_handshakes.inc()
        self._subscribed = True
        self.first_subscription.set()
        self._metrics.cometd_subscribed.set(1)
        # Subscribed first, read back second: whatever happens from now on is
        # notified, whatever happened in the gap is read back.
        if self._reconciling is not None and not self._reconciling.done():
            self._reconciling.cancel()
        self._reconciling = asyncio.create_task(self.reconcile(), name="reconcile")

    async def reconcile(self) -> None:
        """Read back every pending send whose answer we have (none is timed out here).

        With many (LIST_AT_LEAST), one GET of the whole workspace first; a GET
        per email for the sends it does not show (GWS may drop a sent email from
        the list), or for every send when there are few.
        """
        pending = [s for s in self._tracker.pending() if s.status is not SendStatus.IN_FLIGHT]
        if not pending:
            self.reconcile_seconds = 0.0
            return
        started = time.perf_counter()
        listed = await self._list_workspace() if len(pending) >= LIST_AT_LEAST else {}
        results = await self._read_back_all(pending, listed, final=False)
        self.reconcile_seconds = time.perf_counter() - started
        log.info(
            "reconciled",
            pending=len(pending),
            resolved=sum(1 for r in results if r),
            seconds=round(self.reconcile_seconds, 3),
        )

    async def _read_back_all(
        self, sends: list[SendRecord], listed: dict[str, dict[str, Any]], *, final: bool
    ) -> list[bool]:
        """Apply the listing to the sends it shows, GET the others. A group at a time,
        together, so that their writes share transactions (group commit)."""
        results: list[bool] = []
        for first in range(0, len(sends), READ_BACK_GROUP):
            results += await asyncio.gather(
                *(
                    self._tracker.read_back(s, listed[s.email_id], final=final)
                    if s.email_id in listed
                    else self._read_back(s, final=final)
                    for s in sends[first : first + READ_BACK_GROUP]
                )
            )
        return results

    async def _list_workspace(self) -> dict[str, dict[str, Any]]:
        """Every email of the workspace by id; {} when GWS cannot list it now."""
        try:
            return await self._session.list_emails()
        except GwsError as exc:
            log.warning("list_emails_failed", error=str(exc))
            return {}

    async def _read_back(self, send: SendRecord, *, final: bool) -> bool:
        """GET one email (at most `read_back_concurrency` at a time) and apply it."""
        async with self._limit:
            if self._tracker.get(send.send_id) is None:
                self._failed_checks.pop(send.send_id, None)
                return False
            try:
                email = await self._session.get_email(send.email_id)
            except GwsError as exc:
                self._metrics.reconciliations.labels("failed").inc()
                log.warning(
                    "read_back_failed", send_id=send.send_id, email_id=send.email_id, error=str(exc)
                )
                failed = True
            else:
                failed = False
        if failed:
            return final and await self._after_failed_check(send)
        self._failed_checks.pop(send.send_id, None)
        return await self._tracker.read_back(send, email, final=final)

    async def _after_failed_check(self, send: SendRecord) -> bool:
        """Check again later, or, past the give-up time, end the send (`read_back_failed`)."""
        now = time.time()
        deadline = send.due_at if send.due_at is not None else now
        failures, give_up_at = self._failed_checks.get(
            send.send_id, (0, deadline + self._give_up_seconds)
        )
        if now >= give_up_at:
            self._failed_checks.pop(send.send_id, None)
            return await self._tracker.read_back(send, None, final=True, failed=True)
        failures += 1
        self._failed_checks[send.send_id] = (failures, give_up_at)
        self._tracker.postpone(send.send_id, min(now + RECHECK_POLICY.delay(failures), give_up_at))
        return False

    async def _check_deadlines(self, due: list[SendRecord]) -> None:
        """Read back the sends past their deadline: one listing when many are due."""
        listed = await self._list_workspace() if len(due) >= LIST_AT_LEAST else {}
        await self._read_back_all(due, listed, final=True)
        for send in due:
            if send.email_id in listed:
                self._failed_checks.pop(send.send_id, None)

    async def _deadline_loop(self) -> None:
        """Read back what is due; then sleep until the next deadline, or until one may
        have come sooner. Nothing pending, nothing to do: a thousand idle accounts
        cost no wake-ups (a minute at most, in case the wall clock jumped)."""
        changed = self._tracker.deadlines_changed
        while True:
            changed.clear()
            due = self._tracker.due(time.time())
            if due:
                await self._check_deadlines(due)
            next_at = self._tracker.next_deadline()
            wait = MAX_DEADLINE_WAIT if next_at is None else next_at - time.time()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(MAX_DEADLINE_WAIT, max(0.05, wait)))
