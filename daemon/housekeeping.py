"""Store upkeep while the daemon runs: cursors saved, outbox pruned, WAL checkpointed.

Owns the periodic work that keeps the store small and its figures current:
every round it saves the sink cursors that moved, deletes outbox rows every
sink has taken, refreshes the dead letter counts (the CLI changes them from
another process), prunes dead letters past `store.max_dead_letters` (oldest
first) and warns when the outbox nears its cap; every hour it deletes sends
resolved, and dead letters written, longer ago than `store.retention_hours`.
Beside the rounds, as often, it checkpoints the WAL (on a thread of its own).
It never delivers anything and never blocks a commit.

A failing store never ends it: a round that fails is reported to the store's
health (`store_retry`; readiness names `store`) and tried again after a
backoff; the first round that succeeds reports the recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import time
from collections.abc import Awaitable, Callable

import structlog

from daemon.dispatcher import Dispatcher
from daemon.metrics import Metrics
from daemon.store import MALFORMED_SINK, AsyncStore

log = structlog.get_logger(logger_name="daemon.housekeeping")

DUTY = "housekeeping"
CHECKPOINT_DUTY = "checkpoints"
ROUND_SECONDS = 0.25
# Dead letters are counted every this many rounds (a GROUP BY over the table).
COUNT_EVERY_ROUNDS = 4
PRUNE_EVERY_SECONDS = 3600.0
NEAR_FULL_RATIO = 0.8
NEAR_FULL_WARN_EVERY_SECONDS = 60.0


class Housekeeping:
    def __init__(
        self,
        *,
        store: AsyncStore,
        dispatcher: Dispatcher,
        metrics: Metrics,
        max_outbox_events: int,
        retention_hours: float,
        max_dead_letters: int = 100_000,
    ) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._max_outbox = max_outbox_events
        self.retention_hours = retention_hours
        self.max_dead_letters = max_dead_letters
        self._warned_full_at = -NEAR_FULL_WARN_EVERY_SECONDS
        self._next_prune = 0.0

    async def run(self) -> None:
        """Until cancelled: the outbox every round, old sends and dead letters every
        hour; the WAL's checkpoints beside them."""
        # The checkpoints are not a step of the round: a round waits for its turn
        # on the store's thread, behind the commits (for seconds in a burst), and
        # the WAL must be copied meanwhile, or the commit that starts it over
        # copies it all (measured: a 1.5 s stall after a 200,000-event burst).
        # Checkpoints have a thread and a connection of their own.
        checkpoints = asyncio.create_task(
            self._every_round(CHECKPOINT_DUTY, lambda _: self._store.checkpoint()),
            name="checkpoints",
        )
        try:
            await self._every_round(
                DUTY, lambda n: self._round(count_dead_letters=n % COUNT_EVERY_ROUNDS == 0)
            )
        finally:
            checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checkpoints

    async def _every_round(self, duty: str, step: Callable[[int], Awaitable[object]]) -> None:
        """`step(round number)` every ROUND_SECONDS, each retried until it succeeds."""
        for round_ in itertools.count():
            await self._store.retrying(duty, functools.partial(step, round_), until=lambda: False)
            await asyncio.sleep(ROUND_SECONDS)

    async def _round(self, *, count_dead_letters: bool) -> None:
        await self.outbox_round(count_dead_letters=count_dead_letters)
        if time.monotonic() >= self._next_prune:
            await self.prune_sends()
            await self.prune_dead_letters()
            self._next_prune = time.monotonic() + PRUNE_EVERY_SECONDS

    async def outbox_round(self, *, count_dead_letters: bool = True) -> None:
        # Small, frequent prunes: one large DELETE would hold up the
        # notification transactions queued behind it.
        await self._dispatcher.save_cursors()
        await self._store.prune_outbox()
        rows = self._store.outbox_rows
        self._metrics.outbox_events.set(rows)
        if count_dead_letters:
            await self._count_dead_letters()
        now = time.monotonic()
        if (
            rows >= NEAR_FULL_RATIO * self._max_outbox
            and now - self._warned_full_at > NEAR_FULL_WARN_EVERY_SECONDS
        ):
            self._warned_full_at = now
            log.warning(
                "outbox_near_full",
                events=rows,
                capacity=self._max_outbox,
                backlog=self._dispatcher.backlog(),
            )

    async def _count_dead_letters(self) -> None:
        counts = await self._store.dead_letter_counts()
        if sum(counts.values()) > self.max_dead_letters:
            await self.prune_dead_letters()
            counts = await self._store.dead_letter_counts()
        self._dispatcher.count_dead_letters(counts)
        for name in {*counts, *self._dispatcher.sink_names, MALFORMED_SINK}:
            self._metrics.dead_letters.labels(name).set(counts.get(name, 0))

    async def prune_sends(self) -> int:
        """Delete sends resolved more than `retention_hours` ago."""
        cutoff = time.time() - self.retention_hours * 3600
        removed = await self._store.prune_sends(cutoff)
        if removed:
            log.info("sends_pruned", removed=removed)
        return removed

    async def prune_dead_letters(self) -> int:
        """Delete dead letters older than `retention_hours`, then the oldest past
        `max_dead_letters`."""
        removed = await self._store.prune_dead_letters(
            failed_before=time.time() - self.retention_hours * 3600, keep=self.max_dead_letters
        )
        if removed:
            log.info("dead_letters_pruned", removed=removed, kept_at_most=self.max_dead_letters)
        return removed
