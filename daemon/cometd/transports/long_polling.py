"""Long-polling: one HTTP POST per exchange, on the caller's aiohttp session.

Owns the POST, the HTTP status and the bound on an answer's size (a server
puts its whole queue into one answer). The answer holds the replies and any
data queued for us; both are returned together, in order.

It never holds data back, and never lets an aiohttp error escape.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
from yarl import URL

from daemon.cometd.errors import (
    OversizedResponseError,
    SessionRefusedError,
    TransportError,
    UnknownClientError,
)
from daemon.cometd.messages import Answer, parse_answer
from daemon.cometd.transports.base import LONG_POLLING, HeaderSource, Transport, no_headers

_CONTENT_TYPE = {"Content-Type": "application/json;charset=UTF-8"}


class LongPollingTransport(Transport):
    """One HTTP POST per exchange; the answer holds the replies and queued data."""

    name = LONG_POLLING

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        url: URL,
        max_response_bytes: int,
        headers: HeaderSource = no_headers,
    ) -> None:
        self._session = session
        self._url = url
        self._max = max_response_bytes
        self._headers = headers

    async def exchange(self, messages: list[dict[str, Any]], *, timeout: float) -> Answer:
        try:
            async with self._session.post(
                self._url,
                data=orjson.dumps(messages),
                headers={**self._headers(), **_CONTENT_TYPE},
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                if response.status != 200:
                    raise _refusal(response.status, self._url)
                body = await _read_bounded(response, self._max)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(f"{type(exc).__name__} on {self._url}: {exc}") from None
        return parse_answer(body)


def _refusal(status: int, url: URL) -> TransportError | UnknownClientError:
    # A Bayeux server says "unknown client" inside a 200. An HTTP 401/403 is
    # the HTTP session under Bayeux refused (credentials, cookie, CSRF token).
    if status in (401, 403):
        return SessionRefusedError(f"HTTP {status} from {url}")
    if status == 402:
        return UnknownClientError(f"HTTP {status} from {url}")
    return TransportError(f"HTTP {status} from {url}")


async def _read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    length = response.content_length
    if length is not None and length > limit:
        raise OversizedResponseError(f"response of {length} bytes exceeds {limit}")
    if length is not None:
        return await response.read()
    buffer = bytearray()
    async for chunk in response.content.iter_any():
        buffer += chunk
        if len(buffer) > limit:
            raise OversizedResponseError(f"response exceeds {limit} bytes")
    return bytes(buffer)
