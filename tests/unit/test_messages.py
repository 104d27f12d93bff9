"""Notifications: parsed once, at the edge, into typed objects; never raises on bad input."""

from __future__ import annotations

from typing import Any

import msgspec
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
    Malformed,
    Notification,
    parse_batch,
    parse_message,
)
from daemon.simulator.samples import SAMPLES
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
def test_known_other_message_types_are_notifications(message_type: str) -> None:
    data = {"messageType": message_type, "notificationType": "StatusChange", "call": {"id": "C1"}}
    parsed = parse_message("/v2/me/calls", data)
    assert parsed == Notification(
        "/v2/me/calls", message_type, "StatusChange", "C1", orjson.dumps(data)
    )


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
    data = {"messageType": message_type, "anything": [1]}
    parsed = parse_message("/v2/me", data)
    assert parsed == Notification("/v2/me", message_type, None, None, orjson.dumps(data))


# -- other notifications: what they are about, kept as they came --------


# The subject of each sample the simulator publishes (every shape the docs give).
SAMPLE_SUBJECTS: dict[str, str | None] = {
    "CallStateChangeMessage": "00cc0a59c0ab0001",
    "ErrorMessage": None,
    "DeviceStateChangeMessage": "3f0e5d1a",
    "ChatStateChangeMessage": "0001XaCJ7EHD0011",
    "MessageLogUpdated": "0001XaCJ7EHD0011",
    "WorkitemStateChangeMessage": "0001XaCJ7EHD0020",
    "OpenmediaStateChangeMessage": "0001XaCJ7EHD0030",
    "WorkbinStateChangeMessage": "Email Draft",
    "WorkbinSubscriptionStateChangeMessage": None,
    "OutboundRecordMessage": "1001",
    "UnknownMessageType": None,
}


@pytest.mark.parametrize(("name", "subject"), SAMPLE_SUBJECTS.items())
def test_every_sample_of_another_type_is_a_notification_about_its_object(
    name: str, subject: str | None
) -> None:
    channel, data = SAMPLES[name]
    parsed = parse_message(channel, data)
    assert isinstance(parsed, Notification)
    assert parsed.channel == channel
    assert parsed.message_type == data["messageType"]
    assert parsed.notification_type == data.get("notificationType")
    assert parsed.subject == subject


def test_every_sample_not_an_email_has_its_expected_subject_listed() -> None:
    others = {name for name, (_, data) in SAMPLES.items() if "email" not in data}
    assert others == set(SAMPLE_SUBJECTS)


@pytest.mark.parametrize(
    ("key", "message_type"),
    [
        ("call", "CallStateChangeMessage"),
        ("chat", "ChatStateChangeMessage"),
        ("workitem", "WorkitemStateChangeMessage"),
        ("openmedia", "OpenmediaStateChangeMessage"),
        ("interaction", "OpenmediaStateChangeMessage"),
        ("media", "OpenmediaStateChangeMessage"),
        ("workbin", "WorkbinStateChangeMessage"),
        ("record", "OutboundRecordMessage"),
    ],
)
def test_the_subject_is_the_id_of_the_object_the_message_carries(
    key: str, message_type: str
) -> None:
    parsed = parse_message("/v2/me/x", {"messageType": message_type, key: {"id": "ID-7"}})
    assert isinstance(parsed, Notification)
    assert parsed.subject == "ID-7"


def test_the_subject_of_a_device_message_is_its_first_devices_id() -> None:
    data = {"messageType": "DeviceStateChangeMessage", "devices": [{"id": "D1"}, {"id": "D2"}]}
    parsed = parse_message("/v2/me/devices", data)
    assert isinstance(parsed, Notification)
    assert parsed.subject == "D1"


def test_the_openmedia_page_example_has_its_interaction_id_as_subject() -> None:
    # GWS API v2, OpenMediaAPIMessageType: the object is under `openmedia`.
    data = {
        "openmedia": {
            "state": "Processing",
            "capabilities": ["Transfer", "Complete"],
            "id": "03W0GH2KD56YV000",
            "mediaType": "promotion",
            "openmediaType": "Outbound",
        },
        "referenceId": 1,
        "notificationType": "StatusChange",
        "messageType": "OpenmediaStateChangeMessage",
    }
    parsed = parse_message("/v2/me/openmedia", data)
    assert isinstance(parsed, Notification)
    assert (parsed.subject, parsed.notification_type) == ("03W0GH2KD56YV000", "StatusChange")


