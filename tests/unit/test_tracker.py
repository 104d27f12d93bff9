"""The tracker: sends, answers, notifications and read-backs become send rows and events.

A real store on `tmp_path` and a tracker wired as `daemon.app` wires it; its clock is
one the tests move, and notifications arrive as the Bayeux client hands them over.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.cometd import Message
from daemon.events import (
    CALL_STATE_CHANGED,
    DEVICE_STATE_CHANGED,
    NOTIFICATION,
    SEND_REJECTED,
    SEND_TIMED_OUT,
    STATE_CHANGED,
    Event,
    EventFactory,
)
from daemon.gws.messages import DEFAULT_MAX_MESSAGE_BYTES, Notification
from daemon.sends import SendRecord, SendStatus
from daemon.store import MALFORMED_SINK, AsyncStore, Store, send_row
from daemon.tracker import Tracker
from tests.harness.log_capture import captured_logs

CHANNEL = "/v2/me/emails"
CALLS = "/v2/me/calls"
TIMEOUT = 60.0  # the tracker fixture's send timeout (conftest.SEND_TIMEOUT_SECONDS)
START = 1_000_000.0
_numbers = itertools.count(1)


class FakeClock:
    """The tracker's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def new_send(email_id: str, clock: FakeClock) -> SendRecord:
    return SendRecord(
        send_id=f"s-test-{next(_numbers):04d}",
        email_id=email_id,
        queue_name="Outbound",
        requested_at=clock.now,
        subject="Your case",
        to=("customer@example.com",),
    )


def notification(
    email_id: str,
    *,
    reference_id: int | None = None,
    state: str = "Sent",
    notification_type: str = "StatusChange",
) -> Message:
    """An EmailStateChangeMessage as GWS publishes it on the emails channel."""
    data: dict[str, Any] = {
        "messageType": "EmailStateChangeMessage",
        "notificationType": notification_type,
        "email": {"id": email_id, "state": state, "emailType": "Outbound"},
    }
    if reference_id is not None:
        data["referenceId"] = reference_id
    return Message(CHANNEL, data)


def call(call_id: str, state: str = "Ringing", **fields: Any) -> Message:
    """A CallStateChangeMessage as GWS publishes it on the calls channel."""
    data = {
        "messageType": "CallStateChangeMessage",
        "notificationType": "StatusChange",
        "call": {"id": call_id, "state": state, **fields},
    }
    return Message(CALLS, data)


def device(device_id: str, state: str = "Ready") -> Message:
    data = {
        "messageType": "DeviceStateChangeMessage",
        "devices": [{"id": device_id, "deviceState": "Active", "userState": {"state": state}}],
    }
    return Message("/v2/me/devices", data)


async def registered(tracker: Tracker, clock: FakeClock, email_id: str) -> SendRecord:
    send = new_send(email_id, clock)
    await tracker.register(send)
    return send


async def accepted(
    tracker: Tracker, clock: FakeClock, email_id: str, reference_id: int | None = None
) -> SendRecord:
    send = await registered(tracker, clock, email_id)
    assert tracker.accepted(send.send_id, reference_id) is send
    return send


async def stored(store: AsyncStore, send: SendRecord) -> SendRecord:
    row = await store.get_send(send.send_id)
    assert row is not None
    return row


# -- answers and notifications ---------------------------------------------------------


async def test_an_accepted_send_is_resolved_by_its_notification_with_one_event(
    tracker: Tracker,
    store: AsyncStore,
    clock: FakeClock,
    committed: list[dict[str, Any]],
    metric_value: Callable[..., float],
) -> None:
    send = await accepted(tracker, clock, "E-1", reference_id=7)
    assert tracker.get(send.send_id) is send
    assert send.status is SendStatus.ACCEPTED

    clock.now += 0.5
    await tracker.on_batch([notification("E-1", reference_id=7)])
    await tracker.flush()

    assert tracker.get(send.send_id) is None
    [event] = committed
    assert event["type"] == STATE_CHANGED
    assert event["subject"] == "E-1"
    assert event["data"]["send"]["sendId"] == send.send_id
    assert event["data"]["correlated"] is True
    assert event["data"]["reconciled"] is False
    assert event["data"]["referenceId"] == 7
    assert event["data"]["state"] == "Sent"
    assert event["data"]["latencySeconds"] == 0.5
    row = await stored(store, send)
    assert (row.status, row.outcome_state, row.reference_id) == (SendStatus.RESOLVED, "Sent", 7)
    assert metric_value("gws_notifyd_pending_sends") == 0
    assert metric_value("gws_notifyd_correlations_total", result="matched") == 1
    assert metric_value("gws_notifyd_sends_total", outcome="accepted") == 1


