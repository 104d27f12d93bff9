"""A Bayeux (CometD) client on a caller's aiohttp session. No GWS knowledge.

Why not aiocometd: it cannot run on Python >= 3.10, cannot use the caller's
HTTP session (GWS authenticates CometD with the REST session's Basic auth and
JSESSIONID cookie) and does not say when it re-handshook, which is when the
daemon must reconcile. See the README, "Why not aiocometd".

What this module owns:
- the handshake / subscribe / connect cycle, with the server's advice
  (timeout, interval, reconnect none/retry/handshake) honoured;
- long-polling, and WebSocket when the server offers it and the caller allows it,
  behind one small `Transport` interface;
- re-handshake and resubscribe after "unknown client" (401/402) or a server
  restart, with capped, jittered backoff so that a restarted server never sees
  a handshake storm;
- handing each server response to the caller as ONE batch, in order.

It never interprets message payloads, and never blocks on what the caller does
with a batch beyond awaiting the callback (that await is the backpressure).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import aiohttp
import orjson
import structlog
from yarl import URL

from daemon.backoff import Backoff, BackoffPolicy
from daemon.errors import CometdError, HandshakeError, ServerGoneError

log = structlog.get_logger(logger_name="daemon.cometd")

LONG_POLLING = "long-polling"
WEBSOCKET = "websocket"

# Bayeux fields used below. Data messages are everything not on /meta/.
_META = "/meta/"
_GC_PAUSE_BYTES = 1024 * 1024


class Message(NamedTuple):
    """One data message delivered on a subscribed channel.

    (NamedTuples on the per-message path: they are created several times
    faster than frozen dataclasses.)
    """

    channel: str
    data: Any


class ConnectionState(enum.Enum):
    DISCONNECTED = "disconnected"
    HANDSHAKING = "handshaking"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Subscribed:
    """Told to the caller after every successful (re)handshake and subscription."""

    client_id: str
    transport: str
    handshakes: int  # successful handshakes so far, this one included
    channels: tuple[str, ...]

    @property
    def rehandshake(self) -> bool:
        return self.handshakes > 1


BatchHandler = Callable[[list[Message]], Awaitable[None]]
SubscribedHandler = Callable[[Subscribed], Awaitable[None]]
StateHandler = Callable[[ConnectionState], None]


class _UnknownClient(CometdError):
    """The server no longer knows our clientId: handshake again."""


class TransportError(CometdError):
    """The request failed below Bayeux (connection, HTTP status, bad body)."""


class OversizedResponseError(TransportError):
    """A response was larger than the configured bound; its messages are lost."""


def _split(replies: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Message]]:
    meta: list[dict[str, Any]] = []
    data: list[Message] = []
    for reply in replies:
        channel = reply.get("channel")
        if not isinstance(channel, str):
            continue
        if channel.startswith(_META):
            meta.append(reply)
        else:
            data.append(Message(channel, reply.get("data")))
    return meta, data


def _parse_body(body: bytes) -> list[dict[str, Any]]:
    # Parsing a large answer allocates millions of objects and no cycles; the
    # cyclic collector, triggered again and again meanwhile, tripled the time.
    pause_gc = len(body) > _GC_PAUSE_BYTES and gc.isenabled()
    if pause_gc:
        gc.disable()
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise TransportError(f"response is not JSON: {exc}") from None
    finally:
        if pause_gc:
            gc.enable()
    if isinstance(parsed, dict):
        parsed = [parsed]
    if not isinstance(parsed, list):
        raise TransportError("response is not a JSON array of messages")
    return [m for m in parsed if isinstance(m, dict)]


class Transport(ABC):
    """Carries Bayeux messages; returns meta replies and the data that came with them."""

    name: str

    @abstractmethod
    async def exchange(
        self, messages: list[dict[str, Any]], *, timeout: float
    ) -> tuple[list[dict[str, Any]], list[Message]]:
        """Send `messages`; return (meta replies for them, data messages received)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the transport holds."""


class LongPollingTransport(Transport):
    """One HTTP POST per exchange; the answer holds the replies and queued data."""

    name = LONG_POLLING

    def __init__(
        self, *, session: aiohttp.ClientSession, url: URL, max_response_bytes: int
    ) -> None:
        self._session = session
        self._url = url
        self._max = max_response_bytes

    async def exchange(
        self, messages: list[dict[str, Any]], *, timeout: float
    ) -> tuple[list[dict[str, Any]], list[Message]]:
        try:
            async with self._session.post(
                self._url,
                data=orjson.dumps(messages),
                headers={"Content-Type": "application/json;charset=UTF-8"},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                if response.status != 200:
                    # A Bayeux server says "unknown client" inside a 200; an HTTP
                    # 401/402/403 here means the HTTP session itself is gone.
                    if response.status in (401, 402, 403):
                        raise _UnknownClient(f"HTTP {response.status} from {self._url}")
                    raise TransportError(f"HTTP {response.status} from {self._url}")
                body = await _read_bounded(response, self._max)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(f"{type(exc).__name__} on {self._url}: {exc}") from None
        return _split(_parse_body(body))


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    length = response.content_length
    if length is not None and length > limit:
        raise OversizedResponseError(f"response of {length} bytes exceeds {limit}")
    if length is not None:
        return await response.read()
    buffer = bytearray()
    async for chunk in response.content.iter_any():
        buffer += chunk
        if len(buffer) > limit:
            raise OversizedResponseError(f"response exceeds {limit} bytes")
    return bytes(buffer)


class WebSocketTransport(Transport):
    """Bayeux over one WebSocket: replies are matched to requests by message id.

    Data can arrive at any time (faye pushes each message as it is published),
    so a reader task hands every frame's data to the batch handler as it comes.
    """

    name = WEBSOCKET

    def __init__(
        self,
        *,
        ws: aiohttp.ClientWebSocketResponse,
        on_batch: BatchHandler,
        max_frame_bytes: int,
    ) -> None:
        self._ws = ws
        self._on_batch = on_batch
        self._max = max_frame_bytes
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read_frames(), name="bayeux-ws-reader")
        self._failure: BaseException | None = None

    @classmethod
    async def open(
        cls,
        *,
        session: aiohttp.ClientSession,
        url: URL,
        on_batch: BatchHandler,
        max_frame_bytes: int,
        timeout: float,
    ) -> WebSocketTransport:
        ws_url = url.with_scheme("wss" if url.scheme == "https" else "ws")
        try:
            ws = await session.ws_connect(
                ws_url,
                max_msg_size=max_frame_bytes,
                timeout=aiohttp.ClientWSTimeout(ws_close=timeout),
                autoping=True,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(f"WebSocket to {ws_url} failed: {exc}") from None
        return cls(ws=ws, on_batch=on_batch, max_frame_bytes=max_frame_bytes)

    async def _read_frames(self) -> None:
        try:
            async for frame in self._ws:
                if frame.type is aiohttp.WSMsgType.TEXT:
                    meta, data = _split(_parse_body(frame.data.encode()))
                elif frame.type is aiohttp.WSMsgType.BINARY:
                    meta, data = _split(_parse_body(frame.data))
                else:
                    break
                if data:
                    await self._on_batch(data)
                for reply in meta:
                    waiter = self._waiting.pop(str(reply.get("id")), None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(reply)
            raise TransportError("WebSocket closed by the server")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to every waiter below
            self._failure = exc
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(
                        exc if isinstance(exc, CometdError) else TransportError(str(exc))
                    )
            self._waiting.clear()

    async def exchange(
        self, messages: list[dict[str, Any]], *, timeout: float
    ) -> tuple[list[dict[str, Any]], list[Message]]:
        if self._failure is not None or self._ws.closed:
            raise TransportError(f"WebSocket is closed: {self._failure}")
        loop = asyncio.get_running_loop()
        waiters = []
        for message in messages:
            waiter: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._waiting[str(message["id"])] = waiter
            waiters.append(waiter)
        try:
            await self._ws.send_bytes(orjson.dumps(messages))
            async with asyncio.timeout(timeout):
                replies = [await w for w in waiters]
        except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
            raise TransportError(f"WebSocket exchange failed: {exc!r}") from None
        finally:
            for message in messages:
                self._waiting.pop(str(message["id"]), None)
        # Data was already handed over by the reader, in arrival order.
        return replies, []

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._ws.close()


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Knobs of the Bayeux client; the defaults suit GWS and the CometD servers."""

    url: str
    channels: tuple[str, ...]
    allow_websocket: bool = True
    # How long past the server's advised long-poll timeout an answer may take.
    max_network_delay: float = 10.0
    # A server puts its whole queue into one answer (227,500 messages seen).
    max_response_bytes: int = 256 * 1024 * 1024
    # Under a steady stream, at most one connect per this many seconds (see
    # `_connect_loop`); 0 connects again at once.
    batch_window: float = 0.0
    # Short cap: recovery after a server restart should take well under a
    # second, and one client retrying twice a second, jittered, is no storm.
    backoff: BackoffPolicy = field(
        default_factory=lambda: BackoffPolicy(initial=0.1, maximum=0.5, floor=0.05)
    )


