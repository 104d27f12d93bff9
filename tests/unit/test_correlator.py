"""Correlation of pending sends and notifications: the rules of daemon/correlator.py."""

from __future__ import annotations

import itertools

import orjson
import pytest

from daemon.correlator import Correlator, Matched, Unmatched
from daemon.gws.messages import EmailStateChange
from daemon.sends import SendRecord, SendStatus

TIMEOUT = 120.0
_ids = itertools.count(1)


def make_send(
    email_id: str = "E1", *, requested_at: float = 1000.0, **fields: object
) -> SendRecord:
    return SendRecord(
        send_id=f"s{next(_ids):04d}",
        email_id=email_id,
        queue_name="Outbound",
        requested_at=requested_at,
        **fields,  # type: ignore[arg-type]
    )


def change(
    email_id: str = "E1",
    *,
    reference_id: int | None = None,
    notification_type: str = "StatusChange",
    state: str | None = "Sent",
) -> EmailStateChange:
    data = {
        "messageType": "EmailStateChangeMessage",
        "notificationType": notification_type,
        "referenceId": reference_id,
        "email": {"id": email_id, "state": state},
    }
    return EmailStateChange(
        channel="/v2/me/emails",
        notification_type=notification_type,
        reference_id=reference_id,
        email_id=email_id,
        state=state,
        raw=orjson.dumps(data),
    )


@pytest.fixture
def correlator() -> Correlator:
    return Correlator(send_timeout_seconds=TIMEOUT)


def sent(
    correlator: Correlator, email_id: str = "E1", *, reference_id: int | None, at: float = 1001.0
) -> SendRecord:
    """A send registered and accepted by GWS with the given answer."""
    send = make_send(email_id, requested_at=at - 1)
    correlator.add(send)
    assert correlator.accepted(send.send_id, reference_id, at) is send
    return send


# -- rule 2: referenceId from the answer --------


def test_notification_with_the_answered_reference_id_resolves_the_send(
    correlator: Correlator,
) -> None:
    send = sent(correlator, reference_id=26)

    decision = correlator.on_notification(change(reference_id=26), now=1002.0)

    assert decision == Matched(send, change(reference_id=26))
    assert send.status is SendStatus.RESOLVED
    assert send.outcome_state == "Sent"
    assert send.resolved_at == 1002.0
    assert correlator.get(send.send_id) is None
    assert len(correlator) == 0


def test_reference_match_with_another_email_id_does_not_match(correlator: Correlator) -> None:
    send = sent(correlator, "E1", reference_id=26)

    decision = correlator.on_notification(change("E2", reference_id=26), now=1002.0)

    assert isinstance(decision, Unmatched)
    assert correlator.get(send.send_id) is send
    assert send.status is SendStatus.ACCEPTED


def test_outcome_of_another_reference_on_the_same_email_does_not_match(
    correlator: Correlator,
) -> None:
    send = sent(correlator, "E1", reference_id=26)

    decision = correlator.on_notification(change("E1", reference_id=27), now=1002.0)

    assert isinstance(decision, Unmatched)
    assert send.pending


def test_several_pending_sends_of_one_email_are_each_matched_by_reference(
    correlator: Correlator,
) -> None:
    first = sent(correlator, "E1", reference_id=26)
    second = sent(correlator, "E1", reference_id=27)
    third = sent(correlator, "E1", reference_id=28)

    for send, reference_id in ((second, 27), (first, 26), (third, 28)):
        assert correlator.sizes()["byEmail"] == 1
        decision = correlator.on_notification(change("E1", reference_id=reference_id), 1002.0)
        assert isinstance(decision, Matched)
        assert decision.send is send
        assert not decision.repeat

    assert [s.pending for s in (first, second, third)] == [False] * 3
    assert correlator.sizes()["byEmail"] == 0


