"""Webhook sink: POSTs CloudEvents to an HTTP endpoint.

Per event (structured mode, `Content-Type: application/cloudevents+json`) or
one JSON array per batch (`batch_mode = "array"`,
`application/cloudevents-batch+json`). Each request carries
`Idempotency-Key` (the event id; for an array, the id of its first event and
`Idempotency-Keys` with all of them) and, when a secret is configured,

    Gws-Notifyd-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>,
                           v2=<hex HMAC-SHA256(secret, "<t>.<Idempotency-Key>.<body>")>

A receiver recomputes an HMAC, compares in constant time and rejects
timestamps more than `REPLAY_WINDOW_SECONDS` away; v2 also binds the
Idempotency-Key, so a captured request cannot be replayed under another key
past the receiver's deduplication (README, "Webhook").

Retry classification (the dispatcher acts on it): 2xx taken; 408, 429, 5xx,
timeouts and connection errors retryable; any other status permanent,
redirects included: they are never followed (a redirect would take the event,
its headers and its signature somewhere nobody configured).

The URL is shown (errors, dead letters, /v1/status) without userinfo, query
or fragment, where credentials hide; so is a redirect's Location.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
import time
from collections.abc import Sequence

import aiohttp
from yarl import URL

from daemon import __version__
from daemon.config import Secret
from daemon.errors import PermanentSinkError, RetryableSinkError
from daemon.sinks.base import Sink
from daemon.sinks.urls import redacted_url
from daemon.store.rows import OutboxRow

RETRYABLE_STATUSES = frozenset({408, 429})
SIGNATURE_HEADER = "Gws-Notifyd-Signature"
ARRAY_MAX_EVENTS = 200
# How far a signature's timestamp may be from the receiver's clock.
REPLAY_WINDOW_SECONDS = 300
# What is read of an answer: enough to keep the connection for the next POST;
# a longer answer costs its connection instead of the sink's time.
MAX_ANSWER_BYTES = 64 * 1024


def _hmac(secret: bytes, *parts: bytes) -> str:
    return hmac.new(secret, b".".join(parts), hashlib.sha256).hexdigest()


def sign(secret: bytes, timestamp: int, body: bytes, idempotency_key: str | None = None) -> str:
    """The signature header: v1 over "<t>.<body>", and v2 over "<t>.<key>.<body>" given a key."""
    t = str(timestamp).encode()
    header = f"t={timestamp},v1={_hmac(secret, t, body)}"
    if idempotency_key is not None:
        header += f",v2={_hmac(secret, t, idempotency_key.encode(), body)}"
    return header


def verify(
    secret: bytes,
    header: str,
    body: bytes,
    *,
    now: float,
    tolerance: float = REPLAY_WINDOW_SECONDS,
    idempotency_key: str | None = None,
) -> bool:
    """What a receiver does; shipped so integrators can test their endpoint.

    With `idempotency_key` (the request's Idempotency-Key) and a v2 in the
    header, v2 decides; otherwise v1.
    """
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    t = str(timestamp).encode()
    if idempotency_key is not None and "v2" in fields:
        given, expected = fields["v2"], _hmac(secret, t, idempotency_key.encode(), body)
    else:
        given, expected = fields.get("v1", ""), _hmac(secret, t, body)
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))


def classify(status: int) -> bool | None:
    """True: taken. False: retry. None: permanent failure."""
    if 200 <= status < 300:
        return True
    if status in RETRYABLE_STATUSES or status >= 500:
        return False
    return None


async def _read_some(response: aiohttp.ClientResponse) -> None:
    """Read the answer up to MAX_ANSWER_BYTES; past that, drop the connection unread."""
    remaining = MAX_ANSWER_BYTES
    while remaining > 0:
        chunk = await response.content.read(remaining)
        if not chunk:
            return
        remaining -= len(chunk)
    response.close()


class WebhookSink(Sink):
    kind = "webhook"

    def __init__(
        self,
        *,
        name: str,
        url: str,
        secret: Secret | None = None,
        timeout_seconds: float = 10.0,
        headers: Sequence[tuple[str, str]] = (),
        verify_tls: bool = True,
        batch_mode: str = "single",
    ) -> None:
        self.name = name
        self.url = url
        self._shown_url = redacted_url(url)
        self._secret = secret.reveal().encode() if secret is not None else None
        self._headers = {"User-Agent": f"gws-notifyd/{__version__}", **dict(headers)}
        self._batch_mode = batch_mode
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_seconds),
            connector=aiohttp.TCPConnector(ssl=verify_tls, limit=4),
        )

    async def deliver(self, batch: Sequence[OutboxRow]) -> None:
        if self._batch_mode == "array":
            # One POST per ARRAY_MAX_EVENTS: their Idempotency-Keys header (37
            # bytes an id) must stay under the 8 KiB most servers take in a header.
            for start in range(0, len(batch), ARRAY_MAX_EVENTS):
                part = batch[start : start + ARRAY_MAX_EVENTS]
                await self._post(
                    b"[" + b",".join(row.body for row in part) + b"]",
                    "application/cloudevents-batch+json",
                    {
                        "Idempotency-Key": part[0].event_id,
                        "Idempotency-Keys": ",".join(row.event_id for row in part),
                    },
                    delivered=start,
                )
            return
        for index, row in enumerate(batch):
            await self._post(
                row.body,
                "application/cloudevents+json",
                {"Idempotency-Key": row.event_id},
                delivered=index,
            )

    async def _post(
        self, body: bytes, content_type: str, extra: dict[str, str], *, delivered: int
    ) -> None:
        headers = {**self._headers, **extra, "Content-Type": content_type}
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(
                self._secret, int(time.time()), body, extra["Idempotency-Key"]
            )
        try:
            async with self._http.post(
                self.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                await _read_some(response)
                status, location = response.status, response.headers.get("Location")
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError) as exc:
            raise RetryableSinkError(
                f"sink {self.name}: POST {self._shown_url} failed: {type(exc).__name__}",
                delivered=delivered,
            ) from None
        verdict = classify(status)
        if verdict is True:
            return
        message = f"sink {self.name}: POST {self._shown_url} answered HTTP {status}"
        if verdict is False:
            raise RetryableSinkError(message, delivered=delivered)
        if 300 <= status < 400:
            message += f" (redirects are not followed; Location: {self._location(location)})"
        raise PermanentSinkError(message, delivered=delivered)

    def _location(self, location: str | None) -> str:
        if location is None:
            return "none"
        try:
            return redacted_url(URL(self.url).join(URL(location)))
        except ValueError:
            return "(unparsable)"

    async def close(self) -> None:
        await self._http.close()
