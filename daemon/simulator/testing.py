"""Driving the simulator as an agent would, for tests and benchmarks of what talks to it.

`running()` starts a simulator on a free loopback port for the length of a
block. `AgentClient` is one agent's HTTP session with it: Basic auth on every
request, a cookie jar of its own (the JSESSIONID), the CSRF token from its
last login, and raw REST and raw Bayeux JSON, so that a test sees exactly what
the simulator answers. `control()` sends one order to the control API;
`send_body()` is a valid Send. Unexpected answers (not JSON, a failed Bayeux
reply) raise AssertionError, as a test expects.

It never hides a GWS behaviour: no retries, no re-login, no re-handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Final

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from daemon.simulator.gws import Simulator, SimulatorSettings

__all__ = ["DEFAULT_DEADLINE", "AgentClient", "control", "running", "send_body"]

NOTIFICATIONS_PATH: Final = "/api/v2/notifications"
EMAILS_CHANNEL: Final = "/v2/me/emails"
# How long a connect may take before a test should call it stuck.
DEFAULT_DEADLINE: Final = 5.0
_DEMO_USERNAME: Final = "agent1"
_DEMO_PASSWORD: Final = "agent1-password"  # noqa: S105  the simulator's well-known demo one


@contextlib.asynccontextmanager
async def running(settings: SimulatorSettings | None = None) -> AsyncIterator[Simulator]:
    """A simulator listening on a free loopback port for the block, stopped after it."""
    simulator = Simulator(settings)
    await simulator.start("127.0.0.1", 0)
    try:
        yield simulator
    finally:
        await simulator.stop()


def send_body(**overrides: Any) -> dict[str, Any]:
    """A Send the simulator accepts (to two addresses, with a cc), with `overrides`."""
    body: dict[str, Any] = {
        "operationName": "Send",
        "queueName": "Outbound",
        "email": {
            "to": ["customer@example.com", "other@example.com"],
            "from": "agent@example.com",
            "subject": "Your case",
            "body": "<p>Done.</p>",
            "cc": ["boss@example.com"],
        },
    }
    body.update(overrides)
    return body


class AgentClient:
    """One agent's HTTP session: Basic auth, its own cookie jar and CSRF token."""

    def __init__(
        self,
        simulator: Simulator | str,
        *,
        username: str = _DEMO_USERNAME,
        password: str = _DEMO_PASSWORD,
        deadline: float = DEFAULT_DEADLINE,
    ) -> None:
        self.username = username
        self.http = aiohttp.ClientSession(
            _base_url(simulator),
            # Cookies from IP hosts are ignored unless the jar is unsafe.
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            headers={"Authorization": aiohttp.encode_basic_auth(username, password)},
        )
        self.csrf = ""
        self.deadline = deadline

    async def close(self) -> None:
        await self.http.close()

    async def get(self, path: str) -> tuple[int, Any, CIMultiDictProxy[str]]:
        async with self.http.get(path) as response:
            assert response.content_type == "application/json"
            return response.status, orjson.loads(await response.read()), response.headers

    async def post(self, path: str, body: object, *, csrf: bool = True) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if csrf and self.csrf:
            headers["X-CSRF-TOKEN"] = self.csrf
        data = body if isinstance(body, bytes) else orjson.dumps(body)
        async with self.http.post(path, data=data, headers=headers) as response:
            assert response.content_type == "application/json"
            return response.status, orjson.loads(await response.read())

    async def login(self) -> None:
        """GET /api/v2/me: the session cookie and the CSRF token."""
        status, _, headers = await self.get("/api/v2/me")
        assert status == 200, f"login of {self.username} answered {status}"
        self.csrf = headers["X-CSRF-TOKEN"]

    async def bayeux(self, *messages: dict[str, Any]) -> list[dict[str, Any]]:
        """One Bayeux POST; the answer's messages."""
        # CometD POSTs carry the CSRF token too, as on a GWS that asks for it.
        status, answer = await self.post(NOTIFICATIONS_PATH, list(messages))
        assert status == 200, f"Bayeux POST answered {status}: {answer}"
        assert isinstance(answer, list)
        return answer

    async def handshake(self) -> str:
        """A /meta/handshake; the clientId."""
        [hello] = await self.bayeux(
            {
                "channel": "/meta/handshake",
                "version": "1.0",
                "supportedConnectionTypes": ["long-polling"],
            }
        )
        assert hello["successful"] is True, hello
        client_id: str = hello["clientId"]
        return client_id

    async def subscribe(self, client_id: str, *channels: str) -> None:
        for channel in channels:
            [subscribed] = await self.bayeux(
                {"channel": "/meta/subscribe", "clientId": client_id, "subscription": channel}
            )
            assert subscribed["successful"] is True, subscribed

    async def listen(self, *channels: str) -> str:
        """Handshake, subscribe (default: to emails), make the first connect: the clientId."""
        client_id = await self.handshake()
        await self.subscribe(client_id, *(channels or (EMAILS_CHANNEL,)))
        assert (await self.connect(client_id, timeout=0))[-1]["successful"] is True
        return client_id

    async def connect(self, client_id: str, *, timeout: int | None = None) -> list[dict[str, Any]]:
        """One /meta/connect (held by the server unless `timeout` is 0); the whole answer."""
        message: dict[str, Any] = {
            "channel": "/meta/connect",
            "clientId": client_id,
            "connectionType": "long-polling",
        }
        if timeout is not None:
            message["advice"] = {"timeout": timeout}
        async with asyncio.timeout(self.deadline):
            return await self.bayeux(message)

    async def messages(self, client_id: str) -> list[dict[str, Any]]:
        """The data messages of the next non-empty connect answer (held until one comes)."""
        while True:
            batch = await self.connect(client_id)
            assert batch[-1]["successful"] is True, batch[-1]
            if len(batch) > 1:
                return batch[:-1]

    async def notifications(self, client_id: str) -> list[dict[str, Any]]:
        """The data of the next non-empty connect answer (held until something comes)."""
        return [message["data"] for message in await self.messages(client_id)]


async def control(
    simulator: Simulator | str, method: str, path: str, body: object = None
) -> tuple[int, Any]:
    """One order to a simulator's control API: (HTTP status, the JSON answer)."""
    async with aiohttp.ClientSession(_base_url(simulator)) as http:
        data = None if body is None else orjson.dumps(body)
        async with http.request(method, path, data=data) as response:
            assert response.content_type == "application/json"
            return response.status, orjson.loads(await response.read())


def _base_url(simulator: Simulator | str) -> str:
    if isinstance(simulator, str):
        return simulator
    assert simulator.base_url is not None, "the simulator is not started"
    return simulator.base_url
