"""Sample notifications of every kind GWS's docs name, for `POST /control/samples`.

A daemon subscribed to more than `/v2/me/emails` meets calls, devices, chats,
workitems, open media, workbins and outbound records; and on the email channel
itself notification types other than StatusChange, inbound emails with fields
an outbound one lacks, and message types no page names. Each sample here is
one such payload and the channel it comes on, shaped after the GWS API v2
pages (CallStateChangeMessage, ChatMessageType, OpenMediaAPIMessageType,
WorkbinsMessageType, EmailMessageType) and notifications seen in the wild;
where the docs show no example, the fields are plausible, and only
`messageType` (and `notificationType`) matter to a client.

`of_kind` makes more of the same shapes, each about an object of its own id,
for `POST /control/notify` and the steady demo traffic: `call`, `device`,
`chat`, `workitem`, and `unknown` (`UNKNOWN_ON_CALLS`: a type no page names,
not even in the form `...StateChangeMessage`, on the calls channel).
`object_ids()` hands out those ids, distinct within a run.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator
from typing import Any, Final

import orjson

EMAILS: Final = "/v2/me/emails"
CALLS: Final = "/v2/me/calls"

# name -> (channel, payload). The name is the messageType, or what sets the sample apart.
SAMPLES: Final[dict[str, tuple[str, dict[str, Any]]]] = {
    "CallStateChangeMessage": (
        CALLS,
        {
            "messageType": "CallStateChangeMessage",
            "notificationType": "StatusChange",
            "call": {"id": "00cc0a59c0ab0001", "state": "Ringing", "callType": "Inbound"},
        },
    ),
    "ErrorMessage": (
        CALLS,
        {"messageType": "ErrorMessage", "errorCode": 54, "errorMessage": "Call was not found"},
    ),
    "DeviceStateChangeMessage": (
        "/v2/me/devices",
        {
            "messageType": "DeviceStateChangeMessage",
            "devices": [
                {"id": "3f0e5d1a", "deviceState": "Active", "userState": {"state": "Ready"}}
            ],
        },
    ),
    "ChatStateChangeMessage": (
        "/v2/me/chats",
        {
            "messageType": "ChatStateChangeMessage",
            "notificationType": "StatusChange",
            "chat": {"id": "0001XaCJ7EHD0011", "state": "Chatting"},
        },
    ),
    "MessageLogUpdated": (
        "/v2/me/chats",
        {
            "messageType": "MessageLogUpdated",
            "chat": {"id": "0001XaCJ7EHD0011"},
            "messages": [{"index": 1, "type": "Text", "text": "Hello", "from": {"nickname": "C"}}],
        },
    ),
    "WorkitemStateChangeMessage": (
        "/v2/me/workitems",
        {
            "messageType": "WorkitemStateChangeMessage",
            "notificationType": "StatusChange",
            "workitem": {"id": "0001XaCJ7EHD0020", "state": "Processing"},
        },
    ),
    "OpenmediaStateChangeMessage": (
        "/v2/me/openmedia",
        {
            "messageType": "OpenmediaStateChangeMessage",
            "notificationType": "StatusChange",
            "media": {"id": "0001XaCJ7EHD0030", "state": "Invited"},
        },
    ),
    "WorkbinStateChangeMessage": (
        "/v2/me/workbins",
        {
            "messageType": "WorkbinStateChangeMessage",
            "notificationType": "WorkbinContentChanged",
            "referenceId": 14,
            "workbin": {"id": "Email Draft", "items": []},
        },
    ),
    "WorkbinSubscriptionStateChangeMessage": (
        "/v2/me/workbins",
        {
            "messageType": "WorkbinSubscriptionStateChangeMessage",
            "notificationType": "SubscriptionStateChanged",
            "referenceId": 14,
            "subscriptionState": "Subscribed",
        },
    ),
    "OutboundRecordMessage": (
        "/v2/me/outbound",
        {
            "messageType": "OutboundRecordMessage",
            "notificationType": "RecordAdded",
            "record": {"id": "1001", "campaignName": "Renewals"},
        },
    ),
    "InboundEmail": (
        EMAILS,
        {
            "messageType": "EmailStateChangeMessage",
            "notificationType": "StatusChange",
            "referenceId": 32,
            "email": {
                "id": "0002KaCJ7EHD000A",
                "state": "Processing",
                "receivedDate": "2015-01-20T14:15:03.000+0000",
                "assignedTo": "agent1",
                "emailType": "Inbound",
                "contactId": "0002KaCJ7EHD0009",
                "suggestedQueueUris": [],
                "capabilities": ["Reply", "ReplyAll", "Forward", "Complete"],
            },
        },
    ),
    **{
        notification_type: (
            EMAILS,
            {
                "messageType": "EmailStateChangeMessage",
                "notificationType": notification_type,
                "email": {"id": "0002KaCJ7EHD000A", "state": "Processing"},
            },
        )
        for notification_type in (
            "PropertiesUpdated",
            "EmailSaved",
            "AttachmentAdded",
            "AttachmentRemoved",
        )
    },
    # A type no page names: a client must take it as data, not as an error.
    "UnknownMessageType": (
        EMAILS,
        {"messageType": "SupervisorMonitoringStateChangeMessage", "notificationType": "Started"},
    ),
}


def samples(names: list[str] | None) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, channel, payload) of the named samples, or of all; KeyError for an unknown name."""
    chosen = list(SAMPLES) if names is None else names
    return [(name, *SAMPLES[name]) for name in chosen]


# A type no page names, on a documented channel, about an object of its own. Unlike the
# UnknownMessageType sample its name does not even end in StateChangeMessage.
UNKNOWN_ON_CALLS: Final[dict[str, Any]] = {
    "messageType": "SupervisorMonitoringMessage",
    "notificationType": "Started",
    "monitoring": {"id": "0001XaCJ7EHD0040", "mode": "Silent"},
}

# kind -> (the payload it copies, its channel, where the object's id goes: keys and indexes).
_KINDS: Final[dict[str, tuple[dict[str, Any], str, tuple[str | int, ...]]]] = {
    "call": (SAMPLES["CallStateChangeMessage"][1], CALLS, ("call", "id")),
    "device": (SAMPLES["DeviceStateChangeMessage"][1], "/v2/me/devices", ("devices", 0, "id")),
    "chat": (SAMPLES["ChatStateChangeMessage"][1], "/v2/me/chats", ("chat", "id")),
    "workitem": (SAMPLES["WorkitemStateChangeMessage"][1], "/v2/me/workitems", ("workitem", "id")),
    "unknown": (UNKNOWN_ON_CALLS, CALLS, ("monitoring", "id")),
}
KINDS: Final = tuple(_KINDS)


def kind_channel(kind: str) -> str:
    """The channel notifications of `kind` come on; KeyError for an unknown kind."""
    return _KINDS[kind][1]


def of_kind(kind: str, object_id: str) -> dict[str, Any]:
    """A payload of `kind` (see `KINDS`) about the object `object_id`; KeyError for an
    unknown kind. A fresh copy each time: the caller may keep or change it."""
    shape, _channel, path = _KINDS[kind]
    payload: dict[str, Any] = orjson.loads(orjson.dumps(shape))
    parent: Any = payload
    *parents, last = path
    for step in parents:
        parent = parent[step]
    parent[last] = object_id
    return payload


def object_ids() -> Iterator[str]:
    """Distinct object ids, 16 hex digits like GWS's: a random prefix per call, then a count."""
    prefix = secrets.token_hex(4).upper()
    return (f"{prefix}{n:08X}" for n in itertools.count(1))
