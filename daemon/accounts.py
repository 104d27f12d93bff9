"""One GWS account's parts, and the set of accounts the daemon runs.

A GWS session is one agent. Each configured account (`daemon.config.accounts`)
gets its own HTTP session (cookie jar, CSRF token, Basic auth), Bayeux client,
correlator (referenceIds are per-session counters: they must never match
across accounts), read-backs and retry state. What they share is passed in:
the store's writer, the metrics registry (through the account's view), and one
aiohttp connector without a connection limit, so that N accounts holding N
long-polls open never starve each other's requests (the process's file limit
is the bound: `LimitNOFILE` in the unit).

One account's trouble stays its own: its login, refused password or lost
session delays nothing of another's. What they do share on purpose is the
`Pacer`: logins and handshakes of all accounts together go at most
`gws.handshakes_per_second`, so that a thousand accounts coming back after GWS
restarted arrive one by one, not as a herd.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import structlog

from daemon.cometd import ConnectionState
from daemon.config import AccountSettings, Secret, Settings
from daemon.correlator import Correlator
from daemon.errors import GwsError, GwsRequestError
from daemon.events import EventFactory, account_source
from daemon.gws.answers import is_refusal
from daemon.gws.operations import notification_limit
from daemon.gws.session import GwsSession
from daemon.metrics import Metrics
from daemon.notifications import NotificationListener
from daemon.pacing import Pacer
from daemon.sending import SendWorkflow
from daemon.sends import iso_time
from daemon.store import AsyncStore, OutcomeWriter
from daemon.tracker import Tracker

log = structlog.get_logger(logger_name="daemon.accounts")

# Recently resolved sends kept (correlation rule 4: a repeated outcome a moment later is
# tied to the same send) by all accounts together, but at least this many per account:
# one agent never resolves so many sends between an outcome and its repeat.
RECENT_SENDS_IN_ALL = 10_000
RECENT_SENDS_PER_ACCOUNT = 100


# Stopping an account: how long its listener may take to disconnect politely.
LISTENER_CLOSE_SECONDS = 5.0


def recent_capacity(accounts: int) -> int:
    """How many recently resolved sends each of `accounts` accounts keeps."""
    return max(RECENT_SENDS_PER_ACCOUNT, RECENT_SENDS_IN_ALL // max(1, accounts))


@dataclass(frozen=True, slots=True)
class FirstLogin:
    """How an account's first login went: ok, refused (credentials), or the error."""

    ok: bool
    refused: bool = False
    error: GwsError | None = None


