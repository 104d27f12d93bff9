"""Webhook sink: POSTs CloudEvents to an HTTP endpoint.

Per event (structured mode, `Content-Type: application/cloudevents+json`) or
one JSON array per batch (`batch_mode = "array"`,
`application/cloudevents-batch+json`). Each request carries
`Idempotency-Key` (the event id; for an array, the id of its first event and
`Idempotency-Keys` with all of them) and, when a secret is configured,

    Gws-Notifyd-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>

A receiver recomputes the HMAC over the timestamp, a dot and the raw body,
compares in constant time and rejects stale timestamps (README, "Webhook").

Retry classification (the dispatcher acts on it): 2xx taken; 408, 429, 5xx,
timeouts and connection errors retryable; any other status permanent.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
import time
from collections.abc import Sequence

import aiohttp

from daemon import __version__
from daemon.config import Secret
from daemon.errors import PermanentSinkError, RetryableSinkError
from daemon.sinks.base import Sink
from daemon.store.rows import OutboxRow

RETRYABLE_STATUSES = frozenset({408, 429})
SIGNATURE_HEADER = "Gws-Notifyd-Signature"


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: bytes, header: str, body: bytes, *, now: float, tolerance: float = 300) -> bool:
    """What a receiver does; shipped so integrators can test their endpoint."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected.encode(), fields.get("v1", "").encode())


def classify(status: int) -> bool | None:
    """True: taken. False: retry. None: permanent failure."""
    if 200 <= status < 300:
        return True
    if status in RETRYABLE_STATUSES or status >= 500:
        return False
    return None


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
        self._secret = secret.reveal().encode() if secret is not None else None
        self._headers = {"User-Agent": f"gws-notifyd/{__version__}", **dict(headers)}
        self._batch_mode = batch_mode
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_seconds),
            connector=aiohttp.TCPConnector(ssl=verify_tls, limit=4),
        )

    async def deliver(self, batch: Sequence[OutboxRow]) -> None:
        if self._batch_mode == "array":
            body = b"[" + b",".join(row.body for row in batch) + b"]"
            await self._post(
                body,
                "application/cloudevents-batch+json",
                {
                    "Idempotency-Key": batch[0].event_id,
                    "Idempotency-Keys": ",".join(row.event_id for row in batch),
                },
                delivered=0,
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
            headers[SIGNATURE_HEADER] = sign(self._secret, int(time.time()), body)
        try:
            async with self._http.post(self.url, data=body, headers=headers) as response:
                await response.read()
                verdict = classify(response.status)
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError) as exc:
            raise RetryableSinkError(
                f"sink {self.name}: POST {self.url} failed: {type(exc).__name__}",
                delivered=delivered,
            ) from None
        if verdict is True:
            return
        message = f"sink {self.name}: POST {self.url} answered HTTP {response.status}"
        if verdict is False:
            raise RetryableSinkError(message, delivered=delivered)
        raise PermanentSinkError(message, delivered=delivered)

    async def close(self) -> None:
        await self._http.close()
