"""The dispatcher drains a real outbox into fake sinks: once, in order, each at its own pace."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from daemon.config import Route, SinkSettings
from daemon.dispatcher import Dispatcher
from daemon.errors import PermanentSinkError, RetryableSinkError, SinkError
from daemon.events import Event
from daemon.metrics import Metrics
from daemon.store import AsyncStore, Store
from tests.harness.fake_sink import (
    FakeSink,
    PipelinedFakeSink,
    event_ids,
    failing_first,
    sink_settings,
    write,
)
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


async def test_a_sink_is_opened_at_start_and_one_that_cannot_open_still_delivers(
    store: AsyncStore, metrics: Metrics, capsys: pytest.CaptureFixture[str]
) -> None:
    ready, unreachable = FakeSink("ready"), FakeSink("unreachable")
    unreachable.open_error = RetryableSinkError("sink unreachable: connection refused")
    async with running(store, metrics, ready, unreachable) as dispatcher:
        await wait_until(lambda: ready.opened, timeout=DEADLINE, what="the sink opened")
        assert ready.batches == []  # before any event

        dispatcher.notify(await write(store, 1, 2))

        assert await dispatcher.drain(DEADLINE)
        assert unreachable.taken == event_ids(1, 2)
    assert "sink_open_failed" in capsys.readouterr().out


# -- pipelined sinks --------


async def test_a_pipelined_sink_gets_up_to_its_depth_of_batches_at_once_and_takes_them_in_order(
    store: AsyncStore, metrics: Metrics, inspector: Store
) -> None:
    sink = PipelinedFakeSink("bus", depth=3)
    sink.gate.clear()
    await write(store, *range(1, 11))  # from the store
    async with running(store, metrics, (sink, sink_settings("bus", batch_size=2))) as dispatcher:
        await wait_until(lambda: sink.in_flight == 3, timeout=DEADLINE, what="3 batches in hand")
        assert dispatcher.backlog() == {"bus": 10}  # nothing taken before its answer
        dispatcher.notify(await write(store, *range(11, 16)))  # and from memory
        sink.gate.set()

        assert await dispatcher.drain(DEADLINE)
        assert sink.taken == event_ids(*range(1, 16))
        assert sink.most_in_flight == 3
        assert all(len(batch) <= 2 for batch in sink.batches)
        assert await saved_cursors(dispatcher, inspector) == {"bus": 15}
        assert delivered_metric(metrics, "bus", "delivered") == 15


async def test_a_pipelined_sinks_failure_has_every_batch_in_hand_delivered_again_in_order(
    store: AsyncStore, metrics: Metrics
) -> None:
    first_fails_after_one = failing_first(RetryableSinkError("connection reset", delivered=1))
    sink = PipelinedFakeSink("bus", first_fails_after_one, depth=3)
    sink.gate.clear()
    await write(store, *range(1, 9))
    async with running(store, metrics, (sink, sink_settings("bus", batch_size=2))) as dispatcher:
        await wait_until(lambda: sink.in_flight == 3, timeout=DEADLINE, what="3 batches in hand")
        sink.gate.set()

        assert await dispatcher.drain(DEADLINE)
        assert sink.taken == event_ids(*range(1, 9))  # once each, in order
        assert sink.refused == 2  # the two sent behind the failed one took nothing
        assert sink.batches[0] == event_ids(1, 2)
        assert sink.batches[1] == event_ids(2)  # the rest of the failed one, first
        [status] = dispatcher.statuses()
        assert status.retries == 1


async def test_a_pipelined_sinks_permanent_failure_dead_letters_that_event_only(
    store: AsyncStore, metrics: Metrics, inspector: Store
) -> None:
    def refuses_event_3(ids: list[str]) -> SinkError | None:
        if "event-3" in ids:
            return PermanentSinkError("WRONGTYPE", delivered=ids.index("event-3"))
        return None

    sink = PipelinedFakeSink("bus", refuses_event_3, depth=4)
    await write(store, *range(1, 11))
    async with running(store, metrics, (sink, sink_settings("bus", batch_size=2))) as dispatcher:
        assert await dispatcher.drain(DEADLINE)

        assert sink.taken == event_ids(1, 2, *range(4, 11))
        assert [d.event_id for d in inspector.list_dead_letters()] == ["event-3"]


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
    two_then_fail_once = failing_first(RetryableSinkError("connection reset", delivered=2))
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


# -- routing --------

EMAIL, CALL, CHAT = "gws.email.state_changed", "gws.call.state_changed", "gws.chat.state_changed"
NOTIFICATION = "gws.notification"
CALLS = Route(types=("gws.call.*",))


def kind_of(n: int) -> tuple[str, str]:
    """Event n's type and account: a mix of four types and four accounts."""
    types = (EMAIL, CALL, CHAT, NOTIFICATION, CALL)
    accounts = ("default", "sales-eu", "support", "sales-us")
    return types[n % len(types)], accounts[n % 7 % len(accounts)]


