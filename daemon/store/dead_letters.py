"""The dead letters' SQL: one event a sink gave up on, kept, listed, replayed, pruned.

A part of `Store` (`daemon.store.database`), kept apart for its size: it shares
the store's connection and transactions.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from daemon.config import DEFAULT_ACCOUNT
from daemon.store.rows import MALFORMED_SINK, DeadLetter, OutboxRow
from daemon.store.transaction import PRUNE_SLICE, Connected, sql_errors


class DeadLetters(Connected):
    """The dead-letter methods of `Store`, which keeps `_outbox_rows` (the outbox's size)."""

    _outbox_rows: int

    def dead_letter(
        self, sink: str, row: OutboxRow, *, reason: str, detail: str, attempts: int
    ) -> None:
        """Give up on one event for one sink, and move that sink past it."""
        with self._transaction():
            self._db.execute(
                "INSERT INTO dead_letters (sink, event_id, type, email_id, reason, detail, "
                "attempts, failed_at, body, account, subject) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
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
                    row.account,
                    row.subject,
                ),
            )
            self._db.execute(
                "UPDATE sink_cursors SET seq=? WHERE sink=? AND seq<?", (row.seq, sink, row.seq)
            )

    @sql_errors
    def dead_letter_counts(self) -> dict[str, int]:
        return dict(
            self._db.execute("SELECT sink, COUNT(*) FROM dead_letters GROUP BY sink").fetchall()
        )

    @sql_errors
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

    @sql_errors
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
                    "SELECT sink, event_id, type, email_id, body, account, subject "
                    "FROM dead_letters WHERE id=? AND sink != ?",
                    (letter_id, MALFORMED_SINK),
                ).fetchone()
                if row is None:
                    continue
                sink, event_id, type_, email_id, body, account, subject = row
                account = account or DEFAULT_ACCOUNT  # a letter from before schema 3
                self._db.execute(
                    "INSERT INTO outbox (event_id, type, email_id, created_at, only_sink, body, "
                    "account, subject) VALUES (?,?,?,?,?,?,?,?)",
                    (event_id, type_, email_id, time.time(), sink, body, account, subject),
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

    def prune_dead_letters(
        self, *, failed_before: float, keep: int, limit: int = PRUNE_SLICE
    ) -> int:
        """Delete dead letters older than `failed_before`, then all but the newest
        `keep`; oldest first, at most `limit` (a call that returns `limit` may
        have left more)."""
        with self._transaction():
            cursor = self._db.execute(
                "DELETE FROM dead_letters WHERE id IN (SELECT id FROM dead_letters "
                "WHERE failed_at < ?1 OR id <= (SELECT id FROM dead_letters "
                "ORDER BY id DESC LIMIT 1 OFFSET ?2) ORDER BY id LIMIT ?3)",
                (failed_before, keep, limit),
            )
        return cursor.rowcount
