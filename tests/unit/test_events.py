"""CloudEvents 1.0 envelopes, the shape of `data`, and deterministic event ids."""

from __future__ import annotations

import re
import uuid
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.events import (
    CALL_STATE_CHANGED,
    EMAIL_EVENT_TYPES,
    EVENT_TYPES,
    NOTIFICATION,
    NOTIFICATION_EVENT_TYPES,
    SEND_REJECTED,
    SEND_TIMED_OUT,
    STATE_CHANGED,
    Event,
    EventFactory,
    account_source,
    notification_type_of,
)
from daemon.gws.messages import KNOWN_OTHER_TYPES, EmailStateChange, Notification, parse_message
from daemon.sends import SendRecord, SendStatus

SOURCE = "https://gws.example.com"
ENVELOPE_KEYS = {
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "data",
}
DATA_KEYS = {
    "referenceId",
    "emailId",
    "state",
    "notificationType",
    "correlated",
    "reconciled",
    "send",
    "latencySeconds",
    "notification",
}
# 2024-01-02T03:04:05.250Z
REQUESTED_AT = 1704164645.25

GWS_NOTIFICATION: dict[str, Any] = {
    "referenceId": 26,
    "notificationType": "StatusChange",
    "messageType": "EmailStateChangeMessage",
    "email": {
        "body": "Feelslikegood.",
        "from": "htcc@gplus-w2k3-gf80",
        "to": ["qwerty@gplus-w2k3-gf80", "bruce.one@witcher.xyz"],
        "state": "Sent",
        "id": "01QG9WAK37H38024",
        "subject": "HelloEmail",
    },
}


@pytest.fixture
def factory() -> EventFactory:
    return EventFactory(SOURCE)


def make_send(**fields: Any) -> SendRecord:
    defaults: dict[str, Any] = {
        "send_id": "s018cc7a1b2c3d4e5f6a7b8c9",
        "email_id": "01QG9WAK37H38024",
        "queue_name": "Forwarde-mails",
        "requested_at": REQUESTED_AT,
        "subject": "HelloEmail",
        "to": ("qwerty@gplus-w2k3-gf80", "bruce.one@witcher.xyz"),
        "status": SendStatus.RESOLVED,
        "reference_id": 26,
    }
    return SendRecord(**(defaults | fields))


def make_change(**changes: Any) -> EmailStateChange:
    data = orjson.loads(orjson.dumps(GWS_NOTIFICATION))
    email = changes.pop("email", {})
    data.update(changes)
    data["email"].update(email)
    parsed = parse_message("/v2/me/emails", data)
    assert isinstance(parsed, EmailStateChange)
    return parsed


def envelope(event: Event) -> dict[str, Any]:
    decoded = orjson.loads(event.body)
    assert isinstance(decoded, dict)
    return decoded


# -- envelope --------


def test_correlated_state_change_has_exactly_the_cloudevents_fields(factory: EventFactory) -> None:
    event = factory.state_changed(make_change(), make_send(), received_at=REQUESTED_AT + 1.5)

    body = envelope(event)

    assert set(body) == ENVELOPE_KEYS
    assert body["specversion"] == "1.0"
    assert body["id"] == event.id
    assert uuid.UUID(body["id"]).version == 5
    assert body["source"] == SOURCE
    assert body["type"] == STATE_CHANGED == event.type
    assert body["subject"] == "01QG9WAK37H38024" == event.email_id
    assert body["time"] == "2024-01-02T03:04:06.750000Z"
    assert event.time == REQUESTED_AT + 1.5
    assert body["datacontenttype"] == "application/json"


def test_correlated_state_change_data(factory: EventFactory) -> None:
    send = make_send()
    event = factory.state_changed(make_change(), send, received_at=REQUESTED_AT + 1.5)

    data = envelope(event)["data"]

    assert set(data) >= DATA_KEYS
    assert data["referenceId"] == 26
    assert data["emailId"] == "01QG9WAK37H38024"
    assert data["state"] == "Sent"
    assert data["notificationType"] == "StatusChange"
    assert data["correlated"] is True
    assert data["reconciled"] is False
    assert data["send"] == {
        "sendId": send.send_id,
        "requestedAt": "2024-01-02T03:04:05.250Z",
        "queueName": "Forwarde-mails",
        "subject": "HelloEmail",
        "to": ["qwerty@gplus-w2k3-gf80", "bruce.one@witcher.xyz"],
    }
    assert data["latencySeconds"] == 1.5
    assert data["notification"] == GWS_NOTIFICATION
    assert data["channel"] == "/v2/me/emails"


