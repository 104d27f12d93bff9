"""Every sink kind with the same burst: jsonl, webhook, Redis Streams, NATS JetStream.

    .venv/bin/python bench/sinks.py [--quick] [--count N] [--kinds jsonl,webhook,redis,nats]
                                    [--profile]

For each kind in turn, a fresh daemon with that one sink: a store with N pending
(accepted) sends is written first; cometd-server.js serves Bayeux and the GWS stub;
the daemon reconciles, then the peer publishes the N outcomes at once. The figure is
events/s from the publish request to the moment the last event is in the destination
(the jsonl file's last line; the webhook receiver's last request; the Redis stream's
length; the JetStream stream's message count), polled every 5 ms — each look cheap
(the file read from where the last look ended; one connection to each bus for the run),
so that watching does not load what is watched.

The webhook sink posts one JSON array per batch (`batch_mode = "array"`): one POST per
event measures the receiver, not the daemon. redis-server and nats-server (Debian
packages) run on free loopback ports, with their data in a temporary directory.
Targets: each bus >= 15,000 events/s and >= 0.7x the jsonl sink's rate in the same run.
Every process of a run shares the machine's cores, so each kind's busy CPU of the whole
machine per event (the peer, the daemon, the bus server) is measured too, and with it the
rate the cores would allow at that cost ("CPU-bound rate"): a bus's ceiling beside jsonl's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import notifyd
import peers
import profiling
import redis.asyncio as aioredis
import report
import seeding
from aiohttp import web
from basics import EMAILS_CHANNEL, BenchError
from measure import CpuMeter, MachineCpuMeter
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.bus_servers import NatsServer, RedisServer
from tests.harness.daemon_process import DaemonProcess
from tests.harness.webhook_receiver import free_port

KINDS = ("jsonl", "webhook", "redis", "nats")
TARGET_BUS_RATE = 15_000.0
TARGET_TO_JSONL = 0.7
POLL_SECONDS = 0.005
METRICS_SECONDS = 0.25
Counter = Callable[[], Awaitable[int]]
# Given the run's scratch directory: the sink's config, and how many events it holds.
Destination = Callable[[Path], tuple[dict[str, Any], Counter]]


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, help="burst size (default 100,000; quick 10,000)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="which sinks, comma-separated")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the daemon during each burst: bench/results/sinks-<kind>.folded",
    )


class _Receiver:
    """A webhook endpoint that counts the events of each POSTed array."""

    def __init__(self) -> None:
        self.port = free_port()
        self.events = 0
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        self.events += (await request.read()).count(b'"specversion"')
        return web.Response(status=200)

    async def start(self) -> None:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class _LineCounter:
    """Lines of a growing file, reading only what was appended since the last look."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self._lines = 0

    async def __call__(self) -> int:
        try:
            with self._path.open("rb") as handle:
                handle.seek(self._offset)
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    self._lines += chunk.count(b"\n")
                    self._offset += len(chunk)
        except FileNotFoundError:
            pass
        return self._lines


async def _wait_count(count: Counter, expected: int, *, idle: float = 60.0) -> float:
    """Poll until `count()` reaches `expected`; the time.time() it was first seen."""
    last, changed = -1, time.monotonic()
    while True:
        seen = await count()
        now = time.monotonic()
        if seen >= expected:
            return time.time()
        if seen != last:
            last, changed = seen, now
        elif now - changed > idle:
            raise BenchError(f"stuck at {seen:,} of {expected:,} events")
        await asyncio.sleep(POLL_SECONDS)


@dataclass(frozen=True)
class KindResult:
    """One kind's burst: the rate end to end, and where the time went — until the daemon
    had correlated every notification, and the sink's drain after that."""

    rate: float
    seconds: float
    correlated_seconds: float | None  # publish -> every notification correlated
    taken_by_then: int | None  # events the sink had taken at that moment
    daemon_cpu_us: float  # the daemon's CPU per event over the burst (all threads)
    server_cpu_us: float | None  # the bus server's, for a bus
    machine_cpu_us: float  # every process's (the peer publishing, the bench too)
    cores: int

    @property
    def cpu_bound_rate(self) -> float:
        """Events/s with every core busy all the time at this CPU per event."""
        return self.cores / self.machine_cpu_us * 1e6

    def drain_rate(self, count: int) -> float | None:
        if self.correlated_seconds is None or self.taken_by_then is None:
            return None
        left, after = count - self.taken_by_then, self.seconds - self.correlated_seconds
        return left / after if after > 0 else None


class _Phases:
    """Watches the daemon's /metrics (every METRICS_SECONDS: cheap beside the burst) for
    the moment every notification is correlated, and what the sink had taken then."""

    def __init__(self, daemon: DaemonProcess, count: int) -> None:
        self._daemon = daemon
        self._count = count
        self._before = (0, 0)
        self.correlated_at: float | None = None
        self.taken: int | None = None

    async def start(self) -> None:
        """Counts before the burst (the start-up's reconciliation correlates too)."""
        self._before = _counts(await self._daemon.metrics())

    async def watch(self) -> None:
        while self.correlated_at is None:
            correlated, taken = _counts(await self._daemon.metrics())
            if correlated - self._before[0] >= self._count:
                self.correlated_at, self.taken = time.time(), taken - self._before[1]
                return
            await asyncio.sleep(METRICS_SECONDS)


