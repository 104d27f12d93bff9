"""The Bayeux client: handshake, subscribe and connect, again and again, until closed.

Owns the conversation's state (client id, transport, advice, backoff, the
state the caller sees) and what each failure leads to:
- "unknown client" (401/402, or advice "handshake"): handshake and subscribe
  again, at once the first time, with backoff when it repeats;
- an oversized answer: its messages are lost, so handshake again (the caller
  reconciles after every handshake);
- any other failure: retry with capped, jittered backoff; a broken WebSocket
  is dropped, and the next handshake may fall back to long-polling;
- advice reconnect "none": `ServerGoneError`, the only error `run()` raises.

It never speaks HTTP itself (the transports do), never reads a payload, and
never calls back with anything but whole batches, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from yarl import URL

from daemon.backoff import Backoff, BackoffPolicy
from daemon.cometd.advice import Advice
from daemon.cometd.errors import OversizedResponseError, TransportError, UnknownClientError
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
from daemon.cometd.transports.base import LONG_POLLING, WEBSOCKET, Transport
from daemon.cometd.transports.long_polling import LongPollingTransport
from daemon.cometd.transports.websocket import WebSocketTransport
from daemon.errors import CometdError, HandshakeError, ServerGoneError

log = structlog.get_logger(logger_name="daemon.cometd")


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


SubscribedHandler = Callable[[Subscribed], Awaitable[None]]
StateHandler = Callable[[ConnectionState], None]


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
    # `BayeuxClient._connect_loop`); 0 connects again at once.
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
        self._advice = Advice()
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
                    await self._subscribe_then_connect()
                except UnknownClientError as exc:
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

    async def _pause(self, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), seconds)

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
            try:
                await self._handshake_and_subscribe()
            except BaseException:
                # Never connect with a client that is not subscribed.
                await self._forget_client()
                raise
        assert self._transport is not None
        await self._connect_loop(self._transport)

    async def _rehandshake_after(self, exc: UnknownClientError) -> None:
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
        log.warning(
            "bayeux_retry",
            error=str(exc),
            attempt=self._backoff.attempt,
            delay_seconds=round(delay, 3),
        )
        if self._transport is not None and self._transport.name == WEBSOCKET:
            # A broken WebSocket is not reused; the next round handshakes
            # again and may fall back to long-polling.
            await self._forget_client()
        self._set_state(ConnectionState.RECONNECTING)
        await self._pause(delay)

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
        types = [WEBSOCKET, LONG_POLLING] if self._settings.allow_websocket else [LONG_POLLING]
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
        self._connects = 0
        offered = reply.get("supportedConnectionTypes") or []
        transport = self._transport = await self._choose_transport(offered)
        await self._hand_over(data)
        return client_id, transport

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

        None when `close()` came first: the connect is then cancelled.
        """
        request = asyncio.ensure_future(
            transport.exchange(
                [self._connect_message(transport)],
                timeout=self._advice.connect_timeout(self._settings.max_network_delay),
            )
        )
        try:
            if batch:  # `_hand_over`, inlined: this runs once per connect
                await self._on_batch(batch)
            closing = asyncio.ensure_future(self._closing.wait())
            try:
                await asyncio.wait({request, closing}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                closing.cancel()
            if not request.done():
                return None
            return request.result()
        finally:
            if not request.done():
                request.cancel()
                with contextlib.suppress(BaseException):
                    await request

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
