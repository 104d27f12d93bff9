"""Sinks: the JSON-lines file, and the webhook against a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from daemon.config import Secret
from daemon.errors import PermanentSinkError, RetryableSinkError
from daemon.sinks.jsonl import JsonLinesSink
from daemon.sinks.webhook import SIGNATURE_HEADER, WebhookSink, classify, sign, verify
from daemon.store import OutboxRow

SECRET = b"whsec-test"


def row(n: int) -> OutboxRow:
    body = orjson.dumps(
        {
            "specversion": "1.0",
            "id": f"event-{n}",
            "source": "https://gws.example.com",
            "type": "gws.email.state_changed",
            "data": {"n": n, "text": "line\nbreak inside a string"},
        }
    )
    return OutboxRow(n, f"event-{n}", "gws.email.state_changed", f"email-{n}", 1000.0 + n, body)


ROWS = [row(1), row(2), row(3)]


# -- JSON lines --------


@pytest.fixture
def jsonl_path(tmp_path: Path) -> Path:
    return tmp_path / "out" / "events.jsonl"


@pytest.fixture
async def open_jsonl() -> AsyncIterator[list[JsonLinesSink]]:
    """Opened sinks, closed at the end of the test."""
    sinks: list[JsonLinesSink] = []
    yield sinks
    for sink in sinks:
        await sink.close()


def jsonl(path: Path, opened: list[JsonLinesSink], *, fsync: bool = False) -> JsonLinesSink:
    sink = JsonLinesSink(name="archive", path=path, fsync=fsync)
    opened.append(sink)
    return sink


def seed(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(content)


def lines(path: Path) -> list[bytes]:
    content = path.read_bytes()
    assert content.endswith(b"\n")
    return content.split(b"\n")[:-1]


async def test_jsonl_writes_one_event_per_line(
    jsonl_path: Path, open_jsonl: list[JsonLinesSink]
) -> None:
    sink = jsonl(jsonl_path, open_jsonl)

    await sink.deliver(ROWS[:2])
    await sink.deliver(ROWS[2:])

    assert lines(jsonl_path) == [r.body for r in ROWS]
    assert [orjson.loads(line)["id"] for line in lines(jsonl_path)] == [
        "event-1",
        "event-2",
        "event-3",
    ]


async def test_jsonl_appends_to_an_existing_file(
    jsonl_path: Path, open_jsonl: list[JsonLinesSink]
) -> None:
    first = jsonl(jsonl_path, open_jsonl)
    await first.deliver(ROWS[:1])
    await first.close()

    second = jsonl(jsonl_path, open_jsonl)
    await second.deliver(ROWS[1:])

    assert lines(jsonl_path) == [r.body for r in ROWS]


async def test_jsonl_with_fsync_writes_the_same(
    jsonl_path: Path, open_jsonl: list[JsonLinesSink]
) -> None:
    sink = jsonl(jsonl_path, open_jsonl, fsync=True)
    await sink.deliver(ROWS)
    assert lines(jsonl_path) == [r.body for r in ROWS]


async def test_jsonl_cuts_a_partial_trailing_line_at_open(
    jsonl_path: Path, open_jsonl: list[JsonLinesSink]
) -> None:
    seed(jsonl_path, ROWS[0].body + b"\n" + ROWS[1].body[:17])

    sink = jsonl(jsonl_path, open_jsonl)
    assert lines(jsonl_path) == [ROWS[0].body]
    await sink.deliver(ROWS[1:])

    assert lines(jsonl_path) == [r.body for r in ROWS]


def test_jsonl_cuts_a_partial_line_longer_than_its_read_block(
    jsonl_path: Path, open_jsonl: list[JsonLinesSink]
) -> None:
    seed(jsonl_path, ROWS[0].body + b"\n" + b'{"half":"' + b"x" * 200_000)

    jsonl(jsonl_path, open_jsonl)

    assert jsonl_path.read_bytes() == ROWS[0].body + b"\n"


def test_jsonl_file_of_only_a_partial_line_is_emptied(
    jsonl_path: Path, open_jsonl: list[JsonLinesSink]
) -> None:
    seed(jsonl_path, b"x" * 70_000)
    jsonl(jsonl_path, open_jsonl)
    assert jsonl_path.read_bytes() == b""


def test_jsonl_leaves_a_whole_file_alone(jsonl_path: Path, open_jsonl: list[JsonLinesSink]) -> None:
    whole = b"".join(r.body + b"\n" for r in ROWS)
    seed(jsonl_path, whole)
    jsonl(jsonl_path, open_jsonl)
    assert jsonl_path.read_bytes() == whole


def test_jsonl_that_cannot_open_its_file_is_retryable(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(RetryableSinkError, match="archive"):
        JsonLinesSink(name="archive", path=blocker / "events.jsonl")


# -- signing --------


def test_signature_verifies() -> None:
    body = ROWS[0].body
    header = sign(SECRET, 1_700_000_000, body)
    assert header.startswith("t=1700000000,v1=")
    assert verify(SECRET, header, body, now=1_700_000_000 + 10)


def test_signature_of_a_tampered_body_fails() -> None:
    header = sign(SECRET, 1_700_000_000, ROWS[0].body)
    assert not verify(SECRET, header, ROWS[0].body + b" ", now=1_700_000_000)


def test_signature_with_another_secret_fails() -> None:
    header = sign(b"other-secret", 1_700_000_000, ROWS[0].body)
    assert not verify(SECRET, header, ROWS[0].body, now=1_700_000_000)


@pytest.mark.parametrize("age", [301, -301, 86_400])
def test_stale_or_future_timestamp_fails(age: int) -> None:
    header = sign(SECRET, 1_700_000_000, ROWS[0].body)
    assert not verify(SECRET, header, ROWS[0].body, now=1_700_000_000 + age)


def test_tampered_timestamp_fails() -> None:
    header = sign(SECRET, 1_700_000_000, ROWS[0].body)
    forged = header.replace("t=1700000000", "t=1700000100")
    assert not verify(SECRET, forged, ROWS[0].body, now=1_700_000_100)


@pytest.mark.parametrize(
    "header", ["", "garbage", "v1=abc", "t=soon,v1=abc", "t=1700000000", "t=1700000000,v1="]
)
def test_malformed_signature_header_fails(header: str) -> None:
    assert not verify(SECRET, header, ROWS[0].body, now=1_700_000_000)


def test_non_ascii_signature_fails_instead_of_raising() -> None:
    assert not verify(SECRET, "t=1700000000,v1=é", ROWS[0].body, now=1_700_000_000)


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, True),
        (201, True),
        (202, True),
        (204, True),
        (299, True),
        (408, False),
        (429, False),
        (500, False),
        (502, False),
        (503, False),
        (504, False),
        (301, None),
        (400, None),
        (401, None),
        (403, None),
        (404, None),
        (409, None),
        (410, None),
        (413, None),
        (422, None),
    ],
)
def test_classify_takes_2xx_retries_408_429_5xx_and_refuses_other_statuses(
    status: int, verdict: bool | None
) -> None:
    assert classify(status) is verdict


# -- webhook against a real server --------


@dataclass
class Captured:
    headers: dict[str, str]
    body: bytes


@dataclass
class Hook:
    """A receiving endpoint: answers each POST with the next status (200 when none left)."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    received: list[Captured] = field(default_factory=list)
    hold: asyncio.Event | None = None


