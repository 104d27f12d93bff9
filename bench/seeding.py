"""Pending sends written to the store before the daemon starts.

They look like the daemon's own: accepted sends with referenceId n and email id
`seq_id(n)`, as cometd-server.js publishes them, written with the daemon's bulk
write path (`Store.commit_outcomes(inserts=...)`).
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final, TypeVar

import basics  # noqa: F401  (the repository root on sys.path, for `daemon`)
import structlog

from daemon.sends import SendRecord, SendStatus, new_send_id
from daemon.store import Store, send_row

CHUNK: Final = 10_000  # sends per transaction

T = TypeVar("T")


def seq_id(n: int) -> str:
    """The email id cometd-server.js publishes for referenceId n."""
    return f"SEQ{n:010d}"


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _quiet_daemon_logs() -> None:
    """Daemon modules used in this process log warnings only, to stderr."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def populate_store(path: Path, start: int, count: int) -> float:
    """Write `count` pending (accepted) sends for SEQ ids start..; returns seconds taken.

    The sends look answered now, with referenceId n, as after a Send whose answer
    carried it; one transaction per CHUNK sends.
    """
    _quiet_daemon_logs()
    began = time.perf_counter()
    now = time.time()
    sends = (
        SendRecord(
            send_id=new_send_id(),
            email_id=seq_id(n),
            queue_name="Outbound",
            requested_at=now,
            subject="Re: " + seq_id(n),
            to=("customer@example.org",),
            status=SendStatus.ACCEPTED,
            reference_id=n,
            answered_at=now,
        )
        for n in range(start, start + count)
    )
    store = Store(path)
    try:
        for chunk in _chunks(sends, CHUNK):
            store.commit_outcomes(inserts=[send_row(send) for send in chunk])
    finally:
        store.close()
    return time.perf_counter() - began