def _counts(text: str) -> tuple[int, int]:
    """(notifications correlated, events the sink delivered) from a /metrics page."""
    correlated = delivered = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gws_notifyd_correlations_total":
                correlated += sample.value
            elif (
                sample.name == "gws_notifyd_sink_deliveries_total"
                and sample.labels.get("outcome") == "delivered"
            ):
                delivered += sample.value
    return int(correlated), int(delivered)


async def _run_kind(
    kind: str,
    count: int,
    destination: Destination,
    *,
    profiles: dict[str, dict[str, Any]] | None,
    server_pid: int | None = None,
) -> KindResult:
    """The kind's burst; with `profiles`, the daemon py-spied during it (its summary
    put there under `kind`)."""
    with notifyd.workdir(f"sinks-{kind}") as work:
        sink, counter = destination(work)
        seeding.populate_store(work / "state.db", 1, count)
        async with peers.cometd_peer(gws_stub=peers.GwsStub(count, start=1)) as peer:
            config = notifyd.daemon_config(work, gws_url=peer.base_url, sinks=[sink])
            async with notifyd.running_daemon(config, work) as daemon:
                await daemon.wait_log(notifyd.logged("reconciled"), timeout=600)
                profiler = profiling.start_profiler(
                    daemon.pid if profiles is not None else None, f"sinks-{kind}"
                )
                phases = _Phases(daemon, count)
                await phases.start()
                meters = [CpuMeter(daemon.pid)]
                if server_pid is not None:
                    meters.append(CpuMeter(server_pid))
                machine = MachineCpuMeter()
                for meter in meters:
                    meter.start()
                machine.start()
                published_at = time.time()
                await peer.order_publish(EMAILS_CHANNEL, count, start=1)
                watching = asyncio.create_task(phases.watch())
                try:
                    done_at = await _wait_count(counter, count)
                    cpu = [meter.stop()[0] for meter in meters]
                    busy = machine.stop()
                    # The last look may come after the last event: it then counts all.
                    await asyncio.wait_for(watching, 60)
                finally:
                    watching.cancel()
                if (
                    found := profiling.stop_profiler(profiler)
                ) is not None and profiles is not None:
                    profiles[kind] = found
    seconds = done_at - published_at
    correlated = phases.correlated_at
    result = KindResult(
        count / seconds,
        seconds,
        min(correlated, done_at) - published_at if correlated is not None else None,
        phases.taken,
        cpu[0] / count * 1e6,
        cpu[1] / count * 1e6 if len(cpu) > 1 else None,
        busy / count * 1e6,
        machine.cores,
    )
    report.note(
        f"sinks: {kind}: {count:,} events in {seconds:.2f} s = {result.rate:,.0f}/s "
        f"(all correlated after {result.correlated_seconds or 0:.2f} s, "
        f"{phases.taken or 0:,} taken by then)"
    )
    return result


@contextlib.asynccontextmanager
async def _redis_length(url: str) -> AsyncIterator[Counter]:
    """The stream's length, on one connection kept for the whole run (a connection
    per look would load the server being measured)."""
    client = aioredis.Redis.from_url(url)
    try:

        async def length() -> int:
            return int(await client.xlen("gws:default:events"))

        yield length
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def _jetstream_count(url: str) -> AsyncIterator[Counter]:
    """The stream's message count, on one connection kept for the whole run."""
    connection = await nats.connect(url)
    jetstream = connection.jetstream()
    try:

        async def messages() -> int:
            try:
                info = await jetstream.stream_info("GWS")
            except nats.js.errors.NotFoundError:
                return 0
            return int(info.state.messages)

        yield messages
    finally:
        await connection.close()


async def run_all(
    kinds: list[str], count: int, *, profiles: dict[str, dict[str, Any]] | None = None
) -> dict[str, KindResult]:
    rates: dict[str, KindResult] = {}
    base = {"name": "sink", "batch_size": 500}
    run = functools.partial(_run_kind, count=count, profiles=profiles)
    if "jsonl" in kinds:

        def events_file(work: Path) -> tuple[dict[str, Any], Counter]:
            path = work / "events.jsonl"
            return {**base, "type": "jsonl", "path": str(path)}, _LineCounter(path)

        rates["jsonl"] = await run("jsonl", destination=events_file)
    if "webhook" in kinds:
        receiver = _Receiver()
        await receiver.start()
        try:
            sink = {**base, "type": "webhook", "batch_mode": "array"}
            sink["url"] = f"http://127.0.0.1:{receiver.port}/hook"

            async def received() -> int:
                return receiver.events

            rates["webhook"] = await run("webhook", destination=lambda _: (sink, received))
        finally:
            await receiver.stop()
    if "redis" in kinds:
        async with RedisServer() as redis:
            sink = {**base, "type": "redis", "url": redis.url, "stream": "gws:{account}:events"}
            async with _redis_length(redis.url) as length:
                rates["redis"] = await run(
                    "redis", destination=lambda _: (sink, length), server_pid=redis.pid
                )
    if "nats" in kinds:
        async with NatsServer() as jetstream:
            sink = {**base, "type": "nats", "url": jetstream.url, "subject": "gws.{account}.{type}"}
            sink |= {"stream": "GWS", "create_stream": True, "subjects": ["gws.>"]}
            async with _jetstream_count(jetstream.url) as messages:
                rates["nats"] = await run(
                    "nats", destination=lambda _: (sink, messages), server_pid=jetstream.pid
                )
    return rates


