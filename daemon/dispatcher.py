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

Each worker's state, the events handed to it in memory and the rules for
moving its cursor past what it does not take are `daemon.sink_worker`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import deque
from collections.abc import Sequence
from typing import NamedTuple

import structlog

from daemon.backoff import Backoff, BackoffPolicy
from daemon.config import Route, SinkSettings
from daemon.errors import SinkError, StoreError
from daemon.metrics import Metrics
from daemon.sink_worker import SinkStatus, SinkWorker
from daemon.sinks.base import Sink
from daemon.store import AsyncStore
from daemon.store.rows import OutboxRow, StoredEvent

log = structlog.get_logger(logger_name="daemon.dispatcher")

# An idle worker still looks at the store this often, to see dead letters
# replayed by `gws-notifyd dead-letters replay` from another process.
IDLE_POLL_SECONDS = 1.0
# Shutdown: a batch in a sink's hands may finish this long, then it is cancelled
# (its events are delivered again after the restart: at least once).
STOP_SECONDS = 2.0
# Reload: the old worker of a changed sink finishes its batch, up to this long,
# before the new one starts where it stopped.
HANDOVER_SECONDS = 30.0


class _InFlight(NamedTuple):
    """A batch in a pipelined sink's hands (`horizon`: where its store read let the
    cursor move, None for a batch from memory)."""

    rows: list[OutboxRow]
    horizon: int | None
    task: asyncio.Task[None]
    started: float


