"""SQLite store: pending sends, the outbox, per-sink cursors, dead letters.

The only module that speaks SQL. `Store` is synchronous (the CLI uses it as
it is); the daemon uses `AsyncStore`, which runs every call on one dedicated
thread so that the event loop never waits on disk and calls never interleave.

Rules it keeps:
- a send is written before it is forwarded to GWS (`commit_outcomes(inserts=)`,
  awaited by the API before it forwards);
- resolving sends and writing their events is one transaction
  (`commit_outcomes`); notifications are written many per transaction, never
  one per message (`OutcomeWriter` groups whatever arrives during a commit;
  the tracker hands over a large Bayeux answer in chunks of 2,000);
- an outbox row is deleted only once every sink's cursor has passed it
  (`prune_outbox`); a sink that gives up on an event moves it to dead letters
  first, in the same transaction that moves its cursor.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple, ParamSpec, TypeVar

import orjson
import structlog

from daemon.errors import StoreError
from daemon.events import Event
from daemon.gws.messages import Malformed
from daemon.sends import PENDING_STATUSES, SendRecord, SendStatus

log = structlog.get_logger(logger_name="daemon.store")

P = ParamSpec("P")
R = TypeVar("R")

MALFORMED_SINK = "(listener)"
# A checkpoint fsyncs; on a busy disk that stalls the commits around it for
# tens of milliseconds. Fewer, larger ones (measured: 4 MiB gave p99 19 ms at
# 5,000 notifications/s, 32 MiB 8-10 ms) keep the stalls out of the p99.
CHECKPOINT_WAL_BYTES = 32 * 1024 * 1024

# Each entry upgrades the schema by one version; never edit a released entry.
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
)
SCHEMA_VERSION = len(_MIGRATIONS)


class OutboxRow(NamedTuple):
    seq: int
    event_id: str
    type: str
    email_id: str | None
    created_at: float
    body: bytes


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


_SEND_COLUMNS = (
    "send_id, email_id, queue_name, subject, recipients, requested_at, status, "
    "reference_id, answered_at, resolved_at, outcome_state, status_code, status_message"
)


def send_row(send: SendRecord) -> tuple[Any, ...]:
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
    )


SendUpdate = tuple[Any, ...]


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


def _send_from_row(row: Sequence[Any]) -> SendRecord:
    # Queues, subjects and addresses repeat across many pending sends; one
    # string object each keeps 100k restored sends small.
    return SendRecord(
        send_id=row[0],
        email_id=row[1],
        queue_name=sys.intern(row[2]),
        subject=sys.intern(row[3]) if row[3] is not None else None,
        to=tuple(sys.intern(a) for a in row[4].split("\x1f")) if row[4] else (),
        requested_at=row[5],
        status=SendStatus(row[6]),
        reference_id=row[7],
        answered_at=row[8],
        resolved_at=row[9],
        outcome_state=row[10],
        status_code=row[11],
        status_message=row[12],
    )


class Store:
    def __init__(
        self,
        path: Path,
        *,
        synchronous: Literal["normal", "full"] = "normal",
        max_outbox_events: int = 1_000_000,
    ) -> None:
        self.path = path
        self.max_outbox_events = max_outbox_events
        self._checkpointer: sqlite3.Connection | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(path), isolation_level=None, check_same_thread=False, timeout=10.0
            )
            # 16 KiB pages hold a dozen events each: fewer pages to write, split
            # and free per batch than with 4 KiB (only takes effect on a new file).
            self._db.execute("PRAGMA page_size=16384")
            self._db.execute("PRAGMA journal_mode=WAL")
            # synchronous: in WAL mode NORMAL makes a commit reach the OS before
            # it returns, so it survives kill -9, an OOM kill or a crash of the
            # daemon (what the README promises); only a power cut or kernel
            # panic can lose the last commits. FULL adds an fsync per commit
            # (per Send, per notification batch) for hosts that must survive
            # power loss too: `store.synchronous = "full"`.
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._db.execute("PRAGMA busy_timeout=10000")
            # The daemon checkpoints from a thread of its own (`checkpoint`), so
            # that copying the WAL into the database never holds up a commit;
            # this automatic one (at 128 MiB of WAL) is only the backstop.
            self._db.execute("PRAGMA wal_autocheckpoint=8192")
            self._db.execute(f"PRAGMA journal_size_limit={64 * 1024 * 1024}")
            self._migrate()
            self._outbox_rows = self._scalar("SELECT COUNT(*) FROM outbox")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from None

    # -- plumbing --------------------------------------------------------------

    def checkpoint(self, *, min_wal_bytes: int = CHECKPOINT_WAL_BYTES) -> bool:
        """Copy the WAL into the database (PASSIVE: never waits for the writer).

        Uses a connection of its own: call it from one thread only, which is
        not the thread of the other methods.
        """
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            if wal.stat().st_size < min_wal_bytes:
                return False
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(
                    str(self.path), isolation_level=None, check_same_thread=False, timeout=10.0
                )
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except FileNotFoundError:
            return False
        except sqlite3.Error as exc:
            raise StoreError(f"checkpoint of {self.path} failed: {exc}") from None
        return True

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> int:
        row = self._db.execute(sql, params).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def _migrate(self) -> None:
        version = self._scalar("PRAGMA user_version")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store {self.path} has schema version {version}; this gws-notifyd knows "
                f"up to {SCHEMA_VERSION} (downgrade is not supported)"
            )
        for number in range(version, SCHEMA_VERSION):
            with self._transaction():
                for statement in _MIGRATIONS[number]:
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={number + 1}")
            log.info("store_migrated", path=str(self.path), schema_version=number + 1)

    def _transaction(self, *, write: bool = True) -> _Transaction:
        return _Transaction(self._db, write=write)

    def close(self) -> None:
        try:
            if self._checkpointer is not None:
                self._checkpointer.close()
            self._db.close()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot close store {self.path}: {exc}") from None

    def check_writable(self) -> None:
        """Raise StoreError unless a write transaction can be taken now."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise StoreError(f"store {self.path} is not writable: {exc}") from None

    # -- sends -------------------------------------------------------------------

    def insert_send(self, send: SendRecord) -> None:
        self.commit_outcomes(inserts=[send_row(send)])

    def update_send(self, send: SendRecord | SendUpdate) -> None:
        self.commit_outcomes(sends=[send])

    # Batches are written with ONE statement each, their rows packed into a
    # JSON parameter that SQLite unpacks in C. executemany() needs the GIL for
    # every row, and while the event loop is busy that wait (the GIL's 5 ms
    # switch interval) made a batch ten times slower than the SQL itself.

    def _update_sends_packed(self, updates: Sequence[SendUpdate]) -> None:
        self._db.execute(
            "UPDATE sends SET status = u.value ->> 0, reference_id = u.value ->> 1, "
            "answered_at = u.value ->> 2, resolved_at = u.value ->> 3, "
            "outcome_state = u.value ->> 4, status_code = u.value ->> 5, "
            "status_message = u.value ->> 6 "
            "FROM json_each(?) AS u WHERE sends.send_id = u.value ->> 7",
            (orjson.dumps(updates),),
        )

    def _insert_events_packed(self, events: Sequence[Event]) -> None:
        index = []
        position = 1  # substr() counts from 1
        for event in events:
            index.append(
                (event.id, event.type, event.email_id, event.time, position, len(event.body))
            )
            position += len(event.body)
        self._db.execute(
            "INSERT INTO outbox (event_id, type, email_id, created_at, body) "
            "SELECT e.value ->> 0, e.value ->> 1, e.value ->> 2, e.value ->> 3, "
            "substr(?2, e.value ->> 4, e.value ->> 5) FROM json_each(?1) AS e ORDER BY e.key",
            (orjson.dumps(index), b"".join(event.body for event in events)),
        )

    def load_pending(self) -> list[SendRecord]:
        marks = ",".join("?" * len(PENDING_STATUSES))
        rows = self._db.execute(
            f"SELECT {_SEND_COLUMNS} FROM sends WHERE status IN ({marks}) ORDER BY requested_at",
            PENDING_STATUSES,
        ).fetchall()
        return [_send_from_row(row) for row in rows]

    def get_send(self, send_id: str) -> SendRecord | None:
        row = self._db.execute(
            f"SELECT {_SEND_COLUMNS} FROM sends WHERE send_id=?", (send_id,)
        ).fetchone()
        return _send_from_row(row) if row else None

    def list_sends(
        self, statuses: Sequence[str] | None = None, limit: int = 1000
    ) -> list[SendRecord]:
        if statuses:
            marks = ",".join("?" * len(statuses))
            rows = self._db.execute(
                f"SELECT {_SEND_COLUMNS} FROM sends WHERE status IN ({marks}) "
                "ORDER BY requested_at DESC LIMIT ?",
                (*statuses, limit),
            ).fetchall()
        else:
            rows = self._db.execute(
                f"SELECT {_SEND_COLUMNS} FROM sends ORDER BY requested_at DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_send_from_row(row) for row in rows]

    def count_pending(self) -> int:
        marks = ",".join("?" * len(PENDING_STATUSES))
        return self._scalar(
            f"SELECT COUNT(*) FROM sends WHERE status IN ({marks})", PENDING_STATUSES
        )

    def prune_sends(self, resolved_before: float) -> int:
        marks = ",".join("?" * len(PENDING_STATUSES))
        with self._transaction():
            cursor = self._db.execute(
                f"DELETE FROM sends WHERE status NOT IN ({marks}) AND resolved_at < ?",
                (*PENDING_STATUSES, resolved_before),
            )
        return cursor.rowcount

    # -- outcomes: the one write path for events ---------------------------------

    def commit_outcomes(
        self,
        *,
        inserts: Sequence[tuple[Any, ...]] = (),
        sends: Sequence[SendRecord | SendUpdate] = (),
        events: Sequence[Event] = (),
        malformed: Sequence[Malformed] = (),
        cursors: dict[str, int] | None = None,
    ) -> int:
        """Update sends, append their events and keep malformed input, atomically.

        `sends` may be records or `send_update` tuples (taken on the caller's
        thread, so later changes to the record do not leak into this write).

        Returns the highest outbox seq written (0 if none).
        """
        now = time.time()
        updates = [s if isinstance(s, tuple) else send_update(s) for s in sends]
        with self._transaction():
            if inserts:
                self._db.executemany(
                    f"INSERT INTO sends ({_SEND_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    inserts,
                )
            if updates:
                self._update_sends_packed(updates)
            last = 0
            if events:
                self._insert_events_packed(events)
                last = self._scalar("SELECT last_insert_rowid()")
            if cursors:
                self._move_cursors(cursors)
            if malformed:
                self._db.executemany(
                    "INSERT INTO dead_letters (sink, reason, detail, failed_at, body) "
                    "VALUES (?,?,?,?,?)",
                    [
                        (MALFORMED_SINK, m.reason, f"{m.channel}: {m.detail}", now, m.raw)
                        for m in malformed
                    ],
                )
        self._outbox_rows += len(events)
        return last

    # -- outbox and cursors --------------------------------------------------------

    @property
    def outbox_rows(self) -> int:
        return self._outbox_rows

    def head_seq(self) -> int:
        return self._scalar("SELECT seq FROM sqlite_sequence WHERE name='outbox'")

    def sync_sinks(self, names: Sequence[str]) -> dict[str, int]:
        """Make the cursor table hold exactly `names`; returns every cursor.

        A sink seen for the first time starts at the oldest event still in the
        outbox, so nothing that was waiting is skipped for it.
        """
        with self._transaction():
            known = dict(self._db.execute("SELECT sink, seq FROM sink_cursors").fetchall())
            start = self._scalar("SELECT MIN(seq) FROM outbox")
            start = start - 1 if start else self.head_seq()
            for name in names:
                if name not in known:
                    self._db.execute(
                        "INSERT INTO sink_cursors (sink, seq) VALUES (?, ?)", (name, start)
                    )
                    known[name] = start
            for name in set(known) - set(names):
                self._db.execute("DELETE FROM sink_cursors WHERE sink=?", (name,))
                del known[name]
        return known

    def read_outbox(self, sink: str, after: int, limit: int) -> tuple[list[OutboxRow], int]:
        """Rows for `sink` after seq `after`, and the seq its cursor may move to.

        The second value passes rows meant only for other sinks (replays), so
        that an idle sink never holds the outbox back.
        """
        with self._transaction(write=False):
            rows = self._db.execute(
                "SELECT seq, event_id, type, email_id, created_at, body FROM outbox "
                "WHERE seq > ? AND (only_sink IS NULL OR only_sink = ?) ORDER BY seq LIMIT ?",
                (after, sink, limit),
            ).fetchall()
            if len(rows) < limit:
                horizon = max(self._scalar("SELECT MAX(seq) FROM outbox"), after)
            else:
                horizon = rows[-1][0]
        return [OutboxRow._make(row) for row in rows], horizon

    def set_cursors(self, cursors: dict[str, int]) -> None:
        """Move several sinks' cursors forward in one transaction (never back)."""
        with self._transaction():
            self._move_cursors(cursors)

    def _move_cursors(self, cursors: dict[str, int]) -> None:
        self._db.executemany(
            "UPDATE sink_cursors SET seq=? WHERE sink=? AND seq<?",
            [(seq, sink, seq) for sink, seq in cursors.items()],
        )

    def set_cursor(self, sink: str, seq: int) -> None:
        self.set_cursors({sink: seq})

    def cursors(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT sink, seq FROM sink_cursors").fetchall())

    def prune_outbox(self) -> int:
        """Delete the rows every sink has taken."""
        with self._transaction():
            low = self._db.execute("SELECT MIN(seq) FROM sink_cursors").fetchone()[0]
            if low is None:
                low = self._scalar("SELECT MAX(seq) FROM outbox")
            cursor = self._db.execute("DELETE FROM outbox WHERE seq <= ?", (low,))
        self._outbox_rows = max(0, self._outbox_rows - cursor.rowcount)
        return cursor.rowcount

    # -- dead letters -------------------------------------------------------------

    def dead_letter(
        self, sink: str, row: OutboxRow, *, reason: str, detail: str, attempts: int
    ) -> None:
        """Give up on one event for one sink, and move that sink past it."""
        with self._transaction():
            self._db.execute(
                "INSERT INTO dead_letters (sink, event_id, type, email_id, reason, detail, "
                "attempts, failed_at, body) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    sink,
                    row.event_id,
                    row.type,
                    row.email_id,
                    reason,
                    detail[:2000],
                    attempts,
                    time.time(),
                    row.body,
                ),
            )
            self._db.execute(
                "UPDATE sink_cursors SET seq=? WHERE sink=? AND seq<?", (row.seq, sink, row.seq)
            )

    def dead_letter_counts(self) -> dict[str, int]:
        return dict(
            self._db.execute("SELECT sink, COUNT(*) FROM dead_letters GROUP BY sink").fetchall()
        )

    def list_dead_letters(self, sink: str | None = None, limit: int = 100) -> list[DeadLetter]:
        sql = (
            "SELECT id, sink, event_id, type, email_id, reason, detail, attempts, failed_at, body "
            "FROM dead_letters"
        )
        params: tuple[Any, ...] = ()
        if sink is not None:
            sql += " WHERE sink=?"
            params = (sink,)
        rows = self._db.execute(sql + " ORDER BY id LIMIT ?", (*params, limit)).fetchall()
        return [DeadLetter(*row) for row in rows]

    def get_dead_letter(self, letter_id: int) -> DeadLetter | None:
        row = self._db.execute(
            "SELECT id, sink, event_id, type, email_id, reason, detail, attempts, failed_at, body "
            "FROM dead_letters WHERE id=?",
            (letter_id,),
        ).fetchone()
        return DeadLetter(*row) if row else None

    def replay_dead_letters(self, ids: Sequence[int]) -> int:
        """Put dead letters back into the outbox for their own sink only."""
        replayed = 0
        with self._transaction():
            for letter_id in ids:
                row = self._db.execute(
                    "SELECT sink, event_id, type, email_id, body FROM dead_letters "
                    "WHERE id=? AND sink != ?",
                    (letter_id, MALFORMED_SINK),
                ).fetchone()
                if row is None:
                    continue
                sink, event_id, type_, email_id, body = row
                self._db.execute(
                    "INSERT INTO outbox (event_id, type, email_id, created_at, only_sink, body) "
                    "VALUES (?,?,?,?,?,?)",
                    (event_id, type_, email_id, time.time(), sink, body),
                )
                self._db.execute("DELETE FROM dead_letters WHERE id=?", (letter_id,))
                replayed += 1
        self._outbox_rows += replayed
        return replayed

    def purge_dead_letters(self, ids: Sequence[int] | None = None, sink: str | None = None) -> int:
        with self._transaction():
            if ids is not None:
                marks = ",".join("?" * len(ids))
                cursor = self._db.execute(f"DELETE FROM dead_letters WHERE id IN ({marks})", ids)
            elif sink is not None:
                cursor = self._db.execute("DELETE FROM dead_letters WHERE sink=?", (sink,))
            else:
                cursor = self._db.execute("DELETE FROM dead_letters")
        return cursor.rowcount


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error; sqlite errors become StoreError."""

    def __init__(self, db: sqlite3.Connection, *, write: bool) -> None:
        self._db = db
        # IMMEDIATE takes the write lock up front, so a writer never fails
        # half-way on a lock held by the CLI in another process.
        self._begin = "BEGIN IMMEDIATE" if write else "BEGIN"

    def __enter__(self) -> None:
        try:
            self._db.execute(self._begin)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot begin a transaction: {exc}") from None

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        if error is None:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise StoreError(f"commit failed: {exc}") from None
            return
        self._db.execute("ROLLBACK")
        if isinstance(error, sqlite3.Error):
            raise StoreError(f"store write failed: {error}") from None


@dataclass(slots=True)
class _Group:
    done: asyncio.Future[int]
    inserts: list[tuple[Any, ...]] = field(default_factory=list)
    updates: list[SendUpdate] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    malformed: list[Malformed] = field(default_factory=list)


class OutcomeWriter:
    """Group commit: what is written while a transaction runs goes into the next one.

    When the store is idle a write starts its transaction at once (no added
    latency); under load, the batches, sends and updates that arrive during
    one commit share the next, so the cost of a transaction (locks, WAL
    append, the hand-over to the store's thread) is paid per group, not per
    batch. Writes are committed in the order they were made.
    """

    def __init__(
        self,
        store: AsyncStore,
        on_committed: Callable[[int, Sequence[Event]], None],
        cursors: Callable[[], dict[str, int] | None] = lambda: None,
    ) -> None:
        self._store = store
        self._on_committed = on_committed
        # Sink cursors ride along with every transaction (no extra commit),
        # so after a crash little is delivered twice.
        self._cursors = cursors
        self._next: _Group | None = None
        self._running: _Group | None = None
        self.failure: BaseException | None = None

    def write(
        self,
        *,
        inserts: Sequence[tuple[Any, ...]] = (),
        updates: Sequence[SendUpdate] = (),
        events: Sequence[Event] = (),
        malformed: Sequence[Malformed] = (),
    ) -> asyncio.Future[int]:
        """Queue rows; the future is done when they are committed (result: last seq)."""
        if self.failure is not None:
            raise StoreError(f"an earlier write failed: {self.failure}")
        group = self._next
        if group is None:
            group = self._next = _Group(asyncio.get_running_loop().create_future())
        group.inserts.extend(inserts)
        group.updates.extend(updates)
        group.events.extend(events)
        group.malformed.extend(malformed)
        if self._running is None:
            self._launch()
        return group.done

    @property
    def queued_events(self) -> int:
        """Events waiting for the transaction after the running one."""
        return len(self._next.events) if self._next is not None else 0

    def _launch(self) -> None:
        group, self._next = self._next, None
        assert group is not None
        self._running = group
        commit = self._store.submit(
            self._store.store.commit_outcomes,
            inserts=group.inserts,
            sends=group.updates,
            events=group.events,
            malformed=group.malformed,
            cursors=self._cursors(),
        )
        commit.add_done_callback(lambda finished: self._finished(group, finished))

    def _finished(self, group: _Group, commit: asyncio.Future[int]) -> None:
        self._running = None
        error = commit.exception() if not commit.cancelled() else StoreError("cancelled")
        if error is not None:
            self.failure = error
            log.error("store_write_failed", error=str(error))
            group.done.set_exception(error)
            group.done.exception()  # retrieved here: the failure is reported above
        else:
            head = commit.result()
            if group.events:
                # One transaction holds the write lock: its rows have
                # consecutive seqs ending at `head`.
                self._on_committed(head, group.events)
            group.done.set_result(head)
        if self._next is not None:
            self._launch()

    async def flush(self) -> None:
        """Wait until everything written so far is committed."""
        while (group := self._next or self._running) is not None:
            with contextlib.suppress(StoreError):
                await asyncio.shield(group.done)
            if self.failure is not None:
                raise StoreError(f"a write failed: {self.failure}")


class AsyncStore:
    """Runs `Store` calls on one thread, in the order they were made."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._checkpoints = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")

    async def run(self, call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        return await self.submit(call, *args, **kwargs)

    def submit(self, call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[R]:
        """Queue a call now (order is kept); await the future for its result."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._thread, lambda: call(*args, **kwargs))

    async def checkpoint(self) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._checkpoints, self.store.checkpoint)

    async def close(self) -> None:
        self._checkpoints.shutdown(wait=True)
        await self.run(self.store.close)
        self._thread.shutdown(wait=True)
