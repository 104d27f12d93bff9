"""The Bayeux client's parts and edges, against a scripted server on loopback.

What a reply means (meta.py), the server's advice (advice.py), parsing (messages.py),
each transport's errors, and the client's pacing: pipelined connects, the batch
window, the advised interval, and what a refused connect leads to. The conformance
suite (tests/integration) runs the whole client against independent servers.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
import orjson
import pytest
from aiohttp import web
from yarl import URL

import daemon.cometd
from daemon.cometd import BayeuxClient, ClientSettings, Message, Subscribed, TransportError
from daemon.cometd.advice import Advice
from daemon.cometd.errors import OversizedResponseError, SessionRefusedError, UnknownClientError
from daemon.cometd.messages import parse_answer, parse_body, payload, split_replies
from daemon.cometd.meta import (
    connect_refusal,
    handshake_refusal,
    is_unknown_client,
    subscribe_refusal,
    subscribe_request,
)
from daemon.cometd.transports import LongPollingTransport, WebSocketTransport
from daemon.errors import HandshakeError, ServerGoneError

CHANNEL = "/v2/me/emails"
WAIT = 10.0


def test_the_package_offers_every_name_the_single_module_offered() -> None:
    names = {
        "LONG_POLLING",
        "WEBSOCKET",
        "BatchHandler",
        "BayeuxClient",
        "ClientSettings",
        "ConnectionState",
        "LongPollingTransport",
        "Message",
        "OversizedResponseError",
        "StateHandler",
        "Subscribed",
        "SubscribedHandler",
        "Transport",
        "TransportError",
        "WebSocketTransport",
        "_is_unknown_client",
        "_parse_body",
    }
    assert {name for name in names if not hasattr(daemon.cometd, name)} == set()


# -- what a reply means ---------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    ["402::Unknown client", "402::session_unknown", "401:abc123:Unknown client"],
)
def test_unknown_client_errors_of_cometd_and_faye_are_recognised(error: str) -> None:
    assert is_unknown_client(error)


@pytest.mark.parametrize("error", ["403::forbidden", "500::oops", None, 402, ""])
def test_other_errors_are_not_unknown_client(error: Any) -> None:
    assert not is_unknown_client(error)


@pytest.mark.parametrize(
    ("error", "reconnect", "expected"),
    [
        ("402::Unknown client", "none", ServerGoneError),
        ("500::oops", "handshake", UnknownClientError),
        ("402::Unknown client", "retry", UnknownClientError),
        ("500::oops", "retry", TransportError),
        (None, None, TransportError),
    ],
)
def test_a_refused_connect_means_gone_handshake_again_or_retry(
    error: Any, reconnect: str | None, expected: type[Exception]
) -> None:
    refusal = connect_refusal({"successful": False, "error": error}, reconnect)
    assert type(refusal) is expected


def test_a_refused_handshake_is_final_only_when_the_server_advises_none() -> None:
    refused = {"successful": False, "error": "403::no"}
    assert type(handshake_refusal(refused, "none")) is ServerGoneError
    assert type(handshake_refusal(refused, "retry")) is HandshakeError
    assert type(handshake_refusal({"successful": True}, "retry")) is HandshakeError  # no id
    assert handshake_refusal({"successful": True, "clientId": "c1"}, "retry") is None


def test_subscribe_replies_are_matched_by_id_or_else_by_subscription() -> None:
    requests = [subscribe_request("7", "c1", "/a"), subscribe_request("8", "c1", "/b")]
    by_id = {"channel": "/meta/subscribe", "id": "7", "successful": True}
    by_name = {"channel": "/meta/subscribe", "subscription": ["/b"], "successful": True}
    assert subscribe_refusal(requests, [by_id, by_name]) is None


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ({"id": "7", "successful": False, "error": "402::Unknown client"}, UnknownClientError),
        ({"id": "7", "successful": False, "error": "403::denied"}, HandshakeError),
        ({"id": "99", "successful": True}, HandshakeError),  # no answer for ours
    ],
)
def test_a_refused_or_unanswered_subscription_is_an_error(
    reply: dict[str, Any], expected: type[Exception]
) -> None:
    refusal = subscribe_refusal(
        [subscribe_request("7", "c1", "/a")], [{"channel": "/meta/subscribe"} | reply]
    )
    assert type(refusal) is expected


def test_advice_starts_at_bayeux_defaults_and_changes_field_by_field() -> None:
    advice = Advice()
    assert (advice.interval(), advice.connect_timeout(10.0), advice.reconnect) == (
        0.0,
        40.0,
        "retry",
    )
    advice.take({"advice": {"interval": 250}})
    advice.take({"advice": "not an object"})
    advice.take({})
    assert (advice.interval(), advice.connect_timeout(10.0)) == (0.25, 40.0)
    advice.take({"advice": {"timeout": 20000, "reconnect": "handshake"}})
    assert (advice.interval(), advice.connect_timeout(1.0), advice.reconnect) == (
        0.25,
        21.0,
        "handshake",
    )
    advice.take({"advice": {"timeout": "soon", "interval": None}})
    assert (advice.interval(), advice.connect_timeout(0.0)) == (0.0, 30.0)


# -- parsing ------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"<html>502 Bad Gateway</html>", b"", b"\xff\xfe", b"42"])
def test_a_body_that_is_not_a_json_array_is_a_transport_error(body: bytes) -> None:
    with pytest.raises(TransportError):
        parse_body(body)


def test_a_single_object_is_taken_as_a_batch_of_one() -> None:
    assert parse_body(b'{"channel":"/meta/connect","successful":true}') == [
        {"channel": "/meta/connect", "successful": True}
    ]


def test_replies_are_split_into_meta_and_data_in_order_and_channelless_ones_dropped() -> None:
    meta, data = split_replies(
        [
            {"channel": "/a", "data": 1},
            {"channel": "/meta/connect", "successful": True},
            {"data": "no channel"},
            {"channel": 5, "data": "bad channel"},
            {"channel": "/b"},
        ]
    )
    assert meta == [{"channel": "/meta/connect", "successful": True}]
    assert data == [Message("/a", 1), Message("/b", None)]


def test_the_collector_is_paused_while_a_large_answer_is_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    collector_on: list[bool] = []
    loads = orjson.loads

    def spy(body: bytes) -> Any:
        collector_on.append(gc.isenabled())
        return loads(body)

    monkeypatch.setattr("daemon.cometd.messages.orjson.loads", spy)
    large = orjson.dumps([{"channel": "/a", "data": "x" * (2 * 1024 * 1024)}])
    parse_body(large)
    parse_body(b"[]")
    with pytest.raises(TransportError):
        parse_body(b"[" + b" " * (2 * 1024 * 1024))
    assert collector_on == [False, True, False]
    assert gc.isenabled()


def test_an_answer_hands_each_payload_over_as_its_json_text() -> None:
    body = (
        b'[{"channel":"/a","data":{"messageType":"X","n":[1,2]},"id":"7"},'
        b'{"channel":"/meta/connect","successful":true,"advice":{"timeout":0},"ext":{}},'
        b'{"channel":"/b"},{"channel":"/c","data":null}]'
    )
    meta, data = parse_answer(body)
    assert meta == [{"channel": "/meta/connect", "successful": True, "advice": {"timeout": 0}}]
    assert [m.channel for m in data] == ["/a", "/b", "/c"]
    first = data[0].data
    assert isinstance(first, msgspec.Raw)
    assert bytes(first) == b'{"messageType":"X","n":[1,2]}'
    assert data[1].data is None
    assert payload(data[2].data) is None


def test_an_answer_the_typed_decoder_refuses_drops_only_what_cannot_be_used() -> None:
    body = orjson.dumps(
        [
            {"channel": "/a", "data": 1},
            7,
            {"channel": 5, "data": "bad channel"},
            {"channel": "/meta/connect", "successful": True},
        ]
    )
    meta, data = parse_answer(body)
    assert meta == [{"channel": "/meta/connect", "successful": True}]
    assert [(m.channel, payload(m.data)) for m in data] == [("/a", 1)]
    _, alone = parse_answer(b'{"channel":"/a","data":2}')  # one object: a batch of one
    assert [(m.channel, payload(m.data)) for m in alone] == [("/a", 2)]


def test_an_answer_in_utf8_keeps_its_text_as_it_came() -> None:
    body = '[{"channel":"/a","data":{"subject":"Café ✓"}}]'.encode()
    _, data = parse_answer(body)
    assert bytes(data[0].data) == '{"subject":"Café ✓"}'.encode()
    assert payload(data[0].data) == {"subject": "Café ✓"}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'[{"channel":"/a","data":"\xff"}]', "not JSON"),
        (b'[{"channel":"/a","data":{"x":"\xc3"}}]', "not JSON"),
        (b'[{"channel":"/a",', "not JSON"),
        (b"5", "not a JSON array"),
    ],
)
def test_an_answer_that_is_not_json_text_is_a_transport_error(body: bytes, error: str) -> None:
    # Bytes that are not UTF-8 inside a payload: msgspec skips payloads without
    # reading them, and an event must never carry them.
    with pytest.raises(TransportError, match=error):
        parse_answer(body)


# -- transports ---------------------------------------------------------------------


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[URL]:
    """`app` on a free loopback port; yields its /cometd URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield URL(f"http://127.0.0.1:{runner.addresses[0][1]}/cometd")
    finally:
        await runner.cleanup()