class Dispatcher:
    def __init__(self, *, store: AsyncStore, metrics: Metrics, max_outbox_events: int) -> None:
        self._store = store
        self._metrics = metrics
        self._max_outbox = max_outbox_events
        self._workers: dict[str, SinkWorker] = {}
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
            worker = SinkWorker(
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

    def _ended(self, worker: SinkWorker, task: asyncio.Task[None]) -> None:
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

    async def _stop(self, workers: list[SinkWorker], *, patience: float) -> dict[str, int]:
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
    async def _finish(worker: SinkWorker, patience: float) -> None:
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
            worker.offer(rows, first_seq, head)
        self._update_backlog()

    def _show_backlog(self, worker: SinkWorker) -> None:
        self._metrics.outbox_backlog.labels(worker.sink.name).set(worker.backlog(self._head))

    def _update_backlog(self) -> None:
        for worker in self._workers.values():
            self._show_backlog(worker)

    def backlog(self) -> dict[str, int]:
        return {name: w.backlog(self._head) for name, w in self._workers.items()}

    def statuses(self) -> list[SinkStatus]:
        return [w.status for w in self._workers.values()]

    # -- one sink ---------------------------------------------------------------------

    async def _run(self, worker: SinkWorker) -> None:
        await self._open(worker)
        while not worker.stop.is_set():
            worker.wake.clear()
            try:
                await self._step(worker)
            except StoreError as exc:
                await self._store_failed(worker, exc)

    @staticmethod
    async def _open(worker: SinkWorker) -> None:
        try:
            await worker.sink.open()
        except SinkError as exc:  # the first delivery tries again, with the usual retries
            log.warning("sink_open_failed", sink=worker.sink.name, error=str(exc))

    async def _step(self, worker: SinkWorker) -> None:
        """One batch: from memory if it follows the cursor, else from the store."""
        if worker.recount:
            await self._recount(worker)
        batch = await self._next_batch(worker, worker.status.cursor)
        if batch is None:
            # Whatever else it was told of, it does not take.
            self._advance(worker, worker.fresh_upto)
            await self._idle(worker)
            return
        rows, horizon = batch
        if rows:
            await self._hand_over(worker, rows, horizon)
        elif horizon is not None:
            self._advance(worker, horizon)

    async def _hand_over(
        self, worker: SinkWorker, rows: list[OutboxRow], horizon: int | None
    ) -> None:
        """Deliver `rows` (then move the cursor on to `horizon`, for rows read from the store)."""
        if worker.sink.pipeline_depth > 1:
            await self._pipeline(worker, rows, horizon)
        else:
            await self._hand_over_alone(worker, rows, horizon)

    async def _hand_over_alone(
        self, worker: SinkWorker, rows: list[OutboxRow], horizon: int | None
    ) -> bool:
        """`rows` alone in the sink's hands until settled; False if stopped first."""
        if not await self._deliver(worker, rows):
            return False
        if horizon is not None:
            self._advance(worker, horizon)
        return True

    async def _pipeline(
        self, worker: SinkWorker, rows: list[OutboxRow], horizon: int | None
    ) -> None:
        """Keep up to `pipeline_depth` batches in the sink's hands while further ones
        are ready (in memory, or in the store), settling each in order."""
        depth = worker.sink.pipeline_depth
        flight: deque[_InFlight] = deque()
        try:
            while True:
                task = asyncio.create_task(worker.sink.deliver(rows))
                flight.append(_InFlight(rows, horizon, task, time.perf_counter()))
                after = rows[-1].seq if horizon is None else horizon
                try:
                    ready = None if worker.stop.is_set() else await self._next_batch(worker, after)
                except StoreError:
                    await self._settle_all(worker, flight)
                    raise
                if ready is not None and not ready[0]:
                    ready = None  # the store had nothing more: the next step reads again
                while flight and (ready is None or len(flight) >= depth):
                    if not await self._settle(worker, flight):
                        if ready is not None:  # taken from memory: only here now
                            await self._hand_over_alone(worker, *ready)
                        return
                if ready is None:
                    return
                rows, horizon = ready
        finally:
            for left in flight:  # cancelled (a stop that took too long): never settled
                left.task.cancel()

    async def _next_batch(
        self, worker: SinkWorker, after: int
    ) -> tuple[list[OutboxRow], int | None] | None:
        """The batch after seq `after`: from memory if it follows, else from the store
        (with the seq its read lets the cursor move to; its rows may be none); None
        when the worker is caught up."""
        rows = worker.take_fresh(after)
        if rows:
            return rows, None
        if worker.caught_up(after):
            return None
        rows, horizon = await self._store.read_outbox(
            worker.sink.name, after, worker.settings.batch_size, worker.route
        )
        self._store_ok(worker)
        if len(rows) < worker.settings.batch_size:
            worker.behind = False
        return rows, horizon

    async def _settle_all(self, worker: SinkWorker, flight: deque[_InFlight]) -> None:
        while flight and await self._settle(worker, flight):
            pass

    async def _settle(self, worker: SinkWorker, flight: deque[_InFlight]) -> bool:
        """Wait for the oldest batch in flight and account for it. After a failure,
        the later ones are waited for too (the sink took none of them), then every
        one is delivered again one at a time, with the usual retries; False then."""
        head = flight[0]
        duration = self._metrics.sink_delivery_duration.labels(worker.sink.name)
        try:
            await head.task
        except SinkError as exc:
            duration.observe(time.perf_counter() - head.started)
            # The ones behind it were refused (the sink took none of them) or taken:
            # either way they go again, after the failed one.
            await asyncio.gather(*(f.task for f in flight), return_exceptions=True)
            batches = list(flight)
            flight.clear()
            if await self._deliver(worker, head.rows, exc) and head.horizon is not None:
                self._advance(worker, head.horizon)
            for batch in batches[1:]:
                if worker.stop.is_set() or not await self._hand_over_alone(
                    worker, batch.rows, batch.horizon
                ):
                    break
            return False
        duration.observe(time.perf_counter() - head.started)
        flight.popleft()
        self._recovered(worker.status)
        self._taken(worker, head.rows)
        if head.horizon is not None:
            self._advance(worker, head.horizon)
        return True

    @staticmethod
    async def _idle(worker: SinkWorker) -> None:
        """Wait for new events, which arrive in memory. The timeout is a poll for
        what only the store knows (dead letters replayed by the CLI)."""
        worker.idle = True
        try:
            await asyncio.wait_for(worker.wake.wait(), IDLE_POLL_SECONDS)
        except TimeoutError:
            worker.behind = True
        finally:
            worker.idle = False

    async def _recount(self, worker: SinkWorker) -> None:
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

    async def _store_failed(self, worker: SinkWorker, error: StoreError) -> None:
        """Log, report, back off; then read again from the cursor (what was in hand is re-read)."""
        delay = worker.store_failures.next_delay()
        self._store.report_failure(f"sink {worker.sink.name}", error, retry_in=delay)
        worker.behind = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(worker.stop.wait(), delay)

    def _store_ok(self, worker: SinkWorker) -> None:
        if worker.store_failures.attempt:
            worker.store_failures.reset()
            self._store.report_recovery(f"sink {worker.sink.name}")

    def _advance(self, worker: SinkWorker, seq: int) -> None:
        """Move the cursor on to `seq` (see `SinkWorker.advance`), and show the backlog."""
        worker.advance(seq)
        self._show_backlog(worker)

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

    async def _deliver(
        self, worker: SinkWorker, rows: list[OutboxRow], failed: SinkError | None = None
    ) -> bool:
        """Hand `rows` to the sink until it has taken (or dead-lettered) every one;
        False if it was stopped first. `failed`: how the attempt just made ended."""
        backoff = Backoff(BackoffPolicy(initial=0.5, maximum=worker.settings.backoff_max_seconds))
        duration = self._metrics.sink_delivery_duration.labels(worker.sink.name)
        if failed is not None:
            rows = await self._after_failure(worker, rows, failed, backoff)
        while rows and not worker.stop.is_set():
            started = time.perf_counter()
            worker.sink.resume()  # nothing else is in its hands
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
        self, worker: SinkWorker, rows: list[OutboxRow], error: SinkError, backoff: Backoff
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

    def _taken(self, worker: SinkWorker, rows: list[OutboxRow]) -> None:
        worker.settled(rows)
        self._advance(worker, rows[-1].seq)
        worker.status.delivered += len(rows)
        self._metrics.sink_deliveries.labels(worker.sink.name, "delivered").inc(len(rows))
        dropped = worker.sink.duplicates_dropped - worker.duplicates_counted
        if dropped:  # the bus dropped these as already delivered: delivered all the same
            self._metrics.sink_duplicates_dropped.labels(worker.sink.name).inc(dropped)
            worker.duplicates_counted += dropped

    async def _dead_letter(
        self, worker: SinkWorker, row: OutboxRow, error: SinkError, attempts: int
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
        worker.settled([row])
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