def test_uncorrelated_state_change_data(factory: EventFactory) -> None:
    change = make_change(notificationType="PropertiesUpdated", referenceId=None)

    data = envelope(factory.state_changed(change, None, received_at=REQUESTED_AT))["data"]

    assert data["correlated"] is False
    assert data["send"] is None
    assert data["latencySeconds"] is None
    assert data["referenceId"] is None
    assert data["notificationType"] == "PropertiesUpdated"
    assert data["notification"]["notificationType"] == "PropertiesUpdated"


def test_reference_id_of_the_send_fills_in_when_the_notification_has_none(
    factory: EventFactory,
) -> None:
    change = make_change(referenceId=None)
    data = envelope(factory.state_changed(change, make_send(), received_at=REQUESTED_AT))["data"]
    assert data["referenceId"] == 26


ERROR_WITHOUT_EMAIL = {
    "messageType": "EmailStateChangeMessage",
    "notificationType": "Error",
    "referenceId": 26,
    "errorMessage": "Email server unavailable",
}


def test_an_error_without_email_tied_to_a_send_takes_the_sends_email_id(
    factory: EventFactory,
) -> None:
    change = parse_message("/v2/me/emails", ERROR_WITHOUT_EMAIL)
    assert isinstance(change, EmailStateChange)

    event = factory.state_changed(change, make_send(), received_at=REQUESTED_AT)

    body = envelope(event)
    assert body["subject"] == "01QG9WAK37H38024" == event.email_id
    assert body["data"]["emailId"] == "01QG9WAK37H38024"
    assert body["data"]["correlated"] is True
    assert body["data"]["notification"] == ERROR_WITHOUT_EMAIL


def test_an_unmatched_error_without_email_has_no_subject(factory: EventFactory) -> None:
    change = parse_message("/v2/me/emails", ERROR_WITHOUT_EMAIL)
    assert isinstance(change, EmailStateChange)

    event = factory.state_changed(change, None, received_at=REQUESTED_AT)

    body = envelope(event)
    assert "subject" not in body
    assert event.email_id is None
    assert body["data"]["emailId"] is None
    assert body["data"]["referenceId"] == 26
    assert event.id == factory.state_changed(change, None, received_at=REQUESTED_AT + 5).id


def test_reconciled_event_shape(factory: EventFactory) -> None:
    event = factory.reconciled(make_send(), state="Sent", at=REQUESTED_AT + 120)

    body = envelope(event)
    data = body["data"]

    assert set(body) == ENVELOPE_KEYS
    assert body["type"] == STATE_CHANGED
    assert set(data) >= DATA_KEYS
    assert data["reconciled"] is True
    assert data["correlated"] is True
    assert data["notification"] is None
    assert data["notificationType"] == "StatusChange"
    assert data["state"] == "Sent"
    assert data["referenceId"] == 26
    assert data["latencySeconds"] == 120.0


def test_rejected_event_shape(factory: EventFactory) -> None:
    send = make_send(status=SendStatus.REJECTED, reference_id=None)

    event = factory.rejected(
        send, status_code=2, status_message="Invalid state", http_status=400, at=REQUESTED_AT + 0.25
    )

    body = envelope(event)
    data = body["data"]
    assert set(body) == ENVELOPE_KEYS
    assert body["type"] == SEND_REJECTED
    assert body["subject"] == send.email_id
    assert set(data) >= DATA_KEYS
    assert data["statusCode"] == 2
    assert data["statusMessage"] == "Invalid state"
    assert data["httpStatus"] == 400
    assert data["state"] is None
    assert data["notificationType"] is None
    assert data["notification"] is None
    assert data["correlated"] is True
    assert data["reconciled"] is False
    assert data["send"]["sendId"] == send.send_id
    assert data["latencySeconds"] == 0.25