def test_the_send_left_of_two_for_one_email_is_found_by_email_alone(
    correlator: Correlator,
) -> None:
    first = sent(correlator, "E1", reference_id=None)
    second = sent(correlator, "E1", reference_id=None)
    correlator.time_out(first.send_id, 1002.0)

    decision = correlator.on_notification(change("E1", reference_id=40), now=1003.0)

    assert isinstance(decision, Matched)
    assert decision.send is second
    assert correlator.sizes()["byEmail"] == 0


def test_reference_match_resolves_whatever_the_state(correlator: Correlator) -> None:
    send = sent(correlator, reference_id=26)
    decision = correlator.on_notification(change(reference_id=26, state="Completed"), now=1002.0)
    assert isinstance(decision, Matched)
    assert send.outcome_state == "Completed"


# -- rule 3: by email id when the answer had no referenceId --------


def test_sent_status_change_for_the_email_resolves_and_teaches_the_reference_id(
    correlator: Correlator,
) -> None:
    send = sent(correlator, reference_id=None)

    decision = correlator.on_notification(change(reference_id=31), now=1002.0)

    assert isinstance(decision, Matched)
    assert decision.send is send
    assert not decision.repeat
    assert send.reference_id == 31
    assert send.status is SendStatus.RESOLVED


def test_error_notification_resolves_the_send_with_state_error(correlator: Correlator) -> None:
    send = sent(correlator, reference_id=None)

    decision = correlator.on_notification(
        change(notification_type="Error", state=None, reference_id=40), now=1002.0
    )

    assert isinstance(decision, Matched)
    assert send.outcome_state == "Error"
    assert send.status is SendStatus.RESOLVED


def test_error_notification_with_the_answered_reference_resolves(correlator: Correlator) -> None:
    send = sent(correlator, reference_id=26)
    decision = correlator.on_notification(
        change(notification_type="Error", state="Composing", reference_id=26), now=1002.0
    )
    assert isinstance(decision, Matched)
    assert send.outcome_state == "Error"


@pytest.mark.parametrize("state", ["Composing", "Processing", None])
def test_status_change_to_another_state_without_reference_match_does_not_resolve(
    correlator: Correlator, state: str | None
) -> None:
    send = sent(correlator, reference_id=None)

    decision = correlator.on_notification(change(reference_id=12, state=state), now=1002.0)

    assert isinstance(decision, Unmatched)
    assert send.pending
    assert send.reference_id is None


@pytest.mark.parametrize(
    "notification_type", ["PropertiesUpdated", "EmailSaved", "AttachmentAdded"]
)
def test_non_outcome_notifications_are_unmatched(
    correlator: Correlator, notification_type: str
) -> None:
    send = sent(correlator, reference_id=26)

    decision = correlator.on_notification(
        change(notification_type=notification_type, reference_id=26), now=1002.0
    )

    assert isinstance(decision, Unmatched)
    assert send.pending


def test_notification_for_an_unknown_email_is_unmatched(correlator: Correlator) -> None:
    sent(correlator, "E1", reference_id=None)
    assert isinstance(correlator.on_notification(change("E9"), now=1002.0), Unmatched)


# -- rule 1: the notification may overtake the answer --------


def test_notification_before_the_answer_matches_the_in_flight_send(correlator: Correlator) -> None:
    send = make_send()
    correlator.add(send)
    assert send.pending

    decision = correlator.on_notification(change(reference_id=26), now=1001.0)

    assert isinstance(decision, Matched)
    assert decision.send is send
    assert send.reference_id == 26
    assert send.status is SendStatus.RESOLVED
    assert correlator.accepted(send.send_id, 26, now=1002.0) is None
    assert send.status is SendStatus.RESOLVED
    assert correlator.due(now=1_000_000.0) == []


# -- rule 4: repeats --------


def test_repeat_after_resolution_is_matched_to_the_same_send(correlator: Correlator) -> None:
    send = sent(correlator, reference_id=26)
    first = correlator.on_notification(change(reference_id=26), now=1002.0)

    again = correlator.on_notification(change(reference_id=26), now=1003.0)

    assert isinstance(first, Matched)
    assert not first.repeat
    assert again == Matched(send, change(reference_id=26), repeat=True)
    assert send.resolved_at == 1002.0


