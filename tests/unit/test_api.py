"""The local HTTP API: the Send drop-in's answers, what the daemon knows, health and the token.

Real HTTP on loopback (aiohttp's TestServer/TestClient) in front of the daemon's real
parts, built by `daemon.app.build_components` against the in-process simulator. The
notification listener runs only where a test says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from daemon.app import Components
from daemon.simulator import Simulator
from tests.harness.waiting import wait_until

TOKEN = "t0k3n-for-tests"
MAX_BODY_BYTES = 2048
DEADLINE = 5.0

Client = TestClient[web.Request, web.Application]


@dataclass(frozen=True, slots=True)
class Api:
    client: Client
    parts: Components


def send_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "operationName": "Send",
        "queueName": "Outbound",
        "email": {"from": "agent@example.com", "to": ["customer@example.com"], "subject": "Hi"},
    }
    body.update(changes)
    return body


@pytest.fixture
def make_api(
    serve_api: Callable[..., Awaitable[tuple[Client, Components]]],
) -> Callable[..., Awaitable[Api]]:
    """`await make_api(token=False)`: the API in front of the daemon's parts, logged in to GWS."""

    async def make(*, token: bool = False) -> Api:
        client, parts = await serve_api(
            token=TOKEN if token else None, max_body_bytes=MAX_BODY_BYTES
        )
        return Api(client, parts)

    return make


@pytest.fixture
async def api(make_api: Callable[..., Awaitable[Api]]) -> Api:
    return await make_api()


@pytest.fixture
async def listening(api: Api) -> AsyncIterator[Api]:
    """The API with the notification listener running and subscribed."""
    listener = api.parts.accounts.first.listener
    running = asyncio.create_task(listener.run())
    try:
        await wait_until(listener.first_subscription.is_set, timeout=DEADLINE, what="subscribed")
        yield api
    finally:
        await listener.close()
        await asyncio.wait_for(running, DEADLINE)


async def post_send(client: Client, email_id: str, body: object) -> tuple[int, Any]:
    async with client.post(f"/api/v2/me/emails/{email_id}", json=body) as response:
        return response.status, await response.json()


async def get_json(client: Client, path: str, **headers: str) -> tuple[int, Any]:
    async with client.get(path, headers=headers) as response:
        return response.status, await response.json()


# -- the Send drop-in ----------------------------------------------------------------------


async def test_a_valid_send_answers_with_send_id_and_reference_id(
    api: Api, simulator: Simulator
) -> None:
    simulator.settings.reference_id_in_answer = True  # the docs' GWS answers without one
    status, answer = await post_send(api.client, "A-1", send_body())

    assert status == 200
    assert answer["statusCode"] == 0
    assert answer["referenceId"] == 1
    assert answer["sendId"].startswith("s")
    assert simulator.sends_accepted == 1
    status, known = await get_json(api.client, f"/v1/sends/{answer['sendId']}")
    assert status == 200
    assert (known["emailId"], known["status"], known["referenceId"]) == ("A-1", "accepted", 1)


async def test_an_invalid_body_answers_400_naming_the_field_and_is_not_forwarded(
    api: Api, simulator: Simulator
) -> None:
    body = send_body()
    del body["queueName"]

    status, answer = await post_send(api.client, "A-2", body)

    assert status == 400
    assert answer == {
        "statusCode": 1,
        "statusMessage": "Required parameter 'queueName' is missing",
        "field": "queueName",
    }
    assert simulator.sends_received == 0


async def test_a_send_gws_refuses_answers_with_gws_answer_and_the_send_id(
    api: Api,
) -> None:
    status, answer = await post_send(api.client, "A-3", send_body(queueName="NoSuchQueue"))

    assert status == 400
    assert answer["statusCode"] == 2
    assert answer["statusMessage"] == "Queue 'NoSuchQueue' not found"
    status, known = await get_json(api.client, f"/v1/sends/{answer['sendId']}")
    assert (status, known["status"]) == (200, "rejected")


async def test_while_draining_a_send_answers_503_with_retry_after(
    api: Api, simulator: Simulator
) -> None:
    api.parts.state.draining = True

    async with api.client.post("/api/v2/me/emails/A-4", json=send_body()) as response:
        status, answer = response.status, await response.json()
        retry_after = response.headers.get("Retry-After")

    assert status == 503
    assert retry_after == "5"
    assert answer["statusCode"] == 4
    assert simulator.sends_received == 0


async def test_a_body_over_the_limit_answers_413(api: Api, simulator: Simulator) -> None:
    body = send_body(email={"from": "a@example.com", "to": ["b@example.com"], "body": "x" * 4096})

    status, answer = await post_send(api.client, "A-5", body)

    assert status == 413
    assert answer["statusCode"] == 10
    assert str(MAX_BODY_BYTES) in answer["statusMessage"]
    assert simulator.sends_received == 0


# -- what the daemon knows ---------------------------------------------------------------


async def test_an_unknown_send_answers_404(api: Api) -> None:
    status, answer = await get_json(api.client, "/v1/sends/s-no-such-send")

    assert status == 404
    assert "s-no-such-send" in answer["error"]


async def test_listing_sends_by_an_unknown_state_answers_400(api: Api) -> None:
    status, answer = await get_json(api.client, "/v1/sends?state=bogus")

    assert status == 400
    assert "pending" in answer["error"]


async def test_listing_pending_sends_shows_a_send_waiting_for_its_outcome(api: Api) -> None:
    _, sent = await post_send(api.client, "A-6", send_body())

    status, answer = await get_json(api.client, "/v1/sends?state=pending")

    assert status == 200
    assert [s["sendId"] for s in answer["sends"]] == [sent["sendId"]]
    assert answer["count"] == 1


# -- the bearer token ----------------------------------------------------------------------


async def test_with_a_token_configured_the_api_requires_it_and_healthz_stays_open(
    make_api: Callable[..., Awaitable[Api]], simulator: Simulator
) -> None:
    client = (await make_api(token=True)).client

    status, answer = await post_send(client, "A-7", send_body())
    wrong, _ = await get_json(client, "/v1/sends?state=pending", Authorization="Bearer nope")
    health, _ = await get_json(client, "/healthz")
    right, _ = await get_json(client, "/v1/sends?state=pending", Authorization=f"Bearer {TOKEN}")

    assert (status, answer["statusCode"]) == (401, 20)
    assert simulator.sends_received == 0
    assert wrong == 401
    assert health == 200
    assert right == 200


# -- readiness ---------------------------------------------------------------------------------


async def test_readyz_says_which_check_failed(api: Api, metric_value: Callable[..., float]) -> None:
    status, answer = await get_json(api.client, "/readyz")

    assert status == 503
    assert answer["ready"] is False
    assert answer["failed"] == ["subscribed"]
    assert metric_value("gws_notifyd_ready") == 0


async def test_readyz_is_200_once_subscribed_and_503_again_while_draining(
    listening: Api, metric_value: Callable[..., float]
) -> None:
    ready, answer = await get_json(listening.client, "/readyz")
    assert (ready, answer["ready"], answer["failed"]) == (200, True, [])
    assert metric_value("gws_notifyd_ready") == 1

    listening.parts.state.draining = True
    status, answer = await get_json(listening.client, "/readyz")

    assert status == 503
    assert answer["failed"] == ["notDraining"]
