"""GWS notifications, parsed once into typed objects. Never trusts its input.

Owns: deciding what a notification is (an email state change, any other GWS
message, or something malformed) and why, and which object a message is about
(its subject). Every well-formed message is legitimate, whatever its
`messageType`: GWS has more types than its docs list. Only a message that
cannot be used is `Malformed`, with a reason from the fixed set
`MALFORMED_REASONS` (the metric's label set). It never raises on bad input,
and knows nothing of the events made of what it parses.

An email `Error` may come without an `email` object (its shape is not
documented): it is kept as an `EmailStateChange` whose `email_id` is None,
for the correlator to tie by `referenceId` alone.

A payload arrives as JSON text (`msgspec.Raw`, see `daemon.cometd.messages`).
An email state change, the per-notification hot path, is read with msgspec
for the few fields that decide it (the rest is skipped in C) and keeps its
text as it came: no parse of the whole object, no serialising it again. The
same checks then run on those fields as on a parsed object. Any other message
is parsed whole (its subject may be under several keys).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec
import orjson

from daemon.cometd import Message, payload

EMAIL_STATE_CHANGE = "EmailStateChangeMessage"
# Email states and notification types as GWS documents them (GWS API v2, EmailMessageType).
SENT = "Sent"
ERROR = "Error"
EMAIL_STATES = frozenset(
    {"Sent", "Composing", "Canceled", "Completed", "Processing", "Invited", "Error"}
)
# A GET of an email in one of these states says its Send has not happened (yet).
NOT_SENT_STATES = frozenset({"Composing"})
EMAIL_NOTIFICATION_TYPES = frozenset(
    {
        "StatusChange",
        "PropertiesUpdated",
        "EmailSaved",
        "AttachmentAdded",
        "AttachmentRemoved",
        "Error",
    }
)
# Notification types that carry the outcome of an operation such as Send.
OUTCOME_TYPES = frozenset({"StatusChange", ERROR})

# The other GWS message types the docs name (GWS API v2: CallStateChangeMessage
# with ErrorMessage for calls, ChatStateChangeMessage with MessageLogUpdated,
# OpenmediaStateChangeMessage with a lower-case m, the workbin messages,
# OutboundRecordMessage on /v2/me/outbound). They, and any type not named
# here, are each a `Notification`; metrics label an unnamed type "other".
KNOWN_OTHER_TYPES = frozenset(
    {
        "CallStateChangeMessage",
        "ErrorMessage",
        "DeviceStateChangeMessage",
        "ChatStateChangeMessage",
        "MessageLogUpdated",
        "WorkitemStateChangeMessage",
        "OpenmediaStateChangeMessage",
        "WorkbinStateChangeMessage",
        "WorkbinSubscriptionStateChangeMessage",
        "OutboundRecordMessage",
    }
)

# Every message type this module knows by name (metrics label the rest "other").
KNOWN_MESSAGE_TYPES = KNOWN_OTHER_TYPES | {EMAIL_STATE_CHANGE}

# Where a message carries the object it is about, in the order looked at (the
# GWS API v2 message pages, and the simulator's samples: `media` for open media).
# `devices` (DeviceStateChangeMessage) is a list: its first device is the subject.
_OBJECT_KEYS = (
    "call",
    "chat",
    "workitem",
    "openmedia",
    "interaction",
    "media",
    "workbin",
    "record",
)
_DEVICES = "devices"

MALFORMED_REASONS = (
    "not_an_object",
    "no_message_type",
    "no_notification_type",
    "no_email",
    "no_email_id",
    "bad_reference_id",
    "bad_state",
    "oversized",
    "unprocessable",
)

# A GWS email notification with a large HTML body is tens of KiB; anything
# past this is not a notification we should put into every sink.
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
# SQLite and orjson hold 64-bit integers; a referenceId beyond is not GWS's.
_INT64 = 2**63
# What is kept of a malformed message for inspection.
KEPT_BYTES = 64 * 1024


class EmailStateChange(NamedTuple):
    """One EmailStateChangeMessage. `raw` is the GWS `data` object as JSON bytes.

    `email_id` is None only for an `Error` that came without an email.
    """

    channel: str
    notification_type: str
    reference_id: int | None
    email_id: str | None
    state: str | None
    raw: bytes

    @property
    def is_outcome(self) -> bool:
        return self.notification_type in OUTCOME_TYPES


class Notification(NamedTuple):
    """A well-formed GWS message of any type but EmailStateChangeMessage, named
    in the docs or not. `raw` is the GWS `data` object as JSON bytes.

    `notification_type` is None when the message has no non-empty string one;
    `subject` is the id of the object the message is about (see `_OBJECT_KEYS`),
    None when it has none usable.
    """

    channel: str
    message_type: str
    notification_type: str | None
    subject: str | None
    raw: bytes


@dataclass(frozen=True, slots=True)
class Malformed:
    channel: str
    reason: str
    detail: str
    raw: bytes  # at most KEPT_BYTES of the payload as JSON (or its repr)


@dataclass(slots=True)
class ParsedBatch:
    """One batch of messages: those that can be used in the order they came
    (consumers rely on it), and those that cannot."""

    usable: list[EmailStateChange | Notification] = field(default_factory=list)
    malformed: list[Malformed] = field(default_factory=list)


def _dump(data: object) -> tuple[bytes, bool]:
    """`data` as JSON bytes, True; or, when it is not JSON, its repr and False."""
    try:
        return orjson.dumps(data), True
    except TypeError:
        return repr(data).encode("utf-8", "replace"), False


class _Head(msgspec.Struct):
    """The fields of a GWS message that decide what it is (GWS's names)."""

    messageType: Any = None
    notificationType: Any = None
    referenceId: Any = None
    email: msgspec.Raw = msgspec.Raw()


class _EmailHead(msgspec.Struct):
    id: Any = None
    state: Any = None


_HEAD = msgspec.json.Decoder(_Head)
_EMAIL_HEAD = msgspec.json.Decoder(_EmailHead)


def parse_message(
    channel: str, data: object, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> EmailStateChange | Notification | Malformed:
    """Classify one Bayeux data payload: its JSON text, or a value."""
    if isinstance(data, msgspec.Raw):
        return _parse_text(channel, data, max_bytes)
    raw, is_json = _dump(data)
    problem = _problem(data, len(raw), max_bytes, is_json)
    if problem is not None:
        reason, detail = problem
        return Malformed(channel, reason, detail, raw[:KEPT_BYTES])
    assert isinstance(data, dict)
    if data["messageType"] != EMAIL_STATE_CHANGE:
        return _notification(channel, data, raw)
    return _email_state_change(channel, data, raw)


def _parse_text(
    channel: str, text: msgspec.Raw, max_bytes: int
) -> EmailStateChange | Notification | Malformed:
    """`parse_message` for a payload's JSON text (see the module docstring)."""
    size = len(text)
    if size > max_bytes:
        kept = memoryview(text)[:KEPT_BYTES].tobytes()
        return Malformed(channel, "oversized", f"{size} bytes, limit {max_bytes}", kept)
    try:
        head = _HEAD.decode(text)
    except msgspec.ValidationError:  # not an object: the general path says why
        head = None
    if head is None or head.messageType != EMAIL_STATE_CHANGE:
        return parse_message(channel, payload(text), max_bytes=max_bytes)
    email = _email_head(head.email)
    kind, reference_id = head.notificationType, head.referenceId
    plain_reference = reference_id is None or (
        type(reference_id) is int and -_INT64 <= reference_id < _INT64
    )
    if (
        type(kind) is str
        and kind
        and type(email) is _EmailHead
        and type(email.id) is str
        and email.id
        and (email.state is None or type(email.state) is str)
        and plain_reference
    ):  # the shape GWS sends: what `_email_problem` would find nothing wrong with
        # (checked inline on this per-notification path; tests/unit/test_messages.py
        # holds both paths to the same answer for any JSON value)
        return EmailStateChange(channel, kind, reference_id, email.id, email.state, _one_line(text))
    # Anything else: the checks of a parsed object, on the fields that decide it.
    if type(email) is _EmailHead:
        email = {"id": email.id, "state": email.state}
    fields = {"notificationType": kind, "referenceId": reference_id, "email": email}
    problem = _email_problem(fields)
    if problem is not None:
        reason, detail = problem
        return Malformed(channel, reason, detail, memoryview(text)[:KEPT_BYTES].tobytes())
    return _email_state_change(channel, fields, _one_line(text))


def _email_head(text: msgspec.Raw) -> object:
    """An `email`'s id and state, or whatever else it is (None when absent)."""
    if not len(text):
        return None
    try:
        return _EMAIL_HEAD.decode(text)
    except msgspec.ValidationError:
        return payload(text)


def _one_line(text: msgspec.Raw) -> bytes:
    """The text as it came, on one line: JSON-lines sinks write an event a line."""
    raw = bytes(text)
    if b"\n" in raw or b"\r" in raw:
        return orjson.dumps(orjson.loads(raw))
    return raw


def _email_state_change(channel: str, data: dict[str, Any], raw: bytes) -> EmailStateChange:
    """A well-formed EmailStateChangeMessage (checked by `_email_problem`)."""
    email = data.get("email")
    reference_id = data.get("referenceId")
    if isinstance(reference_id, str):
        reference_id = int(reference_id)
    if not isinstance(email, dict) or not email.get("id"):
        # An Error without an email (see the module docstring).
        return EmailStateChange(channel, ERROR, reference_id, None, None, raw)
    return EmailStateChange(
        channel, data["notificationType"], reference_id, email["id"], email.get("state"), raw
    )


def _problem(data: object, size: int, max_bytes: int, is_json: bool) -> tuple[str, str] | None:
    """What is wrong with a payload (None: a well-formed message)."""
    if size > max_bytes:
        return "oversized", f"{size} bytes, limit {max_bytes}"
    if not isinstance(data, dict):
        return "not_an_object", f"data is {type(data).__name__}, not an object"
    message_type = data.get("messageType")
    if not isinstance(message_type, str) or not message_type:
        return "no_message_type", "messageType is missing or not a string"
    if not is_json:
        # Only a caller in this process can hand over such a payload (JSON
        # from the wire always encodes again); an event can hold none of it.
        return "unprocessable", "data cannot be encoded as JSON"
    if message_type != EMAIL_STATE_CHANGE:
        return None
    return _email_problem(data)


def _notification(channel: str, data: dict[str, Any], raw: bytes) -> Notification:
    notification_type = data.get("notificationType")
    if not isinstance(notification_type, str) or not notification_type:
        notification_type = None
    return Notification(channel, data["messageType"], notification_type, _subject(data), raw)


def _subject(data: dict[str, Any]) -> str | None:
    """The id of the object a message is about: the first of `_OBJECT_KEYS` that
    holds an object, else the first device's."""
    for key in _OBJECT_KEYS:
        about = data.get(key)
        if isinstance(about, dict):
            return _id_of(about)
    devices = data.get(_DEVICES)
    if isinstance(devices, list) and devices and isinstance(devices[0], dict):
        return _id_of(devices[0])
    return None


def _id_of(about: dict[str, Any]) -> str | None:
    """A non-empty string id, or an integer one as its decimal string (never a bool)."""
    id_ = about.get("id")
    if type(id_) is str:
        return id_ or None
    if type(id_) is int:
        return str(id_)
    return None


def _email_problem(data: dict[str, Any]) -> tuple[str, str] | None:
    """What is wrong with an EmailStateChangeMessage (None: nothing)."""
    notification_type = data.get("notificationType")
    if not isinstance(notification_type, str) or not notification_type:
        return "no_notification_type", "notificationType is missing or not a string"
    email = data.get("email")
    if notification_type == ERROR and (email is None or _no_id(email)):
        # An Error may come without its email; its referenceId may be all there is.
        return _reference_id_problem(data.get("referenceId"))
    if not isinstance(email, dict):
        return "no_email", "email is missing or not an object"
    email_id = email.get("id")
    if not isinstance(email_id, str) or not email_id:
        return "no_email_id", "email.id is missing or not a non-empty string"
    state = email.get("state")
    if state is not None and not isinstance(state, str):
        return "bad_state", "email.state is not a string"
    return _reference_id_problem(data.get("referenceId"))


def _no_id(email: object) -> bool:
    return isinstance(email, dict) and email.get("id") in (None, "")


def _reference_id_problem(reference_id: object) -> tuple[str, str] | None:
    if reference_id is None or (type(reference_id) is int and -_INT64 <= reference_id < _INT64):
        return None
    # GWS sends small integers; a numeric string is tolerated, anything else
    # would make correlation guess.
    if (
        isinstance(reference_id, str)
        and reference_id.isascii()
        and reference_id.isdigit()
        and len(reference_id) <= 18
    ):
        return None
    if isinstance(reference_id, int) and not isinstance(reference_id, bool):
        return "bad_reference_id", "referenceId is out of the 64-bit range"
    return "bad_reference_id", "referenceId is not an integer"


def parse_batch(
    messages: Iterable[Message], *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> ParsedBatch:
    batch = ParsedBatch()
    usable = batch.usable
    for message in messages:
        parsed = parse_message(message.channel, message.data, max_bytes=max_bytes)
        if isinstance(parsed, Malformed):
            batch.malformed.append(parsed)
        else:
            usable.append(parsed)
    return batch
