"""The local API's listening socket: how many connections, and how long a request head may take.

Owns connections, not requests (those are `daemon.api`'s):

- at most `http.max_connections` at once, fewer when RLIMIT_NOFILE leaves less
  room beside the rest of the daemon (`connection_limits`). At the cap, a new
  connection takes the place of the one that has waited longest without a
  request in progress (a client slow to send its head, an idle keep-alive);
  when every connection has a request in progress, the new one is closed at once;
- a request head must arrive within `http.read_timeout_seconds` of the
  connection, or of the previous answer on it (aiohttp's keep-alive timer);
  a body the API did not read is drained for at most LINGER_SECONDS;
- what happens at the cap is one warning per `REPORT_SECONDS` with counts,
  never a line per connection.

A connection with a request in progress is never closed here: its client may
be waiting for the answer to a Send that has left.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from daemon.config import HttpSettings

log = structlog.get_logger(logger_name="daemon.http_server")


# Descriptors the rest of the daemon may need: GWS (REST and CometD), sinks,
# the store and its WAL, stdio, the event loop's own.
RESERVED_DESCRIPTORS = 96
# The accept queue; the event loop also accepts up to this many sockets at once
# before any of them counts, so they need room too.
MAX_BACKLOG = 128
REPORT_SECONDS = 10.0
LINGER_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    connections: int
    backlog: int


def connection_limits(configured: int, descriptors: int | None) -> ConnectionLimits:
    """The cap and backlog that fit in `descriptors` (None: no limit) beside the daemon."""
    backlog = min(MAX_BACKLOG, configured)
    if descriptors is None or configured + backlog + RESERVED_DESCRIPTORS <= descriptors:
        return ConnectionLimits(configured, backlog)
    room = max(16, descriptors - RESERVED_DESCRIPTORS)
    return ConnectionLimits(max(8, room // 2), max(8, room - room // 2))


def _descriptor_limit() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


class _Connection(asyncio.Protocol):
    """One accepted connection: aiohttp's handler behind it, the guard's bookkeeping in front."""

    def __init__(self, guard: ConnectionGuard, handler: web.RequestHandler) -> None:
        self._guard = guard
        self.handler = handler
        self.transport: asyncio.Transport | None = None
        self.admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream socket's transport: asyncio's or uvloop's (which does not
        # subclass asyncio.Transport, but is one in all but name).
        self.transport = cast(asyncio.Transport, transport)
        if not self._guard.admit(self):
            self.transport.abort()
            return
        self.admitted = True
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.admitted:
            self.handler.data_received(data)

    def eof_received(self) -> None:
        # aiohttp's answer is "close the transport" (None), whatever it does first.
        if self.admitted:
            self.handler.eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard.release(self)
        if self.admitted:
            self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()


class ConnectionGuard:
    """The connections of one listening socket: waiting (oldest first) or in a request."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._waiting: dict[_Connection, None] = {}  # insertion order: longest waiting first
        self._busy: set[_Connection] = set()
        self._by_handler: dict[web.RequestHandler, _Connection] = {}
        self.evicted = 0
        self.refused = 0
        self._reported = (0, 0)
        self._next_report = 0.0

    def __len__(self) -> int:
        return len(self._waiting) + len(self._busy)

    @property
    def busy(self) -> int:
        """Connections with a request in progress."""
        return len(self._busy)

    def admit(self, connection: _Connection) -> bool:
        if len(self) >= self.limit:
            if not self._waiting:
                self.refused += 1
                self._report()
                return False
            oldest = next(iter(self._waiting))
            del self._waiting[oldest]  # it stops counting now; its descriptor goes at once
            assert oldest.transport is not None
            oldest.transport.abort()
            self.evicted += 1
            self._report()
        self._waiting[connection] = None
        self._by_handler[connection.handler] = connection
        return True

    def release(self, connection: _Connection) -> None:
        self._waiting.pop(connection, None)
        self._busy.discard(connection)
        if self._by_handler.get(connection.handler) is connection:
            del self._by_handler[connection.handler]

    def request_started(self, handler: web.RequestHandler) -> None:
        connection = self._by_handler.get(handler)
        if connection is not None and connection in self._waiting:
            del self._waiting[connection]
            self._busy.add(connection)

    def request_finished(self, handler: web.RequestHandler) -> None:
        connection = self._by_handler.get(handler)
        if connection is not None and connection in self._busy:
            self._busy.discard(connection)
            self._waiting[connection] = None  # waits for its next request, newest now

    def _report(self) -> None:
        now = self._clock()
        if now < self._next_report:
            return
        self._next_report = now + REPORT_SECONDS
        evicted, refused = self.evicted - self._reported[0], self.refused - self._reported[1]
        self._reported = (self.evicted, self.refused)
        log.warning(
            "api_connections_at_cap",
            limit=self.limit,
            closed_waiting=evicted,
            refused=refused,
            detail="clients slow to send a request, or too many at once",
        )

    def middleware(self) -> Middleware:
        guard = self

        @web.middleware
        async def track(request: web.Request, handler: Handler) -> web.StreamResponse:
            protocol = request.protocol
            guard.request_started(protocol)
            try:
                return await handler(request)
            finally:
                guard.request_finished(protocol)

        return track


class _GuardedSite(web.BaseSite):
    """aiohttp's TCPSite, each connection passing through the guard."""

    def __init__(
        self, runner: web.AppRunner, host: str, port: int, *, guard: ConnectionGuard, backlog: int
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._guard = guard

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        handlers = self._runner.server
        assert handlers is not None
        guard = self._guard
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Connection(guard, handlers()),
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=True,
        )


@dataclass(frozen=True, slots=True)
class ApiServer:
    runner: web.AppRunner
    guard: ConnectionGuard

    @property
    def port(self) -> int:
        port: int = self.runner.addresses[0][1]
        return port

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_api_server(app: web.Application, http: HttpSettings) -> ApiServer:
    """Serve `app` on http.host:http.port; raises OSError when it cannot listen."""
    descriptors = _descriptor_limit()
    limits = connection_limits(http.max_connections, descriptors)
    if limits.connections < http.max_connections:
        log.warning(
            "api_connections_lowered",
            max_connections=http.max_connections,
            connections=limits.connections,
            descriptor_limit=descriptors,
            detail="RLIMIT_NOFILE leaves no room for http.max_connections; raise LimitNOFILE",
        )
    guard = ConnectionGuard(limits.connections)
    app.middlewares.insert(0, guard.middleware())
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        # Closes a connection whose request head has not come this long after the
        # connection or the previous answer: the read timeout of a head.
        keepalive_timeout=http.read_timeout_seconds,
        # A body left unread (an early 401, 408 or 413) is read and dropped this
        # long, so the client sees the answer rather than a reset; then it is closed.
        lingering_time=min(LINGER_SECONDS, http.read_timeout_seconds),
    )
    await runner.setup()
    site = _GuardedSite(runner, http.host, http.port, guard=guard, backlog=limits.backlog)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    return ApiServer(runner, guard)
