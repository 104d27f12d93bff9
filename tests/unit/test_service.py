"""The service's life in-process: start-up, readiness, stop, exit codes at start, reload.

`Service.run()` runs as a task beside the in-process simulator, with a real store and
a JSON-lines sink on `tmp_path`; the API is asked over real HTTP on loopback.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon import exitcodes
from daemon.config import Settings, settings_from_dict
from daemon.sends import SendStatus
from daemon.service import Service
from daemon.simulator import Simulator
from daemon.store import Store
from tests.harness.daemon_process import read_jsonl
from tests.harness.service_runs import (
    DEADLINE,
    Started,
    send,
    start,
    status_of,
    wait_ready,
)
from tests.harness.waiting import wait_until


@pytest.fixture
def settings(daemon_config: dict[str, Any], tmp_path: Path) -> Settings:
    """Settings from `daemon_config`, as if read from `tmp_path/gws-notifyd.toml`."""
    return settings_from_dict(
        daemon_config, base=tmp_path, environ={}, source=tmp_path / "gws-notifyd.toml"
    )


def sink_names(document: dict[str, Any]) -> list[str]:
    return [sink["name"] for sink in document["sinks"]]


async def status_document(http: aiohttp.ClientSession, api: str) -> dict[str, Any]:
    async with http.get(f"{api}/v1/status") as response:
        document: dict[str, Any] = await response.json()
    return document


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        # SO_REUSEADDR: connections in TIME_WAIT do not count, a listener does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            probe.listen()
        except OSError:
            return False
    return True


# -- start-up and stop -------------------------------------------------------------------


async def test_run_serves_the_api_and_is_ready_once_subscribed(
    settings: Settings,
    started: Started,
    http: aiohttp.ClientSession,
    simulator: Simulator,
    tmp_path: Path,
) -> None:
    service, _ = await start(settings, started)

    api = await wait_ready(service, http)

    assert simulator.subscriber_count() == 1
    assert await status_of(http, f"{api}/healthz") == 200
    send_id = await send(http, api, "SV-1")
    [event] = await wait_until(
        lambda: read_jsonl(tmp_path / "events.jsonl"),
        timeout=DEADLINE,
        what="the event in the sink",
    )
    assert event["data"]["send"]["sendId"] == send_id


async def test_request_stop_makes_run_return_0_and_closes_everything(
    settings: Settings,
    started: Started,
    http: aiohttp.ClientSession,
    simulator: Simulator,
    tmp_path: Path,
) -> None:
    service, running = await start(settings, started)
    api = await wait_ready(service, http)
    send_id = await send(http, api, "SV-2")
    await wait_until(
        lambda: read_jsonl(tmp_path / "events.jsonl"),
        timeout=DEADLINE,
        what="the event in the sink",
    )
    port = int(api.rsplit(":", 1)[1])

    service.request_stop()
    exit_code = await asyncio.wait_for(running, DEADLINE)

    assert exit_code == exitcodes.OK
    assert port_is_free(port)
    assert simulator.subscriber_count() == 0  # disconnected, not just gone
    # The last connection to the store is closed: SQLite removed its WAL.
    assert not (tmp_path / "state.db-wal").exists()
    reopened = Store(tmp_path / "state.db")
    try:
        stored = reopened.get_send(send_id)
        reopened.check_writable()
    finally:
        reopened.close()
    assert stored is not None
    assert stored.status is SendStatus.RESOLVED


async def test_run_leaves_no_signal_handlers_behind(
    settings: Settings,
    started: Started,
    http: aiohttp.ClientSession,
) -> None:
    watched = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    before = [signal.getsignal(signum) for signum in watched]
    service, running = await start(settings, started)
    await wait_ready(service, http)

    service.request_stop()
    assert await asyncio.wait_for(running, DEADLINE) == exitcodes.OK

    assert [signal.getsignal(signum) for signum in watched] == before


async def test_refused_credentials_at_start_return_noperm(
    daemon_config: dict[str, Any], tmp_path: Path, simulator: Simulator
) -> None:
    daemon_config["gws"]["password"] = "not-the-password"
    service = Service(settings_from_dict(daemon_config, base=tmp_path, environ={}))

    exit_code = await asyncio.wait_for(service.run(), DEADLINE)

    assert exit_code == exitcodes.NOPERM == 77
    assert simulator.subscriber_count() == 0
    # What start-up had opened is closed again.
    assert service.api_url is not None
    assert port_is_free(int(service.api_url.rsplit(":", 1)[1]))


async def test_gws_unreachable_at_start_without_waiting_returns_unavailable(
    daemon_config: dict[str, Any], tmp_path: Path, closed_port: int
) -> None:
    daemon_config["gws"] |= {"base_url": f"http://127.0.0.1:{closed_port}", "wait_at_start": False}
    service = Service(settings_from_dict(daemon_config, base=tmp_path, environ={}))

    exit_code = await asyncio.wait_for(service.run(), DEADLINE)

    assert exit_code == exitcodes.UNAVAILABLE == 69


async def test_while_waiting_for_gws_at_start_it_is_alive_not_ready_and_stops_cleanly(
    daemon_config: dict[str, Any],
    tmp_path: Path,
    closed_port: int,
    started: Started,
    http: aiohttp.ClientSession,
) -> None:
    daemon_config["gws"]["base_url"] = f"http://127.0.0.1:{closed_port}"  # wait_at_start: true
    service, running = await start(
        settings_from_dict(daemon_config, base=tmp_path, environ={}), started
    )
    api = await wait_until(lambda: service.api_url, timeout=DEADLINE, what="the API to listen")

    assert await status_of(http, f"{api}/healthz") == 200
    async with http.get(f"{api}/readyz") as response:
        assert response.status == 503
        assert (await response.json())["failed"] == ["subscribed"]
    service.request_stop()
    assert await asyncio.wait_for(running, DEADLINE) == exitcodes.OK


# -- reload ----------------------------------------------------------------------------------


async def test_reload_takes_new_sinks_and_a_new_send_timeout_for_pending_sends(
    settings: Settings,
    started: Started,
    http: aiohttp.ClientSession,
    simulator: Simulator,
    tmp_path: Path,
) -> None:
    service, _ = await start(settings, started)
    api = await wait_ready(service, http)
    simulator.settings.drop_emails.add("SV-3")  # its outcome can only come by read-back
    send_id = await send(http, api, "SV-3")
    assert simulator.base_url is not None
    (tmp_path / "gws-notifyd.toml").write_text(
        f"""
