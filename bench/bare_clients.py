"""Bare Bayeux clients, each in a process of its own, against a fresh cometd-server.js.

A burst of GWS-shaped notifications to one subscribed client that only counts
(bench/clients/): its rate, its CPU and the server's (receive.py, pipeline.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from basics import BENCH_DIR, EMAILS_CHANNEL, PYTHON, ROOT, BenchError
from measure import CpuMeter
from peers import cometd_peer, stop_process
from report import Table

from tests.harness.bayeux_peers import PEERS_DIR

RECEIVE_MODES: Final[dict[str, str]] = {
    "live": "the peer publishes in chunks of 5,000 per event-loop turn while the client "
    "drains; span = first message to last, in the client; client CPU window = publish "
    "request to the client's report",
    "queued": "the peer queues the whole burst for the client's session and releases it at "
    "once (one /meta/connect answer); span = release (peer clock) to last message; client "
    "CPU window = release to the client's report",
}

RECEIVE_CLIENTS: Final[dict[str, str]] = {
    "ours": "daemon.cometd.BayeuxClient (bare, counting)",
    "aiocometd-noloop": "aiocometd-noloop 0.4.9 (bare, counting)",
    "cometd-js": "CometD JS client 9.0.0 + cometd-nodejs-client 2.0.0 (bare, counting)",
}

# The peer's long-poll timeout for the receive runs. aiocometd-noloop sends its first
# /meta/connect without advice {timeout: 0}, so the server holds it this long before
# the client can even subscribe (25 s at GWS's default). Not shorter: aiocometd-noloop
# gives each request 1.5 x this timeout, and in the queued mode its held connect must
# outlast the publish of the burst and the transfer of the whole answer (at 2 s it
# timed out and lost 170,000 of 200,000). Within a burst every answer is immediate.
RECEIVE_LONG_POLL_MS: Final = 10_000


@dataclass
class ReceiveRun:
    client: str
    mode: str
    expected: int
    received: int
    span_seconds: float  # see RECEIVE_MODES
    first_to_last_seconds: float  # in the client, whatever the mode
    publish_to_last_seconds: float  # publish request sent to last message
    cpu_seconds: float  # client process: live: publish to done; queued: release to done
    cpu_wall_seconds: float  # the wall time of that window
    server_cpu_seconds: float  # the node peer, same window
    rss_mb: float
    batches: int | None  # answers with data (our client only)

    @property
    def rate(self) -> float:
        return self.received / self.span_seconds if self.span_seconds > 0 else 0.0

    @property
    def end_to_end_rate(self) -> float:
        """Messages / (publish request sent -> last message): what the pipeline is timed by."""
        window = self.publish_to_last_seconds
        return self.received / window if window > 0 else 0.0

    @property
    def cpu_percent(self) -> float:
        """Client CPU seconds over the wall time of the CPU window, as % of one core."""
        window = self.cpu_wall_seconds
        return 100 * self.cpu_seconds / window if window > 0 else 0.0

    @property
    def server_cpu_percent(self) -> float:
        window = self.publish_to_last_seconds
        return 100 * self.server_cpu_seconds / window if window > 0 else 0.0

    @property
    def per_cpu_second(self) -> float:
        """Messages per client CPU second: what one full core would take."""
        return self.received / self.cpu_seconds if self.cpu_seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "mode": self.mode,
            "expected": self.expected,
            "received": self.received,
            "complete": self.received == self.expected,
            "msg_per_s": round(self.rate),
            "msg_per_s_publish_to_last": round(self.end_to_end_rate),
            "span_seconds": round(self.span_seconds, 3),
            "first_to_last_seconds": round(self.first_to_last_seconds, 3),
            "publish_to_last_seconds": round(self.publish_to_last_seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "cpu_percent_of_one_core": round(self.cpu_percent, 1),
            "msg_per_cpu_second": round(self.per_cpu_second),
            "server_cpu_seconds": round(self.server_cpu_seconds, 3),
            "server_cpu_percent_of_one_core": round(self.server_cpu_percent, 1),
            "rss_mb": round(self.rss_mb, 1),
            "batches": self.batches,
        }


def _client_command(client: str, url: str, expected: int) -> list[str]:
    if client == "cometd-js":
        node = shutil.which("node")
        assert node is not None
        script = BENCH_DIR / "clients" / "cometd_js_client.mjs"
        return [node, str(script), str(PEERS_DIR), url, EMAILS_CHANNEL, str(expected)]
    script = BENCH_DIR / "clients" / "python_client.py"
    return [PYTHON, str(script), client, url, EMAILS_CHANNEL, str(expected)]


async def _read_report(
    process: asyncio.subprocess.Process, client: str, key: str, timeout: float
) -> dict[str, Any]:
    """The next JSON object line with `key` on the client's stdout (others are skipped)."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BenchError(f"{client}: no {key!r} line within {timeout} s")
        line = await asyncio.wait_for(process.stdout.readline(), remaining)
        if not line:
            raise BenchError(f"{client} exited with {await process.wait()} before {key!r}")
        with contextlib.suppress(ValueError):
            report = json.loads(line)
            if isinstance(report, dict) and key in report:
                return report


