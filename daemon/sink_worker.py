"""One sink's worker state: its cursor, the events handed to it in memory, its backlog.

The dispatcher (`daemon.dispatcher`) runs a worker per sink; this module owns
what a worker knows and the rules for changing it, with no I/O: which events
of a commit it is handed, when it must read the store instead, and how far its
cursor may move.

Routing: a sink with `types` or `accounts` (its `Route`) takes only the events
they match. The others never enter its `fresh` queue, never wake it and are
not in its backlog, and its cursor passes them, so that it never holds the
outbox back. One rule keeps a crash from losing events: a cursor never moves
past an event the sink takes but has not taken yet (a batch in its hands,
events waiting in `fresh`, events in the store it has not read). So a cursor
moves only to what the sink took, to the horizon of a store read whose rows it
took, or, when it is caught up (nothing in its hands, `fresh` empty, the store
read up to where `fresh` begins), to the last seq it was told of. Such a
sink's backlog is the number of events it takes after its cursor: counted in
the store at start and after a gap in what it was told, and kept up to date
by `offer` and by what it takes. A sink without a route takes everything:
its backlog is the head minus its cursor, and `offer` does no work per event
for it.

Memory: per sink, `fresh` holds at most MAX_FRESH batches (20 x `batch_size`:
10,000 events by default; ~1.05 KB each with a 0.7 KB body, 10.6 MB at the
bound), emptied when the sink lags further.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from dataclasses import dataclass, field

from daemon.backoff import Backoff
from daemon.config import Route, SinkSettings
from daemon.sinks.base import Sink
from daemon.store.bridge import RETRY_POLICY
from daemon.store.rows import OutboxRow

# How many batches a sink may have waiting in memory before it reads from the store.
MAX_FRESH = 20


@dataclass(slots=True)
class SinkStatus:
    name: str
    kind: str
    cursor: int = 0
    delivered: int = 0
    retries: int = 0
    dead_lettered: int = 0
    failing_since: float | None = None
    last_error: str | None = None


@dataclass(slots=True)
class SinkWorker:
    sink: Sink
    settings: SinkSettings
    status: SinkStatus
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    route: Route | None = None  # None: it takes every event
    # Events just committed, handed over in memory so that a sink that keeps
    # up never reads them back from SQLite. Dropped when the sink falls behind.
    # It holds every event the sink takes with a seq in (fresh_start,
    # fresh_upto] that was not handed over yet; those at or before
    # `fresh_start` are read from the store.
    fresh: deque[OutboxRow] = field(default_factory=deque)
    fresh_start: int = 0
    fresh_upto: int = 0
    # True while the store may hold events for this sink that `fresh` lacks
    # (at start, after `fresh` overflowed, on the idle poll, after a store failure).
    behind: bool = True
    # Waiting for events with nothing in its hands (`offer` may pass its cursor on).
    idle: bool = False
    # With a route: the events it takes after its cursor, up to `fresh_upto`
    # (to be counted in the store again when `recount`).
    pending: int = 0
    recount: bool = False
    store_failures: Backoff = field(default_factory=lambda: Backoff(RETRY_POLICY))
    duplicates_counted: int = 0  # of sink.duplicates_dropped, already in the metric

    # -- events in ------------------------------------------------------------------

    def offer(self, rows: list[OutboxRow], first_seq: int, head: int) -> None:
        """Hand over the events it takes of `rows` (seqs first_seq ... head)."""
        if not rows or first_seq > self.fresh_upto + 1:
            self.missed(rows, head)
            return
        if first_seq <= self.fresh_upto:  # told of some already (it started meanwhile)
            rows = rows[self.fresh_upto - first_seq + 1 :]
        self.fresh_upto = max(self.fresh_upto, head)
        if self.route is not None:
            rows = self.routed(rows)
            if not rows:  # nothing to wake it for
                if self.idle and self.caught_up():
                    self.advance(self.fresh_upto)
                return
        fresh = self.fresh
        if len(fresh) < MAX_FRESH * self.settings.batch_size:
            fresh.extend(rows)
        else:
            fresh.clear()
            self.fresh_start = self.fresh_upto  # it reads these from the store
            self.behind = True
        self.wake.set()

    def missed(self, rows: list[OutboxRow], head: int) -> None:
        """Not told of every event up to `head` (a replay by the CLI, or no rows
        given): it reads them from the store, and counts them there when it can."""
        if self.route is not None:
            self.routed(rows)  # counted meanwhile
        if head > self.fresh_upto:
            self.fresh.clear()
            self.fresh_start = self.fresh_upto = head
            self.recount = self.route is not None
        self.behind = True
        self.wake.set()

    def routed(self, rows: list[OutboxRow]) -> list[OutboxRow]:
        """The rows its route takes that are still before it, counted in its backlog."""
        route = self.route
        if route is None:
            return rows
        cursor = self.status.cursor
        taken = [r for r in rows if r.seq > cursor and route.takes(r.type, r.account)]
        self.pending += len(taken)
        return taken

    # -- events out -----------------------------------------------------------------

    def take_fresh(self, after: int) -> list[OutboxRow]:
        """The next batch from memory after seq `after` (the cursor, or the last event
        handed over), if nothing the sink takes lies between them."""
        fresh = self.fresh
        while fresh and fresh[0].seq <= after:
            fresh.popleft()
        if not fresh or after < self.fresh_start:
            return []  # events from before (or a replay): the store has them
        count = min(len(fresh), self.settings.batch_size)
        return [fresh.popleft() for _ in range(count)]

    def caught_up(self, after: int | None = None) -> bool:
        """Nothing it takes lies between `after` (its cursor by default) and
        `fresh_upto`: not in the store (it read up to where `fresh` begins), not in
        `fresh` (events told but not yet taken: an idle worker woken for them may not
        have run yet)."""
        after = self.status.cursor if after is None else after
        return not self.behind and not self.fresh and after >= self.fresh_start

    def advance(self, seq: int) -> None:
        """Move the cursor on to `seq` (never back): every event up to it that the
        sink takes, it has taken."""
        # Saved with the next notification transaction or housekeeping round,
        # not by a transaction per batch (dearer than the batch). After a crash
        # a sink may get its last events again (same ids).
        if seq > self.status.cursor:
            self.status.cursor = seq

    def settled(self, rows: list[OutboxRow]) -> None:
        """`rows` (in seq order) left a routed sink's backlog: taken or dead-lettered."""
        if self.route is None:
            return
        upto = self.fresh_upto  # those after it were never counted
        counted = (
            len(rows)
            if rows[-1].seq <= upto
            else bisect.bisect_right(rows, upto, key=lambda row: row.seq)
        )
        self.pending = max(0, self.pending - counted)

    def backlog(self, head: int) -> int:
        """Events it takes after its cursor (`head`: the last seq in the outbox)."""
        if self.route is None:
            return max(0, head - self.status.cursor)
        return self.pending
