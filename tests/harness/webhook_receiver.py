"""A webhook endpoint for tests: records what it takes, can refuse or be down."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def event(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class WebhookReceiver:
    """POST /hook: 200 and recorded, or `status` (e.g. 503) while `refusing`."""

    port: int = field(default_factory=free_port)
    refusing: bool = False
    status: int = 503
    received: list[Received] = field(default_factory=list)
    refused: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.refusing:
            self.refused += 1
            return web.Response(status=self.status)
        self.received.append(Received(dict(request.headers), body))
        return web.Response(status=200)

    async def start(self) -> None:
        """Listen (again) on the same port."""
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        """Down: connections are refused until start()."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def event_ids(self) -> list[str]:
        return [r.headers["Idempotency-Key"] for r in self.received]
