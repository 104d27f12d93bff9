"""A Send the daemon has taken from the integration, and its life cycle.

    in_flight ──answer 0──────────► accepted ──outcome──► resolved
        │ └──answer lost (504)────► unanswered ─outcome─► resolved
        │                                  └──timeout──► timed_out
        └──GWS said no / never left──► rejected

`in_flight`, `accepted` and `unanswered` are the pending states: the send waits
for a notification, or for a GET that tells its state.
"""

from __future__ import annotations

import enum
import secrets
import time
from dataclasses import dataclass
from typing import Any


class SendStatus(enum.StrEnum):
    IN_FLIGHT = "in_flight"
    ACCEPTED = "accepted"
    UNANSWERED = "unanswered"
    RESOLVED = "resolved"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"

    @property
    def pending(self) -> bool:
        return self in _PENDING


_PENDING = frozenset({SendStatus.IN_FLIGHT, SendStatus.ACCEPTED, SendStatus.UNANSWERED})
PENDING_STATUSES = tuple(sorted(s.value for s in _PENDING))


def new_send_id() -> str:
    """A send id: time-ordered (sorts by creation) and unguessable."""
    return f"s{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


@dataclass(slots=True)
class SendRecord:
    send_id: str
    email_id: str
    queue_name: str
    requested_at: float  # unix seconds
    subject: str | None = None
    to: tuple[str, ...] = ()
    status: SendStatus = SendStatus.IN_FLIGHT
    reference_id: int | None = None
    answered_at: float | None = None
    resolved_at: float | None = None
    outcome_state: str | None = None
    status_code: int | None = None
    status_message: str | None = None

    @property
    def pending(self) -> bool:
        return self.status.pending

    def summary(self) -> dict[str, Any]:
        """The `send` object carried in events."""
        return {
            "sendId": self.send_id,
            "requestedAt": _iso(self.requested_at),
            "queueName": self.queue_name,
            "subject": self.subject,
            "to": list(self.to),
        }

    def as_json(self) -> dict[str, Any]:
        """What `GET /v1/sends/{sendId}` shows."""
        return {
            "sendId": self.send_id,
            "emailId": self.email_id,
            "status": self.status.value,
            "pending": self.pending,
            "referenceId": self.reference_id,
            "queueName": self.queue_name,
            "subject": self.subject,
            "to": list(self.to),
            "requestedAt": _iso(self.requested_at),
            "answeredAt": _iso(self.answered_at),
            "resolvedAt": _iso(self.resolved_at),
            "state": self.outcome_state,
            "statusCode": self.status_code,
            "statusMessage": self.status_message,
        }


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    seconds = int(timestamp)
    millis = round((timestamp - seconds) * 1000)
    if millis == 1000:
        seconds, millis = seconds + 1, 0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


iso_time = _iso