def test_repeat_without_reference_id_is_matched_to_the_same_send(correlator: Correlator) -> None:
    send = sent(correlator, reference_id=None)
    correlator.on_notification(change(reference_id=None), now=1002.0)

    again = correlator.on_notification(change(reference_id=None), now=1003.0)

    assert isinstance(again, Matched)
    assert again.repeat
    assert again.send is send


def test_outcome_with_another_reference_after_resolution_is_not_a_repeat(
    correlator: Correlator,
) -> None:
    sent(correlator, reference_id=26)
    correlator.on_notification(change(reference_id=26), now=1002.0)

    assert isinstance(correlator.on_notification(change(reference_id=99), now=1003.0), Unmatched)


def test_recently_resolved_sends_are_forgotten_past_capacity() -> None:
    correlator = Correlator(send_timeout_seconds=TIMEOUT, recent_capacity=2)
    for email_id in ("E1", "E2", "E3"):
        sent(correlator, email_id, reference_id=None)
        correlator.on_notification(change(email_id), now=1002.0)

    assert isinstance(correlator.on_notification(change("E1"), now=1003.0), Unmatched)
    assert isinstance(correlator.on_notification(change("E3"), now=1003.0), Matched)


# -- referenceId reuse --------


def test_reused_reference_id_matches_each_send_by_its_email(correlator: Correlator) -> None:
    # A new GWS session restarts its counter: two pending sends hold referenceId 5.
    old = sent(correlator, "E1", reference_id=5, at=1001.0)
    new = sent(correlator, "E2", reference_id=5, at=1010.0)

    for_new = correlator.on_notification(change("E2", reference_id=5), now=1011.0)
    for_old = correlator.on_notification(change("E1", reference_id=5), now=1012.0)

    assert isinstance(for_new, Matched)
    assert for_new.send is new
    assert isinstance(for_old, Matched)
    assert for_old.send is old
    assert not for_old.repeat
    assert len(correlator) == 0


def test_reused_reference_id_does_not_match_a_resolved_send_of_another_email(
    correlator: Correlator,
) -> None:
    old = sent(correlator, "E1", reference_id=5)
    correlator.on_notification(change("E1", reference_id=5), now=1002.0)
    new = sent(correlator, "E2", reference_id=5, at=1010.0)

    decision = correlator.on_notification(change("E2", reference_id=5), now=1011.0)

    assert isinstance(decision, Matched)
    assert decision.send is new
    assert not decision.repeat
    assert old.status is SendStatus.RESOLVED


def test_answer_disagreeing_with_a_known_reference_keeps_the_known_one(
    correlator: Correlator,
) -> None:
    # The send already holds a referenceId (restored from the store after a restart,
    # where it had been learned); an answer that says otherwise does not replace it.
    send = make_send("E1")
    send.reference_id = 8
    correlator.add(send)

    assert correlator.accepted(send.send_id, 9, now=1001.0) is send

    assert send.reference_id == 8
    assert isinstance(correlator.on_notification(change("E1", reference_id=9), 1002.0), Unmatched)
    assert isinstance(correlator.on_notification(change("E1", reference_id=8), 1002.0), Matched)


# -- rejection, loss, time-out ----------------------------------------------------------------


def test_reject_resolves_the_send_as_rejected(correlator: Correlator) -> None:
    send = make_send()
    correlator.add(send)
    rejected = correlator.reject(send.send_id, 2, "invalid state", now=1001.0)
    assert rejected is send
    assert (send.status, send.status_code, send.status_message) == (
        SendStatus.REJECTED,
        2,
        "invalid state",
    )
    assert correlator.reject(send.send_id, 2, "again", now=1002.0) is None


