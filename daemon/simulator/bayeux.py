"""A small Bayeux 1.0 server (long-polling transport only) on aiohttp.web.

This module owns the Bayeux side of the simulator and knows nothing about GWS:
clients, their subscriptions, their queues of pending data messages and the
held `/meta/connect` requests. The embedding application decides how requests
are authenticated; it passes an opaque *session key* with each request, and a
client only answers to requests carrying the key it handshook with (a request
from another session gets `402::Unknown client`, as a cookie-bound CometD server
does). It may also give each client an opaque *tag* at its handshake (whose
client it is); a publish with a tag reaches the subscribers with that tag only,
and a tagged client's own publish reaches its own tag only.

Behaviour worth knowing:

* `/meta/connect` is answered at once when the request carries
  `advice.timeout == 0` or messages are queued; otherwise it is held up to the
  advised timeout and a publish wakes it. The answer holds the whole queue, then
  the connect reply, uncapped, as CometD and faye servers do.
* Only one connect is held per client: a second one makes the first return at
  once *without* messages, so that a connect the client has given up on cannot
  swallow them.
* Data messages are serialised once, at publish time; a batch answer is one
  `b",".join` of ready bytes, which keeps 200k-message answers cheap.
* A client that has neither a held connect nor sent anything for
  `max_interval_ms` is swept (lazily, on the next request or publish).
* Channels support the Bayeux wildcards `/a/*` and `/a/**` in subscriptions.
* Clients are indexed by session key and by tag, so dropping a session's clients
  or publishing to one tag costs what those clients number, not what all do
  (1,000 tags with a parked long-poll each is the scale it is built for).
* It counts successful handshakes, with the most within one wall-clock second.
"""

from __future__ import annotations

import asyncio
import enum
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import orjson
from aiohttp import web

from daemon.simulator.counters import PeakCounter

__all__ = ["BayeuxServer", "IntSource", "match_patterns"]

#: A setting read on every use, so that the embedding app can change it live.
IntSource = int | Callable[[], int]

_JSON = "application/json"
# Sweeping walks every client; doing it at most this often keeps a busy
# server's per-request cost flat while expiry stays accurate to well under
# any sensible max_interval.
_SWEEP_EVERY_SECONDS = 0.25


def _read(source: IntSource) -> int:
    return source() if callable(source) else source


class _Wake(enum.Enum):
    """Why a held /meta/connect was woken up."""

    MESSAGES = "messages"
    SUPERSEDED = "superseded"
    REMOVED = "removed"
    DISCONNECTED = "disconnected"
    CLOSING = "closing"


@dataclass(eq=False, slots=True)
class _Client:
    client_id: str
    session: str | None
    last_seen: float
    tag: str | None = None
    subscriptions: set[str] = field(default_factory=set)
    queue: list[bytes] = field(default_factory=list)
    held: asyncio.Future[_Wake] | None = None
    removed: _Wake | None = None

    def wake(self, reason: _Wake) -> None:
        if self.held is not None and not self.held.done():
            self.held.set_result(reason)


def match_patterns(channel: str) -> list[str]:
    """Every subscription pattern that matches `channel`, the channel itself first.

    `/a/b/c` is matched by `/a/b/c`, `/a/b/*`, `/a/b/**`, `/a/**` and `/**`.
    """
    segments = channel.split("/")[1:]
    patterns = [channel]
    if not segments:
        return patterns
    parent = "/" + "/".join(segments[:-1]) if len(segments) > 1 else ""
    patterns.append(parent + "/*")
    for depth in range(len(segments) - 1, -1, -1):
        prefix = "/" + "/".join(segments[:depth]) if depth else ""
        patterns.append(prefix + "/**")
    return patterns


def _valid_channel(channel: object) -> bool:
    if not isinstance(channel, str) or not channel.startswith("/"):
        return False
    *parents, last = channel[1:].split("/")
    if not last or any(not s or "*" in s for s in parents):
        return False
    # A wildcard is only legal as the whole last segment.
    return "*" not in last or last in ("*", "**")


