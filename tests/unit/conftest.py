"""Fixtures for the in-process component tests: a simulated GWS, a real store, a wired tracker.

Every part is real (the simulator on loopback, SQLite on `tmp_path`, the metrics
registry); each fixture closes what it opened, so no test leaks into the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from daemon.api import build_app
from daemon.app import Components, build_components, build_sinks, new_metrics
from daemon.config import GwsSettings, Secret, settings_from_dict
from daemon.correlator import Correlator
from daemon.events import EventFactory
from daemon.gws.session import GwsSession
from daemon.metrics import AccountMetrics, Metrics
from daemon.simulator import Simulator
from daemon.store import AsyncStore, OutcomeWriter, Store
from daemon.store.rows import StoredEvent
from daemon.tracker import Tracker
from tests.harness.service_runs import DEADLINE, Started

SIMULATOR_PASSWORD = "agent1-password"  # the simulator's well-known demo credential
EMAILS_CHANNEL = "/v2/me/emails"
# The tracker fixture's send timeout: long enough that no deadline passes unless a test says so.
SEND_TIMEOUT_SECONDS = 60.0


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def gws_settings(simulator: Simulator) -> GwsSettings:
    """GWS settings for the simulator's agent, with a short request timeout."""
    assert simulator.base_url is not None
    return GwsSettings(
        base_url=simulator.base_url,
        username=simulator.settings.username,
        password=Secret(SIMULATOR_PASSWORD),
        request_timeout_seconds=3.0,
        allow_websocket=False,
        batch_window_seconds=0.0,
    )


@pytest.fixture
def daemon_config(simulator: Simulator) -> dict[str, Any]:
    """A whole config file's content (as `settings_from_dict` takes it) against the simulator.

    Paths are relative to the test's `tmp_path`; tests edit the dict before building.
    """
    assert simulator.base_url is not None
    return {
        "gws": {
            "base_url": simulator.base_url,
            "username": simulator.settings.username,
            "password": SIMULATOR_PASSWORD,
            "request_timeout_seconds": 3,
            "allow_websocket": False,
            "batch_window_seconds": 0,
        },
        "http": {"listen": "127.0.0.1:0"},
        "store": {"path": "state.db"},
        "correlation": {"send_timeout_seconds": SEND_TIMEOUT_SECONDS},
        "sinks": [{"name": "archive", "type": "jsonl", "path": "events.jsonl"}],
        "service": {"shutdown_timeout_seconds": 3},
    }


@pytest.fixture
def metrics() -> Metrics:
    """A registry of the test's own, with the GWS adapter's label sets."""
    return new_metrics()


@pytest.fixture
def account_metrics(metrics: Metrics) -> AccountMetrics:
    """The `default` account's view of the test's registry."""
    return metrics.account("default")


@pytest.fixture
def metric_value(metrics: Metrics) -> Callable[..., float]:
    """`metric_value(name, **labels)`: a sample of the test's registry (0.0 when absent);
    a series with an `account` label is the `default` account's unless one is named."""

    def read(name: str, **labels: str) -> float:
        value = metrics.registry.get_sample_value(name, labels)
        if value is None and "account" not in labels:
            value = metrics.registry.get_sample_value(name, {"account": "default", **labels})
        return 0.0 if value is None else value

    return read


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AsyncStore]:
    """A real SQLite store on `tmp_path`, run on its own thread as the daemon runs it."""
    opened = AsyncStore(Store(tmp_path / "state.db"))
    yield opened
    await opened.close()


@pytest.fixture
def committed() -> list[dict[str, Any]]:
    """The CloudEvents the writer reported committed (its `on_committed`), parsed, in order."""
    return []


@pytest.fixture
def clock() -> Callable[[], float]:
    """The tracker's clock; a test module may override it with one it moves itself."""
    return time.time


@pytest.fixture
async def tracker(
    store: AsyncStore,
    account_metrics: AccountMetrics,
    committed: list[dict[str, Any]],
    clock: Callable[[], float],
) -> AsyncIterator[Tracker]:
    """A tracker wired as `daemon.app` wires it, its commits captured in `committed`."""

    def on_committed(head: int, events: Sequence[StoredEvent]) -> None:
        assert head > 0
        committed.extend(orjson.loads(event.body) for event in events)

    writer = OutcomeWriter(store, on_committed=on_committed, cursors=lambda: None)
    tracked = Tracker(
        correlator=Correlator(send_timeout_seconds=SEND_TIMEOUT_SECONDS),
        store=store,
        writer=writer,
        events=EventFactory(source="https://gws.example.com/api/v2/me?account=default"),
        metrics=account_metrics,
        channels=[EMAILS_CHANNEL],
        clock=clock,
    )
    yield tracked
    await tracked.flush()


@pytest.fixture
async def gws_session(
    gws_settings: GwsSettings, account_metrics: AccountMetrics
) -> AsyncIterator[GwsSession]:
    """An opened (not logged-in) GWS session with the simulator."""
    opened = GwsSession(gws_settings, account_metrics)
    opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def started() -> AsyncIterator[Started]:
    """Services a test runs (`tests.harness.service_runs.start`); those still running at the
    end are stopped."""
    services: Started = []
    yield services
    for service, running in services:
        service.request_stop()
        await asyncio.wait_for(running, DEADLINE)


ApiClient = TestClient[web.Request, web.Application]


@pytest.fixture
async def serve_api(
    daemon_config: dict[str, Any], tmp_path: Path, metrics: Metrics
) -> AsyncIterator[Callable[..., Awaitable[tuple[ApiClient, Components]]]]:
    """`await serve_api(token=None, **http_keys)`: the local API on loopback in front of the
    daemon's parts (built as the service builds them), logged in to GWS."""
    async with contextlib.AsyncExitStack() as stack:

        async def serve(*, token: str | None = None, **http: Any) -> tuple[ApiClient, Components]:
            daemon_config["http"].update(http)
            if token is not None:
                (tmp_path / "api-token").write_text(token + "\n")
                daemon_config["http"]["token_file"] = "api-token"
            settings = settings_from_dict(daemon_config, base=tmp_path, environ={})
            parts = await build_components(settings, stack, metrics=metrics)
            await parts.dispatcher.start(build_sinks(settings))
            stack.push_async_callback(parts.dispatcher.stop)
            for account in parts.accounts:
                await account.restore()
                await account.session.login()
            client: ApiClient = TestClient(
                TestServer(build_app(parts.api_context()), host="127.0.0.1")
            )
            await stack.enter_async_context(client)
            return client, parts

        yield serve
