"""CloudEvents 1.0 (JSON structured mode): what every sink receives.

Owns the event types, the shape of `data`, and the event id. The id is derived
from what the event is about, never drawn at random, so the same state change
redelivered after a crash or a retry carries the same id:

- an outcome of a send:       uuid5(send id, type, notificationType, state)
  (the same whether it came by notification or was read back by GET);
- an unmatched email notification: uuid5(email id, referenceId,
  notificationType, state, digest of the notification's bytes[, account]);
- a rejected / timed-out send: uuid5(send id, type);
- any other notification:     uuid5(type, channel, messageType,
  notificationType, subject, digest of the notification's bytes[, account]).

The digest is SHA-1 of the GWS `data` object's bytes as received: the same
message built again (after a restart) has the same id, and two messages that
differ in any byte have different ones. Two messages alike to the byte on one
channel (a device going Ready, NotReady, Ready again) share an id.

Send ids are unique across accounts; what is not tied to a send adds the
account to its id (except `default`'s, so that the ids a single-account
daemon gave before stay the same), so ids never collide across accounts.
Every event's `data.account` names the GWS account (agent session) it is
about, and `source` is that account's: `{base_url}/api/v2/me?account={name}`.

Types: the email ones (`gws.email.*`, correlated to sends); every other
`{X}StateChangeMessage` becomes `gws.{x}.state_changed` (X lower-cased), and
any other message type `gws.notification` (`notification_type_of`). x is
ASCII letters and digits only, lower-cased: sinks route on types by their
dot-separated segments, so x never adds a dot, a wildcard or upper case.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from typing import Any, NamedTuple

import orjson

from daemon.config import DEFAULT_ACCOUNT
from daemon.gws.messages import EmailStateChange, Notification
from daemon.sends import SendRecord, iso_time

STATE_CHANGED = "gws.email.state_changed"
SEND_REJECTED = "gws.email.send_rejected"
SEND_TIMED_OUT = "gws.email.send_timed_out"
EMAIL_EVENT_TYPES = (STATE_CHANGED, SEND_REJECTED, SEND_TIMED_OUT)
# The other message types the GWS docs name, as `notification_type_of` maps them.
CALL_STATE_CHANGED = "gws.call.state_changed"
DEVICE_STATE_CHANGED = "gws.device.state_changed"
CHAT_STATE_CHANGED = "gws.chat.state_changed"
WORKITEM_STATE_CHANGED = "gws.workitem.state_changed"
OPENMEDIA_STATE_CHANGED = "gws.openmedia.state_changed"
WORKBIN_STATE_CHANGED = "gws.workbin.state_changed"
WORKBIN_SUBSCRIPTION_STATE_CHANGED = "gws.workbinsubscription.state_changed"
NOTIFICATION = "gws.notification"  # any message type but a `{X}StateChangeMessage`
NOTIFICATION_EVENT_TYPES = (
    CALL_STATE_CHANGED,
    DEVICE_STATE_CHANGED,
    CHAT_STATE_CHANGED,
    WORKITEM_STATE_CHANGED,
    OPENMEDIA_STATE_CHANGED,
    WORKBIN_STATE_CHANGED,
    WORKBIN_SUBSCRIPTION_STATE_CHANGED,
    NOTIFICATION,
)
# The types of the documented messages; a `{X}StateChangeMessage` no page names
# makes a `gws.{x}.state_changed` not listed here.
EVENT_TYPES = EMAIL_EVENT_TYPES + NOTIFICATION_EVENT_TYPES

_STATE_CHANGE_MESSAGE = "StateChangeMessage"

# Fixed namespace for this project's event ids (uuid5 of the project URL).
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/gws-notifyd/gws-notifyd/events")


class Event(NamedTuple):
    id: str
    type: str
    email_id: str | None
    time: float
    body: bytes  # the whole CloudEvent, serialised once
    account: str = DEFAULT_ACCOUNT
    subject: str | None = None  # the CloudEvent's subject (the email id for an email)


_NAMESPACE_BYTES = _NAMESPACE.bytes


def event_id(*parts: object) -> str:
    """uuid5(_NAMESPACE, parts joined), computed without building a UUID object."""
    key = "\x1f".join("" if p is None else str(p) for p in parts)
    digest = bytearray(
        hashlib.sha1(_NAMESPACE_BYTES + key.encode(), usedforsecurity=False).digest()[:16]
    )
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def compact(serialised: bytes) -> bytes:
    """`serialised` at its own size. orjson's result keeps the whole buffer it grew
    (4 KiB or more under a 0.7 KB event); what stays in memory (events queued for
    the store and for the sinks, a send's summary) is copied out of it once."""
    return memoryview(serialised).tobytes()


@functools.lru_cache(maxsize=256)  # a few types in practice; bounded against invented ones
def notification_type_of(message_type: str) -> str:
    """The event type of a GWS message type: `{X}StateChangeMessage`, X of ASCII
    letters and digits only, is `gws.{x}.state_changed` (x: X lower-cased);
    anything else `gws.notification`."""
    kind = message_type.removesuffix(_STATE_CHANGE_MESSAGE)
    if kind != message_type and kind.isascii() and kind.isalnum():
        return f"gws.{kind.lower()}.state_changed"
    return NOTIFICATION


def account_source(base_url: str, account: str) -> str:
    """The CloudEvents `source` of one account's events."""
    return f"{base_url}/api/v2/me?account={account}"


class EventFactory:
    """Builds the events of one GWS account (`source`, `account`)."""

    def __init__(self, source: str, account: str = DEFAULT_ACCOUNT) -> None:
        self.source = source
        self.account = account
        # Parts added to the ids of events not tied to a send (see the module docstring).
        self.id_salt: tuple[str, ...] = () if account == DEFAULT_ACCOUNT else (account,)
        self._last_time: tuple[float, str] = (0.0, "")

    def _time(self, at: float) -> str:
        # A batch's events share one receipt time: format it once.
        if self._last_time[0] != at:
            self._last_time = (at, iso_time(at, digits=6) or "")
        return self._last_time[1]

    def _event(
        self,
        *,
        id_: str,
        type_: str,
        email_id: str | None,
        time: float,
        data: dict[str, Any],
        subject: str | None = None,
    ) -> Event:
        """An event; its `subject` is `email_id` unless another is given."""
        if subject is None:
            subject = email_id
        envelope = {
            "specversion": "1.0",
            "id": id_,
            "source": self.source,
            "type": type_,
            "subject": subject,
            # Microseconds: receipt -> sink latency is measured from this.
            "time": self._time(time),
            "datacontenttype": "application/json",
            "data": data,
        }
        if subject is None:
            del envelope["subject"]  # CloudEvents: a subject is a non-empty string, or absent
        data["account"] = self.account
        body = compact(orjson.dumps(envelope))
        return Event(id_, type_, email_id, time, body, self.account, subject)

    def state_changed(
        self,
        change: EmailStateChange,
        send: SendRecord | None,
        *,
        received_at: float,
    ) -> Event:
        """A notification, correlated to `send` or not. (The per-message hot path:
        one orjson call, the send's part serialised once.)

        An Error without an email has no email id of its own: tied to a send, it
        takes the send's; otherwise the event has no `subject` and a null `emailId`.
        """
        email_id = change.email_id
        if send is not None:
            id_ = event_id(send.send_id, STATE_CHANGED, change.notification_type, change.state)
            reference_id = change.reference_id
            if reference_id is None:
                reference_id = send.reference_id
            if email_id is None:
                email_id = send.email_id
            send_summary: orjson.Fragment | None = send.summary_json()
            latency: float | None = round(received_at - send.requested_at, 6)
        else:
            id_ = event_id(
                change.email_id,
                change.reference_id,
                change.notification_type,
                change.state,
                hashlib.sha1(change.raw, usedforsecurity=False).hexdigest(),
                *self.id_salt,
            )
            reference_id = change.reference_id
            send_summary = latency = None
        return self._event(
            id_=id_,
            type_=STATE_CHANGED,
            email_id=email_id,
            time=received_at,
            data={
                "referenceId": reference_id,
                "emailId": email_id,
                "state": change.state,
                "notificationType": change.notification_type,
                "correlated": send is not None,
                "reconciled": False,
                "send": send_summary,
                "latencySeconds": latency,
                "notification": orjson.Fragment(change.raw),
                "channel": change.channel,
            },
        )

    def notification(self, notification: Notification, *, received_at: float) -> Event:
        """Any GWS message but an email state change: forwarded as it came, tied to nothing."""
        type_ = notification_type_of(notification.message_type)
        id_ = event_id(
            type_,
            notification.channel,
            notification.message_type,
            notification.notification_type,
            notification.subject,
            hashlib.sha1(notification.raw, usedforsecurity=False).hexdigest(),
            *self.id_salt,
        )
        return self._event(
            id_=id_,
            type_=type_,
            email_id=None,
            subject=notification.subject,
            time=received_at,
            data={
                "account": self.account,
                "channel": notification.channel,
                "messageType": notification.message_type,
                "notificationType": notification.notification_type,
                "notification": orjson.Fragment(notification.raw),
            },
        )

    def reconciled(self, send: SendRecord, *, state: str | None, at: float) -> Event:
        """An outcome read back from GWS by GET, because its notification never came."""
        # notificationType StatusChange on purpose: the id then equals the one
        # the notification would have produced, so a late notification and
        # this event are recognisably the same state change.
        id_ = event_id(send.send_id, STATE_CHANGED, "StatusChange", state)
        data = _outcome_data(
            send,
            email_id=send.email_id,
            reference_id=send.reference_id,
            state=state,
            notification_type="StatusChange",
            reconciled=True,
            at=at,
        )
        data["notification"] = None
        return self._event(id_=id_, type_=STATE_CHANGED, email_id=send.email_id, time=at, data=data)

    def rejected(
        self,
        send: SendRecord,
        *,
        status_code: int | None,
        status_message: str | None,
        http_status: int | None,
        at: float,
    ) -> Event:
        data = _outcome_data(
            send,
            email_id=send.email_id,
            reference_id=None,
            state=None,
            notification_type=None,
            reconciled=False,
            at=at,
        )
        data.update(
            {
                "statusCode": status_code,
                "statusMessage": status_message,
                "httpStatus": http_status,
                "notification": None,
            }
        )
        return self._event(
            id_=event_id(send.send_id, SEND_REJECTED),
            type_=SEND_REJECTED,
            email_id=send.email_id,
            time=at,
            data=data,
        )

    def timed_out(
        self, send: SendRecord, *, last_state: str | None, reason: str, at: float
    ) -> Event:
        """No outcome by the deadline. `reason`: "not_sent" (still Composing), "not_found"
        (GWS no longer knows the email: 404) or "read_back_failed" (its read-backs kept
        failing until the give-up time)."""
        data = _outcome_data(
            send,
            email_id=send.email_id,
            reference_id=send.reference_id,
            state=last_state,
            notification_type=None,
            reconciled=True,
            at=at,
        )
        data["notification"] = None
        data["reason"] = reason
        return self._event(
            id_=event_id(send.send_id, SEND_TIMED_OUT),
            type_=SEND_TIMED_OUT,
            email_id=send.email_id,
            time=at,
            data=data,
        )


def _outcome_data(
    send: SendRecord | None,
    *,
    email_id: str,
    reference_id: int | None,
    state: str | None,
    notification_type: str | None,
    reconciled: bool,
    at: float,
) -> dict[str, Any]:
    return {
        "referenceId": reference_id,
        "emailId": email_id,
        "state": state,
        "notificationType": notification_type,
        "correlated": send is not None,
        "reconciled": reconciled,
        "send": send.summary() if send is not None else None,
        "latencySeconds": round(at - send.requested_at, 6) if send is not None else None,
    }
