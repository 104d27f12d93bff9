"""The daemon under test: its config, its process, its log, its scratch directory.

The daemon is a black box: `python -m daemon run --config F` (run from the repository
root, so the working tree's code) in a process of its own, as the tests run it
(tests.harness.daemon_process.DaemonProcess), with its log in a file that is read
only at start-up and after a run.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from basics import ROOT
from report import note

from tests.harness.daemon_process import (
    SIM_PASSWORD,
    DaemonProcess,
    config_document,
    to_toml,
    write_config,
)

START_TIMEOUT: Final = 120.0  # a store with 300,000 pending sends is read before `started`
STOP_TIMEOUT: Final = 60.0

# On top of the test harness's config (tests.harness.daemon_process.config_document).
_BENCH_SECTIONS: Final[dict[str, dict[str, Any]]] = {
    "gws": {"request_timeout_seconds": 30},
    # Pre-populated sends must not time out during a run.
    "correlation": {"send_timeout_seconds": 36_000},
    "service": {"shutdown_timeout_seconds": 20},
    "logging": {"level": "info", "format": "json"},
}


def sink_path(workdir: Path) -> Path:
    """The one jsonl sink of `daemon_config`."""
    return workdir / "events.jsonl"


def _sections(gws: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The bench's config sections (a copy), with `gws` added to `[gws]`."""
    sections = {name: dict(values) for name, values in _BENCH_SECTIONS.items()}
    sections["gws"].update(gws)
    return sections


def _archive(workdir: Path) -> list[dict[str, Any]]:
    return [{"name": "archive", "type": "jsonl", "path": str(sink_path(workdir))}]


def daemon_config(
    workdir: Path, *, gws_url: str, sinks: Sequence[dict[str, Any]] | None = None, **gws: Any
) -> Path:
    """A config with the store in workdir and `sinks` (default: one jsonl sink, `sink_path`);
    `gws` adds `[gws]` keys."""
    sinks = _archive(workdir) if sinks is None else list(sinks)
    return write_config(workdir, gws_url=gws_url, sinks=sinks, **_sections(gws))


def logged(event: str) -> Callable[[dict[str, Any]], bool]:
    """A predicate for DaemonProcess.wait_log: the log line of `event`."""
    return lambda entry: entry.get("event") == event


@contextlib.asynccontextmanager
async def running_daemon(config: Path, workdir: Path) -> AsyncIterator[DaemonProcess]:
    """The daemon, started (its `started` line seen) and stopped on the way out.

    Its stdout and stderr go to workdir/daemon.log (`read_logs()` reads them).
    """
    daemon = DaemonProcess(
        config,
        env={"GWS_PASSWORD": SIM_PASSWORD},  # whatever this shell has: the simulator's
        wait_ready=False,
        log_path=workdir / "daemon.log",
        cwd=ROOT,
        start_timeout=START_TIMEOUT,
    )
    try:
        await daemon.start()
        yield daemon
    finally:
        code = await daemon.stop(STOP_TIMEOUT)
        if code not in (0, None):
            note(f"daemon exited with {code}; its log: {daemon.log_path}")


def log_summary(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Log lines by level, and every warning/error event by name with one example."""
    levels: dict[str, int] = {}
    problems: dict[str, dict[str, Any]] = {}
    for entry in entries:
        level = str(entry.get("level", "?"))
        levels[level] = levels.get(level, 0) + 1
        if level in ("warning", "error", "critical"):
            name = str(entry.get("event"))
            seen = problems.setdefault(name, {"count": 0, "example": entry})
            seen["count"] += 1
    return {"lines_by_level": levels, "warnings_and_errors": problems}


@contextlib.contextmanager
def workdir(name: str) -> Iterator[Path]:
    """A scratch directory for a store, a sink and logs; removed afterwards
    unless $BENCH_KEEP is set (then its path is printed)."""
    if os.environ.get("BENCH_KEEP"):
        path = Path(tempfile.mkdtemp(prefix=f"gws-bench-{name}-"))
        print(f"keeping {path}", file=sys.stderr)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=f"gws-bench-{name}-") as kept:
        yield Path(kept)


def accounts_config(
    workdir: Path, *, gws_url: str, accounts: Sequence[dict[str, Any]], **gws: Any
) -> Path:
    """`daemon_config`'s config (one jsonl sink, `sink_path`), with `[[gws.accounts]]`
    tables (`accounts`: name, username, password_file, ...) instead of `gws.username`;
    `gws` adds shared `[gws]` keys."""
    document = config_document(workdir, gws_url=gws_url, sinks=_archive(workdir), **_sections(gws))
    del document["gws"]["username"]  # each account has its own
    document["gws.accounts"] = list(accounts)  # [[gws.accounts]] tables, after [gws]
    path = workdir / "gws-notifyd.toml"
    path.write_text(to_toml(document))
    return path
