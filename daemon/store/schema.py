"""The schema, its migrations, and how a send maps to a row and back.

Each entry of `_MIGRATIONS` upgrades the schema by one version (kept in
`PRAGMA user_version`); a released entry is never edited.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from daemon.errors import StoreError
from daemon.sends import SendRecord, SendStatus
from daemon.store.rows import SendRow, SendUpdate

log = structlog.get_logger(logger_name="daemon.store")

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE sends (
            send_id TEXT PRIMARY KEY,
            email_id TEXT NOT NULL,
            queue_name TEXT NOT NULL,
            subject TEXT,
            recipients TEXT NOT NULL,
            requested_at REAL NOT NULL,
            status TEXT NOT NULL,
            reference_id INTEGER,
            answered_at REAL,
            resolved_at REAL,
            outcome_state TEXT,
            status_code INTEGER,
            status_message TEXT
        ) WITHOUT ROWID""",
        # By time only: requested_at never changes, so resolving a send (the
        # hot path) does not touch this index; an index on status cost 40 %
        # of the resolution's write.
        "CREATE INDEX sends_by_time ON sends(requested_at)",
        """CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id TEXT NOT NULL,
            type TEXT NOT NULL,
            email_id TEXT,
            created_at REAL NOT NULL,
            only_sink TEXT,
            body BLOB NOT NULL
        )""",
        "CREATE TABLE sink_cursors (sink TEXT PRIMARY KEY, seq INTEGER NOT NULL)",
        """CREATE TABLE dead_letters (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            sink TEXT NOT NULL,
            event_id TEXT,
            type TEXT,
            email_id TEXT,
            reason TEXT NOT NULL,
            detail TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            failed_at REAL NOT NULL,
            body BLOB NOT NULL
        )""",
        "CREATE INDEX dead_letters_by_sink ON dead_letters(sink, id)",
    ),
    (
        # One row, written by every readiness check: a real write, so that a
        # read-only file or a full disk shows before a Send needs the store.
        "CREATE TABLE heartbeat (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL)",
        "INSERT INTO heartbeat (id, at) VALUES (1, 0)",
        # Housekeeping prunes dead letters by age.
        "CREATE INDEX dead_letters_by_time ON dead_letters(failed_at)",
    ),
    (
        # Several GWS accounts in one daemon: every send and event names its own
        # (a store written before has one account, `default`).
        "ALTER TABLE sends ADD COLUMN account TEXT NOT NULL DEFAULT 'default'",
        "ALTER TABLE outbox ADD COLUMN account TEXT NOT NULL DEFAULT 'default'",
        "ALTER TABLE dead_letters ADD COLUMN account TEXT",
        # The CloudEvent's subject (an email id, a call's id, ...), for sinks that show it.
        "ALTER TABLE outbox ADD COLUMN subject TEXT",
        "ALTER TABLE dead_letters ADD COLUMN subject TEXT",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)


SEND_COLUMNS = (
    "send_id, email_id, queue_name, subject, recipients, requested_at, status, "
    "reference_id, answered_at, resolved_at, outcome_state, status_code, status_message, account"
)


def send_row(send: SendRecord) -> SendRow:
    """A new send as a row, taken now (for `commit_outcomes(inserts=...)`)."""
    return (
        send.send_id,
        send.email_id,
        send.queue_name,
        send.subject,
        "\x1f".join(send.to),
        send.requested_at,
        send.status.value,
        send.reference_id,
        send.answered_at,
        send.resolved_at,
        send.outcome_state,
        send.status_code,
        send.status_message,
        send.account,
    )


def send_update(send: SendRecord) -> SendUpdate:
    """The changing columns of a send, taken now (the store writes on another thread)."""
    return (
        send.status.value,
        send.reference_id,
        send.answered_at,
        send.resolved_at,
        send.outcome_state,
        send.status_code,
        send.status_message,
        send.send_id,
    )


def _same(text: str, _default: str) -> str:
    return text


def send_from_row(row: Sequence[Any], shared: dict[str, str] | None = None) -> SendRecord:
    """A send from its row. Queues and accounts repeat across many pending sends
    and are few: interned, one string object each. Subjects and addresses may
    repeat too, but most are unique, and interning those would grow the
    interpreter's table for good: a load of many rows passes `shared`, a
    dictionary for that load only."""
    share = shared.setdefault if shared is not None else _same
    subject = row[3]
    return SendRecord(
        send_id=row[0],
        email_id=row[1],
        queue_name=sys.intern(row[2]),
        subject=share(subject, subject) if subject is not None else None,
        to=tuple(share(a, a) for a in row[4].split("\x1f")) if row[4] else (),
        requested_at=row[5],
        status=SendStatus(row[6]),
        reference_id=row[7],
        answered_at=row[8],
        resolved_at=row[9],
        outcome_state=row[10],
        status_code=row[11],
        status_message=row[12],
        account=sys.intern(row[13]),
    )


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the schema of `db` up to SCHEMA_VERSION, one transaction per version."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"store {path} has schema version {version}; this gws-notifyd knows "
            f"up to {SCHEMA_VERSION} (downgrade is not supported)"
        )
    for number in range(version, SCHEMA_VERSION):
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _MIGRATIONS[number]:
                db.execute(statement)
            db.execute(f"PRAGMA user_version={number + 1}")
            db.execute("COMMIT")
        except sqlite3.Error:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        log.info("store_migrated", path=str(path), schema_version=number + 1)
