"""JSON-lines file sink: one CloudEvent per line, flushed after every batch.

A kill -9 in the middle of a write can leave half a line at the end of the
file. Those events were not acknowledged (the cursor did not move), so they
come again after the restart; the half line is cut off when the file is
opened, so that every line of the file stays a whole event.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

import structlog

from daemon.errors import RetryableSinkError
from daemon.sinks.base import Sink
from daemon.store.rows import OutboxRow

log = structlog.get_logger(logger_name="daemon.sinks.jsonl")


def _cut_partial_line(path: Path) -> int:
    """Truncate a trailing line without newline; returns the bytes removed."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    if size == 0:
        return 0
    with path.open("rb+") as handle:
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return 0
        block = 64 * 1024
        position = size
        while position > 0:
            start = max(0, position - block)
            handle.seek(start)
            chunk = handle.read(position - start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                handle.truncate(keep)
                return size - keep
            position = start
        handle.truncate(0)
        return size


class JsonLinesSink(Sink):
    kind = "jsonl"

    def __init__(self, *, name: str, path: Path, fsync: bool = False) -> None:
        self.name = name
        self.path = path
        self._fsync = fsync
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            removed = _cut_partial_line(path)
            self._file = path.open("ab")
        except OSError as exc:
            raise RetryableSinkError(f"sink {name}: cannot open {path}: {exc.strerror}") from None
        if removed:
            log.warning("jsonl_partial_line_removed", sink=name, path=str(path), bytes=removed)

    async def deliver(self, batch: Sequence[OutboxRow]) -> None:
        try:
            self._file.write(b"\n".join(row.body for row in batch) + b"\n")
            self._file.flush()
            if self._fsync:
                await asyncio.to_thread(os.fsync, self._file.fileno())
        except OSError as exc:
            # A partial write is cut off again at the next open; the whole
            # batch is retried, so its events may appear twice (same ids).
            raise RetryableSinkError(
                f"sink {self.name}: cannot write {self.path}: {exc.strerror}"
            ) from None

    async def close(self) -> None:
        self._file.close()
