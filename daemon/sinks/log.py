"""Log sink: each event as one structured log line (for people, and for debugging)."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import structlog

from daemon.sinks.base import Sink
from daemon.store.rows import OutboxRow

log = structlog.get_logger(logger_name="daemon.sinks.log")


class LogSink(Sink):
    kind = "log"

    def __init__(self, *, name: str) -> None:
        self.name = name

    async def deliver(self, batch: Sequence[OutboxRow]) -> None:
        for row in batch:
            log.info(
                "cloudevent",
                sink=self.name,
                event_id=row.event_id,
                type=row.type,
                email_id=row.email_id,
                cloudevent=orjson.loads(row.body),
            )
