"""The daemon's life: start-up, serving, shutdown; signals and systemd notify.

startup(): the parts (`daemon.app`) -> each account's pending sends restored
-> sinks and dispatcher -> local API (health answers from here on) ->
housekeeping -> every account's first GWS login, at once in the shared pace
-> each account's listener (its own task; its keeper logs in again whenever
needed). READY=1 once every account whose credentials GWS took is subscribed.

serve(): until SIGTERM/SIGINT, or until something fatal happens: a background
task (an account, housekeeping, a sink worker, the watchdog and status helpers)
ends on its own, or a duty fails on the store for `store.failure_exit_seconds`.
Either is one `error` line (`task_stopped`, `store_failed`) and exit 70, so
that systemd starts the daemon afresh; never a quiet stop.

shutdown(): /readyz goes 503 and new Sends get 503 + Retry-After; Sends
already in flight finish; CometD disconnects; sinks drain for at most
`shutdown_timeout_seconds`; then every resource is closed, in the reverse
order of opening, by one exit stack. What was not delivered stays on disk.
A second signal exits at once (still nothing lost: the store is the truth).

SIGHUP: re-read the config file; the sinks, the accounts (added ones start,
removed ones stop, changed ones restart; the others keep their sessions) and
the send and shutdown timeouts take the new values (and a refused GWS login
is tried again). An invalid file is logged and the running configuration kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from daemon import __version__, exitcodes
from daemon.accounts import Account, FirstLogin, same_account
from daemon.api import build_app
from daemon.app import Components, build_components, build_sinks, new_metrics
from daemon.config import Settings, load_settings
from daemon.errors import ConfigError, SinkError, StoreError
from daemon.http_server import start_api_server
from daemon.metrics import Metrics
from daemon.sdnotify import SystemdNotifier

log = structlog.get_logger(logger_name="daemon.service")

STATUS_EVERY_SECONDS = 5.0
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StartupError(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class Service:
    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        notifier: SystemdNotifier | None = None,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        """`on_started` runs once start-up has built everything (the `run`
        command tunes the process's garbage collector there)."""
        self.settings = settings
        self.metrics = metrics or new_metrics()
        self.notifier = notifier or SystemdNotifier()
        self.api_url: str | None = None
        self._on_started = on_started
        self._stop = asyncio.Event()
        self._signals = 0
        self._parts: Components | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._retiring: set[asyncio.Task[Any]] = set()
        self._exit_code: int | None = None
        self._stopping = False
        self._reload_lock = asyncio.Lock()
        self._previous_handlers: dict[int, Callable[[int, FrameType | None], Any] | int | None] = {}

    # -- the whole life -------------------------------------------------------------

    async def run(self) -> int:
        try:
            async with contextlib.AsyncExitStack() as stack:
                stack.callback(self.notifier.close)
                await self.startup(stack)
                exit_code = await self.serve()
                await self.shutdown()
                return exit_code
        except StartupError as exc:
            log.error("startup_failed", error=str(exc))
            return exc.exit_code
        except StoreError as exc:
            # The store is the truth; without it nothing can be promised.
            if self._exit_code is None:
                log.error("store_failed", error=str(exc))
            else:  # the cause is logged already; this is its echo while stopping
                log.warning("shutdown_incomplete", error=str(exc))
            return exitcodes.SOFTWARE

    async def startup(self, stack: contextlib.AsyncExitStack) -> None:
        settings = self.settings
        self.metrics.build_info.info({"version": __version__})
        parts = self._parts = await build_components(settings, stack, metrics=self.metrics)
        # A real write before anything else: a read-only file or a full disk
        # stops the start here, with one line, instead of passing for ready.
        await parts.store.check_writable()
        restored = 0
        for account in parts.accounts:
            restored += await account.restore()
        try:
            sinks = build_sinks(settings)
        except SinkError as exc:
            raise StartupError(str(exc), exitcodes.CONFIG) from None
        await parts.dispatcher.start(sinks)
        stack.push_async_callback(parts.dispatcher.stop)
        await self._serve_api(parts, stack)
        log.info(
            "started",
            version=__version__,
            event_loop=type(asyncio.get_running_loop()).__module__.partition(".")[0],
            api=self.api_url,
            accounts=parts.accounts.names,
            pending_sends=restored,
            sinks=[s.name for s in settings.sinks],
            store=str(settings.store.path),
        )
        if self._on_started is not None:
            self._on_started()
        self._install_signals()
        stack.callback(self._remove_signals)
        stack.push_async_callback(self._stop_tasks)
        self._start_background(parts)
        await self._start_accounts(parts)

    async def _start_accounts(self, parts: Components) -> None:
        if self.settings.single_account_form:  # its start-up rules: exit 77, 69
            account = parts.accounts.first
            first = await self._single_first_login(account)
            if not self._stop.is_set():
                self._start_account(account, first)
        else:
            for account in parts.accounts:
                self._start_account(account)
        if not self._stop.is_set():
            self._tasks.append(asyncio.create_task(self._announce_ready(), name="ready"))

    async def _single_first_login(self, account: Account) -> FirstLogin:
        """The one account's first login. Refused: an operator's typo, exit 77 (never
        retried). Unreachable without `wait_at_start`: exit 69."""
        first = await account.first_login()
        if first.refused:
            raise StartupError(
                f"GWS refused the credentials of gws.username "
                f"{account.settings.gws.username!r}: {first.error}",
                exitcodes.NOPERM,
            )
        if not first.ok:
            self._first_login_failed(account, first)
        return first

    def _first_login_failed(self, account: Account, first: FirstLogin) -> None:
        """Say so; GWS unreachable without `wait_at_start` is fatal (exit 69)."""
        if first.refused:
            # One of several: it waits and tries again (slowly), the others go on.
            log.error(
                "account_credentials_refused",
                account=account.name,
                username=account.settings.gws.username,
                error=str(first.error),
            )
        elif not self.settings.gws.wait_at_start:
            raise StartupError(f"GWS unreachable at start: {first.error}", exitcodes.UNAVAILABLE)
        else:
            log.warning("gws_login_retry", account=account.name, error=str(first.error))
            self.notifier.status(f"waiting for GWS: {first.error}")

    def _start_account(self, account: Account, first: FirstLogin | None = None) -> None:
        """The account's own task: its first login (unless done), then its listener.
        Each account starts as soon as its own login is done, in the shared pace, so
        their first handshakes come at that pace too."""
        name = f"account-{account.name}"
        account.task = self._supervised(self._account_life(account, first), name)

    async def _account_life(self, account: Account, first: FirstLogin | None) -> None:
        if first is None:
            first = await account.first_login()
            if not first.ok:
                try:
                    self._first_login_failed(account, first)
                except StartupError as exc:
                    self._fail("startup_failed", exit_code=exc.exit_code, error=str(exc))
                    return
        await account.run(first)

    def _start_background(self, parts: Components) -> None:
        """The duties that run until shutdown; any of them ending is fatal."""
        self._supervised(parts.housekeeping.run(), "housekeeping")
        self._supervised(parts.dispatcher.wait_broken(), "sink-workers")
        self._supervised(parts.store.wait_failed_too_long(), "store-health")
        if self.notifier.watchdog_seconds is not None:
            self._supervised(self._watchdog(self.notifier.watchdog_seconds), "watchdog")
        if self.notifier.enabled:
            self._supervised(self._report_status(), "status")

    async def _stop_tasks(self) -> None:
        self._stopping = True  # whatever ends from here on ends on purpose
        await _cancel(self._tasks)

    def _supervised(self, work: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(work, name=name)
        task.add_done_callback(self._ended)
        self._tasks.append(task)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        """A supervised task ended: fine while stopping (the service, or that account),
        fatal otherwise (exit 70)."""
        if self._stopping or task in self._retiring:
            self._retiring.discard(task)
            return
        name = task.get_name()
        if task.cancelled():
            reason = "cancelled"
        elif (error := task.exception()) is not None:
            reason = f"{type(error).__name__}: {error}"
        else:
            reason = str(task.result() or "returned")
        if name == "store-health":
            self._fail("store_failed", error=reason)
        else:
            self._fail("task_stopped", task=name, error=reason)

    def _fail(self, event: str, *, exit_code: int = exitcodes.SOFTWARE, **fields: object) -> None:
        """Stop with `exit_code` (70), saying why in one line (only the first cause is logged)."""
        if self._exit_code is None:
            self._exit_code = exit_code
            log.error(event, exit_code=exit_code, **fields)
        self._stop.set()

    async def _serve_api(self, parts: Components, stack: contextlib.AsyncExitStack) -> None:
        http = self.settings.http
        try:
            server = await start_api_server(build_app(parts.api_context()), http)
        except OSError as exc:
            raise StartupError(
                f"http.listen: cannot listen on {http.host}:{http.port}: {exc.strerror}",
                exitcodes.UNAVAILABLE,
            ) from None
        stack.push_async_callback(server.close)
        self.api_url = f"http://{http.host}:{server.port}"
        for warning in self.settings.warnings:
            log.warning("config_warning", detail=warning)
        if http.token is None and not http.on_loopback:
            log.warning(
                "api_unauthenticated",
                listen=f"{http.host}:{http.port}",
                detail="http.allow_unauthenticated: anyone who can connect may send email",
            )

    async def serve(self) -> int:
        """Until a stop is requested (0), or something fatal happens (70, see `_ended`)."""
        await self._stop.wait()
        self._stopping = True
        return self._exit_code if self._exit_code is not None else exitcodes.OK

    async def shutdown(self) -> None:
        """Drain: sends in flight finish, the listener stops, sinks catch up (bounded)."""
        parts = self._parts
        assert parts is not None
        budget = self.settings.service.shutdown_timeout_seconds
        started = time.monotonic()
        self._stopping = True
        parts.state.draining = True
        self.notifier.stopping("draining")
        log.info(
            "draining",
            sends_in_flight=parts.accounts.in_flight(),
            backlog=parts.dispatcher.backlog(),
            budget_seconds=budget,
        )
        await parts.accounts.wait_idle(self.settings.gws.request_timeout_seconds + 1)
        await asyncio.gather(*(self._close_account(a) for a in parts.accounts))
        await parts.writer.flush()
        remaining = max(0.0, budget - (time.monotonic() - started))
        drained = await parts.dispatcher.drain(remaining)
        log.info(
            "stopped",
            drained=drained,
            backlog=parts.dispatcher.backlog(),
            seconds=round(time.monotonic() - started, 3),
        )

    async def _announce_ready(self) -> None:
        """READY=1 once every account is subscribed, or refused at its first login."""
        assert self._parts is not None
        accounts = list(self._parts.accounts)
        subscribed = await asyncio.gather(*(a.wait_settled() for a in accounts))
        self.notifier.ready(self._status_line())
        log.info(
            "ready",
            accounts=len(accounts),
            subscribed=sum(subscribed),
            transport=accounts[0].listener.transport if accounts else None,
        )

    def _retire(self, account: Account) -> None:
        """The account's task is about to end on purpose: not a fatal error."""
        if account.task is not None:
            self._retiring.add(account.task)

    async def _close_account(self, account: Account) -> None:
        """Unsubscribe and disconnect one account (shutdown: the store stays open)."""
        self._retire(account)
        await account.stop_listening()

    # -- signals ----------------------------------------------------------------------

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        self._previous_handlers = {
            signum: signal.getsignal(signum) for signum in (*_STOP_SIGNALS, signal.SIGHUP)
        }
        for signum in _STOP_SIGNALS:
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)

    def _remove_signals(self) -> None:
        """Give the signals back as they were (asyncio.run's own SIGINT handler included)."""
        loop = asyncio.get_running_loop()
        for signum, previous in self._previous_handlers.items():
            loop.remove_signal_handler(signum)
            if previous is not None:
                signal.signal(signum, previous)

    def _on_stop_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("forced_exit", signal=signal.Signals(signum).name)
            # Everything acknowledged is already in the store.
            os._exit(exitcodes.SOFTWARE)
        log.info("stop_requested", signal=signal.Signals(signum).name)
        self.request_stop()

    def request_stop(self) -> None:
        self._stop.set()

    def _on_reload_signal(self) -> None:
        task = asyncio.create_task(self.reload(), name="reload")
        self._tasks.append(task)
        task.add_done_callback(self._reloaded)

    def _reloaded(self, task: asyncio.Task[bool]) -> None:
        self._tasks.remove(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("reload_failed", error=f"{type(error).__name__}: {error}")

    async def reload(self) -> bool:
        """Re-read the config: the sinks and the send and shutdown timeouts change; the
        rest needs a restart.

        One at a time: a SIGHUP during a reload waits for it.
        """
        async with self._reload_lock:
            return await self._reload()

    async def _reload(self) -> bool:
        source = self.settings.source
        parts = self._parts
        if source is None or parts is None:
            return False
        for account in parts.accounts:
            account.listener.retry_login_now()  # a rotated password file is tried at once
        try:
            new = load_settings(Path(source))
            sinks = build_sinks(new)
        except (ConfigError, SinkError) as exc:
            log.error("reload_rejected", error=str(exc), config=str(source))
            return False
        await parts.dispatcher.replace_sinks(sinks)
        await self._replace_accounts(parts, new)
        for account in parts.accounts:
            account.tracker.set_send_timeout(new.correlation.send_timeout_seconds)
        # What was applied, no more: the rest of [correlation] needs a restart.
        correlation = replace(
            self.settings.correlation, send_timeout_seconds=new.correlation.send_timeout_seconds
        )
        self.settings = replace(
            self.settings,
            sinks=new.sinks,
            accounts=new.accounts,
            correlation=correlation,
            service=new.service,
        )
        log.info(
            "reloaded",
            accounts=parts.accounts.names,
            sinks=[s.name for s in new.sinks],
            send_timeout_seconds=new.correlation.send_timeout_seconds,
        )
        return True

    async def _replace_accounts(self, parts: Components, new: Settings) -> None:
        """Start added accounts, stop removed ones, restart changed ones; the others
        keep their sessions. A removed account's pending sends stay in the store
        (`/v1/status` shows them) and are read back if it comes back."""
        wanted = {a.name: a for a in new.accounts}
        for account in list(parts.accounts):
            settings = wanted.get(account.name)
            if settings is not None and same_account(settings, account.settings):
                continue
            parts.accounts.remove(account.name)
            self._retire(account)
            await account.close()
            if settings is None:
                self.metrics.forget_account(account.name)
                log.info(
                    "account_removed", account=account.name, pending_sends=len(account.tracker)
                )
        for settings in new.accounts:
            if parts.accounts.get(settings.name) is not None:
                continue
            account = parts.new_account(settings)
            restored = await account.restore()
            parts.accounts.add(account)
            log.info("account_started", account=account.name, pending_sends=restored)
            self._start_account(account)

    # -- background duties --------------------------------------------------------------

    def _status_line(self) -> str:
        parts = self._parts
        if parts is None:
            return "starting"
        accounts = list(parts.accounts)
        subscribed = sum(1 for a in accounts if a.listener.subscribed)
        if parts.state.draining:
            head = "draining"
        elif subscribed == len(accounts):
            head = "connected"
        else:
            head = "reconnecting"
        if len(accounts) > 1:
            head += f" ({subscribed}/{len(accounts)} accounts subscribed)"
        backlog = sum(parts.dispatcher.backlog().values())
        return f"{head}; {parts.accounts.pending_sends()} pending sends; backlog {backlog}"

    async def _report_status(self) -> None:
        while True:
            self.notifier.status(self._status_line())
            await asyncio.sleep(STATUS_EVERY_SECONDS)

    async def _watchdog(self, interval: float) -> None:
        # Pinged from the event loop itself: a loop stuck for the whole
        # WATCHDOG_USEC is killed by systemd rather than left hanging.
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval / 2)
