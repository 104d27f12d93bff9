"""The daemon's parts, built from settings in one place.

Owns what is made of what: which store, writer, dispatcher, housekeeping and
accounts (each with its GWS session, tracker, listener and Send workflow:
`daemon.accounts`) a `Settings` gives, and how they are wired (who tells
whom). It starts nothing: `Service` decides when each part starts and stops.
Every resource it opens is handed to the caller's exit stack at once, so a
failure half-way leaks nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import aiohttp

from daemon.accounts import Account, Accounts
from daemon.api import ApiContext, RuntimeState
from daemon.config import AccountSettings, Settings, SinkSettings
from daemon.dispatcher import Dispatcher
from daemon.gws.messages import MALFORMED_REASONS
from daemon.gws.session import new_connector
from daemon.housekeeping import Housekeeping
from daemon.metrics import Metrics
from daemon.pacing import Pacer
from daemon.sinks import Sink, build_sink
from daemon.store import AsyncStore, OutcomeWriter, Store


@dataclass(frozen=True, slots=True)
class Components:
    settings: Settings
    metrics: Metrics
    store: AsyncStore
    writer: OutcomeWriter
    dispatcher: Dispatcher
    accounts: Accounts
    connector: aiohttp.BaseConnector
    pacer: Pacer
    housekeeping: Housekeeping
    state: RuntimeState

    def api_context(self) -> ApiContext:
        return ApiContext(
            http=self.settings.http,
            metrics=self.metrics,
            accounts=self.accounts,
            store=self.store,
            dispatcher=self.dispatcher,
            state=self.state,
        )

    def new_account(self, settings: AccountSettings) -> Account:
        """An account's parts, wired to the shared ones, its HTTP session open
        (its pending sends not restored yet: `Account.restore`)."""
        return Account(
            settings,
            shared=self.settings,
            store=self.store,
            writer=self.writer,
            metrics=self.metrics,
            pacer=self.pacer,
            outbox_full=self.dispatcher.outbox_full,
            connector=self.connector,
        )


def new_metrics() -> Metrics:
    """A registry with the GWS adapter's label sets."""
    return Metrics(malformed_reasons=MALFORMED_REASONS)


def build_sinks(settings: Settings) -> list[tuple[Sink, SinkSettings]]:
    """The configured sinks (raises SinkError for one that cannot be made)."""
    return [(build_sink(s), s) for s in settings.sinks]


async def build_components(
    settings: Settings, stack: contextlib.AsyncExitStack, *, metrics: Metrics
) -> Components:
    """Open the store and every account's GWS session, and wire every part to them."""
    store = AsyncStore(
        Store(
            settings.store.path,
            synchronous=settings.store.synchronous,
            busy_timeout_seconds=settings.store.busy_timeout_seconds,
            check_pages=True,
        ),
        failure_exit_seconds=settings.store.failure_exit_seconds,
    )
    stack.push_async_callback(store.close)
    dispatcher = Dispatcher(
        store=store, metrics=metrics, max_outbox_events=settings.store.max_outbox_events
    )
    writer = OutcomeWriter(
        store, on_committed=dispatcher.notify, cursors=dispatcher.unsaved_cursors
    )
    stack.callback(writer.close)
    # One pool for every account, without a limit: N accounts park N long-polls.
    connector = new_connector(settings.gws, limit=0)
    stack.push_async_callback(connector.close)
    parts = Components(
        settings=settings,
        metrics=metrics,
        store=store,
        writer=writer,
        dispatcher=dispatcher,
        accounts=Accounts(),
        connector=connector,
        pacer=Pacer(settings.gws.handshakes_per_second),
        housekeeping=Housekeeping(
            store=store,
            dispatcher=dispatcher,
            metrics=metrics,
            max_outbox_events=settings.store.max_outbox_events,
            retention_hours=settings.store.retention_hours,
            max_dead_letters=settings.store.max_dead_letters,
        ),
        state=RuntimeState(),
    )
    stack.push_async_callback(_close_accounts, parts.accounts)
    for account_settings in settings.accounts:
        parts.accounts.add(parts.new_account(account_settings))
    return parts


async def _close_accounts(accounts: Accounts) -> None:
    for account in accounts:
        await account.session.close()
