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
import functools
import itertools
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from daemon.config import DEFAULT_ACCOUNT


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


_PROCESS_TAG = secrets.token_hex(3)
_SEQUENCE = itertools.count()


def new_send_id() -> str:
    """A send id: time-ordered, unique across restarts (a random tag per process
    and a counter), without a system call per send."""
    return f"s{int(time.time() * 1000):012x}{_PROCESS_TAG}{next(_SEQUENCE) & 0xFFFFFF:06x}"


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
    account: str = DEFAULT_ACCOUNT  # the GWS account (agent) it was sent as
    _summary: orjson.Fragment | None = field(default=None, repr=False, compare=False)
    due_at: float | None = field(default=None, repr=False, compare=False)  # correlator's

    @property
    def pending(self) -> bool:
        return self.status.pending

    def summary(self) -> dict[str, Any]:
        """The `send` object carried in events."""
        return {
            "sendId": self.send_id,
            "requestedAt": iso_time(self.requested_at),
            "queueName": self.queue_name,
            "subject": self.subject,
            "to": list(self.to),
        }

    def summary_json(self) -> orjson.Fragment:
        """`summary()` serialised, once: what it shows never changes."""
        if self._summary is None:
            # At its own size (see events.compact): recently resolved sends keep it.
            self._summary = orjson.Fragment(memoryview(orjson.dumps(self.summary())).tobytes())
        return self._summary

    def as_json(self) -> dict[str, Any]:
        """What `GET /v1/sends/{sendId}` shows."""
        return {
            "sendId": self.send_id,
            "account": self.account,
            "emailId": self.email_id,
            "status": self.status.value,
            "pending": self.pending,
            "referenceId": self.reference_id,
            "queueName": self.queue_name,
            "subject": self.subject,
            "to": list(self.to),
            "requestedAt": iso_time(self.requested_at),
            "answeredAt": iso_time(self.answered_at),
            "resolvedAt": iso_time(self.resolved_at),
            "state": self.outcome_state,
            "statusCode": self.status_code,
            "statusMessage": self.status_message,
        }


@functools.lru_cache(maxsize=64)
def _second(seconds: int) -> str:
    # Events of a batch share their second: formatting it once per second
    # instead of once per event is a measurable part of the hot path.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def iso_time(timestamp: float | None, *, digits: int = 3) -> str | None:
    """RFC 3339 UTC with milliseconds (or `digits=6`: microseconds)."""
    if timestamp is None:
        return None
    scale = 10**digits
    ticks = round(timestamp * scale)
    seconds, fraction = divmod(ticks, scale)
    return f"{_second(seconds)}.{fraction:0{digits}d}Z"