@pytest.mark.parametrize(
    ("fields", "subject"),
    [
        ({"call": {"id": 4711}}, "4711"),
        ({"call": {"id": 0}}, "0"),
        ({"call": {"id": ""}}, None),
        ({"call": {"id": None}}, None),
        ({"call": {"id": True}}, None),
        ({"call": {"id": 1.5}}, None),
        ({"call": {"id": ["C1"]}}, None),
        ({"call": {"id": {"value": "C1"}}}, None),
        ({"call": {"state": "Ringing"}}, None),
        ({"call": "C1"}, None),
        ({"call": None, "chat": {"id": "H1"}}, "H1"),
        ({"devices": []}, None),
        ({"devices": ["D1"]}, None),
        ({"devices": [{"state": "Active"}, {"id": "D2"}]}, None),
        ({"devices": {"id": "D1"}}, None),
        ({"id": "top-level"}, None),
        ({}, None),
    ],
    ids=repr,
)
def test_only_a_non_empty_string_or_an_integer_id_is_a_subject(
    fields: dict[str, Any], subject: str | None
) -> None:
    parsed = parse_message("/v2/me/calls", {"messageType": "CallStateChangeMessage", **fields})
    assert isinstance(parsed, Notification)
    assert parsed.subject == subject


@pytest.mark.parametrize("notification_type", [None, "", 3, ["StatusChange"]])
def test_a_notification_without_a_string_notification_type_has_none(
    notification_type: object,
) -> None:
    data: dict[str, Any] = {"messageType": "CallStateChangeMessage", "call": {"id": "C1"}}
    if notification_type is not None:
        data["notificationType"] = notification_type
    parsed = parse_message("/v2/me/calls", data)
    assert isinstance(parsed, Notification)
    assert parsed.notification_type is None
    assert orjson.loads(parsed.raw) == data


def test_a_notification_keeps_the_data_object_as_it_came() -> None:
    data = {
        "messageType": "CallStateChangeMessage",
        "notificationType": "StatusChange",
        "call": {"id": "C1", "state": "Ringing", "duration": 1.0, "caller": "Zoë \u2603"},
        "participants": [{"e164Number": "+4930123"}, None],
        "userData": {},
    }
    parsed = parse_message("/v2/me/calls", data)
    assert isinstance(parsed, Notification)
    assert parsed.raw == orjson.dumps(data)
    assert orjson.loads(parsed.raw) == data


def test_an_oversized_call_message_is_malformed() -> None:
    _, call = SAMPLES["CallStateChangeMessage"]
    data = edited(call, {"call": {"id": "C1", "userData": {"note": "x" * 2048}}})
    parsed = parse_message("/v2/me/calls", data, max_bytes=1024)
    assert isinstance(parsed, Malformed)
    assert parsed.reason == "oversized"
    assert orjson.dumps(data).startswith(parsed.raw)


def test_a_notification_json_cannot_encode_is_unprocessable_not_forwarded() -> None:
    # Only a caller in this process can build one; its repr must never become an event.
    parsed = parse_message("/v2/me/calls", {"messageType": "CallStateChangeMessage", 1: "x"})
    assert isinstance(parsed, Malformed)
    assert parsed.reason == "unprocessable"


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


def test_parse_batch_keeps_usable_messages_in_arrival_order_and_sets_malformed_apart() -> None:
    call = {"messageType": "CallStateChangeMessage", "call": {"id": "C1"}}
    messages = [
        Message(CHANNEL, notification(referenceId=1)),
        Message("/v2/me/calls", call),
        Message(CHANNEL, "junk"),
        Message(CHANNEL, notification(referenceId=2)),
    ]
    batch = parse_batch(messages)
    assert [type(parsed) for parsed in batch.usable] == [
        EmailStateChange,
        Notification,
        EmailStateChange,
    ]
    first, second, third = batch.usable
    assert isinstance(first, EmailStateChange)
    assert isinstance(third, EmailStateChange)
    assert (first.reference_id, third.reference_id) == (1, 2)
    assert second == Notification(
        "/v2/me/calls", "CallStateChangeMessage", None, "C1", orjson.dumps(call)
    )
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
    assert isinstance(parsed, EmailStateChange | Notification | Malformed)
    assert parsed.channel == channel
    if isinstance(parsed, Malformed):
        assert parsed.reason in MALFORMED_REASONS
        assert len(parsed.raw) <= KEPT_BYTES
    if isinstance(parsed, Notification):
        assert parsed.subject is None or (isinstance(parsed.subject, str) and parsed.subject)
        assert parsed.raw == orjson.dumps(data)


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
    assert isinstance(parsed, EmailStateChange | Notification | Malformed)
    if isinstance(parsed, EmailStateChange):
        assert parsed.email_id == (email_id if email_id else None)
        assert parsed.reference_id is None or isinstance(parsed.reference_id, int)
        assert parsed.state is None or isinstance(parsed.state, str)


