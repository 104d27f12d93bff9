"""The daemon as a subprocess on a failing store: never ready while broken, never a silent stop.

Real faults (`tests.harness.store_faults`): a path it cannot create, a read-only
file, a corrupted page, a full disk (a small tmpfs), another process holding the
write lock. Each ends in one of two ways: the daemon says so and recovers, or it
exits 70 with one line saying why (systemd restarts it) — never a traceback,
never a quiet READY.
"""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
from pathlib import Path
from typing import Any

import orjson

from daemon.sends import SendRecord
from daemon.simulator import Simulator
from daemon.store import Store, send_row
from tests.harness.daemon_process import (
    SIM_PASSWORD,
    DaemonProcess,
    send_body,
    write_config,
)
from tests.harness.store_faults import (
    ExternalLock,
    corrupt_page,
    fill_disk,
    read_only,
    root_page,
    small_disk,
)
from tests.harness.waiting import wait_until

EXIT_TIMEOUT = 20.0


async def run_until_exit(config: Path) -> tuple[int, list[str]]:
    """`gws-notifyd run` that is expected to stop on its own: exit code and every output line."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon",
        "run",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "GWS_PASSWORD": SIM_PASSWORD},
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), EXIT_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"the daemon did not exit within {EXIT_TIMEOUT:g} s") from None
    assert process.returncode is not None
    return process.returncode, [line for line in output.decode().splitlines() if line.strip()]


def the_one_line(lines: list[str]) -> dict[str, Any]:
    """The only line of output, which must be a JSON log line at level error."""
    assert len(lines) == 1, "\n".join(lines)
    entry: dict[str, Any] = orjson.loads(lines[0])
    assert entry["level"] == "error"
    return entry


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- start-up --------


async def test_a_store_path_under_a_file_exits_70_with_one_line(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    (tmp_path / "in-the-way").write_text("a file where a directory should be")
    config = write_config(
        tmp_path,
        gws_url=simulator.base_url,
        store={"path": str(tmp_path / "in-the-way" / "state.db")},
    )

    code, lines = await run_until_exit(config)

    assert code == 70
    entry = the_one_line(lines)
    assert entry["event"] == "store_failed"
    assert "in-the-way" in entry["error"]


async def test_a_read_only_store_is_not_ready_at_start_it_exits_70_with_one_line(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    path = tmp_path / "state.db"
    store = Store(path)
    store.sync_sinks(["archive"])  # as a previous run left it: start-up has nothing to write
    store.close()
    config = write_config(tmp_path, gws_url=simulator.base_url)

    with read_only(path):
        code, lines = await run_until_exit(config)

    assert code == 70
    assert "readonly" in the_one_line(lines)["error"]


async def test_a_corrupted_store_is_refused_at_start_with_how_to_recover(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    path = tmp_path / "state.db"
    store = Store(path)
    store.commit_outcomes(
        inserts=[
            send_row(SendRecord(f"s{n:05d}", f"e{n}", "Outbound", 1.0, "x" * 300))
            for n in range(500)
        ]
    )
    store.close()
    corrupt_page(path, root_page(path, "sends"))
    config = write_config(tmp_path, gws_url=simulator.base_url)

    code, lines = await run_until_exit(config)

    assert code == 70
    error = the_one_line(lines)["error"]
    assert "corrupt" in error
    assert ".recover" in error


async def test_the_files_it_creates_are_private_under_umask_022(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    directory = tmp_path / "state"
    config = write_config(
        tmp_path, gws_url=simulator.base_url, store={"path": str(directory / "state.db")}
    )
    previous = os.umask(0o022)  # inherited by the daemon
    try:
        async with DaemonProcess(config) as daemon:
            await daemon.send("P-1")
            files = {p.name: mode(p) for p in directory.iterdir()}
    finally:
        os.umask(previous)
    assert mode(directory) == 0o700
    assert files == {"state.db": 0o600, "state.db-wal": 0o600, "state.db-shm": 0o600}


# -- a full disk --------


async def test_on_a_full_disk_sends_get_503_nothing_is_forwarded_and_sigterm_is_clean(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    with small_disk(tmp_path / "disk") as disk:
        config = write_config(
            tmp_path, gws_url=simulator.base_url, store={"path": str(disk / "state.db")}
        )
        daemon = DaemonProcess(config)
        await daemon.start()
        try:
            fill_disk(disk)
            async with daemon.http.post(
                f"{daemon.api}/api/v2/me/emails/FULL-1", json=send_body()
            ) as response:
                assert response.status == 503
                assert response.headers["Retry-After"]
            assert simulator.sends_received == 0
            status, ready = await daemon.readyz()
            assert status == 503
            assert "store" in ready["failed"]
            assert "full" in ready["checks"]["storeError"]

            await daemon.signal(signal.SIGTERM)
            await daemon.wait_exit(EXIT_TIMEOUT)
        finally:
            await daemon.stop()
        assert b"Traceback" not in daemon.stderr
        assert not [line for line in daemon.raw_stdout if b"Traceback" in line]
        assert any(e.get("event") == "send_not_recorded" for e in daemon.logs)

        # Started again on the disk that is still full: not ready, one line, 70.
        code, lines = await run_until_exit(config)
    assert code == 70
    assert "full" in the_one_line(lines)["error"]


# -- a lock held by another process --------


async def test_a_lock_held_past_failure_exit_seconds_exits_70_with_one_error_line(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    config = write_config(
        tmp_path,
        gws_url=simulator.base_url,
        store={"busy_timeout_seconds": 0.2, "failure_exit_seconds": 1.5},
    )
    async with DaemonProcess(config) as daemon, ExternalLock(tmp_path / "state.db"):
        await daemon.wait_ready_status(503)
        _, ready = await daemon.readyz()
        assert ready["failed"] == ["store"]
        code = await daemon.wait_exit(EXIT_TIMEOUT)
    assert code == 70
    errors = [e for e in daemon.logs if e.get("level") == "error"]
    assert [e["event"] for e in errors] == ["store_failed"]
    assert "locked" in errors[0]["error"]
    assert any(e.get("event") == "store_retry" for e in daemon.logs)
    assert b"Traceback" not in daemon.stderr


async def test_after_a_lock_is_released_sends_are_recorded_again(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    config = write_config(tmp_path, gws_url=simulator.base_url, store={"busy_timeout_seconds": 0.2})
    async with DaemonProcess(config) as daemon:
        async with ExternalLock(tmp_path / "state.db"):
            status, _ = await daemon.send("LOCK-1")
            assert status == 503
        await daemon.wait_ready_status(200)
        status, answer = await daemon.send("LOCK-2")
        assert status == 200
        events = await daemon.wait_events(tmp_path / "events.jsonl", 1)
        assert events[-1]["data"]["send"]["sendId"] == answer["sendId"]
        recovered = await daemon.wait_log(lambda e: e.get("event") == "store_recovered")
        assert recovered["duty"]

    await wait_until(lambda: simulator.sends_received == 1, timeout=5, what="one Send at GWS")