class BayeuxServer:
    """Bayeux clients, subscriptions and queues, served over HTTP long-polling."""

    def __init__(
        self,
        *,
        long_poll_timeout_ms: IntSource = 25_000,
        max_interval_ms: IntSource = 10_000,
        session_of: Callable[[web.Request], str | None] | None = None,
        tag_of: Callable[[web.Request], str | None] | None = None,
        connection_types: Callable[[], list[str]] = lambda: ["long-polling"],
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """`connection_types`: what a handshake reply offers (read at each handshake;
        only long-polling is served, an embedding app may answer the WebSocket upgrade).
        `tag_of`: the tag of a client handshaking with this request (None: untagged)."""
        self._clock = clock
        self._connection_types = connection_types
        self._timeout_ms = long_poll_timeout_ms
        self._max_interval_ms = max_interval_ms
        self._session_of = session_of or (lambda _request: None)
        self._tag_of = tag_of or (lambda _request: None)
        self._clients: dict[str, _Client] = {}
        self._subscribers: dict[str, set[_Client]] = {}
        self._by_session: dict[str, set[_Client]] = {}
        self._by_tag: dict[str, set[_Client]] = {}
        # tag -> how many of its clients are subscribed to at least one channel
        self._subscribed_tags: dict[str, int] = {}
        self._next_message_id = 0
        self._last_sweep = 0.0
        self._closing = False
        self.messages_published = 0
        self.handshakes = PeakCounter(clock=wall_clock)

    # -- embedding ---------------------------------------------------------

    def add_routes(self, app: web.Application, path: str) -> None:
        """Serve Bayeux at `path`, and under it (CometD clients append /connect etc.)."""
        path = path.rstrip("/")
        app.router.add_post(path, self.handle)
        app.router.add_post(path + "/{tail:.*}", self.handle)
        app.on_startup.append(self._on_startup)
        # Held connects must be answered before the runner waits for its
        # handlers to finish, or a stop would take a whole long-poll timeout.
        app.on_shutdown.append(self._on_shutdown)

    async def _on_startup(self, _app: web.Application) -> None:
        self.reopen()

    async def _on_shutdown(self, _app: web.Application) -> None:
        self.close()

    async def handle(self, request: web.Request) -> web.Response:
        """The aiohttp handler: one Bayeux request, one JSON array answer."""
        try:
            decoded = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _json_response([_error_reply({}, "/meta/unknown", "400::invalid json")], 400)
        messages: list[Any] = decoded if isinstance(decoded, list) else [decoded]
        session = self._session_of(request)
        self._maybe_sweep()

        replies: list[bytes] = []
        data: list[bytes] = []
        for message in messages:
            replies.extend(await self._answer(message, session, request, data))
        data.extend(replies)
        return web.Response(body=b"[" + b",".join(data) + b"]", content_type=_JSON)

    async def _answer(
        self, message: object, session: str | None, request: web.Request, data: list[bytes]
    ) -> list[bytes]:
        """The replies to one message of a request; a connect adds its queue to `data`."""
        if not isinstance(message, dict):
            return [_dumps(_error_reply({}, "/meta/unknown", "400::invalid message"))]
        channel = message.get("channel")
        if channel == "/meta/handshake":
            return [self._handshake(message, session, self._tag_of(request))]
        if channel == "/meta/connect":
            queued, reply = await self._connect(message, session, request)
            data.extend(queued)
            return [reply]
        if channel == "/meta/subscribe":
            return self._subscribe(message, session, subscribe=True)
        if channel == "/meta/unsubscribe":
            return self._subscribe(message, session, subscribe=False)
        if channel == "/meta/disconnect":
            return [self._disconnect(message, session)]
        return [self._client_publish(message, session)]

    # -- publishing and client management -----------------------------------

    def publish(self, channel: str, data_items: Iterable[object], *, tag: str | None = None) -> int:
        """Queue each payload for every subscriber of `channel` (with `tag`: for those of
        its subscribers that carry the tag); returns how many payloads."""
        dumps = orjson.dumps
        return self.publish_json(channel, [dumps(item) for item in data_items], tag=tag)

    def publish_json(
        self, channel: str, data_json: Iterable[bytes], *, tag: str | None = None
    ) -> int:
        """Like `publish`, with each payload already serialised as a JSON value.

        Each data message is built once, by formatting bytes rather than by
        serialising an envelope dict (several times faster for big bursts), and
        the same bytes object is shared by all the queues.
        """
        self._maybe_sweep()
        targets = self._targets(channel, tag)
        quoted = orjson.dumps(channel).replace(b"%", b"%%")
        envelope = b'{"channel":' + quoted + b',"data":%b,"id":"%d"}'
        first = self._next_message_id + 1
        serialised = [envelope % pair for pair in zip(data_json, count(first), strict=False)]
        self._next_message_id += len(serialised)
        self.messages_published += len(serialised)
        if serialised:
            for client in targets:
                client.queue.extend(serialised)
                client.wake(_Wake.MESSAGES)
        return len(serialised)

    def subscriber_count(self, channel: str, *, tag: str | None = None) -> int:
        """How many clients would receive a message published on `channel` (with `tag`) now."""
        self._maybe_sweep()
        return len(self._targets(channel, tag))

    def subscribed_tags(self) -> list[str]:
        """The tags with at least one client subscribed to at least one channel."""
        return list(self._subscribed_tags)

    def subscribed_tag_count(self) -> int:
        """How many tags `subscribed_tags()` would list."""
        return len(self._subscribed_tags)

    def client_ids(self) -> list[str]:
        return list(self._clients)

    def held_connects(self) -> int:
        """How many /meta/connect requests are being held right now."""
        return sum(1 for c in self._clients.values() if c.held is not None)

    def queued(self, client_id: str) -> int:
        """How many data messages wait for `client_id` (0 for an unknown client)."""
        client = self._clients.get(client_id)
        return len(client.queue) if client is not None else 0

    def drop_session(self, session: str) -> int:
        """Forget every client of one session (its held connects get 402); returns how many."""
        doomed = list(self._by_session.get(session, ()))
        for client in doomed:
            self._remove(client, _Wake.REMOVED)
        return len(doomed)

    def drop_all(self) -> int:
        """Forget every client (their held connects get 402); returns how many."""
        doomed = list(self._clients.values())
        for client in doomed:
            self._remove(client, _Wake.REMOVED)
        return len(doomed)

    def reopen(self) -> None:
        """Hold connects again after `close()` (the embedding server restarted)."""
        self._closing = False

    def close(self) -> None:
        """Answer every held connect now and from now on never hold one."""
        self._closing = True
        for client in self._clients.values():
            client.wake(_Wake.CLOSING)

    # -- meta channels -------------------------------------------------------

    def _handshake(self, message: dict[str, Any], session: str | None, tag: str | None) -> bytes:
        client = _Client(
            client_id=secrets.token_urlsafe(18), session=session, last_seen=self._clock(), tag=tag
        )
        self._clients[client.client_id] = client
        if session is not None:
            self._by_session.setdefault(session, set()).add(client)
        if tag is not None:
            self._by_tag.setdefault(tag, set()).add(client)
        self.handshakes.add()
        reply: dict[str, Any] = {
            "channel": "/meta/handshake",
            "successful": True,
            "clientId": client.client_id,
            "version": "1.0",
            "minimumVersion": "1.0",
            "supportedConnectionTypes": self._connection_types(),
            "advice": self._advice(),
        }
        return _dumps(_with_id(reply, message))

    async def _connect(
        self, message: dict[str, Any], session: str | None, request: web.Request
    ) -> tuple[list[bytes], bytes]:
        client = self._client_for(message, session)
        if client is None:
            return [], _dumps(_unknown_client(message, "/meta/connect"))
        client.last_seen = self._clock()
        # A newer connect replaces a held one: the old answer goes out empty.
        client.wake(_Wake.SUPERSEDED)

        reason = await self._hold(client, self._hold_seconds(message))
        if reason is _Wake.REMOVED or client.removed is _Wake.REMOVED:
            return [], _dumps(_unknown_client(message, "/meta/connect"))
        reply: dict[str, Any] = {
            "channel": "/meta/connect",
            "successful": True,
            "clientId": client.client_id,
        }
        if reason is _Wake.DISCONNECTED or client.removed is _Wake.DISCONNECTED:
            reply["advice"] = {"reconnect": "none", "interval": 0}
            return [], _dumps(_with_id(reply, message))
        reply["advice"] = self._advice()
        queued: list[bytes] = []
        if reason is not _Wake.SUPERSEDED and not _peer_gone(request):
            queued, client.queue = client.queue, []
        return queued, _dumps(_with_id(reply, message))

    async def _hold(self, client: _Client, hold: float) -> _Wake | None:
        """Hold a connect with nothing queued for up to `hold` s; why it woke (None: time)."""
        if hold <= 0 or client.queue or self._closing:
            return None
        future: asyncio.Future[_Wake] = asyncio.get_running_loop().create_future()
        client.held = future
        try:
            done, _ = await asyncio.wait({future}, timeout=hold)
            return future.result() if done else None
        finally:
            if client.held is future:
                client.held = None
            if not future.done():
                future.cancel()
            client.last_seen = self._clock()

    def _subscribe(
        self, message: dict[str, Any], session: str | None, *, subscribe: bool
    ) -> list[bytes]:
        meta = "/meta/subscribe" if subscribe else "/meta/unsubscribe"
        client = self._client_for(message, session)
        if client is None:
            return [_dumps(_unknown_client(message, meta))]
        client.last_seen = self._clock()
        raw = message.get("subscription")
        channels: list[object] = list(raw) if isinstance(raw, list) else [raw]
        replies: list[bytes] = []
        for channel in channels:
            reply: dict[str, Any] = {
                "channel": meta,
                "clientId": client.client_id,
                "subscription": channel,
            }
            if not _valid_channel(channel):
                reply |= {"successful": False, "error": f"400:{channel}:invalid channel"}
            elif isinstance(channel, str) and channel.startswith("/meta/"):
                reply |= {"successful": False, "error": "403::forbidden"}
            else:
                assert isinstance(channel, str)
                reply["successful"] = True
                was_subscribed = bool(client.subscriptions)
                if subscribe:
                    client.subscriptions.add(channel)
                    self._subscribers.setdefault(channel, set()).add(client)
                else:
                    client.subscriptions.discard(channel)
                    self._unindex(client, channel)
                if was_subscribed != bool(client.subscriptions):
                    self._count_subscribed(client, 1 if subscribe else -1)
            replies.append(_dumps(_with_id(reply, message)))
        return replies

    def _disconnect(self, message: dict[str, Any], session: str | None) -> bytes:
        client = self._client_for(message, session)
        if client is None:
            return _dumps(_unknown_client(message, "/meta/disconnect"))
        self._remove(client, _Wake.DISCONNECTED)
        reply = {"channel": "/meta/disconnect", "successful": True, "clientId": client.client_id}
        return _dumps(_with_id(reply, message))

    def _client_publish(self, message: dict[str, Any], session: str | None) -> bytes:
        channel = message.get("channel")
        if not isinstance(channel, str) or not _valid_channel(channel) or "*" in channel:
            return _dumps(_error_reply(message, str(channel), "400::invalid channel"))
        if channel.startswith("/meta/"):
            return _dumps(_error_reply(message, channel, "403::forbidden"))
        client = self._client_for(message, session)
        if client is None:
            return _dumps(_unknown_client(message, channel))
        client.last_seen = self._clock()
        # /service/ channels are for client-to-server messages: nobody else gets them.
        if not channel.startswith("/service/"):
            self.publish(channel, [message.get("data")], tag=client.tag)
        return _dumps(_with_id({"channel": channel, "successful": True}, message))

    # -- internals -----------------------------------------------------------

    def _advice(self) -> dict[str, Any]:
        return {"reconnect": "retry", "interval": 0, "timeout": _read(self._timeout_ms)}

    def _hold_seconds(self, message: dict[str, Any]) -> float:
        server_ms = _read(self._timeout_ms)
        advice = message.get("advice")
        if isinstance(advice, dict):
            asked = advice.get("timeout")
            # A client may ask for less than the server's timeout (0 = answer now),
            # never for more.
            if isinstance(asked, int | float) and not isinstance(asked, bool) and asked >= 0:
                server_ms = min(server_ms, int(asked))
        return max(0, server_ms) / 1000.0

    def _client_for(self, message: dict[str, Any], session: str | None) -> _Client | None:
        client_id = message.get("clientId")
        if not isinstance(client_id, str):
            return None
        client = self._clients.get(client_id)
        if client is None or client.session != session:
            return None
        if client.held is None and self._expired(client, self._clock()):
            self._remove(client, _Wake.REMOVED)
            return None
        return client

    def _targets(self, channel: str, tag: str | None = None) -> set[_Client]:
        patterns = match_patterns(channel)
        if tag is not None:
            tagged = self._by_tag.get(tag, ())
            return {c for c in tagged if not c.subscriptions.isdisjoint(patterns)}
        targets: set[_Client] = set()
        for pattern in patterns:
            subscribers = self._subscribers.get(pattern)
            if subscribers:
                targets |= subscribers
        return targets

    def _expired(self, client: _Client, now: float) -> bool:
        return now - client.last_seen > _read(self._max_interval_ms) / 1000.0

    def _maybe_sweep(self) -> None:
        now = self._clock()
        if now - self._last_sweep < _SWEEP_EVERY_SECONDS:
            return
        self._last_sweep = now
        doomed = [c for c in self._clients.values() if c.held is None and self._expired(c, now)]
        for client in doomed:
            self._remove(client, _Wake.REMOVED)

    def _remove(self, client: _Client, reason: _Wake) -> None:
        self._clients.pop(client.client_id, None)
        _discard(self._by_session, client.session, client)
        _discard(self._by_tag, client.tag, client)
        if client.subscriptions:
            self._count_subscribed(client, -1)
        for channel in client.subscriptions:
            self._unindex(client, channel)
        client.subscriptions.clear()
        client.queue.clear()
        client.removed = reason
        client.wake(reason)

    def _unindex(self, client: _Client, channel: str) -> None:
        _discard(self._subscribers, channel, client)

    def _count_subscribed(self, client: _Client, delta: int) -> None:
        """A client of `client.tag` became subscribed (+1) or no longer is (-1)."""
        if client.tag is None:
            return
        left = self._subscribed_tags.get(client.tag, 0) + delta
        if left > 0:
            self._subscribed_tags[client.tag] = left
        else:
            self._subscribed_tags.pop(client.tag, None)


def _discard(index: dict[str, set[_Client]], key: str | None, client: _Client) -> None:
    """Take `client` out of `index[key]`, and the key out when its set empties."""
    if key is None:
        return
    clients = index.get(key)
    if clients is not None:
        clients.discard(client)
        if not clients:
            del index[key]


def _peer_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _with_id(reply: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
    if "id" in message:
        reply["id"] = message["id"]
    return reply


def _unknown_client(message: dict[str, Any], channel: str) -> dict[str, Any]:
    reply: dict[str, Any] = {
        "channel": channel,
        "successful": False,
        "error": "402::Unknown client",
        "advice": {"reconnect": "handshake", "interval": 0},
    }
    return _with_id(reply, message)


def _error_reply(message: dict[str, Any], channel: str, error: str) -> dict[str, Any]:
    return _with_id({"channel": channel, "successful": False, "error": error}, message)


def _dumps(obj: object) -> bytes:
    return orjson.dumps(obj)


def _json_response(objs: Sequence[object], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(list(objs)), status=status, content_type=_JSON)
