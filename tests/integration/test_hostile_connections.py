"""The daemon as a subprocess against clients that hold connections, leave early or send junk.

Real sockets on loopback: hundreds of connections that never finish their headers,
under a descriptor limit lower than their number; a client that hangs up before its
Send could leave (the daemon stopped with SIGSTOP while it does, so that the request
and the hang-up are both waiting when it resumes); a header far over aiohttp's limit
carrying a bearer token. What is checked is what an operator sees: /healthz, Sends,
descriptors in /proc, and every line on stdout and stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from daemon.simulator import Simulator
from tests.harness.daemon_process import DaemonProcess, send_body, write_config
from tests.harness.waiting import wait_until

# Under the descriptor limit the daemon starts with: more slow clients than it may open files.
DESCRIPTOR_LIMIT = 160
SLOW_CLIENTS = 300
READ_TIMEOUT = 1.0
DEADLINE = 10.0
SECRET_TOKEN = "s3cr3t-bearer-value-never-logged"

Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.contextmanager
def descriptor_limit(limit: int) -> Iterator[None]:
    """RLIMIT_NOFILE lowered for this process while inside (children inherit it at start)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def api_port(daemon: DaemonProcess) -> int:
    return int(daemon.api.rsplit(":", 1)[1])


@pytest.fixture
async def connections() -> AsyncIterator[list[Connection]]:
    """Raw connections a test opens; closed after it."""
    opened: list[Connection] = []
    yield opened
    for _, writer in opened:
        writer.close()


@pytest.fixture
async def limited_daemon(simulator: Simulator, tmp_path: Path) -> AsyncIterator[DaemonProcess]:
    """The daemon started under DESCRIPTOR_LIMIT, with a short read timeout."""
    assert simulator.base_url
    config = write_config(
        tmp_path, gws_url=simulator.base_url, http={"read_timeout_seconds": READ_TIMEOUT}
    )
    daemon = DaemonProcess(config)
    try:
        with descriptor_limit(DESCRIPTOR_LIMIT):
            await daemon.start()
        yield daemon
    finally:
        await daemon.stop()