async def run_receive(
    client: str,
    count: int,
    *,
    mode: str = "live",
    idle_timeout: float = 15.0,
    rate: float | None = None,
    tick_ms: int | None = None,
) -> ReceiveRun:
    """A fresh cometd-server, one client subscribed, a burst of `count`; its figures.

    With `rate` (live mode only) a steady stream instead: `count` messages at
    `rate` msg/s, what is due published every `tick_ms` (pipeline.py's steady
    reference: what a bare client spends per message at that pace).

    The client prints {"subscribed": true} once subscribed, then one JSON line
    with what it received (after `count` messages, or after `idle_timeout` s
    without a message), and exits when its stdin closes: the CPU counters are
    read after its result line and before that.
    """
    async with cometd_peer(timeout_ms=RECEIVE_LONG_POLL_MS) as peer:
        process = await asyncio.create_subprocess_exec(
            *_client_command(client, peer.url, count),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "BENCH_IDLE_TIMEOUT": str(idle_timeout)},
        )
        assert process.stdout is not None
        assert process.stdin is not None
        try:
            await _read_report(process, client, "subscribed", 60)
            meter = CpuMeter(process.pid)
            server = CpuMeter(peer.pid)
            server.start()
            if mode == "live":
                meter.start()
            published_at = time.time()
            answer = await peer.order_publish(
                EMAILS_CHANNEL, count, hold=mode == "queued", rate=rate, tick_ms=tick_ms
            )
            if mode == "queued":
                meter.start()  # released now: the client's work starts
            report = await _read_report(process, client, "received", 600)
            cpu, cpu_wall = meter.stop()
            server_cpu, _ = server.stop()
            rss = meter.rss_mb()
        finally:
            process.stdin.close()
            await stop_process(process, 10)
    last_wall = float(report["last_wall"])
    first_to_last = float(report["span_seconds"])
    span = first_to_last
    if mode == "queued":
        span = last_wall - float(answer["released_at"])
    return ReceiveRun(
        client=client,
        mode=mode,
        expected=count,
        received=int(report["received"]),
        span_seconds=span,
        first_to_last_seconds=first_to_last,
        publish_to_last_seconds=last_wall - published_at,
        cpu_seconds=cpu,
        cpu_wall_seconds=cpu_wall,
        server_cpu_seconds=server_cpu,
        rss_mb=rss,
        batches=report.get("batches"),
    )


def receive_table(title: str, runs: Sequence[ReceiveRun]) -> Table:
    table = Table(
        title,
        [
            "client",
            "received",
            "msg/s",
            "span s",
            "cpu s",
            "cpu %",
            "msg/cpu-s",
            "server cpu %",
            "vs aiocometd",
        ],
    )
    base = next((r.rate for r in runs if r.client == "aiocometd-noloop"), 0.0)
    for run in runs:
        ratio = f"{run.rate / base:.2f}x" if base else None
        table.add(
            run.client,
            run.received,
            run.rate,
            run.span_seconds,
            run.cpu_seconds,
            run.cpu_percent,
            run.per_cpu_second,
            run.server_cpu_percent,
            ratio,
        )
    return table