def test_rejected_before_gws_answered_has_no_status(factory: EventFactory) -> None:
    event = factory.rejected(
        make_send(), status_code=None, status_message=None, http_status=None, at=REQUESTED_AT
    )
    data = envelope(event)["data"]
    assert (data["statusCode"], data["statusMessage"], data["httpStatus"]) == (None, None, None)


def test_timed_out_event_shape(factory: EventFactory) -> None:
    send = make_send(status=SendStatus.TIMED_OUT)

    event = factory.timed_out(
        send, last_state="Composing", reason="not_sent", at=REQUESTED_AT + 240
    )

    body = envelope(event)
    data = body["data"]
    assert set(body) == ENVELOPE_KEYS
    assert body["type"] == SEND_TIMED_OUT
    assert set(data) >= DATA_KEYS
    assert data["state"] == "Composing"
    assert data["notificationType"] is None
    assert data["notification"] is None
    assert data["reconciled"] is True
    assert data["correlated"] is True
    assert data["latencySeconds"] == 240.0
    assert data["reason"] == "not_sent"


def test_email_event_types_are_the_three_of_the_contract() -> None:
    assert set(EMAIL_EVENT_TYPES) == {
        "gws.email.state_changed",
        "gws.email.send_rejected",
        "gws.email.send_timed_out",
    }
    assert set(EVENT_TYPES) == set(EMAIL_EVENT_TYPES) | set(NOTIFICATION_EVENT_TYPES)


# -- ids --------


def test_same_state_change_gets_the_same_id_whenever_it_is_built(factory: EventFactory) -> None:
    first = factory.state_changed(make_change(), make_send(), received_at=REQUESTED_AT + 1)
    again = EventFactory(SOURCE).state_changed(
        make_change(), make_send(), received_at=REQUESTED_AT + 50
    )
    assert first.id == again.id


def test_reconciled_event_has_the_id_of_its_sent_notification_event(factory: EventFactory) -> None:
    send = make_send()
    notified = factory.state_changed(make_change(), send, received_at=REQUESTED_AT + 1)
    read_back = factory.reconciled(send, state="Sent", at=REQUESTED_AT + 130)
    assert read_back.id == notified.id


def test_repeat_without_reference_id_has_the_id_of_the_first(factory: EventFactory) -> None:
    send = make_send()
    first = factory.state_changed(make_change(), send, received_at=REQUESTED_AT + 1)
    repeat = factory.state_changed(
        make_change(referenceId=None), send, received_at=REQUESTED_AT + 9
    )
    assert repeat.id == first.id


@pytest.mark.parametrize(
    "other",
    [
        {"notificationType": "Error"},
        {"email": {"state": "Completed"}},
    ],
)
def test_another_state_change_of_the_same_send_gets_another_id(
    factory: EventFactory, other: dict[str, Any]
) -> None:
    send = make_send()
    sent = factory.state_changed(make_change(), send, received_at=REQUESTED_AT)
    different = factory.state_changed(make_change(**other), send, received_at=REQUESTED_AT)
    assert different.id != sent.id


def test_state_changes_of_different_sends_get_different_ids(factory: EventFactory) -> None:
    one = factory.state_changed(make_change(), make_send(send_id="s1"), received_at=REQUESTED_AT)
    two = factory.state_changed(make_change(), make_send(send_id="s2"), received_at=REQUESTED_AT)
    assert one.id != two.id


def test_uncorrelated_id_depends_on_the_notification_bytes(factory: EventFactory) -> None:
    change = make_change(referenceId=None, notificationType="PropertiesUpdated")
    same = make_change(referenceId=None, notificationType="PropertiesUpdated")
    other = make_change(
        referenceId=None, notificationType="PropertiesUpdated", email={"subject": "Re: x"}
    )

    first = factory.state_changed(change, None, received_at=1.0)

    assert factory.state_changed(same, None, received_at=2.0).id == first.id
    assert factory.state_changed(other, None, received_at=1.0).id != first.id


def test_rejected_and_timed_out_ids_are_per_send_and_type(factory: EventFactory) -> None:
    send = make_send()
    rejected = factory.rejected(
        send, status_code=2, status_message="x", http_status=400, at=REQUESTED_AT
    )
    rejected_again = factory.rejected(
        send, status_code=4, status_message="y", http_status=503, at=REQUESTED_AT + 9
    )
    timed_out = factory.timed_out(send, last_state=None, reason="not_found", at=REQUESTED_AT)
    timed_out_again = factory.timed_out(
        send, last_state="Composing", reason="not_sent", at=REQUESTED_AT + 9
    )
    other = factory.timed_out(
        make_send(send_id="s-other"), last_state=None, reason="not_found", at=REQUESTED_AT
    )

    assert rejected.id == rejected_again.id
    assert timed_out.id == timed_out_again.id
    assert len({rejected.id, timed_out.id, other.id}) == 3