async def open_slow(port: int, opened: list[Connection]) -> None:
    """A connection that sends half a request (a bearer token among it) and then nothing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    opened.append((reader, writer))
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"t" * 40)


async def healthz(daemon: DaemonProcess) -> int:
    # A fresh connection each time: the one that counts is the one a monitor opens now.
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http,
        http.get(f"{daemon.api}/healthz") as response,
    ):
        return response.status


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    with contextlib.suppress(ConnectionError):
        await reader.read()
    return True


def assert_logs_are_json_and_quiet(daemon: DaemonProcess, *, max_lines: int) -> None:
    for line in daemon.raw_stdout:
        assert isinstance(orjson.loads(line), dict), line[:200]
    assert len(daemon.raw_stdout) <= max_lines, [line[:120] for line in daemon.raw_stdout[-20:]]
    assert daemon.stderr == b"", daemon.stderr[:2000]


# -- many slow connections ----------------------------------------------------------------


async def test_slow_connections_beyond_the_descriptor_limit_leave_health_and_sends_working(
    limited_daemon: DaemonProcess, connections: list[Connection], tmp_path: Path
) -> None:
    daemon = limited_daemon
    port = api_port(daemon)

    for _ in range(SLOW_CLIENTS):
        await open_slow(port, connections)

    assert await healthz(daemon) == 200
    status, answer = await daemon.send("SLOW-1")
    assert (status, answer["statusCode"]) == (200, 0)
    assert descriptors(daemon.pid) < DESCRIPTOR_LIMIT - 8
    # Every slow connection is closed by the daemon once the read timeout has passed.
    for reader, _ in connections:
        assert await asyncio.wait_for(closed_by_peer(reader), DEADLINE)
    await daemon.wait_events(tmp_path / "events.jsonl", 1)
    assert await daemon.stop() == 0
    assert_logs_are_json_and_quiet(daemon, max_lines=60)


async def test_a_body_that_stops_coming_is_answered_408_after_the_read_timeout(
    limited_daemon: DaemonProcess, simulator: Simulator
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", api_port(limited_daemon))
    body = orjson.dumps(send_body())
    writer.write(
        b"POST /api/v2/me/emails/E-408 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body[:10]
    )

    answer = await asyncio.wait_for(reader.read(), DEADLINE)
    writer.close()

    assert answer.startswith(b"HTTP/1.1 408 ")
    assert orjson.loads(answer.partition(b"\r\n\r\n")[2])["statusCode"] == 10
    assert simulator.sends_received == 0


# -- a client that leaves before its Send goes out -------------------------------------------


async def test_a_send_whose_client_left_before_it_was_forwarded_is_rejected_not_sent(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    async with DaemonProcess(write_config(tmp_path, gws_url=simulator.base_url)) as daemon:
        body = orjson.dumps(send_body())
        request = (
            b"POST /api/v2/me/emails/GONE-1 HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        os.kill(daemon.pid, signal.SIGSTOP)
        try:
            # The kernel takes the connection, the request and the hang-up meanwhile.
            _, writer = await asyncio.open_connection("127.0.0.1", api_port(daemon))
            writer.write(request)
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        finally:
            os.kill(daemon.pid, signal.SIGCONT)

        [event] = await daemon.wait_events(tmp_path / "events.jsonl", 1)
        assert event["type"] == "gws.email.send_rejected"
        assert event["data"]["emailId"] == "GONE-1"
        assert event["data"]["httpStatus"] is None
        assert "closed" in event["data"]["statusMessage"]
        assert simulator.sends_received == 0
        status, rejected = await daemon.get_json("/v1/sends?state=rejected")
        assert (status, rejected["count"]) == (200, 1)


# -- logs stay JSON --------------------------------------------------------------------------


async def test_a_header_over_the_limit_is_one_json_line_without_the_token(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    async with DaemonProcess(write_config(tmp_path, gws_url=simulator.base_url)) as daemon:
        reader, writer = await asyncio.open_connection("127.0.0.1", api_port(daemon))
        writer.write(
            b"GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + SECRET_TOKEN.encode()
            + b"A" * 20_000
            + b"\r\n\r\n"
        )
        answer = await asyncio.wait_for(reader.read(), DEADLINE)
        writer.close()
        assert answer.startswith((b"HTTP/1.0 4", b"HTTP/1.1 4"))
        await daemon.wait_log(lambda e: str(e.get("logger", "")).startswith("aiohttp"))
        assert await daemon.stop() == 0

    output = b"".join(daemon.raw_stdout) + daemon.stderr
    assert SECRET_TOKEN.encode() not in output
    assert b"Bearer " + SECRET_TOKEN[:4].encode() not in output
    assert_logs_are_json_and_quiet(daemon, max_lines=40)


async def test_hundreds_of_bad_requests_do_not_flood_the_log(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    async with DaemonProcess(write_config(tmp_path, gws_url=simulator.base_url)) as daemon:
        port = api_port(daemon)
        for _ in range(200):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n")
            await asyncio.wait_for(reader.read(), DEADLINE)
            writer.close()
        assert await healthz(daemon) == 200
        assert await daemon.stop() == 0

    assert_logs_are_json_and_quiet(daemon, max_lines=40)


async def test_the_daemon_keeps_serving_after_the_slow_clients_are_gone(
    limited_daemon: DaemonProcess, connections: list[Connection]
) -> None:
    port = api_port(limited_daemon)
    for _ in range(SLOW_CLIENTS):
        await open_slow(port, connections)
    for _, writer in connections:
        writer.close()

    await wait_until(
        lambda: descriptors(limited_daemon.pid) < 40, timeout=DEADLINE, what="descriptors freed"
    )
    assert await healthz(limited_daemon) == 200
