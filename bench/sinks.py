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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
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

from tests.harness.bus_servers import NatsServer, RedisServer
from tests.harness.webhook_receiver import free_port

KINDS = ("jsonl", "webhook", "redis", "nats")
TARGET_BUS_RATE = 15_000.0
TARGET_TO_JSONL = 0.7
POLL_SECONDS = 0.005
Counter = Callable[[], Awaitable[int]]


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


async def _run_kind(
    kind: str,
    count: int,
    sink: dict[str, Any],
    counter: Counter,
    *,
    profiles: dict[str, dict[str, Any]] | None,
) -> float:
    """The kind's rate; with `profiles`, the daemon py-spied during the burst (its summary
    put there under `kind`)."""
    with notifyd.workdir(f"sinks-{kind}") as work:
        if kind == "jsonl":
            sink = {**sink, "path": str(work / "events.jsonl")}
            path = work / "events.jsonl"
            counter = _LineCounter(path)
        seeding.populate_store(work / "state.db", 1, count)
        async with peers.cometd_peer(gws_stub=peers.GwsStub(count, start=1)) as peer:
            config = notifyd.daemon_config(work, gws_url=peer.base_url, sinks=[sink])
            async with notifyd.running_daemon(config, work) as daemon:
                await daemon.wait_log(notifyd.logged("reconciled"), timeout=600)
                profiler = profiling.start_profiler(
                    daemon.pid if profiles is not None else None, f"sinks-{kind}"
                )
                published_at = time.time()
                await peer.order_publish(EMAILS_CHANNEL, count, start=1)
                done_at = await _wait_count(counter, count)
                if (
                    found := profiling.stop_profiler(profiler)
                ) is not None and profiles is not None:
                    profiles[kind] = found
    rate = count / (done_at - published_at)
    report.note(
        f"sinks: {kind}: {count:,} events in {done_at - published_at:.2f} s = {rate:,.0f}/s"
    )
    return rate


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
) -> dict[str, float]:
    rates: dict[str, float] = {}
    base = {"name": "sink", "batch_size": 500}
    if "jsonl" in kinds:
        rates["jsonl"] = await _run_kind(
            "jsonl", count, {**base, "type": "jsonl"}, _never, profiles=profiles
        )
    if "webhook" in kinds:
        receiver = _Receiver()
        await receiver.start()
        try:
            sink = {**base, "type": "webhook", "batch_mode": "array"}
            sink["url"] = f"http://127.0.0.1:{receiver.port}/hook"

            async def received() -> int:
                return receiver.events

            rates["webhook"] = await _run_kind("webhook", count, sink, received, profiles=profiles)
        finally:
            await receiver.stop()
    if "redis" in kinds:
        async with RedisServer() as redis:
            sink = {**base, "type": "redis", "url": redis.url, "stream": "gws:{account}:events"}
            async with _redis_length(redis.url) as length:
                rates["redis"] = await _run_kind("redis", count, sink, length, profiles=profiles)
    if "nats" in kinds:
        async with NatsServer() as jetstream:
            sink = {**base, "type": "nats", "url": jetstream.url, "subject": "gws.{account}.{type}"}
            sink |= {"stream": "GWS", "create_stream": True, "subjects": ["gws.>"]}
            async with _jetstream_count(jetstream.url) as messages:
                rates["nats"] = await _run_kind("nats", count, sink, messages, profiles=profiles)
    return rates


async def _never() -> int:
    raise AssertionError("replaced for jsonl")


async def main() -> None:
    args = report.parse_args(__doc__ or "", _options)
    count = args.count or (10_000 if args.quick else 100_000)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise BenchError(f"--kinds: unknown {sorted(unknown)}; choose from {', '.join(KINDS)}")
    profiles: dict[str, dict[str, Any]] | None = {} if args.profile else None
    rates = await run_all(kinds, count, profiles=profiles)
    jsonl = rates.get("jsonl")
    table = report.Table(
        f"sinks: a burst of {count:,} outcomes, publish -> last event in the destination",
        ["sink", "events/s", "vs jsonl", "target", "met"],
    )
    verdict: dict[str, Any] = {}
    for kind, rate in rates.items():
        ratio = rate / jsonl if jsonl else None
        bus = kind in ("redis", "nats")
        met = bus and rate >= TARGET_BUS_RATE and (ratio is None or ratio >= TARGET_TO_JSONL)
        target = f">= {TARGET_BUS_RATE:,.0f}/s, >= {TARGET_TO_JSONL}x jsonl" if bus else None
        table.add(kind, rate, f"{ratio:.2f}x" if ratio else None, target, met if bus else None)
        verdict[kind] = {"events_per_s": round(rate), "to_jsonl": ratio and round(ratio, 3)}
        if bus:
            verdict[kind] |= {
                "target_events_per_s": TARGET_BUS_RATE,
                "target_to_jsonl": TARGET_TO_JSONL,
            }
        if bus:
            verdict[kind]["target_met"] = met
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
            },
            "verdict": verdict,
            "profiles": profiles,
        },
        [table],
    )


if __name__ == "__main__":
    asyncio.run(main())
