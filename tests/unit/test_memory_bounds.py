"""What grows with traffic stays within its documented bound, measured with tracemalloc.

The bounds (docstrings of `daemon.correlator` and `daemon.dispatcher`): at most
10,000 recently resolved sends, each without the 4 KiB buffer orjson leaves on
every string it makes; a deadline heap of at most twice the pending sends plus
a little; events held in memory for a sink at their own size; pending sends
restored from the store, with their indexes, under 0.7 KB each.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon.correlator import Correlator
from daemon.dispatcher import Dispatcher
from daemon.events import EventFactory
from daemon.gws.messages import EmailStateChange
from daemon.metrics import Metrics
from daemon.sends import SendRecord, SendStatus
from daemon.sink_worker import MAX_FRESH
from daemon.store import AsyncStore, Store
from daemon.store.schema import send_row
from tests.harness.fake_sink import FakeSink, sink_settings

RECENT = 10_000


@pytest.fixture
def traced() -> Iterator[Callable[[], int]]:
    """Bytes allocated (and still held) since the fixture started."""
    gc.collect()
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    yield lambda: tracemalloc.get_traced_memory()[0] - start
    tracemalloc.stop()


def new_send(n: int) -> SendRecord:
    return SendRecord(
        send_id=f"s{n:020d}",
        email_id=f"MEM-{n:08d}",
        queue_name="Outbound",
        requested_at=1_000_000.0 + n,
        subject="Your case",
        to=("customer@example.com",),
    )


def outcome(send: SendRecord) -> EmailStateChange:
    return EmailStateChange(
        channel="/v2/me/emails",
        notification_type="StatusChange",
        reference_id=None,
        email_id=send.email_id,
        state="Sent",
        raw=b'{"id":"%s","state":"Sent","subject":"Your case"}' % send.email_id.encode(),
    )


def test_recently_resolved_sends_are_capped_and_lean(traced: Callable[[], int]) -> None:
    correlator = Correlator(send_timeout_seconds=120, recent_capacity=RECENT)
    events = EventFactory(source="https://gws.example.com/api/v2/me/emails")
    for n in range(RECENT + 2_000):
        send = new_send(n)
        correlator.add(send)
        correlator.accepted(send.send_id, None, 1_000_000.0 + n)
        change = outcome(send)
        decision = correlator.find(change)
        events.state_changed(change, send, received_at=1_000_001.0 + n)  # as the tracker does
        correlator.apply(decision, 1_000_001.0 + n)
    del send, change, decision
    gc.collect()

    held = traced()

    assert correlator.sizes()["recent"] == RECENT
    assert correlator.sizes()["pending"] == 0
    assert held / RECENT < 1500, f"{held / RECENT:.0f} bytes per recently resolved send"


def test_pending_sends_restored_from_the_store_are_lean(
    tmp_path: Path, traced: Callable[[], int]
) -> None:
    # The README's memory table: ~0.7 KB a pending send, with its indexes (by id,
    # email, referenceId, deadline); 100,000 of them held within 150 MB of RSS.
    # (0.73 KB here before an email's one send was held without a list of one.)
    count = 10_000
    store = Store(tmp_path / "state.db")
    try:
        accepted = []
        for n in range(count):
            send = new_send(n)
            send.subject = f"Re: your case {n}"  # most subjects are unique
            send.status, send.reference_id, send.answered_at = SendStatus.ACCEPTED, n, 1e6 + n
            accepted.append(send_row(send))
        store.commit_outcomes(inserts=accepted)
        del accepted, send
        gc.collect()
        before = traced()

        correlator = Correlator(send_timeout_seconds=120)
        correlator.restore(store.load_pending())
        gc.collect()
        held = traced() - before
    finally:
        store.close()

    assert len(correlator) == count
    assert held / count < 700, f"{held / count:.0f} bytes per pending send"


def test_the_deadline_heap_stays_within_twice_the_pending_sends() -> None:
    correlator = Correlator(send_timeout_seconds=120)
    sends = [new_send(n) for n in range(3_000)]
    for n, send in enumerate(sends):
        correlator.add(send)
        correlator.accepted(send.send_id, None, 1_000_000.0 + n)
    for seconds in (60, 90, 120, 150, 180):  # SIGHUPs
        correlator.set_send_timeout(seconds)
    for n, send in enumerate(sends[:2_500]):
        correlator.resolve(send.send_id, "Sent", 1_000_100.0 + n)

    sizes = correlator.sizes()

    assert sizes["pending"] == 500
    assert sizes["deadlines"] <= 2 * sizes["pending"] + 1024
    # Every send still pending keeps its deadline.
    due = correlator.due(1e12)
    assert {s.send_id for s in due} == {s.send_id for s in sends[2_500:]}


def test_a_deadline_postponed_again_and_again_does_not_pile_up() -> None:
    correlator = Correlator(send_timeout_seconds=1)
    send = new_send(1)
    correlator.add(send)
    correlator.accepted(send.send_id, None, 0.0)
    for attempt in range(5_000):
        [checked] = correlator.due(10.0 + attempt)
        correlator.postpone(checked.send_id, 11.0 + attempt)

    assert correlator.sizes()["deadlines"] <= 2 + 1024


async def test_events_held_in_memory_for_a_lagging_sink_take_their_own_size(
    tmp_path: Path, traced: Callable[[], int]
) -> None:
    store = AsyncStore(Store(tmp_path / "state.db"))
    stalled = asyncio.Event()

    class StalledSink(FakeSink):
        async def deliver(self, batch: object) -> None:
            await stalled.wait()

    dispatcher = Dispatcher(store=store, metrics=Metrics(), max_outbox_events=100_000)
    try:
        await dispatcher.start([(StalledSink("slow"), sink_settings("slow", batch_size=100))])
        factory = EventFactory(source="https://gws.example.com/api/v2/me/emails")
        before = traced()
        for n in range(MAX_FRESH * 100):
            send = new_send(n)
            event = factory.state_changed(outcome(send), send, received_at=2_000_000.0 + n)
            dispatcher.notify(n + 1, [event])
        del event, send
        gc.collect()

        per_event = (traced() - before) / (MAX_FRESH * 100)
    finally:
        stalled.set()
        await dispatcher.stop()
        await store.close()
    assert per_event < 1200, f"{per_event:.0f} bytes per event held for the sink"
