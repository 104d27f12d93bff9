"""`Service.run()` in the test's own event loop, asked over real HTTP on loopback."""

from __future__ import annotations

import asyncio

import aiohttp

from daemon.config import Settings
from daemon.service import Service
from tests.harness.waiting import wait_until

DEADLINE = 10.0
SEND_BODY = {
    "operationName": "Send",
    "queueName": "Outbound",
    "email": {"from": "agent@example.com", "to": ["customer@example.com"], "subject": "Hi"},
}

Started = list[tuple[Service, asyncio.Task[int]]]


async def start(settings: Settings, started: Started) -> tuple[Service, asyncio.Task[int]]:
    """Run a service as a task; the `started` fixture stops it at the end of the test."""
    service = Service(settings)
    running = asyncio.create_task(service.run())
    started.append((service, running))
    return service, running


async def status_of(http: aiohttp.ClientSession, url: str) -> int | None:
    try:
        async with http.get(url) as response:
            return response.status
    except aiohttp.ClientError:
        return None


async def is_ready(http: aiohttp.ClientSession, api: str) -> bool:
    return await status_of(http, f"{api}/readyz") == 200


async def wait_ready(service: Service, http: aiohttp.ClientSession) -> str:
    """The service's API URL, once /readyz answers 200."""
    api = await wait_until(lambda: service.api_url, timeout=DEADLINE, what="the API to listen")
    assert api is not None
    await wait_until(lambda: is_ready(http, api), timeout=DEADLINE, what="/readyz 200")
    return api


async def send(http: aiohttp.ClientSession, api: str, email_id: str) -> str:
    async with http.post(f"{api}/api/v2/me/emails/{email_id}", json=SEND_BODY) as response:
        answer = await response.json()
        assert response.status == 200, answer
    send_id: str = answer["sendId"]
    return send_id
