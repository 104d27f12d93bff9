"""The sink interface: a name, `open()`, `deliver(batch)`, `close()`.

`deliver` takes events in outbox order and either takes them all or raises a
SinkError whose `delivered` says how many at the head of the batch it took
(RetryableSinkError: try the rest again later; PermanentSinkError: the first
event not taken will never be, dead-letter it). Sinks do not retry, sleep or
dead-letter themselves: the dispatcher does, the same way for every sink.

`pipeline_depth` > 1 lets the dispatcher hand over the next batch before the
previous `deliver` returned (up to that many at once), which hides the round
trip to a server. Such a sink must apply its batches in the order of the calls
and, once one has failed, take nothing more (failing each later call, taking
none of it) until `resume()`: the dispatcher calls it before it tries again,
one batch at a time, from the failed one on, so that a retry keeps the order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from daemon.store.rows import OutboxRow


class Sink(ABC):
    name: str
    kind: str
    # Events the destination itself dropped as duplicates (a bus that deduplicates
    # by event id says so); they count as delivered.
    duplicates_dropped: int = 0
    # Batches the dispatcher may have in the sink's hands at once (see the module doc).
    pipeline_depth: int = 1

    @abstractmethod
    async def deliver(self, batch: Sequence[OutboxRow]) -> None:
        """Take every event of `batch`, or raise SinkError (see the module doc)."""

    async def open(self) -> None:  # noqa: B027 - most sinks connect to nothing
        """Connect ahead of the first batch, so that it does not wait for a connection
        and a wrong address shows at start. A SinkError here is only reported: the
        first `deliver` tries again."""

    def resume(self) -> None:  # noqa: B027 - only pipelined sinks stop after a failure
        """Take batches again after a failure (see the module doc)."""

    async def close(self) -> None:  # noqa: B027 - most sinks hold nothing
        """Release files and connections."""