async def test_a_notification_that_overtakes_the_answer_still_matches_by_email_id(
    tracker: Tracker, store: AsyncStore, clock: FakeClock, committed: list[dict[str, Any]]
) -> None:
    send = await registered(tracker, clock, "E-2")

    await tracker.on_batch([notification("E-2", reference_id=3)])
    await tracker.flush()
    late_answer = tracker.accepted(send.send_id, 3)
    await tracker.flush()

    assert late_answer is None
    [event] = committed
    assert event["data"]["correlated"] is True
    assert event["data"]["send"]["sendId"] == send.send_id
    row = await stored(store, send)
    assert (row.status, row.reference_id) == (SendStatus.RESOLVED, 3)


async def test_a_notification_for_no_pending_send_is_forwarded_uncorrelated(
    tracker: Tracker,
    clock: FakeClock,
    committed: list[dict[str, Any]],
    metric_value: Callable[..., float],
) -> None:
    send = await accepted(tracker, clock, "E-3", reference_id=1)

    await tracker.on_batch([notification("OTHER", reference_id=1)])
    await tracker.flush()

    assert tracker.get(send.send_id) is send
    [event] = committed
    assert event["subject"] == "OTHER"
    assert event["data"]["correlated"] is False
    assert event["data"]["send"] is None
    assert metric_value("gws_notifyd_correlations_total", result="unmatched") == 1


async def test_a_repeated_outcome_carries_the_same_event_id(
    tracker: Tracker, clock: FakeClock, committed: list[dict[str, Any]]
) -> None:
    send = await accepted(tracker, clock, "E-4", reference_id=4)

    await tracker.on_batch([notification("E-4", reference_id=4)])
    await tracker.on_batch([notification("E-4", reference_id=4)])
    await tracker.flush()

    first, repeat = committed
    assert repeat["id"] == first["id"]
    assert repeat["data"]["send"]["sendId"] == send.send_id


@pytest.mark.parametrize(
    ("http_status", "outcome"), [(400, "rejected"), (None, "error")], ids=["refused", "never-left"]
)
async def test_a_rejected_send_emits_send_rejected_and_is_no_longer_pending(
    tracker: Tracker,
    store: AsyncStore,
    clock: FakeClock,
    committed: list[dict[str, Any]],
    metric_value: Callable[..., float],
    http_status: int | None,
    outcome: str,
) -> None:
    send = await registered(tracker, clock, "E-5")

    await tracker.rejected(
        send.send_id, status_code=2, status_message="Queue 'X' not found", http_status=http_status
    )

    assert tracker.get(send.send_id) is None
    [event] = committed
    assert event["type"] == SEND_REJECTED
    assert event["data"]["statusCode"] == 2
    assert event["data"]["statusMessage"] == "Queue 'X' not found"
    assert event["data"]["httpStatus"] == http_status
    assert event["data"]["send"]["sendId"] == send.send_id
    row = await stored(store, send)
    assert (row.status, row.status_code) == (SendStatus.REJECTED, 2)
    assert metric_value("gws_notifyd_sends_total", outcome=outcome) == 1
    assert metric_value("gws_notifyd_pending_sends") == 0


async def test_a_lost_answer_leaves_the_send_pending_as_unanswered_with_a_deadline(
    tracker: Tracker, store: AsyncStore, clock: FakeClock, committed: list[dict[str, Any]]
) -> None:
    send = await registered(tracker, clock, "E-6")
    clock.now += 10

    await tracker.answer_lost(send.send_id, "timeout")

    assert tracker.get(send.send_id) is send
    assert (await stored(store, send)).status is SendStatus.UNANSWERED
    assert tracker.next_deadline() == clock.now + TIMEOUT
    assert committed == []


# -- malformed input -------------------------------------------------------------------


