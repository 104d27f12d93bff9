"""Real store faults for tests: another process's lock, a read-only file, a full disk, a bad page.

    async with ExternalLock(path):        # a second process holds BEGIN EXCLUSIVE
        ...
    with read_only(path):                 # mode 0444 (and, for root, a read-only bind mount)
        ...
    with small_disk(tmp_path / "disk") as directory:   # a tmpfs of its own; fill_disk() fills it
        ...
    corrupt_page(path, page)              # garbage over one page of the file

Nothing is mocked: SQLite meets each fault as it would on a production host. The
root user ignores file modes and only root may mount, so `read_only` and
`small_disk` use a mount where that is what makes the fault real, and skip the
test where the machine does not allow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import TracebackType

import pytest

from daemon.errors import StoreError

# A second process that takes SQLite's write lock and holds it until its stdin closes.
_LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
db.close()
"""
LOCK_TIMEOUT = 20.0


class ExternalLock:
    """`BEGIN EXCLUSIVE` held by another process (as the CLI or a backup tool would)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> ExternalLock:
        await self.acquire()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.release()

    async def acquire(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _LOCKER,
            str(self.path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self._process.stdout is not None
        line = await asyncio.wait_for(self._process.stdout.readline(), LOCK_TIMEOUT)
        assert line == b"locked\n", f"the locking process said {line!r}"

    async def release(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None
        process.stdin.close()
        await asyncio.wait_for(process.wait(), LOCK_TIMEOUT)


@contextlib.contextmanager
def held_lock(path: Path) -> Iterator[None]:
    """`ExternalLock` for synchronous tests."""
    process = subprocess.Popen(
        [sys.executable, "-c", _LOCKER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    assert process.stdin is not None
    try:
        assert process.stdout.readline() == b"locked\n"
        yield
    finally:
        process.stdin.close()
        process.wait(LOCK_TIMEOUT)


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def _can_mount() -> bool:
    return os.geteuid() == 0 and _mount_works()


def _mount_works() -> bool:
    with tempfile.TemporaryDirectory() as probe:
        try:
            _mount("-t", "tmpfs", "-o", "size=64k", "tmpfs", probe)
        except (OSError, subprocess.CalledProcessError):
            return False
        subprocess.run(["umount", probe], check=True)
    return True


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` becomes mode 0444 in its (still writable) directory.

    root writes through file modes, so for root the file is also bind-mounted
    read-only onto itself: the same refusal a service user gets from 0444.
    """
    os.chmod(path, 0o444)
    mounted = False
    if os.geteuid() == 0:
        if not _mount_works():
            pytest.skip("running as root without the right to mount: 0444 would not be read-only")
        _mount("--bind", str(path), str(path))
        mounted = True
        _mount("-o", "remount,ro,bind", str(path))
    try:
        yield
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=True)
        os.chmod(path, 0o600)


@contextlib.contextmanager
def small_disk(directory: Path, size_kib: int = 2048) -> Iterator[Path]:
    """A tmpfs of `size_kib` on `directory` (the test is skipped where mounting is not allowed)."""
    if not _can_mount():
        pytest.skip("a full disk needs a small tmpfs: run as root with CAP_SYS_ADMIN")
    directory.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size_kib}k,mode=0700", "tmpfs", str(directory))
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)


def fill_disk(directory: Path) -> Path:
    """Write a filler file until the filesystem of `directory` is full; returns it."""
    filler = directory / "filler"
    chunk = b"\0" * 4096
    with filler.open("ab", buffering=0) as handle:
        while True:
            try:
                handle.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return filler


def first_failure(write: Callable[[int], object], *, attempts: int = 500) -> StoreError:
    """Call `write(0)`, `write(1)`, ... until one raises StoreError; return that error."""
    for number in range(attempts):
        try:
            write(number)
        except StoreError as exc:
            return exc
    raise AssertionError(f"{attempts} writes and none failed")


async def first_async_failure(
    write: Callable[[int], Awaitable[object]], *, attempts: int = 500
) -> tuple[int, StoreError]:
    """`first_failure` for coroutines: how many writes succeeded, and the error."""
    for number in range(attempts):
        try:
            await write(number)
        except StoreError as exc:
            return number, exc
    raise AssertionError(f"{attempts} writes and none failed")


def page_size(path: Path) -> int:
    db = sqlite3.connect(str(path))
    try:
        return int(db.execute("PRAGMA page_size").fetchone()[0])
    finally:
        db.close()


def root_page(path: Path, table: str) -> int:
    """The first page of `table`'s b-tree (1-based)."""
    db = sqlite3.connect(str(path))
    try:
        row = db.execute("SELECT rootpage FROM sqlite_schema WHERE name=?", (table,)).fetchone()
    finally:
        db.close()
    assert row is not None, f"no table {table}"
    return int(row[0])


def corrupt_page(path: Path, page: int) -> None:
    """Garbage over page `page` of a checkpointed (closed) database file."""
    size = page_size(path)
    with path.open("r+b") as handle:
        handle.seek((page - 1) * size)
        handle.write(bytes([0xA5]) * size)
