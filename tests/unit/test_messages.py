"""Notifications: parsed once, at the edge, into typed objects; never raises on bad input."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.cometd import Message
from daemon.gws.messages import (
    KEPT_BYTES,
    KNOWN_OTHER_TYPES,
    MALFORMED_REASONS,
    EmailStateChange,
    Ignored,
    Malformed,
    parse_batch,
    parse_message,
)
from tests.harness.edits import edited

CHANNEL = "/v2/me/emails"

# The "Notification with new message" of the GWS API v2 documentation page of the email Send
# operation, verbatim.
GWS_SEND_NOTIFICATION: dict[str, Any] = {
    "referenceId": 26,
    "notificationType": "StatusChange",
    "messageType": "EmailStateChangeMessage",
    "email": {
        "body": "Feelslikegood.",
        "userData": {"DISP_KEY": "resolved", "UserData2": 123456789, "UserData1": "DATA1"},
        "from": "htcc@gplus-w2k3-gf80",
        "uri": "http://localhost: 8080/api/v2/email/01QG9WAK37H38024",
        "capabilities": [],
        "to": ["qwerty@gplus-w2k3-gf80", "bruce.one@witcher.xyz"],
        "state": "Sent",
        "mime": "text/html",
        "id": "01QG9WAK37H38024",
        "subject": "HelloEmail",
    },
}


def notification(**changes: Any) -> dict[str, Any]:
    """The GWS sample with top-level keys replaced (None deletes the key)."""
    return edited(GWS_SEND_NOTIFICATION, changes)


def with_email(**changes: Any) -> dict[str, Any]:
    return edited(GWS_SEND_NOTIFICATION, changes, within="email")


def test_the_gws_sample_notification_parses_into_an_email_state_change() -> None:
    parsed = parse_message(CHANNEL, GWS_SEND_NOTIFICATION)

    assert isinstance(parsed, EmailStateChange)
    assert parsed.channel == CHANNEL
    assert parsed.notification_type == "StatusChange"
    assert parsed.reference_id == 26
    assert parsed.email_id == "01QG9WAK37H38024"
    assert parsed.state == "Sent"
    assert parsed.is_outcome
    assert orjson.loads(parsed.raw) == GWS_SEND_NOTIFICATION


def test_numeric_string_reference_id_is_accepted_as_an_integer() -> None:
    parsed = parse_message(CHANNEL, notification(referenceId="26"))
    assert isinstance(parsed, EmailStateChange)
    assert parsed.reference_id == 26


def test_follow_up_notification_without_reference_id_parses() -> None:
    parsed = parse_message(
        CHANNEL, notification(referenceId=None, notificationType="PropertiesUpdated")
    )
    assert isinstance(parsed, EmailStateChange)
    assert parsed.reference_id is None
    assert not parsed.is_outcome


def test_an_error_notification_without_state_is_an_outcome() -> None:
    parsed = parse_message(CHANNEL, with_email(state=None) | {"notificationType": "Error"})
    assert isinstance(parsed, EmailStateChange)
    assert parsed.state is None
    assert parsed.is_outcome


def test_an_unknown_state_is_data_not_an_error() -> None:
    parsed = parse_message(CHANNEL, with_email(state="Quarantined"))
    assert isinstance(parsed, EmailStateChange)
    assert parsed.state == "Quarantined"


@pytest.mark.parametrize("message_type", sorted(KNOWN_OTHER_TYPES))
def test_known_other_message_types_are_ignored(message_type: str) -> None:
    parsed = parse_message("/v2/me/calls", {"messageType": message_type, "call": {}})
    assert parsed == Ignored("/v2/me/calls", message_type)


def test_the_documented_spellings_are_known_and_the_invented_ones_are_not() -> None:
    assert {
        "OpenmediaStateChangeMessage",
        "WorkbinStateChangeMessage",
        "WorkbinSubscriptionStateChangeMessage",
        "ErrorMessage",
        "MessageLogUpdated",
        "OutboundRecordMessage",
    } <= KNOWN_OTHER_TYPES
    assert not {"OpenMediaStateChangeMessage", "WorkbinContentChanged"} & KNOWN_OTHER_TYPES


@pytest.mark.parametrize("message_type", ["FaxStateChangeMessage", "x", "PasswordChangeRequired"])
def test_a_well_formed_message_of_an_unknown_type_is_data_not_malformed(
    message_type: str,
) -> None:
    parsed = parse_message("/v2/me", {"messageType": message_type, "anything": [1]})
    assert parsed == Ignored("/v2/me", message_type)


@pytest.mark.parametrize(
    "notification_type",
    ["StatusChange", "PropertiesUpdated", "EmailSaved", "AttachmentAdded", "AttachmentRemoved"],
)
def test_every_email_notification_type_parses(notification_type: str) -> None:
    parsed = parse_message(CHANNEL, notification(notificationType=notification_type))
    assert isinstance(parsed, EmailStateChange)
    assert parsed.notification_type == notification_type


def test_an_inbound_email_in_processing_with_extra_fields_parses() -> None:
    inbound = notification(
        referenceId=32,
        email={
            "id": "0002KaCJ7EHD000A",
            "state": "Processing",
            "receivedDate": "2015-01-20T14:15:03.000+0000",
            "assignedTo": "agent1",
            "emailType": "Inbound",
            "contactId": "0002KaCJ7EHD0009",
            "suggestedQueueUris": [],
        },
    )
    parsed = parse_message(CHANNEL, inbound)
    assert isinstance(parsed, EmailStateChange)
    assert (parsed.email_id, parsed.state, parsed.reference_id) == (
        "0002KaCJ7EHD000A",
        "Processing",
        32,
    )


@pytest.mark.parametrize(
    "email", [None, {}, {"id": ""}, {"state": "Composing"}], ids=["none", "empty", "blank", "no-id"]
)
def test_an_error_without_an_email_is_an_outcome_with_no_email_id(email: object) -> None:
    data = {
        "messageType": "EmailStateChangeMessage",
        "notificationType": "Error",
        "referenceId": 7,
        "errorMessage": "Email server unavailable",
    }
    if email is not None:
        data["email"] = email
    parsed = parse_message(CHANNEL, data)
    assert isinstance(parsed, EmailStateChange)
    assert (parsed.email_id, parsed.reference_id, parsed.state) == (None, 7, None)
    assert parsed.is_outcome
    assert orjson.loads(parsed.raw) == data


def test_an_error_without_email_or_reference_id_still_parses() -> None:
    data = {"messageType": "EmailStateChangeMessage", "notificationType": "Error"}
    parsed = parse_message(CHANNEL, data)
    assert isinstance(parsed, EmailStateChange)
    assert (parsed.email_id, parsed.reference_id) == (None, None)


MALFORMED_CASES: list[tuple[str, object]] = [
    ("not_an_object", ["messageType", "EmailStateChangeMessage"]),
    ("not_an_object", "EmailStateChangeMessage"),
    ("not_an_object", None),
    ("no_message_type", notification(messageType=None)),
    ("no_message_type", notification(messageType="")),
    ("no_message_type", notification(messageType=7)),
    ("no_notification_type", notification(notificationType=None)),
    ("no_notification_type", notification(notificationType=3)),
    ("no_notification_type", notification(notificationType="")),
    ("no_email", notification(email=None)),
    ("no_email", notification(email="01QG9WAK37H38024")),
    ("no_email", notification(notificationType="Error", email="01QG9WAK37H38024")),
    ("no_email_id", with_email(id=None)),
    ("no_email_id", with_email(id="")),
    ("no_email_id", with_email(id=42)),
    ("no_email_id", notification(notificationType="Error", email={"id": 42})),
    ("bad_reference_id", notification(notificationType="Error", email=None, referenceId="x")),
    ("bad_reference_id", notification(referenceId="twenty-six")),
    ("bad_reference_id", notification(referenceId=26.5)),
    ("bad_reference_id", notification(referenceId=True)),
    ("bad_reference_id", notification(referenceId=[26])),
    ("bad_reference_id", notification(referenceId="-1")),
    ("bad_state", with_email(state=1)),
    ("bad_state", with_email(state={"name": "Sent"})),
]


@pytest.mark.parametrize(("reason", "data"), MALFORMED_CASES)
def test_malformed_input_gets_its_reason(reason: str, data: object) -> None:
    parsed = parse_message(CHANNEL, data)
    assert isinstance(parsed, Malformed)
    assert parsed.reason == reason
    assert parsed.channel == CHANNEL
    assert parsed.detail


def test_every_malformed_reason_is_produced_by_some_input() -> None:
    covered = {reason for reason, _ in MALFORMED_CASES} | {"oversized"}
    # "unprocessable" is the tracker's: a parsed message that still failed later.
    assert covered == set(MALFORMED_REASONS) - {"unprocessable"}


def test_oversized_message_is_malformed_and_only_its_head_is_kept() -> None:
    data = with_email(body="x" * (2 * KEPT_BYTES))
    parsed = parse_message(CHANNEL, data, max_bytes=KEPT_BYTES)
    assert isinstance(parsed, Malformed)
    assert parsed.reason == "oversized"
    assert len(parsed.raw) == KEPT_BYTES
    assert orjson.dumps(data).startswith(parsed.raw)


def test_a_message_at_the_limit_is_not_oversized() -> None:
    size = len(orjson.dumps(GWS_SEND_NOTIFICATION))
    parsed = parse_message(CHANNEL, GWS_SEND_NOTIFICATION, max_bytes=size)
    assert isinstance(parsed, EmailStateChange)


def test_malformed_keeps_the_payload_for_inspection() -> None:
    data = notification(email=None)
    parsed = parse_message(CHANNEL, data)
    assert isinstance(parsed, Malformed)
    assert orjson.loads(parsed.raw) == data


def test_a_payload_json_cannot_encode_is_kept_as_its_repr() -> None:
    parsed = parse_message(CHANNEL, {1: "non-string key"})
    assert isinstance(parsed, Malformed)
    assert parsed.reason == "no_message_type"
    assert parsed.raw == repr({1: "non-string key"}).encode()


@pytest.mark.parametrize("reference_id", ["²", "①", "²⁶"])
def test_reference_id_with_non_decimal_digits_is_malformed_not_a_crash(reference_id: str) -> None:
    parsed = parse_message(CHANNEL, notification(referenceId=reference_id))
    assert isinstance(parsed, Malformed)
    assert parsed.reason == "bad_reference_id"


def test_reference_id_beyond_64_bits_is_malformed() -> None:
    parsed = parse_message(CHANNEL, notification(referenceId="1" * 30))
    assert isinstance(parsed, Malformed)
    assert parsed.reason == "bad_reference_id"


def test_parse_batch_sorts_messages_by_kind_in_order() -> None:
    messages = [
        Message(CHANNEL, notification(referenceId=1)),
        Message("/v2/me/calls", {"messageType": "CallStateChangeMessage"}),
        Message(CHANNEL, "junk"),
        Message(CHANNEL, notification(referenceId=2)),
    ]
    batch = parse_batch(messages)
    assert [c.reference_id for c in batch.changes] == [1, 2]
    assert batch.ignored == [Ignored("/v2/me/calls", "CallStateChangeMessage")]
    assert [m.reason for m in batch.malformed] == ["not_an_object"]


def test_parse_batch_applies_the_size_limit() -> None:
    batch = parse_batch([Message(CHANNEL, GWS_SEND_NOTIFICATION)], max_bytes=10)
    assert [m.reason for m in batch.malformed] == ["oversized"]


# -- properties --------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


@given(st.text(max_size=20), json_values)
def test_parse_message_never_raises_and_returns_one_of_three_kinds(
    channel: str, data: object
) -> None:
    parsed = parse_message(channel, data)
    assert isinstance(parsed, EmailStateChange | Ignored | Malformed)
    assert parsed.channel == channel
    if isinstance(parsed, Malformed):
        assert parsed.reason in MALFORMED_REASONS
        assert len(parsed.raw) <= KEPT_BYTES


def _not_a_known_crash(value: object) -> bool:
    # Non-decimal digit strings are test_reference_id_with_non_decimal_digits_is_malformed...
    return not (isinstance(value, str) and value.isdigit() and not value.isascii())


fields = json_values.filter(_not_a_known_crash)


@given(
    message_type=st.sampled_from(["EmailStateChangeMessage", "CallStateChangeMessage"]) | fields,
    notification_type=st.sampled_from(["StatusChange", "Error", "EmailSaved"]) | fields,
    reference_id=st.integers(0, 2**31) | st.integers(0, 999).map(str) | fields,
    email_id=st.text(min_size=1, max_size=16) | fields,
    state=st.sampled_from(["Sent", "Composing"]) | fields,
)
def test_near_valid_notifications_never_raise(
    message_type: object,
    notification_type: object,
    reference_id: object,
    email_id: object,
    state: object,
) -> None:
    data = {
        "messageType": message_type,
        "notificationType": notification_type,
        "referenceId": reference_id,
        "email": {"id": email_id, "state": state},
    }
    parsed = parse_message(CHANNEL, data)
    assert isinstance(parsed, EmailStateChange | Ignored | Malformed)
    if isinstance(parsed, EmailStateChange):
        assert parsed.email_id == (email_id if email_id else None)
        assert parsed.reference_id is None or isinstance(parsed.reference_id, int)
        assert parsed.state is None or isinstance(parsed.state, str)
