"""The store's row types: what goes in and what comes out, without any SQL.

Sinks, the dispatcher and the CLI import these; only `daemon.store.database`
and `daemon.store.schema` know how they are laid out in SQLite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from daemon.config import DEFAULT_ACCOUNT

# The dead-letter "sink" of notifications that could not be used at all.
MALFORMED_SINK = "(listener)"

# The changing columns of a send, taken on the caller's thread (see
# `schema.send_update`), so that later changes to the record do not leak into
# a write that runs on the store's thread.
SendUpdate = tuple[Any, ...]
# All columns of a new send (`schema.send_row`).
SendRow = tuple[Any, ...]


class StoredEvent(Protocol):
    """What the store needs of an event to append it to the outbox."""

    @property
    def id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def email_id(self) -> str | None: ...
    @property
    def time(self) -> float: ...
    @property
    def body(self) -> bytes: ...
    @property
    def account(self) -> str: ...
    @property
    def subject(self) -> str | None: ...


class KeptInput(Protocol):
    """Input that could not be used, kept as a dead letter of MALFORMED_SINK."""

    @property
    def channel(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def detail(self) -> str: ...
    @property
    def raw(self) -> bytes: ...


class OutboxRow(NamedTuple):
    """One event in the outbox, as a sink receives it."""

    seq: int
    event_id: str
    type: str
    email_id: str | None
    created_at: float
    body: bytes
    account: str = DEFAULT_ACCOUNT  # the GWS account the event is about
    subject: str | None = None  # the CloudEvent's subject


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    sink: str
    event_id: str | None
    type: str | None
    email_id: str | None
    reason: str
    detail: str | None
    attempts: int
    failed_at: float
    body: bytes
