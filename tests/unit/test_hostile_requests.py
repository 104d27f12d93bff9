"""Hostile requests to the local API: ids that are not GWS ids, bad headers, slow bodies.

Real HTTP on loopback in front of the daemon's real parts (as in test_api), and raw
sockets where a client library would clean the request up first (dot segments,
non-UTF-8 header bytes, a body that never finishes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from daemon.app import Components
from daemon.errors import GwsUnreachableError
from daemon.gws.session import GwsSession
from daemon.simulator import Simulator

TOKEN = "t0k3n-for-tests"
DEADLINE = 5.0
READ_TIMEOUT = 0.5

Client = TestClient[web.Request, web.Application]


def send_body() -> bytes:
    return orjson.dumps(
        {
            "operationName": "Send",
            "queueName": "Outbound",
            "email": {"from": "agent@example.com", "to": ["customer@example.com"]},
        }
    )


@pytest.fixture
def make_parts(
    serve_api: Callable[..., Awaitable[tuple[Client, Components]]],
) -> Callable[..., Awaitable[tuple[Client, Components]]]:
    """`await make_parts(token=False)`: the API on loopback in front of logged-in parts."""

    async def make(*, token: bool = False) -> tuple[Client, Components]:
        return await serve_api(token=TOKEN if token else None, read_timeout_seconds=READ_TIMEOUT)

    return make


@pytest.fixture
async def served(
    make_parts: Callable[..., Awaitable[tuple[Client, Components]]],
) -> tuple[Client, Components]:
    return await make_parts()


async def raw_exchange(client: Client, request: bytes) -> tuple[int, bytes]:
    """Send `request` byte for byte; the status and body of the answer (connection closed)."""
    port = client.server.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(), DEADLINE)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def post(target: str, body: bytes, *headers: bytes) -> bytes:
    lines = [
        f"POST {target} HTTP/1.1".encode(),
        b"Host: 127.0.0.1",
        b"Content-Type: application/json",
        f"Content-Length: {len(body)}".encode(),
        b"Connection: close",
        *headers,
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# -- email ids ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "segment",
    [
        "..",
        "%2e%2e",
        "%2E%2E",
        ".",
        "%2e",
        "a%2Fb",
        "a%2F..",
        "a%20b",
        "%C3%A9t%C3%A9",
        "x" * 65,
        "a%00b",
    ],
)
async def test_an_email_id_gws_cannot_have_answers_400_naming_the_id_and_is_not_recorded(
    served: tuple[Client, Components], simulator: Simulator, segment: str
) -> None:
    client, parts = served

    status, body = await raw_exchange(client, post(f"/api/v2/me/emails/{segment}", send_body()))

    assert status == 400
    answer = orjson.loads(body)
    assert answer["statusCode"] == 10
    assert answer["field"] == "id"
    assert "letters, digits" in answer["statusMessage"]
    assert simulator.sends_received == 0
    assert simulator.emails == {}
    assert await parts.store.list_sends(None, 10) == []


async def test_an_operation_other_than_send_on_a_bad_id_is_refused_too(
    served: tuple[Client, Components], simulator: Simulator
) -> None:
    client, _ = served
    body = orjson.dumps({"operationName": "Cancel"})

    status, answer = await raw_exchange(client, post("/api/v2/me/emails/..", body))

    assert status == 400
    assert orjson.loads(answer)["field"] == "id"
    assert simulator.emails == {}


@pytest.mark.parametrize("email_id", ["0071023821aec011", "01QG9WAK37H38024", "a_b-C", "x" * 64])
async def test_ids_as_gws_makes_them_are_accepted(
    served: tuple[Client, Components], simulator: Simulator, email_id: str
) -> None:
    client, _ = served

    status, _ = await raw_exchange(client, post(f"/api/v2/me/emails/{email_id}", send_body()))

    assert status == 200
    assert list(simulator.emails) == [email_id]


@pytest.mark.parametrize("email_id", ["01QG9WAK37H38024", "a b", "a/b", "a?b=1", "a#b", "%2e%2e"])
async def test_the_session_puts_any_id_in_one_path_segment(
    gws_session: GwsSession, simulator: Simulator, email_id: str
) -> None:
    await gws_session.login()

    answer = await gws_session.email_operation(email_id, send_body(), operation="Send")

    assert answer.ok
    # The simulator names the email after the path segment it received, decoded.
    assert list(simulator.emails) == [email_id]


@pytest.mark.parametrize("email_id", [".", "..", ""])
async def test_the_session_never_sends_an_id_that_is_a_dot_segment(
    gws_session: GwsSession, simulator: Simulator, email_id: str
) -> None:
    await gws_session.login()

    with pytest.raises(GwsUnreachableError, match="not sent"):
        await gws_session.email_operation(email_id, send_body(), operation="Send")
    with pytest.raises(GwsUnreachableError, match="not sent"):
        await gws_session.get_email(email_id)

    assert simulator.sends_received == 0
    assert simulator.emails == {}


# -- the bearer token ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [b"Bearer \xff\xfe\xfd", b"\xc3(", b"Bearer " + TOKEN.encode() + b"\x80", b"Bearer"],
)
async def test_an_authorization_header_that_is_not_utf8_or_not_the_token_gets_401(
    make_parts: Callable[..., Awaitable[tuple[Client, Components]]],
    simulator: Simulator,
    authorization: bytes,
) -> None:
    client, _ = await make_parts(token=True)

    status, body = await raw_exchange(
        client, post("/api/v2/me/emails/E1", send_body(), b"Authorization: " + authorization)
    )

    assert status == 401
    assert orjson.loads(body)["statusCode"] == 20
    assert simulator.sends_received == 0


async def test_the_right_token_is_taken(
    make_parts: Callable[..., Awaitable[tuple[Client, Components]]], simulator: Simulator
) -> None:
    client, _ = await make_parts(token=True)

    status, _ = await raw_exchange(
        client,
        post("/api/v2/me/emails/E1", send_body(), b"Authorization: Bearer " + TOKEN.encode()),
    )

    assert status == 200
    assert simulator.sends_received == 1
