"""Group commit on a store that fails for a while: one failure never poisons what follows.

The store is real and so is the fault: another process holds SQLite's write lock
(`ExternalLock`) past the store's busy timeout, then lets go.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from daemon.correlator import Correlator
from daemon.errors import StoreError
from daemon.events import Event, EventFactory
from daemon.metrics import Metrics
from daemon.sends import SendRecord
from daemon.store import AsyncStore, OutcomeWriter, Store, send_row
from daemon.store.rows import StoredEvent
from daemon.tracker import Tracker
from tests.harness.store_faults import ExternalLock, fill_disk, first_async_failure, small_disk
from tests.harness.waiting import wait_until

DEADLINE = 10.0
BUSY_SECONDS = 0.05


def new_send(n: int) -> SendRecord:
    return SendRecord(f"s-{n:04d}", f"email-{n}", "Outbound", 1000.0 + n, "Hi", ("a@example.com",))


def event(n: int) -> Event:
    return Event(f"event-{n}", "gws.email.state_changed", f"email-{n}", 1000.0 + n, b'{"n":%d}' % n)


class Committed:
    """The writer's `on_committed`: every event it reported on disk, in order."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.heads: list[int] = []

    def __call__(self, head: int, events: Sequence[StoredEvent]) -> None:
        self.heads.append(head)
        self.ids.extend(e.id for e in events)


class Cursors:
    """The writer's `cursors()`: hands out what is set, once."""

    def __init__(self) -> None:
        self.next: dict[str, int] | None = None

    def __call__(self) -> dict[str, int] | None:
        given, self.next = self.next, None
        return given


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
async def store(path: Path) -> AsyncIterator[AsyncStore]:
    opened = AsyncStore(Store(path, busy_timeout_seconds=BUSY_SECONDS))
    yield opened
    await opened.close()


@pytest.fixture
def committed() -> Committed:
    return Committed()


@pytest.fixture
def cursors() -> Cursors:
    return Cursors()


@pytest.fixture
def writer(store: AsyncStore, committed: Committed, cursors: Cursors) -> OutcomeWriter:
    return OutcomeWriter(store, on_committed=committed, cursors=cursors)


def query(path: Path, sql: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(str(path))
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


async def test_a_failed_group_fails_only_its_sends_and_the_next_group_commits(
    writer: OutcomeWriter, path: Path
) -> None:
    async with ExternalLock(path):
        with pytest.raises(StoreError, match="locked"):
            await writer.write(inserts=[send_row(new_send(1))])

    await writer.write(inserts=[send_row(new_send(2))])

    assert query(path, "SELECT send_id FROM sends") == [("s-0002",)]


async def test_outcomes_written_while_the_store_fails_are_committed_once_it_recovers(
    writer: OutcomeWriter, store: AsyncStore, committed: Committed, path: Path
) -> None:
    async with ExternalLock(path):
        written = writer.write(events=[event(1), event(2)])
        await wait_until(
            lambda: "writer" in store.failing_duties(), timeout=DEADLINE, what="a failed commit"
        )
        assert not written.done()

    assert await written > 0
    assert committed.ids == ["event-1", "event-2"]
    assert query(path, "SELECT event_id FROM outbox ORDER BY seq") == [("event-1",), ("event-2",)]
    await wait_until(
        lambda: not store.failing_duties(), timeout=DEADLINE, what="the writer to recover"
    )


async def test_cursors_handed_to_a_failed_commit_are_saved_by_a_later_one(
    writer: OutcomeWriter, store: AsyncStore, cursors: Cursors, path: Path
) -> None:
    await store.sync_sinks(["crm"])
    await writer.write(events=[event(1), event(2)])
    async with ExternalLock(path):
        cursors.next = {"crm": 2}
        written = writer.write(events=[event(3)])
        await wait_until(
            lambda: "writer" in store.failing_duties(), timeout=DEADLINE, what="a failed commit"
        )

    await written
    assert query(path, "SELECT sink, seq FROM sink_cursors") == [("crm", 2)]


async def test_flush_on_a_failing_store_raises_instead_of_waiting_for_ever(
    writer: OutcomeWriter, path: Path
) -> None:
    async with ExternalLock(path):
        writer.write(events=[event(1)])
        with pytest.raises(StoreError, match="locked"):
            await writer.flush()


async def test_a_send_that_cannot_be_recorded_on_a_full_disk_is_a_store_error(
    tmp_path: Path,
) -> None:
    with small_disk(tmp_path / "disk") as disk:
        store = AsyncStore(Store(disk / "state.db", busy_timeout_seconds=BUSY_SECONDS))
        try:
            tracker = Tracker(
                correlator=Correlator(send_timeout_seconds=60),
                store=store,
                writer=OutcomeWriter(store, on_committed=Committed()),
                events=EventFactory(source="https://gws.example.com/api/v2/me/emails"),
                metrics=Metrics().account("default"),
                channels=["/v2/me/emails"],
            )
            fill_disk(disk)
            recorded, error = await first_async_failure(
                lambda n: tracker.register(
                    SendRecord(f"s-{n}", f"e-{n}", "Outbound", 1.0, "x" * 8000)
                )
            )

            assert "full" in str(error)
            assert len(tracker) == recorded  # the send that failed is not pending
        finally:
            await store.close()
