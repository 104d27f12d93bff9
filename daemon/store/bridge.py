"""`AsyncStore`: the `Store` for the event loop, one dedicated thread, calls in order.

The event loop never waits on disk, and calls never interleave: each method
queues its call on the store's thread at once (so the order in which they are
made is the order in which they run) and returns when it has run.
Checkpoints run on a thread of their own so that copying the WAL never holds
up a commit.

It also keeps the store's health (`daemon.store.health`): the duties that work
on the store in the background report their failures and recoveries here, and
`check_writable()` (readiness) fails while any of them is failing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import ParamSpec, TypeVar

from daemon.backoff import Backoff, BackoffPolicy
from daemon.config import Route
from daemon.errors import StoreError
from daemon.sends import SendRecord
from daemon.store.call_thread import CallThread
from daemon.store.database import Store
from daemon.store.health import StoreHealth
from daemon.store.rows import KeptInput, OutboxRow, SendRow, SendUpdate, StoredEvent
from daemon.store.transaction import PRUNE_SLICE

P = ParamSpec("P")
R = TypeVar("R")

# How long readiness waits for its heartbeat write (queued behind the commits
# already waiting on the store's thread) before it calls the store not ready.
READY_WRITE_SECONDS = 2.0
# `retrying`: a lock held elsewhere fails each try only after the busy timeout;
# a full disk fails at once.
RETRY_POLICY = BackoffPolicy(initial=0.1, maximum=5.0, floor=0.05)


class AsyncStore:
    def __init__(self, store: Store, *, failure_exit_seconds: float = 60.0) -> None:
        self._store = store
        self._thread = CallThread("store")
        self._checkpoints = CallThread("checkpoint")
        self._health = StoreHealth(exit_after_seconds=failure_exit_seconds)
        self._heartbeat: asyncio.Future[None] | None = None

    def _submit(self, call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[R]:
        return self._thread.submit(lambda: call(*args, **kwargs))

    @property
    def outbox_rows(self) -> int:
        """Events in the outbox, as last counted by this process (no I/O)."""
        return self._store.outbox_rows

    # -- writes ------------------------------------------------------------------

    def submit_outcomes(
        self,
        *,
        inserts: Sequence[SendRow] = (),
        updates: Sequence[SendUpdate] = (),
        events: Sequence[StoredEvent] = (),
        malformed: Sequence[KeptInput] = (),
        cursors: dict[str, int] | None = None,
        heartbeat: bool = False,
    ) -> asyncio.Future[int]:
        """Queue one `Store.commit_outcomes` now; the future gives the last seq."""
        return self._submit(
            self._store.commit_outcomes,
            inserts=inserts,
            sends=updates,
            events=events,
            malformed=malformed,
            cursors=cursors,
            heartbeat=heartbeat,
        )

    async def prune_sends(self, resolved_before: float) -> int:
        return await self._in_slices(lambda limit: self._store.prune_sends(resolved_before, limit))

    async def set_cursors(self, cursors: dict[str, int]) -> None:
        await self._submit(self._store.set_cursors, cursors)

    async def sync_sinks(self, names: Sequence[str]) -> dict[str, int]:
        return await self._submit(self._store.sync_sinks, names)

    async def prune_outbox(self) -> int:
        """Delete what every sink has taken."""
        return await self._in_slices(self._store.prune_outbox)

    async def _in_slices(self, prune: Callable[[int], int]) -> int:
        """Call `prune(limit)` (which deletes at most `limit` rows) until it
        deletes fewer: each call on the store's thread in its own transaction,
        so that the commits queued meanwhile go in between. Returns the total."""
        total = 0
        while True:
            removed = await self._submit(prune, PRUNE_SLICE)
            total += removed
            if removed < PRUNE_SLICE:
                return total

    async def dead_letter(
        self, sink: str, row: OutboxRow, *, reason: str, detail: str, attempts: int
    ) -> None:
        await self._submit(
            self._store.dead_letter, sink, row, reason=reason, detail=detail, attempts=attempts
        )

    async def prune_dead_letters(self, *, failed_before: float, keep: int) -> int:
        return await self._in_slices(
            lambda limit: self._store.prune_dead_letters(
                failed_before=failed_before, keep=keep, limit=limit
            )
        )

    async def check_writable(self) -> None:
        """Raise StoreError while a duty is failing, or unless a heartbeat write commits.

        At most one heartbeat is queued at a time, however often this is asked.
        """
        failing = self._health.failing()
        if failing:
            raise StoreError("; ".join(f"{duty}: {error}" for duty, error in failing.items()))
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = self._submit(self._store.check_writable)
            # Retrieved even when nobody waits for it any more.
            self._heartbeat.add_done_callback(lambda done: done.cancelled() or done.exception())
        try:
            await asyncio.wait_for(asyncio.shield(self._heartbeat), READY_WRITE_SECONDS)
        except TimeoutError:
            raise StoreError(
                f"a write to the store did not finish within {READY_WRITE_SECONDS:g} s"
            ) from None

    # -- health ------------------------------------------------------------------

    def report_failure(
        self, duty: str, error: BaseException, *, retry_in: float, **context: object
    ) -> float:
        """A duty failed on the store and retries in `retry_in` s (logged as
        `store_retry`); returns how long it has been failing."""
        return self._health.failed(duty, error, retry_in=retry_in, **context)

    def report_recovery(self, duty: str) -> None:
        self._health.recovered(duty)

    def failing_duties(self) -> dict[str, str]:
        return self._health.failing()

    async def retrying(
        self, duty: str, call: Callable[[], Awaitable[R]], *, until: Callable[[], bool]
    ) -> R | None:
        """`await call()` until it succeeds, reporting each StoreError (backoff
        between tries); None if `until()` turns true first."""
        backoff = Backoff(RETRY_POLICY)
        while not until():
            try:
                result = await call()
            except StoreError as exc:
                delay = backoff.next_delay()
                self.report_failure(duty, exc, retry_in=delay)
                await asyncio.sleep(delay)
                continue
            if backoff.attempt:
                self.report_recovery(duty)
            return result
        return None

    async def wait_failed_too_long(self) -> str:
        """Return (why) once a duty has failed for `failure_exit_seconds`."""
        return await self._health.wait_too_long()

    async def checkpoint(self) -> bool:
        return await self._checkpoints.submit(self._store.checkpoint)

    # -- reads ---------------------------------------------------------------------

    async def load_pending(self, account: str | None = None) -> list[SendRecord]:
        return await self._submit(self._store.load_pending, account)

    async def get_send(self, send_id: str) -> SendRecord | None:
        return await self._submit(self._store.get_send, send_id)

    async def list_sends(
        self, statuses: Sequence[str] | None = None, limit: int = 1000, account: str | None = None
    ) -> list[SendRecord]:
        return await self._submit(self._store.list_sends, statuses, limit, account)

    async def pending_by_account(self) -> dict[str, int]:
        return await self._submit(self._store.pending_by_account)

    async def head_seq(self) -> int:
        return await self._submit(self._store.head_seq)

    async def read_outbox(
        self, sink: str, after: int, limit: int, route: Route | None = None
    ) -> tuple[list[OutboxRow], int]:
        return await self._submit(self._store.read_outbox, sink, after, limit, route)

    async def count_outbox(
        self, sink: str, after: int, route: Route | None = None, upto: int | None = None
    ) -> int:
        return await self._submit(self._store.count_outbox, sink, after, route, upto)

    async def dead_letter_counts(self) -> dict[str, int]:
        return await self._submit(self._store.dead_letter_counts)

    async def close(self) -> None:
        self._checkpoints.shutdown()
        await self._submit(self._store.close)
        self._thread.shutdown()