def test_answer_lost_keeps_the_send_pending_and_matchable(correlator: Correlator) -> None:
    send = make_send()
    correlator.add(send)
    assert correlator.answer_lost(send.send_id, now=1001.0) is send
    assert send.status is SendStatus.UNANSWERED
    assert send.pending

    decision = correlator.on_notification(change(reference_id=3), now=1002.0)

    assert isinstance(decision, Matched)
    assert decision.send is send


def test_timed_out_send_leaves_the_pending_set(correlator: Correlator) -> None:
    send = sent(correlator, reference_id=None)
    assert correlator.time_out(send.send_id, now=2000.0) is send
    assert send.status is SendStatus.TIMED_OUT
    assert correlator.pending() == []


def test_resolve_by_get_records_the_state(correlator: Correlator) -> None:
    send = sent(correlator, reference_id=None)
    assert correlator.resolve(send.send_id, "Sent", now=1500.0) is send
    assert (send.status, send.outcome_state, send.resolved_at) == (
        SendStatus.RESOLVED,
        "Sent",
        1500.0,
    )
    assert correlator.resolve(send.send_id, "Sent", now=1501.0) is None


# -- rule 6: deadlines --------


def test_accepted_send_is_due_send_timeout_after_its_answer(correlator: Correlator) -> None:
    send = sent(correlator, reference_id=None, at=1001.0)

    assert correlator.next_deadline() == 1001.0 + TIMEOUT
    assert correlator.due(now=1001.0 + TIMEOUT - 0.001) == []
    assert correlator.due(now=1001.0 + TIMEOUT) == [send]


def test_a_send_being_checked_is_not_handed_out_again(correlator: Correlator) -> None:
    send = sent(correlator, reference_id=None, at=1001.0)
    assert correlator.due(now=5000.0) == [send]

    assert correlator.due(now=5001.0) == []
    assert correlator.due(now=9999.0) == []


def test_in_flight_send_is_never_due(correlator: Correlator) -> None:
    correlator.add(make_send(requested_at=1000.0))
    assert correlator.next_deadline() is None
    assert correlator.due(now=1_000_000.0) == []


def test_postponed_send_is_due_again_at_the_new_time_only(correlator: Correlator) -> None:
    send = sent(correlator, reference_id=None, at=1001.0)
    first_deadline = 1001.0 + TIMEOUT
    assert correlator.due(now=first_deadline) == [send]

    correlator.postpone(send.send_id, until=first_deadline + 30)

    assert correlator.next_deadline() == first_deadline + 30
    assert correlator.due(now=first_deadline + 29) == []
    assert correlator.due(now=first_deadline + 30) == [send]
    assert correlator.due(now=first_deadline + 31) == []


def test_rescheduled_send_is_not_handed_out_twice(correlator: Correlator) -> None:
    # Postponed before its first deadline: the old heap entry must not also fire.
    send = sent(correlator, reference_id=None, at=1001.0)
    correlator.postpone(send.send_id, until=1050.0)

    assert correlator.due(now=1050.0) == [send]
    correlator.postpone(send.send_id, until=1200.0)
    handed = correlator.due(now=1121.0) + correlator.due(now=1200.0) + correlator.due(now=5000.0)

    assert handed == [send]


def test_postponing_to_the_same_deadline_hands_the_send_out_once(correlator: Correlator) -> None:
    send = sent(correlator, reference_id=None, at=1001.0)
    correlator.postpone(send.send_id, until=1001.0 + TIMEOUT)
    assert correlator.due(now=5000.0) == [send]
    assert correlator.due(now=6000.0) == []


def test_send_being_checked_is_not_handed_out_again(correlator: Correlator) -> None:
    send = sent(correlator, reference_id=None, at=1001.0)
    assert correlator.due(now=5000.0) == [send]
    assert correlator.due(now=9999.0) == []
    assert send.pending


def test_new_send_timeout_moves_deadlines_already_set(correlator: Correlator) -> None:
    send = sent(correlator, reference_id=None, at=1001.0)
    assert correlator.next_deadline() == 1001.0 + TIMEOUT

    correlator.set_send_timeout(TIMEOUT * 10)

    assert correlator.due(now=1001.0 + TIMEOUT) == []
    assert correlator.next_deadline() == 1001.0 + TIMEOUT * 10
    assert correlator.due(now=1001.0 + TIMEOUT * 10) == [send]


