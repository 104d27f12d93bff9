"""NATS JetStream sink: each event one message, duplicates dropped by JetStream.

Each event is published on `subject` (a template with `{account}` and
`{type}`) with the header `Nats-Msg-Id: <event id>`, so JetStream drops a
redelivered event inside the stream's duplicate window; it counts as
delivered only on its PubAck (`duplicate: true` counts too). A batch is
published in one go and its acks awaited in order, so a failure part-way
says exactly how many events at its head were taken.

The stream must exist, or `create_stream = true` creates it with `subjects`
and `duplicate_window_seconds`. Classification: no connection, no ack in
time, no responders, a stream leader missing: retried with the sink's
backoff; the stream not found (with create_stream off) or a permissions
violation: dead letter.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from daemon.config import Secret
from daemon.errors import PermanentSinkError, RetryableSinkError, SinkError
from daemon.sinks.base import Sink
from daemon.sinks.urls import redacted_url
from daemon.store.rows import OutboxRow

try:  # an optional extra: `pip install 'gws-notifyd[nats]'`
    import nats
    import nats.errors as nats_errors
    import nats.js.errors as js_errors
    from nats.js.api import StreamConfig
except ImportError:  # pragma: no cover - config check names the install command
    nats = None  # type: ignore[assignment]

log = structlog.get_logger(logger_name="daemon.sinks.nats")

INSTALL = "pip install 'gws-notifyd[nats]'"
MSG_ID = "Nats-Msg-Id"
# JetStream API error codes that will not mend themselves.
_STREAM_NOT_FOUND = 10059
_WRONG_STREAM = 10060  # the subject belongs to another stream than `stream`


class NatsJetStreamSink(Sink):
    kind = "nats"

    def __init__(
        self,
        *,
        name: str,
        servers: Sequence[str],
        subject: str,
        stream: str,
        create_stream: bool = False,
        subjects: Sequence[str] = (),
        duplicate_window_seconds: float = 120.0,
        token: Secret | None = None,
        user: str | None = None,
        password: Secret | None = None,
        creds_file: Path | None = None,
        timeout_seconds: float = 10.0,
    ) -> None:
        if nats is None:
            raise SinkError(f"sink {name}: the nats client is not installed ({INSTALL})")
        self.name = name
        self._servers = list(servers)
        self._shown = ", ".join(redacted_url(s) for s in servers)
        self._subject = subject
        self._stream = stream
        self._create = create_stream
        self._subjects = list(subjects)
        self._window = duplicate_window_seconds
        self._timeout = timeout_seconds
        self._auth: dict[str, Any] = {}
        if token is not None:
            self._auth["token"] = token.reveal()
        if user is not None:
            self._auth["user"] = user
            self._auth["password"] = password.reveal() if password is not None else ""
        if creds_file is not None:
            self._auth["user_credentials"] = str(creds_file)
        self._connection: Any = None
        self._jetstream: Any = None
        self._refused: str | None = None
        self._last_error: str | None = None
        self.duplicates_dropped = 0

    def subject_of(self, row: OutboxRow) -> str:
        return self._subject.format(account=row.account, type=row.type)

    async def deliver(self, batch: Sequence[OutboxRow]) -> None:
        jetstream = await self._ready()
        acks = []
        try:
            for row in batch:
                acks.append(
                    await jetstream.publish_async(
                        self.subject_of(row),
                        row.body,
                        headers={MSG_ID: row.event_id},
                        stream=self._stream,
                    )
                )
            await self._await_acks(acks)
        finally:
            for ack in acks:
                ack.cancel()  # those not awaited: their slot is freed

    async def _await_acks(self, acks: list[asyncio.Future[Any]]) -> None:
        """Every ack within the timeout; the first missing or failed one says how
        many events at the head of the batch JetStream took."""
        done, _ = await asyncio.wait(acks, timeout=self._timeout)
        for index, ack in enumerate(acks):
            if ack not in done:
                raise self._failure(TimeoutError("no ack"), delivered=index)
            error = ack.exception()
            if error is not None:
                raise self._failure(error, delivered=index)
            if ack.result().duplicate:
                self.duplicates_dropped += 1

    def _failure(self, error: BaseException, *, delivered: int) -> SinkError:
        if isinstance(error, js_errors.APIError) and error.err_code in (
            _STREAM_NOT_FOUND,
            _WRONG_STREAM,
        ):
            return PermanentSinkError(
                f"sink {self.name}: stream {self._stream!r}: {error.description}",
                delivered=delivered,
            )
        if isinstance(error, TimeoutError) and self._refused is not None:
            # A publish the server refused gets no ack at all: the refusal
            # came through the error callback.
            return PermanentSinkError(f"sink {self.name}: {self._refused}", delivered=delivered)
        return RetryableSinkError(
            f"sink {self.name}: no ack from {self._shown}: {type(error).__name__} {error}".strip(),
            delivered=delivered,
        )

    async def _ready(self) -> Any:
        """The JetStream context, connecting (and checking the stream) on first use."""
        if self._jetstream is not None and self._connection.is_connected:
            return self._jetstream
        if self._connection is None or self._connection.is_closed:
            self._connection = await self._connect()
        jetstream = self._connection.jetstream(timeout=self._timeout)
        await self._check_stream(jetstream)
        self._jetstream = jetstream
        return jetstream

    async def _connect(self) -> Any:
        # Bounded: the client keeps trying its servers (once connected, it
        # reconnects on its own for ever); the first connection is the sink's
        # backoff's business, so that a refused credential is retried calmly.
        self._last_error = None
        try:
            async with asyncio.timeout(self._timeout):
                return await nats.connect(
                    servers=self._servers,
                    connect_timeout=min(self._timeout, 5.0),
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1.0,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    **self._auth,
                )
        except (nats_errors.Error, OSError, TimeoutError) as exc:
            cause = self._last_error or type(exc).__name__
            raise RetryableSinkError(
                f"sink {self.name}: cannot connect to {self._shown}: {cause}"
            ) from None

    async def _check_stream(self, jetstream: Any) -> None:
        try:
            await jetstream.stream_info(self._stream)
        except js_errors.NotFoundError:
            if not self._create:
                raise PermanentSinkError(
                    f"sink {self.name}: stream {self._stream!r} not found "
                    "(create it, or set create_stream = true)"
                ) from None
            await self._create_stream(jetstream)
        except (nats_errors.Error, TimeoutError) as exc:
            raise RetryableSinkError(
                f"sink {self.name}: stream {self._stream!r} unavailable: {type(exc).__name__}"
            ) from None

    async def _create_stream(self, jetstream: Any) -> None:
        config = StreamConfig(
            name=self._stream,
            subjects=self._subjects or [self._subject.format(account="*", type=">")],
            duplicate_window=self._window,
        )
        try:
            await jetstream.add_stream(config)
        except (nats_errors.Error, TimeoutError) as exc:
            raise RetryableSinkError(
                f"sink {self.name}: cannot create stream {self._stream!r}: {exc}"
            ) from None
        log.info("nats_stream_created", sink=self.name, stream=self._stream)

    async def _on_error(self, error: Exception) -> None:
        message = str(error)[:300]
        if "permissions violation" in message.lower():
            self._refused = message
        if message != self._last_error:  # once per kind, not once per reconnect attempt
            log.warning("nats_error", sink=self.name, error=message)
        self._last_error = message

    async def _on_disconnected(self) -> None:
        log.warning("nats_disconnected", sink=self.name, servers=self._shown)

    async def close(self) -> None:
        if self._connection is not None and not self._connection.is_closed:
            with contextlib.suppress(Exception):
                await self._connection.drain()
