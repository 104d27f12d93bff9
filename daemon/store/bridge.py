"""`AsyncStore`: the `Store` for the event loop, one dedicated thread, calls in order.

The event loop never waits on disk, and calls never interleave: each method
queues its call on the store's thread at once (so the order in which they are
made is the order in which they run) and returns when it has run.
Checkpoints run on a thread of their own so that copying the WAL never holds
up a commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from daemon.sends import SendRecord
from daemon.store.database import Store
from daemon.store.rows import KeptInput, OutboxRow, SendRow, SendUpdate, StoredEvent

P = ParamSpec("P")
R = TypeVar("R")


class AsyncStore:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._checkpoints = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")

    def _submit(self, call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[R]:
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._thread, lambda: call(*args, **kwargs))

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
    ) -> asyncio.Future[int]:
        """Queue one `Store.commit_outcomes` now; the future gives the last seq."""
        return self._submit(
            self._store.commit_outcomes,
            inserts=inserts,
            sends=updates,
            events=events,
            malformed=malformed,
            cursors=cursors,
        )

    async def prune_sends(self, resolved_before: float) -> int:
        return await self._submit(self._store.prune_sends, resolved_before)

    async def set_cursors(self, cursors: dict[str, int]) -> None:
        await self._submit(self._store.set_cursors, cursors)

    async def sync_sinks(self, names: Sequence[str]) -> dict[str, int]:
        return await self._submit(self._store.sync_sinks, names)

    async def prune_outbox(self) -> int:
        return await self._submit(self._store.prune_outbox)

    async def dead_letter(
        self, sink: str, row: OutboxRow, *, reason: str, detail: str, attempts: int
    ) -> None:
        await self._submit(
            self._store.dead_letter, sink, row, reason=reason, detail=detail, attempts=attempts
        )

    async def check_writable(self) -> None:
        await self._submit(self._store.check_writable)

    async def checkpoint(self) -> bool:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._checkpoints, self._store.checkpoint)

    # -- reads ---------------------------------------------------------------------

    async def load_pending(self) -> list[SendRecord]:
        return await self._submit(self._store.load_pending)

    async def get_send(self, send_id: str) -> SendRecord | None:
        return await self._submit(self._store.get_send, send_id)

    async def list_sends(
        self, statuses: Sequence[str] | None = None, limit: int = 1000
    ) -> list[SendRecord]:
        return await self._submit(self._store.list_sends, statuses, limit)

    async def head_seq(self) -> int:
        return await self._submit(self._store.head_seq)

    async def read_outbox(self, sink: str, after: int, limit: int) -> tuple[list[OutboxRow], int]:
        return await self._submit(self._store.read_outbox, sink, after, limit)

    async def dead_letter_counts(self) -> dict[str, int]:
        return await self._submit(self._store.dead_letter_counts)

    async def close(self) -> None:
        self._checkpoints.shutdown(wait=True)
        await self._submit(self._store.close)
        self._thread.shutdown(wait=True)
