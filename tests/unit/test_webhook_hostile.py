"""The webhook sink against endpoints that misbehave: redirects, endless answers, URLs with secrets.

Real HTTP servers on loopback: the endpoint, and a second origin a redirect points to.
Also the signature that binds the Idempotency-Key (`v2`) beside the body-only `v1`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import orjson
import pytest
from aiohttp import web

from daemon.config import Secret
from daemon.errors import PermanentSinkError, RetryableSinkError
from daemon.sinks.webhook import SIGNATURE_HEADER, WebhookSink, sign, verify
from daemon.store import OutboxRow

SECRET = b"whsec-test"
DEADLINE = 3.0
NOW = 1_700_000_000


def row(n: int) -> OutboxRow:
    body = orjson.dumps({"specversion": "1.0", "id": f"event-{n}", "data": {"n": n}})
    return OutboxRow(n, f"event-{n}", "gws.email.state_changed", f"email-{n}", 1000.0 + n, body)


ROWS = [row(1), row(2)]


@dataclass
class Origin:
    """One HTTP origin on loopback: what it received, per path; how it answers POST /hook."""

    url: str = ""
    received: list[tuple[str, str, dict[str, str], bytes]] = field(default_factory=list)
    answer: Callable[[], web.Response] | None = None  # a fresh one per request
    endless: bool = False


ORIGIN = web.AppKey("origin", Origin)


async def _record(request: web.Request) -> web.StreamResponse:
    origin = request.app[ORIGIN]
    origin.received.append(
        (request.method, request.path_qs, dict(request.headers), await request.read())
    )
    if request.path == "/hook" and origin.answer is not None:
        return origin.answer()
    if request.path == "/hook" and origin.endless:
        response = web.StreamResponse(status=200)
        await response.prepare(request)
        while True:  # until the client goes
            await response.write(b"x" * 65536)
    return web.Response(status=200, text="ok")


@pytest.fixture
async def origins() -> AsyncIterator[list[Origin]]:
    """Two origins: [0] the configured endpoint, [1] somewhere else."""
    made: list[Origin] = []
    runners: list[web.AppRunner] = []
    for _ in range(2):
        origin = Origin()
        app = web.Application()
        app[ORIGIN] = origin
        app.router.add_route("*", "/{tail:.*}", _record)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        origin.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        made.append(origin)
        runners.append(runner)
    yield made
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def webhooks() -> AsyncIterator[list[WebhookSink]]:
    made: list[WebhookSink] = []
    yield made
    for sink in made:
        await sink.close()


def webhook(made: list[WebhookSink], url: str, **options: object) -> WebhookSink:
    sink = WebhookSink(name="crm", url=url, secret=Secret(SECRET.decode()), **options)  # type: ignore[arg-type]
    made.append(sink)
    return sink


def redirect(status: int, location: str) -> Callable[[], web.Response]:
    return lambda: web.Response(status=status, headers={"Location": location})


# -- redirects ------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_a_permanent_failure_and_is_not_followed(
    origins: list[Origin], webhooks: list[WebhookSink], status: int
) -> None:
    endpoint, elsewhere = origins
    endpoint.answer = redirect(status, f"{elsewhere.url}/stolen")

    with pytest.raises(PermanentSinkError) as caught:
        await webhook(webhooks, endpoint.url + "/hook").deliver(ROWS)

    assert caught.value.delivered == 0
    assert f"HTTP {status}" in str(caught.value)
    assert f"{elsewhere.url}/stolen" in str(caught.value)
    assert elsewhere.received == []
    assert [(method, path) for method, path, _, _ in endpoint.received] == [("POST", "/hook")]


async def test_a_redirect_on_the_same_origin_is_not_followed_either(
    origins: list[Origin], webhooks: list[WebhookSink]
) -> None:
    endpoint, _ = origins
    endpoint.answer = redirect(302, "/elsewhere")

    with pytest.raises(PermanentSinkError, match="redirect"):
        await webhook(webhooks, endpoint.url + "/hook").deliver(ROWS)

    assert [path for _, path, _, _ in endpoint.received] == ["/hook"]


async def test_a_location_is_shown_without_its_userinfo_query_or_fragment(
    origins: list[Origin], webhooks: list[WebhookSink]
) -> None:
    endpoint, _ = origins
    endpoint.answer = redirect(307, "https://user:pa55word@other.example:8443/in?token=abc#frag")

    with pytest.raises(PermanentSinkError) as caught:
        await webhook(webhooks, endpoint.url + "/hook").deliver(ROWS)

    reason = str(caught.value)
    assert "https://other.example:8443/in" in reason
    for secret in ("user", "pa55word", "token", "abc", "frag"):
        assert secret not in reason


# -- what is read of an answer, what is shown of the URL -------------------------------------


async def test_an_endless_answer_is_read_only_so_far(
    origins: list[Origin], webhooks: list[WebhookSink]
) -> None:
    endpoint, _ = origins
    endpoint.endless = True
    sink = webhook(webhooks, endpoint.url + "/hook", timeout_seconds=30)

    await asyncio.wait_for(sink.deliver(ROWS[:1]), DEADLINE)

    assert len(endpoint.received) == 1


async def test_the_sink_url_is_shown_without_userinfo_or_query(
    origins: list[Origin], webhooks: list[WebhookSink]
) -> None:
    endpoint, _ = origins
    endpoint.answer = lambda: web.Response(status=400)
    host = endpoint.url.removeprefix("http://")
    url = f"http://hookuser:hookpass@{host}/hook?api_key=k3y"

    with pytest.raises(PermanentSinkError) as caught:
        await webhook(webhooks, url).deliver(ROWS)

    reason = str(caught.value)
    assert f"http://{host}/hook" in reason
    for secret in ("hookuser", "hookpass", "api_key", "k3y"):
        assert secret not in reason


async def test_the_sink_url_is_shown_without_userinfo_or_query_when_unreachable(
    webhooks: list[WebhookSink], closed_port: int
) -> None:
    url = f"http://hookuser:hookpass@127.0.0.1:{closed_port}/hook?api_key=k3y"

    with pytest.raises(RetryableSinkError) as caught:
        await webhook(webhooks, url).deliver(ROWS)

    reason = str(caught.value)
    assert f"http://127.0.0.1:{closed_port}/hook" in reason
    for secret in ("hookuser", "hookpass", "api_key", "k3y"):
        assert secret not in reason


# -- v2: the signature that binds the Idempotency-Key ----------------------------------------


def test_v2_signs_timestamp_idempotency_key_and_body_beside_v1() -> None:
    body = ROWS[0].body
    header = sign(SECRET, NOW, body, idempotency_key="event-1")

    fields = dict(part.split("=", 1) for part in header.split(","))
    assert set(fields) == {"t", "v1", "v2"}
    assert verify(SECRET, header, body, now=NOW, idempotency_key="event-1")
    # A receiver that knows only v1 still verifies the same header.
    assert verify(SECRET, header, body, now=NOW)


def test_v2_fails_for_another_idempotency_key() -> None:
    body = ROWS[0].body
    header = sign(SECRET, NOW, body, idempotency_key="event-1")

    assert not verify(SECRET, header, body, now=NOW, idempotency_key="event-2")


def test_a_v1_only_header_verifies_with_or_without_a_key() -> None:
    body = ROWS[0].body
    header = sign(SECRET, NOW, body)

    assert "v2=" not in header
    assert verify(SECRET, header, body, now=NOW)
    assert verify(SECRET, header, body, now=NOW, idempotency_key="event-1")


def test_v2_of_a_tampered_body_or_stale_time_fails() -> None:
    body = ROWS[0].body
    header = sign(SECRET, NOW, body, idempotency_key="event-1")

    assert not verify(SECRET, header, body + b" ", now=NOW, idempotency_key="event-1")
    assert not verify(SECRET, header, body, now=NOW + 301, idempotency_key="event-1")


@pytest.mark.parametrize("batch_mode", ["single", "array"])
async def test_the_sink_signs_each_request_with_v1_and_v2(
    origins: list[Origin], webhooks: list[WebhookSink], batch_mode: str
) -> None:
    endpoint, _ = origins

    await webhook(webhooks, endpoint.url + "/hook", batch_mode=batch_mode).deliver(ROWS)

    assert endpoint.received
    for _, _, headers, body in endpoint.received:
        header = headers[SIGNATURE_HEADER]
        assert "v2=" in header
        key = headers["Idempotency-Key"]
        assert verify(SECRET, header, body, now=time.time(), idempotency_key=key)
        assert verify(SECRET, header, body, now=time.time())