def events_of(numbers: range, kind: str | None = None) -> list[Event]:
    """Events `numbers` (ids event-N): of type `kind`, or of the mix of `kind_of`."""
    return [
        Event(
            f"event-{n}",
            kind or kind_of(n)[0],
            f"email-{n}",
            1000.0 + n,
            b'{"n":%d}' % n,
            "default" if kind else kind_of(n)[1],
        )
        for n in numbers
    ]


async def write_kinds(store: AsyncStore, numbers: range, kind: str | None = None) -> int:
    return await store.submit_outcomes(events=events_of(numbers, kind))


async def publish(
    dispatcher: Dispatcher, store: AsyncStore, numbers: range, kind: str | None = None
) -> None:
    """Commit events in one transaction and tell the dispatcher, as the writer does."""
    events = events_of(numbers, kind)
    dispatcher.notify(await store.submit_outcomes(events=events), events)


def taken_by(route: Route, numbers: range) -> list[str]:
    return [f"event-{n}" for n in numbers if route.takes(*kind_of(n))]


def routed(sink: FakeSink, route: Route, **overrides: object) -> tuple[FakeSink, SinkSettings]:
    return sink, sink_settings(sink.name, types=route.types, accounts=route.accounts, **overrides)


def backlog_metric(metrics: Metrics, sink: str) -> float | None:
    return metrics.registry.get_sample_value("gws_notifyd_outbox_backlog", {"sink": sink})


async def test_a_routed_sink_gets_only_the_events_it_takes_in_order(
    store: AsyncStore, metrics: Metrics, inspector: Store
) -> None:
    sales_only = Route(accounts=("sales-*",))
    sales_calls = Route(types=("gws.call.*",), accounts=("sales-*",))
    calls, sales, both, everything = (
        FakeSink("calls"),
        FakeSink("sales"),
        FakeSink("both"),
        FakeSink("everything"),
    )
    await write_kinds(store, range(1, 41))  # waiting in the store
    pairs: list[FakeSink | tuple[FakeSink, SinkSettings]] = [
        routed(calls, CALLS, batch_size=7),
        routed(sales, sales_only),
        routed(both, sales_calls),
        everything,
    ]
    async with running(store, metrics, *pairs) as dispatcher:
        for first in range(41, 201, 20):  # and arriving in memory
            await publish(dispatcher, store, range(first, first + 20))

        assert await dispatcher.drain(DEADLINE)

        every = range(1, 201)
        assert calls.taken == taken_by(CALLS, every)
        assert sales.taken == taken_by(sales_only, every)
        assert both.taken == taken_by(sales_calls, every)
        assert set(both.taken) == set(calls.taken) & set(sales.taken)
        assert everything.taken == event_ids(*every)
        assert 0 < len(both.taken) < len(calls.taken) < len(everything.taken)
        assert max(len(b) for b in calls.batches) <= 7
        assert dispatcher.backlog() == {"calls": 0, "sales": 0, "both": 0, "everything": 0}
        assert set((await saved_cursors(dispatcher, inspector)).values()) == {200}


async def test_a_routed_sinks_backlog_counts_only_the_events_it_takes(
    store: AsyncStore, metrics: Metrics
) -> None:
    healthy = False

    def down_until_healed(ids: list[str]) -> SinkError | None:
        return None if healthy else RetryableSinkError("HTTP 503")

    flaky, steady = FakeSink("calls", down_until_healed), FakeSink("steady")
    await write_kinds(store, range(1, 11), EMAIL)
    await write_kinds(store, range(11, 13), CALL)  # its first: it fails on them
    async with running(store, metrics, routed(flaky, CALLS), steady) as dispatcher:
        await wait_until(lambda: flaky.batches, timeout=DEADLINE, what="a first attempt")
        await wait_until(
            lambda: dispatcher.backlog()["calls"] == 2,
            timeout=DEADLINE,
            what="the backlog counted in the store at start",
        )
        for first in range(13, 1013, 250):  # 1,000 events it does not take, 4 it does
            await publish(dispatcher, store, range(first, first + 249), EMAIL)
            await publish(dispatcher, store, range(first + 249, first + 250), CALL)
        await wait_until(
            lambda: dispatcher.backlog()["steady"] == 0,
            timeout=DEADLINE,
            what="the unrouted sink to take everything",
        )

        assert dispatcher.backlog()["calls"] == 6
        assert backlog_metric(metrics, "calls") == 6
        assert flaky.taken == []
        assert steady.taken == event_ids(*range(1, 1013))

        healthy = True

        assert await dispatcher.drain(DEADLINE)
        assert flaky.taken == event_ids(11, 12, 262, 512, 762, 1012)
        assert dispatcher.backlog() == {"calls": 0, "steady": 0}
        assert backlog_metric(metrics, "calls") == 0
        [status] = [s for s in dispatcher.statuses() if s.name == "calls"]
        assert status.cursor == 1012


