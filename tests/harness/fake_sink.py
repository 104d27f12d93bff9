"""A sink for tests of the dispatcher: it records what it takes and fails as told."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from daemon.config import SinkSettings
from daemon.errors import SinkError
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

    async def deliver(self, batch: Sequence[OutboxRow]) -> None:
        ids = [row.event_id for row in batch]
        self.batches.append(ids)
        error = self.verdict(ids) if self.verdict else None
        if error is not None:
            self.taken.extend(ids[: error.delivered])
            raise error
        self.taken.extend(ids)

    async def close(self) -> None:
        self.closed = True


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
