"""An email Error without an email: tied by referenceId alone, within one GWS session.

GWS's Error notifications are undocumented, and one may come without an `email`
object. Its `referenceId` then ties it to a send only when exactly one pending
send of the current GWS HTTP session has that referenceId (referenceIds are
per-session counters); otherwise it is forwarded unmatched, never dropped.
"""

from __future__ import annotations

import itertools

import orjson
import pytest

from daemon.correlator import Correlator, Matched, Unmatched
from daemon.gws.messages import EmailStateChange, parse_message
from daemon.sends import SendRecord, SendStatus

_ids = itertools.count(1)


def error_without_email(reference_id: int | None) -> EmailStateChange:
    data = {
        "messageType": "EmailStateChangeMessage",
        "notificationType": "Error",
        "referenceId": reference_id,
        "errorMessage": "Email server unavailable",
    }
    parsed = parse_message("/v2/me/emails", data)
    assert isinstance(parsed, EmailStateChange)
    assert parsed.email_id is None
    assert orjson.loads(parsed.raw) == data
    return parsed


@pytest.fixture
def correlator() -> Correlator:
    return Correlator(send_timeout_seconds=120.0)


def sent(correlator: Correlator, email_id: str, reference_id: int | None) -> SendRecord:
    send = SendRecord(
        send_id=f"s{next(_ids):04d}", email_id=email_id, queue_name="Q", requested_at=1000.0
    )
    correlator.add(send)
    assert correlator.accepted(send.send_id, reference_id, 1001.0) is send
    return send


def test_the_one_pending_send_with_that_reference_id_is_resolved_as_an_error(
    correlator: Correlator,
) -> None:
    sent(correlator, "E1", 3)
    send = sent(correlator, "E2", 4)

    decision = correlator.on_notification(error_without_email(4), now=1002.0)

    assert isinstance(decision, Matched)
    assert decision.send is send
    assert send.status is SendStatus.RESOLVED
    assert send.outcome_state == "Error"
    assert len(correlator) == 1


def test_a_reference_id_no_pending_send_has_is_unmatched(correlator: Correlator) -> None:
    sent(correlator, "E1", 3)
    assert isinstance(correlator.find(error_without_email(9)), Unmatched)
    assert isinstance(correlator.find(error_without_email(None)), Unmatched)


def test_sends_whose_answer_had_no_reference_id_are_not_guessed_at(
    correlator: Correlator,
) -> None:
    sent(correlator, "E1", None)
    assert isinstance(correlator.find(error_without_email(1)), Unmatched)


def test_reference_ids_of_an_earlier_gws_session_do_not_count(correlator: Correlator) -> None:
    sent(correlator, "OLD", 1)
    correlator.new_session()
    assert isinstance(correlator.find(error_without_email(1)), Unmatched)
    new = sent(correlator, "NEW", 1)
    decision = correlator.find(error_without_email(1))
    assert isinstance(decision, Matched)
    assert decision.send is new


def test_two_pending_sends_of_one_session_with_that_reference_id_are_ambiguous(
    correlator: Correlator,
) -> None:
    sent(correlator, "E1", 5)
    sent(correlator, "E2", 5)  # a counter that came round again
    assert isinstance(correlator.find(error_without_email(5)), Unmatched)


def test_a_resolved_send_no_longer_holds_its_reference_id(correlator: Correlator) -> None:
    send = sent(correlator, "E1", 6)
    correlator.resolve(send.send_id, "Sent", 1003.0)
    assert isinstance(correlator.find(error_without_email(6)), Unmatched)