async def main() -> None:
    args = report.parse_args(__doc__ or "", _options)
    count = args.count or (10_000 if args.quick else 100_000)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise BenchError(f"--kinds: unknown {sorted(unknown)}; choose from {', '.join(KINDS)}")
    profiles: dict[str, dict[str, Any]] | None = {} if args.profile else None
    results = await run_all(kinds, count, profiles=profiles)
    jsonl = results["jsonl"].rate if "jsonl" in results else None
    table = report.Table(
        f"sinks: a burst of {count:,} outcomes, publish -> last event in the destination",
        [
            "sink",
            "events/s",
            "vs jsonl",
            "target",
            "met",
            "all correlated",
            "taken then",
            "drain after, events/s",
            "CPU/event: daemon, server",
            "CPU/event: machine",
            "CPU-bound rate",
        ],
    )
    verdict: dict[str, Any] = {}
    for kind, result in results.items():
        rate = result.rate
        ratio = rate / jsonl if jsonl else None
        bus = kind in ("redis", "nats")
        met = bus and rate >= TARGET_BUS_RATE and (ratio is None or ratio >= TARGET_TO_JSONL)
        target = f">= {TARGET_BUS_RATE:,.0f}/s, >= {TARGET_TO_JSONL}x jsonl" if bus else None
        drain = result.drain_rate(count)
        correlated = result.correlated_seconds
        table.add(
            kind,
            rate,
            f"{ratio:.2f}x" if ratio else None,
            target,
            met if bus else None,
            f"{correlated:.2f} s" if correlated is not None else None,
            result.taken_by_then,
            drain,
            f"{result.daemon_cpu_us:.0f} µs"
            + (f", {result.server_cpu_us:.0f} µs" if result.server_cpu_us is not None else ""),
            f"{result.machine_cpu_us:.0f} µs",
            f"{result.cpu_bound_rate:,.0f}/s"
            + (f" = {result.cpu_bound_rate / jsonl:.2f}x jsonl" if jsonl and bus else ""),
        )
        verdict[kind] = {
            "events_per_s": round(rate),
            "to_jsonl": ratio and round(ratio, 3),
            "all_correlated_s": correlated and round(correlated, 2),
            "taken_when_all_correlated": result.taken_by_then,
            "drain_events_per_s": drain and round(drain),
            "daemon_cpu_us_per_event": round(result.daemon_cpu_us, 1),
            "server_cpu_us_per_event": result.server_cpu_us and round(result.server_cpu_us, 1),
            "machine_cpu_us_per_event": round(result.machine_cpu_us, 1),
            "cpu_bound_events_per_s": round(result.cpu_bound_rate),
        }
        if bus:
            verdict[kind] |= {
                "target_events_per_s": TARGET_BUS_RATE,
                "target_to_jsonl": TARGET_TO_JSONL,
                "target_met": met,
            }
    report.emit(
        "sinks",
        {
            "quick": args.quick,
            "count": count,
            "method": {
                "events_per_s": "count / (when the destination was first seen holding every "
                "event - when the publish request was sent); destinations polled every 5 ms",
                "daemon": "python -m daemon run, one sink, batch_size 500, logging info (JSON) "
                "to a file, store synchronous=normal",
                "webhook": "batch_mode = array, an aiohttp receiver in the bench process",
                "phases": "the daemon's /metrics every 0.25 s: when correlations_total first "
                "reached the count, and sink_deliveries_total{outcome=delivered} then; the "
                "drain is the events left / the time from then to the last event",
                "cpu": "user + system seconds (psutil) of the daemon, all threads, and of the "
                "bus server, from the publish request to the last event, per event",
                "machine_cpu": "busy seconds of every core (psutil.cpu_times: all but idle and "
                "iowait) over the same span, per event: the peer publishing, the daemon, the "
                "bus server, the bench's looks",
                "cpu_bound_rate": "cores / machine CPU per event: the most events/s the "
                "machine's cores could give that sink at that cost; for a bus also as a "
                "ratio to the jsonl sink's measured rate",
            },
            "verdict": verdict,
            "profiles": profiles,
        },
        [table],
    )


if __name__ == "__main__":
    asyncio.run(main())
