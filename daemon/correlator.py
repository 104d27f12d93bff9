"""Pending sends <-> notifications. Pure logic: no I/O, no clock of its own.

The rules (README, "Correlation"):
1. A send is registered *before* it is forwarded to GWS, so a notification
   that overtakes the Send's HTTP answer still finds it (by email id).
2. When the answer carried a referenceId, a notification with that
   referenceId resolves the send, provided its email id is the one sent
   (referenceIds are small per-session counters and get reused).
3. Otherwise the first outcome for that email after the Send resolves it:
   an Error, or a StatusChange to state Sent. Its referenceId is learned.
4. A repeat of an outcome for a send resolved a moment ago is matched to the
   same send again (so it gets the same event id and receivers can dedupe).
5. An Error without an email (GWS sends some) resolves the one pending send
   of this GWS session with its referenceId, if exactly one has it.
6. Anything else is unmatched and forwarded with `correlated: false`.
7. A pending send past its deadline is handed out for a GET; the caller then
   resolves it, times it out, or postpones the next check.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterable
from typing import NamedTuple

import structlog

from daemon.gws.messages import ERROR, SENT, EmailStateChange
from daemon.sends import SendRecord, SendStatus

log = structlog.get_logger(logger_name="daemon.correlator")

# The deadline heap is rebuilt from the pending sends when it holds more than
# twice as many entries as there are pending sends, plus this many.
HEAP_SLACK = 1024


class Matched(NamedTuple):
    send: SendRecord
    change: EmailStateChange
    repeat: bool = False  # the send was already resolved: a late or repeated outcome


class Unmatched(NamedTuple):
    change: EmailStateChange


Decision = Matched | Unmatched


class Correlator:
    """The rules above, over what it holds in memory. Bounds (tracemalloc, CPython 3.11):

    - pending sends (indexed by id, email, referenceId, session referenceId):
      one per send awaiting its outcome, so at most the Send rate x
      (send_timeout_seconds + read-back retries); ~0.7 KB each;
    - recently resolved sends (rule 4): `recent_capacity` (10,000), oldest
      dropped first; ~0.7 KB each (its summary kept for a repeat), 7 MB at the bound;
    - the deadline heap: at most 2 x pending + HEAP_SLACK entries, ~80 B each;
    - sends being checked: a subset of the pending ones.
    """

    def __init__(self, *, send_timeout_seconds: float, recent_capacity: int = 10_000) -> None:
        self._send_timeout = send_timeout_seconds
        self._pending: dict[str, SendRecord] = {}
        # An email's pending send, or a list when there are several (rare): a
        # list per send would be ~0.12 KB more each with 100k pending.
        self._by_email: dict[str, SendRecord | list[SendRecord]] = {}
        self._by_reference: dict[int, SendRecord] = {}
        # Pending sends by the referenceId GWS gave them in the current HTTP session.
        self._session_refs: dict[int, list[SendRecord]] = {}
        self._deadlines: list[tuple[float, str]] = []
        self._checking: set[str] = set()
        self._recent: OrderedDict[str, SendRecord] = OrderedDict()
        self._recent_capacity = recent_capacity

    # -- sends -------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._pending)

    def sizes(self) -> dict[str, int]:
        """How many entries each structure holds (for tests and diagnostics)."""
        return {
            "pending": len(self._pending),
            "recent": len(self._recent),
            "deadlines": len(self._deadlines),
            "checking": len(self._checking),
            "byEmail": len(self._by_email),
            "byReference": len(self._by_reference),
            "sessionRefs": len(self._session_refs),
        }

    def pending(self) -> list[SendRecord]:
        return list(self._pending.values())

    def get(self, send_id: str) -> SendRecord | None:
        return self._pending.get(send_id)

    def add(self, send: SendRecord) -> None:
        """Register a send (new, or restored from the store after a restart)."""
        self._pending[send.send_id] = send
        held = self._by_email.get(send.email_id)
        if held is None:
            self._by_email[send.email_id] = send
        elif isinstance(held, list):
            held.append(send)
        else:
            self._by_email[send.email_id] = [held, send]
        if send.reference_id is not None:
            self._by_reference[send.reference_id] = send
        if send.status is not SendStatus.IN_FLIGHT:
            self._schedule(send)

    def set_send_timeout(self, seconds: float) -> None:
        """Change the timeout, for deadlines already set too (a SIGHUP).

        A send being checked keeps its check; a postponed one gets its new
        deadline (the next check may come sooner, never later than it should).
        """
        self._send_timeout = seconds
        for send in self._pending.values():
            if send.status is not SendStatus.IN_FLIGHT and send.send_id not in self._checking:
                self._schedule(send)

    def restore(self, sends: Iterable[SendRecord]) -> None:
        for send in sorted(sends, key=lambda s: s.requested_at):
            self.add(send)

    def _deadline(self, send: SendRecord) -> float:
        start = send.answered_at if send.answered_at is not None else send.requested_at
        return start + self._send_timeout

    def _schedule(self, send: SendRecord, at: float | None = None) -> None:
        deadline = at if at is not None else self._deadline(send)
        send.due_at = deadline  # which heap entry of this send is the live one
        heapq.heappush(self._deadlines, (deadline, send.send_id))
        self._bound_deadlines()

    def _bound_deadlines(self) -> None:
        """Drop the entries of resolved and rescheduled sends once they are too
        many (stale ones are otherwise skipped only when their time comes: a
        SIGHUP pushes one entry per pending send, a resolved send leaves its
        entry behind). Amortised O(1): a rebuild follows ~pending/2 changes."""
        if len(self._deadlines) <= 2 * len(self._pending) + HEAP_SLACK:
            return
        self._deadlines = [
            (s.due_at, s.send_id)
            for s in self._pending.values()
            if s.due_at is not None and s.send_id not in self._checking
        ]
        heapq.heapify(self._deadlines)

    def accepted(self, send_id: str, reference_id: int | None, now: float) -> SendRecord | None:
        """GWS answered statusCode 0. Returns the send if it is still pending."""
        send = self._pending.get(send_id)
        if send is None:
            return None
        send.status = SendStatus.ACCEPTED
        send.answered_at = now
        if reference_id is not None:
            if send.reference_id is not None and send.reference_id != reference_id:
                log.warning(
                    "reference_id_disagrees",
                    send_id=send_id,
                    email_id=send.email_id,
                    answered=reference_id,
                    learned=send.reference_id,
                )
            else:
                self._set_reference(send, reference_id)
                # Only a send that stays pending can be claimed by an Error without
                # an email; a referenceId learned from an outcome resolves its send.
                holders = self._session_refs.setdefault(reference_id, [])
                if all(h is not send for h in holders):
                    holders.append(send)
        self._schedule(send)
        return send

    def answer_lost(self, send_id: str, now: float) -> SendRecord | None:
        """The Send left but its answer did not come: GWS may have sent it."""
        send = self._pending.get(send_id)
        if send is None:
            return None
        send.status = SendStatus.UNANSWERED
        send.answered_at = now
        self._schedule(send)
        return send

    def new_session(self) -> None:
        """A new GWS HTTP session: its referenceIds start again (rule 5)."""
        self._session_refs.clear()

    def _set_reference(self, send: SendRecord, reference_id: int) -> None:
        send.reference_id = reference_id
        previous = self._by_reference.get(reference_id)
        if previous is not None and previous is not send:
            # A per-session counter came round again; the newest send owns it.
            log.info("reference_id_reused", reference_id=reference_id, send_id=send.send_id)
        self._by_reference[reference_id] = send

    def _remove(self, send: SendRecord) -> None:
        self._pending.pop(send.send_id, None)
        self._checking.discard(send.send_id)
        self._bound_deadlines()
        held = self._by_email.get(send.email_id)
        if held is send:
            del self._by_email[send.email_id]  # the usual case: one send per email
        elif isinstance(held, list):
            others = [s for s in held if s is not send]
            if len(others) == 1:
                self._by_email[send.email_id] = others[0]
            elif others:
                held[:] = others
            else:
                del self._by_email[send.email_id]
        reference_id = send.reference_id
        if reference_id is not None:
            if self._by_reference.get(reference_id) is send:
                del self._by_reference[reference_id]
            holders = self._session_refs.get(reference_id)
            if holders is not None:
                holders[:] = [h for h in holders if h is not send]
                if not holders:
                    del self._session_refs[reference_id]

    def _finish(self, send: SendRecord, status: SendStatus, now: float) -> SendRecord:
        self._remove(send)
        send.status = status
        send.resolved_at = now
        recent = self._recent
        if send.email_id in recent:
            recent.move_to_end(send.email_id)
        recent[send.email_id] = send
        if len(recent) > self._recent_capacity:
            recent.popitem(last=False)
        return send

    def resolve(self, send_id: str, state: str | None, now: float) -> SendRecord | None:
        """The outcome is known (by notification or by GET)."""
        send = self._pending.get(send_id)
        if send is None:
            return None
        send.outcome_state = state
        return self._finish(send, SendStatus.RESOLVED, now)

    def reject(
        self, send_id: str, status_code: int | None, status_message: str | None, now: float
    ) -> SendRecord | None:
        send = self._pending.get(send_id)
        if send is None:
            return None
        send.status_code = status_code
        send.status_message = status_message
        return self._finish(send, SendStatus.REJECTED, now)

    def time_out(self, send_id: str, now: float) -> SendRecord | None:
        send = self._pending.get(send_id)
        if send is None:
            return None
        return self._finish(send, SendStatus.TIMED_OUT, now)

    # -- notifications -------------------------------------------------------

    def on_notification(self, change: EmailStateChange, now: float) -> Decision:
        """Decide and apply: `find`, then `apply`."""
        decision = self.find(change)
        self.apply(decision, now)
        return decision

    def apply(self, decision: Decision, now: float) -> None:
        """Resolve the send a `find` matched (a repeat changes nothing)."""
        if isinstance(decision, Matched) and not decision.repeat:
            self._match(decision.send, decision.change, now)

    def find(self, change: EmailStateChange) -> Decision:
        """Which send this notification is the outcome of; changes nothing."""
        if not change.is_outcome:
            return Unmatched(change)
        if change.email_id is None:
            return self._find_by_reference_alone(change)
        reference_id = change.reference_id
        if reference_id is not None:
            send = self._by_reference.get(reference_id)
            if send is not None and send.email_id == change.email_id:
                return Matched(send, change)
        for send in self._siblings(change.email_id):
            if send.reference_id is not None and reference_id is not None:
                if send.reference_id != reference_id:
                    continue  # the outcome of another operation on this email
                return Matched(send, change)
            if change.notification_type == ERROR or change.state == SENT:
                return Matched(send, change)
        recent = self._recent.get(change.email_id)
        if recent is not None and (
            recent.reference_id is None
            or reference_id is None
            or recent.reference_id == reference_id
        ):
            return Matched(recent, change, repeat=True)
        return Unmatched(change)

    def _siblings(self, email_id: str) -> Iterable[SendRecord]:
        held = self._by_email.get(email_id)
        if held is None:
            return ()
        return held if isinstance(held, list) else (held,)

    def _find_by_reference_alone(self, change: EmailStateChange) -> Decision:
        reference_id = change.reference_id
        holders = self._session_refs.get(reference_id) if reference_id is not None else None
        if holders is not None and len(holders) == 1:
            return Matched(holders[0], change)
        return Unmatched(change)

    def _match(self, send: SendRecord, change: EmailStateChange, now: float) -> None:
        if change.reference_id is not None and send.reference_id is None:
            self._set_reference(send, change.reference_id)
        send.outcome_state = ERROR if change.notification_type == ERROR else change.state
        self._finish(send, SendStatus.RESOLVED, now)

    # -- deadlines -------------------------------------------------------------

    def due(self, now: float) -> list[SendRecord]:
        """Pending sends whose deadline passed and that are not being checked already."""
        due: list[SendRecord] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, send_id = heapq.heappop(self._deadlines)
            send = self._pending.get(send_id)
            if send is None or send.due_at != deadline:
                continue  # resolved, or rescheduled since this entry was pushed
            if send_id in self._checking or send.status is SendStatus.IN_FLIGHT:
                continue
            self._checking.add(send_id)
            due.append(send)
        return due

    def postpone(self, send_id: str, until: float) -> None:
        """A check could not be made (GWS unreachable): try again at `until`."""
        self._checking.discard(send_id)
        send = self._pending.get(send_id)
        if send is not None:
            self._schedule(send, until)

    def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None
