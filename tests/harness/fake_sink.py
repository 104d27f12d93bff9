"""A sink for tests of the dispatcher: it records what it takes and fails as told."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from daemon.config import SinkSettings
from daemon.errors import RetryableSinkError, SinkError
from daemon.events import Event
from daemon.sinks.base import Sink
from daemon.store import AsyncStore, OutboxRow

# Given the ids of a batch, return the error to raise (its `delivered` says how many
# of them the sink took first), or None to take them all.
Verdict = Callable[[list[str]], SinkError | None]


class FakeSink(Sink):
    kind = "fake"

    def __init__(self, name: str, verdict: Verdict | None = None) -> None:
        self.name = name
        self.verdict = verdict
        self.batches: list[list[str]] = []
        self.taken: list[str] = []
        self.closed = False
        self.opened = False
        self.open_error: SinkError | None = None  # raised by open() when set

    async def open(self) -> None:
        if self.open_error is not None:
            raise self.open_error
        self.opened = True

    async def deliver(self, batch: Sequence[OutboxRow]) -> None:
        assert self.opened or self.open_error is not None, "deliver before open"
        ids = [row.event_id for row in batch]
        self.batches.append(ids)
        error = self.verdict(ids) if self.verdict else None
        if error is not None:
            self.taken.extend(ids[: error.delivered])
            raise error
        self.taken.extend(ids)

    async def close(self) -> None:
        self.closed = True


def failing_first(error: SinkError) -> Verdict:
    """A verdict that fails the first call with `error`, and takes every later one."""
    calls = 0

    def verdict(ids: list[str]) -> SinkError | None:
        nonlocal calls
        calls += 1
        return error if calls == 1 else None

    return verdict


class PipelinedFakeSink(FakeSink):
    """A FakeSink that keeps the pipelined sinks' contract (`daemon.sinks.base`): each
    call is answered once `gate` is open, in the order of the calls; a call made while
    an earlier one was unanswered is refused whole if that one failed, and so is every
    call made after a failure until `resume()`."""

    def __init__(self, name: str, verdict: Verdict | None = None, *, depth: int) -> None:
        super().__init__(name, verdict)
        self.pipeline_depth = depth
        self.gate = asyncio.Event()
        self.gate.set()
        self.in_flight = 0
        self.most_in_flight = 0
        self.refused = 0
        self.halted = False
        self._last: asyncio.Future[bool] | None = None  # the previous call: did it fail?

    def resume(self) -> None:
        self.halted = False

    async def deliver(self, batch: Sequence[OutboxRow]) -> None:
        if self.halted:
            self.refused += 1
            raise RetryableSinkError("not resumed after a failure")
        before = self._last if self._last is not None and not self._last.done() else None
        failed = self._last = asyncio.get_running_loop().create_future()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.gate.wait()
            if before is not None and await asyncio.shield(before):
                self.refused += 1
                failed.set_result(True)
                raise RetryableSinkError("an earlier batch failed")
            try:
                await super().deliver(batch)
            except SinkError:
                failed.set_result(True)
                raise
            failed.set_result(False)
        finally:
            self.in_flight -= 1
            if not failed.done():
                failed.set_result(True)
            if failed.result():
                self.halted = True


def sink_settings(name: str, **overrides: object) -> SinkSettings:
    values: dict[str, object] = {"name": name, "type": "log", "backoff_max_seconds": 0.05}
    return SinkSettings(**(values | overrides))  # type: ignore[arg-type]


def event_ids(*numbers: int) -> list[str]:
    return [f"event-{n}" for n in numbers]


async def write(store: AsyncStore, *numbers: int) -> int:
    events = [
        Event(f"event-{n}", "gws.email.state_changed", f"email-{n}", 1000.0 + n, b'{"n":%d}' % n)
        for n in numbers
    ]
    return await store.submit_outcomes(events=events)
