"""JSON-lines file sink: one CloudEvent per line, flushed after every batch.

A kill -9 in the middle of a write can leave half a line at the end of the
file. Those events were not acknowledged (the cursor did not move), so they
come again after the restart; the half line is cut off when the file is
opened, so that every line of the file stays a whole event.

Events name people and what was written to them: a file the sink creates is
0600 and a directory it creates 0700, whatever the umask. A file or directory
that was there keeps its mode (an operator may have chosen it); a file that
others can read is logged once at open. `unwritable()` tells, creating
nothing, whether the sink could write a path (`gws-notifyd check` asks).
"""

from __future__ import annotations

import asyncio
import os
import stat
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


FILE_MODE = 0o600
DIRECTORY_MODE = 0o700


def _make_directories(directory: Path) -> None:
    """`directory` and its missing parents, each 0700 (mkdir's mode is cut by the umask)."""
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for made in reversed(missing):
        made.mkdir(mode=DIRECTORY_MODE, exist_ok=True)
        made.chmod(DIRECTORY_MODE)


def _open_private(path: Path) -> tuple[int, int | None]:
    """An append descriptor on `path`, created 0600; and the mode it had, if it was there."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        fd = os.open(path, flags)
        return fd, stat.S_IMODE(os.fstat(fd).st_mode)
    os.fchmod(fd, FILE_MODE)
    return fd, None


def unwritable(path: Path) -> str | None:
    """Why the sink could not write `path` (None: it could); creates nothing."""
    if path.is_dir():
        return f"{path} is a directory"
    if path.exists():
        return None if os.access(path, os.W_OK) else f"{path} is not writable"
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot create {path}: {existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot create {path}: {existing} is not writable"
    return None


class JsonLinesSink(Sink):
    kind = "jsonl"

    def __init__(self, *, name: str, path: Path, fsync: bool = False) -> None:
        self.name = name
        self.path = path
        self._fsync = fsync
        try:
            _make_directories(path.parent)
            removed = _cut_partial_line(path)
            fd, mode = _open_private(path)
            self._file = os.fdopen(fd, "ab")
        except OSError as exc:
            raise RetryableSinkError(f"sink {name}: cannot open {path}: {exc.strerror}") from None
        if removed:
            log.warning("jsonl_partial_line_removed", sink=name, path=str(path), bytes=removed)
        if mode is not None and mode & 0o077:
            log.warning("jsonl_file_not_private", sink=name, path=str(path), mode=f"{mode:04o}")

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