[gws]
base_url = "{simulator.base_url}"
username = "agent1"
password = "agent1-password"

[store]
path = "state.db"

[correlation]
send_timeout_seconds = 0.3

[[sinks]]
name = "audit"
type = "jsonl"
path = "audit.jsonl"
"""
    )

    assert await service.reload() is True

    assert [s.name for s in service.settings.sinks] == ["audit"]
    assert service.settings.correlation.send_timeout_seconds == 0.3
    assert sink_names(await status_document(http, api)) == ["audit"]
    # The send made before the reload is read back at its new, shorter deadline.
    [event] = await wait_until(
        lambda: read_jsonl(tmp_path / "audit.jsonl"), timeout=DEADLINE, what="the read-back event"
    )
    assert event["data"]["send"]["sendId"] == send_id
    assert event["data"]["reconciled"] is True
    assert read_jsonl(tmp_path / "events.jsonl") == []


async def test_reload_of_a_broken_file_is_rejected_and_the_running_settings_kept(
    settings: Settings,
    started: Started,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    service, _ = await start(settings, started)
    api = await wait_ready(service, http)
    before = service.settings
    (tmp_path / "gws-notifyd.toml").write_text("[gws]\nbase_url = \n")

    assert await service.reload() is False

    assert service.settings is before
    assert sink_names(await status_document(http, api)) == ["archive"]