HOOK = web.AppKey("hook", Hook)


async def receive(request: web.Request) -> web.Response:
    hook = request.app[HOOK]
    hook.received.append(Captured(dict(request.headers), await request.read()))
    if hook.hold is not None:
        await hook.hold.wait()
    status = hook.statuses.pop(0) if hook.statuses else 200
    return web.Response(status=status, text="ok")


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    state = Hook()
    app = web.Application()
    app[HOOK] = state
    app.router.add_post("/hooks/gws", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}/hooks/gws"
    yield state
    if state.hold is not None:
        state.hold.set()
    await runner.cleanup()


@pytest.fixture
async def webhooks() -> AsyncIterator[list[WebhookSink]]:
    """Sinks made by a test, closed after it."""
    made: list[WebhookSink] = []
    yield made
    for sink in made:
        await sink.close()


def webhook(made: list[WebhookSink], url: str, **options: object) -> WebhookSink:
    sink = WebhookSink(name="crm", url=url, **options)  # type: ignore[arg-type]
    made.append(sink)
    return sink


async def test_webhook_posts_each_event_with_its_headers_and_a_valid_signature(
    hook: Hook, webhooks: list[WebhookSink]
) -> None:
    sink = webhook(
        webhooks, hook.url, secret=Secret(SECRET.decode()), headers=(("X-Tenant", "acme"),)
    )

    await sink.deliver(ROWS)

    assert [c.body for c in hook.received] == [r.body for r in ROWS]
    for captured, sent in zip(hook.received, ROWS, strict=True):
        headers = captured.headers
        assert headers["Content-Type"] == "application/cloudevents+json"
        assert headers["Idempotency-Key"] == sent.event_id
        assert headers["X-Tenant"] == "acme"
        assert headers["User-Agent"].startswith("gws-notifyd/")
        assert verify(SECRET, headers[SIGNATURE_HEADER], captured.body, now=time.time())


