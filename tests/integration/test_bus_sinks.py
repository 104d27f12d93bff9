"""The bus sinks against real servers: `redis-server` and `nats-server -js` on loopback.

First each sink alone (exactly once, duplicates dropped at the bus, the
classification of failures), then the daemon as a subprocess with a jsonl
sink as the reference: every event in each bus exactly once and in order,
through kill -9s, a bus that goes away for a while, and a permanent error
that dead-letters and is replayed.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import orjson
import pytest
import redis.asyncio as aioredis

from daemon.config import Secret
from daemon.errors import PermanentSinkError, RetryableSinkError
from daemon.simulator import Simulator
from daemon.sinks.nats_jetstream import NatsJetStreamSink
from daemon.sinks.redis_streams import RedisStreamSink
from daemon.store.rows import OutboxRow
from tests.harness.bus_servers import NatsServer, RedisServer
from tests.harness.daemon_process import (
    DaemonProcess,
    cli_output,
    read_jsonl,
    send_body,
    write_config,
)
from tests.harness.waiting import wait_until

STREAM = "gws:{account}:events"
REDIS_STREAM = "gws:default:events"
SUBJECT = "gws.{account}.{type}"
JS_STREAM = "GWS"


def rows(first: int, count: int, kind: str = "gws.email.state_changed") -> list[OutboxRow]:
    return [
        OutboxRow(
            n, f"event-{n}", kind, f"E-{n}", 1_790_000_000.0 + n, b'{"n":%d}' % n, subject=f"E-{n}"
        )
        for n in range(first, first + count)
    ]


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    async with RedisServer() as server:
        yield server


@pytest.fixture
async def nats_server() -> AsyncIterator[NatsServer]:
    async with NatsServer() as server:
        yield server


async def redis_entries(url: str, stream: str = REDIS_STREAM) -> list[dict[str, bytes]]:
    """Each entry of the stream, its fields by name, in stream order."""
    client = aioredis.Redis.from_url(url)
    try:
        entries: Any = await client.xrange(stream)
    finally:
        await client.aclose()
    return [{k.decode(): v for k, v in fields.items()} for _, fields in entries]


async def redis_ids(url: str, stream: str = REDIS_STREAM) -> list[str]:
    return [entry["id"].decode() for entry in await redis_entries(url, stream)]


async def nats_ids(url: str, stream: str = JS_STREAM) -> list[str]:
    """The Nats-Msg-Id of every message in the stream, in stream order."""
    connection = await nats.connect(url)
    try:
        jetstream = connection.jetstream()
        try:
            info = await jetstream.stream_info(stream)
        except nats.js.errors.NotFoundError:
            return []
        ids = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            message = await jetstream.get_msg(stream, seq)
            ids.append((message.headers or {}).get("Nats-Msg-Id", ""))
        return ids
    finally:
        await connection.close()


async def not_a_stream(server: RedisServer, key: str) -> None:
    """Make `key` a string, so that appending to it fails with WRONGTYPE."""
    client = aioredis.Redis.from_url(server.url)
    try:
        await client.set(key, "not a stream")
    finally:
        await client.aclose()


def redis_sink(server: RedisServer, **overrides: Any) -> RedisStreamSink:
    settings: dict[str, Any] = {"name": "redis", "url": server.url, "stream": STREAM}
    return RedisStreamSink(**(settings | overrides))


def nats_sink(server: NatsServer, **overrides: Any) -> NatsJetStreamSink:
    settings: dict[str, Any] = {
        "name": "nats",
        "servers": [server.url],
        "subject": SUBJECT,
        "stream": JS_STREAM,
        "create_stream": True,
        "subjects": ["gws.>"],
        "duplicate_window_seconds": 600.0,
    }
    return NatsJetStreamSink(**(settings | overrides))


# -- Redis Streams, the sink alone ----------------------------------------------------


async def test_redis_appends_each_event_once_with_its_fields(redis_server: RedisServer) -> None:
    sink = redis_sink(redis_server)
    try:
        await sink.deliver(rows(1, 5))
        await sink.deliver(rows(3, 5))  # 3..5 again, then 6, 7
    finally:
        await sink.close()

    assert await redis_ids(redis_server.url) == [f"event-{n}" for n in range(1, 8)]
    assert sink.duplicates_dropped == 3
    first = (await redis_entries(redis_server.url))[0]
    assert first == {
        "id": b"event-1",
        "type": b"gws.email.state_changed",
        "account": b"default",
        "subject": b"E-1",
        "time": b"2026-09-21T14:13:21.000000Z",
        "event": b'{"n":1}',
    }


async def test_redis_stream_name_may_carry_the_event_type(redis_server: RedisServer) -> None:
    sink = redis_sink(redis_server, stream="gws:{account}:{type}")
    try:
        await sink.deliver(rows(1, 2) + rows(3, 1, kind="gws.email.send_rejected"))
    finally:
        await sink.close()

    assert await redis_ids(redis_server.url, "gws:default:gws.email.state_changed") == [
        "event-1",
        "event-2",
    ]
    assert await redis_ids(redis_server.url, "gws:default:gws.email.send_rejected") == ["event-3"]


def call_row(n: int, account: str) -> OutboxRow:
    body = orjson.dumps({"id": f"event-{n}", "type": "gws.call.state_changed", "subject": "C-7"})
    return OutboxRow(n, f"event-{n}", "gws.call.state_changed", None, 1.0, body, account, "C-7")


async def test_redis_streams_by_account_carry_each_events_account_and_subject(
    redis_server: RedisServer,
) -> None:
    sink = redis_sink(redis_server)
    try:
        await sink.deliver([call_row(1, "sales-1"), call_row(2, "support"), *rows(3, 1)])
    finally:
        await sink.close()

    [sales] = await redis_entries(redis_server.url, "gws:sales-1:events")
    [support] = await redis_entries(redis_server.url, "gws:support:events")
    assert (sales["id"], sales["account"], sales["subject"]) == (b"event-1", b"sales-1", b"C-7")
    assert (support["id"], support["account"]) == (b"event-2", b"support")
    assert await redis_ids(redis_server.url) == ["event-3"]


async def test_redis_wrong_type_is_permanent_and_says_how_many_went_in(
    redis_server: RedisServer,
) -> None:
    await not_a_stream(redis_server, "gws:default:gws.email.send_rejected")
    sink = redis_sink(redis_server, stream="gws:{account}:{type}")
    batch = rows(1, 2) + rows(3, 1, kind="gws.email.send_rejected") + rows(4, 1)
    try:
        with pytest.raises(PermanentSinkError, match="WRONGTYPE") as caught:
            await sink.deliver(batch)
        assert caught.value.delivered == 2
        with pytest.raises(RetryableSinkError, match="an earlier batch failed"):
            await sink.deliver(batch[3:])  # not before the dispatcher says it retries
        sink.resume()
        await sink.deliver(batch[3:])  # the rest goes on
    finally:
        await sink.close()

    assert await redis_ids(redis_server.url, "gws:default:gws.email.state_changed") == [
        "event-1",
        "event-2",
        "event-4",
    ]


async def test_redis_batches_sent_behind_a_failed_one_take_nothing(
    redis_server: RedisServer,
) -> None:
    await not_a_stream(redis_server, "gws:broken:events")
    sink = redis_sink(redis_server)
    failing = [call_row(1, "broken"), call_row(2, "broken")]
    try:
        # Sent back to back on one connection: the second and third go out before
        # the first one's answer comes back.
        first, second, third = await asyncio.gather(
            sink.deliver(failing),
            sink.deliver([call_row(3, "fine")]),
            sink.deliver([call_row(4, "fine")]),
            return_exceptions=True,
        )
        assert isinstance(first, PermanentSinkError)
        assert "WRONGTYPE" in str(first)
        for behind in (second, third):
            assert isinstance(behind, RetryableSinkError)
            assert behind.delivered == 0
        assert await redis_ids(redis_server.url, "gws:fine:events") == []

        sink.resume()  # the dispatcher dead-letters the failed events, then goes on
        await sink.deliver([call_row(3, "fine")])
        await sink.deliver([call_row(4, "fine")])
    finally:
        await sink.close()
    assert await redis_ids(redis_server.url, "gws:fine:events") == ["event-3", "event-4"]


async def test_redis_that_stops_answering_is_retryable_after_the_timeout(
    redis_server: RedisServer,
) -> None:
    sink = redis_sink(redis_server, timeout_seconds=0.5)
    pid = redis_server.pid
    assert pid is not None
    try:
        await sink.deliver(rows(1, 1))
        os.kill(pid, signal.SIGSTOP)  # connected, but it answers nothing
        try:
            started = time.monotonic()
            with pytest.raises(RetryableSinkError, match="unreachable: TimeoutError"):
                await sink.deliver(rows(2, 1))
            assert time.monotonic() - started < 5
        finally:
            os.kill(pid, signal.SIGCONT)
        assert await _delivers(sink, rows(2, 2))  # again, on a new connection
    finally:
        await sink.close()
    assert await redis_ids(redis_server.url) == ["event-1", "event-2", "event-3"]


async def test_redis_down_is_retryable_and_never_shows_the_password(
    tmp_path: Path,
) -> None:
    async with RedisServer(password="s3cret-pass") as server:
        sink = redis_sink(server, password=Secret("s3cret-pass"))
        try:
            await sink.deliver(rows(1, 1))
            await server.stop()
            with pytest.raises(RetryableSinkError) as caught:
                await sink.deliver(rows(2, 1))
            assert "s3cret-pass" not in str(caught.value)
            await server.start()
            await wait_until(
                lambda: _delivers(sink, rows(2, 1)), timeout=10, what="redis back after restart"
            )
        finally:
            await sink.close()
        assert await redis_ids(f"redis://:s3cret-pass@127.0.0.1:{server.port}/0") == [
            "event-1",
            "event-2",
        ]


async def _delivers(sink: RedisStreamSink | NatsJetStreamSink, batch: list[OutboxRow]) -> bool:
    sink.resume()  # as the dispatcher does before each retry
    try:
        await sink.deliver(batch)
    except RetryableSinkError:
        return False
    return True


# -- NATS JetStream, the sink alone ---------------------------------------------------


async def test_jetstream_sink_connects_and_creates_its_stream_when_opened(
    nats_server: NatsServer,
) -> None:
    sink = nats_sink(nats_server)
    try:
        await sink.open()  # the dispatcher does at start, before any event
        connection = await nats.connect(nats_server.url)
        try:
            info = await connection.jetstream().stream_info(JS_STREAM)
        finally:
            await connection.close()
        assert info.state.messages == 0
        await sink.deliver(rows(1, 2))
    finally:
        await sink.close()
    assert await nats_ids(nats_server.url) == ["event-1", "event-2"]


async def test_redis_sink_that_cannot_connect_when_opened_says_so_without_the_password() -> None:
    async with RedisServer(password="s3cret-pass") as server:
        sink = redis_sink(server, password=Secret("s3cret-pass"))
        await server.stop()
        try:
            with pytest.raises(RetryableSinkError, match="unreachable") as caught:
                await sink.open()
            assert "s3cret-pass" not in str(caught.value)
            await server.start()
            await sink.open()
            await sink.deliver(rows(1, 1))
        finally:
            await sink.close()
        assert await redis_ids(f"redis://:s3cret-pass@127.0.0.1:{server.port}/0") == ["event-1"]


async def test_jetstream_publishes_each_event_once_and_counts_duplicates(
    nats_server: NatsServer,
) -> None:
    sink = nats_sink(nats_server)
    try:
        await sink.deliver(rows(1, 5))
        await sink.deliver(rows(3, 5))
    finally:
        await sink.close()

    assert await nats_ids(nats_server.url) == [f"event-{n}" for n in range(1, 8)]
    assert sink.duplicates_dropped == 3


async def test_jetstream_subjects_by_account(nats_server: NatsServer) -> None:
    sink = nats_sink(nats_server)
    try:
        await sink.deliver([call_row(1, "sales-1"), *rows(2, 1)])
    finally:
        await sink.close()

    connection = await nats.connect(nats_server.url)
    try:
        jetstream = connection.jetstream()
        first = await jetstream.get_msg(JS_STREAM, 1)
        second = await jetstream.get_msg(JS_STREAM, 2)
    finally:
        await connection.close()
    assert first.subject == "gws.sales-1.gws.call.state_changed"
    assert second.subject == "gws.default.gws.email.state_changed"


async def test_jetstream_missing_stream_without_create_is_permanent(
    nats_server: NatsServer,
) -> None:
    sink = nats_sink(nats_server, create_stream=False, stream="MISSING")
    try:
        with pytest.raises(PermanentSinkError, match="'MISSING' not found"):
            await sink.deliver(rows(1, 1))
    finally:
        await sink.close()


async def test_jetstream_another_streams_subject_is_permanent_after_the_head_went_in(
    nats_server: NatsServer,
) -> None:
    connection = await nats.connect(nats_server.url)
    try:
        await connection.jetstream().add_stream(name="OTHER", subjects=["sales-1.>"])
    finally:
        await connection.close()
    sink = nats_sink(nats_server, subject="{account}.events", subjects=["default.>"])
    try:
        with pytest.raises(PermanentSinkError, match="stream 'GWS'") as failure:
            await sink.deliver([*rows(1, 2), call_row(3, "sales-1"), *rows(4, 1)])
    finally:
        await sink.close()

    assert failure.value.delivered == 2
    assert await nats_ids(nats_server.url) == ["event-1", "event-2", "event-4"]


async def test_jetstream_subject_no_stream_takes_is_retryable(nats_server: NatsServer) -> None:
    sink = nats_sink(nats_server, subject="nowhere.{account}")
    try:
        # The stream is created for gws.> only: nothing answers on nowhere.default.
        with pytest.raises(RetryableSinkError, match="NoStreamResponse") as failure:
            await sink.deliver(rows(1, 2))
    finally:
        await sink.close()

    assert failure.value.delivered == 0


async def test_jetstream_down_is_retryable_then_resumes(nats_server: NatsServer) -> None:
    sink = nats_sink(nats_server)
    try:
        await sink.deliver(rows(1, 2))
        await nats_server.stop()
        with pytest.raises(RetryableSinkError):
            await sink.deliver(rows(3, 1))
        await nats_server.start()
        await wait_until(
            lambda: _delivers(sink, rows(2, 2)), timeout=15, what="JetStream back after restart"
        )
    finally:
        await sink.close()

    assert await nats_ids(nats_server.url) == ["event-1", "event-2", "event-3"]


async def test_jetstream_token_authentication(tmp_path: Path) -> None:
    async with NatsServer(token="t0ken-value") as server:
        refused = nats_sink(server)
        sink = nats_sink(server, token=Secret("t0ken-value"))
        try:
            with pytest.raises(RetryableSinkError) as caught:
                await refused.deliver(rows(1, 1))
            assert "t0ken-value" not in str(caught.value)
            await sink.deliver(rows(1, 1))
        finally:
            await refused.close()
            await sink.close()


# -- the daemon with both buses ---------------------------------------------------------


def bus_config(tmp_path: Path, simulator: Simulator, redis: RedisServer, nats_: NatsServer) -> Path:
    assert simulator.base_url
    return write_config(
        tmp_path,
        gws_url=simulator.base_url,
        correlation={"send_timeout_seconds": 120},
        sinks=[
            {"name": "archive", "type": "jsonl", "path": str(tmp_path / "events.jsonl")},
            {
                "name": "redis",
                "type": "redis",
                "url": redis.url,
                "stream": STREAM,
                "backoff_max_seconds": 0.5,
            },
            {
                "name": "nats",
                "type": "nats",
                "url": [nats_.url],
                "subject": SUBJECT,
                "stream": JS_STREAM,
                "create_stream": True,
                "subjects": ["gws.>"],
                "duplicate_window_seconds": 3600,
                "backoff_max_seconds": 0.5,
            },
        ],
    )


def archived_ids(tmp_path: Path) -> list[str]:
    """Event ids in the jsonl sink, first occurrence order (it may hold duplicates)."""
    return list(dict.fromkeys(e["id"] for e in read_jsonl(tmp_path / "events.jsonl")))


async def assert_each_bus_holds_exactly(
    expected: list[str], redis: RedisServer, nats_: NatsServer
) -> None:
    async def caught_up() -> bool:
        return len(await redis_ids(redis.url)) >= len(expected) and len(
            await nats_ids(nats_.url)
        ) >= len(expected)

    await wait_until(caught_up, timeout=60, what=f"{len(expected)} events in both buses")
    assert await redis_ids(redis.url) == expected
    assert await nats_ids(nats_.url) == expected


async def send_many(daemon: DaemonProcess, count: int, prefix: str) -> None:
    limit = asyncio.Semaphore(16)

    async def one(n: int) -> None:
        async with limit:
            status, _ = await daemon.send(f"{prefix}-{n:05d}")
            assert status == 200

    await asyncio.gather(*(one(n) for n in range(count)))


async def test_every_event_of_a_burst_reaches_both_buses_once_in_order(
    simulator: Simulator,
    tmp_path: Path,
    redis_server: RedisServer,
    nats_server: NatsServer,
) -> None:
    config = bus_config(tmp_path, simulator, redis_server, nats_server)
    async with DaemonProcess(config) as daemon:
        await send_many(daemon, 200, "B")
        await daemon.wait_events(tmp_path / "events.jsonl", 200, timeout=60)
        expected = archived_ids(tmp_path)
        await assert_each_bus_holds_exactly(expected, redis_server, nats_server)
        metrics = await daemon.metrics()
    assert len(expected) == 200
    assert 'gws_notifyd_sink_deliveries_total{outcome="delivered",sink="redis"} 200.0' in metrics
    assert 'gws_notifyd_sink_deliveries_total{outcome="delivered",sink="nats"} 200.0' in metrics
    assert 'gws_notifyd_sink_duplicates_dropped_total{sink="redis"} 0.0' in metrics
    assert 'gws_notifyd_sink_duplicates_dropped_total{sink="nats"} 0.0' in metrics


@pytest.mark.slow
async def test_kill_9_during_traffic_leaves_no_gap_and_no_duplicate_in_either_bus(
    simulator: Simulator,
    tmp_path: Path,
    redis_server: RedisServer,
    nats_server: NatsServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = bus_config(tmp_path, simulator, redis_server, nats_server)
    daemon = DaemonProcess(config, wait_ready=False)
    await daemon.start()
    stop = asyncio.Event()
    numbers = itertools.count()

    async def produce() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            while not stop.is_set():
                api = daemon.api
                if not api:
                    await asyncio.sleep(0.01)
                    continue
                email_id = f"K-{next(numbers):06d}"
                try:
                    async with http.post(
                        f"{api}/api/v2/me/emails/{email_id}", json=send_body()
                    ) as response:
                        await response.read()
                except (aiohttp.ClientError, TimeoutError):
                    await asyncio.sleep(0.01)

    producers = [asyncio.create_task(produce()) for _ in range(4)]
    rng = random.Random(20261127)
    try:
        for _ in range(10):
            await asyncio.sleep(rng.uniform(0.3, 1.0))  # a random moment, not a synchronisation
            await daemon.kill()
            await daemon.start()
    finally:
        stop.set()
        await asyncio.gather(*producers)
    try:
        # Whatever the archive got, both buses get too: once each.
        await daemon.wait_ready_status(200)
        started = time.monotonic()
        await wait_until(
            lambda: _settled(tmp_path, redis_server, nats_server),
            timeout=60,
            what="both buses to hold every archived event",
        )
        expected = archived_ids(tmp_path)
    finally:
        await daemon.stop()
    in_redis, in_nats = await redis_ids(redis_server.url), await nats_ids(nats_server.url)
    with capsys.disabled():
        print(
            f"\n== kill -9 x10 with bus sinks: {len(expected)} events, "
            f"redis {len(in_redis)} entries, nats {len(in_nats)} messages, "
            f"archive duplicates {len(read_jsonl(tmp_path / 'events.jsonl')) - len(expected)}, "
            f"settled in {time.monotonic() - started:.1f} s"
        )
    assert len(expected) > 50
    assert sorted(in_redis) == sorted(expected)
    assert sorted(in_nats) == sorted(expected)
    assert len(set(in_redis)) == len(in_redis)
    assert len(set(in_nats)) == len(in_nats)


async def _settled(tmp_path: Path, redis: RedisServer, nats_: NatsServer) -> bool:
    expected = set(archived_ids(tmp_path))
    return (
        set(await redis_ids(redis.url)) >= expected and set(await nats_ids(nats_.url)) >= expected
    )


@pytest.mark.slow
async def test_buses_away_for_30_seconds_lose_nothing(
    simulator: Simulator,
    tmp_path: Path,
    redis_server: RedisServer,
    nats_server: NatsServer,
) -> None:
    config = bus_config(tmp_path, simulator, redis_server, nats_server)
    async with DaemonProcess(config) as daemon:
        await send_many(daemon, 20, "A")
        await redis_server.stop()
        await nats_server.stop()
        down_at = time.monotonic()
        sent = 20
        while time.monotonic() - down_at < 30:
            await send_many(daemon, 10, f"D{sent}")
            sent += 10
        await daemon.wait_events(tmp_path / "events.jsonl", sent, timeout=60)
        metrics = await daemon.metrics()
        assert 'gws_notifyd_outbox_backlog{sink="redis"} 0.0' not in metrics
        assert 'gws_notifyd_outbox_backlog{sink="nats"} 0.0' not in metrics
        await redis_server.start()
        await nats_server.start()
        await assert_each_bus_holds_exactly(archived_ids(tmp_path), redis_server, nats_server)
    assert len(archived_ids(tmp_path)) == sent


async def test_a_permanent_refusal_dead_letters_and_replay_delivers_it(
    simulator: Simulator,
    tmp_path: Path,
    redis_server: RedisServer,
    nats_server: NatsServer,
) -> None:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.set(REDIS_STREAM, "in the way")
    config = bus_config(tmp_path, simulator, redis_server, nats_server)
    try:
        async with DaemonProcess(config) as daemon:
            await daemon.send("P-1")
            await daemon.wait_log(
                lambda e: e.get("event") == "sink_dead_letter" and e.get("sink") == "redis"
            )
            listing = await cli_output("dead-letters", "list", "--config", str(config))
            assert "WRONGTYPE" in listing
            await client.delete(REDIS_STREAM)
            replayed = await cli_output(
                "dead-letters", "replay", "--all", "--sink", "redis", "--config", str(config)
            )
            assert "replayed 1 dead letter(s)" in replayed
            await wait_until(
                lambda: _redis_has(redis_server, 1), timeout=15, what="the replayed event"
            )
    finally:
        await client.aclose()
    [event] = read_jsonl(tmp_path / "events.jsonl")
    assert await redis_ids(redis_server.url) == [event["id"]]
    [entry] = await redis_entries(redis_server.url)
    assert orjson.loads(entry["event"]) == event


async def _redis_has(server: RedisServer, count: int) -> bool:
    return len(await redis_ids(server.url)) >= count


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "module", "extra"), [("redis", "redis", "redis"), ("nats", "nats", "nats")]
)
async def test_check_names_the_install_command_when_a_bus_client_is_missing(
    tmp_path: Path, kind: str, module: str, extra: str
) -> None:
    sink: dict[str, Any] = {"name": "bus", "type": kind, "stream": "S", "subject": "s.{type}"}
    sink["url"] = "redis://127.0.0.1:6379/0" if kind == "redis" else "nats://127.0.0.1:4222"
    config = write_config(tmp_path, gws_url="http://127.0.0.1:9", sinks=[sink])
    # The library hidden from this one process, as on a machine without the extra.
    hide = f"import sys; sys.modules[{module!r}] = None; from daemon.cli import main; "
    code, out, err = await run_python(
        hide + f"sys.exit(main(['check', '--config', {str(config)!r}]))"
    )

    assert code == 78
    assert out == ""
    assert err == (
        f"gws-notifyd: config error: sinks[0].type: {kind} sinks need the {module} client: "
        f"pip install 'gws-notifyd[{extra}]'\n"
    )


async def run_python(code: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "GWS_PASSWORD": "x"},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
