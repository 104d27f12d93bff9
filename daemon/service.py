"""The daemon's life: start-up order, signals, drain, reload, systemd notify.

Start: store (and the pending sends in it) -> sinks and dispatcher -> local API
(health answers from here on) -> GWS login (retried, unless told not to wait)
-> listener. READY=1 once subscribed.

SIGTERM/SIGINT: /readyz goes 503 and new Sends get 503 + Retry-After; Sends
already in flight finish; CometD disconnects; sinks drain for at most
`shutdown_timeout_seconds`; exit 0. What was not delivered stays on disk.
A second signal exits at once (still nothing lost: the store is the truth).

SIGHUP: re-read the config file; sinks and timeouts take the new values. An
invalid file is logged and the running configuration kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import structlog
from aiohttp import web

from daemon import __version__
from daemon.api import ApiContext, RuntimeState, build_app
from daemon.backoff import Backoff, BackoffPolicy
from daemon.config import Settings, SinkSettings, load_settings
from daemon.correlator import Correlator
from daemon.dispatcher import Dispatcher
from daemon.errors import ConfigError, GwsError, GwsRequestError, SinkError, StoreError
from daemon.events import EventFactory
from daemon.gws.listener import Listener
from daemon.gws.session import GwsSession
from daemon.metrics import Metrics
from daemon.sdnotify import SystemdNotifier
from daemon.sinks import Sink, build_sink
from daemon.store import AsyncStore, Store
from daemon.tracker import Tracker

log = structlog.get_logger(logger_name="daemon.service")

EX_OK = 0
EX_SOFTWARE = 70
EX_UNAVAILABLE = 69
EX_NOPERM = 77
EX_CONFIG = 78

# Young collections every 100k allocations (not 700); the older generations
# still get collected every 1M / 10M, so cyclic garbage does not pile up.
GC_THRESHOLDS = (100_000, 10, 10)
SWITCH_INTERVAL_SECONDS = 0.0005
STATUS_EVERY_SECONDS = 5.0
PRUNE_EVERY_SECONDS = 3600.0


class StartupError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def build_sinks(settings: Settings) -> list[tuple[Sink, SinkSettings]]:
    return [(build_sink(s), s) for s in settings.sinks]


class Service:
    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.notifier = notifier or SystemdNotifier()
        self.state = RuntimeState()
        self.api_url: str | None = None
        self._stop = asyncio.Event()
        self._signals = 0
        self._context: ApiContext | None = None

    # -- the whole life -------------------------------------------------------------

    async def run(self) -> int:
        try:
            return await self._run()
        except StartupError as exc:
            log.error("startup_failed", error=str(exc))
            return exc.exit_code
        except StoreError as exc:
            # The store is the truth; without it nothing can be promised.
            log.error("store_failed", error=str(exc))
            return EX_SOFTWARE

    async def _run(self) -> int:
        settings = self.settings
        metrics = self.metrics
        metrics.build_info.info({"version": __version__})
        store = AsyncStore(
            Store(
                settings.store.path,
                synchronous=settings.store.synchronous,
                max_outbox_events=settings.store.max_outbox_events,
            )
        )
        dispatcher = Dispatcher(
            store=store, metrics=metrics, max_outbox_events=settings.store.max_outbox_events
        )
        correlator = Correlator(send_timeout_seconds=settings.correlation.send_timeout_seconds)
        tracker = Tracker(
            correlator=correlator,
            store=store,
            events=EventFactory(source=settings.gws.base_url + "/api/v2/me/emails"),
            metrics=metrics,
            on_events=dispatcher.notify,
            channels=settings.gws.channels,
            cursors=dispatcher.unsaved_cursors,
        )
        restored = await tracker.restore()
        try:
            sinks = build_sinks(settings)
        except SinkError as exc:
            raise StartupError(str(exc), EX_CONFIG) from None
        await dispatcher.start(sinks)
        session = GwsSession(settings.gws, metrics)
        await session.open()
        listener = Listener(
            session=session, tracker=tracker, metrics=metrics, settings=settings.gws
        )
        context = ApiContext(
            settings=settings,
            metrics=metrics,
            tracker=tracker,
            session=session,
            store=store,
            dispatcher=dispatcher,
            listener=listener,
            state=self.state,
        )
        self._context = context
        runner = web.AppRunner(build_app(context), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, settings.http.host, settings.http.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._close(runner, listener, dispatcher, session, store)
            raise StartupError(
                f"http.listen: cannot listen on {settings.http.host}:{settings.http.port}: "
                f"{exc.strerror}",
                EX_UNAVAILABLE,
            ) from None
        port = runner.addresses[0][1]
        self.api_url = f"http://{settings.http.host}:{port}"
        log.info(
            "started",
            version=__version__,
            api=self.api_url,
            pending_sends=restored,
            sinks=[s.name for s in settings.sinks],
            store=str(settings.store.path),
        )

        # The notification path allocates millions of short-lived objects per
        # large batch; with the default thresholds the collector runs thousands
        # of times per batch and rescans everything long-lived. Freeze what
        # start-up built and collect young objects less often.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        # The store's thread needs the GIL a few times per transaction; while
        # the loop is busy it waits a whole switch interval each time (5 ms by
        # default), which made commits, not parsing, the bottleneck of a burst.
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        self._install_signals()
        helpers = [
            asyncio.create_task(self._watchdog(), name="watchdog"),
            asyncio.create_task(self._report_status(listener, dispatcher), name="status"),
            asyncio.create_task(self._prune(store), name="prune"),
        ]
        listening: asyncio.Task[None] | None = None
        exit_code = EX_OK
        try:
            await self._login(session)
            if not self._stop.is_set():
                listening = asyncio.create_task(listener.run(), name="listener")
                ready = asyncio.create_task(self._announce_ready(listener), name="ready")
                helpers.append(ready)
                stop = asyncio.create_task(self._stop.wait())
                done, _ = await asyncio.wait({stop, listening}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                if listening in done:
                    error = listening.exception()
                    log.error("listener_stopped", error=str(error))
                    exit_code = EX_SOFTWARE if isinstance(error, StoreError) else EX_UNAVAILABLE
        except StartupError:
            for task in helpers:
                task.cancel()
            await self._close(runner, listener, dispatcher, session, store)
            raise
        await self._shutdown(runner, listener, listening, dispatcher, session, store, helpers)
        return exit_code

    async def _login(self, session: GwsSession) -> None:
        backoff = Backoff(BackoffPolicy(initial=1.0, maximum=30.0))
        while not self._stop.is_set():
            try:
                await session.login()
            except GwsRequestError as exc:
                if exc.http_status in (401, 403):
                    raise StartupError(
                        f"GWS refused the credentials of gws.username "
                        f"{self.settings.gws.username!r}: {exc}",
                        EX_NOPERM,
                    ) from None
                error = str(exc)
            except GwsError as exc:
                error = str(exc)
            else:
                return
            if not self.settings.gws.wait_at_start:
                raise StartupError(f"GWS unreachable at start: {error}", EX_UNAVAILABLE)
            delay = backoff.next_delay()
            log.warning("gws_login_retry", error=error, delay_seconds=round(delay, 2))
            self.notifier.status(f"waiting for GWS: {error}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _announce_ready(self, listener: Listener) -> None:
        await listener.first_subscription.wait()
        self.notifier.ready(self._status_line())
        log.info("ready", transport=listener.transport)

    async def _shutdown(
        self,
        runner: web.AppRunner,
        listener: Listener,
        listening: asyncio.Task[None] | None,
        dispatcher: Dispatcher,
        session: GwsSession,
        store: AsyncStore,
        helpers: list[asyncio.Task[None]],
    ) -> None:
        budget = self.settings.service.shutdown_timeout_seconds
        started = time.monotonic()
        self.state.draining = True
        self.notifier.stopping("draining")
        log.info(
            "draining",
            sends_in_flight=self.state.sends_in_flight,
            backlog=dispatcher.backlog(),
            budget_seconds=budget,
        )
        if self.state.sends_in_flight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.state.sends_idle.wait(),
                    self.settings.gws.request_timeout_seconds + 1,
                )
        await listener.close()
        if listening is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(listening, 5.0)
        if self._context is not None:
            await self._context.tracker.flush()
        remaining = max(0.0, budget - (time.monotonic() - started))
        drained = await dispatcher.drain(remaining)
        backlog = dispatcher.backlog()
        for task in helpers:
            task.cancel()
        await self._close(runner, None, dispatcher, session, store)
        log.info(
            "stopped",
            drained=drained,
            backlog=backlog,
            seconds=round(time.monotonic() - started, 3),
        )

    async def _close(
        self,
        runner: web.AppRunner,
        listener: Listener | None,
        dispatcher: Dispatcher,
        session: GwsSession,
        store: AsyncStore,
    ) -> None:
        if listener is not None:
            await listener.close()
        await runner.cleanup()
        await dispatcher.stop()
        await session.close()
        await store.close()
        self.notifier.close()

    # -- signals ----------------------------------------------------------------------

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))

    def _on_stop_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("forced_exit", signal=signal.Signals(signum).name)
            # Everything acknowledged is already in the store.
            os._exit(EX_SOFTWARE)
        log.info("stop_requested", signal=signal.Signals(signum).name)
        self.request_stop()

    def request_stop(self) -> None:
        self._stop.set()

    async def reload(self) -> bool:
        """Re-read the config: sinks and timeouts change, the rest needs a restart."""
        source = self.settings.source
        context = self._context
        if source is None or context is None:
            return False
        try:
            new = load_settings(Path(source))
            sinks = build_sinks(new)
        except (ConfigError, SinkError) as exc:
            log.error("reload_rejected", error=str(exc), config=str(source))
            return False
        await context.dispatcher.replace_sinks(sinks)
        context.tracker.correlator.send_timeout_seconds = new.correlation.send_timeout_seconds
        self.settings = replace(
            self.settings, sinks=new.sinks, correlation=new.correlation, service=new.service
        )
        context.settings = self.settings
        log.info(
            "reloaded",
            sinks=[s.name for s in new.sinks],
            send_timeout_seconds=new.correlation.send_timeout_seconds,
        )
        return True

    # -- background duties --------------------------------------------------------------

    def _status_line(self) -> str:
        context = self._context
        if context is None:
            return "starting"
        if self.state.draining:
            head = "draining"
        elif context.listener.subscribed:
            head = "connected"
        else:
            head = "reconnecting"
        backlog = sum(context.dispatcher.backlog().values())
        return f"{head}; {len(context.tracker.correlator)} pending sends; backlog {backlog}"

    async def _report_status(self, listener: Listener, dispatcher: Dispatcher) -> None:
        if not self.notifier.enabled:
            return
        while True:
            self.notifier.status(self._status_line())
            await asyncio.sleep(STATUS_EVERY_SECONDS)

    async def _watchdog(self) -> None:
        # Pinged from the event loop itself: a loop stuck for the whole
        # WATCHDOG_USEC is killed by systemd rather than left hanging.
        interval = self.notifier.watchdog_seconds
        if interval is None:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval / 2)

    async def _prune(self, store: AsyncStore) -> None:
        while True:
            cutoff = time.time() - self.settings.store.retention_hours * 3600
            removed = await store.run(store.store.prune_sends, cutoff)
            if removed:
                log.info("sends_pruned", removed=removed)
            await asyncio.sleep(PRUNE_EVERY_SECONDS)