class BayeuxClient:
    """Subscribes to channels and delivers their messages in batches, forever.

    `run()` returns only after `close()` (or raises ServerGoneError when the
    server advises reconnect "none"). Every problem on the way is retried.
    """

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        settings: ClientSettings,
        on_batch: BatchHandler,
        on_subscribed: SubscribedHandler | None = None,
        on_state: StateHandler | None = None,
    ) -> None:
        self._session = session
        self._settings = settings
        self._url = URL(settings.url)
        self._on_batch = on_batch
        self._on_subscribed = on_subscribed
        self._on_state = on_state
        self._ids = itertools.count(1)
        self._backoff = Backoff(settings.backoff)
        self._unknown_in_a_row = 0
        self._client_id: str | None = None
        self._transport: Transport | None = None
        self._long_polling = LongPollingTransport(
            session=session, url=self._url, max_response_bytes=settings.max_response_bytes
        )
        self._advice: dict[str, Any] = {"timeout": 30000, "interval": 0, "reconnect": "retry"}
        self._state = ConnectionState.DISCONNECTED
        self._closing = asyncio.Event()
        self._handshakes = 0
        self._connects = 0

    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def client_id(self) -> str | None:
        return self._client_id

    @property
    def transport_name(self) -> str | None:
        return self._transport.name if self._transport else None

    @property
    def handshakes(self) -> int:
        return self._handshakes

    def _set_state(self, state: ConnectionState) -> None:
        if state is not self._state:
            self._state = state
            if self._on_state is not None:
                self._on_state(state)

    def _next_id(self) -> str:
        return str(next(self._ids))

    async def run(self) -> None:
        """Handshake, subscribe and connect until closed."""
        try:
            while not self._closing.is_set():
                try:
                    if self._client_id is None:
                        try:
                            await self._handshake_and_subscribe()
                        except BaseException:
                            # Never connect with a client that is not subscribed.
                            await self._forget_client()
                            raise
                    await self._connect_loop()
                except _UnknownClient as exc:
                    # The first "unknown client" since the last working connect
                    # (a server that forgot us, or one just back from a restart)
                    # follows the server's advice at once; repeated ones back off.
                    delay = self._advised_interval()
                    if self._unknown_in_a_row > 0:
                        delay = max(delay, self._backoff.next_delay())
                    self._unknown_in_a_row += 1
                    log.info("bayeux_rehandshake", reason=str(exc), delay_seconds=round(delay, 3))
                    await self._forget_client()
                    self._set_state(ConnectionState.RECONNECTING)
                    await self._pause(delay)
                except OversizedResponseError as exc:
                    # The answer's messages are gone; a fresh handshake makes the
                    # caller reconcile, which is what closes such a gap.
                    log.error("bayeux_response_oversized", error=str(exc))
                    await self._forget_client()
                    self._set_state(ConnectionState.RECONNECTING)
                    await self._pause(self._backoff.next_delay())
                except (TransportError, HandshakeError) as exc:
                    delay = self._backoff.next_delay()
                    log.warning(
                        "bayeux_retry",
                        error=str(exc),
                        attempt=self._backoff.attempt,
                        delay_seconds=round(delay, 3),
                    )
                    if self._transport is not None and self._transport.name == WEBSOCKET:
                        # A broken WebSocket is not reused; the next round
                        # handshakes again and may fall back to long-polling.
                        await self._forget_client()
                    self._set_state(ConnectionState.RECONNECTING)
                    await self._pause(delay)
        finally:
            await self._shutdown()

    async def close(self) -> None:
        """Stop `run()`: disconnect politely, then return."""
        self._closing.set()

    async def _pause(self, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), seconds)

    def _advised_interval(self) -> float:
        interval = self._advice.get("interval", 0)
        return float(interval) / 1000.0 if isinstance(interval, int | float) else 0.0

    def _connect_timeout(self) -> float:
        timeout = self._advice.get("timeout", 30000)
        seconds = float(timeout) / 1000.0 if isinstance(timeout, int | float) else 30.0
        return seconds + self._settings.max_network_delay

    def _take_advice(self, reply: dict[str, Any]) -> None:
        advice = reply.get("advice")
        if isinstance(advice, dict):
            self._advice.update(advice)

    async def _forget_client(self) -> None:
        self._client_id = None
        if self._transport is not None and self._transport is not self._long_polling:
            await self._transport.close()
        self._transport = None

    async def _handshake_and_subscribe(self) -> None:
        self._set_state(ConnectionState.HANDSHAKING)
        types = [WEBSOCKET, LONG_POLLING] if self._settings.allow_websocket else [LONG_POLLING]
        request = {
            "channel": "/meta/handshake",
            "version": "1.0",
            "minimumVersion": "1.0",
            "supportedConnectionTypes": types,
            "advice": {"timeout": 60000, "interval": 0},
            "id": self._next_id(),
        }
        # Handshake always over HTTP: every server offers long-polling, and the
        # answer tells whether WebSocket is worth trying.
        meta, data = await self._long_polling.exchange(
            [request], timeout=self._settings.max_network_delay
        )
        reply = _reply_for(meta, "/meta/handshake")
        self._take_advice(reply)
        if not reply.get("successful") or not isinstance(reply.get("clientId"), str):
            if self._advice.get("reconnect") == "none":
                raise ServerGoneError(f"handshake refused: {reply.get('error')}")
            raise HandshakeError(f"handshake refused: {reply.get('error', 'no reason given')}")
        self._client_id = str(reply["clientId"])
        self._connects = 0
        offered = reply.get("supportedConnectionTypes") or []
        self._transport = await self._choose_transport(offered)
        if data:
            await self._on_batch(data)

        channels = self._settings.channels
        requests: list[dict[str, Any]] = [
            {
                "channel": "/meta/subscribe",
                "clientId": self._client_id,
                "subscription": channel,
                "id": self._next_id(),
            }
            for channel in channels
        ]
        meta, data = await self._transport.exchange(
            requests, timeout=self._settings.max_network_delay
        )
        if data:
            await self._on_batch(data)
        replies = {str(m.get("id")): m for m in meta if m.get("channel") == "/meta/subscribe"}
        for subscribe in requests:
            # Matched by id: an "unknown client" reply need not name the subscription.
            answer = replies.get(str(subscribe["id"])) or next(
                (
                    m
                    for m in meta
                    if m.get("channel") == "/meta/subscribe"
                    and _subscription_matches(m.get("subscription"), subscribe["subscription"])
                ),
                None,
            )
            if answer is None or not answer.get("successful"):
                error = answer.get("error") if answer else "no answer"
                if _is_unknown_client(error):
                    raise _UnknownClient(str(error))
                raise HandshakeError(f"subscribe to {subscribe['subscription']} refused: {error}")
        self._handshakes += 1
        log.info(
            "bayeux_subscribed",
            transport=self._transport.name,
            channels=list(channels),
            handshakes=self._handshakes,
        )
        if self._on_subscribed is not None:
            await self._on_subscribed(
                Subscribed(
                    client_id=self._client_id,
                    transport=self._transport.name,
                    handshakes=self._handshakes,
                    channels=tuple(channels),
                )
            )

    async def _choose_transport(self, offered: Sequence[object]) -> Transport:
        if self._settings.allow_websocket and WEBSOCKET in offered:
            try:
                return await WebSocketTransport.open(
                    session=self._session,
                    url=self._url,
                    on_batch=self._on_batch,
                    max_frame_bytes=self._settings.max_response_bytes,
                    timeout=self._settings.max_network_delay,
                )
            except TransportError as exc:
                log.warning("bayeux_websocket_unavailable", error=str(exc))
        return self._long_polling

    def _connect_message(self) -> dict[str, Any]:
        assert self._client_id is not None
        assert self._transport is not None
        message: dict[str, Any] = {
            "channel": "/meta/connect",
            "clientId": self._client_id,
            "connectionType": self._transport.name,
            "id": self._next_id(),
        }
        if self._connects == 0:
            # Without this the server holds the first connect for its whole
            # long-poll timeout and start-up stalls (both Node servers do).
            message["advice"] = {"timeout": 0}
        self._connects += 1
        return message

    async def _connect_loop(self) -> None:
        """Connect again and again; each answer's data is one batch.

        On long-polling the next /meta/connect is sent before the previous
        batch is handed over, so the server fills it while we work.

        Under a steady stream (the server answered at once, with data) the
        next connect waits until `batch_window` after the previous one: a
        round trip, a transaction and a sink write then serve many messages
        instead of a few, for at most that much latency. A trickle is not
        delayed: its connects are held by the server.
        """
        transport = self._transport
        assert transport is not None
        batch: list[Message] = []
        window = self._settings.batch_window
        next_connect = 0.0
        while not self._closing.is_set():
            if next_connect:
                if batch:
                    await self._on_batch(batch)
                    batch = []
                await self._pause(next_connect - time.monotonic())
                next_connect = 0.0
            sent_at = time.monotonic()
            request = asyncio.ensure_future(
                transport.exchange([self._connect_message()], timeout=self._connect_timeout())
            )
            try:
                if batch:
                    await self._on_batch(batch)
                    batch = []
                closing = asyncio.ensure_future(self._closing.wait())
                try:
                    await asyncio.wait({request, closing}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    closing.cancel()
                if not request.done():
                    return
                meta, batch = request.result()
            finally:
                if not request.done():
                    request.cancel()
                    with contextlib.suppress(BaseException):
                        await request
            reply = _reply_for(meta, "/meta/connect")
            self._take_advice(reply)
            if not reply.get("successful"):
                if batch:
                    await self._on_batch(batch)
                    batch = []
                error = reply.get("error")
                reconnect = self._advice.get("reconnect")
                if reconnect == "none":
                    raise ServerGoneError(f"server advised reconnect none: {error}")
                if reconnect == "handshake" or _is_unknown_client(error):
                    raise _UnknownClient(str(error))
                raise TransportError(f"connect refused: {error}")
            if self._state is not ConnectionState.CONNECTED:
                self._set_state(ConnectionState.CONNECTED)
            self._backoff.reset()
            self._unknown_in_a_row = 0
            if self._advice.get("reconnect") == "none":
                if batch:
                    await self._on_batch(batch)
                raise ServerGoneError("server advised reconnect none")
            interval = self._advised_interval()
            if interval > 0:
                if batch:
                    await self._on_batch(batch)
                    batch = []
                await self._pause(interval)
            elif batch and window > 0 and time.monotonic() - sent_at < window:
                next_connect = sent_at + window
        if batch:
            await self._on_batch(batch)

    async def _shutdown(self) -> None:
        if self._client_id is not None and self._transport is not None:
            request = {
                "channel": "/meta/disconnect",
                "clientId": self._client_id,
                "id": self._next_id(),
            }
            with contextlib.suppress(CometdError):
                await self._transport.exchange([request], timeout=2.0)
        await self._forget_client()
        self._set_state(ConnectionState.CLOSED)


def _reply_for(meta: list[dict[str, Any]], channel: str) -> dict[str, Any]:
    for reply in meta:
        if reply.get("channel") == channel:
            return reply
    raise TransportError(f"no {channel} reply in the answer")


def _subscription_matches(subscription: object, channel: str) -> bool:
    if isinstance(subscription, list):
        return channel in subscription
    return subscription == channel


def _is_unknown_client(error: object) -> bool:
    # Bayeux errors are "code:args:message": CometD says "402::session_unknown"
    # or "402::Unknown client", faye "401:<clientId>:Unknown client".
    return isinstance(error, str) and error.split(":", 1)[0] in ("401", "402")
