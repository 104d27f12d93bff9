"""Turns sends, answers, notifications and read-backs into stored events.

Owns the order of things around the correlator: every decision the
correlator makes is written to the store (send rows and their events in one
transaction) before anyone is told about it, then the dispatcher is woken.
It never talks to GWS or to a sink itself: callers pass in what GWS said.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import structlog

from daemon.cometd import Message
from daemon.correlator import NOT_SENT_STATES, Correlator, Matched
from daemon.events import Event, EventFactory
from daemon.gws.messages import (
    KNOWN_OTHER_TYPES,
    MALFORMED_REASONS,
    EmailStateChange,
    Malformed,
    parse_batch,
)
from daemon.metrics import Metrics
from daemon.sends import SendRecord, SendStatus
from daemon.store import AsyncStore

log = structlog.get_logger(logger_name="daemon.tracker")

# Label values must come from fixed sets; anything GWS invents becomes "other".
_KNOWN_STATES = frozenset(
    {"Sent", "Composing", "Canceled", "Completed", "Processing", "Invited", "Error"}
)
_KNOWN_NOTIFICATION_TYPES = frozenset(
    {
        "StatusChange",
        "PropertiesUpdated",
        "EmailSaved",
        "AttachmentAdded",
        "AttachmentRemoved",
        "Error",
    }
)
_KNOWN_MESSAGE_TYPES = KNOWN_OTHER_TYPES | {"EmailStateChangeMessage"}


def _label(value: str | None, known: frozenset[str]) -> str:
    if value is None:
        return "none"
    return value if value in known else "other"


def _snapshot(sends: Sequence[SendRecord]) -> list[SendRecord]:
    # The store writes on its own thread; give it copies the loop won't touch.
    return [dataclasses.replace(s) for s in sends]


class Tracker:
    def __init__(
        self,
        *,
        correlator: Correlator,
        store: AsyncStore,
        events: EventFactory,
        metrics: Metrics,
        on_events: Callable[[int], None],
        channels: Sequence[str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.correlator = correlator
        self._store = store
        self._events = events
        self._metrics = metrics
        self._on_events = on_events
        self._channels = frozenset(channels)
        self._clock = clock

    def _gauge(self) -> None:
        self._metrics.pending_sends.set(len(self.correlator))

    async def _commit(
        self,
        sends: Sequence[SendRecord],
        events: Sequence[Event],
        malformed: Sequence[Malformed] = (),
    ) -> None:
        head = await self._store.run(
            self._store.store.commit_outcomes,
            sends=_snapshot(sends),
            events=events,
            malformed=malformed,
        )
        if head:
            self._on_events(head)

    # -- sends ------------------------------------------------------------------

    async def restore(self) -> int:
        """Load pending sends after a start; a send whose answer we never saw is unanswered."""
        sends = await self._store.run(self._store.store.load_pending)
        now = self._clock()
        for send in sends:
            if send.status is SendStatus.IN_FLIGHT:
                # We died between forwarding and the answer: GWS may have sent it.
                send.status = SendStatus.UNANSWERED
                send.answered_at = now
                await self._store.run(self._store.store.update_send, dataclasses.replace(send))
        self.correlator.restore(sends)
        self._gauge()
        return len(sends)

    async def register(self, send: SendRecord) -> None:
        """Write the send before it goes to GWS (rule 1)."""
        await self._store.run(self._store.store.insert_send, dataclasses.replace(send))
        self.correlator.add(send)
        self._gauge()

    async def accepted(self, send_id: str, reference_id: int | None) -> SendRecord | None:
        self._metrics.sends.labels("accepted").inc()
        send = self.correlator.accepted(send_id, reference_id, self._clock())
        if send is not None:
            await self._store.run(self._store.store.update_send, dataclasses.replace(send))
            log.info(
                "send_accepted",
                send_id=send_id,
                email_id=send.email_id,
                reference_id=send.reference_id,
            )
        return send

    async def answer_lost(self, send_id: str, reason: str) -> None:
        self._metrics.sends.labels("error").inc()
        send = self.correlator.answer_lost(send_id, self._clock())
        if send is not None:
            await self._store.run(self._store.store.update_send, dataclasses.replace(send))
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
        send = self.correlator.reject(send_id, status_code, status_message, now)
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
        """One Bayeux answer: parse, correlate, and store in ONE transaction."""
        now = self._clock()
        batch = parse_batch(messages)
        metrics = self._metrics
        if messages:
            metrics.last_notification.set(now)
        resolved: list[SendRecord] = []
        events: list[Event] = []
        for change in batch.changes:
            metrics.notifications_received.labels(
                self._channel_label(change.channel),
                "EmailStateChangeMessage",
                _label(change.notification_type, _KNOWN_NOTIFICATION_TYPES),
            ).inc()
            decision = self.correlator.find(change)
            send = decision.send if isinstance(decision, Matched) else None
            try:
                # The event is built before the decision is applied: a failure
                # here must not leave a send resolved without its event.
                event = self._events.state_changed(change, send, received_at=now)
            except Exception as exc:  # one message never stops the listener
                log.exception("notification_unprocessable", email_id=change.email_id)
                batch.malformed.append(
                    Malformed(change.channel, "unprocessable", repr(exc)[:500], change.raw[:4096])
                )
                continue
            self.correlator.apply(decision, now)
            if isinstance(decision, Matched):
                if not decision.repeat:
                    resolved.append(decision.send)
                    metrics.correlations.labels("matched").inc()
                    metrics.outcome_latency.labels(self._state_label(change)).observe(
                        max(0.0, now - decision.send.requested_at)
                    )
            else:
                metrics.correlations.labels("unmatched").inc()
            events.append(event)
            self._log_change(change, send, event.id)
        for ignored in batch.ignored:
            metrics.notifications_received.labels(
                self._channel_label(ignored.channel),
                _label(ignored.message_type, _KNOWN_MESSAGE_TYPES),
                "none",
            ).inc()
        for bad in batch.malformed:
            reason = bad.reason if bad.reason in MALFORMED_REASONS else "other"
            metrics.notifications_malformed.labels(reason).inc()
            log.warning(
                "notification_malformed", reason=bad.reason, detail=bad.detail, channel=bad.channel
            )
        if events or batch.malformed:
            await self._commit(resolved, events, malformed=batch.malformed)
        if resolved:
            self._gauge()

    def _channel_label(self, channel: str) -> str:
        return channel if channel in self._channels else "other"

    @staticmethod
    def _state_label(change: EmailStateChange) -> str:
        if change.notification_type == "Error":
            return "Error"
        return _label(change.state, _KNOWN_STATES)

    @staticmethod
    def _log_change(change: EmailStateChange, send: SendRecord | None, event_id: str) -> None:
        log.info(
            "email_state_changed",
            email_id=change.email_id,
            reference_id=change.reference_id,
            send_id=send.send_id if send else None,
            state=change.state,
            notification_type=change.notification_type,
            correlated=send is not None,
            event_id=event_id,
        )

    # -- read-backs -----------------------------------------------------------------

    async def read_back(
        self, send: SendRecord, email: dict[str, object] | None, *, final: bool
    ) -> bool:
        """Apply what GET said about a pending send. Returns True if it was resolved.

        `final` (its deadline passed): a send still not sent is timed out.
        Otherwise (a reconciliation after a reconnect) it simply stays pending.
        """
        now = self._clock()
        state = email.get("state") if email else None
        state = state if isinstance(state, str) else None
        if self.correlator.get(send.send_id) is None:
            return False  # resolved by a notification meanwhile
        if state is not None and state not in NOT_SENT_STATES:
            resolved = self.correlator.resolve(send.send_id, state, now)
            assert resolved is not None
            event = self._events.reconciled(resolved, state=state, at=now)
            await self._commit([resolved], [event])
            self._metrics.correlations.labels("reconciled").inc()
            self._metrics.reconciliations.labels("resolved").inc()
            self._metrics.outcome_latency.labels(_label(state, _KNOWN_STATES)).observe(
                max(0.0, now - resolved.requested_at)
            )
            self._gauge()
            log.info(
                "email_state_reconciled",
                send_id=send.send_id,
                email_id=send.email_id,
                reference_id=send.reference_id,
                state=state,
                event_id=event.id,
            )
            return True
        if not final:
            self._metrics.reconciliations.labels("still_pending").inc()
            return False
        timed_out = self.correlator.time_out(send.send_id, now)
        assert timed_out is not None
        timed_out.outcome_state = state
        event = self._events.timed_out(timed_out, last_state=state, at=now)
        await self._commit([timed_out], [event])
        self._metrics.correlations.labels("timed_out").inc()
        self._metrics.reconciliations.labels("timed_out").inc()
        self._gauge()
        log.warning(
            "send_timed_out",
            send_id=send.send_id,
            email_id=send.email_id,
            reference_id=send.reference_id,
            state=state,
            event_id=event.id,
        )
        return True
