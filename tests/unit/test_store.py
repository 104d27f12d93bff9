"""The SQLite store, on a real file: sends, outbox, per-sink cursors, dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.config import Route
from daemon.errors import StoreError
from daemon.events import Event
from daemon.gws.messages import Malformed
from daemon.sends import SendRecord, SendStatus
from daemon.store import (
    MALFORMED_SINK,
    SCHEMA_VERSION,
    AsyncStore,
    OutboxRow,
    Store,
    bridge,
    database,
    send_row,
)
from daemon.store.files import wal_state
from daemon.store.transaction import PRUNE_SLICE


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "state.db"


@pytest.fixture
def store(path: Path) -> Iterator[Store]:
    opened = Store(path)
    yield opened
    opened.close()


@contextlib.contextmanager
def reopened(path: Path) -> Iterator[Store]:
    again = Store(path)
    try:
        yield again
    finally:
        again.close()


def raw_query(path: Path, sql: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(str(path))
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def insert(store: Store, *sends: SendRecord) -> None:
    store.commit_outcomes(inserts=[send_row(s) for s in sends])


def cursors(store: Store) -> dict[str, int]:
    """What the cursor table holds, read from the file."""
    return dict(raw_query(store.path, "SELECT sink, seq FROM sink_cursors"))  # type: ignore[arg-type]


def make_send(send_id: str, *, requested_at: float = 1000.0, **fields: object) -> SendRecord:
    return SendRecord(
        send_id=send_id,
        email_id=f"email-{send_id}",
        queue_name="Outbound",
        requested_at=requested_at,
        subject="Your case",
        to=("a@example.com", "b@example.com"),
        **fields,  # type: ignore[arg-type]
    )


def make_event(n: int) -> Event:
    return Event(
        id=f"event-{n}",
        type="gws.email.state_changed",
        email_id=f"email-{n}",
        time=1000.0 + n,
        body=b'{"n":%d}' % n,
    )


def write_events(store: Store, *numbers: int) -> int:
    return store.commit_outcomes(events=[make_event(n) for n in numbers])


def ids(rows: list[OutboxRow]) -> list[str]:
    return [row.event_id for row in rows]


# -- schema --------


def test_new_store_has_the_current_schema_version_and_wal(store: Store, path: Path) -> None:
    assert raw_query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert raw_query(path, "PRAGMA journal_mode") == [("wal",)]
    assert store.outbox_rows == 0
    assert store.head_seq() == 0


def test_a_newer_schema_version_refuses_to_open(path: Path) -> None:
    Store(path).close()
    db = sqlite3.connect(str(path))
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()

    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}"):
        Store(path)


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot open store"):
        Store(path)


# -- sends --------


def test_inserted_send_reads_back_whole(store: Store) -> None:
    send = make_send("s1", reference_id=26)
    insert(store, send)
    assert store.get_send("s1") == send
    assert store.get_send("nope") is None


def test_send_without_recipients_or_subject_reads_back_the_same(store: Store) -> None:
    send = make_send("s1")
    send.to, send.subject = (), None
    insert(store, send)
    assert store.get_send("s1") == send


def test_load_pending_returns_pending_sends_oldest_first(store: Store) -> None:
    insert(store, make_send("late", requested_at=30.0, status=SendStatus.ACCEPTED))
    insert(store, make_send("early", requested_at=10.0))
    insert(store, make_send("middle", requested_at=20.0, status=SendStatus.UNANSWERED))
    insert(store, make_send("done", requested_at=5.0, status=SendStatus.RESOLVED))

    pending = store.load_pending()

    assert [s.send_id for s in pending] == ["early", "middle", "late"]
    assert len(store.load_pending()) == 3


def test_load_pending_shares_one_string_for_a_repeated_subject_or_address(store: Store) -> None:
    for n, subject in enumerate(["Re: your order"] * 3 + ["Re: another"]):
        send = make_send(f"s{n}", requested_at=float(n))
        send.subject, send.to = subject, ("x@example.com", f"y{n}@example.com")
        insert(store, send)

    pending = store.load_pending()

    assert [s.subject for s in pending] == ["Re: your order"] * 3 + ["Re: another"]
    assert pending[0].subject is pending[1].subject is pending[2].subject
    assert [s.to for s in pending] == [("x@example.com", f"y{n}@example.com") for n in range(4)]
    assert len({id(s.to[0]) for s in pending}) == 1


def test_update_send_changes_its_outcome_fields(store: Store) -> None:
    send = make_send("s1")
    insert(store, send)
    send.status = SendStatus.RESOLVED
    send.reference_id = 31
    send.answered_at = 1001.0
    send.resolved_at = 1002.0
    send.outcome_state = "Sent"

    store.commit_outcomes(sends=[send])

    assert store.get_send("s1") == send
    assert store.load_pending() == []


def test_duplicate_send_id_is_a_store_error(store: Store) -> None:
    insert(store, make_send("s1"))
    with pytest.raises(StoreError):
        insert(store, make_send("s1"))


def test_list_sends_filters_by_status_newest_first(store: Store) -> None:
    insert(store, make_send("a", requested_at=1.0))
    insert(store, make_send("b", requested_at=2.0, status=SendStatus.REJECTED))
    insert(store, make_send("c", requested_at=3.0))
    assert [s.send_id for s in store.list_sends(["in_flight"])] == ["c", "a"]
    assert [s.send_id for s in store.list_sends(limit=2)] == ["c", "b"]


def test_prune_sends_keeps_pending_and_recent(store: Store) -> None:
    insert(store, make_send("old", status=SendStatus.RESOLVED, resolved_at=10.0))
    insert(store, make_send("new", status=SendStatus.RESOLVED, resolved_at=100.0))
    insert(store, make_send("pending"))
    assert store.prune_sends(resolved_before=50.0) == 1
    assert sorted(s.send_id for s in store.list_sends()) == ["new", "pending"]


def resolve_sends(store: Store, *numbers: int) -> None:
    """Sends `s<n>` requested at time n, resolved at time 10."""
    for n in numbers:
        send = make_send(f"s{n}", requested_at=float(n), status=SendStatus.RESOLVED)
        insert(store, send)
        send.resolved_at = 10.0
        store.commit_outcomes(sends=[send])


def test_a_prune_of_sends_deletes_at_most_its_slice_oldest_requests_first(store: Store) -> None:
    resolve_sends(store, 5, 1, 4, 2, 3)

    assert store.prune_sends(resolved_before=50.0, limit=2) == 2
    assert sorted(s.send_id for s in store.list_sends()) == ["s3", "s4", "s5"]
    assert store.prune_sends(resolved_before=50.0, limit=2) == 2
    assert store.prune_sends(resolved_before=50.0, limit=2) == 1
    assert store.prune_sends(resolved_before=50.0, limit=2) == 0


# -- commit_outcomes --------


def test_commit_outcomes_writes_sends_events_and_malformed_together(store: Store) -> None:
    send = make_send("s1")
    insert(store, send)
    send.status, send.outcome_state, send.resolved_at = SendStatus.RESOLVED, "Sent", 1002.0
    junk = Malformed("/v2/me/emails", "no_email", "email is missing", b'{"x":1}')

    head = store.commit_outcomes(
        sends=[send], events=[make_event(1), make_event(2)], malformed=[junk]
    )

    assert head == 2 == store.head_seq()
    assert store.outbox_rows == 2
    assert store.get_send("s1") == send
    [letter] = store.list_dead_letters(MALFORMED_SINK)
    assert (letter.reason, letter.detail, letter.body) == (
        "no_email",
        "/v2/me/emails: email is missing",
        b'{"x":1}',
    )


def test_commit_outcomes_writes_nothing_when_any_part_fails(store: Store) -> None:
    send = make_send("s1")
    insert(store, send)
    resolved = make_send("s1", status=SendStatus.RESOLVED, outcome_state="Sent")
    broken = Malformed("/v2/me/emails", "no_email", "x", None)  # type: ignore[arg-type]

    with pytest.raises(StoreError):
        store.commit_outcomes(sends=[resolved], events=[make_event(1)], malformed=[broken])

    assert store.get_send("s1") == send
    assert store.read_outbox("any", 0, 10) == ([], 0)
    assert store.list_dead_letters() == []
    assert store.outbox_rows == 0


def test_commit_outcomes_without_events_returns_zero(store: Store) -> None:
    assert store.commit_outcomes() == 0


# -- outbox and cursors --------


def test_sinks_start_at_the_head_of_an_empty_outbox(store: Store) -> None:
    write_events(store, 1, 2)
    store.sync_sinks(["a"])
    store.set_cursors({"a": 2})
    store.prune_outbox()

    cursors = store.sync_sinks(["a", "b"])

    assert cursors == {"a": 2, "b": 2}
    assert store.read_outbox("b", 2, 10) == ([], 2)


def test_a_new_sink_starts_at_the_oldest_event_still_waiting(store: Store) -> None:
    write_events(store, 1, 2, 3)
    store.sync_sinks(["a"])
    store.set_cursors({"a": 1})
    store.prune_outbox()

    cursors = store.sync_sinks(["a", "b"])

    assert cursors["b"] == 1
    rows, _ = store.read_outbox("b", cursors["b"], 10)
    assert ids(rows) == ["event-2", "event-3"]


def test_sync_sinks_forgets_sinks_no_longer_configured(store: Store) -> None:
    store.sync_sinks(["a", "b"])
    assert set(store.sync_sinks(["b"])) == {"b"}
    assert set(cursors(store)) == {"b"}


def test_read_outbox_returns_rows_in_order_and_its_horizon(store: Store) -> None:
    write_events(store, 1, 2, 3)

    rows, horizon = store.read_outbox("a", 0, 10)
    assert ids(rows) == ["event-1", "event-2", "event-3"]
    assert [r.seq for r in rows] == [1, 2, 3]
    assert rows[0].body == b'{"n":1}'
    assert rows[0].type == "gws.email.state_changed"
    assert rows[0].email_id == "email-1"
    assert horizon == 3


def test_read_outbox_limit_puts_the_horizon_at_the_last_row(store: Store) -> None:
    write_events(store, 1, 2, 3)
    rows, horizon = store.read_outbox("a", 0, 2)
    assert ids(rows) == ["event-1", "event-2"]
    assert horizon == 2
    rows, horizon = store.read_outbox("a", 2, 2)
    assert ids(rows) == ["event-3"]
    assert horizon == 3


def test_set_cursor_never_moves_back(store: Store) -> None:
    store.sync_sinks(["a"])
    store.set_cursors({"a": 5})
    store.set_cursors({"a": 3})
    assert cursors(store) == {"a": 5}


def test_prune_outbox_deletes_only_what_every_sink_has_taken(store: Store) -> None:
    write_events(store, 1, 2, 3, 4)
    store.sync_sinks(["a", "b"])
    store.set_cursors({"a": 4})
    store.set_cursors({"b": 2})

    assert store.prune_outbox() == 2

    assert store.outbox_rows == 2
    rows, _ = store.read_outbox("b", 2, 10)
    assert ids(rows) == ["event-3", "event-4"]
    assert store.prune_outbox() == 0
    store.set_cursors({"b": 4})
    assert store.prune_outbox() == 2
    assert store.outbox_rows == 0


def test_prune_with_a_sink_that_took_nothing_deletes_nothing(store: Store) -> None:
    store.sync_sinks(["a", "idle"])
    write_events(store, 1, 2)
    store.set_cursors({"a": 2})
    assert store.prune_outbox() == 0
    assert store.outbox_rows == 2


def test_a_prune_deletes_at_most_its_slice_oldest_first(store: Store) -> None:
    store.sync_sinks(["a"])
    write_events(store, *range(1, 11))
    store.set_cursors({"a": 8})

    assert store.prune_outbox(limit=3) == 3
    assert store.outbox_rows == 7
    rows, _ = store.read_outbox("a", 0, 20)
    assert ids(rows)[0] == "event-4"
    assert store.prune_outbox(limit=3) == 3
    assert store.prune_outbox(limit=3) == 2  # up to the cursor, no further
    assert store.prune_outbox(limit=3) == 0
    rows, _ = store.read_outbox("a", 0, 20)
    assert ids(rows) == ["event-9", "event-10"]


async def test_the_daemon_prunes_a_backlog_longer_than_a_slice_in_one_call(path: Path) -> None:
    store = AsyncStore(Store(path))
    try:
        count = 2 * PRUNE_SLICE + 5
        await store.sync_sinks(["a"])
        await store.submit_outcomes(events=[make_event(n) for n in range(1, count + 1)])
        await store.set_cursors({"a": count - 1})

        assert await store.prune_outbox() == count - 1

        assert store.outbox_rows == 1
    finally:
        await store.close()


class _CallsInOrder(Store):
    """A real store that notes which of its prunes and commits ran, in order."""

    def __init__(self, path: Path) -> None:
        self.calls: list[str] = []
        super().__init__(path)

    def prune_sends(self, resolved_before: float, limit: int = PRUNE_SLICE) -> int:
        self.calls.append("prune")
        return super().prune_sends(resolved_before, limit)

    def prune_dead_letters(
        self, *, failed_before: float, keep: int, limit: int = PRUNE_SLICE
    ) -> int:
        self.calls.append("prune")
        return super().prune_dead_letters(failed_before=failed_before, keep=keep, limit=limit)

    def prune_outbox(self, limit: int = PRUNE_SLICE) -> int:
        self.calls.append("prune")
        return super().prune_outbox(limit)

    def commit_outcomes(self, **parts: Any) -> int:
        self.calls.append("commit")
        return super().commit_outcomes(**parts)


def _fill_to_prune(store: Store, what: str, count: int) -> None:
    if what == "sends":
        resolve_sends(store, *range(count))
    elif what == "dead letters":
        rows, _ = store.read_outbox("a", 0, count)
        for row in rows:
            store.dead_letter("a", row, reason="permanent", detail="x", attempts=1)
    else:
        store.set_cursors({"a": count})


async def _prune(store: AsyncStore, what: str) -> int:
    if what == "sends":
        return await store.prune_sends(50.0)
    if what == "dead letters":
        return await store.prune_dead_letters(failed_before=0.0, keep=0)
    return await store.prune_outbox()


@pytest.mark.parametrize("what", ["sends", "dead letters", "outbox"])
async def test_every_prune_goes_a_slice_per_transaction_with_the_commits_in_between(
    path: Path, what: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bridge, "PRUNE_SLICE", 3)
    sync = _CallsInOrder(path)
    sync.sync_sinks(["a"])
    write_events(sync, *range(1, 11))
    _fill_to_prune(sync, what, 10)
    sync.calls = []
    store = AsyncStore(sync)
    try:
        pruning = asyncio.create_task(_prune(store, what))
        await asyncio.sleep(0)  # the task's first step: it queues its first slice
        await store.submit_outcomes(events=[make_event(11)])

        assert await pruning == 10
        assert sync.calls == ["prune", "commit", "prune", "prune", "prune"]
    finally:
        await store.close()


def test_a_commit_that_moves_the_cursors_deletes_what_every_sink_took(store: Store) -> None:
    store.sync_sinks(["a", "b"])
    write_events(store, 1, 2, 3, 4)

    store.commit_outcomes(events=[make_event(5)], cursors={"a": 4, "b": 3})

    assert raw_query(store.path, "SELECT seq FROM outbox ORDER BY seq") == [(4,), (5,)]
    assert store.outbox_rows == 2
    store.commit_outcomes(cursors={"b": 5})  # a's cursor holds event 5 back
    assert raw_query(store.path, "SELECT seq FROM outbox ORDER BY seq") == [(5,)]
    assert store.outbox_rows == 1


def test_a_commit_that_fails_keeps_the_rows_it_would_have_pruned(store: Store) -> None:
    store.sync_sinks(["a"])
    write_events(store, 1, 2)
    # Kept after the prune, and NOT NULL: the transaction fails after the prune ran.
    unkeepable = Malformed("/v2/me/emails", "invalid_json", "no body", None)  # type: ignore[arg-type]

    with pytest.raises(StoreError):
        store.commit_outcomes(events=[make_event(3)], cursors={"a": 2}, malformed=[unkeepable])

    assert raw_query(store.path, "SELECT COUNT(*) FROM outbox") == [(2,)]
    assert store.outbox_rows == 2


def backlog(path: Path) -> int:
    state = wal_state(path)
    assert state is not None
    return state.backlog


def test_the_wal_backlog_is_what_is_committed_and_not_yet_checkpointed(
    store: Store, path: Path
) -> None:
    write_events(store, *range(1, 200))
    before = backlog(path)
    assert before > 4096

    assert store.checkpoint(min_wal_bytes=0)

    assert backlog(path) == 0
    assert not store.checkpoint(min_wal_bytes=1), "nothing to copy, however large the file"
    assert (path.parent / "state.db-wal").stat().st_size > 4096
    write_events(store, 200)
    assert 0 < backlog(path) < before


def test_near_the_size_where_the_wal_starts_over_a_checkpoint_copies_whatever_is_new(
    store: Store, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_events(store, *range(1, 200))
    assert store.checkpoint(min_wal_bytes=0)
    write_events(store, 200)
    assert not store.checkpoint(min_wal_bytes=1 << 30)
    written = wal_state(path).written  # type: ignore[union-attr]

    monkeypatch.setattr(database, "WAL_RESTART_BYTES", written + database.RESTART_MARGIN)

    assert store.checkpoint(min_wal_bytes=1 << 30)
    assert backlog(path) == 0


def test_no_wal_index_means_no_wal_state_known(tmp_path: Path) -> None:
    assert wal_state(tmp_path / "missing.db") is None
    (tmp_path / "other.db-shm").write_bytes(b"\0" * 200)
    assert wal_state(tmp_path / "other.db") is None


def test_a_new_store_has_4_kib_pages(store: Store, path: Path) -> None:
    assert raw_query(path, "PRAGMA page_size") == [(4096,)]


def test_seq_keeps_growing_after_the_outbox_is_emptied(store: Store, path: Path) -> None:
    store.sync_sinks(["a"])
    write_events(store, 1, 2)
    store.set_cursors({"a": 2})
    store.prune_outbox()
    with reopened(path) as again:
        assert write_events(again, 3) == 3


# -- routes --------

CALLS = Route(types=("gws.call.*",))
SALES_CALLS = Route(types=("gws.call.*",), accounts=("sales-*",))


def write_mixed(store: Store) -> int:
    """Six events of two types and three accounts, seqs 1..6."""
    kinds = [
        ("gws.email.state_changed", "default"),
        ("gws.call.state_changed", "sales-eu"),
        ("gws.email.state_changed", "sales-eu"),
        ("gws.call.state_changed", "support"),
        ("gws.call.state_changed", "sales-us"),
        ("gws.email.send_rejected", "default"),
    ]
    events = [
        make_event(n)._replace(type=type_, account=account)
        for n, (type_, account) in enumerate(kinds, start=1)
    ]
    return store.commit_outcomes(events=events)


def test_read_outbox_with_a_route_gives_only_what_it_takes_in_order(store: Store) -> None:
    write_mixed(store)

    calls, _ = store.read_outbox("calls", 0, 10, CALLS)
    sales_calls, _ = store.read_outbox("sales", 0, 10, SALES_CALLS)
    sales, _ = store.read_outbox("sales", 0, 10, Route(accounts=("sales-*",)))

    assert [r.seq for r in calls] == [2, 4, 5]
    assert [(r.type, r.account) for r in sales_calls] == [
        ("gws.call.state_changed", "sales-eu"),
        ("gws.call.state_changed", "sales-us"),
    ]
    assert [r.seq for r in sales] == [2, 3, 5]


def test_the_horizon_of_a_route_passes_the_events_it_does_not_take(store: Store) -> None:
    write_mixed(store)

    rows, horizon = store.read_outbox("calls", 0, 10, CALLS)
    assert (len(rows), horizon) == (3, 6)
    assert store.read_outbox("none", 0, 10, Route(types=("gws.chat.*",))) == ([], 6)


def test_a_full_batch_of_a_route_puts_the_horizon_at_its_last_row(store: Store) -> None:
    write_mixed(store)

    rows, horizon = store.read_outbox("calls", 0, 2, CALLS)
    assert ([r.seq for r in rows], horizon) == ([2, 4], 4)
    rows, horizon = store.read_outbox("calls", horizon, 2, CALLS)
    assert ([r.seq for r in rows], horizon) == ([5], 6)


def test_the_horizon_passes_rows_already_pruned(store: Store) -> None:
    write_mixed(store)
    store.sync_sinks(["a"])
    store.set_cursors({"a": 6})
    store.prune_outbox()

    assert store.read_outbox("calls", 3, 10, CALLS) == ([], 6)


def test_a_replay_reaches_its_sink_whatever_its_route(store: Store) -> None:
    write_mixed(store)
    store.sync_sinks(["calls"])
    rows, _ = store.read_outbox("calls", 0, 10, CALLS)
    store.dead_letter("calls", rows[0], reason="permanent", detail="x", attempts=1)
    store.set_cursors({"calls": 6})
    store.replay_dead_letters([letter.id for letter in store.list_dead_letters()])

    emails_only = Route(types=("gws.email.*",))
    replayed, horizon = store.read_outbox("calls", 6, 10, emails_only)

    assert ([r.event_id for r in replayed], horizon) == (["event-2"], 7)
    assert store.read_outbox("other", 6, 10, CALLS) == ([], 7)
    assert store.count_outbox("calls", 6, emails_only) == 1


def test_count_outbox_counts_what_a_route_takes_after_a_cursor(store: Store) -> None:
    write_mixed(store)

    assert store.count_outbox("any", 0) == 6
    assert store.count_outbox("calls", 0, CALLS) == 3
    assert store.count_outbox("calls", 2, CALLS) == 2
    assert store.count_outbox("calls", 2, CALLS, upto=4) == 1
    assert store.count_outbox("sales", 0, SALES_CALLS) == 2
    assert store.count_outbox("sales", 5, SALES_CALLS) == 0


# -- dead letters --------


def test_dead_letter_keeps_the_event_and_moves_that_sink_past_it(store: Store) -> None:
    write_events(store, 1, 2, 3)
    store.sync_sinks(["a", "b"])
    rows, _ = store.read_outbox("a", 0, 10)

    store.dead_letter("a", rows[1], reason="permanent", detail="HTTP 400", attempts=1)

    assert cursors(store) == {"a": 2, "b": 0}
    [letter] = store.list_dead_letters("a")
    assert (letter.sink, letter.event_id, letter.type, letter.email_id) == (
        "a",
        "event-2",
        "gws.email.state_changed",
        "email-2",
    )
    assert (letter.reason, letter.detail, letter.attempts, letter.body) == (
        "permanent",
        "HTTP 400",
        1,
        b'{"n":2}',
    )
    assert store.get_dead_letter(letter.id) == letter
    assert store.dead_letter_counts() == {"a": 1}
    assert store.list_dead_letters("b") == []


def test_dead_letter_does_not_move_a_cursor_back(store: Store) -> None:
    write_events(store, 1, 2, 3)
    store.sync_sinks(["a"])
    rows, _ = store.read_outbox("a", 0, 10)
    store.set_cursors({"a": 3})
    store.dead_letter("a", rows[0], reason="gave_up", detail="x", attempts=9)
    assert cursors(store) == {"a": 3}


def test_replay_puts_an_event_back_for_its_sink_only(store: Store) -> None:
    write_events(store, 1, 2)
    store.sync_sinks(["a", "b"])
    rows, _ = store.read_outbox("a", 0, 10)
    store.dead_letter("a", rows[0], reason="permanent", detail="HTTP 400", attempts=1)
    store.set_cursors({"a": 2})
    store.set_cursors({"b": 2})
    [letter] = store.list_dead_letters("a")

    assert store.replay_dead_letters([letter.id]) == 1

    replayed, horizon_a = store.read_outbox("a", 2, 10)
    assert ids(replayed) == ["event-1"]
    assert replayed[0].body == b'{"n":1}'
    assert replayed[0].seq == 3 == horizon_a
    others, horizon_b = store.read_outbox("b", 2, 10)
    assert others == []
    assert horizon_b == 3
    assert store.list_dead_letters() == []
    assert store.outbox_rows == 3


def test_a_replayed_row_is_pruned_once_its_sink_took_it(store: Store) -> None:
    write_events(store, 1)
    store.sync_sinks(["a", "b"])
    rows, _ = store.read_outbox("a", 0, 10)
    store.dead_letter("a", rows[0], reason="permanent", detail="x", attempts=1)
    store.set_cursors({"b": 1})
    store.replay_dead_letters([letter.id for letter in store.list_dead_letters()])
    store.set_cursors({"b": 2})  # b passes the replay by its horizon

    assert store.prune_outbox() == 1  # event 1 only: a has not taken its replay
    store.set_cursors({"a": 2})
    assert store.prune_outbox() == 1
    assert store.outbox_rows == 0


def test_malformed_input_is_never_replayed(store: Store) -> None:
    store.commit_outcomes(malformed=[Malformed("/c", "not_an_object", "data is list", b"[]")])
    [letter] = store.list_dead_letters()
    assert store.replay_dead_letters([letter.id]) == 0
    assert store.read_outbox("a", 0, 10) == ([], 0)
    assert len(store.list_dead_letters()) == 1


def test_replay_of_unknown_ids_does_nothing(store: Store) -> None:
    assert store.replay_dead_letters([12345]) == 0


def test_purge_dead_letters_by_id_by_sink_or_all(store: Store) -> None:
    write_events(store, 1, 2, 3)
    store.sync_sinks(["a", "b"])
    rows, _ = store.read_outbox("a", 0, 10)
    store.dead_letter("a", rows[0], reason="permanent", detail="x", attempts=1)
    store.dead_letter("a", rows[1], reason="permanent", detail="x", attempts=1)
    store.dead_letter("b", rows[2], reason="permanent", detail="x", attempts=1)
    first = store.list_dead_letters("a")[0]

    assert store.purge_dead_letters(ids=[first.id]) == 1
    assert [d.event_id for d in store.list_dead_letters("a")] == ["event-2"]
    assert store.purge_dead_letters(sink="a") == 1
    assert store.dead_letter_counts() == {"b": 1}
    assert store.purge_dead_letters() == 1
    assert store.list_dead_letters() == []


def test_dead_letter_detail_is_bounded(store: Store) -> None:
    write_events(store, 1)
    store.sync_sinks(["a"])
    rows, _ = store.read_outbox("a", 0, 10)
    store.dead_letter("a", rows[0], reason="permanent", detail="x" * 10_000, attempts=1)
    [letter] = store.list_dead_letters()
    assert letter.detail is not None
    assert len(letter.detail) == 2000


# -- durability --------


def test_reopening_the_file_keeps_everything(store: Store, path: Path) -> None:
    pending = make_send("pending", status=SendStatus.ACCEPTED, reference_id=26, answered_at=1.5)
    insert(store, pending)
    insert(store, make_send("done", status=SendStatus.RESOLVED))
    write_events(store, 1, 2, 3)
    store.sync_sinks(["a", "b"])
    store.set_cursors({"a": 3})
    rows, _ = store.read_outbox("b", 0, 10)
    store.dead_letter("b", rows[0], reason="permanent", detail="x", attempts=1)
    store.close()

    with reopened(path) as again:
        assert again.load_pending() == [pending]
        assert again.get_send("done") is not None
        assert cursors(again) == {"a": 3, "b": 1}
        assert again.outbox_rows == 3
        assert again.head_seq() == 3
        rows, _ = again.read_outbox("b", 1, 10)
        assert ids(rows) == ["event-2", "event-3"]
        assert [d.event_id for d in again.list_dead_letters("b")] == ["event-1"]
        assert raw_query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


def test_check_writable_passes_on_a_healthy_store(store: Store) -> None:
    store.check_writable()


def test_an_events_account_and_subject_go_with_it_through_the_outbox_and_a_replay(
    store: Store,
) -> None:
    call = Event("event-1", "gws.call.state_changed", None, 1.0, b"{}", "sales-1", "C-7")
    store.commit_outcomes(events=[call])

    [row], _ = store.read_outbox("bus", 0, 10)
    store.dead_letter("bus", row, reason="permanent", detail="refused", attempts=1)
    [letter] = store.list_dead_letters("bus")
    store.replay_dead_letters([letter.id])
    [again] = store.read_outbox("bus", row.seq, 10)[0]  # the replayed copy

    assert (row.account, row.subject) == (again.account, again.subject) == ("sales-1", "C-7")
