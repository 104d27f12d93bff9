"""The daemon's parts, built from settings in one place.

Owns what is made of what: which store, writer, dispatcher, tracker, GWS
session, notification listener, send workflow and housekeeping a `Settings`
gives, and how they are wired (who tells whom). It starts nothing: `Service`
decides when each part starts and stops. Every resource it opens is handed
to the caller's exit stack at once, so a failure half-way leaks nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from daemon.api import ApiContext, RuntimeState
from daemon.config import Settings, SinkSettings
from daemon.correlator import Correlator
from daemon.dispatcher import Dispatcher
from daemon.events import EventFactory, account_source
from daemon.gws.messages import MALFORMED_REASONS
from daemon.gws.operations import notification_limit
from daemon.gws.session import GwsSession
from daemon.housekeeping import Housekeeping
from daemon.metrics import Metrics
from daemon.notifications import NotificationListener
from daemon.sending import SendWorkflow
from daemon.sinks import Sink, build_sink
from daemon.store import AsyncStore, OutcomeWriter, Store
from daemon.tracker import Tracker


@dataclass(frozen=True, slots=True)
class Components:
    settings: Settings
    metrics: Metrics
    store: AsyncStore
    dispatcher: Dispatcher
    tracker: Tracker
    session: GwsSession
    listener: NotificationListener
    workflow: SendWorkflow
    housekeeping: Housekeeping
    state: RuntimeState

    def api_context(self) -> ApiContext:
        return ApiContext(
            http=self.settings.http,
            metrics=self.metrics,
            tracker=self.tracker,
            store=self.store,
            dispatcher=self.dispatcher,
            listener=self.listener,
            workflow=self.workflow,
            state=self.state,
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
    """Open the store and the GWS session, and wire every part to them."""
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
    account = settings.accounts[0]
    account_metrics = metrics.account(account.name)
    tracker = Tracker(
        correlator=Correlator(send_timeout_seconds=settings.correlation.send_timeout_seconds),
        store=store,
        writer=writer,
        events=EventFactory(account_source(settings.gws.base_url, account.name), account.name),
        metrics=account_metrics,
        channels=account.gws.channels,
        # A notification about the largest Send the API takes must fit.
        max_message_bytes=notification_limit(settings.http.max_body_bytes),
    )
    session = GwsSession(account.gws, account_metrics)
    await session.open()
    stack.push_async_callback(session.close)
    listener = NotificationListener(
        session=session,
        tracker=tracker,
        metrics=account_metrics,
        settings=account.gws,
        give_up_seconds=settings.correlation.read_back_give_up_seconds,
    )
    return Components(
        settings=settings,
        metrics=metrics,
        store=store,
        dispatcher=dispatcher,
        tracker=tracker,
        session=session,
        listener=listener,
        workflow=SendWorkflow(tracker=tracker, session=session, outbox_full=dispatcher.outbox_full),
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