async def long_poll_once(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
    app = web.Application()
    app.router.add_post("/cometd", handler)
    async with serving(app) as url, aiohttp.ClientSession() as session:
        transport = LongPollingTransport(session=session, url=url, max_response_bytes=1000)
        await transport.exchange([{"channel": "/meta/connect", "id": "1"}], timeout=WAIT)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (401, SessionRefusedError),
        (403, SessionRefusedError),
        (402, UnknownClientError),
        (500, TransportError),
    ],
)
async def test_an_http_401_or_403_is_the_session_refused_and_other_errors_are_not(
    status: int, expected: type[Exception]
) -> None:
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(status=status)

    with pytest.raises(expected) as raised:
        await long_poll_once(handler)
    assert type(raised.value) is expected


@pytest.mark.parametrize("chunked", [False, True])
async def test_an_answer_over_the_bound_is_refused_with_or_without_a_length(
    chunked: bool,
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = orjson.dumps([{"channel": "/a", "data": "x" * 2000}])
        if not chunked:
            return web.Response(body=body, content_type="application/json")
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), 500):
            await response.write(body[start : start + 500])
        await response.write_eof()
        return response

    with pytest.raises(OversizedResponseError):
        await long_poll_once(handler)


async def test_websocket_data_goes_to_the_handler_and_replies_to_their_request() -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for frame in ws:
            for message in orjson.loads(frame.data):
                await ws.send_str(orjson.dumps([{"channel": "/a", "data": 1}]).decode())
                reply = {"channel": message["channel"], "id": message["id"], "successful": True}
                await ws.send_bytes(orjson.dumps([reply]))
        return ws

    app = web.Application()
    app.router.add_get("/cometd", handler)
    batches: list[list[Message]] = []

    async def on_batch(batch: list[Message]) -> None:
        batches.append([Message(m.channel, payload(m.data)) for m in batch])

    async with serving(app) as url, aiohttp.ClientSession() as session:
        transport = await WebSocketTransport.open(
            session=session, url=url, on_batch=on_batch, max_frame_bytes=10_000, timeout=WAIT
        )
        try:
            meta, data = await transport.exchange(
                [{"channel": "/meta/connect", "id": "5"}], timeout=WAIT
            )
        finally:
            await transport.close()
    assert meta == [{"channel": "/meta/connect", "id": "5", "successful": True}]
    assert data == []
    assert batches == [[Message("/a", 1)]]


