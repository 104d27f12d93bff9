"""Sends through the daemon vs straight to the simulator.

    .venv/bin/python bench/send.py [--quick] [--total N] [--concurrency C] [--sequential M]

The simulator (`gws-notifyd simulate`) runs in a process of its own, the daemon in
another, against it (subscribed, so the simulator's notifications are correlated).
From this process: M sends one at a time, then N sends C at a time, each way, with a
fresh email id per send. Directly, a send carries what the simulator wants (Basic
auth, the JSESSIONID cookie and the CSRF token learnt from GET /api/v2/me); through
the daemon it is the plain POST /api/v2/me/emails/{id}. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import measure
import notifyd
import orjson
import peers
import profiling
import psutil
import report
import stats
from basics import BenchError

from tests.harness.daemon_process import SIM_PASSWORD, DaemonProcess

# Targets against the simulator answered directly, in the same run.
TARGET_RATE_RATIO = 0.6  # through the daemon / direct, `--concurrency` in flight
TARGET_ADDED_P99_MS = 1.5  # one at a time: the daemon's p99 minus the direct p99
WARM_UP = 300


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--total", type=int, help="concurrent phase: sends each way (10,000)")
    parser.add_argument("--concurrency", type=int, default=32, help="in flight at once (32)")
    parser.add_argument("--sequential", type=int, help="one-at-a-time sends each way (2,000)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the daemon during each phase through it: "
        "bench/results/send-daemon-<in flight>.folded",
    )


def send_body(email_id: str) -> bytes:
    return orjson.dumps(
        {
            "operationName": "Send",
            "queueName": "Outbound",
            "email": {
                "from": "support@acme.example",
                "to": ["customer@example.com"],
                "subject": f"Your case {email_id}",
                "body": "<p>Thank you for contacting us. Your request has been handled.</p>",
            },
        }
    )


@dataclass
class Phase:
    path: str  # "direct" or "daemon"
    concurrency: int
    latencies: list[float] = field(default_factory=list)  # seconds
    failures: dict[str, int] = field(default_factory=dict)
    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "concurrency": self.concurrency,
            "sends": len(self.latencies),
            "failures": self.failures,
            "seconds": round(self.wall, 3),
            "sends_per_s": round(self.rate),
            "latency_ms": stats.summarize(self.latencies, scale=1000),
            "cpu_percent_of_one_core": {k: round(v, 1) for k, v in self.cpu.items()},
        }


class Sender:
    """POSTs Sends one way (direct to the simulator, or through the daemon)."""

    def __init__(self, path: str, base_url: str, http: aiohttp.ClientSession) -> None:
        self.path = path
        self.tag = path[:3].upper()  # email ids: a new one per send, per path
        self.base_url = base_url
        self.http = http
        self.headers = {"Content-Type": "application/json"}

    async def login(self) -> None:
        """Direct only: the session cookie and the CSRF token, as the daemon does."""
        async with self.http.get(self.base_url + "/api/v2/me") as response:
            await response.read()
            if response.status != 200:
                raise BenchError(f"GET /api/v2/me: HTTP {response.status}")
            self.headers[response.headers["X-CSRF-HEADER"]] = response.headers["X-CSRF-TOKEN"]

    async def send(self, email_id: str) -> str | None:
        """One Send; None when it was accepted, else what went wrong."""
        async with self.http.post(
            f"{self.base_url}/api/v2/me/emails/{email_id}",
            data=send_body(email_id),
            headers=self.headers,
        ) as response:
            body = await response.read()
            if response.status != 200:
                return f"HTTP {response.status}"
            if orjson.loads(body).get("statusCode") != 0:
                return f"statusCode {orjson.loads(body).get('statusCode')}"
            return None


async def run_phase(
    sender: Sender, prefix: str, total: int, concurrency: int, pids: dict[str, int]
) -> Phase:
    phase = Phase(sender.path, concurrency)
    numbers = iter(range(total))
    meters = {name: measure.CpuMeter(pid) for name, pid in pids.items()}

    async def worker() -> None:
        for n in numbers:
            began = time.perf_counter()
            failure = await sender.send(f"{prefix}{n:08d}")
            if failure is None:
                phase.latencies.append(time.perf_counter() - began)
            else:
                phase.failures[failure] = phase.failures.get(failure, 0) + 1

    for meter in meters.values():
        meter.start()
    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.wall = time.perf_counter() - began
    for name, meter in meters.items():
        cpu, wall = meter.stop()
        phase.cpu[name] = 100 * cpu / wall
    return phase


async def wait_resolved(daemon: DaemonProcess, timeout: float = 120.0) -> int:
    """Until the daemon holds no pending send; returns how many are left."""
    deadline = time.monotonic() + timeout
    pending = -1
    while time.monotonic() < deadline:
        async with daemon.http.get(daemon.api + "/v1/status") as response:
            pending = int((await response.json())["pendingSends"])
        if pending == 0:
            break
        await asyncio.sleep(0.2)
    return pending


async def main() -> None:
    args = report.parse_args(__doc__ or "", _options)
    total = args.total or (2_000 if args.quick else 10_000)
    sequential = args.sequential if args.sequential is not None else (200 if args.quick else 2000)
    concurrency = args.concurrency

    phases: list[Phase] = []
    profiles: dict[str, dict[str, Any]] = {}
    with notifyd.workdir("send") as work:
        async with peers.simulator_process() as simulator:
            config = notifyd.daemon_config(work, gws_url=simulator.base_url)
            async with notifyd.running_daemon(config, work) as daemon:
                await daemon.wait_ready_status(200, timeout=60)
                pids = {
                    "daemon": daemon.pid,
                    "simulator": simulator.pid,
                    "bench client": psutil.Process().pid,
                }
                connector = aiohttp.TCPConnector(limit=0)
                timeout = aiohttp.ClientTimeout(total=60)
                async with (
                    aiohttp.ClientSession(
                        connector=connector,
                        timeout=timeout,
                        cookie_jar=aiohttp.CookieJar(unsafe=True),
                        headers={
                            "Authorization": aiohttp.encode_basic_auth("agent1", SIM_PASSWORD)
                        },
                    ) as direct_http,
                    aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=0), timeout=timeout
                    ) as daemon_http,
                ):
                    direct = Sender("direct", simulator.base_url, direct_http)
                    await direct.login()
                    through = Sender("daemon", daemon.api, daemon_http)
                    report.note("send: warm-up")
                    for sender in (direct, through):
                        await run_phase(sender, f"W{sender.tag}", WARM_UP, concurrency, {})
                    for size, width in ((sequential, 1), (total, concurrency)):
                        if size <= 0:
                            continue
                        for sender in (direct, through):
                            report.note(f"send: {sender.path}, {size:,} sends, {width} at a time")
                            prefix = f"{sender.tag}{width:03d}-"
                            profiler = profiling.start_profiler(
                                daemon.pid if args.profile and sender is through else None,
                                f"send-daemon-{width}",
                            )
                            phase = await run_phase(sender, prefix, size, width, pids)
                            if (found := profiling.stop_profiler(profiler)) is not None:
                                profiles[f"{width} at a time"] = found
                            report.note(
                                f"  {phase.rate:,.0f} sends/s, p99 "
                                f"{stats.summarize(phase.latencies, scale=1000).get('p99')} ms"
                                + (f", failed: {phase.failures}" if phase.failures else "")
                            )
                            phases.append(phase)
                left = await wait_resolved(daemon)
                log = notifyd.log_summary(daemon.read_logs())

    comparisons = []
    table = report.Table(
        "sends: direct to the simulator vs through the daemon",
        [
            "path",
            "in flight",
            "sends",
            "failed",
            "sends/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "daemon cpu %",
            "sim cpu %",
        ],
    )
    added = report.Table(
        "added by the daemon (daemon - direct)", ["in flight", "p50 ms", "p99 ms", "sends/s ratio"]
    )
    for phase in phases:
        lat = stats.summarize(phase.latencies, scale=1000)
        table.add(
            phase.path,
            phase.concurrency,
            len(phase.latencies),
            sum(phase.failures.values()),
            phase.rate,
            lat.get("p50"),
            lat.get("p99"),
            lat.get("max"),
            phase.cpu.get("daemon"),
            phase.cpu.get("simulator"),
        )
    for width in sorted({p.concurrency for p in phases}):
        pair = {p.path: p for p in phases if p.concurrency == width}
        if set(pair) != {"direct", "daemon"}:
            continue
        d = stats.summarize(pair["direct"].latencies, scale=1000)
        t = stats.summarize(pair["daemon"].latencies, scale=1000)
        entry = {
            "concurrency": width,
            "added_p50_ms": round(t["p50"] - d["p50"], 3),
            "added_p99_ms": round(t["p99"] - d["p99"], 3),
            "daemon_over_direct_rate": round(pair["daemon"].rate / pair["direct"].rate, 3),
        }
        comparisons.append(entry)
        added.add(
            width, entry["added_p50_ms"], entry["added_p99_ms"], entry["daemon_over_direct_rate"]
        )
    loaded = next((c for c in comparisons if c["concurrency"] == concurrency), None)
    single = next((c for c in comparisons if c["concurrency"] == 1), None)
    verdict: dict[str, Any] = {}
    if loaded is not None:
        verdict |= {
            "daemon_over_direct_rate": loaded["daemon_over_direct_rate"],
            "target_rate_ratio": TARGET_RATE_RATIO,
            "rate_ratio_target_met": loaded["daemon_over_direct_rate"] >= TARGET_RATE_RATIO,
        }
    if single is not None:
        verdict |= {
            "added_p99_ms_one_at_a_time": single["added_p99_ms"],
            "target_added_p99_ms": TARGET_ADDED_P99_MS,
            "added_p99_target_met": single["added_p99_ms"] <= TARGET_ADDED_P99_MS,
        }
    report.emit(
        "send",
        {
            "quick": args.quick,
            "method": {
                "setup": "gws-notifyd simulate (own process, CSRF on, referenceId in the "
                "answer, notifications 20 ms after the answer) and the daemon (own process, "
                "subscribed to it, jsonl sink, logging info to a file); sends from this "
                "process with aiohttp, a new email id per send",
                "latency": "perf_counter around one POST and reading its answer, in this "
                "process; sends/s = sends / wall time of the phase",
                "order": f"warm-up {WARM_UP} each way, then per concurrency: direct, then "
                "through the daemon. During the direct phases the daemon still receives "
                "(and records, uncorrelated) the simulator's notifications of those sends",
                "cpu": "psutil user+sys of each process over the phase, % of one core",
            },
            "phases": [p.as_json() for p in phases],
            "added": comparisons,
            "pending_left_after_run": left,
            "daemon_log": log,
            "profiles": profiles or None,
            "verdict": verdict,
        },
        [table, added],
    )


if __name__ == "__main__":
    asyncio.run(main())
