"""The store meets real faults: a full disk, a read-only file, a bad page, a path it cannot make.

Every fault is real (`tests.harness.store_faults`): a tmpfs that fills up, a file
SQLite cannot write, garbage over a page. Whatever SQLite or the OS says, the store
raises `StoreError` with the real cause, and never leaves a transaction open.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.errors import StoreError
from daemon.events import Event
from daemon.sends import SendRecord
from daemon.store import MALFORMED_SINK, OutboxRow, Store, send_row
from daemon.store.rows import SendRow
from daemon.store.schema import _MIGRATIONS as MIGRATIONS
from daemon.store.schema import SCHEMA_VERSION
from tests.harness.store_faults import (
    corrupt_page,
    fill_disk,
    first_failure,
    read_only,
    root_page,
    small_disk,
)


def event(n: int, size: int = 100) -> Event:
    return Event(f"event-{n}", "gws.email.state_changed", f"email-{n}", 1000.0 + n, b"x" * size)


def row(n: int) -> OutboxRow:
    return OutboxRow(n, f"event-{n}", "gws.email.state_changed", f"email-{n}", 1000.0 + n, b"{}")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.db"


@pytest.fixture
def store(path: Path) -> Iterator[Store]:
    opened = Store(path)
    yield opened
    opened.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- a full disk --------


def test_a_commit_on_a_full_disk_raises_the_real_cause_and_leaves_no_transaction(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "disk") as disk:
        store = Store(disk / "state.db")
        try:
            fill_disk(disk)
            error = first_failure(lambda n: store.commit_outcomes(events=[event(n, size=20_000)]))

            assert "database or disk is full" in str(error)

            # The connection is usable again: nothing was left half-open.
            assert store.head_seq() >= 0
        finally:
            store.close()


def test_check_writable_fails_on_a_full_disk(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk") as disk:
        store = Store(disk / "state.db")
        try:
            fill_disk(disk)
            with pytest.raises(StoreError, match="full"):
                store.check_writable()
        finally:
            store.close()


# -- a read-only file --------


def test_check_writable_does_a_real_write_and_fails_on_a_read_only_file(path: Path) -> None:
    Store(path).close()
    with read_only(path):
        store = Store(path)
        try:
            with pytest.raises(StoreError, match="readonly"):
                store.check_writable()
        finally:
            store.close()


def test_check_writable_writes_the_heartbeat_row(store: Store, path: Path) -> None:
    before = time.time()
    store.check_writable()
    db = sqlite3.connect(str(path))
    try:
        [(at,)] = db.execute("SELECT at FROM heartbeat").fetchall()
    finally:
        db.close()
    assert at >= before


# -- paths and modes --------


def test_a_parent_that_is_a_file_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "in-the-way").write_text("a file, not a directory")
    with pytest.raises(StoreError, match="in-the-way"):
        Store(tmp_path / "in-the-way" / "state.db")


def test_a_parent_that_cannot_be_created_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot create"):
        Store(Path("/proc/gws-notifyd-test/state.db"))


def test_the_files_and_directory_it_creates_are_private_whatever_the_umask(
    tmp_path: Path,
) -> None:
    previous = os.umask(0o022)
    try:
        store = Store(tmp_path / "new" / "deeper" / "state.db")
        try:
            store.commit_outcomes(events=[event(1)])
            files = [tmp_path / "new" / "deeper" / n for n in ("state.db", "state.db-wal")]
            shm = tmp_path / "new" / "deeper" / "state.db-shm"
            assert [mode(f) for f in files] == [0o600, 0o600]
            assert mode(shm) == 0o600
            assert mode(tmp_path / "new") == 0o700
            assert mode(tmp_path / "new" / "deeper") == 0o700
        finally:
            store.close()
    finally:
        os.umask(previous)


# -- a corrupted page --------


def sends(count: int) -> list[SendRow]:
    return [
        send_row(SendRecord(f"s{n:05d}", f"email-{n}", "Outbound", 1000.0 + n, "x" * 300))
        for n in range(count)
    ]


def test_a_corrupted_page_is_refused_at_open_with_how_to_recover(path: Path) -> None:
    store = Store(path)
    store.commit_outcomes(inserts=sends(500))
    store.close()
    # A page that opening the store does not read: only a check finds it.
    corrupt_page(path, root_page(path, "sends"))

    with pytest.raises(StoreError, match="corrupt") as raised:
        Store(path, check_pages=True)

    message = str(raised.value)
    assert "\n" not in message
    assert ".recover" in message


def test_a_page_corrupted_under_a_running_store_makes_every_read_a_store_error(
    store: Store, path: Path
) -> None:
    store.commit_outcomes(inserts=sends(500), events=[event(n, size=2000) for n in range(200)])
    other = sqlite3.connect(str(path), isolation_level=None)
    try:
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        corrupt_page(path, root_page(path, "sends"))
        corrupt_page(path, root_page(path, "outbox"))
        # Another connection's commit makes this one drop its page cache.
        other.execute("INSERT INTO sink_cursors VALUES ('other', 0)")
    finally:
        other.close()

    with pytest.raises(StoreError, match="malformed"):
        store.read_outbox("crm", 0, 100)
    with pytest.raises(StoreError, match="malformed"):
        store.list_sends()
    with pytest.raises(StoreError, match="malformed"):
        store.load_pending()


# -- schema --------


def test_a_version_1_store_is_migrated_to_the_heartbeat_schema(path: Path) -> None:
    path.parent.mkdir(parents=True)
    db = sqlite3.connect(str(path))
    for statement in MIGRATIONS[0]:
        db.execute(statement)
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()

    Store(path).close()

    db = sqlite3.connect(str(path))
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        rows = db.execute("SELECT COUNT(*) FROM heartbeat").fetchone()[0]
    finally:
        db.close()
    assert version == SCHEMA_VERSION >= 2
    assert rows == 1


# -- dead letters --------


def test_dead_letters_older_than_the_cutoff_are_pruned(store: Store) -> None:
    for n in range(1, 6):
        store.dead_letter("crm", row(n), reason="permanent", detail="HTTP 400", attempts=1)
    letters = store.list_dead_letters()
    cutoff = letters[2].failed_at  # the first two are older

    removed = store.prune_dead_letters(failed_before=cutoff, keep=1000)

    assert removed == 2
    assert [d.event_id for d in store.list_dead_letters()] == [f"event-{n}" for n in (3, 4, 5)]


def test_dead_letters_beyond_the_cap_are_pruned_oldest_first(store: Store) -> None:
    for n in range(1, 8):
        store.dead_letter("crm", row(n), reason="permanent", detail="HTTP 400", attempts=1)
    store.commit_outcomes(malformed=[_Kept()])

    removed = store.prune_dead_letters(failed_before=0.0, keep=3)

    assert removed == 5
    kept = store.list_dead_letters()
    assert [d.event_id for d in kept] == ["event-6", "event-7", None]
    assert kept[-1].sink == MALFORMED_SINK


class _Kept:
    channel = "/v2/me/emails"
    reason = "not_json"
    detail = "junk"
    raw = b"junk"
