"""Bayeux over one WebSocket, on the caller's aiohttp session.

Owns the socket and its reader task: replies are matched to requests by
message id, and data, which may come at any time (faye pushes each message as
it is published), goes to the batch handler frame by frame, in arrival order.
When the socket fails, every request still waiting gets the failure.

It never reconnects (a broken WebSocket is dropped by the client), and never
lets an aiohttp error escape. `WebSocketFallback` keeps the client's count of
WebSocket failures: after two, long-polling for the life of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import orjson
import structlog
from yarl import URL

from daemon.cometd.errors import TransportError
from daemon.cometd.messages import Answer, BatchHandler, parse_answer
from daemon.cometd.transports.base import WEBSOCKET, HeaderSource, Transport, no_headers
from daemon.errors import CometdError

log = structlog.get_logger(logger_name="daemon.cometd")

# WebSocket failures (a refused upgrade, a broken session) after which the
# client keeps to long-polling for the life of the process.
FAILURES_ALLOWED = 2


class WebSocketFallback:
    """Whether to try WebSocket: while allowed and it has not failed twice."""

    def __init__(self, *, allowed: bool) -> None:
        self._allowed = allowed
        self.failures = 0

    @property
    def abandoned(self) -> bool:
        return self.failures >= FAILURES_ALLOWED

    @property
    def wanted(self) -> bool:
        return self._allowed and not self.abandoned

    def failed(self, exc: Exception) -> None:
        self.failures += 1
        log.warning("bayeux_websocket_failed", error=str(exc), failures=self.failures)
        if self.failures == FAILURES_ALLOWED:
            # Said once: from here on it is long-polling only.
            log.warning(
                "bayeux_websocket_abandoned",
                detail="WebSocket failed twice: long-polling for the life of the process",
            )


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
    ) -> None:
        self._ws = ws
        self._on_batch = on_batch
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
        headers: HeaderSource = no_headers,
    ) -> WebSocketTransport:
        ws_url = url.with_scheme("wss" if url.scheme == "https" else "ws")
        try:
            ws = await session.ws_connect(
                ws_url,
                max_msg_size=max_frame_bytes,
                timeout=aiohttp.ClientWSTimeout(ws_close=timeout),
                autoping=True,
                # The upgrade is a request of the HTTP session like any other.
                headers=headers(),
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(f"WebSocket to {ws_url} failed: {exc}") from None
        return cls(ws=ws, on_batch=on_batch)

    async def _read_frames(self) -> None:
        try:
            async for frame in self._ws:
                body = _frame_body(frame)
                if body is None:
                    break
                meta, data = parse_answer(body)
                if data:
                    await self._on_batch(data)
                if meta:
                    self._answer_waiters(meta)
            raise TransportError("WebSocket closed by the server")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to every waiter
            self._fail_waiters(exc)

    def _answer_waiters(self, meta: list[dict[str, Any]]) -> None:
        for reply in meta:
            waiter = self._waiting.pop(str(reply.get("id")), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(reply)

    def _fail_waiters(self, exc: Exception) -> None:
        self._failure = exc
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(
                    exc if isinstance(exc, CometdError) else TransportError(str(exc))
                )
        self._waiting.clear()

    async def exchange(self, messages: list[dict[str, Any]], *, timeout: float) -> Answer:
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


def _frame_body(frame: aiohttp.WSMessage) -> bytes | None:
    """The bytes of a data frame; None for a frame that ends the stream (close, error)."""
    body: bytes
    if frame.type is aiohttp.WSMsgType.TEXT:
        body = frame.data.encode()
    elif frame.type is aiohttp.WSMsgType.BINARY:
        body = frame.data
    else:
        return None
    return body