# -- a payload as JSON text (what the Bayeux client hands over) ------------------------


def _by_text_and_by_value(data: object) -> None:
    """Parsing a payload's JSON text gives what parsing its value gives."""
    try:
        text = orjson.dumps(data)  # as the wire carries it
    except TypeError:
        return  # not JSON (NaN and the like are made null; a 65-bit integer refused)
    by_value = parse_message(CHANNEL, orjson.loads(text))
    by_text = parse_message(CHANNEL, msgspec.Raw(text))
    assert type(by_text) is type(by_value)
    if isinstance(by_value, Malformed):
        assert isinstance(by_text, Malformed)
        assert (by_text.reason, by_text.detail) == (by_value.reason, by_value.detail)
    else:
        assert by_text == by_value


@pytest.mark.parametrize(("reason", "data"), MALFORMED_CASES)
def test_json_text_is_malformed_for_the_same_reason_as_its_value(reason: str, data: object) -> None:
    parsed = parse_message(CHANNEL, msgspec.Raw(orjson.dumps(data)))
    assert isinstance(parsed, Malformed)
    assert parsed.reason == reason
    _by_text_and_by_value(data)


def test_json_text_of_an_email_state_change_is_kept_byte_for_byte() -> None:
    text = b'{"messageType":"EmailStateChangeMessage","notificationType":"StatusChange",'
    text += b'"referenceId":"26","email":{"state":"Sent","id":"E1","body":"caf\\u00e9"}}'
    parsed = parse_message(CHANNEL, msgspec.Raw(text))
    assert parsed == EmailStateChange(CHANNEL, "StatusChange", 26, "E1", "Sent", text)


def test_json_text_on_several_lines_is_kept_on_one() -> None:
    text = orjson.dumps(GWS_SEND_NOTIFICATION, option=orjson.OPT_INDENT_2)
    parsed = parse_message(CHANNEL, msgspec.Raw(text))
    assert isinstance(parsed, EmailStateChange)
    assert b"\n" not in parsed.raw
    assert orjson.loads(parsed.raw) == GWS_SEND_NOTIFICATION


def test_oversized_json_text_keeps_only_its_head() -> None:
    text = orjson.dumps(with_email(body="x" * 5000))
    parsed = parse_message(CHANNEL, msgspec.Raw(text), max_bytes=1000)
    assert isinstance(parsed, Malformed)
    assert parsed.reason == "oversized"
    assert parsed.detail == f"{len(text)} bytes, limit 1000"


@given(st.text(max_size=20), json_values)
def test_json_text_of_any_value_parses_as_the_value_does(channel: str, data: object) -> None:
    _by_text_and_by_value(data)


@given(
    message_type=st.sampled_from(["EmailStateChangeMessage", "CallStateChangeMessage"]) | fields,
    notification_type=st.sampled_from(["StatusChange", "Error", "EmailSaved"]) | fields,
    reference_id=st.integers(0, 2**31) | st.integers(0, 999).map(str) | fields,
    email=st.builds(
        lambda i, s: {"id": i, "state": s, "body": "b"},
        st.text(min_size=1, max_size=16) | fields,
        st.sampled_from(["Sent", "Composing"]) | fields,
    )
    | fields,
)
def test_json_text_of_near_valid_notifications_parses_as_the_value_does(
    message_type: object, notification_type: object, reference_id: object, email: object
) -> None:
    _by_text_and_by_value(
        {
            "messageType": message_type,
            "notificationType": notification_type,
            "referenceId": reference_id,
            "email": email,
        }
    )
