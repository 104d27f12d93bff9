"""The store's file on disk: created private, checked at open, and the room left for it.

Owns what happens to `state.db` outside SQL proper (and how it is connected to):
- the missing directories are created 0700 and the database file 0600 whatever
  the umask (SQLite gives `-wal` and `-shm` the mode of the database file);
- at open, `PRAGMA quick_check` looks at every page, for at most
  QUICK_CHECK_SECONDS (a larger file is checked only that far, and a warning
  says so); a corrupted file is refused with how to recover it;
- the free space on the store's filesystem, which the heartbeat checks beside
  its write (a WAL may still have room for a small write on a full disk).

Every failure is a `StoreError` of one line.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import time
from pathlib import Path
from typing import NamedTuple

import structlog

from daemon.errors import StoreError

log = structlog.get_logger(logger_name="daemon.store")

# quick_check reads every page (measured on a 328 MB store: 0.2 s from the page
# cache, 1.8 s cold from the VM's disk, ~190 MB/s): 5 s covers ~1 GB cold. A
# store that large is far past a healthy one; the check stops there and says so.
QUICK_CHECK_SECONDS = 5.0
# Below this much free space a store is not ready: a commit may need a new WAL
# frame (a page: 4 KiB; 16 KiB in older stores) or a checkpoint may need to
# grow the database file.
MIN_FREE_BYTES = 1024 * 1024
_PROGRESS_STEPS = 10_000  # SQLite VM steps between two looks at the clock

# The WAL-index header at the start of the `-shm` file, in native byte order
# (https://www.sqlite.org/walformat.html): its format version, the page size
# (1 meaning 65536), the last frame committed and the last one copied into the
# database (`nBackfill`, in the checkpoint information after the header's two copies).
_WAL_INDEX = struct.Struct("=I10xHI76xI")
_WAL_INDEX_VERSION = 3007000


class WalState(NamedTuple):
    """What the WAL-index says, in bytes: the frames committed since the WAL
    last started over, and how much of them is copied into the database."""

    written: int
    copied: int

    @property
    def backlog(self) -> int:
        """Committed and not copied yet."""
        return max(0, self.written - self.copied)


def wal_state(path: Path) -> WalState | None:
    """The WAL of the database at `path`, from its WAL-index; None if unknown.

    Read from the WAL-index because Python's sqlite3 offers no `wal_hook` and
    the size of the `-wal` file says nothing once SQLite reuses it from the
    start. A torn read (a commit meanwhile) only makes a checkpoint come one
    look sooner or later.
    """
    try:
        handle = os.open(f"{path}-shm", os.O_RDONLY)
    except OSError:
        return None
    try:
        header = os.pread(handle, _WAL_INDEX.size, 0)
    except OSError:
        return None
    finally:
        os.close(handle)
    if len(header) < _WAL_INDEX.size:
        return None
    version, page_size, last_frame, copied = _WAL_INDEX.unpack(header)
    if version != _WAL_INDEX_VERSION:
        return None
    page: int = 65536 if page_size == 1 else page_size
    return WalState(written=last_frame * page, copied=copied * page)


def prepare(path: Path) -> None:
    """Create the store's missing directories (0700) and its file (0600)."""
    directory = path.parent
    try:
        missing = [d for d in (directory, *directory.parents) if not d.exists()]
        for created in reversed(missing):
            created.mkdir(mode=0o700)
            created.chmod(0o700)  # mkdir's mode passes through the umask
        if not path.exists():
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.fchmod(handle, 0o600)
            finally:
                os.close(handle)
    except OSError as exc:
        raise StoreError(
            f"cannot create the store {path}: {exc.strerror or exc}"
            + (f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else "")
        ) from None


def connect(path: Path, busy_timeout_seconds: float) -> sqlite3.Connection:
    """A connection of our own to `path`: transactions by hand, any thread (one at a time)."""
    return sqlite3.connect(
        str(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout_seconds
    )


def corrupt(path: Path, detail: str) -> StoreError:
    """The error for a corrupted database file, with how to recover (one line)."""
    return StoreError(
        f"store {path} is corrupt ({detail}); stop gws-notifyd, then "
        f"`sqlite3 {path} .recover | sqlite3 {path}.recovered`, move {path} and its -wal "
        f"and -shm aside and rename {path}.recovered to {path}; or move them aside to start "
        "with an empty store (see README, Failure modes)"
    )


def check_pages(
    db: sqlite3.Connection, path: Path, *, seconds: float = QUICK_CHECK_SECONDS
) -> bool:
    """Run PRAGMA quick_check for at most `seconds`; True if it finished (and found no fault).

    Raises StoreError (`corrupt`) for a fault it finds.
    """
    deadline = time.monotonic() + seconds
    db.set_progress_handler(lambda: time.monotonic() > deadline, _PROGRESS_STEPS)
    try:
        rows = db.execute("PRAGMA quick_check(3)").fetchall()
    except sqlite3.OperationalError as exc:
        if "interrupt" not in str(exc):
            raise
        log.warning(
            "store_check_incomplete",
            path=str(path),
            checked_seconds=seconds,
            size_bytes=path.stat().st_size,
            detail="the page check stopped at its time limit; the rest of the file is unchecked",
        )
        return False
    finally:
        db.set_progress_handler(None, 0)
    if rows != [("ok",)]:
        raise corrupt(path, "; ".join(str(r[0]) for r in rows)[:300].replace("\n", " "))
    return True


def check_free_space(path: Path) -> None:
    """Raise StoreError when the store's filesystem has less than MIN_FREE_BYTES left."""
    try:
        stats = os.statvfs(path.parent)
    except OSError as exc:
        raise StoreError(f"store {path}: cannot read free space: {exc.strerror}") from None
    free = stats.f_bavail * stats.f_frsize
    if free < MIN_FREE_BYTES:
        raise StoreError(
            f"store {path}: database or disk is full ({free} bytes free on its filesystem)"
        )
