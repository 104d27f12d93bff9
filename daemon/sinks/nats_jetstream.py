"""NATS JetStream sink: each event one message, duplicates dropped by JetStream.

Each event is published on `subject` (a template with `{account}` and
`{type}`) with the header `Nats-Msg-Id: <event id>`, so JetStream drops a
redelivered event inside the stream's duplicate window; it counts as
delivered only on its PubAck (`duplicate: true` counts too). A batch is
published in one go, each message asking for its ack on the sink's own inbox
(`<inbox>.<batch>.<position>`); the acks are then checked in order, so a
failure part-way says exactly how many events at its head were taken.

Written on the client's plain `publish` rather than JetStream's
`publish_async`, which spends 2.5 times the CPU per message (a future, a
semaphore, a token and a dataclass for each ack: 71 against 28 µs measured
with nats-py 2.16), and the sink shares its core with the notification path.

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

import orjson
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


def _auth_options(
    token: Secret | None, user: str | None, password: Secret | None, creds_file: Path | None
) -> dict[str, Any]:
    """`nats.connect`'s credential arguments."""
    auth: dict[str, Any] = {}
    if token is not None:
        auth["token"] = token.reveal()
    if user is not None:
        auth["user"] = user
        auth["password"] = password.reveal() if password is not None else ""
    if creds_file is not None:
        auth["user_credentials"] = str(creds_file)
    return auth


class _BatchAcks:
    """The replies to one batch's messages, by position, as they arrive: message i
    asks for its ack on `reply + str(i)` (`reply`: the sink's inbox, the batch's number)."""

    def __init__(self, reply: str, size: int) -> None:
        self.reply = reply
        self.replies: list[Any] = [None] * size
        self._missing = size
        self.complete: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if size == 0:
            self.complete.set_result(None)

    def arrived(self, index: int, msg: Any) -> None:
        if 0 <= index < len(self.replies) and self.replies[index] is None:
            self.replies[index] = msg
            self._missing -= 1
            if self._missing == 0 and not self.complete.done():
                self.complete.set_result(None)


INSTALL = "pip install 'gws-notifyd[nats]'"
MSG_ID = "Nats-Msg-Id"
EXPECTED_STREAM = "Nats-Expected-Stream"  # refused unless the subject is `stream`'s
STATUS = "Status"
NO_RESPONDERS = "503"
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
        self._auth = _auth_options(token, user, password, creds_file)
        self._connection: Any = None
        self._inbox: str | None = None
        self._batch = 0
        self._acks: _BatchAcks | None = None
        self._refused: str | None = None
        self._last_error: str | None = None
        self.duplicates_dropped = 0

    def subject_of(self, row: OutboxRow) -> str:
        return self._subject.format(account=row.account, type=row.type)

    async def open(self) -> None:
        await self._ready()

    async def deliver(self, batch: Sequence[OutboxRow]) -> None:
        connection, inbox = await self._ready()
        self._batch += 1
        acks = self._acks = _BatchAcks(f"{inbox}.{self._batch}.", len(batch))
        headers = {MSG_ID: "", EXPECTED_STREAM: self._stream}
        reply = acks.reply
        # Formatted once per (account, type) of the batch, not once per event.
        subjects: dict[tuple[str, str], str] = {}
        try:
            for index, row in enumerate(batch):
                headers[MSG_ID] = row.event_id
                subject = subjects.get((row.account, row.type))
                if subject is None:
                    subject = subjects[row.account, row.type] = self.subject_of(row)
                await connection.publish(
                    subject, row.body, reply=reply + str(index), headers=headers
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._timeout):
                    await asyncio.shield(acks.complete)
        except nats_errors.Error as exc:  # the client gave up the connection mid-batch
            raise self._failure(exc, delivered=0) from None
        finally:
            self._acks = None
        self._check(acks)

    async def _on_ack(self, msg: Any) -> None:
        """A PubAck (or an error, or no responders) for one message of the batch
        in flight; those of a batch given up (timed out) are dropped."""
        acks = self._acks
        if acks is None or not msg.subject.startswith(acks.reply):
            return
        index = msg.subject[len(acks.reply) :]
        if index.isdigit():
            acks.arrived(int(index), msg)

    def _check(self, acks: _BatchAcks) -> None:
        """Every ack in order: the first missing or failed one says how many
        events at the head of the batch JetStream took."""
        for index, msg in enumerate(acks.replies):
            if msg is None:
                raise self._failure(TimeoutError("no ack"), delivered=index)
            if msg.headers and msg.headers.get(STATUS) == NO_RESPONDERS:
                raise self._failure(js_errors.NoStreamResponseError(), delivered=index)
            try:
                answer = orjson.loads(msg.data)
            except orjson.JSONDecodeError:
                raise self._failure(ValueError("unreadable ack"), delivered=index) from None
            if "error" in answer:
                try:  # raises the error's class (not found, bad request, ...)
                    js_errors.APIError.from_error(answer["error"])
                except js_errors.APIError as error:
                    raise self._failure(error, delivered=index) from None
            if answer.get("duplicate"):
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

    async def _ready(self) -> tuple[Any, str]:
        """The connection and the acks' inbox, connecting (and checking the stream)
        on first use."""
        if self._inbox is not None and self._connection.is_connected:
            return self._connection, self._inbox
        if self._connection is None or self._connection.is_closed:
            self._connection = await self._connect()
            self._inbox = None
        connection = self._connection
        await self._check_stream(connection.jetstream(timeout=self._timeout))
        if self._inbox is None:
            # One subscription for every ack (the client renews it after a reconnect).
            inbox = connection.new_inbox()
            await connection.subscribe(inbox + ".>", cb=self._on_ack)
            self._inbox = inbox
        return connection, self._inbox

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
