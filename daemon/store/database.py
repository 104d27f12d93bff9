"""The synchronous SQL: `Store` and its transactions. With `dead_letters`, the only
module that writes SQL.

The CLI uses `Store` as it is; the daemon reaches it through `AsyncStore`
(`daemon.store.bridge`), which runs every call on one dedicated thread.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import orjson

from daemon.config import Route
from daemon.errors import StoreError
from daemon.sends import PENDING_STATUSES, SendRecord
from daemon.store.dead_letters import DeadLetters
from daemon.store.files import (
    check_free_space,
    check_pages,
    connect,
    corrupt,
    prepare,
    wal_state,
)
from daemon.store.rows import (
    MALFORMED_SINK,
    KeptInput,
    OutboxRow,
    SendRow,
    SendUpdate,
    StoredEvent,
)
from daemon.store.schema import SEND_COLUMNS, migrate, send_from_row, send_update
from daemon.store.transaction import PRUNE_SLICE, corrupted, sql_errors

# The daemon's checkpoints (on a thread of their own) copy the WAL into the
# database once this much of it is not copied yet: each one fsyncs twice.
CHECKPOINT_WAL_BYTES = 32 * 1024 * 1024
# Under a steady stream those copies never catch up with the writer, so the WAL
# only starts over from its beginning at SQLite's own checkpoint, which a
# commit runs past this size: its two fsyncs (tens of ms on a VM's disk) stall
# that commit. 256 MiB makes it once every ~20 s at 5,000 events/s (measured
# with 64 MiB: stalls of 30-60 ms every ~5 s). The WAL file keeps that size
# (truncating it is one more stall) unless it ever grew to twice as much.
WAL_RESTART_BYTES = 256 * 1024 * 1024
# What that commit copies and fsyncs is what the daemon's checkpoints left: within
# this margin of the size they copy whatever there is (each look, 4 a second),
# so that it is a fraction of a second's worth, not up to CHECKPOINT_WAL_BYTES
# (measured at 5,000 events/s: a 190 ms stall with up to 32 MiB left).
RESTART_MARGIN = 2 * CHECKPOINT_WAL_BYTES


class Store(DeadLetters):
    """`check_pages`: look at every page first (bounded, `files.check_pages`): the
    daemon does at start; the CLI's short looks at the store do not."""

    def __init__(
        self,
        path: Path,
        *,
        synchronous: Literal["normal", "full"] = "normal",
        busy_timeout_seconds: float = 10.0,
        check_pages: bool = False,
    ) -> None:
        self.path = path
        self._checkpointer: sqlite3.Connection | None = None
        self._busy_timeout = busy_timeout_seconds
        prepare(path)
        try:
            self._db = connect(path, busy_timeout_seconds)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from None
        try:
            self._open(synchronous, check=check_pages)
        except sqlite3.Error as exc:
            self._db.close()
            if corrupted(exc):
                raise corrupt(path, str(exc)) from None
            raise StoreError(f"cannot open store {path}: {exc}") from None
        except StoreError:
            self._db.close()
            raise

    def _open(self, synchronous: str, *, check: bool) -> None:
        db = self._db
        # 4 KiB pages (only takes effect on a new file): a commit writes every
        # page it touches whole into the WAL (the outbox's last leaf, the sends'
        # leaves, the cursors), half the bytes of 16 KiB pages per event, so the
        # WAL starts over half as often (see WAL_RESTART_BYTES).
        db.execute("PRAGMA page_size=4096")
        db.execute("PRAGMA journal_mode=WAL")
        # synchronous: in WAL mode NORMAL makes a commit reach the OS before it
        # returns: it survives kill -9, an OOM kill or a crash of the daemon (what
        # the README promises); a power cut or kernel panic may lose the last
        # commits. FULL (an fsync per commit) survives those too.
        db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        # The daemon checkpoints from a thread of its own (`checkpoint`), so
        # that copying the WAL into the database does not hold up a commit;
        # this automatic one starts the WAL over (see WAL_RESTART_BYTES).
        page_size = self._scalar("PRAGMA page_size")
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_RESTART_BYTES // page_size}")
        db.execute(f"PRAGMA journal_size_limit={2 * WAL_RESTART_BYTES}")
        if check:
            check_pages(db, self.path)
        migrate(db, self.path)
        self._outbox_rows = self._scalar("SELECT COUNT(*) FROM outbox")

    # -- plumbing --------------------------------------------------------------

    def checkpoint(self, *, min_wal_bytes: int = CHECKPOINT_WAL_BYTES) -> bool:
        """Copy the WAL into the database (PASSIVE: never waits for the writer)
        once `min_wal_bytes` of it are not copied yet, or whatever is not when
        the WAL nears the size at which it starts over. True if it did.

        Uses a connection of its own: call it from one thread only, which is
        not the thread of the other methods.
        """
        wal = wal_state(self.path)
        try:
            if wal is None:
                if self.path.with_name(self.path.name + "-wal").stat().st_size < min_wal_bytes:
                    return False
            elif wal.backlog == 0 or (
                wal.backlog < min_wal_bytes and wal.written < WAL_RESTART_BYTES - RESTART_MARGIN
            ):
                return False
            if self._checkpointer is None:
                self._checkpointer = connect(self.path, self._busy_timeout)
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except FileNotFoundError:
            return False
        except sqlite3.Error as exc:
            raise StoreError(f"checkpoint of {self.path} failed: {exc}") from None
        return True

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> int:
        row = self._db.execute(sql, params).fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def close(self) -> None:
        try:
            if self._checkpointer is not None:
                self._checkpointer.close()
            self._db.close()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot close store {self.path}: {exc}") from None

    def check_writable(self) -> None:
        """Raise StoreError unless a real write commits now and the disk has room.

        A write, not BEGIN/ROLLBACK: a read-only file, a full disk or a lock
        held past the busy timeout only show when something is written.
        """
        check_free_space(self.path)
        with self._transaction():
            self._db.execute("UPDATE heartbeat SET at=?", (time.time(),))

    # -- sends -------------------------------------------------------------------

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

    def _insert_events_packed(self, events: Sequence[StoredEvent]) -> None:
        index = []
        position = 1  # substr() counts from 1
        for event in events:
            index.append(
                (
                    event.id,
                    event.type,
                    event.email_id,
                    event.time,
                    position,
                    len(event.body),
                    event.account,
                    event.subject,
                )
            )
            position += len(event.body)
        self._db.execute(
            "INSERT INTO outbox (event_id, type, email_id, created_at, body, account, subject) "
            "SELECT e.value ->> 0, e.value ->> 1, e.value ->> 2, e.value ->> 3, "
            "substr(?2, e.value ->> 4, e.value ->> 5), e.value ->> 6, e.value ->> 7 "
            "FROM json_each(?1) AS e ORDER BY e.key",
            (orjson.dumps(index), b"".join(event.body for event in events)),
        )

    @sql_errors
    def load_pending(self, account: str | None = None) -> list[SendRecord]:
        """Pending sends, oldest first: every account's, or `account`'s."""
        marks = ",".join("?" * len(PENDING_STATUSES))
        where = f"status IN ({marks})"
        params: tuple[str, ...] = PENDING_STATUSES
        if account is not None:
            where += " AND account = ?"
            params = (*params, account)
        cursor = self._db.execute(
            f"SELECT {SEND_COLUMNS} FROM sends WHERE {where} ORDER BY requested_at", params
        )
        # Row by row rather than fetchall: the rows' tuples are not all alive at
        # once beside the sends made of them (100k pending: ~15 MB less at the peak,
        # and less of the heap left fragmented).
        shared: dict[str, str] = {}
        return [send_from_row(row, shared) for row in cursor]

    @sql_errors
    def get_send(self, send_id: str) -> SendRecord | None:
        row = self._db.execute(
            f"SELECT {SEND_COLUMNS} FROM sends WHERE send_id=?", (send_id,)
        ).fetchone()
        return send_from_row(row) if row else None

    @sql_errors
    def list_sends(
        self, statuses: Sequence[str] | None = None, limit: int = 1000, account: str | None = None
    ) -> list[SendRecord]:
        """Sends, newest first: of `statuses` (all if None), of `account` (all if None)."""
        conditions: list[str] = []
        params: list[Any] = []
        if statuses:
            conditions.append(f"status IN ({','.join('?' * len(statuses))})")
            params.extend(statuses)
        if account is not None:
            conditions.append("account = ?")
            params.append(account)
        where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
        rows = self._db.execute(
            f"SELECT {SEND_COLUMNS} FROM sends {where}ORDER BY requested_at DESC LIMIT ?",
            (*params, limit),
        ).fetchall()
        return [send_from_row(row) for row in rows]

    @sql_errors
    def pending_by_account(self) -> dict[str, int]:
        """How many sends are pending, by account (those of removed accounts too)."""
        marks = ",".join("?" * len(PENDING_STATUSES))
        return dict(
            self._db.execute(
                f"SELECT account, COUNT(*) FROM sends WHERE status IN ({marks}) GROUP BY account",
                PENDING_STATUSES,
            ).fetchall()
        )

    def prune_sends(self, resolved_before: float, limit: int = PRUNE_SLICE) -> int:
        """Delete sends resolved before `resolved_before`, oldest requests first,
        at most `limit` (a call that returns `limit` may have left more)."""
        marks = ",".join("?" * len(PENDING_STATUSES))
        with self._transaction():
            cursor = self._db.execute(
                "DELETE FROM sends WHERE send_id IN (SELECT send_id FROM sends "
                f"WHERE status NOT IN ({marks}) AND resolved_at < ? "
                "ORDER BY requested_at LIMIT ?)",
                (*PENDING_STATUSES, resolved_before, limit),
            )
        return cursor.rowcount

    # -- outcomes: the one write path for events ---------------------------------

    def commit_outcomes(
        self,
        *,
        inserts: Sequence[SendRow] = (),
        sends: Sequence[SendRecord | SendUpdate] = (),
        events: Sequence[StoredEvent] = (),
        malformed: Sequence[KeptInput] = (),
        cursors: dict[str, int] | None = None,
        heartbeat: bool = False,
    ) -> int:
        """Update sends, append their events and keep malformed input, atomically.

        `sends` may be records or `send_update` tuples (taken on the caller's
        thread, so later changes to the record do not leak into this write).

        `heartbeat` also writes the heartbeat row: a real write even when
        there is nothing else to write (how a failed writer finds out that
        the store has recovered).

        Returns the highest outbox seq written (0 if none).
        """
        now = time.time()
        updates = [s if isinstance(s, tuple) else send_update(s) for s in sends]
        pruned = 0
        with self._transaction():
            if inserts:
                self._db.executemany(
                    f"INSERT INTO sends ({SEND_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
                # What the sinks took since the last commit goes in the same
                # transaction: a prune of its own every housekeeping round held
                # up the commits queued behind it (7-30 ms each at 5,000
                # events/s); here the work is spread over the commits.
                pruned = self._prune_taken(PRUNE_SLICE)
            if heartbeat:
                self._db.execute("UPDATE heartbeat SET at=?", (now,))
            if malformed:
                self._db.executemany(
                    "INSERT INTO dead_letters (sink, reason, detail, failed_at, body) "
                    "VALUES (?,?,?,?,?)",
                    [
                        (MALFORMED_SINK, m.reason, f"{m.channel}: {m.detail}", now, m.raw)
                        for m in malformed
                    ],
                )
        self._outbox_rows = max(0, self._outbox_rows + len(events) - pruned)
        return last

    # -- outbox and cursors --------------------------------------------------------

    @property
    def outbox_rows(self) -> int:
        return self._outbox_rows

    @sql_errors
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

    def read_outbox(
        self, sink: str, after: int, limit: int, route: Route | None = None
    ) -> tuple[list[OutboxRow], int]:
        """Rows for `sink` after seq `after` (only those `route` takes, if given),
        and the seq its cursor may move to.

        The second value passes rows meant only for other sinks (replays) and
        rows the route does not take, so that an idle sink never holds the
        outbox back.
        """
        wanted, params = _for_sink(sink, route)
        with self._transaction(write=False):
            rows = self._db.execute(
                "SELECT seq, event_id, type, email_id, created_at, body, account, subject "
                f"FROM outbox WHERE seq > ? AND {wanted} ORDER BY seq LIMIT ?",
                (after, *params, limit),
            ).fetchall()
            # Fewer than `limit`: every row after `after` was looked at, and a
            # later commit gets a seq above every one given out so far (`head_seq`).
            horizon = rows[-1][0] if len(rows) == limit else max(self.head_seq(), after)
        return [OutboxRow._make(row) for row in rows], horizon

    @sql_errors
    def count_outbox(
        self, sink: str, after: int, route: Route | None = None, upto: int | None = None
    ) -> int:
        """How many rows `read_outbox` would give `sink` after seq `after` (up to `upto`)."""
        wanted, params = _for_sink(sink, route)
        if upto is not None:
            wanted += " AND seq <= ?"
            params.append(upto)
        return self._scalar(
            f"SELECT COUNT(*) FROM outbox WHERE seq > ? AND {wanted}", (after, *params)
        )

    def set_cursors(self, cursors: dict[str, int]) -> None:
        """Move several sinks' cursors forward in one transaction (never back)."""
        if not cursors:
            return
        with self._transaction():
            self._move_cursors(cursors)

    def _move_cursors(self, cursors: dict[str, int]) -> None:
        self._db.executemany(
            "UPDATE sink_cursors SET seq=? WHERE sink=? AND seq<?",
            [(seq, sink, seq) for sink, seq in cursors.items()],
        )

    def prune_outbox(self, limit: int = PRUNE_SLICE) -> int:
        """Delete the oldest rows every sink has taken, at most `limit` (a call
        that returns `limit` may have left more)."""
        with self._transaction():
            pruned = self._prune_taken(limit)
        self._outbox_rows = max(0, self._outbox_rows - pruned)
        return pruned

    def _prune_taken(self, limit: int) -> int:
        """Delete (in the caller's transaction) the oldest rows every sink has
        taken, at most `limit`; returns how many."""
        low = self._db.execute("SELECT MIN(seq) FROM sink_cursors").fetchone()[0]
        if low is None:
            low = self._scalar("SELECT MAX(seq) FROM outbox")
        oldest = self._scalar("SELECT seq FROM outbox ORDER BY seq LIMIT 1")
        if not oldest or low < oldest:
            return 0
        cursor = self._db.execute(
            "DELETE FROM outbox WHERE seq <= ?", (min(low, oldest + limit - 1),)
        )
        return cursor.rowcount


def _for_sink(sink: str, route: Route | None) -> tuple[str, list[Any]]:
    """The outbox rows of `sink`: its replays, and the events its route takes.

    A replayed dead letter goes back to its sink whatever the route says now:
    someone asked for it by its id.
    """
    if route is None:
        return "(only_sink IS NULL OR only_sink = ?)", [sink]
    condition = "only_sink IS NULL"
    params: list[Any] = [sink]
    for column, patterns in (("type", route.types), ("account", route.accounts)):
        if patterns:
            condition += " AND (" + " OR ".join([f"{column} GLOB ?"] * len(patterns)) + ")"
            params.extend(patterns)
    return f"(only_sink = ? OR ({condition}))", params
