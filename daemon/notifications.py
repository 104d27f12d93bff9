"""The notification listener: subscribes, receives, reconciles, checks deadlines.

Owns the Bayeux client for GWS and the two read-back duties of README
"Correlation", rule 6: after every (re)handshake it re-logs in (a new
GWS session needs a new CSRF token and contact-center session), then reads
back the state of every pending send; and it GETs each send whose deadline
passed. It hands every batch to the tracker and never waits on a sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from daemon.backoff import BackoffPolicy
from daemon.cometd import BayeuxClient, ClientSettings, ConnectionState, Subscribed
from daemon.config import GwsSettings
from daemon.errors import GwsError
from daemon.gws.session import GwsSession
from daemon.metrics import Metrics
from daemon.sends import SendRecord, SendStatus
from daemon.tracker import Tracker

log = structlog.get_logger(logger_name="daemon.notifications")

# GETs in parallel while reconciling: enough to read back 1,000 sends in about
# a second, few enough not to look like an attack to GWS.
READ_BACK_CONCURRENCY = 16
# After a failed deadline check, the next one waits this long.
RECHECK_POLICY = BackoffPolicy(initial=5.0, maximum=60.0, floor=1.0)


class NotificationListener:
    def __init__(
        self,
        *,
        session: GwsSession,
        tracker: Tracker,
        metrics: Metrics,
        settings: GwsSettings,
    ) -> None:
        self._session = session
        self._tracker = tracker
        self._metrics = metrics
        self._settings = settings
        self._client = BayeuxClient(
            session=session.http,
            settings=ClientSettings(
                url=settings.notifications_url,
                channels=settings.channels,
                allow_websocket=settings.allow_websocket,
                max_response_bytes=settings.max_batch_bytes,
                batch_window=settings.batch_window_seconds,
            ),
            on_batch=tracker.on_batch,
            on_subscribed=self._on_subscribed,
            on_state=self._on_state,
        )
        self._subscribed = False
        self.first_subscription = asyncio.Event()
        self._reconciling: asyncio.Task[None] | None = None
        self._limit = asyncio.Semaphore(READ_BACK_CONCURRENCY)
        self._failed_checks: dict[str, int] = {}
        self.reconcile_seconds: float | None = None

    @property
    def subscribed(self) -> bool:
        return self._subscribed

    @property
    def state(self) -> ConnectionState:
        return self._client.state

    @property
    def transport(self) -> str | None:
        return self._client.transport_name

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

    async def _on_subscribed(self, info: Subscribed) -> None:
        self._metrics.cometd_handshakes.inc()
        if info.rehandshake:
            # GWS may have dropped our whole HTTP session (that is what an
            # unknown client usually means): a new one needs a new CSRF token
            # and a new contact-center session before we can GET or Send.
            try:
                await self._session.login()
            except GwsError as exc:
                log.warning("gws_relogin_failed", error=str(exc))
        self._subscribed = True
        self.first_subscription.set()
        self._metrics.cometd_subscribed.set(1)
        # Subscribed first, read back second: whatever happens from now on is
        # notified, whatever happened in the gap is read back.
        if self._reconciling is not None and not self._reconciling.done():
            self._reconciling.cancel()
        self._reconciling = asyncio.create_task(self.reconcile(), name="reconcile")

    async def reconcile(self) -> None:
        """Read back every pending send whose answer we have.

        One GET of the whole workspace first; a GET per email only for the
        sends it does not show (GWS may drop a sent email from the list).
        """
        pending = [s for s in self._tracker.pending() if s.status is not SendStatus.IN_FLIGHT]
        if not pending:
            self.reconcile_seconds = 0.0
            return
        started = time.perf_counter()
        try:
            listed = await self._session.list_emails()
        except GwsError as exc:
            log.warning("list_emails_failed", error=str(exc))
            listed = {}
        # Together, so that their writes share transactions (group commit).
        results = await asyncio.gather(
            *(
                self._tracker.read_back(s, listed[s.email_id], final=False)
                if s.email_id in listed
                else self._read_back(s, final=False)
                for s in pending
            )
        )
        self.reconcile_seconds = time.perf_counter() - started
        log.info(
            "reconciled",
            pending=len(pending),
            resolved=sum(1 for r in results if r),
            seconds=round(self.reconcile_seconds, 3),
        )

    async def _read_back(self, send: SendRecord, *, final: bool) -> bool:
        """GET one email and apply it (at most READ_BACK_CONCURRENCY at a time)."""
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
                if final:
                    failures = self._failed_checks.get(send.send_id, 0) + 1
                    self._failed_checks[send.send_id] = failures
                    self._tracker.postpone(
                        send.send_id, time.time() + RECHECK_POLICY.delay(failures)
                    )
                return False
            self._failed_checks.pop(send.send_id, None)
            return await self._tracker.read_back(send, email, final=final)

    async def _deadline_loop(self) -> None:
        while True:
            due = self._tracker.due(time.time())
            if due:
                await asyncio.gather(*(self._read_back(s, final=True) for s in due))
            next_at = self._tracker.next_deadline()
            wait = 1.0 if next_at is None else min(1.0, max(0.05, next_at - time.time()))
            await asyncio.sleep(wait)
