"""Group commit: what is written while a transaction runs goes into the next one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from daemon.errors import StoreError
from daemon.store.bridge import AsyncStore
from daemon.store.rows import KeptInput, SendRow, SendUpdate, StoredEvent

log = structlog.get_logger(logger_name="daemon.store")


@dataclass(slots=True)
class _Group:
    done: asyncio.Future[int]
    inserts: list[SendRow] = field(default_factory=list)
    updates: list[SendUpdate] = field(default_factory=list)
    events: list[StoredEvent] = field(default_factory=list)
    malformed: list[KeptInput] = field(default_factory=list)


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
        self.failure: BaseException | None = None

    def write(
        self,
        *,
        inserts: Sequence[SendRow] = (),
        updates: Sequence[SendUpdate] = (),
        events: Sequence[StoredEvent] = (),
        malformed: Sequence[KeptInput] = (),
    ) -> asyncio.Future[int]:
        """Queue rows; the future is done when they are committed (result: last seq)."""
        if self.failure is not None:
            raise StoreError(f"an earlier write failed: {self.failure}")
        group = self._next
        if group is None:
            group = self._next = _Group(asyncio.get_running_loop().create_future())
        group.inserts.extend(inserts)
        group.updates.extend(updates)
        group.events.extend(events)
        group.malformed.extend(malformed)
        if self._running is None:
            self._launch()
        return group.done

    @property
    def queued_events(self) -> int:
        """Events waiting for the transaction after the running one."""
        return len(self._next.events) if self._next is not None else 0

    def _launch(self) -> None:
        group, self._next = self._next, None
        assert group is not None
        self._running = group
        commit = self._store.submit_outcomes(
            inserts=group.inserts,
            updates=group.updates,
            events=group.events,
            malformed=group.malformed,
            cursors=self._cursors(),
        )
        commit.add_done_callback(lambda finished: self._finished(group, finished))

    def _finished(self, group: _Group, commit: asyncio.Future[int]) -> None:
        self._running = None
        error = commit.exception() if not commit.cancelled() else StoreError("cancelled")
        if error is not None:
            self.failure = error
            log.error("store_write_failed", error=str(error))
            group.done.set_exception(error)
            group.done.exception()  # retrieved here: the failure is reported above
        else:
            head = commit.result()
            if group.events:
                # One transaction holds the write lock: its rows have
                # consecutive seqs ending at `head`.
                self._on_committed(head, group.events)
            group.done.set_result(head)
        if self._next is not None:
            self._launch()

    async def flush(self) -> None:
        """Wait until everything written so far is committed."""
        while (group := self._next or self._running) is not None:
            with contextlib.suppress(StoreError):
                await asyncio.shield(group.done)
            if self.failure is not None:
                raise StoreError(f"a write failed: {self.failure}")
