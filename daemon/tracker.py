"""Turns one account's sends, answers, notifications and read-backs into stored events.

Owns the order of things around the correlator: every decision the
correlator makes is written to the store (send rows and their events in one
transaction) before anyone is told about it, then the dispatcher is woken.
The events of a batch of notifications, email and other, are stored in the
order the messages came: consumers rely on the order per account.
It never talks to GWS or to a sink itself: callers pass in what GWS said.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter as CounterType
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from daemon.cometd import Message
from daemon.correlator import Correlator, Matched
from daemon.events import Event, EventFactory
from daemon.gws.messages import (
    DEFAULT_MAX_MESSAGE_BYTES,
    EMAIL_NOTIFICATION_TYPES,
    EMAIL_STATE_CHANGE,
    EMAIL_STATES,
    ERROR,
    KNOWN_MESSAGE_TYPES,
    MALFORMED_REASONS,
    NOT_SENT_STATES,
    EmailStateChange,
    Malformed,
    Notification,
    parse_batch,
)
from daemon.logging import log_batch
from daemon.metrics import AccountMetrics
from daemon.sends import SendRecord, SendStatus
from daemon.store import AsyncStore, OutcomeWriter, send_row, send_update

log = structlog.get_logger(logger_name="daemon.tracker")

# Messages handled between two looks at the rest of the loop (API requests);
# and how many events may wait for the next transaction before the listener
# waits for it (the backpressure that keeps memory bounded: at the bound, with
# 0.7 KB bodies, ~1 KB an event, ~8 MB, during a burst or while the store fails).
CHUNK = 2000
MAX_QUEUED_EVENTS = 4 * CHUNK

# Label values must come from fixed sets; anything GWS invents becomes "other".


def _label(value: str | None, known: frozenset[str]) -> str:
    if value is None:
        return "none"
    return value if value in known else "other"


def _unprocessable(channel: str, error: Exception, raw: bytes) -> Malformed:
    """A well-formed message whose event could not be built, kept as a dead letter."""
    return Malformed(channel, "unprocessable", repr(error)[:500], raw[:4096])


@dataclass(slots=True)
class _Tally:
    """What one chunk of notifications did, counted and logged once per chunk."""

    received: CounterType[tuple[str, str, str | None]] = field(default_factory=CounterType)
    resolved: list[SendRecord] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    log_rows: list[dict[str, Any]] = field(default_factory=list)
    forwarded: CounterType[str] = field(default_factory=CounterType)  # other events, by type
    unmatched: int = 0
    latency: dict[str, list[float]] = field(default_factory=dict)


class Tracker:
    def __init__(
        self,
        *,
        correlator: Correlator,
        store: AsyncStore,
        writer: OutcomeWriter,
        events: EventFactory,
        metrics: AccountMetrics,
        channels: Sequence[str],
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`max_message_bytes`: a larger notification is kept as malformed ("oversized")."""
        self._correlator = correlator
        self._max_message_bytes = max_message_bytes
        self._store = store
        self._writer = writer
        self._events = events
        self._metrics = metrics
        self._channels = frozenset(channels)
        self._clock = clock
        # Set whenever a deadline may have come sooner (a send answered, restored,
        # postponed; a new timeout): whoever waits for the next deadline looks again.
        self.deadlines_changed = asyncio.Event()
        self.last_notification_at: float | None = None  # unix time

    def _gauge(self) -> None:
        self._metrics.pending_sends.set(len(self._correlator))

    # -- what is pending ------------------------------------------------------------

    def __len__(self) -> int:
        """How many sends are pending."""
        return len(self._correlator)

    def pending(self) -> list[SendRecord]:
        return self._correlator.pending()

    def get(self, send_id: str) -> SendRecord | None:
        """A pending send (None once it has its outcome)."""
        return self._correlator.get(send_id)

    def due(self, now: float) -> list[SendRecord]:
        """Pending sends whose deadline passed: to be read back (see `read_back`)."""
        return self._correlator.due(now)

    def postpone(self, send_id: str, until: float) -> None:
        """A deadline check could not be made: try again at `until`."""
        self._correlator.postpone(send_id, until)
        self.deadlines_changed.set()

    def next_deadline(self) -> float | None:
        return self._correlator.next_deadline()

    def set_send_timeout(self, seconds: float) -> None:
        """A new `send_timeout_seconds`, for deadlines already set too."""
        self._correlator.set_send_timeout(seconds)
        self.deadlines_changed.set()

    def new_gws_session(self) -> None:
        """GWS gave us a new HTTP session: referenceIds answered before are another's."""
        self._correlator.new_session()

    async def _commit(
        self,
        sends: Sequence[SendRecord],
        events: Sequence[Event],
        malformed: Sequence[Malformed] = (),
    ) -> None:
        await self._writer.write(
            updates=[send_update(s) for s in sends], events=events, malformed=malformed
        )

    async def flush(self) -> None:
        """Wait until everything written so far is committed (raises StoreError)."""
        await self._writer.flush()

    # -- sends ------------------------------------------------------------------

    async def restore(self) -> int:
        """Load pending sends after a start; a send whose answer we never saw is unanswered."""
        sends = await self._store.load_pending(self._events.account)
        now = self._clock()
        in_flight = [s for s in sends if s.status is SendStatus.IN_FLIGHT]
        for send in in_flight:
            # We died between forwarding and the answer: GWS may have sent it.
            send.status = SendStatus.UNANSWERED
            send.answered_at = now
        if in_flight:
            self._writer.write(updates=[send_update(s) for s in in_flight])
            await self._writer.flush()  # raises on a failing store: start-up must not wait
        self._correlator.restore(sends)
        self.deadlines_changed.set()
        self._gauge()
        return len(sends)

    async def register(self, send: SendRecord) -> None:
        """Write the send before it goes to GWS (rule 1)."""
        await self._writer.write(inserts=[send_row(send)])
        self._correlator.add(send)
        self._gauge()

    def accepted(self, send_id: str, reference_id: int | None) -> SendRecord | None:
        """GWS said yes. The row update is queued, not awaited: the send is on
        disk already (as in flight), and if this update is lost in a crash the
        send is restored as unanswered and read back, with the same outcome."""
        self._metrics.sends.labels("accepted").inc()
        send = self._correlator.accepted(send_id, reference_id, self._clock())
        if send is not None:
            self.deadlines_changed.set()
            self._writer.write(updates=[send_update(send)])
            log_batch(
                "daemon.tracker",
                "send_accepted",
                [
                    {
                        "send_id": send_id,
                        "email_id": send.email_id,
                        "reference_id": send.reference_id,
                    }
                ],
            )
        return send

    async def answer_lost(self, send_id: str, reason: str) -> None:
        self._metrics.sends.labels("error").inc()
        send = self._correlator.answer_lost(send_id, self._clock())
        if send is not None:
            self.deadlines_changed.set()
            await self._writer.write(updates=[send_update(send)])
            log.warning("send_answer_lost", send_id=send_id, email_id=send.email_id, reason=reason)

    async def rejected(
        self,
        send_id: str,
        *,
        status_code: int | None,
        status_message: str | None,
        http_status: int | None,
    ) -> None:
        """GWS said no, or the Send never left: the outcome is known now."""
        self._metrics.sends.labels("rejected" if http_status is not None else "error").inc()
        now = self._clock()
        send = self._correlator.reject(send_id, status_code, status_message, now)
        if send is None:
            return
        event = self._events.rejected(
            send,
            status_code=status_code,
            status_message=status_message,
            http_status=http_status,
            at=now,
        )
        await self._commit([send], [event])
        self._gauge()
        log.info(
            "send_rejected",
            send_id=send_id,
            email_id=send.email_id,
            status_code=status_code,
            status_message=status_message,
            http_status=http_status,
            event_id=event.id,
        )

    # -- notifications ------------------------------------------------------------

    async def on_batch(self, messages: list[Message]) -> None:
        """One Bayeux answer: parse, correlate, store; in transactions of CHUNK messages.

        The work of a chunk is done on the event loop while the previous
        chunk's transaction commits on the store's thread (group commit, see
        `OutcomeWriter`); past MAX_QUEUED_EVENTS waiting, the listener waits,
        which is the backpressure. Between chunks the loop serves the API.
        """
        for start in range(0, len(messages), CHUNK):
            committed = self._process(messages[start : start + CHUNK])
            if self._writer.queued_events > MAX_QUEUED_EVENTS:
                await committed
            elif start + CHUNK < len(messages):
                await asyncio.sleep(0)

    def _process(self, messages: list[Message]) -> asyncio.Future[int]:
        """Parse and correlate one chunk; returns its queued transaction."""
        now = self._clock()
        batch = parse_batch(messages, max_bytes=self._max_message_bytes)
        if messages:
            self.last_notification_at = now
            self._metrics.last_notification.set(now)
        tally = _Tally()
        for parsed in batch.usable:
            if isinstance(parsed, EmailStateChange):
                self._correlate(parsed, now, tally, batch.malformed)
            else:
                self._forward(parsed, now, tally, batch.malformed)
        self._report_malformed(batch.malformed)
        commit = self._writer.write(
            updates=[send_update(s) for s in tally.resolved],
            events=tally.events,
            malformed=batch.malformed,
        )
        self._count(tally)
        log_batch("daemon.tracker", "email_state_changed", tally.log_rows)
        if tally.forwarded:
            # One line a chunk, not one a message: calls and devices can be many.
            log.info(
                "notifications_forwarded",
                count=tally.forwarded.total(),
                by_type=dict(tally.forwarded),
            )
        if tally.resolved:
            self._gauge()
        return commit

    def _correlate(
        self, change: EmailStateChange, now: float, tally: _Tally, malformed: list[Malformed]
    ) -> None:
        """One email state change: its send (if any), its event, its log row."""
        tally.received[(change.channel, EMAIL_STATE_CHANGE, change.notification_type)] += 1
        decision = self._correlator.find(change)
        send = decision.send if isinstance(decision, Matched) else None
        try:
            # The event is built before the decision is applied: a failure
            # here must not leave a send resolved without its event.
            event = self._events.state_changed(change, send, received_at=now)
        except Exception as exc:  # one message never stops the listener
            log.exception("notification_unprocessable", email_id=change.email_id)
            malformed.append(_unprocessable(change.channel, exc, change.raw))
            return
        self._correlator.apply(decision, now)
        if not isinstance(decision, Matched):
            tally.unmatched += 1
        elif not decision.repeat:
            tally.resolved.append(decision.send)
            tally.latency.setdefault(self._state_label(change), []).append(
                now - decision.send.requested_at
            )
        tally.events.append(event)
        tally.log_rows.append(
            {
                "email_id": change.email_id,
                "reference_id": change.reference_id,
                "send_id": send.send_id if send else None,
                "state": change.state,
                "notification_type": change.notification_type,
                "correlated": send is not None,
                "event_id": event.id,
            }
        )

    def _forward(
        self, notification: Notification, now: float, tally: _Tally, malformed: list[Malformed]
    ) -> None:
        """Any other GWS message: its event, tied to no send."""
        tally.received[
            (notification.channel, notification.message_type, notification.notification_type)
        ] += 1
        try:
            event = self._events.notification(notification, received_at=now)
        except Exception as exc:  # one message never stops the listener
            log.exception(
                "notification_unprocessable",
                channel=notification.channel,
                message_type=notification.message_type,
            )
            malformed.append(_unprocessable(notification.channel, exc, notification.raw))
            return
        tally.events.append(event)
        tally.forwarded[event.type] += 1

    def _report_malformed(self, malformed: list[Malformed]) -> None:
        for bad in malformed:
            reason = bad.reason if bad.reason in MALFORMED_REASONS else "other"
            self._metrics.notifications_malformed.labels(reason).inc()
            log.warning(
                "notification_malformed", reason=bad.reason, detail=bad.detail, channel=bad.channel
            )

    def _count(self, tally: _Tally) -> None:
        metrics = self._metrics
        for (channel, message_type, notification_type), count in tally.received.items():
            metrics.notifications_received.labels(
                self._channel_label(channel),
                _label(message_type, KNOWN_MESSAGE_TYPES),
                _label(notification_type, EMAIL_NOTIFICATION_TYPES),
            ).inc(count)
        if tally.resolved:
            metrics.correlations.labels("matched").inc(len(tally.resolved))
        if tally.unmatched:
            metrics.correlations.labels("unmatched").inc(tally.unmatched)
        for state, values in tally.latency.items():
            histogram = metrics.outcome_latency.labels(state)
            for value in values:
                histogram.observe(max(0.0, value))

    def _channel_label(self, channel: str) -> str:
        return channel if channel in self._channels else "other"

    @staticmethod
    def _state_label(change: EmailStateChange) -> str:
        if change.notification_type == ERROR:
            return ERROR
        return _label(change.state, EMAIL_STATES)

    # -- read-backs -----------------------------------------------------------------

    async def read_back(
        self,
        send: SendRecord,
        email: dict[str, object] | None,
        *,
        final: bool,
        failed: bool = False,
    ) -> bool:
        """Apply what GET said about a pending send. Returns True if it was resolved.

        `email` is None when GWS does not know the email (404: a sent email may
        leave the workspace). `final` (its deadline passed): a send not known to
        be sent ends timed out, with the reason: "not_sent" (still Composing),
        "not_found" (404), or "read_back_failed" (`failed`: its read-backs kept
        failing until the give-up time). Otherwise (a reconciliation after a
        reconnect) it simply stays pending.
        """
        now = self._clock()
        state = email.get("state") if email else None
        state = state if isinstance(state, str) else None
        if self._correlator.get(send.send_id) is None:
            return False  # resolved by a notification meanwhile
        if state is not None and state not in NOT_SENT_STATES:
            resolved = self._correlator.resolve(send.send_id, state, now)
            assert resolved is not None
            self._metrics.outcome_latency.labels(_label(state, EMAIL_STATES)).observe(
                max(0.0, now - resolved.requested_at)
            )
            event = self._events.reconciled(resolved, state=state, at=now)
            await self._conclude(
                resolved, event, ("reconciled", "resolved"), "email_state_reconciled"
            )
            return True
        if not final:
            self._metrics.reconciliations.labels("still_pending").inc()
            return False
        reason = "read_back_failed" if failed else "not_found" if email is None else "not_sent"
        timed_out = self._correlator.time_out(send.send_id, now)
        assert timed_out is not None
        timed_out.outcome_state = state
        event = self._events.timed_out(timed_out, last_state=state, reason=reason, at=now)
        await self._conclude(
            timed_out, event, ("timed_out", "timed_out"), "send_timed_out", reason=reason
        )
        return True

    async def _conclude(
        self,
        send: SendRecord,
        event: Event,
        results: tuple[str, str],
        log_event: str,
        reason: str | None = None,
    ) -> None:
        """Store an outcome found by read-back; count and log it."""
        await self._commit([send], [event])
        correlation, reconciliation = results
        self._metrics.correlations.labels(correlation).inc()
        self._metrics.reconciliations.labels(reconciliation).inc()
        self._gauge()
        logger = log.warning if send.status is SendStatus.TIMED_OUT else log.info
        logger(
            log_event,
            send_id=send.send_id,
            email_id=send.email_id,
            reference_id=send.reference_id,
            state=send.outcome_state,
            event_id=event.id,
            reason=reason,
        )