def test_body_is_built_once_and_is_stable(factory: EventFactory) -> None:
    send = make_send()
    one = factory.state_changed(make_change(), send, received_at=REQUESTED_AT + 1)
    two = factory.state_changed(make_change(), send, received_at=REQUESTED_AT + 1)
    assert one.body == two.body
    assert one == two


def test_time_has_microseconds_and_rounds_across_a_second_boundary(
    factory: EventFactory,
) -> None:
    event = factory.reconciled(make_send(), state="Sent", at=1704164645.9999996)
    assert envelope(event)["time"] == "2024-01-02T03:04:06.000000Z"
    event = factory.reconciled(make_send(), state="Sent", at=1704164645.25)
    assert envelope(event)["time"] == "2024-01-02T03:04:05.250000Z"


def test_the_largest_reference_id_that_parses_can_become_an_event(
    factory: EventFactory,
) -> None:
    change = make_change(referenceId=2**63 - 1)
    event = factory.state_changed(change, None, received_at=REQUESTED_AT)
    assert envelope(event)["data"]["emailId"] == change.email_id


# -- other notifications --------

CALL: dict[str, Any] = {
    "messageType": "CallStateChangeMessage",
    "notificationType": "StatusChange",
    "call": {"id": "00cc0a59c0ab0001", "state": "Ringing", "callType": "Inbound"},
}


def make_notification(
    data: dict[str, Any] | None = None, channel: str = "/v2/me/calls"
) -> Notification:
    parsed = parse_message(channel, CALL if data is None else data)
    assert isinstance(parsed, Notification)
    return parsed


@pytest.mark.parametrize(
    ("message_type", "event_type"),
    [
        ("CallStateChangeMessage", "gws.call.state_changed"),
        ("DeviceStateChangeMessage", "gws.device.state_changed"),
        ("ChatStateChangeMessage", "gws.chat.state_changed"),
        ("WorkitemStateChangeMessage", "gws.workitem.state_changed"),
        ("OpenmediaStateChangeMessage", "gws.openmedia.state_changed"),
        ("WorkbinStateChangeMessage", "gws.workbin.state_changed"),
        ("WorkbinSubscriptionStateChangeMessage", "gws.workbinsubscription.state_changed"),
        ("Fax2StateChangeMessage", "gws.fax2.state_changed"),
        ("ErrorMessage", "gws.notification"),
        ("MessageLogUpdated", "gws.notification"),
        ("OutboundRecordMessage", "gws.notification"),
        ("PasswordChangeSuccessful", "gws.notification"),
        ("Foo-StateChangeMessage", "gws.notification"),
        ("Foo.BarStateChangeMessage", "gws.notification"),
        ("Foo_StateChangeMessage", "gws.notification"),
        ("Foo StateChangeMessage", "gws.notification"),
        ("ÄrgerStateChangeMessage", "gws.notification"),
        ("StateChangeMessage", "gws.notification"),
        ("CallStateChangeMessages", "gws.notification"),
        ("CallStatechangeMessage", "gws.notification"),
        ("x", "gws.notification"),
    ],
)
def test_a_message_type_maps_to_its_event_type(message_type: str, event_type: str) -> None:
    assert notification_type_of(message_type) == event_type


def test_the_documented_message_types_give_the_listed_event_types() -> None:
    assert {notification_type_of(t) for t in KNOWN_OTHER_TYPES} == set(NOTIFICATION_EVENT_TYPES)


# A routing pattern (`gws.*.state_changed`, `gws.call.>`) must match each type as
# three or two dot-separated segments: x adds no dot, no wildcard, no upper case.
EVENT_TYPE = re.compile(r"gws\.(?:[a-z0-9]+\.state_changed|notification)")


