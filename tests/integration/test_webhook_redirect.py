"""The daemon's webhook sink meets a redirect: the event is dead-lettered, never sent elsewhere."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from daemon.simulator import Simulator
from tests.harness.daemon_process import DaemonProcess, run_cli, write_config
from tests.harness.waiting import wait_until

RECEIVED = web.AppKey("received", list)
REDIRECT_TO = web.AppKey("redirect_to", str)


async def _record(request: web.Request) -> web.Response:
    request.app[RECEIVED].append((request.method, request.path, dict(request.headers)))
    if REDIRECT_TO in request.app:
        return web.Response(status=302, headers={"Location": request.app[REDIRECT_TO]})
    return web.Response(text="ok")


@pytest.fixture
async def servers() -> AsyncIterator[tuple[str, list[Any], list[Any]]]:
    """(the webhook's URL, what it received, what the origin it redirects to received)."""
    runners: list[web.AppRunner] = []

    async def serve(received: list[Any], redirect_to: str | None) -> str:
        app = web.Application()
        app[RECEIVED] = received
        if redirect_to is not None:
            app[REDIRECT_TO] = redirect_to
        app.router.add_route("*", "/{tail:.*}", _record)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    endpoint: list[Any] = []
    elsewhere: list[Any] = []
    other_origin = await serve(elsewhere, None)
    url = await serve(endpoint, other_origin + "/stolen?token=s3cr3t") + "/hook"
    yield url, endpoint, elsewhere
    for runner in runners:
        await runner.cleanup()


async def test_a_redirecting_endpoint_dead_letters_the_event_and_nothing_follows_it(
    simulator: Simulator, tmp_path: Path, servers: tuple[str, list[Any], list[Any]]
) -> None:
    url, endpoint, elsewhere = servers
    assert simulator.base_url
    sinks = [{"name": "crm", "type": "webhook", "url": url, "secret": "whsec"}]
    config = write_config(tmp_path, gws_url=simulator.base_url, sinks=sinks)
    async with DaemonProcess(config) as daemon:
        status, _ = await daemon.send("REDIRECT-1")
        assert status == 200

        async def dead_lettered() -> dict[str, Any] | None:
            _, document = await daemon.get_json("/v1/status")
            [sink] = document["sinks"]
            return sink if sink["deadLetters"] == 1 else None

        sink = await wait_until(dead_lettered, timeout=10, what="a dead letter")
    assert "HTTP 302" in sink["lastError"]
    assert "/stolen" in sink["lastError"]
    assert "s3cr3t" not in sink["lastError"]
    assert [(method, path) for method, path, _ in endpoint] == [("POST", "/hook")]
    assert elsewhere == []

    code, out, _ = await run_cli("dead-letters", "list", "--config", str(config))
    assert code == 0
    assert "HTTP 302" in out
    assert "s3cr3t" not in out
