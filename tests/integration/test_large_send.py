"""A Send just under `http.max_body_bytes` is correlated like any other: its notification stays."""

from __future__ import annotations

from pathlib import Path

from daemon.simulator import Simulator
from tests.harness.daemon_process import DaemonProcess, send_body, write_config


async def test_the_outcome_of_a_send_just_under_the_body_limit_is_correlated(
    simulator: Simulator, tmp_path: Path
) -> None:
    # Over the default notification limit (1 MiB) once GWS has added the email's other fields.
    max_body = 1024 * 1024
    assert simulator.base_url
    config = write_config(tmp_path, gws_url=simulator.base_url, http={"max_body_bytes": max_body})
    body = send_body(body="x" * (max_body - 256))
    async with DaemonProcess(config) as daemon:
        status, answer = await daemon.send("LARGE-1", body)
        assert status == 200, answer
        [event] = await daemon.wait_events(tmp_path / "events.jsonl", 1)
        assert event["type"] == "gws.email.state_changed"
        assert event["data"]["correlated"] is True
        status, record = await daemon.get_json(f"/v1/sends/{answer['sendId']}")
        assert record["status"] == "resolved"
