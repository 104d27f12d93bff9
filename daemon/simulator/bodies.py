"""JSON in and out of the simulator's HTTP handlers (GWS's and the control API's)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

JSON = "application/json"


def json_response(obj: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type=JSON)


async def json_object(
    request: web.Request, refusal: Callable[[str], Exception], *, empty_ok: bool = False
) -> dict[str, Any]:
    """The request's body as a JSON object (`{}` for an empty one when `empty_ok`);
    otherwise raises `refusal(why)`, why being "is not valid JSON" or "must be a JSON object"."""
    raw = await request.read()
    if empty_ok and not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise refusal("is not valid JSON") from None
    if not isinstance(body, dict):
        raise refusal("must be a JSON object")
    return body
