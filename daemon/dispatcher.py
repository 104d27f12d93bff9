"""Drains the outbox into every sink, at least once, each sink at its own pace.

Owns one worker per sink: read the next batch after the sink's cursor, hand it
over, move the cursor only for what the sink took. Retryable failures back off
(capped, jittered) and try again; a permanent failure, or a retryable one past
`give_up_after_seconds`, moves that one event to dead letters for that sink
only. A slow or dead sink holds back nothing but itself: the listener writes
to the store, never to a sink.

A failing store never stops a worker: it reports (`store_retry`), backs off
and reads again from its cursor. A worker that ends without being stopped is
reported by `wait_broken()`. A reload keeps unchanged sinks' workers; a changed
one finishes the batch in its hands (never handed out twice) and its successor
starts where it stood, even if that cursor could not be saved.

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
by `notify` and by what it takes. A sink without a route takes everything:
its backlog is the head minus its cursor, and `notify` does no work per event
for it.

Memory: per sink, `fresh` holds at most MAX_FRESH batches (20 x `batch_size`:
10,000 events by default; ~1.05 KB each with a 0.7 KB body, 10.6 MB at the
bound), emptied when the sink lags further.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from daemon.backoff import Backoff, BackoffPolicy
from daemon.config import Route, SinkSettings
from daemon.errors import SinkError, StoreError
from daemon.metrics import Metrics
from daemon.sinks.base import Sink
from daemon.store import AsyncStore
from daemon.store.bridge import RETRY_POLICY
from daemon.store.rows import OutboxRow, StoredEvent

log = structlog.get_logger(logger_name="daemon.dispatcher")

# An idle worker still looks at the store this often, to see dead letters
# replayed by `gws-notifyd dead-letters replay` from another process.
IDLE_POLL_SECONDS = 1.0
# How many batches a sink may have waiting in memory before it reads from the store.
MAX_FRESH = 20
# Shutdown: a batch in a sink's hands may finish this long, then it is cancelled
# (its events are delivered again after the restart: at least once).
STOP_SECONDS = 2.0
# Reload: the old worker of a changed sink finishes its batch, up to this long,
# before the new one starts where it stopped.
HANDOVER_SECONDS = 30.0


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
class _Worker:
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
    # Waiting for events with nothing in its hands (`notify` may pass its cursor on).
    idle: bool = False
    # With a route: the events it takes after its cursor, up to `fresh_upto`
    # (to be counted in the store again when `recount`).
    pending: int = 0
    recount: bool = False
    store_failures: Backoff = field(default_factory=lambda: Backoff(RETRY_POLICY))
    duplicates_counted: int = 0  # of sink.duplicates_dropped, already in the metric


class Dispatcher:
    def __init__(self, *, store: AsyncStore, metrics: Metrics, max_outbox_events: int) -> None:
        self._store = store
        self._metrics = metrics
        self._max_outbox = max_outbox_events
        self._workers: dict[str, _Worker] = {}
        self._head = 0
        self._saved_cursors: dict[str, int] = {}
        self._dead_letter_counts: dict[str, int] = {}
        self._reloading = asyncio.Lock()
        self._closing = False
        self._broken: str | None = None
        self._broken_event = asyncio.Event()

    # -- lifecycle --------------------------------------------------------------

    async def start(self, sinks: Sequence[tuple[Sink, SinkSettings]]) -> None:
        self._head = await self._store.head_seq()
        self._metrics.outbox_capacity.set(self._max_outbox)
        cursors = await self._store.sync_sinks([s.name for s, _ in sinks])
        self._start_workers(sinks, cursors)

    def _start_workers(
        self,
        sinks: Sequence[tuple[Sink, SinkSettings]],
        stored: dict[str, int],
        known: dict[str, int] | None = None,
    ) -> None:
        """Workers from the stored cursors, or from `known` ones where those are further on."""
        for sink, settings in sinks:
            name = sink.name
            cursor = max(stored[name], (known or {}).get(name, 0))
            # What the store holds: a cursor further on is saved with the next write.
            self._saved_cursors[name] = stored[name]
            self._metrics.track_sink(name)
            route = Route.of(settings.types, settings.accounts)
            worker = _Worker(
                sink,
                settings,
                SinkStatus(name, sink.kind, cursor),
                route=route,
                fresh_start=self._head,
                fresh_upto=self._head,
                recount=route is not None,
            )
            worker.task = asyncio.create_task(self._run(worker), name=f"sink-{name}")
            worker.task.add_done_callback(functools.partial(self._ended, worker))
            self._workers[name] = worker
        self._update_backlog()

    def _ended(self, worker: _Worker, task: asyncio.Task[None]) -> None:
        if not worker.stop.is_set() and self._broken is None:
            error = "cancelled" if task.cancelled() else repr(task.exception() or "returned")
            self._broken = f"sink worker {worker.sink.name} stopped on its own: {error}"
            self._broken_event.set()

    async def wait_broken(self) -> str:
        """Return (why) once a sink worker has ended without being asked to stop."""
        await self._broken_event.wait()
        return self._broken or ""

    async def replace_sinks(self, sinks: Sequence[tuple[Sink, SinkSettings]]) -> None:
        """SIGHUP: new sinks in; unchanged ones keep their worker (the sink built
        for them is closed unused); changed ones hand over after their batch."""
        async with self._reloading:
            running = {name: w.settings for name, w in self._workers.items()}
            unchanged = {
                sink.name for sink, settings in sinks if running.get(sink.name) == settings
            }
            unused = [sink for sink, _ in sinks if sink.name in unchanged]
            fresh = [(sink, s) for sink, s in sinks if sink.name not in unchanged]
            leaving = [w for name, w in self._workers.items() if name not in unchanged]
            for worker in leaving:
                del self._workers[worker.sink.name]
            for sink in unused:
                await sink.close()
            known = await self._stop(leaving, patience=HANDOVER_SECONDS)
            names = [sink.name for sink, _ in sinks]
            stored = await self._store.retrying(
                "dispatcher", lambda: self._store.sync_sinks(names), until=lambda: self._closing
            )
            if stored is None:  # stopping meanwhile
                for sink, _ in fresh:
                    await sink.close()
                return
            self._start_workers(fresh, stored, known)

    async def drain(self, timeout: float) -> bool:
        """Wait until every sink has taken what was written so far, or `timeout`."""
        target, deadline = self._head, time.monotonic() + timeout
        while not (done := all(w.status.cursor >= target for w in self._workers.values())):
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        return done

    async def stop(self) -> None:
        self._closing = True
        async with self._reloading:
            workers = list(self._workers.values())
            self._workers.clear()
            await self._stop(workers, patience=STOP_SECONDS)

    async def _stop(self, workers: list[_Worker], *, patience: float) -> dict[str, int]:
        """Stop `workers` (a batch in a sink's hands may finish within `patience`),
        close their sinks and save where they stopped; returns those cursors."""
        for worker in workers:
            worker.stop.set()
            worker.wake.set()
        await asyncio.gather(*(self._finish(w, patience) for w in workers))
        cursors = {w.sink.name: w.status.cursor for w in workers}
        try:
            await self._store.set_cursors(cursors)
        except StoreError as exc:  # kept in memory: a reload's successor starts from them
            log.warning("cursors_not_saved", error=str(exc), cursors=cursors)
        return cursors

    @staticmethod
    async def _finish(worker: _Worker, patience: float) -> None:
        # asyncio.wait never raises the worker's own error: that was reported when it ended.
        task = worker.task
        if task is not None and not (await asyncio.wait({task}, timeout=patience))[0]:
            log.warning("sink_stop_timeout", sink=worker.sink.name, seconds=patience)
            task.cancel()
            await asyncio.wait({task})
        await worker.sink.close()

    # -- events in ----------------------------------------------------------------

    def notify(self, head: int, events: Sequence[StoredEvent] = ()) -> None:
        """Events up to seq `head` are in the outbox; `events`, if given, are the
        last of them (seqs head - len(events) + 1 ... head), for the fast path."""
        first_seq = head - len(events) + 1
        if head > self._head:
            self._head = head
        rows = [
            OutboxRow(first_seq + i, e.id, e.type, e.email_id, e.time, e.body, e.account, e.subject)
            for i, e in enumerate(events)
        ]
        for worker in self._workers.values():
            self._offer(worker, rows, first_seq, head)
        self._update_backlog()

    def _offer(self, worker: _Worker, rows: list[OutboxRow], first_seq: int, head: int) -> None:
        """Hand `worker` the events it takes of `rows` (seqs first_seq ... head)."""
        if not rows or first_seq > worker.fresh_upto + 1:
            self._missed(worker, rows, head)
            return
        if first_seq <= worker.fresh_upto:  # told of some already (it started meanwhile)
            rows = rows[worker.fresh_upto - first_seq + 1 :]
        worker.fresh_upto = max(worker.fresh_upto, head)
        if worker.route is not None:
            rows = self._routed(worker, worker.route, rows)
            if not rows:  # nothing to wake it for
                if worker.idle and self._caught_up(worker):
                    self._advance(worker, worker.fresh_upto)
                return
        fresh = worker.fresh
        if len(fresh) < MAX_FRESH * worker.settings.batch_size:
            fresh.extend(rows)
        else:
            fresh.clear()
            worker.fresh_start = worker.fresh_upto  # it reads these from the store
            worker.behind = True
        worker.wake.set()

    def _missed(self, worker: _Worker, rows: list[OutboxRow], head: int) -> None:
        """Not told of every event up to `head` (a replay by the CLI, or no rows
        given): it reads them from the store, and counts them there when it can."""
        if worker.route is not None:
            self._routed(worker, worker.route, rows)  # counted meanwhile
        if head > worker.fresh_upto:
            worker.fresh.clear()
            worker.fresh_start = worker.fresh_upto = head
            worker.recount = worker.route is not None
        worker.behind = True
        worker.wake.set()

    @staticmethod
    def _routed(worker: _Worker, route: Route, rows: list[OutboxRow]) -> list[OutboxRow]:
        """The rows `route` takes that are still before the worker, counted in its backlog."""
        cursor = worker.status.cursor
        taken = [r for r in rows if r.seq > cursor and route.takes(r.type, r.account)]
        worker.pending += len(taken)
        return taken

    @staticmethod
    def _caught_up(worker: _Worker) -> bool:
        """Nothing it takes lies between its cursor and `fresh_upto`: not in the store
        (it read up to where `fresh` begins), not in `fresh` (events told but not yet
        taken: an idle worker woken for them may not have run yet)."""
        return not worker.behind and not worker.fresh and worker.status.cursor >= worker.fresh_start

    def _backlog(self, worker: _Worker) -> int:
        if worker.route is None:
            return max(0, self._head - worker.status.cursor)
        return worker.pending

    def _show_backlog(self, worker: _Worker) -> None:
        self._metrics.outbox_backlog.labels(worker.sink.name).set(self._backlog(worker))

    def _update_backlog(self) -> None:
        for worker in self._workers.values():
            self._show_backlog(worker)

    def backlog(self) -> dict[str, int]:
        return {name: self._backlog(w) for name, w in self._workers.items()}

    def statuses(self) -> list[SinkStatus]:
        return [w.status for w in self._workers.values()]

    # -- one sink ---------------------------------------------------------------------

    async def _run(self, worker: _Worker) -> None:
        while not worker.stop.is_set():
            worker.wake.clear()
            try:
                await self._step(worker)
            except StoreError as exc:
                await self._store_failed(worker, exc)

    async def _step(self, worker: _Worker) -> None:
        """One batch: from memory if it follows the cursor, else from the store."""
        if worker.recount:
            await self._recount(worker)
        rows = self._take_fresh(worker)
        if rows:
            await self._deliver(worker, rows)
            return
        if self._caught_up(worker):
            # Whatever else it was told of, it does not take.
            self._advance(worker, worker.fresh_upto)
            await self._idle(worker)
            return
        rows, horizon = await self._store.read_outbox(
            worker.sink.name, worker.status.cursor, worker.settings.batch_size, worker.route
        )
        self._store_ok(worker)
        if len(rows) < worker.settings.batch_size:
            worker.behind = False
        if not rows or await self._deliver(worker, rows):
            self._advance(worker, horizon)

    @staticmethod
    async def _idle(worker: _Worker) -> None:
        """Wait for new events, which arrive in memory. The timeout is a poll for
        what only the store knows (dead letters replayed by the CLI)."""
        worker.idle = True
        try:
            await asyncio.wait_for(worker.wake.wait(), IDLE_POLL_SECONDS)
        except TimeoutError:
            worker.behind = True
        finally:
            worker.idle = False

    async def _recount(self, worker: _Worker) -> None:
        """Count the events a routed sink takes after its cursor, in the store."""
        worker.recount = False
        upto, before = worker.fresh_upto, worker.pending
        try:
            count = await self._store.count_outbox(
                worker.sink.name, worker.status.cursor, worker.route, upto
            )
        except StoreError:
            worker.recount = True
            raise
        # Only `notify` changed `pending` meanwhile, for events after `upto`.
        worker.pending = count + worker.pending - before
        self._show_backlog(worker)

    async def _store_failed(self, worker: _Worker, error: StoreError) -> None:
        """Log, report, back off; then read again from the cursor (what was in hand is re-read)."""
        delay = worker.store_failures.next_delay()
        self._store.report_failure(f"sink {worker.sink.name}", error, retry_in=delay)
        worker.behind = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(worker.stop.wait(), delay)

    def _store_ok(self, worker: _Worker) -> None:
        if worker.store_failures.attempt:
            worker.store_failures.reset()
            self._store.report_recovery(f"sink {worker.sink.name}")

    @staticmethod
    def _take_fresh(worker: _Worker) -> list[OutboxRow]:
        """The next batch from memory, if nothing the sink takes lies before it."""
        fresh, cursor = worker.fresh, worker.status.cursor
        while fresh and fresh[0].seq <= cursor:
            fresh.popleft()
        if not fresh or cursor < worker.fresh_start:
            return []  # events from before (or a replay): the store has them
        count = min(len(fresh), worker.settings.batch_size)
        return [fresh.popleft() for _ in range(count)]

    def _advance(self, worker: _Worker, seq: int) -> None:
        """Move the cursor on to `seq` (never back): every event up to it that the
        sink takes, it has taken."""
        # Saved with the next notification transaction (`unsaved_cursors`) or
        # housekeeping round, not by a transaction per batch (dearer than the
        # batch). After a crash a sink may get its last events again (same ids).
        if seq > worker.status.cursor:
            worker.status.cursor = seq
        self._show_backlog(worker)

    @staticmethod
    def _settled(worker: _Worker, rows: list[OutboxRow]) -> None:
        """`rows` (in seq order) left a routed sink's backlog: taken or dead-lettered."""
        if worker.route is None:
            return
        upto = worker.fresh_upto  # those after it were never counted
        counted = (
            len(rows)
            if rows[-1].seq <= upto
            else bisect.bisect_right(rows, upto, key=lambda row: row.seq)
        )
        worker.pending = max(0, worker.pending - counted)

    def unsaved_cursors(self) -> dict[str, int] | None:
        """Cursors that moved since last handed out to be saved (then taken as saved: a
        failed write keeps them for its next attempt; the store never moves one back)."""
        cursors = {name: w.status.cursor for name, w in self._workers.items()}
        changed = {n: c for n, c in cursors.items() if self._saved_cursors.get(n) != c}
        if not changed:
            return None
        self._saved_cursors = cursors
        return changed

    async def save_cursors(self) -> None:
        """Write the cursors that moved since they were last handed out."""
        changed = self.unsaved_cursors()
        if not changed:
            return
        try:
            await self._store.set_cursors(changed)
        except StoreError:
            for name in changed:  # still to be saved
                self._saved_cursors.pop(name, None)
            raise

    async def _deliver(self, worker: _Worker, rows: list[OutboxRow]) -> bool:
        """Hand `rows` to the sink until it has taken (or dead-lettered) every one;
        False if it was stopped first."""
        backoff = Backoff(BackoffPolicy(initial=0.5, maximum=worker.settings.backoff_max_seconds))
        duration = self._metrics.sink_delivery_duration.labels(worker.sink.name)
        while rows and not worker.stop.is_set():
            started = time.perf_counter()
            try:
                await worker.sink.deliver(rows)
            except SinkError as exc:
                duration.observe(time.perf_counter() - started)
                rows = await self._after_failure(worker, rows, exc, backoff)
                continue
            duration.observe(time.perf_counter() - started)
            self._recovered(worker.status)
            self._taken(worker, rows)
            rows = []
        return not rows

    async def _after_failure(
        self, worker: _Worker, rows: list[OutboxRow], error: SinkError, backoff: Backoff
    ) -> list[OutboxRow]:
        """What is left to deliver after a failed attempt (and the wait before the next)."""
        status, settings = worker.status, worker.settings
        if error.delivered:
            taken, rows = rows[: error.delivered], rows[error.delivered :]
            self._taken(worker, taken)
            if not rows:
                return rows
        now = time.time()
        status.failing_since = status.failing_since or now
        status.last_error = str(error)
        gave_up = (
            settings.give_up_after_seconds > 0
            and now - status.failing_since >= settings.give_up_after_seconds
        )
        if not error.retryable or gave_up:
            await self._dead_letter(worker, rows[0], error, backoff.attempt + 1)
            backoff.reset()
            # The next event gets its own give-up window.
            status.failing_since = None
            return rows[1:]
        delay = backoff.next_delay()
        status.retries += 1
        self._metrics.sink_deliveries.labels(worker.sink.name, "retried").inc(len(rows))
        log.warning(
            "sink_retry",
            sink=worker.sink.name,
            error=str(error),
            attempt=backoff.attempt,
            delay_seconds=round(delay, 3),
            events=len(rows),
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(worker.stop.wait(), delay)
        return rows

    @staticmethod
    def _recovered(status: SinkStatus) -> None:
        if status.failing_since is not None:
            log.info(
                "sink_recovered",
                sink=status.name,
                after_seconds=round(time.time() - status.failing_since, 3),
            )
        status.failing_since = None
        status.last_error = None

    def _taken(self, worker: _Worker, rows: list[OutboxRow]) -> None:
        self._settled(worker, rows)
        self._advance(worker, rows[-1].seq)
        worker.status.delivered += len(rows)
        self._metrics.sink_deliveries.labels(worker.sink.name, "delivered").inc(len(rows))
        dropped = worker.sink.duplicates_dropped - worker.duplicates_counted
        if dropped:  # the bus dropped these as already delivered: delivered all the same
            self._metrics.sink_duplicates_dropped.labels(worker.sink.name).inc(dropped)
            worker.duplicates_counted += dropped

    async def _dead_letter(
        self, worker: _Worker, row: OutboxRow, error: SinkError, attempts: int
    ) -> None:
        name = worker.sink.name
        await self._store.dead_letter(
            name,
            row,
            reason="permanent" if not error.retryable else "gave_up",
            detail=str(error),
            attempts=attempts,
        )
        self._store_ok(worker)
        self._settled(worker, [row])
        self._advance(worker, row.seq)
        worker.status.dead_lettered += 1
        self._metrics.sink_deliveries.labels(name, "dead_lettered").inc()
        self._dead_letter_counts[name] = self._dead_letter_counts.get(name, 0) + 1
        self._metrics.dead_letters.labels(name).set(self._dead_letter_counts[name])
        log.error(
            "sink_dead_letter",
            sink=name,
            event_id=row.event_id,
            email_id=row.email_id,
            type=row.type,
            error=str(error),
            attempts=attempts,
        )

    # -- what the store says ------------------------------------------------------------

    @property
    def sink_names(self) -> list[str]:
        return list(self._workers)

    @property
    def dead_letter_counts(self) -> dict[str, int]:
        """Dead letters by sink, as last counted (see `count_dead_letters`)."""
        return self._dead_letter_counts

    def count_dead_letters(self, counts: dict[str, int]) -> None:
        """The store's count of dead letters by sink (they also change from the CLI)."""
        self._dead_letter_counts = counts

    def outbox_full(self) -> bool:
        return self._store.outbox_rows >= self._max_outbox
