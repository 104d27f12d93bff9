"""What a benchmark says: its command line, the machine it ran on, its tables and JSON.

`parse_args` gives every script `--quick` and `--wait-quiet`, and records how busy the
machine was before the run; `emit` prints the tables and the JSON document (with
`machine_info`) and writes it to bench/results/<name>.json; `note` is progress on
stderr, so that stdout keeps only the tables and the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Final

import psutil
from basics import RESULTS_DIR, ROOT

# Other work on the machine skews every figure: the load is recorded with them.
_LOAD_AT_START: Final = os.getloadavg()
_BUSY_AT_START: dict[str, Any] = {}


def note(message: str) -> None:
    """Progress on stderr (the tables and JSON go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the command line, and a quiet machine ----------------------------------------------


def parse_args(
    description: str,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: a smoke run in well under a minute"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for the machine to be idle (< 10 %% CPU for 5 s)",
    )
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    if args.wait_quiet > 0:
        wait_quiet(args.wait_quiet)
    check_quiet()
    return args


def wait_quiet(limit: float, *, threshold: float = 10.0, quiet_for: float = 5.0) -> bool:
    """Wait until the machine used < threshold % CPU for `quiet_for` s; False on timeout."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if psutil.cpu_percent(interval=quiet_for) < threshold:
            return True
        note("waiting for the machine to be idle ...")
    return False


def check_quiet(threshold: float = 15.0) -> None:
    """Record (and warn about) CPU used by other processes during one second."""
    processes = list(psutil.process_iter(["name"]))
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.cpu_percent(None)
    busy = psutil.cpu_percent(interval=1.0)
    usage = []
    for process in processes:
        with contextlib.suppress(psutil.Error):
            usage.append((process.cpu_percent(None), str(process.info["name"]), process.pid))
    top = sorted(usage, reverse=True)[:3]
    _BUSY_AT_START.update(
        {
            "system_cpu_percent": busy,
            "busiest": [f"{name} (pid {pid}): {cpu:.0f} %" for cpu, name, pid in top],
        }
    )
    if busy > threshold:
        note(
            f"WARNING: the machine is busy ({busy:.0f} % of all cores in use before the "
            "benchmark): figures will be skewed"
        )


# -- the machine ---------------------------------------------------------------------


def _run_text(command: Sequence[str], cwd: Path | None = None) -> str | None:
    try:
        done = subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """What the figures were measured on, and which code."""
    node = shutil.which("node")
    commit = _run_text(["git", "rev-parse", "--short", "HEAD"], ROOT)
    dirty = _run_text(["git", "status", "--porcelain", "--", "daemon"], ROOT)
    return {
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpu_logical": os.cpu_count(),
        "cpu_physical": psutil.cpu_count(logical=False),
        "memory_total_mb": round(psutil.virtual_memory().total / 2**20),
        "load_average_at_start": [round(x, 2) for x in _LOAD_AT_START],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "cpu_busy_before_start": _BUSY_AT_START,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "node": _run_text([node, "--version"]) if node else None,
        "packages": {
            name: _package_version(name)
            for name in ("aiohttp", "orjson", "structlog", "aiocometd-noloop")
        },
        "git_commit": commit,
        "daemon_tree_modified": bool(dirty),
    }


# -- tables and the JSON document ---------------------------------------------------


@dataclass
class Table:
    title: str
    columns: Sequence[str]
    rows: list[Sequence[Any]] = field(default_factory=list)

    def add(self, *row: Any) -> None:
        self.rows.append(row)

    def render(self) -> str:
        def cell(value: Any) -> str:
            if value is None:
                return "-"
            if isinstance(value, float):
                if abs(value) >= 1000:
                    return f"{value:,.0f}"
                return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
            if isinstance(value, int) and not isinstance(value, bool):
                return f"{value:,}"
            return str(value)

        cells = [[cell(v) for v in row] for row in self.rows]
        widths = [
            max([len(c)] + [len(r[i]) for r in cells if i < len(r)])
            for i, c in enumerate(self.columns)
        ]
        line = "  ".join
        out = [
            f"== {self.title} ==",
            line(c.ljust(w) for c, w in zip(self.columns, widths, strict=True)),
        ]
        out.append(line("-" * w for w in widths))
        for row in cells:
            out.append(
                line(
                    (v.ljust(w) if i == 0 else v.rjust(w))
                    for i, (v, w) in enumerate(zip(row, widths, strict=False))
                )
            )
        return "\n".join(out)


def emit(name: str, result: dict[str, Any], tables: Iterable[Table]) -> Path:
    """Print the tables and the JSON; write the JSON to bench/results/<name>.json."""
    document = {"benchmark": name, "machine": machine_info(), **result}
    text = json.dumps(document, indent=2, default=str)
    for table in tables:
        print(table.render())
        print()
    print(text)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(text + "\n")
    print(f"\nwritten: {path.relative_to(ROOT)}", file=sys.stderr)
    return path
