"""The service on a failing store, in-process: never ready while broken, never a silent stop.

`Service.run()` runs beside the in-process simulator with a real store on `tmp_path`;
the fault is real (another process holds SQLite's write lock past the busy timeout).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon import exitcodes
from daemon.config import Settings, settings_from_dict
from daemon.service import Service
from daemon.simulator import Simulator
from tests.harness.log_capture import captured_logs
from tests.harness.service_runs import DEADLINE, SEND_BODY, Started, send, start, wait_ready
from tests.harness.store_faults import ExternalLock
from tests.harness.waiting import wait_until


def settings_with(daemon_config: dict[str, Any], tmp_path: Path, **store: float | int) -> Settings:
    daemon_config["store"] |= {"busy_timeout_seconds": 0.05, **store}
    return settings_from_dict(
        daemon_config, base=tmp_path, environ={}, source=tmp_path / "gws-notifyd.toml"
    )


async def readyz(http: aiohttp.ClientSession, api: str) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{api}/readyz") as response:
        return response.status, await response.json()


async def test_a_locked_store_is_not_ready_refuses_sends_and_all_is_well_once_released(
    daemon_config: dict[str, Any],
    tmp_path: Path,
    started: Started,
    http: aiohttp.ClientSession,
    simulator: Simulator,
) -> None:
    service, _ = await start(settings_with(daemon_config, tmp_path), started)
    api = await wait_ready(service, http)

    async with ExternalLock(tmp_path / "state.db"):
        async with http.post(f"{api}/api/v2/me/emails/L-1", json=SEND_BODY) as response:
            assert response.status == 503
            assert response.headers["Retry-After"]
        status, document = await readyz(http, api)
        assert status == 503
        assert document["failed"] == ["store"]
        assert "locked" in document["checks"]["storeError"]
        assert simulator.sends_received == 0  # never forwarded

    async def ready() -> bool:
        return (await readyz(http, api))[0] == 200

    await wait_until(ready, timeout=DEADLINE, what="/readyz 200 once the lock is gone")
    await send(http, api, "L-2")
    assert simulator.sends_received == 1


async def test_a_store_failing_longer_than_failure_exit_seconds_exits_70(
    daemon_config: dict[str, Any],
    tmp_path: Path,
    started: Started,
    http: aiohttp.ClientSession,
) -> None:
    service, running = await start(
        settings_with(daemon_config, tmp_path, failure_exit_seconds=0.5), started
    )
    await wait_ready(service, http)

    async with ExternalLock(tmp_path / "state.db"):
        exit_code = await asyncio.wait_for(asyncio.shield(running), DEADLINE)

    assert exit_code == exitcodes.SOFTWARE == 70


@pytest.mark.parametrize("task_name", ["housekeeping", "account-default", "sink-archive"])
async def test_a_background_task_that_ends_on_its_own_exits_70(
    task_name: str,
    daemon_config: dict[str, Any],
    tmp_path: Path,
    started: Started,
    http: aiohttp.ClientSession,
) -> None:
    service, running = await start(settings_with(daemon_config, tmp_path), started)
    await wait_ready(service, http)
    [task] = [t for t in asyncio.all_tasks() if t.get_name() == task_name]

    task.cancel()  # stopped by something other than the shutdown

    assert await asyncio.wait_for(asyncio.shield(running), DEADLINE) == exitcodes.SOFTWARE


async def test_a_start_that_fails_says_why_in_one_error_line(
    daemon_config: dict[str, Any], tmp_path: Path, simulator: Simulator
) -> None:
    daemon_config["gws"]["password"] = "not-the-password"
    service = Service(settings_with(daemon_config, tmp_path))

    with captured_logs() as logs:
        exit_code = await asyncio.wait_for(service.run(), DEADLINE)

    assert exit_code == exitcodes.NOPERM
    # The background tasks it had started end with it, on purpose: no more error lines.
    assert [line["event"] for line in logs if line["level"] == "error"] == ["startup_failed"]
