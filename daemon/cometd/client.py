"""The Bayeux client: handshake, subscribe and connect, again and again, until closed.

Owns the conversation's state (client id, transport, advice, backoff, the
state the caller sees) and what each failure leads to:
- "unknown client" (401/402 in a reply, or advice "handshake"), or an HTTP
  401/403 (the HTTP session refused): handshake and subscribe again, at once
  the first time, with backoff when it repeats;
- an oversized answer: its messages are lost, so handshake again (the caller
  reconciles after every handshake);
- any other failure: retry with capped, jittered backoff; a broken WebSocket
  is dropped, and after two WebSocket failures (upgrade or session) the
  client keeps to long-polling for good;
- advice reconnect "none": `ServerGoneError`, the only error `run()` raises.

Before every handshake but the very first, the caller's `before_handshake`
runs (a GWS client makes sure its HTTP session is alive there: a handshake
on a dead session never succeeds); before every retry after a transport
failure, its `before_retry` (many clients of one process share a pace
there). Every request carries the caller's `headers` (a CSRF token), the
WebSocket upgrade included.

It never speaks HTTP itself (the transports do), never reads a payload, and
never calls back with anything but whole batches, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
import structlog
from yarl import URL

from daemon.backoff import Backoff
from daemon.cometd.advice import Advice
from daemon.cometd.errors import (
    OversizedResponseError,
    SessionRefusedError,
    TransportError,
    UnknownClientError,
)
from daemon.cometd.interface import (
    BeforeHandshake,
    ClientSettings,
    ConnectionState,
    StateHandler,
    Subscribed,
    SubscribedHandler,
)
from daemon.cometd.messages import Answer, BatchHandler, Message
from daemon.cometd.meta import (
    CONNECT,
    HANDSHAKE,
    connect_refusal,
    connect_request,
    disconnect_request,
    handshake_refusal,
    handshake_request,
    reply_for,
    subscribe_refusal,
    subscribe_request,
)
from daemon.cometd.transports.base import (
    LONG_POLLING,
    WEBSOCKET,
    HeaderSource,
    Transport,
    no_headers,
)
from daemon.cometd.transports.long_polling import LongPollingTransport
from daemon.cometd.transports.websocket import WebSocketFallback, WebSocketTransport
from daemon.cometd.waiting import done_unless, pause
from daemon.errors import CometdError, HandshakeError, ServerGoneError

log = structlog.get_logger(logger_name="daemon.cometd")


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
        headers: HeaderSource = no_headers,
        before_handshake: BeforeHandshake | None = None,
        before_retry: BeforeHandshake | None = None,
    ) -> None:
        self._session = session
        self._settings = settings
        self._url = URL(settings.url)
        self._on_batch = on_batch
        self._on_subscribed = on_subscribed
        self._on_state = on_state
        self._headers = headers
        self._before_handshake = before_handshake
        self._before_retry = before_retry
        self._ids = itertools.count(1)
        self._backoff = Backoff(settings.backoff)
        self._unknown_in_a_row = 0
        self._client_id: str | None = None
        self._transport: Transport | None = None
        self._long_polling = LongPollingTransport(
            session=session,
            url=self._url,
            max_response_bytes=settings.max_response_bytes,
            headers=headers,
        )
        self._advice = Advice()
        self._state = ConnectionState.DISCONNECTED
        self._closing = asyncio.Event()
        self._interrupted = asyncio.Event()  # close(), or rehandshake()
        self._handshakes = 0
        self._attempts = 0  # handshakes tried, successful or not
        self._connects = 0
        self._websocket = WebSocketFallback(allowed=settings.allow_websocket)
        self._handshake_reply: dict[str, Any] = {}

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

    @property
    def handshake_reply(self) -> dict[str, Any]:
        """The last successful handshake reply, as the server sent it ({} before one)."""
        return dict(self._handshake_reply)

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
                    await self._subscribe_then_connect()
                except (UnknownClientError, SessionRefusedError) as exc:
                    await self._rehandshake_after(exc)
                except OversizedResponseError as exc:
                    await self._rehandshake_after_lost_answer(exc)
                except (TransportError, HandshakeError) as exc:
                    await self._retry_after(exc)
        finally:
            await self._shutdown()

    async def close(self) -> None:
        """Stop `run()`: disconnect politely, then return."""
        self._closing.set()
        self._interrupted.set()

    def rehandshake(self) -> None:
        """Drop the connection and handshake again, `before_handshake` first.

        For a caller that learned its HTTP session is in trouble (a REST call
        answered 401) before the long-poll did.
        """
        self._interrupted.set()

    async def _pause(self, seconds: float) -> None:
        await pause(seconds, self._closing)

    async def _hand_over(self, batch: list[Message]) -> None:
        if batch:
            await self._on_batch(batch)

    async def _forget_client(self) -> None:
        self._client_id = None
        if self._transport is not None and self._transport is not self._long_polling:
            await self._transport.close()
        self._transport = None

    # -- run(): one round, and what each failure of it leads to ------------------

    async def _subscribe_then_connect(self) -> None:
        """Handshake and subscribe unless subscribed already; then connect until it fails."""
        if self._client_id is None:
            if not await self._ready_to_handshake():
                return  # closing
            try:
                await self._handshake_and_subscribe()
            except BaseException:
                # Never connect with a client that is not subscribed.
                await self._forget_client()
                raise
        assert self._transport is not None
        await self._connect_loop(self._transport)

    async def _ready_to_handshake(self) -> bool:
        """Run the caller's `before_handshake` (not before the very first); False if closing.

        `close()` does not wait for it: it may wait long (a GWS client whose
        credentials were refused).
        """
        self._attempts += 1
        if not self._closing.is_set():
            self._interrupted.clear()  # a handshake is coming anyway
        if self._attempts == 1 or self._before_handshake is None:
            return True
        self._set_state(ConnectionState.RECONNECTING)
        preparing = asyncio.ensure_future(self._before_handshake())
        if not await done_unless(preparing, self._closing):
            return False
        if preparing.exception() is not None:
            raise TransportError(f"before handshake: {preparing.exception()!r}")
        return True

    async def _rehandshake_after(self, exc: UnknownClientError | SessionRefusedError) -> None:
        # The first "unknown client" since the last working connect (a server
        # that forgot us, or one just back from a restart) follows the
        # server's advice at once; repeated ones back off.
        delay = self._advice.interval()
        if self._unknown_in_a_row > 0:
            delay = max(delay, self._backoff.next_delay())
        self._unknown_in_a_row += 1
        log.info("bayeux_rehandshake", reason=str(exc), delay_seconds=round(delay, 3))
        await self._forget_client()
        self._set_state(ConnectionState.RECONNECTING)
        await self._pause(delay)

    async def _rehandshake_after_lost_answer(self, exc: OversizedResponseError) -> None:
        # The answer's messages are gone; a fresh handshake makes the caller
        # reconcile, which is what closes such a gap.
        log.error("bayeux_response_oversized", error=str(exc))
        await self._forget_client()
        self._set_state(ConnectionState.RECONNECTING)
        await self._pause(self._backoff.next_delay())

    async def _retry_after(self, exc: TransportError | HandshakeError) -> None:
        delay = self._backoff.next_delay()
        attempt = self._backoff.attempt
        # Attempts 1, 2, 4, 8, ... at warning: a server down for long is said so
        # without a line per retry (the rest at debug).
        logger = log.warning if attempt & (attempt - 1) == 0 else log.debug
        logger("bayeux_retry", error=str(exc), attempt=attempt, delay_seconds=round(delay, 3))
        if self._transport is not None and self._transport.name == WEBSOCKET:
            # A broken WebSocket is not reused; the next round handshakes
            # again and may fall back to long-polling.
            self._websocket.failed(exc)
            await self._forget_client()
        self._set_state(ConnectionState.RECONNECTING)
        await self._pause(delay)
        if self._before_retry is not None and not self._closing.is_set():
            await done_unless(asyncio.ensure_future(self._before_retry()), self._closing)

    # -- handshake and subscribe --------------------------------------------------

    async def _handshake_and_subscribe(self) -> None:
        self._set_state(ConnectionState.HANDSHAKING)
        client_id, transport = await self._handshake()
        await self._subscribe(client_id, transport)
        self._handshakes += 1
        channels = self._settings.channels
        log.info(
            "bayeux_subscribed",
            transport=transport.name,
            channels=list(channels),
            handshakes=self._handshakes,
        )
        if self._on_subscribed is not None:
            await self._on_subscribed(
                Subscribed(
                    client_id=client_id,
                    transport=transport.name,
                    handshakes=self._handshakes,
                    channels=tuple(channels),
                )
            )

    async def _handshake(self) -> tuple[str, Transport]:
        """Get a client id; open the transport the server offers and the settings allow."""
        types = [WEBSOCKET, LONG_POLLING] if self._websocket.wanted else [LONG_POLLING]
        request = handshake_request(self._next_id(), types)
        # Handshake always over HTTP: every server offers long-polling, and the
        # answer tells whether WebSocket is worth trying.
        meta, data = await self._long_polling.exchange(
            [request], timeout=self._settings.max_network_delay
        )
        reply = reply_for(meta, HANDSHAKE)
        self._advice.take(reply)
        refusal = handshake_refusal(reply, self._advice.reconnect)
        if refusal is not None:
            raise refusal
        client_id = self._client_id = str(reply["clientId"])
        self._handshake_reply = reply
        self._connects = 0
        offered = reply.get("supportedConnectionTypes") or []
        transport = self._transport = await self._choose_transport(offered)
        await self._hand_over(data)
        return client_id, transport

    async def _choose_transport(self, offered: Sequence[object]) -> Transport:
        if self._websocket.wanted and WEBSOCKET in offered:
            try:
                return await WebSocketTransport.open(
                    session=self._session,
                    url=self._url,
                    on_batch=self._on_batch,
                    max_frame_bytes=self._settings.max_response_bytes,
                    timeout=self._settings.max_network_delay,
                    headers=self._headers,
                )
            except TransportError as exc:
                self._websocket.failed(exc)
        return self._long_polling

    async def _subscribe(self, client_id: str, transport: Transport) -> None:
        requests = [
            subscribe_request(self._next_id(), client_id, channel)
            for channel in self._settings.channels
        ]
        meta, data = await transport.exchange(requests, timeout=self._settings.max_network_delay)
        await self._hand_over(data)
        refusal = subscribe_refusal(requests, meta)
        if refusal is not None:
            raise refusal

    # -- connect ------------------------------------------------------------------

    async def _connect_loop(self, transport: Transport) -> None:
        """Connect again and again; each answer's data is one batch.

        On long-polling the next /meta/connect is sent before the previous
        batch is handed over, so the server fills it while we work.

        Under a steady stream (the server answered at once, with data) the
        next connect waits until `batch_window` after the previous one: a
        round trip, a transaction and a sink write then serve many messages
        instead of a few, for at most that much latency. A trickle is not
        delayed: its connects are held by the server.
        """
        window = self._settings.batch_window
        batch: list[Message] = []
        next_connect = 0.0
        while not self._closing.is_set():
            if next_connect:
                await self._hand_over(batch)
                batch = []
                await self._pause(next_connect - time.monotonic())
                next_connect = 0.0
            sent_at = time.monotonic()
            answer = await self._connect_handing_over(transport, batch)
            if answer is None:
                return  # closing; `batch` went over while the connect was out
            meta, batch = answer
            await self._follow_connect_reply(meta, batch)
            interval = self._advice.interval()
            if interval > 0:
                await self._hand_over(batch)
                batch = []
                await self._pause(interval)
            elif batch and window > 0 and time.monotonic() - sent_at < window:
                next_connect = sent_at + window
        await self._hand_over(batch)

    async def _connect_handing_over(
        self, transport: Transport, batch: list[Message]
    ) -> Answer | None:
        """Send a /meta/connect, hand `batch` over while it is out, and return its answer.

        None when `close()` came first: the connect is then cancelled (after
        `rehandshake()` too, which raises SessionRefusedError).
        """
        request = asyncio.ensure_future(
            transport.exchange(
                [self._connect_message(transport)],
                timeout=self._advice.connect_timeout(self._settings.max_network_delay),
            )
        )
        try:
            await self._hand_over(batch)
        except BaseException:
            request.cancel()
            raise
        if not await done_unless(request, self._interrupted):
            if self._closing.is_set():
                return None
            raise SessionRefusedError("the caller asked for a new handshake")
        return request.result()

    def _connect_message(self, transport: Transport) -> dict[str, Any]:
        assert self._client_id is not None
        message = connect_request(
            self._next_id(), self._client_id, transport.name, first=self._connects == 0
        )
        self._connects += 1
        return message

    async def _follow_connect_reply(self, meta: list[dict[str, Any]], batch: list[Message]) -> None:
        """Take the connect reply's advice; raise if it says to stop or to start over.

        `batch` came before that news, so it is handed over before the raise.
        """
        reply = reply_for(meta, CONNECT)
        self._advice.take(reply)
        if not reply.get("successful"):
            await self._hand_over(batch)
            raise connect_refusal(reply, self._advice.reconnect)
        if self._state is not ConnectionState.CONNECTED:
            self._set_state(ConnectionState.CONNECTED)
        self._backoff.reset()
        self._unknown_in_a_row = 0
        if self._advice.reconnect == "none":
            await self._hand_over(batch)
            raise ServerGoneError("server advised reconnect none")

    async def _shutdown(self) -> None:
        if self._client_id is not None and self._transport is not None:
            request = disconnect_request(self._next_id(), self._client_id)
            with contextlib.suppress(CometdError):
                await self._transport.exchange([request], timeout=2.0)
        await self._forget_client()
        self._set_state(ConnectionState.CLOSED)