async def test_malformed_notifications_become_dead_letters_of_the_listener_and_are_counted(
    tracker: Tracker,
    store: AsyncStore,
    tmp_path: Path,
    committed: list[dict[str, Any]],
    metric_value: Callable[..., float],
) -> None:
    await tracker.on_batch(
        [
            Message(CHANNEL, "not an object"),
            Message(CHANNEL, {"messageType": "EmailStateChangeMessage", "notificationType": "X"}),
            notification("E-7"),
        ]
    )
    await tracker.flush()

    assert await store.dead_letter_counts() == {MALFORMED_SINK: 2}
    inspector = Store(tmp_path / "state.db")
    try:
        reasons = [letter.reason for letter in inspector.list_dead_letters(MALFORMED_SINK)]
    finally:
        inspector.close()
    assert sorted(reasons) == ["no_email", "not_an_object"]
    assert metric_value("gws_notifyd_notifications_malformed_total", reason="not_an_object") == 1
    assert metric_value("gws_notifyd_notifications_malformed_total", reason="no_email") == 1
    # The good message beside them still became its event.
    assert [event["subject"] for event in committed] == ["E-7"]


# -- other notifications ---------------------------------------------------------------


async def test_a_chunk_of_email_and_call_messages_becomes_events_in_arrival_order_in_one_commit(
    tracker: Tracker,
    store: AsyncStore,
    clock: FakeClock,
    committed: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    send = await accepted(tracker, clock, "E-10", reference_id=10)
    await tracker.flush()
    transactions: list[dict[str, Any]] = []
    submit = store.submit_outcomes

    def recorded(**rows: Any) -> Any:
        transactions.append(rows)
        return submit(**rows)

    monkeypatch.setattr(store, "submit_outcomes", recorded)

    await tracker.on_batch(
        [
            call("C-1"),
            notification("E-10", reference_id=10),
            device("D-1", "NotReady"),
            notification("OTHER"),
            call("C-1", "Established"),
        ]
    )
    await tracker.flush()

    assert [(e["type"], e["subject"]) for e in committed] == [
        (CALL_STATE_CHANGED, "C-1"),
        (STATE_CHANGED, "E-10"),
        (DEVICE_STATE_CHANGED, "D-1"),
        (STATE_CHANGED, "OTHER"),
        (CALL_STATE_CHANGED, "C-1"),
    ]
    assert committed[1]["data"]["correlated"] is True
    assert committed[4]["data"]["notification"]["call"]["state"] == "Established"
    [transaction] = transactions
    assert [event.id for event in transaction["events"]] == [e["id"] for e in committed]
    assert [update[-1] for update in transaction["updates"]] == [send.send_id]
    assert (await stored(store, send)).status is SendStatus.RESOLVED


async def test_a_call_event_holds_the_message_and_the_account(
    tracker: Tracker, clock: FakeClock, committed: list[dict[str, Any]]
) -> None:
    message = call("C-2", callType="Inbound")

    await tracker.on_batch([message])
    await tracker.flush()

    [event] = committed
    assert event["source"] == "https://gws.example.com/api/v2/me?account=default"
    assert event["time"] == "1970-01-12T13:46:40.000000Z"
    assert event["data"] == {
        "account": "default",
        "channel": CALLS,
        "messageType": "CallStateChangeMessage",
        "notificationType": "StatusChange",
        "notification": message.data,
    }


async def test_other_notifications_are_counted_with_labels_from_fixed_sets(
    tracker: Tracker, metric_value: Callable[..., float]
) -> None:
    await tracker.on_batch(
        [
            call("C-3"),
            call("C-3", "Released"),
            device("D-2"),
            Message(CHANNEL, {"messageType": "SupervisorStateChangeMessage"}),
            Message(
                "/v2/me/workbins",
                {"messageType": "WorkbinStateChangeMessage", "notificationType": "ContentChanged"},
            ),
        ]
    )
    await tracker.flush()

    received = "gws_notifyd_notifications_received_total"
    # Only the emails channel is subscribed in the fixture: the others are "other".
    calls = {"channel": "other", "message_type": "CallStateChangeMessage"}
    assert metric_value(received, **calls, notification_type="StatusChange") == 2
    devices = {"channel": "other", "message_type": "DeviceStateChangeMessage"}
    assert metric_value(received, **devices, notification_type="none") == 1
    unknown = {"channel": CHANNEL, "message_type": "other", "notification_type": "none"}
    assert metric_value(received, **unknown) == 1
    workbins = {"channel": "other", "message_type": "WorkbinStateChangeMessage"}
    assert metric_value(received, **workbins, notification_type="other") == 1


async def test_other_notifications_log_one_line_a_chunk_with_counts_by_type(
    tracker: Tracker, committed: list[dict[str, Any]]
) -> None:
    with captured_logs() as logs:
        await tracker.on_batch(
            [
                call("C-4"),
                notification("E-11"),
                call("C-5"),
                device("D-3"),
                Message(CALLS, {"messageType": "ErrorMessage", "errorCode": 54}),
                call("C-4", "Established"),
            ]
        )
        await tracker.flush()

    info = [line for line in logs if line["level"] == "info"]
    assert [line["event"] for line in info] == ["email_state_changed", "notifications_forwarded"]
    forwarded = info[1]
    assert forwarded["count"] == 5
    assert forwarded["by_type"] == {
        CALL_STATE_CHANGED: 3,
        DEVICE_STATE_CHANGED: 1,
        NOTIFICATION: 1,
    }
    assert len(committed) == 6


async def test_a_chunk_of_email_notifications_only_logs_no_forwarded_line(
    tracker: Tracker,
) -> None:
    with captured_logs() as logs:
        await tracker.on_batch([notification("E-12"), notification("E-13")])
        await tracker.flush()

    assert [line["event"] for line in logs if line["level"] == "info"] == [
        "email_state_changed",
        "email_state_changed",
    ]


async def test_an_oversized_call_message_is_a_dead_letter_and_the_rest_go_on(
    tracker: Tracker,
    store: AsyncStore,
    committed: list[dict[str, Any]],
    metric_value: Callable[..., float],
) -> None:
    huge = call("C-6", userData={"note": "x" * DEFAULT_MAX_MESSAGE_BYTES})

    await tracker.on_batch([huge, call("C-7")])
    await tracker.flush()

    assert await store.dead_letter_counts() == {MALFORMED_SINK: 1}
    assert metric_value("gws_notifyd_notifications_malformed_total", reason="oversized") == 1
    assert [event["subject"] for event in committed] == ["C-7"]


async def test_a_notification_whose_event_cannot_be_built_is_kept_as_unprocessable(
    tracker: Tracker,
    store: AsyncStore,
    committed: list[dict[str, Any]],
    metric_value: Callable[..., float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    build = EventFactory.notification

    def failing(self: EventFactory, n: Notification, *, received_at: float) -> Event:
        if n.subject == "C-8":
            raise ValueError("cannot build")
        return build(self, n, received_at=received_at)

    monkeypatch.setattr(EventFactory, "notification", failing)

    await tracker.on_batch([call("C-8"), notification("E-14"), call("C-9")])
    await tracker.flush()

    assert [event["subject"] for event in committed] == ["E-14", "C-9"]
    assert await store.dead_letter_counts() == {MALFORMED_SINK: 1}
    assert metric_value("gws_notifyd_notifications_malformed_total", reason="unprocessable") == 1


# -- read-backs ------------------------------------------------------------------------


async def test_read_back_of_a_sent_email_resolves_the_send_as_reconciled(
    tracker: Tracker,
    store: AsyncStore,
    clock: FakeClock,
    committed: list[dict[str, Any]],
    metric_value: Callable[..., float],
) -> None:
    send = await accepted(tracker, clock, "E-8", reference_id=8)

    resolved = await tracker.read_back(send, {"id": "E-8", "state": "Sent"}, final=False)

    assert resolved is True
    assert tracker.get(send.send_id) is None
    [event] = committed
    assert event["type"] == STATE_CHANGED
    assert event["data"]["reconciled"] is True
    assert event["data"]["notification"] is None
    assert event["data"]["state"] == "Sent"
    assert (await stored(store, send)).status is SendStatus.RESOLVED
    assert metric_value("gws_notifyd_correlations_total", result="reconciled") == 1
    assert metric_value("gws_notifyd_reconciliations_total", result="resolved") == 1


async def test_read_back_past_the_deadline_times_out_a_send_still_composing(
    tracker: Tracker,
    store: AsyncStore,
    clock: FakeClock,
    committed: list[dict[str, Any]],
    metric_value: Callable[..., float],
) -> None:
    send = await accepted(tracker, clock, "E-9")

    resolved = await tracker.read_back(send, {"id": "E-9", "state": "Composing"}, final=True)

    assert resolved is True
    assert tracker.get(send.send_id) is None
    [event] = committed
    assert event["type"] == SEND_TIMED_OUT
    assert event["data"]["state"] == "Composing"
    row = await stored(store, send)
    assert (row.status, row.outcome_state) == (SendStatus.TIMED_OUT, "Composing")
    assert metric_value("gws_notifyd_reconciliations_total", result="timed_out") == 1


async def test_read_back_before_the_deadline_leaves_a_send_still_composing_pending(
    tracker: Tracker,
    store: AsyncStore,
    clock: FakeClock,
    committed: list[dict[str, Any]],
    metric_value: Callable[..., float],
) -> None:
    send = await accepted(tracker, clock, "E-10")

    resolved = await tracker.read_back(send, {"id": "E-10", "state": "Composing"}, final=False)
    await tracker.flush()

    assert resolved is False
    assert tracker.get(send.send_id) is send
    assert committed == []
    assert (await stored(store, send)).status is SendStatus.ACCEPTED
    assert metric_value("gws_notifyd_reconciliations_total", result="still_pending") == 1


async def test_read_back_of_a_send_resolved_meanwhile_changes_nothing(
    tracker: Tracker, clock: FakeClock, committed: list[dict[str, Any]]
) -> None:
    send = await accepted(tracker, clock, "E-11", reference_id=11)
    await tracker.on_batch([notification("E-11", reference_id=11)])

    resolved = await tracker.read_back(send, {"id": "E-11", "state": "Sent"}, final=True)
    await tracker.flush()

    assert resolved is False
    assert [event["data"]["reconciled"] for event in committed] == [False]


# -- restore ---------------------------------------------------------------------------


async def test_restore_turns_in_flight_sends_into_unanswered_ones(
    tracker: Tracker, store: AsyncStore, clock: FakeClock, metric_value: Callable[..., float]
) -> None:
    # On disk from a run that died: one send forwarded without an answer, one accepted.
    in_flight = new_send("R-1", clock)
    answered = new_send("R-2", clock)
    answered.status, answered.answered_at = SendStatus.ACCEPTED, clock.now
    await store.submit_outcomes(inserts=[send_row(in_flight), send_row(answered)])
    clock.now += 30

    restored = await tracker.restore()
    await tracker.flush()

    assert restored == 2
    assert {s.send_id for s in tracker.pending()} == {in_flight.send_id, answered.send_id}
    restored_in_flight = tracker.get(in_flight.send_id)
    assert restored_in_flight is not None
    assert restored_in_flight.status is SendStatus.UNANSWERED
    assert restored_in_flight.answered_at == clock.now
    assert (await stored(store, in_flight)).status is SendStatus.UNANSWERED
    assert (await stored(store, answered)).status is SendStatus.ACCEPTED
    assert metric_value("gws_notifyd_pending_sends") == 2
    # Both get a deadline, each from its own answer.
    assert [s.send_id for s in tracker.due(START + TIMEOUT)] == [answered.send_id]
    assert [s.send_id for s in tracker.due(clock.now + TIMEOUT)] == [in_flight.send_id]


# -- what is pending, and deadlines ------------------------------------------------------


async def test_pending_get_and_len_show_only_sends_waiting_for_their_outcome(
    tracker: Tracker, clock: FakeClock
) -> None:
    waiting = await accepted(tracker, clock, "P-1")
    refused = await registered(tracker, clock, "P-2")
    await tracker.rejected(refused.send_id, status_code=2, status_message="no", http_status=400)

    assert tracker.pending() == [waiting]
    assert tracker.get(waiting.send_id) is waiting
    assert tracker.get(refused.send_id) is None
    assert len(tracker) == 1


async def test_a_send_waiting_for_its_answer_has_no_deadline(
    tracker: Tracker, clock: FakeClock
) -> None:
    await registered(tracker, clock, "D-1")

    assert tracker.next_deadline() is None
    assert tracker.due(clock.now + 10 * TIMEOUT) == []


async def test_due_hands_out_a_send_past_its_deadline_once_until_postponed(
    tracker: Tracker, clock: FakeClock
) -> None:
    send = await accepted(tracker, clock, "D-2")
    deadline = clock.now + TIMEOUT
    assert tracker.next_deadline() == deadline

    assert tracker.due(deadline - 1) == []
    assert tracker.due(deadline) == [send]
    assert tracker.due(deadline + 1) == []  # being checked: not handed out twice

    tracker.postpone(send.send_id, deadline + 5)

    assert tracker.next_deadline() == deadline + 5
    assert tracker.due(deadline + 4) == []
    assert tracker.due(deadline + 5) == [send]


async def test_set_send_timeout_moves_a_deadline_already_set(
    tracker: Tracker, clock: FakeClock
) -> None:
    send = await accepted(tracker, clock, "D-3")
    assert tracker.next_deadline() == clock.now + TIMEOUT

    tracker.set_send_timeout(5.0)

    assert tracker.next_deadline() == clock.now + 5.0
    assert tracker.due(clock.now + 5.0) == [send]
