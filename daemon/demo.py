"""`gws-notifyd demo`: the simulator and the daemon on free loopback ports, three Sends.

1. accepted by GWS, then a StatusChange to Sent          -> gws.email.state_changed
2. rejected by GWS (a queue it does not know)             -> gws.email.send_rejected
3. accepted, then an Error notification                   -> gws.email.state_changed (Error)

Both run in this process but talk to each other only over HTTP and CometD,
exactly as against a real GWS. The events are read back from the JSON-lines
sink, which is what an integration would consume.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import orjson

from daemon import exitcodes
from daemon.config import Settings, settings_from_dict
from daemon.service import Service
from daemon.simulator import Simulator, SimulatorSettings

DEMO_PASSWORD = "demo-password"  # the simulator's, invented for the demo  # noqa: S105
ERROR_EMAIL = "DEMO-0003"

SENDS: tuple[tuple[str, str, str, str], ...] = (
    ("DEMO-0001", "Outbound", "Your order has shipped", "accepted, then Sent"),
    ("DEMO-0002", "NoSuchQueue", "Refund confirmation", "rejected by GWS"),
    (ERROR_EMAIL, "Outbound", "Appointment reminder", "accepted, then an Error"),
)


def _send_body(queue: str, subject: str) -> dict[str, Any]:
    return {
        "operationName": "Send",
        "queueName": queue,
        "email": {
            "from": "support@acme.example",
            "to": ["customer@example.com"],
            "subject": subject,
            "body": f"<p>{subject}</p>",
        },
    }


def _read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


async def _wait_for_events(path: Path, count: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    events: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        events = await asyncio.to_thread(_read_events, path)
        if len(events) >= count:
            return events
        await asyncio.sleep(0.05)
    return events


def _print_outcomes(events: list[dict[str, Any]], out: TextIO) -> None:
    out.write(
        f"\n{'email':<11} {'outcome':<26} {'state':<10} {'refId':>5} {'sendId':<28} "
        f"{'latency':>8}\n"
    )
    for event in events:
        data = event["data"]
        send = data.get("send") or {}
        outcome = event["type"].removeprefix("gws.email.")
        if data.get("notificationType") == "Error":
            outcome += " (Error)"
        latency = data.get("latencySeconds")
        out.write(
            f"{data['emailId']:<11} {outcome:<26} {data.get('state') or '-':<10} "
            f"{data.get('referenceId') if data.get('referenceId') is not None else '-':>5} "
            f"{send.get('sendId', '-'):<28} "
            f"{f'{latency * 1000:.0f} ms' if latency is not None else '-':>8}\n"
        )
        if data.get("statusMessage"):
            out.write(
                f"{'':<11}   GWS said: statusCode {data.get('statusCode')}, "
                f"{data['statusMessage']}\n"
            )


async def run_demo(*, keep_running: bool = False, out: TextIO = sys.stdout) -> int:
    simulator = Simulator(
        SimulatorSettings(
            password=DEMO_PASSWORD, error_emails={ERROR_EMAIL}, notify_delay_seconds=0.05
        )
    )
    gws_url = await simulator.start("127.0.0.1", 0)
    workdir = Path(tempfile.mkdtemp(prefix="gws-notifyd-demo-"))
    service = Service(_demo_settings(gws_url, workdir))
    running = asyncio.create_task(service.run())
    try:
        out.write(f"GWS simulator  {gws_url}  (user agent1)\n")
        api = await _wait_until_ready(service, running, timeout=15)
        if api is None:
            out.write("the daemon did not become ready; see the log above\n")
            return exitcodes.FAILURE
        out.write(f"gws-notifyd    {api}  (state in {workdir})\n\n")
        await _send_all(api, out)
        if not await _report(api, workdir / "events.jsonl", out):
            return exitcodes.FAILURE
        if keep_running:
            out.write("\nrunning until Ctrl-C ...\n")
            with contextlib.suppress(asyncio.CancelledError):
                await running
        return exitcodes.OK
    finally:
        service.request_stop()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await simulator.stop()


def _demo_settings(gws_url: str, workdir: Path) -> Settings:
    return settings_from_dict(
        {
            "gws": {"base_url": gws_url, "username": "agent1", "password": DEMO_PASSWORD},
            "http": {"listen": "127.0.0.1:0"},
            "store": {"path": "state.db"},
            "correlation": {"send_timeout_seconds": 30},
            "sinks": [{"name": "archive", "type": "jsonl", "path": "events.jsonl"}],
            "service": {"shutdown_timeout_seconds": 5},
        },
        base=workdir,
        environ={},
    )


async def _wait_until_ready(
    service: Service, running: asyncio.Task[int], *, timeout: float
) -> str | None:
    """The daemon's API URL once /readyz says so; None if it stopped or took too long."""
    deadline = time.monotonic() + timeout
    while True:
        api = service.api_url
        if api is not None and await _ready(api):
            return api
        if running.done() or time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.05)


async def _send_all(api: str, out: TextIO) -> None:
    async with aiohttp.ClientSession() as http:
        for email_id, queue, subject, meaning in SENDS:
            async with http.post(
                f"{api}/api/v2/me/emails/{email_id}", json=_send_body(queue, subject)
            ) as response:
                answer = await response.json()
            out.write(
                f"POST /api/v2/me/emails/{email_id}  ({meaning})\n"
                f"  -> HTTP {response.status} {orjson.dumps(answer).decode()}\n"
            )


async def _report(api: str, events_path: Path, out: TextIO) -> bool:
    """Print the outcomes, where to look and the counters; False unless all three came."""
    events = await _wait_for_events(events_path, len(SENDS), timeout=15)
    _print_outcomes(events, out)
    out.write(f"\nevents (CloudEvents, one per line): {events_path}\n")
    out.write(f"metrics: {api}/metrics   sends: {api}/v1/sends   status: {api}/v1/status\n")
    async with aiohttp.ClientSession() as http, http.get(f"{api}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(("gws_notifyd_sends_total", "gws_notifyd_correlations_total")):
            out.write(f"  {line}\n")
    if len(events) < len(SENDS):
        out.write(f"expected {len(SENDS)} outcomes, got {len(events)}\n")
        return False
    return True


async def _ready(api: str) -> bool:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{api}/readyz") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False
