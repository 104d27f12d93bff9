"""Background work on a failing store never dies silently: sink workers, housekeeping, reloads.

The store is real and so are its faults: another process holds SQLite's write lock
past the busy timeout (`ExternalLock`), or garbage lands on a page under a running
store. Each part logs the failure, backs off, retries, reports it to the store's
health (readiness names `store`) and carries on once the store is back.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from daemon.dispatcher import Dispatcher
from daemon.errors import PermanentSinkError, RetryableSinkError, SinkError, StoreError
from daemon.housekeeping import Housekeeping
from daemon.metrics import Metrics
from daemon.store import AsyncStore, OutboxRow, Store, database
from daemon.store.files import wal_state
from tests.harness.fake_sink import FakeSink, event_ids, sink_settings, write
from tests.harness.log_capture import captured_logs
from tests.harness.store_faults import ExternalLock, corrupt_page, root_page
from tests.harness.waiting import wait_until

DEADLINE = 10.0
BUSY_SECONDS = 0.05


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
async def store(path: Path) -> AsyncIterator[AsyncStore]:
    opened = AsyncStore(Store(path, busy_timeout_seconds=BUSY_SECONDS), failure_exit_seconds=60)
    yield opened
    await opened.close()


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    """Log lines of the test, as structlog hands them over."""
    with captured_logs() as captured:
        yield captured


def events_named(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [line for line in logs if line.get("event") == name]


@pytest.fixture
async def dispatcher(store: AsyncStore, metrics: Metrics) -> AsyncIterator[Dispatcher]:
    started = Dispatcher(store=store, metrics=metrics, max_outbox_events=10_000)
    yield started
    await started.stop()


class PacedSink(FakeSink):
    """Takes one event at a time, each after `seconds` (a slow webhook in single mode)."""

    def __init__(self, name: str, seconds: float) -> None:
        super().__init__(name)
        self.seconds = seconds

    async def deliver(self, batch: Sequence[OutboxRow]) -> None:
        self.batches.append([row.event_id for row in batch])
        for row in batch:
            await asyncio.sleep(self.seconds)  # the sink's own pace
            self.taken.append(row.event_id)


class BrokenSink(FakeSink):
    """A sink with a bug: raises something that is not a SinkError."""

    async def deliver(self, batch: Sequence[OutboxRow]) -> None:
        raise RuntimeError("a bug in the sink")


def refuse_first(ids: list[str]) -> SinkError | None:
    return PermanentSinkError("HTTP 400") if "event-1" in ids else None


# -- sink workers --------


async def test_a_sink_worker_on_a_locked_store_logs_retries_and_carries_on(
    store: AsyncStore, dispatcher: Dispatcher, path: Path, logs: list[dict[str, Any]]
) -> None:
    locked = asyncio.Event()

    def down_then_refuse_first(ids: list[str]) -> SinkError | None:
        if not locked.is_set():
            return RetryableSinkError("HTTP 503")
        return refuse_first(ids)

    sink = FakeSink("crm", down_then_refuse_first)
    await dispatcher.start([(sink, sink_settings("crm"))])
    dispatcher.notify(await write(store, 1, 2, 3))
    async with ExternalLock(path):
        # Dead-lettering event-1 is a write: it fails while the lock is held.
        locked.set()
        await wait_until(
            lambda: "sink crm" in store.failing_duties(), timeout=DEADLINE, what="the failure"
        )
        with pytest.raises(StoreError, match="sink crm"):
            await store.check_writable()

    await wait_until(
        lambda: sink.taken == event_ids(2, 3), timeout=DEADLINE, what="the sink to carry on"
    )
    assert events_named(logs, "store_retry")[0]["duty"] == "sink crm"
    await wait_until(lambda: not store.failing_duties(), timeout=DEADLINE, what="recovery")
    await store.check_writable()


async def test_a_sink_worker_that_meets_a_corrupted_outbox_is_reported_not_silent(
    store: AsyncStore, dispatcher: Dispatcher, path: Path, logs: list[dict[str, Any]]
) -> None:
    sink = FakeSink("crm")
    await dispatcher.start([(sink, sink_settings("crm"))])
    dispatcher.notify(await write(store, *range(1, 200)))
    await wait_until(lambda: len(sink.taken) == 199, timeout=DEADLINE, what="the first events")
    other = sqlite3.connect(str(path), isolation_level=None)
    try:
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        corrupt_page(path, root_page(path, "outbox"))
        other.execute("INSERT INTO sink_cursors VALUES ('other', 0)")  # drops cached pages
    finally:
        other.close()

    # The worker's next look at the store (its idle poll) reads the broken page.
    await wait_until(
        lambda: "sink crm" in store.failing_duties(), timeout=DEADLINE, what="the failure"
    )
    with pytest.raises(StoreError, match="malformed"):
        await store.check_writable()
    assert "malformed" in events_named(logs, "store_retry")[0]["error"]


async def test_a_sink_worker_that_stops_on_its_own_is_reported(
    store: AsyncStore, dispatcher: Dispatcher
) -> None:
    await write(store, 1)
    await dispatcher.start([(BrokenSink("buggy"), sink_settings("buggy"))])

    reason = await asyncio.wait_for(dispatcher.wait_broken(), DEADLINE)

    assert "buggy" in reason
    assert "a bug in the sink" in reason


# -- reloads --------


async def test_a_reload_while_a_slow_sink_holds_a_batch_delivers_nothing_twice(
    store: AsyncStore, dispatcher: Dispatcher
) -> None:
    await write(store, *range(1, 151))
    slow = PacedSink("crm", 0.02)  # 150 events: 3 s for the batch
    await dispatcher.start([(slow, sink_settings("crm"))])
    await wait_until(lambda: slow.taken, timeout=DEADLINE, what="the batch under way")

    replacement = FakeSink("crm")
    await dispatcher.replace_sinks([(replacement, sink_settings("crm", batch_size=100))])
    await wait_until(
        lambda: len(slow.taken) + len(replacement.taken) >= 150,
        timeout=DEADLINE,
        what="every event taken",
    )

    taken = slow.taken + replacement.taken
    assert sorted(taken) == sorted(event_ids(*range(1, 151)))  # each once


async def test_concurrent_reloads_leave_one_worker_per_sink(
    store: AsyncStore, dispatcher: Dispatcher
) -> None:
    first = FakeSink("crm")
    await dispatcher.start([(first, sink_settings("crm"))])
    second, third = FakeSink("crm"), FakeSink("crm")

    await asyncio.gather(
        dispatcher.replace_sinks([(second, sink_settings("crm", batch_size=10))]),
        dispatcher.replace_sinks([(third, sink_settings("crm", batch_size=20))]),
    )
    dispatcher.notify(await write(store, 1, 2, 3))
    await wait_until(lambda: third.taken, timeout=DEADLINE, what="the last reload's sink")

    assert first.closed
    assert second.closed
    assert not third.closed
    assert dispatcher.sink_names == ["crm"]


async def test_a_reload_never_rewinds_a_sink_even_when_its_cursor_cannot_be_saved(
    store: AsyncStore, dispatcher: Dispatcher, path: Path
) -> None:
    first = FakeSink("crm")
    await dispatcher.start([(first, sink_settings("crm"))])
    dispatcher.notify(await write(store, 1, 2, 3))
    await wait_until(lambda: len(first.taken) == 3, timeout=DEADLINE, what="the first events")
    replacement = FakeSink("crm")

    async with ExternalLock(path):
        # The old worker's cursor cannot be saved, nor the new sinks synced: the
        # reload waits for the store (reporting it), and starts from memory.
        reload = asyncio.create_task(
            dispatcher.replace_sinks([(replacement, sink_settings("crm", batch_size=10))])
        )
        await wait_until(
            lambda: "dispatcher" in store.failing_duties(), timeout=DEADLINE, what="the failure"
        )
    await asyncio.wait_for(reload, DEADLINE)

    dispatcher.notify(await write(store, 4))
    await wait_until(lambda: replacement.taken, timeout=DEADLINE, what="the new event")
    assert replacement.taken == event_ids(4)


async def test_an_unchanged_sink_keeps_its_worker_across_a_reload(
    store: AsyncStore, dispatcher: Dispatcher
) -> None:
    running = FakeSink("crm")
    await dispatcher.start([(running, sink_settings("crm"))])
    rebuilt = FakeSink("crm")

    await dispatcher.replace_sinks([(rebuilt, sink_settings("crm"))])
    dispatcher.notify(await write(store, 1))

    await wait_until(lambda: running.taken, timeout=DEADLINE, what="the event")
    assert rebuilt.closed
    assert not running.closed
    assert rebuilt.batches == []


# -- housekeeping --------


def housekeeping(
    store: AsyncStore, dispatcher: Dispatcher, metrics: Metrics, **overrides: Any
) -> Housekeeping:
    values: dict[str, Any] = {
        "max_outbox_events": 10_000,
        "retention_hours": 1.0,
        "max_dead_letters": 100,
    }
    return Housekeeping(store=store, dispatcher=dispatcher, metrics=metrics, **values | overrides)


async def test_housekeeping_on_a_locked_store_logs_retries_and_resumes(
    store: AsyncStore,
    dispatcher: Dispatcher,
    metrics: Metrics,
    path: Path,
    logs: list[dict[str, Any]],
) -> None:
    await write(store, 1, 2, 3)  # no sinks: every event may be pruned
    keeper = housekeeping(store, dispatcher, metrics)
    async with ExternalLock(path):
        running = asyncio.create_task(keeper.run())
        try:
            await wait_until(
                lambda: "housekeeping" in store.failing_duties(),
                timeout=DEADLINE,
                what="the failure",
            )
            assert not running.done()
        except BaseException:
            running.cancel()
            raise
    try:
        await wait_until(lambda: store.outbox_rows == 0, timeout=DEADLINE, what="the outbox pruned")
        await wait_until(lambda: not store.failing_duties(), timeout=DEADLINE, what="recovery")
        assert events_named(logs, "store_retry")[0]["duty"] == "housekeeping"
        assert not running.done()
    finally:
        running.cancel()


async def test_checkpoints_go_on_while_a_housekeeping_round_waits(
    store: AsyncStore,
    dispatcher: Dispatcher,
    metrics: Metrics,
    path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Any backlog is checkpointed (as near the size where the WAL starts over).
    monkeypatch.setattr(database, "WAL_RESTART_BYTES", database.RESTART_MARGIN)
    stuck = asyncio.Event()  # the round's first step never ends (a busy store thread)
    monkeypatch.setattr(dispatcher, "save_cursors", stuck.wait)
    await write(store, 1, 2, 3)
    before = wal_state(path)
    assert before is not None
    assert before.backlog > 0
    running = asyncio.create_task(housekeeping(store, dispatcher, metrics).run())
    try:
        await wait_until(
            lambda: getattr(wal_state(path), "backlog", None) == 0,
            timeout=DEADLINE,
            what="the WAL checkpointed",
        )
        assert not stuck.is_set()
        assert not running.done()
    finally:
        running.cancel()


async def test_housekeeping_prunes_dead_letters_by_age_and_to_their_cap(
    store: AsyncStore, dispatcher: Dispatcher, metrics: Metrics, path: Path
) -> None:
    inspector = Store(path)
    try:
        rows = [OutboxRow(n, f"event-{n}", "t", None, 0.0, b"{}") for n in range(1, 8)]
        for row in rows:
            inspector.dead_letter("crm", row, reason="permanent", detail="x", attempts=1)
        old = time.time() - 7200
        db = sqlite3.connect(str(path))
        db.execute("UPDATE dead_letters SET failed_at=? WHERE event_id='event-1'", (old,))
        db.commit()
        db.close()

        keeper = housekeeping(store, dispatcher, metrics, retention_hours=1.0, max_dead_letters=4)
        await keeper.prune_dead_letters()

        kept = [d.event_id for d in inspector.list_dead_letters()]
    finally:
        inspector.close()
    assert kept == event_ids(4, 5, 6, 7)


# -- health --------


async def test_a_duty_failing_for_failure_exit_seconds_is_too_long(path: Path) -> None:
    store = AsyncStore(Store(path), failure_exit_seconds=0.3)
    try:
        store.report_failure("housekeeping", StoreError("database is locked"), retry_in=0.1)
        store.report_failure("sink crm", StoreError("database is locked"), retry_in=0.1)
        store.report_recovery("sink crm")

        reason = await asyncio.wait_for(store.wait_failed_too_long(), DEADLINE)

        assert reason.startswith("housekeeping has failed on the store")
        assert "database is locked" in reason
    finally:
        await store.close()


async def test_a_duty_that_recovers_in_time_is_not_too_long(path: Path) -> None:
    store = AsyncStore(Store(path), failure_exit_seconds=0.3)
    try:
        store.report_failure("housekeeping", StoreError("database is locked"), retry_in=0.1)
        waiting = asyncio.create_task(store.wait_failed_too_long())
        store.report_recovery("housekeeping")

        done, _ = await asyncio.wait({waiting}, timeout=0.6)

        assert not done
        waiting.cancel()
    finally:
        await store.close()