async def test_a_routed_sink_that_takes_nothing_never_holds_back_the_others_or_the_outbox(
    store: AsyncStore, metrics: Metrics, inspector: Store
) -> None:
    chats, everything = FakeSink("chats"), FakeSink("everything")
    chats_only = Route(types=("gws.chat.*",))
    async with running(store, metrics, routed(chats, chats_only), everything) as dispatcher:
        for first in range(1, 10_001, 500):
            await publish(dispatcher, store, range(first, first + 500), EMAIL)

        assert await dispatcher.drain(DEADLINE)

        assert everything.taken == event_ids(*range(1, 10_001))
        assert chats.batches == []
        assert dispatcher.backlog() == {"chats": 0, "everything": 0}
        assert await saved_cursors(dispatcher, inspector) == {"chats": 10_000, "everything": 10_000}
        assert inspector.prune_outbox(limit=10_000) == 10_000
        assert inspector.outbox_rows == 0


@pytest.mark.parametrize("held_from", ["memory", "store"])
async def test_a_routed_sinks_saved_cursor_never_passes_an_event_in_its_hands(
    held_from: str, store: AsyncStore, metrics: Metrics, tmp_path: Path
) -> None:
    def refuse_calls(ids: list[str]) -> SinkError | None:
        return RetryableSinkError("HTTP 503")

    calls, steady = FakeSink("calls", refuse_calls), FakeSink("steady")
    await write_kinds(store, range(1, 6), EMAIL)
    if held_from == "store":
        await write_kinds(store, range(6, 7), CALL)
    async with running(store, metrics, routed(calls, CALLS), steady) as dispatcher:
        if held_from == "memory":
            await wait_until(
                lambda: dispatcher.backlog()["steady"] == 0, timeout=DEADLINE, what="a start"
            )
            await publish(dispatcher, store, range(6, 7), CALL)
        await wait_until(lambda: calls.batches, timeout=DEADLINE, what="event 6 in its hands")
        for first in range(7, 1007, 100):
            await publish(dispatcher, store, range(first, first + 100), EMAIL)
        await wait_until(
            lambda: dispatcher.backlog()["steady"] == 0,
            timeout=DEADLINE,
            what="the unrouted sink to pass everything",
        )
        await dispatcher.save_cursors()

        with contextlib.closing(Store(tmp_path / "state.db")) as reopened:
            saved = reopened.sync_sinks(["calls", "steady"])
            rows, _ = reopened.read_outbox("calls", saved["calls"], 10, CALLS)

        assert saved["steady"] == 1006
        assert saved["calls"] < 6
        assert [row.event_id for row in rows] == ["event-6"]
        assert calls.taken == []


async def test_a_routed_sink_gets_its_replayed_dead_letter_and_recounts_its_backlog(
    store: AsyncStore, metrics: Metrics, inspector: Store
) -> None:
    refusing = True

    def refuse_while_told(ids: list[str]) -> SinkError | None:
        return PermanentSinkError("HTTP 400") if refusing else None

    calls = FakeSink("calls", refuse_while_told)
    async with running(store, metrics, routed(calls, CALLS)) as dispatcher:
        await publish(dispatcher, store, range(1, 4), CALL)
        assert await dispatcher.drain(DEADLINE)
        assert len(inspector.list_dead_letters("calls")) == 3
        refusing = False

        assert inspector.replay_dead_letters([d.id for d in inspector.list_dead_letters()]) == 3
        dispatcher.notify(await store.head_seq())

        assert await dispatcher.drain(DEADLINE)
        assert calls.taken == event_ids(1, 2, 3)
        assert dispatcher.backlog() == {"calls": 0}


async def test_a_reload_with_a_changed_route_applies_it_from_where_the_sink_stood(
    store: AsyncStore, metrics: Metrics
) -> None:
    before, after = FakeSink("crm"), FakeSink("crm")
    emails = Route(types=("gws.email.*",))
    async with running(store, metrics, routed(before, emails)) as dispatcher:
        await publish(dispatcher, store, range(1, 21))
        assert await dispatcher.drain(DEADLINE)

        await dispatcher.replace_sinks([routed(after, CALLS)])
        await publish(dispatcher, store, range(21, 41))

        assert await dispatcher.drain(DEADLINE)
        assert before.taken == taken_by(emails, range(1, 21))
        assert after.taken == taken_by(CALLS, range(21, 41))


async def test_events_a_routed_sink_does_not_take_never_carry_its_cursor_past_waiting_ones(
    store: AsyncStore, metrics: Metrics, inspector: Store
) -> None:
    calls = FakeSink("calls")
    async with running(store, metrics, routed(calls, CALLS)) as dispatcher:
        # The worker waiting for events, nothing in its hands (its private state: the
        # moment this is about comes and goes between two turns of the loop).
        await wait_until(lambda: dispatcher._workers["calls"].idle, timeout=DEADLINE)
        # Two commits told in one turn of the loop, before the idle worker runs:
        # calls it takes, then chats it does not.
        first = events_of(range(1, 4), CALL)
        second = events_of(range(4, 7), CHAT)
        head_1 = await store.submit_outcomes(events=first)
        head_2 = await store.submit_outcomes(events=second)
        dispatcher.notify(head_1, first)
        dispatcher.notify(head_2, second)

        assert await dispatcher.drain(DEADLINE)

        assert calls.taken == event_ids(1, 2, 3)
        assert dispatcher.backlog() == {"calls": 0}
        assert await saved_cursors(dispatcher, inspector) == {"calls": 6}
