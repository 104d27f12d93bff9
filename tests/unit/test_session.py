"""The GWS session: login and CSRF, REST calls, and every failure as the project's own error.

Against the in-process simulator on loopback; and, for the failures, a port nobody
listens on, a port whose connects never complete, a server that accepts and never
answers, and a small GWS that refuses every POST for CSRF and cannot say who we are.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from daemon.config import GwsSettings, Secret
from daemon.errors import GwsAnswerLostError, GwsRequestError, GwsUnreachableError
from daemon.gws.answers import is_refusal
from daemon.gws.session import GwsSession
from daemon.metrics import AccountMetrics, Metrics
from daemon.simulator import Simulator

REQUEST_TIMEOUT = 0.5
REQUESTS = "gws_notifyd_gws_request_duration_seconds_count"


def send_body(queue: str = "Outbound") -> bytes:
    return orjson.dumps(
        {
            "operationName": "Send",
            "queueName": queue,
            "email": {"from": "agent@example.com", "to": ["customer@example.com"], "subject": "Hi"},
        }
    )


@pytest.fixture
async def logged_in(gws_session: GwsSession) -> GwsSession:
    await gws_session.login()
    return gws_session


@pytest.fixture
async def open_sessions() -> AsyncIterator[list[GwsSession]]:
    """Sessions a test opens with settings of its own, closed after it."""
    sessions: list[GwsSession] = []
    yield sessions
    for session in sessions:
        await session.close()


@pytest.fixture
def session_with(
    gws_settings: GwsSettings,
    account_metrics: AccountMetrics,
    metrics: Metrics,
    open_sessions: list[GwsSession],
) -> Callable[..., Awaitable[GwsSession]]:
    """`await session_with(**changes)`: an opened session with those settings changed."""

    async def make(**changes: Any) -> GwsSession:
        session = GwsSession(dataclasses.replace(gws_settings, **changes), account_metrics)
        session.open()
        open_sessions.append(session)
        return session

    return make


@pytest.fixture
def unanswered_connect_port() -> Iterator[int]:
    """A loopback port whose listener's accept queue is full: a new connect is never completed.

    (Linux drops the SYN of a connection that would not fit the queue, as a firewall
    that drops packets does.)
    """
    listener = socket.socket()
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        for _ in range(2):
            filler = socket.socket()
            filler.setblocking(False)
            fillers.append(filler)
            filler.connect_ex(("127.0.0.1", port))
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A loopback server that accepts connections, reads, and never answers; its port."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client hangs up
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    async with server:
        yield port


@pytest.fixture
async def gws_in_trouble() -> AsyncIterator[str]:
    """A GWS that refuses every POST for its CSRF token and answers GET /api/v2/me with 503."""

    async def refuse(_request: web.Request) -> web.Response:
        body = {"statusCode": 3, "statusMessage": "Missing or invalid Csrf token"}
        return web.json_response(body, status=403)

    async def unavailable(_request: web.Request) -> web.Response:
        return web.json_response(
            {"statusCode": 4, "statusMessage": "Service unavailable"}, status=503
        )

    app = web.Application()
    app.router.add_post("/api/v2/me/emails/{email_id}", refuse)
    app.router.add_get("/api/v2/me", unavailable)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


# -- login and CSRF ----------------------------------------------------------------------


async def test_login_learns_the_csrf_token_and_sends_it_on_posts(
    gws_session: GwsSession, simulator: Simulator, metric_value: Callable[..., float]
) -> None:
    assert simulator.settings.csrf  # the simulator refuses a POST without the token

    await gws_session.login()
    answer = await gws_session.email_operation("S-1", send_body(), operation="Send")

    assert answer.ok
    assert answer.reference_id is None  # the docs' Send answer: {"statusCode":0}
    assert simulator.sends_accepted == 1
    # One GET learned the token; neither POST needed a refresh.
    assert metric_value(REQUESTS, operation="GetMe", result="ok") == 1
    assert metric_value(REQUESTS, operation="StartContactCenterSession", result="ok") == 1
    assert metric_value(REQUESTS, operation="Send", result="ok") == 1


async def test_a_csrf_refusal_refreshes_the_token_once_and_retries(
    logged_in: GwsSession, simulator: Simulator, metric_value: Callable[..., float]
) -> None:
    # GWS forgot the HTTP session: the next POST starts a new one, whose token we lack.
    simulator.forget_sessions()

    answer = await logged_in.email_operation("S-2", send_body(), operation="Send")

    assert answer.ok
    assert simulator.sends_accepted == 1
    assert metric_value(REQUESTS, operation="Send", result="rejected") == 1
    assert metric_value(REQUESTS, operation="Send", result="ok") == 1
    assert metric_value(REQUESTS, operation="GetMe", result="ok") == 2  # login + one refresh


async def test_a_refused_password_raises_gws_request_error_with_http_status_401(
    session_with: Callable[..., Awaitable[GwsSession]],
) -> None:
    session = await session_with(password=Secret("not-the-password"))

    with pytest.raises(GwsRequestError) as refused:
        await session.login()

    assert refused.value.http_status == 401
    assert refused.value.status_code == 20
    assert "not-the-password" not in str(refused.value)


async def test_an_unreachable_gws_raises_gws_unreachable_error(
    session_with: Callable[..., Awaitable[GwsSession]],
    closed_port: int,
    metric_value: Callable[..., float],
) -> None:
    session = await session_with(base_url=f"http://127.0.0.1:{closed_port}")

    with pytest.raises(GwsUnreachableError, match=str(closed_port)):
        await session.login()

    assert metric_value(REQUESTS, operation="GetMe", result="unreachable") == 1


async def test_a_gws_that_never_answers_raises_answer_lost_within_the_request_timeout(
    session_with: Callable[..., Awaitable[GwsSession]], silent_server: int
) -> None:
    session = await session_with(
        base_url=f"http://127.0.0.1:{silent_server}", request_timeout_seconds=REQUEST_TIMEOUT
    )
    started = time.monotonic()

    with pytest.raises(GwsAnswerLostError):
        await session.email_operation("S-3", send_body(), operation="Send")

    assert time.monotonic() - started < REQUEST_TIMEOUT + 1.0


async def test_a_connect_that_times_out_raises_unreachable_not_answer_lost(
    session_with: Callable[..., Awaitable[GwsSession]], unanswered_connect_port: int
) -> None:
    session = await session_with(
        base_url=f"http://127.0.0.1:{unanswered_connect_port}",
        request_timeout_seconds=REQUEST_TIMEOUT,
    )

    with pytest.raises(GwsUnreachableError):
        await session.email_operation("S-5", send_body(), operation="Send")


async def test_a_send_refused_for_csrf_whose_refresh_fails_comes_back_as_the_answer(
    session_with: Callable[..., Awaitable[GwsSession]], gws_in_trouble: str
) -> None:
    session = await session_with(base_url=gws_in_trouble)

    answer = await session.email_operation("S-6", send_body(), operation="Send")

    assert not answer.ok
    assert answer.http_status in (403, 503)


# -- REST calls ----------------------------------------------------------------------------


async def test_a_refused_send_comes_back_as_an_answer_not_an_error(logged_in: GwsSession) -> None:
    answer = await logged_in.email_operation("S-4", send_body("NoSuchQueue"), operation="Send")

    assert not answer.ok
    assert (answer.http_status, answer.status_code) == (400, 2)
    assert answer.status_message == "Queue 'NoSuchQueue' not found"


async def test_list_emails_gives_every_email_of_the_workspace_by_id(
    logged_in: GwsSession,
) -> None:
    for email_id in ("L-1", "L-2"):
        assert (await logged_in.email_operation(email_id, send_body(), operation="Send")).ok

    emails = await logged_in.list_emails()

    assert set(emails) == {"L-1", "L-2"}
    assert emails["L-1"]["state"] == "Sent"


async def test_get_email_gives_the_email_or_none_when_gws_does_not_know_it(
    logged_in: GwsSession,
) -> None:
    assert (await logged_in.email_operation("G-1", send_body(), operation="Send")).ok

    email = await logged_in.get_email("G-1")
    unknown = await logged_in.get_email("NO-SUCH-EMAIL")

    assert email is not None
    assert (email["id"], email["state"]) == ("G-1", "Sent")
    assert unknown is None


# -- the session's life: password read afresh, a live session told from a lost one -----


async def test_every_request_and_every_bayeux_header_carry_basic_auth_and_the_csrf_token(
    logged_in: GwsSession, simulator: Simulator
) -> None:
    headers = logged_in.bayeux_headers()

    assert headers["Authorization"].startswith("Basic ")
    assert headers["X-CSRF-TOKEN"]
    assert logged_in.csrf_header_name == "X-CSRF-TOKEN"
    assert logged_in.cookie_names() == ["JSESSIONID"]
    assert "agent1-password" not in repr(headers)  # base64, never the clear text


async def test_ensure_on_a_live_session_is_one_get_and_no_new_login(
    logged_in: GwsSession, metric_value: Callable[..., float]
) -> None:
    assert await logged_in.ensure() is True
    assert metric_value(REQUESTS, operation="GetMe", result="ok") == 2
    assert metric_value(REQUESTS, operation="StartContactCenterSession", result="ok") == 1


async def test_ensure_on_a_lost_session_starts_the_contact_center_session_again(
    logged_in: GwsSession, simulator: Simulator, metric_value: Callable[..., float]
) -> None:
    simulator.forget_sessions()

    assert await logged_in.ensure() is False
    assert metric_value(REQUESTS, operation="StartContactCenterSession", result="ok") == 2
    assert (await logged_in.email_operation("E-1", send_body(), operation="Send")).ok


async def test_a_refused_login_stops_every_other_request_until_a_login_succeeds(
    logged_in: GwsSession, simulator: Simulator
) -> None:
    original = simulator.settings.password
    simulator.settings.password = "changed"
    with pytest.raises(GwsRequestError) as refused:
        await logged_in.ensure()
    assert is_refusal(refused.value)
    assert logged_in.credentials_refused
    refused_so_far = len(simulator.refused_times)

    with pytest.raises(GwsUnreachableError, match="refused the credentials"):
        await logged_in.email_operation("E-2", send_body(), operation="Send")
    with pytest.raises(GwsUnreachableError):
        await logged_in.get_email("E-2")

    assert len(simulator.refused_times) == refused_so_far  # nothing else was tried
    simulator.settings.password = original
    await logged_in.ensure()
    assert not logged_in.credentials_refused


async def test_the_password_file_is_read_again_at_every_login(
    session_with: Callable[..., Awaitable[GwsSession]], simulator: Simulator, tmp_path: Path
) -> None:
    password_file = tmp_path / "gws-password"
    password_file.write_text("old-password\n")
    session = await session_with(password=Secret("old-password"), password_file=password_file)
    with pytest.raises(GwsRequestError):
        await session.login()

    password_file.write_text(simulator.settings.password + "\n")
    await session.login()

    assert not session.credentials_refused
    password_file.unlink()  # mid-rotation: the last password read stays in use
    assert await session.ensure() is True


@pytest.mark.parametrize(
    ("http_status", "status_code", "refused"),
    [(401, 20, True), (403, 3, True), (200, 8, True), (400, 20, True), (503, 4, False)],
)
def test_which_failed_logins_are_refusals(
    http_status: int, status_code: int, refused: bool
) -> None:
    error = GwsRequestError(
        operation="GetMe", http_status=http_status, status_code=status_code, status_message=None
    )
    assert is_refusal(error) is refused


async def test_a_request_answered_401_closes_the_gate_and_tells_the_session_keeper(
    logged_in: GwsSession, simulator: Simulator
) -> None:
    told: list[bool] = []
    logged_in.on_refused(lambda: told.append(True))
    simulator.settings.password = "changed-on-the-server"

    answer = await logged_in.email_operation("E-3", send_body(), operation="Send")

    assert answer.http_status == 401
    assert told == [True]
    assert logged_in.credentials_refused
    with pytest.raises(GwsUnreachableError):
        await logged_in.email_operation("E-4", send_body(), operation="Send")
    assert len(simulator.refused_times) == 1


async def test_after_refused_credentials_are_accepted_again_it_is_a_full_login(
    logged_in: GwsSession, simulator: Simulator, metric_value: Callable[..., float]
) -> None:
    right = simulator.settings.password
    simulator.settings.password = "changed"
    with pytest.raises(GwsRequestError):
        await logged_in.ensure()
    simulator.settings.password = right

    assert await logged_in.ensure() is False  # same cookie, yet logged in again
    assert metric_value(REQUESTS, operation="StartContactCenterSession", result="ok") == 2
