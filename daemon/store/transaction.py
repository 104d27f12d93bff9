"""One SQLite transaction, and how sqlite3's errors become the project's own.

`Connected` is what the store's parts share (`Store`, `DeadLetters`): one
connection, and transactions on it; `PRUNE_SLICE`, the most rows any of their
prunes deletes in one transaction.

`Transaction` is BEGIN [IMMEDIATE] ... COMMIT, or ROLLBACK on error; it rolls
back only a transaction that is still open (SQLite ends some on its own, and a
ROLLBACK then fails with an error that would hide the real cause).
`sql_errors` does the same translation for calls outside a transaction.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from daemon.errors import StoreError

P = ParamSpec("P")
R = TypeVar("R")

# Rows any prune (outbox, sends, dead letters) deletes in one transaction at
# most (~1 ms a hundred): a sink catching up on a long backlog, or a day's sends
# past their retention, never makes one prune that holds up the commits.
PRUNE_SLICE = 2000


def sql_errors(method: Callable[P, R]) -> Callable[P, R]:
    """sqlite3's errors out of `method` become StoreError (callers catch ours only)."""

    @functools.wraps(method)
    def translated(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except sqlite3.Error as exc:
            raise StoreError(f"{method.__name__.replace('_', ' ')} failed: {exc}") from None

    return translated


def corrupted(error: sqlite3.Error) -> bool:
    return getattr(error, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_CORRUPT


class Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error; sqlite errors become StoreError."""

    def __init__(self, db: sqlite3.Connection, *, write: bool) -> None:
        self._db = db
        # IMMEDIATE takes the write lock up front, so a writer never fails
        # half-way on a lock held by the CLI in another process.
        self._begin = "BEGIN IMMEDIATE" if write else "BEGIN"
        self._what = "store write" if write else "store read"

    def __enter__(self) -> None:
        try:
            self._db.execute(self._begin)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot begin a transaction: {exc}") from None

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        what = f"{self._what} failed"
        if error is None:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                error, what = exc, "commit failed"
            else:
                return
        self._roll_back()
        if isinstance(error, sqlite3.Error):
            raise StoreError(f"{what}: {error}") from None

    def _roll_back(self) -> None:
        # SQLite rolls back on its own after some failures (a full disk, an
        # I/O error): a ROLLBACK then fails, and its error would hide the cause.
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")


class Connected:
    """A part of the store: its connection (set by `Store`), and transactions on it."""

    _db: sqlite3.Connection

    def _transaction(self, *, write: bool = True) -> Transaction:
        return Transaction(self._db, write=write)