class Account:
    """One agent: its session, tracker, listener and Send workflow."""

    def __init__(
        self,
        settings: AccountSettings,
        *,
        shared: Settings,
        store: AsyncStore,
        writer: OutcomeWriter,
        metrics: Metrics,
        pacer: Pacer,
        outbox_full: Callable[[], bool],
        connector: aiohttp.BaseConnector,
    ) -> None:
        """Its HTTP session is opened here, on the shared `connector`."""
        self.name = settings.name
        self.settings = settings
        self.metrics = metrics.account(settings.name)
        gws = settings.gws
        self.session = GwsSession(gws, self.metrics)
        self.session.open(connector)
        self.tracker = Tracker(
            correlator=Correlator(
                send_timeout_seconds=shared.correlation.send_timeout_seconds,
                recent_capacity=recent_capacity(len(shared.accounts)),
            ),
            store=store,
            writer=writer,
            events=EventFactory(account_source(gws.base_url, self.name), self.name),
            metrics=self.metrics,
            channels=gws.channels,
            # A notification about the largest Send the API takes must fit.
            max_message_bytes=notification_limit(shared.http.max_body_bytes),
        )
        self.listener = NotificationListener(
            session=self.session,
            tracker=self.tracker,
            metrics=self.metrics,
            settings=gws,
            give_up_seconds=shared.correlation.read_back_give_up_seconds,
            pacer=pacer,
        )
        self.workflow = SendWorkflow(
            account=self.name, tracker=self.tracker, session=self.session, outbox_full=outbox_full
        )
        self._pacer = pacer
        self._refused_at_first = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def restore(self) -> int:
        """Load this account's pending sends from the store (how many)."""
        return await self.tracker.restore()

    async def first_login(self) -> FirstLogin:
        """One try (in its turn): whether the credentials work and GWS answers."""
        await self._pacer.turn()
        try:
            await self.session.login()
        except GwsRequestError as exc:
            refused = is_refusal(exc)
            if refused:
                self._refused_at_first.set()
            return FirstLogin(ok=False, refused=refused, error=exc)
        except GwsError as exc:
            return FirstLogin(ok=False, error=exc)
        # Its first handshake follows at once: the login's turn was its turn.
        return FirstLogin(ok=True)

    async def wait_settled(self) -> bool:
        """Until it is subscribed (True) or GWS refused its first login (False)."""
        subscribed = asyncio.ensure_future(self.listener.first_subscription.wait())
        refused = asyncio.ensure_future(self._refused_at_first.wait())
        try:
            await asyncio.wait({subscribed, refused}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            subscribed.cancel()
            refused.cancel()
        return self.listener.first_subscription.is_set()

    async def run(self, first: FirstLogin) -> None:
        """Listen until closed (its login kept alive by the listener's keeper). After a
        refused first login the next try waits as after any refusal: never at once."""
        structlog.contextvars.bind_contextvars(account=self.name)
        if first.refused and first.error is not None:
            await self.listener.wait_after_failed_login(first.error)
        await self.listener.run()

    async def stop_listening(self) -> None:
        """Unsubscribe and disconnect; its task ends (cancelled past LISTENER_CLOSE_SECONDS)."""
        with contextlib.suppress(Exception):
            await self.listener.close()
        if self.task is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(self.task), LISTENER_CLOSE_SECONDS)
            self.task.cancel()

    async def close(self) -> None:
        """`stop_listening()`, then what it wrote committed and its HTTP session closed."""
        await self.stop_listening()
        await self.tracker.flush()
        await self.session.close()

    def status(self) -> dict[str, Any]:
        """What `/v1/status` shows of this account."""
        listener = self.listener
        last = self.tracker.last_notification_at
        return {
            "name": self.name,
            "username": self.settings.gws.username,
            "configured": True,
            "state": listener.state.value,
            "connected": listener.state is ConnectionState.CONNECTED,
            "subscribed": listener.subscribed,
            "transport": listener.transport,
            "auth": "refused" if listener.credentials_refused else "ok",
            "pendingSends": len(self.tracker),
            "sendsInFlight": self.workflow.in_flight,
            "lastNotificationAt": iso_time(last),
            "lastReconcileSeconds": listener.reconcile_seconds,
        }


def same_account(a: AccountSettings, b: AccountSettings) -> bool:
    """Whether a reload leaves the account as it runs. A password read from a file is
    read again at every login: a rotated file is no change that needs a new session."""

    def comparable(account: AccountSettings) -> AccountSettings:
        if account.gws.password_file is None:
            return account
        return replace(account, gws=replace(account.gws, password=Secret("")))

    return comparable(a) == comparable(b)


class Accounts:
    """The running accounts, by name, in config order."""

    def __init__(self) -> None:
        self._by_name: dict[str, Account] = {}

    def __iter__(self) -> Iterator[Account]:
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, name: str) -> Account | None:
        return self._by_name.get(name)

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    @property
    def first(self) -> Account:
        """The first configured account (the only one in today's single-account form)."""
        return next(iter(self._by_name.values()))

    def add(self, account: Account) -> None:
        self._by_name[account.name] = account

    def remove(self, name: str) -> Account | None:
        return self._by_name.pop(name, None)

    def pending_sends(self) -> int:
        return sum(len(a.tracker) for a in self._by_name.values())

    def in_flight(self) -> int:
        return sum(a.workflow.in_flight for a in self._by_name.values())

    async def wait_idle(self, timeout: float) -> None:
        """Until no account has a Send in flight, at most `timeout` seconds."""
        await asyncio.gather(*(a.workflow.wait_idle(timeout) for a in self._by_name.values()))
