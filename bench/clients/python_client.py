"""A bare Bayeux client that only counts, for bench/receive.py and bench/pipeline.py.

    python bench/clients/python_client.py {ours|aiocometd-noloop} URL CHANNEL EXPECTED

Prints {"subscribed": true} once subscribed, then, after EXPECTED messages (or
$BENCH_IDLE_TIMEOUT seconds without one), one JSON line: received, span_seconds
(first message to last, perf_counter), first_wall / last_wall (time.time()).
Then waits for stdin to close (so the parent can read its CPU counters) and exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))


class Counter:
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.received = 0
        self.batches = 0
        self.first = 0.0
        self.last = 0.0
        self.first_wall = 0.0
        self.last_wall = 0.0
        self.done = asyncio.Event()

    def add(self, count: int) -> None:
        now = time.perf_counter()
        if self.received == 0:
            self.first = now
            self.first_wall = time.time()
        self.received += count
        self.batches += 1
        self.last = now
        if self.received >= self.expected:
            self.last_wall = time.time()
            self.done.set()

    async def wait(self, idle: float) -> None:
        """Until every message came, or none came for `idle` seconds (after the first)."""
        seen = -1
        while not self.done.is_set():
            if self.received == seen and self.received > 0:
                break
            seen = self.received
            try:
                await asyncio.wait_for(self.done.wait(), idle)
            except TimeoutError:
                continue
        if not self.last_wall:
            self.last_wall = time.time() - (time.perf_counter() - self.last)

    def report(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "span_seconds": self.last - self.first,
            "first_wall": self.first_wall,
            "last_wall": self.last_wall,
            "batches": self.batches if self.batches != self.received else None,
        }


def say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def wait_stdin_closed() -> None:
    await asyncio.to_thread(sys.stdin.buffer.read)


async def run_ours(url: str, channel: str, counter: Counter, idle: float) -> None:
    import structlog

    from daemon.cometd import BayeuxClient, ClientSettings, Message, Subscribed

    # Bare: the client's info lines (one per subscription) off, warnings to stderr.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )

    subscribed = asyncio.Event()

    async def on_batch(batch: list[Message]) -> None:
        counter.add(len(batch))

    async def on_subscribed(_info: Subscribed) -> None:
        subscribed.set()

    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        client = BayeuxClient(
            session=session,
            settings=ClientSettings(url=url, channels=(channel,)),
            on_batch=on_batch,
            on_subscribed=on_subscribed,
        )
        running = asyncio.create_task(client.run())
        await subscribed.wait()
        say({"subscribed": True})
        await counter.wait(idle)
        say(counter.report())
        await wait_stdin_closed()
        await client.close()
        await running


async def run_aiocometd(url: str, channel: str, counter: Counter, idle: float) -> None:
    from aiocometd_noloop import Client  # type: ignore[import-untyped]

    client = Client(url)
    # The only way to give it a cookie jar that keeps cookies of an IP host
    # (cometd-nodejs-server's BAYEUX_BROWSER): its private session attribute.
    client._http_session = aiohttp.ClientSession(
        cookie_jar=aiohttp.CookieJar(unsafe=True), json_serialize=client._json_dumps
    )
    await client.open()
    await client.subscribe(channel)
    say({"subscribed": True})

    async def consume() -> None:
        async for message in client:
            if message.get("channel") == channel:
                counter.add(1)

    consuming = asyncio.create_task(consume())
    await counter.wait(idle)
    say(counter.report())
    await wait_stdin_closed()
    consuming.cancel()
    await asyncio.gather(consuming, return_exceptions=True)
    await client.close()


async def main() -> None:
    kind, url, channel, expected = sys.argv[1:5]
    idle = float(os.environ.get("BENCH_IDLE_TIMEOUT", "15"))
    counter = Counter(int(expected))
    if kind == "ours":
        await run_ours(url, channel, counter, idle)
    elif kind == "aiocometd-noloop":
        await run_aiocometd(url, channel, counter, idle)
    else:
        raise SystemExit(f"unknown client {kind!r}")


if __name__ == "__main__":
    asyncio.run(main())
