"""The API's listening socket: the connection cap, who makes room at it, and the descriptor budget.

A small aiohttp application served by `start_api_server` on loopback, and raw sockets:
some that never finish their request head, some whose request is held in its handler.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from daemon.config import HttpSettings
from daemon.http_server import (
    MAX_BACKLOG,
    RESERVED_DESCRIPTORS,
    ApiServer,
    ConnectionLimits,
    connection_limits,
    start_api_server,
)
from tests.harness.waiting import wait_until

CAP = 8
DEADLINE = 5.0
HELD = web.AppKey("held", asyncio.Event)

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.mark.parametrize(
    ("configured", "descriptors", "expected"),
    [
        (256, None, ConnectionLimits(256, MAX_BACKLOG)),
        (256, 1024, ConnectionLimits(256, MAX_BACKLOG)),
        (16, 1024, ConnectionLimits(16, 16)),
        (256, 160, ConnectionLimits(32, 32)),
        (256, 50, ConnectionLimits(8, 8)),
    ],
)
def test_the_cap_and_backlog_fit_in_the_descriptors_beside_the_daemon(
    configured: int, descriptors: int | None, expected: ConnectionLimits
) -> None:
    limits = connection_limits(configured, descriptors)

    assert limits == expected
    if descriptors is not None and descriptors > RESERVED_DESCRIPTORS + 16:
        assert limits.connections + limits.backlog + RESERVED_DESCRIPTORS <= descriptors


async def _held(request: web.Request) -> web.Response:
    await request.app[HELD].wait()
    return web.Response(text="done")


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@pytest.fixture
async def server() -> AsyncIterator[ApiServer]:
    app = web.Application()
    app[HELD] = asyncio.Event()
    app.router.add_get("/held", _held)
    app.router.add_get("/ok", _ok)
    served = await start_api_server(
        app, HttpSettings(port=0, max_connections=CAP, read_timeout_seconds=30)
    )
    yield served
    app[HELD].set()
    await served.close()


@pytest.fixture
async def connections() -> AsyncIterator[list[Connection]]:
    opened: list[Connection] = []
    yield opened
    for _, writer in opened:
        writer.close()


async def connect(server: ApiServer, opened: list[Connection], head: bytes) -> Connection:
    connection = await asyncio.open_connection("127.0.0.1", server.port)
    connection[1].write(head)
    opened.append(connection)
    return connection


async def get(server: ApiServer, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    try:
        return await asyncio.wait_for(reader.read(), DEADLINE)
    finally:
        writer.close()


async def closed(reader: asyncio.StreamReader) -> bool:
    with contextlib.suppress(ConnectionError):
        await asyncio.wait_for(reader.read(), DEADLINE)
    return True


async def test_at_the_cap_a_new_connection_replaces_the_one_waiting_longest_for_its_head(
    server: ApiServer, connections: list[Connection]
) -> None:
    slow = [await connect(server, connections, b"GET /ok HTTP/1.1\r\n") for _ in range(CAP)]
    await wait_until(lambda: len(server.guard) == CAP, timeout=DEADLINE, what="all admitted")

    answer = await get(server, "/ok")

    assert answer.startswith(b"HTTP/1.1 200")
    assert await closed(slow[0][0])
    assert server.guard.evicted >= 1


async def test_a_connection_with_a_request_in_progress_is_never_closed_to_make_room(
    server: ApiServer, connections: list[Connection]
) -> None:
    held = [
        await connect(server, connections, b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(CAP)
    ]
    await wait_until(lambda: server.guard.busy == CAP, timeout=DEADLINE, what="all busy")

    refused = await connect(server, connections, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")

    assert await closed(refused[0])
    assert server.guard.refused == 1
    assert server.guard.evicted == 0
    for _, writer in held:
        assert not writer.is_closing()
