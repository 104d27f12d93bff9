"""Group commit: what is written while a transaction runs goes into the next one.

A failed commit never poisons what follows. It fails the new sends of its
group only (they were not recorded, so the caller refuses them and nothing is
forwarded); everything else in it (send updates, events, kept input, sink
cursors: what cannot be asked for again) is carried into the next group. That
group is tried after a backoff whether or not anything new was written, with
the heartbeat row, so that even an empty retry is a real write and a recovery
is noticed. Failures and recoveries are reported to the store's health, which
ends the daemon if they go on for `store.failure_exit_seconds`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import structlog

from daemon.backoff import Backoff
from daemon.errors import StoreError
from daemon.store.bridge import RETRY_POLICY as STORE_RETRY_POLICY
from daemon.store.bridge import AsyncStore
from daemon.store.rows import KeptInput, SendRow, SendUpdate, StoredEvent

log = structlog.get_logger(logger_name="daemon.store")

DUTY = "writer"
# A lock held by another process fails a commit only after the busy timeout;
# a read-only file or a full disk fails it at once: the backoff spares the CPU.
# Capped lower than other duties' retries: Sends wait for this one.
RETRY_POLICY = replace(STORE_RETRY_POLICY, maximum=2.0)


@dataclass(slots=True)
class _Group:
    done: asyncio.Future[int]  # its rows are committed (a failed attempt carries them on)
    admitted: asyncio.Future[int] | None = None  # its new sends: fails with the attempt
    followers: list[asyncio.Future[int]] = field(default_factory=list)  # groups merged in
    inserts: list[SendRow] = field(default_factory=list)
    updates: list[SendUpdate] = field(default_factory=list)
    events: list[StoredEvent] = field(default_factory=list)
    malformed: list[KeptInput] = field(default_factory=list)
    cursors: dict[str, int] = field(default_factory=dict)
    heartbeat: bool = False

    def add_cursors(self, cursors: dict[str, int] | None) -> None:
        for sink, seq in (cursors or {}).items():
            self.cursors[sink] = max(seq, self.cursors.get(sink, seq))

    def absorb(self, later: _Group) -> None:
        """Take `later`'s rows after this group's own (the order they were written in)."""
        self.inserts.extend(later.inserts)
        self.updates.extend(later.updates)
        self.events.extend(later.events)
        self.malformed.extend(later.malformed)
        self.add_cursors(later.cursors)
        self.followers.append(later.done)
        self.followers.extend(later.followers)
        self.admitted = later.admitted


class OutcomeWriter:
    """Sends, send updates, events and kept input, committed in groups.

    When the store is idle a write starts its transaction at once (no added
    latency); under load, the batches, sends and updates that arrive during
    one commit share the next, so the cost of a transaction (locks, WAL
    append, the hand-over to the store's thread) is paid per group, not per
    batch. Writes are committed in the order they were made.

    `on_committed(head, events)` is told of each group's events once they are
    on disk (head = the outbox seq of the last one); `cursors()` gives the sink
    cursors that ride along with every transaction (no extra commit), so after
    a crash little is delivered twice.

    Memory: one group waits while one commits; the tracker stops reading
    notifications past `tracker.MAX_QUEUED_EVENTS` waiting events, so a failing
    store holds at most that many events (and the sends of the Sends waiting
    for their answer) until it recovers or the daemon exits.
    """

    def __init__(
        self,
        store: AsyncStore,
        *,
        on_committed: Callable[[int, Sequence[StoredEvent]], None],
        cursors: Callable[[], dict[str, int] | None] = lambda: None,
    ) -> None:
        self._store = store
        self._on_committed = on_committed
        self._cursors = cursors
        self._next: _Group | None = None
        self._running: _Group | None = None
        self._attempt: asyncio.Future[bool] | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._backoff = Backoff(RETRY_POLICY)
        self._last_error: BaseException | None = None
        self._closed = False

    def write(
        self,
        *,
        inserts: Sequence[SendRow] = (),
        updates: Sequence[SendUpdate] = (),
        events: Sequence[StoredEvent] = (),
        malformed: Sequence[KeptInput] = (),
    ) -> asyncio.Future[int]:
        """Queue rows; the future is done when they are committed (result: last seq).

        With `inserts`, the future fails (StoreError) if the attempt that
        carries them fails: those sends are not recorded. Other rows are
        kept until they are committed.
        """
        loop = asyncio.get_running_loop()
        group = self._next
        if group is None:
            group = self._next = _Group(loop.create_future())
        group.inserts.extend(inserts)
        group.updates.extend(updates)
        group.events.extend(events)
        group.malformed.extend(malformed)
        if inserts and group.admitted is None:
            group.admitted = loop.create_future()
            if self._closed:
                group.admitted.set_exception(StoreError("the store is closed"))
        if self._running is None and self._retry is None and not self._closed:
            self._launch()
        return group.admitted if inserts and group.admitted is not None else group.done

    def close(self) -> None:
        """No more attempts (the store is about to close): what is queued stays unwritten."""
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    @property
    def queued_events(self) -> int:
        """Events waiting for the transaction after the running one."""
        return len(self._next.events) if self._next is not None else 0

    def _launch(self) -> None:
        group, self._next = self._next, None
        assert group is not None
        self._running = group
        loop = asyncio.get_running_loop()
        self._attempt = loop.create_future()
        group.add_cursors(self._cursors())
        try:
            commit = self._store.submit_outcomes(
                inserts=group.inserts,
                updates=group.updates,
                events=group.events,
                malformed=group.malformed,
                cursors=group.cursors or None,
                heartbeat=group.heartbeat,
            )
        except RuntimeError as exc:  # the store's thread is gone (shutting down)
            commit = loop.create_future()
            commit.set_exception(StoreError(f"the store is closed: {exc}"))
        commit.add_done_callback(lambda finished: self._finished(group, finished))

    def _finished(self, group: _Group, commit: asyncio.Future[int]) -> None:
        self._running = None
        error = commit.exception() if not commit.cancelled() else StoreError("cancelled")
        if error is None:
            self._committed(group, commit.result())
        else:
            if not isinstance(error, StoreError):
                error = StoreError(f"commit failed: {error!r}")
            self._failed(group, error)
        if self._attempt is not None and not self._attempt.done():
            self._attempt.set_result(error is None)
        if self._next is not None and self._retry is None and not self._closed:
            self._launch()

    def _committed(self, group: _Group, head: int) -> None:
        if self._last_error is not None:
            self._last_error = None
            self._backoff.reset()
            self._store.report_recovery(DUTY)
        if group.events:
            # One transaction holds the write lock: its rows have
            # consecutive seqs ending at `head`.
            try:
                self._on_committed(head, group.events)
            except Exception:  # the rows are on disk whatever a listener does
                log.exception("on_committed_failed")
        for future in (group.done, group.admitted, *group.followers):
            if future is not None and not future.done():
                future.set_result(head)

    def _failed(self, group: _Group, error: StoreError) -> None:
        self._last_error = error
        delay = self._backoff.next_delay()
        self._store.report_failure(
            DUTY,
            error,
            retry_in=delay,
            sends_refused=len(group.inserts),
            kept_events=len(group.events),
            kept_updates=len(group.updates),
        )
        if group.admitted is not None and not group.admitted.done():
            group.admitted.set_exception(error)
            group.admitted.exception()  # retrieved: the caller may have given up on it
        group.inserts.clear()
        group.admitted = None
        group.heartbeat = True
        if self._next is not None:
            group.absorb(self._next)
        self._next = group
        self._retry = asyncio.get_running_loop().call_later(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        if self._running is None and self._next is not None and not self._closed:
            self._launch()

    async def flush(self) -> None:
        """Wait until everything written so far is committed.

        Raises StoreError when an attempt fails meanwhile (the rows stay
        queued): a caller that must stop does not wait for the store for ever.
        """
        while self._running is not None or self._next is not None:
            attempt = self._attempt
            if self._running is None or attempt is None:
                raise StoreError(f"a write failed: {self._last_error}")
            if not await asyncio.shield(attempt):
                raise StoreError(f"a write failed: {self._last_error}")