def test_shorter_send_timeout_makes_a_send_due_sooner(correlator: Correlator) -> None:
    send = sent(correlator, reference_id=None, at=1001.0)

    correlator.set_send_timeout(TIMEOUT / 2)

    assert correlator.due(now=1001.0 + TIMEOUT / 2) == [send]


def test_resolved_send_is_not_due(correlator: Correlator) -> None:
    send = sent(correlator, reference_id=None, at=1001.0)
    correlator.on_notification(change(), now=1002.0)
    assert correlator.due(now=5000.0) == []
    assert correlator.next_deadline() is None
    assert send.status is SendStatus.RESOLVED


def test_postpone_of_a_resolved_send_does_nothing(correlator: Correlator) -> None:
    send = sent(correlator, reference_id=None, at=1001.0)
    assert correlator.due(now=5000.0) == [send]
    correlator.resolve(send.send_id, "Sent", now=5001.0)
    correlator.postpone(send.send_id, until=5002.0)
    assert correlator.due(now=6000.0) == []


def test_due_sends_come_out_in_deadline_order(correlator: Correlator) -> None:
    late = sent(correlator, "E1", reference_id=None, at=1010.0)
    early = sent(correlator, "E2", reference_id=None, at=1001.0)
    assert correlator.next_deadline() == 1001.0 + TIMEOUT
    assert correlator.due(now=5000.0) == [early, late]


def test_answer_lost_send_is_due_after_the_timeout(correlator: Correlator) -> None:
    send = make_send(requested_at=1000.0)
    correlator.add(send)
    correlator.answer_lost(send.send_id, now=1010.0)
    assert correlator.due(now=1010.0 + TIMEOUT) == [send]


# -- restore after a restart --------


def test_restored_sends_are_due_and_matchable() -> None:
    accepted = make_send("E1", requested_at=900.0)
    accepted.status, accepted.answered_at, accepted.reference_id = SendStatus.ACCEPTED, 901.0, 26
    unanswered = make_send("E2", requested_at=950.0)
    unanswered.status, unanswered.answered_at = SendStatus.UNANSWERED, 960.0
    correlator = Correlator(send_timeout_seconds=TIMEOUT)

    correlator.restore([unanswered, accepted])

    assert len(correlator) == 2
    assert correlator.next_deadline() == 901.0 + TIMEOUT
    assert correlator.due(now=960.0 + TIMEOUT) == [accepted, unanswered]
    decision = correlator.on_notification(change("E1", reference_id=26), now=1100.0)
    assert isinstance(decision, Matched)
    assert decision.send is accepted
    decision = correlator.on_notification(change("E2", reference_id=4), now=1100.0)
    assert isinstance(decision, Matched)
    assert decision.send is unanswered


def test_restore_gives_a_reused_reference_to_the_newest_send() -> None:
    older = make_send("E1", requested_at=900.0)
    newer = make_send("E2", requested_at=950.0)
    for send in (older, newer):
        send.status, send.answered_at, send.reference_id = SendStatus.ACCEPTED, send.requested_at, 5
    correlator = Correlator(send_timeout_seconds=TIMEOUT)

    correlator.restore([newer, older])

    decision = correlator.on_notification(change("E2", reference_id=5), now=1000.0)
    assert isinstance(decision, Matched)
    assert decision.send is newer
    decision = correlator.on_notification(change("E1", reference_id=5), now=1000.0)
    assert isinstance(decision, Matched)
    assert decision.send is older


def test_restored_send_without_answer_time_counts_from_its_request() -> None:
    send = make_send(requested_at=900.0)
    send.status = SendStatus.UNANSWERED
    correlator = Correlator(send_timeout_seconds=TIMEOUT)
    correlator.restore([send])
    assert correlator.next_deadline() == 900.0 + TIMEOUT
