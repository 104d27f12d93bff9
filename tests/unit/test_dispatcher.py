"""The dispatcher drains a real outbox into fake sinks: once, in order, each at its own pace."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from daemon.config import SinkSettings
from daemon.dispatcher import Dispatcher
from daemon.errors import PermanentSinkError, RetryableSinkError, SinkError
from daemon.metrics import Metrics
from daemon.store import AsyncStore, Store
from tests.harness.fake_sink import FakeSink, event_ids, sink_settings, write
from tests.harness.waiting import wait_until

DEADLINE = 5.0


async def saved_cursors(dispatcher: Dispatcher, inspector: Store) -> dict[str, int]:
    """The cursors on disk once the dispatcher has saved what moved (housekeeping's job)."""
    await dispatcher.save_cursors()
    return inspector.sync_sinks(dispatcher.sink_names)


@pytest.fixture
def inspector(store: AsyncStore, tmp_path: Path) -> Iterator[Store]:
    """A second connection to the same file, as the CLI opens one."""
    opened = Store(tmp_path / "state.db")
    yield opened
    opened.close()


@contextlib.asynccontextmanager
async def running(
    store: AsyncStore,
    metrics: Metrics,
    *sinks: FakeSink | tuple[FakeSink, SinkSettings],
) -> AsyncIterator[Dispatcher]:
    pairs = [s if isinstance(s, tuple) else (s, sink_settings(s.name)) for s in sinks]
    dispatcher = Dispatcher(store=store, metrics=metrics, max_outbox_events=10_000)
    await dispatcher.start(pairs)
    try:
        yield dispatcher
    finally:
        await dispatcher.stop()


def delivered_metric(metrics: Metrics, sink: str, outcome: str) -> float | None:
    return metrics.registry.get_sample_value(
        "gws_notifyd_sink_deliveries_total", {"sink": sink, "outcome": outcome}
    )


# -- delivery --------


async def test_every_event_reaches_every_sink_once_in_order(
    store: AsyncStore, metrics: Metrics, inspector: Store
) -> None:
    small, large = FakeSink("small"), FakeSink("large")
    async with running(
        store, metrics, (small, sink_settings("small", batch_size=7)), large
    ) as dispatcher:
        dispatcher.notify(await write(store, *range(1, 13)))
        dispatcher.notify(await write(store, *range(13, 26)))

        assert await dispatcher.drain(DEADLINE)

        assert small.taken == event_ids(*range(1, 26))
        assert large.taken == event_ids(*range(1, 26))
        assert max(len(b) for b in small.batches) <= 7
        assert await saved_cursors(dispatcher, inspector) == {"small": 25, "large": 25}
        assert dispatcher.backlog() == {"small": 0, "large": 0}
        assert delivered_metric(metrics, "small", "delivered") == 25


async def test_events_waiting_before_start_are_delivered(
    store: AsyncStore, metrics: Metrics
) -> None:
    await write(store, 1, 2, 3)
    sink = FakeSink("late")
    async with running(store, metrics, sink) as dispatcher:
        assert await dispatcher.drain(DEADLINE)
        assert sink.taken == event_ids(1, 2, 3)


async def test_drain_with_nothing_written_is_immediately_true(
    store: AsyncStore, metrics: Metrics
) -> None:
    async with running(store, metrics, FakeSink("idle")) as dispatcher:
        assert await dispatcher.drain(0.0)


async def test_stop_closes_the_sinks(store: AsyncStore, metrics: Metrics) -> None:
    sink = FakeSink("closing")
    async with running(store, metrics, sink):
        pass
    assert sink.closed


# -- retryable failures --------


async def test_failing_sink_is_retried_while_another_keeps_progressing(
    store: AsyncStore, metrics: Metrics, inspector: Store
) -> None:
    healthy = False

    def down_until_healed(ids: list[str]) -> SinkError | None:
        return None if healthy else RetryableSinkError("HTTP 503")

    flaky, steady = FakeSink("flaky", down_until_healed), FakeSink("steady")
    async with running(store, metrics, flaky, steady) as dispatcher:
        dispatcher.notify(await write(store, 1, 2, 3))
        await wait_until(
            lambda: len(flaky.batches) >= 3,
            timeout=DEADLINE,
            what="three attempts of the failing sink",
        )
        dispatcher.notify(await write(store, 4, 5))
        await wait_until(
            lambda: len(steady.taken) == 5,
            timeout=DEADLINE,
            what="the healthy sink to take everything",
        )

        assert flaky.taken == []
        assert not await dispatcher.drain(0.1)
        [flaky_status] = [s for s in dispatcher.statuses() if s.name == "flaky"]
        assert flaky_status.retries >= 2
        assert flaky_status.failing_since is not None
        assert flaky_status.last_error is not None
        assert "503" in flaky_status.last_error
        retried = delivered_metric(metrics, "flaky", "retried")
        assert retried is not None
        assert retried >= 2

        healthy = True

        assert await dispatcher.drain(DEADLINE)
        assert flaky.taken == event_ids(1, 2, 3, 4, 5)
        assert steady.taken == event_ids(1, 2, 3, 4, 5)
        [healed] = [s for s in dispatcher.statuses() if s.name == "flaky"]
        assert healed.failing_since is None
        assert healed.last_error is None
        assert inspector.list_dead_letters() == []


async def test_partial_delivery_is_not_handed_over_twice(
    store: AsyncStore, metrics: Metrics
) -> None:
    calls = 0

    def two_then_fail_once(ids: list[str]) -> SinkError | None:
        nonlocal calls
        calls += 1
        return RetryableSinkError("connection reset", delivered=2) if calls == 1 else None

    sink = FakeSink("partial", two_then_fail_once)
    await write(store, 1, 2, 3, 4, 5)
    async with running(store, metrics, sink) as dispatcher:
        assert await dispatcher.drain(DEADLINE)

        assert sink.batches[0] == event_ids(1, 2, 3, 4, 5)
        assert sink.batches[1] == event_ids(3, 4, 5)
        assert sink.taken == event_ids(1, 2, 3, 4, 5)


async def test_retryable_failure_past_give_up_time_is_dead_lettered(
    store: AsyncStore, metrics: Metrics, inspector: Store
) -> None:
    def always_down(ids: list[str]) -> SinkError | None:
        return RetryableSinkError("HTTP 503")

    sink = FakeSink("hopeless", always_down)
    await write(store, 1)
    pair = (sink, sink_settings("hopeless", give_up_after_seconds=0.2))
    async with running(store, metrics, pair) as dispatcher:
        assert await dispatcher.drain(DEADLINE)

        [letter] = inspector.list_dead_letters("hopeless")
        assert letter.event_id == "event-1"
        assert letter.reason == "gave_up"
        assert letter.attempts >= 2
        assert len(sink.batches) >= 2


# -- permanent failures --------


async def test_permanent_failure_dead_letters_exactly_that_event_and_continues(
    store: AsyncStore, metrics: Metrics, inspector: Store
) -> None:
    def refuse_event_3(ids: list[str]) -> SinkError | None:
        if "event-3" in ids:
            return PermanentSinkError("HTTP 400", delivered=ids.index("event-3"))
        return None

    picky, other = FakeSink("picky", refuse_event_3), FakeSink("other")
    await write(store, 1, 2, 3, 4, 5)
    async with running(store, metrics, picky, other) as dispatcher:
        dispatcher.notify(await write(store, 6))

        assert await dispatcher.drain(DEADLINE)

        assert picky.taken == event_ids(1, 2, 4, 5, 6)
        assert other.taken == event_ids(1, 2, 3, 4, 5, 6)
        [letter] = inspector.list_dead_letters()
        assert (letter.sink, letter.event_id, letter.reason) == ("picky", "event-3", "permanent")
        assert letter.body == b'{"n":3}'
        assert letter.detail == "HTTP 400"
        assert await saved_cursors(dispatcher, inspector) == {"picky": 6, "other": 6}
        assert delivered_metric(metrics, "picky", "dead_lettered") == 1
        assert dispatcher.dead_letter_counts == {"picky": 1}


async def test_permanent_failure_of_the_last_event_catches_up(
    store: AsyncStore, metrics: Metrics, inspector: Store
) -> None:
    def refuse_all(ids: list[str]) -> SinkError | None:
        return PermanentSinkError("HTTP 422")

    sink = FakeSink("refusing", refuse_all)
    await write(store, 1, 2)
    async with running(store, metrics, sink) as dispatcher:
        assert await dispatcher.drain(DEADLINE)
        letters = inspector.list_dead_letters("refusing")
        assert [d.event_id for d in letters] == event_ids(1, 2)
        assert sink.taken == []


async def test_replayed_dead_letter_goes_to_its_sink_only(
    store: AsyncStore, metrics: Metrics, inspector: Store
) -> None:
    refusing = True

    def refuse_while_told(ids: list[str]) -> SinkError | None:
        return PermanentSinkError("HTTP 400") if refusing else None

    picky, other = FakeSink("picky", refuse_while_told), FakeSink("other")
    await write(store, 1)
    async with running(store, metrics, picky, other) as dispatcher:
        assert await dispatcher.drain(DEADLINE)
        [letter] = inspector.list_dead_letters()
        refusing = False

        assert inspector.replay_dead_letters([letter.id]) == 1
        dispatcher.notify(await store.head_seq())

        assert await dispatcher.drain(DEADLINE)
        assert picky.taken == event_ids(1)
        assert other.taken == event_ids(1)
        assert inspector.list_dead_letters() == []


async def test_duplicates_a_bus_dropped_are_counted_for_that_sink(
    store: AsyncStore, metrics: Metrics
) -> None:
    bus = FakeSink("bus")
    async with running(store, metrics, bus) as dispatcher:
        bus.duplicates_dropped = 2  # what the bus reported for the batch below
        dispatcher.notify(await write(store, 1, 2, 3))
        assert await dispatcher.drain(DEADLINE)

    assert (
        metrics.registry.get_sample_value(
            "gws_notifyd_sink_duplicates_dropped_total", {"sink": "bus"}
        )
        == 2
    )
    assert delivered_metric(metrics, "bus", "delivered") == 3