async def test_a_websocket_the_server_closes_fails_the_waiting_request_and_the_next() -> None:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/cometd", handler)

    async def on_batch(_batch: list[Message]) -> None:
        raise AssertionError("no data was sent")

    async with serving(app) as url, aiohttp.ClientSession() as session:
        transport = await WebSocketTransport.open(
            session=session, url=url, on_batch=on_batch, max_frame_bytes=10_000, timeout=WAIT
        )
        try:
            with pytest.raises(TransportError):
                await transport.exchange([{"channel": "/meta/connect", "id": "1"}], timeout=WAIT)
            with pytest.raises(TransportError, match="closed"):
                await transport.exchange([{"channel": "/meta/connect", "id": "2"}], timeout=WAIT)
        finally:
            await transport.close()


# -- the client against a scripted server ---------------------------------------------


@dataclass(frozen=True)
class ConnectAnswer:
    """What the scripted server answers to one /meta/connect."""

    data: tuple[Any, ...] = ()  # payloads of data messages on CHANNEL, sent before the reply
    reply: dict[str, Any] = field(default_factory=dict)  # fields merged into the reply


@dataclass
class ScriptedBayeux:
    """A long-polling Bayeux server: handshakes and subscriptions succeed; connects
    are answered from `connects` in turn, and held once the script has run out."""

    connects: list[ConnectAnswer] = field(default_factory=list)
    garbage_left: int = 0  # answers of HTML before any Bayeux
    refused_left: int = 0  # HTTP 403 answers to connects (the HTTP session refused)
    offer_websocket: bool = False  # offered in the handshake; every upgrade fails
    connect_times: list[float] = field(default_factory=list)  # monotonic, on arrival
    handshakes: int = 0
    upgrades: int = 0  # WebSocket upgrade attempts
    headers: list[tuple[str, str | None]] = field(default_factory=list)  # (channel, X-Token)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    async def upgrade(self, request: web.Request) -> web.Response:
        self.upgrades += 1
        self.headers.append(("upgrade", request.headers.get("X-Token")))
        return web.Response(status=400, text="no WebSocket here")

    async def handle(self, request: web.Request) -> web.Response:
        messages = orjson.loads(await request.read())
        self.headers.extend((m["channel"], request.headers.get("X-Token")) for m in messages)
        if self.garbage_left:
            self.garbage_left -= 1
            return web.Response(text="<html>proxy error</html>", content_type="text/html")
        if self.refused_left and messages[0]["channel"] == "/meta/connect":
            self.refused_left -= 1
            return web.Response(status=403, text="Missing or invalid Csrf token")
        replies: list[dict[str, Any]] = []
        for message in messages:
            replies += await self._answer(message)
        return web.json_response(replies)

    async def _answer(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        channel = message["channel"]
        reply = {"channel": channel, "id": message.get("id"), "successful": True}
        if channel == "/meta/handshake":
            self.handshakes += 1
            offered = ["websocket", "long-polling"] if self.offer_websocket else ["long-polling"]
            reply |= {
                "clientId": f"c{self.handshakes}",
                "version": "1.0",
                "supportedConnectionTypes": offered,
            }
        elif channel == "/meta/subscribe":
            reply["subscription"] = message["subscription"]
        elif channel == "/meta/connect":
            self.connect_times.append(time.monotonic())
            self._arrived.set()
            if len(self.connect_times) > len(self.connects):
                await self.released.wait()
                return [reply]
            answer = self.connects[len(self.connect_times) - 1]
            return [{"channel": CHANNEL, "data": d} for d in answer.data] + [reply | answer.reply]
        return [reply]

    async def connected(self, count: int) -> None:
        """Until `count` connects have arrived."""
        async with asyncio.timeout(WAIT):
            while len(self.connect_times) < count:
                self._arrived.clear()
                await self._arrived.wait()


@dataclass
class Caller:
    """The client's caller: records batches (with when they came) and subscriptions."""

    batches: list[list[Message]] = field(default_factory=list)
    batch_times: list[float] = field(default_factory=list)
    subscribed: list[Subscribed] = field(default_factory=list)
    hold_batches: Callable[[], Awaitable[None]] | None = None

    async def on_batch(self, batch: list[Message]) -> None:
        self.batch_times.append(time.monotonic())
        self.batches.append([Message(m.channel, payload(m.data)) for m in batch])
        if self.hold_batches is not None:
            await self.hold_batches()

    async def on_subscribed(self, info: Subscribed) -> None:
        self.subscribed.append(info)

    def messages(self) -> list[Message]:
        return [m for batch in self.batches for m in batch]


@asynccontextmanager
async def running_client(
    server: ScriptedBayeux, caller: Caller, *, batch_window: float = 0.0, **hooks: Any
) -> AsyncIterator[asyncio.Task[None]]:
    """A client of `server` running for the block, closed after it; yields its task.

    `hooks`: `headers`, `before_handshake`, and `allow_websocket` (default False).
    """
    app = web.Application()
    app.router.add_post("/cometd", server.handle)
    app.router.add_get("/cometd", server.upgrade)
    allow_websocket = hooks.pop("allow_websocket", False)
    async with serving(app) as url, aiohttp.ClientSession() as session:
        client = BayeuxClient(
            session=session,
            settings=ClientSettings(
                url=str(url),
                channels=(CHANNEL,),
                allow_websocket=allow_websocket,
                batch_window=batch_window,
            ),
            on_batch=caller.on_batch,
            on_subscribed=caller.on_subscribed,
            **hooks,
        )
        running = asyncio.create_task(client.run())
        try:
            yield running
        finally:
            await client.close()
            server.released.set()
            await asyncio.wait_for(asyncio.gather(running, return_exceptions=True), WAIT)


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


async def test_garbage_answers_are_retried_until_the_server_makes_sense() -> None:
    """A proxy answering HTML for a while does not stop the client."""
    server = ScriptedBayeux(connects=[ConnectAnswer(data=({"n": 1},))], garbage_left=3)
    caller = Caller()
    async with running_client(server, caller):
        await server.connected(2)
    assert caller.messages() == [Message(CHANNEL, {"n": 1})]
    assert server.garbage_left == 0


async def test_the_next_connect_is_out_before_a_batch_is_handed_over() -> None:
    server = ScriptedBayeux(connects=[ConnectAnswer(data=({"n": 1},))])
    # The caller keeps the batch until the next connect has arrived: a client that
    # connected only after handing over would never get there.
    caller = Caller(hold_batches=lambda: server.connected(2))
    async with running_client(server, caller):
        await server.connected(2)
    assert caller.messages() == [Message(CHANNEL, {"n": 1})]
    assert caller.batch_times[0] < server.connect_times[1]


async def test_under_a_steady_stream_connects_are_spaced_by_the_batch_window() -> None:
    window = 0.15
    server = ScriptedBayeux(connects=[ConnectAnswer(data=({"n": n},)) for n in range(4)])
    caller = Caller()
    async with running_client(server, caller, batch_window=window):
        await server.connected(5)
    assert min(gaps(server.connect_times)) > window * 0.8
    assert caller.batches == [[Message(CHANNEL, {"n": n})] for n in range(4)]


async def test_the_advised_interval_passes_between_connects_after_the_batch_went_over() -> None:
    interval = {"advice": {"interval": 150}}
    server = ScriptedBayeux(connects=[ConnectAnswer(data=({"n": 1},), reply=interval)])
    caller = Caller()
    async with running_client(server, caller):
        await server.connected(2)
    assert gaps(server.connect_times)[0] > 0.15 * 0.8
    assert caller.batch_times[0] < server.connect_times[1]


@pytest.mark.parametrize(
    "reply",
    [{"advice": {"reconnect": "none"}}, {"successful": False, "advice": {"reconnect": "none"}}],
    ids=["accepted", "refused"],
)
async def test_reconnect_none_hands_over_the_data_then_ends_run(reply: dict[str, Any]) -> None:
    server = ScriptedBayeux(connects=[ConnectAnswer(data=({"n": 1},), reply=reply)])
    caller = Caller()
    async with running_client(server, caller) as running:
        with pytest.raises(ServerGoneError):
            await asyncio.wait_for(asyncio.shield(running), WAIT)
    assert caller.messages() == [Message(CHANNEL, {"n": 1})]


async def test_an_unknown_client_connect_hands_over_its_data_then_handshakes_again() -> None:
    unknown = {"successful": False, "error": "402::Unknown client"}
    server = ScriptedBayeux(connects=[ConnectAnswer(data=({"n": 1},), reply=unknown)])
    caller = Caller()
    async with running_client(server, caller):
        await server.connected(2)
    assert caller.messages() == [Message(CHANNEL, {"n": 1})]
    assert [(s.client_id, s.rehandshake) for s in caller.subscribed] == [
        ("c1", False),
        ("c2", True),
    ]


async def test_every_request_carries_the_callers_headers_as_they_are_at_the_time() -> None:
    server = ScriptedBayeux(
        connects=[ConnectAnswer(reply={"successful": False, "error": "402::Unknown client"})]
    )
    caller = Caller()
    tokens = iter(f"t{n}" for n in itertools.count(1))
    current = {"X-Token": next(tokens)}

    async def before_handshake() -> None:
        current["X-Token"] = next(tokens)  # a new session, a new token

    async with running_client(
        server, caller, headers=lambda: current, before_handshake=before_handshake
    ):
        await server.connected(2)
    sent = [(channel, token) for channel, token in server.headers]
    assert ("/meta/handshake", "t1") in sent
    assert ("/meta/handshake", "t2") in sent
    assert {channel for channel, _ in sent} >= {"/meta/subscribe", "/meta/connect"}
    assert all(token is not None for _, token in sent)
    # The disconnect at close carries it too.
    assert sent[-1] == ("/meta/disconnect", "t2")


async def test_before_handshake_runs_before_every_handshake_but_the_first() -> None:
    unknown = {"successful": False, "error": "402::Unknown client"}
    server = ScriptedBayeux(connects=[ConnectAnswer(reply=unknown), ConnectAnswer(reply=unknown)])
    caller = Caller()
    calls: list[int] = []

    async def before_handshake() -> None:
        calls.append(server.handshakes)

    async with running_client(server, caller, before_handshake=before_handshake):
        await server.connected(3)
    assert calls == [1, 2]
    assert server.handshakes == 3


async def test_an_http_403_under_bayeux_mends_the_session_then_handshakes_again() -> None:
    server = ScriptedBayeux(refused_left=1)
    caller = Caller()
    mended: list[float] = []

    async def before_handshake() -> None:
        mended.append(time.monotonic())

    async with running_client(server, caller, before_handshake=before_handshake):
        await server.connected(1)  # the refused one is not counted
    assert len(mended) == 1
    assert [s.client_id for s in caller.subscribed] == ["c1", "c2"]


async def test_close_does_not_wait_for_a_before_handshake_that_waits_long() -> None:
    unknown = {"successful": False, "error": "402::Unknown client"}
    server = ScriptedBayeux(connects=[ConnectAnswer(reply=unknown)])
    caller = Caller()
    waiting = asyncio.Event()

    async def before_handshake() -> None:
        waiting.set()
        await asyncio.sleep(3600)  # credentials refused: the next login is far away

    started = time.monotonic()
    async with running_client(server, caller, before_handshake=before_handshake):
        await asyncio.wait_for(waiting.wait(), WAIT)
    assert time.monotonic() - started < WAIT
    assert server.handshakes == 1


async def test_a_failing_websocket_offer_is_tried_twice_then_long_polling_for_good() -> None:
    unknown = {"successful": False, "error": "402::Unknown client"}
    server = ScriptedBayeux(
        connects=[ConnectAnswer(reply=unknown) for _ in range(3)], offer_websocket=True
    )
    caller = Caller()
    async with running_client(server, caller, allow_websocket=True):
        await server.connected(4)
    assert server.handshakes == 4
    assert server.upgrades == 2
    assert {s.transport for s in caller.subscribed} == {"long-polling"}


async def test_without_websocket_allowed_no_upgrade_is_tried() -> None:
    server = ScriptedBayeux(offer_websocket=True)
    caller = Caller()
    async with running_client(server, caller):
        await server.connected(1)
    assert server.upgrades == 0


async def test_rehandshake_drops_the_held_connect_and_mends_the_session_first() -> None:
    server = ScriptedBayeux()
    caller = Caller()
    mended: list[int] = []

    async def before_handshake() -> None:
        mended.append(server.handshakes)

    app = web.Application()
    app.router.add_post("/cometd", server.handle)
    async with serving(app) as url, aiohttp.ClientSession() as session:
        client = BayeuxClient(
            session=session,
            settings=ClientSettings(url=str(url), channels=(CHANNEL,), allow_websocket=False),
            on_batch=caller.on_batch,
            on_subscribed=caller.on_subscribed,
            before_handshake=before_handshake,
        )
        running = asyncio.create_task(client.run())
        try:
            await server.connected(1)  # held by the server: nothing would end it soon
            client.rehandshake()
            await server.connected(2)
        finally:
            await client.close()
            server.released.set()
            await asyncio.wait_for(asyncio.gather(running, return_exceptions=True), WAIT)
    assert mended == [1]
    assert [s.client_id for s in caller.subscribed] == ["c1", "c2"]