async def test_webhook_without_secret_sends_no_signature(
    hook: Hook, webhooks: list[WebhookSink]
) -> None:
    await webhook(webhooks, hook.url).deliver(ROWS[:1])
    assert SIGNATURE_HEADER not in hook.received[0].headers


async def test_webhook_503_is_retryable_and_counts_what_was_taken(
    hook: Hook, webhooks: list[WebhookSink]
) -> None:
    hook.statuses = [200, 200, 503]

    with pytest.raises(RetryableSinkError) as caught:
        await webhook(webhooks, hook.url).deliver(ROWS)

    assert caught.value.delivered == 2
    assert "HTTP 503" in str(caught.value)
    assert len(hook.received) == 3


@pytest.mark.parametrize("status", [408, 429, 500])
async def test_webhook_retryable_statuses_raise_retryable(
    status: int, hook: Hook, webhooks: list[WebhookSink]
) -> None:
    hook.statuses = [status]
    with pytest.raises(RetryableSinkError) as caught:
        await webhook(webhooks, hook.url).deliver(ROWS)
    assert caught.value.delivered == 0
    assert len(hook.received) == 1


async def test_webhook_400_is_permanent_and_stops_the_batch(
    hook: Hook, webhooks: list[WebhookSink]
) -> None:
    hook.statuses = [200, 400]

    with pytest.raises(PermanentSinkError) as caught:
        await webhook(webhooks, hook.url).deliver(ROWS)

    assert caught.value.delivered == 1
    assert not caught.value.retryable
    assert len(hook.received) == 2


async def test_webhook_array_mode_posts_one_batch(hook: Hook, webhooks: list[WebhookSink]) -> None:
    sink = webhook(webhooks, hook.url, batch_mode="array", secret=Secret(SECRET.decode()))

    await sink.deliver(ROWS)

    [captured] = hook.received
    assert captured.headers["Content-Type"] == "application/cloudevents-batch+json"
    assert orjson.loads(captured.body) == [orjson.loads(r.body) for r in ROWS]
    assert captured.headers["Idempotency-Key"] == "event-1"
    assert captured.headers["Idempotency-Keys"] == "event-1,event-2,event-3"
    assert verify(SECRET, captured.headers[SIGNATURE_HEADER], captured.body, now=time.time())


async def test_webhook_array_mode_keeps_each_post_under_a_servers_header_limit(
    hook: Hook, webhooks: list[WebhookSink]
) -> None:
    batch = [row(n)._replace(event_id=f"0b6f6a3c-52f1-5c1e-9d1b-{n:012d}") for n in range(1, 501)]

    await webhook(webhooks, hook.url, batch_mode="array").deliver(batch)

    assert [len(orjson.loads(c.body)) for c in hook.received] == [200, 200, 100]
    keys = [k for c in hook.received for k in c.headers["Idempotency-Keys"].split(",")]
    assert keys == [r.event_id for r in batch]
    # aiohttp's own server (8190 bytes a header) took every one of them.
    assert all(len(c.headers["Idempotency-Keys"]) < 8190 for c in hook.received)


async def test_webhook_array_mode_failure_took_nothing(
    hook: Hook, webhooks: list[WebhookSink]
) -> None:
    hook.statuses = [503]
    with pytest.raises(RetryableSinkError) as caught:
        await webhook(webhooks, hook.url, batch_mode="array").deliver(ROWS)
    assert caught.value.delivered == 0


async def test_webhook_connection_refused_is_retryable(webhooks: list[WebhookSink]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port any more.
    with pytest.raises(RetryableSinkError) as caught:
        await webhook(webhooks, f"http://127.0.0.1:{port}/hooks").deliver(ROWS)
    assert caught.value.delivered == 0


async def test_webhook_timeout_is_retryable(hook: Hook, webhooks: list[WebhookSink]) -> None:
    hook.hold = asyncio.Event()
    sink = webhook(webhooks, hook.url, timeout_seconds=0.2)
    with pytest.raises(RetryableSinkError) as caught:
        await sink.deliver(ROWS)
    assert caught.value.delivered == 0