@given(st.text(max_size=40).map(lambda s: s + "StateChangeMessage") | st.text(max_size=40))
def test_every_event_type_is_gws_x_state_changed_with_x_of_letters_and_digits(
    message_type: str,
) -> None:
    assert EVENT_TYPE.fullmatch(notification_type_of(message_type))


def test_a_notification_event_has_the_cloudevents_fields_and_its_data(
    factory: EventFactory,
) -> None:
    event = factory.notification(make_notification(), received_at=REQUESTED_AT + 1.5)

    body = envelope(event)

    assert set(body) == ENVELOPE_KEYS
    assert body["id"] == event.id
    assert uuid.UUID(body["id"]).version == 5
    assert body["source"] == SOURCE
    assert body["type"] == CALL_STATE_CHANGED == event.type
    assert body["subject"] == "00cc0a59c0ab0001"
    assert body["time"] == "2024-01-02T03:04:06.750000Z"
    assert body["datacontenttype"] == "application/json"
    assert body["data"] == {
        "account": "default",
        "channel": "/v2/me/calls",
        "messageType": "CallStateChangeMessage",
        "notificationType": "StatusChange",
        "notification": CALL,
    }
    assert event.email_id is None
    assert event.account == "default"


def test_a_notification_without_an_object_id_has_no_subject(factory: EventFactory) -> None:
    error = {"messageType": "ErrorMessage", "errorCode": 54, "errorMessage": "Call was not found"}

    event = factory.notification(make_notification(error), received_at=REQUESTED_AT)

    body = envelope(event)
    assert "subject" not in body
    assert body["type"] == NOTIFICATION
    assert body["data"]["notificationType"] is None
    assert body["data"]["notification"] == error


def test_the_notification_in_data_is_the_gws_data_object_byte_for_byte(
    factory: EventFactory,
) -> None:
    data = {
        "messageType": "ChatStateChangeMessage",
        "chat": {"id": "H1", "transcript": 'Zoë ☃ \\"quoted\\"', "duration": 1.0},
        "userData": {"b": 2, "a": [None, True, 1e-7]},
    }
    notification = make_notification(data, channel="/v2/me/chats")

    event = factory.notification(notification, received_at=REQUESTED_AT)

    assert b'"notification":' + orjson.dumps(data) + b"}" in event.body
    assert envelope(event)["data"]["notification"] == data


def test_account_names_the_account_in_data_and_source() -> None:
    source = account_source("https://gws.example.com", "sales")
    event = EventFactory(source, account="sales").notification(
        make_notification(), received_at=REQUESTED_AT
    )
    body = envelope(event)
    assert body["source"] == "https://gws.example.com/api/v2/me?account=sales"
    assert body["data"]["account"] == "sales"
    assert event.account == "sales"


def test_the_same_notification_gets_the_same_id_whenever_it_is_built(
    factory: EventFactory,
) -> None:
    first = factory.notification(make_notification(), received_at=REQUESTED_AT)
    again = EventFactory("https://elsewhere.example.com").notification(
        make_notification(), received_at=REQUESTED_AT + 3600
    )
    assert first.id == again.id


def test_the_same_notification_of_two_accounts_gets_two_ids() -> None:
    ids = {
        EventFactory(SOURCE, account=account)
        .notification(make_notification(), received_at=REQUESTED_AT)
        .id
        for account in ("default", "sales", "support")
    }
    assert len(ids) == 3


def test_different_notifications_get_different_ids(factory: EventFactory) -> None:
    established = {**CALL, "call": {**CALL["call"], "state": "Established"}}
    other_call = {**CALL, "call": {**CALL["call"], "id": "00cc0a59c0ab0002"}}
    properties = {**CALL, "notificationType": "PropertiesUpdated"}
    notifications = [
        make_notification(),
        make_notification(established),
        make_notification(other_call),
        make_notification(properties),
        make_notification(CALL, channel="/v2/me/calls/other"),
    ]
    ids = {factory.notification(n, received_at=REQUESTED_AT).id for n in notifications}
    assert len(ids) == len(notifications)


def test_a_notification_id_differs_from_an_email_event_id_of_the_same_account(
    factory: EventFactory,
) -> None:
    email = factory.state_changed(make_change(), None, received_at=REQUESTED_AT)
    call = factory.notification(make_notification(), received_at=REQUESTED_AT)
    assert email.id != call.id
