"""The Bayeux client's edges: what it makes of bad answers, and its error codes."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from daemon.cometd import (
    BayeuxClient,
    ClientSettings,
    Message,
    TransportError,
    _is_unknown_client,
    _parse_body,
)


@pytest.mark.parametrize(
    "error",
    ["402::Unknown client", "402::session_unknown", "401:abc123:Unknown client"],
)
def test_unknown_client_errors_of_cometd_and_faye_are_recognised(error: str) -> None:
    assert _is_unknown_client(error)


@pytest.mark.parametrize("error", ["403::forbidden", "500::oops", None, 402, ""])
def test_other_errors_are_not_unknown_client(error: Any) -> None:
    assert not _is_unknown_client(error)


@pytest.mark.parametrize("body", [b"<html>502 Bad Gateway</html>", b"", b"\xff\xfe", b"42"])
def test_a_body_that_is_not_a_json_array_is_a_transport_error(body: bytes) -> None:
    with pytest.raises(TransportError):
        _parse_body(body)


def test_a_single_object_is_taken_as_a_batch_of_one() -> None:
    assert _parse_body(b'{"channel":"/meta/connect","successful":true}') == [
        {"channel": "/meta/connect", "successful": True}
    ]


async def test_garbage_answers_are_retried_until_the_server_makes_sense() -> None:
    """A proxy answering HTML for a while does not stop the client."""
    garbage_left = 3
    delivered: list[Message] = []
    got_data = asyncio.Event()

    async def bayeux(request: web.Request) -> web.Response:
        nonlocal garbage_left
        messages = orjson.loads(await request.read())
        if garbage_left:
            garbage_left -= 1
            return web.Response(text="<html>proxy error</html>", content_type="text/html")
        replies: list[dict[str, Any]] = []
        for message in messages:
            channel = message["channel"]
            reply = {"channel": channel, "id": message.get("id"), "successful": True}
            if channel == "/meta/handshake":
                reply |= {
                    "clientId": "c1",
                    "version": "1.0",
                    "supportedConnectionTypes": ["long-polling"],
                }
            elif channel == "/meta/subscribe":
                reply["subscription"] = message["subscription"]
            elif channel == "/meta/connect" and not delivered:
                replies.append({"channel": "/v2/me/emails", "data": {"n": 1}})
            replies.append(reply)
        return web.json_response(replies)

    app = web.Application()
    app.router.add_post("/cometd", bayeux)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]

    async def on_batch(batch: list[Message]) -> None:
        delivered.extend(batch)
        got_data.set()

    try:
        async with aiohttp.ClientSession() as session:
            client = BayeuxClient(
                session=session,
                settings=ClientSettings(
                    url=f"http://127.0.0.1:{port}/cometd",
                    channels=("/v2/me/emails",),
                    allow_websocket=False,
                ),
                on_batch=on_batch,
            )
            running = asyncio.create_task(client.run())
            await asyncio.wait_for(got_data.wait(), 15)
            await client.close()
            await asyncio.wait_for(running, 5)
    finally:
        await runner.cleanup()
    assert delivered == [Message("/v2/me/emails", {"n": 1})]
    assert garbage_left == 0
