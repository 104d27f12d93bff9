"""Shared code of the gws-notifyd benchmarks (see bench/README.md).

Everything binds to 127.0.0.1. The daemon is treated as a black box: it runs as
`python -m daemon run --config F` with its logs in a file, and is observed through
its HTTP API, its log file (read only at start-up and after a run) and its JSON-lines
sink. The Bayeux server is tests/peers/cometd-server.js (cometd-nodejs-server 1.2.1),
optionally with its GWS REST stub (`--gws-stub N`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson
import psutil

ROOT: Final = Path(__file__).resolve().parent.parent
BENCH_DIR: Final = ROOT / "bench"
RESULTS_DIR: Final = BENCH_DIR / "results"
PEERS_DIR: Final = ROOT / "tests" / "peers"
PYTHON: Final = sys.executable
HOST: Final = "127.0.0.1"
EMAILS_CHANNEL: Final = "/v2/me/emails"
NOTIFICATIONS_PATH: Final = "/api/v2/notifications"
# The daemon does not check it against the stub; the simulator's default otherwise.
GWS_PASSWORD: Final = "agent1-password"

if str(ROOT) not in sys.path:  # `python bench/x.py` from anywhere: import the daemon
    sys.path.insert(0, str(ROOT))


# Other work on the machine skews every figure: the load is recorded with them.
_LOAD_AT_START: Final = os.getloadavg()


class BenchError(RuntimeError):
    """A benchmark could not run (a peer or the daemon failed, a deadline passed)."""


# -- command line, machine, statistics, output --------------------------------------


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


_BUSY_AT_START: dict[str, Any] = {}


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
            usage.append((process.cpu_percent(None), process.info["name"], process.pid))
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
    from importlib import metadata

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


def summarize(values: Sequence[float], *, scale: float = 1.0, digits: int = 3) -> dict[str, Any]:
    """count, min, p50, p90, p99, max, mean of `values` (times `scale`)."""
    if not values:
        return {"count": 0}
    ordered = sorted(v * scale for v in values)

    def pick(p: float) -> float:
        # nearest-rank percentile
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        return round(ordered[rank - 1], digits)

    return {
        "count": len(ordered),
        "min": round(ordered[0], digits),
        "p50": pick(50),
        "p90": pick(90),
        "p99": pick(99),
        "max": round(ordered[-1], digits),
        "mean": round(statistics.fmean(ordered), digits),
    }


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


def note(message: str) -> None:
    """Progress on stderr (the tables and JSON go to stdout)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


# -- processes ------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds (user + system, all threads) of one process between two marks."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self._cpu = 0.0
        self._wall = 0.0

    def _cpu_now(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def start(self) -> None:
        self._cpu = self._cpu_now()
        self._wall = time.perf_counter()

    def stop(self) -> tuple[float, float]:
        """(cpu seconds, wall seconds) since start()."""
        return self._cpu_now() - self._cpu, time.perf_counter() - self._wall

    def rss_mb(self) -> float:
        return float(self.process.memory_info().rss) / 2**20


async def stop_process(process: asyncio.subprocess.Process, timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode


# -- the Bayeux peer: tests/peers/cometd-server.js -------------------------------------


class CometdPeer:
    """cometd-nodejs-server in a `node` child (tests/peers/cometd-server.js)."""

    def __init__(
        self,
        *,
        port: int = 0,
        timeout_ms: int = 25_000,
        gws_stub: int | None = None,
        gws_stub_start: int = 0,
        gws_stub_unlisted: bool = False,
    ) -> None:
        self.port = port
        self.timeout_ms = timeout_ms
        self.gws_stub = gws_stub
        self.gws_stub_start = gws_stub_start
        self.gws_stub_unlisted = gws_stub_unlisted
        self.base_url = ""
        self.process: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return self.base_url + NOTIFICATIONS_PATH

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        node = shutil.which("node")
        if node is None or not (PEERS_DIR / "node_modules").is_dir():
            raise BenchError(f"need node and {PEERS_DIR / 'node_modules'} (npm ci there)")
        args = [node, "cometd-server.js", "--port", str(self.port)]
        args += ["--timeout-ms", str(self.timeout_ms)]
        if self.gws_stub is not None:
            args += ["--gws-stub", str(self.gws_stub), "--gws-stub-start", str(self.gws_stub_start)]
            if self.gws_stub_unlisted:
                args.append("--gws-stub-unlisted")
        deadline = time.monotonic() + 10.0
        while True:
            process = await asyncio.create_subprocess_exec(
                *args,
                cwd=PEERS_DIR,
                stdin=asyncio.subprocess.PIPE,  # the peer exits when this pipe closes
                stdout=asyncio.subprocess.PIPE,
            )
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), 15.0)
            if line:
                break
            await process.wait()
            # Restarting on the same port right after a stop: the port may still be
            # held for a moment; try again until the deadline.
            if self.port == 0 or time.monotonic() > deadline:
                raise BenchError(f"cometd-server.js exited with {process.returncode}")
            await asyncio.sleep(0.01)
        self.process = process
        self.base_url = json.loads(line)["listening"]
        self.port = int(self.base_url.rsplit(":", 1)[1])
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True),
                timeout=aiohttp.ClientTimeout(total=600),
            )

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        await stop_process(process, 5.0)
        if process.stdout is not None:
            await process.stdout.read()

    async def aclose(self) -> None:
        await self.stop()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _control(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        assert self._http is not None
        async with self._http.request(
            method, f"{self.base_url}/control/{path}", data=orjson.dumps(body) if body else None
        ) as response:
            answer = await response.json(content_type=None)
            if response.status != 200:
                raise BenchError(f"{method} /control/{path}: HTTP {response.status}: {answer}")
            return dict(answer)

    async def publish(
        self,
        count: int,
        *,
        start: int = 0,
        rate: float | None = None,
        tick_ms: int | None = None,
        hold: bool = False,
    ) -> dict[str, Any]:
        """Publish `count` GWS-shaped notifications (referenceId and SEQ id start..).

        `rate`: paced (msg/s); `hold`: queued for every session, released at once.
        """
        body: dict[str, Any] = {"channel": EMAILS_CHANNEL, "count": count, "start": start}
        if hold:
            body["hold"] = True
        if rate is not None:
            body["rate"] = rate
        if tick_ms is not None:
            body["tick_ms"] = tick_ms
        answer = await self._control("POST", "publish", body)
        if answer.get("published") != count:
            raise BenchError(f"asked to publish {count}, the peer says {answer}")
        return answer

    async def stats(self) -> dict[str, Any]:
        return await self._control("GET", "stats")


@contextlib.asynccontextmanager
async def cometd_peer(**kwargs: Any) -> AsyncIterator[CometdPeer]:
    peer = CometdPeer(**kwargs)
    try:
        await peer.start()
        yield peer
    finally:
        await peer.aclose()


# -- the GWS simulator in its own process -----------------------------------------------


@dataclass(frozen=True)
class SimulatorProcess:
    base_url: str
    pid: int


@contextlib.asynccontextmanager
async def simulator_process(**flags: str | None) -> AsyncIterator[SimulatorProcess]:
    """`gws-notifyd simulate` on a free port (flags: --name value, None for a switch)."""
    port = free_port()
    args = [PYTHON, "-m", "daemon", "simulate", "--listen", f"{HOST}:{port}"]
    for flag, value in flags.items():
        args.append("--" + flag.replace("_", "-"))
        if value is not None:
            args.append(value)
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=ROOT,
        env={**os.environ, "GWS_PASSWORD": GWS_PASSWORD},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    base_url = f"http://{HOST}:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 15
            while True:
                try:
                    async with http.get(base_url + "/control/stats") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if process.returncode is not None or time.monotonic() > deadline:
                    raise BenchError("the simulator did not start")
                await asyncio.sleep(0.05)
        yield SimulatorProcess(base_url, process.pid)
    finally:
        await stop_process(process)


# -- the daemon --------------------------------------------------------------------


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def daemon_config(workdir: Path, *, gws_url: str, **sections: dict[str, Any]) -> Path:
    """A config with one jsonl sink (workdir/events.jsonl) and the store in workdir."""
    document: dict[str, dict[str, Any]] = {
        "gws": {"base_url": gws_url, "username": "agent1", "request_timeout_seconds": 30},
        "http": {"listen": f"{HOST}:0"},
        "store": {"path": workdir / "state.db"},
        # Pre-populated sends must not time out during a run.
        "correlation": {"send_timeout_seconds": 36_000},
        "service": {"shutdown_timeout_seconds": 20},
        "logging": {"level": "info", "format": "json"},
    }
    for name, values in sections.items():
        document.setdefault(name, {}).update(values)
    lines: list[str] = []
    for section, values in document.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml(v)}" for k, v in values.items()]
        lines.append("")
    lines += ["[[sinks]]", 'name = "archive"', 'type = "jsonl"']
    lines.append(f"path = {_toml(workdir / 'events.jsonl')}")
    path = workdir / "gws-notifyd.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Daemon:
    """`python -m daemon run` with stdout+stderr in workdir/daemon.log."""

    def __init__(self, config: Path, workdir: Path) -> None:
        self.config = config
        self.workdir = workdir
        self.log_path = workdir / "daemon.log"
        self.sink_path = workdir / "events.jsonl"
        self.process: asyncio.subprocess.Process | None = None
        self.api = ""
        self._log_offset = 0
        self._http: aiohttp.ClientSession | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=30),
                connector=aiohttp.TCPConnector(limit=0),
            )
        return self._http

    async def start(self, *, ready_timeout: float = 120.0) -> None:
        """Start and wait for the `started` log line (the API is up then)."""
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                PYTHON,
                "-m",
                "daemon",
                "run",
                "--config",
                str(self.config),
                cwd=ROOT,
                env={**os.environ, "GWS_PASSWORD": GWS_PASSWORD},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        started = await self.wait_log("started", timeout=ready_timeout)
        self.api = str(started["api"])

    def read_log(self) -> list[dict[str, Any]]:
        """The daemon's JSON log lines (those that are JSON objects), all of them."""
        entries = []
        with self.log_path.open("rb") as handle:
            for line in handle:
                with contextlib.suppress(orjson.JSONDecodeError):
                    entry = orjson.loads(line)
                    if isinstance(entry, dict):
                        entries.append(entry)
        return entries

    async def wait_log(self, event: str, *, timeout: float = 60.0) -> dict[str, Any]:
        """The next log line (after the last one waited for) whose event is `event`.

        Reads the log file from where the previous wait stopped, every 10 ms.
        """
        deadline = time.monotonic() + timeout
        pending = b""
        while True:
            with self.log_path.open("rb") as handle:
                handle.seek(self._log_offset)
                data = handle.read()
            data = pending + data
            cut = data.rfind(b"\n") + 1
            pending, complete = data[cut:], data[:cut]
            for line in complete.splitlines(keepends=True):
                self._log_offset += len(line)
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(entry, dict) and entry.get("event") == event:
                    return entry
            if self.process is not None and self.process.returncode is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise BenchError(f"daemon exited with {self.process.returncode}: {tail}")
            if time.monotonic() > deadline:
                raise BenchError(f"no {event!r} log line from the daemon within {timeout} s")
            pending = b""
            await asyncio.sleep(0.01)

    async def readyz(self) -> int:
        try:
            async with self.http.get(self.api + "/readyz") as response:
                await response.read()
                return response.status
        except aiohttp.ClientError:
            return 0

    async def wait_ready(
        self, status: int = 200, *, timeout: float = 60.0, interval: float = 0.01
    ) -> float:
        """Poll /readyz every `interval` until it answers `status`; returns when (perf_counter)."""
        deadline = time.monotonic() + timeout
        while True:
            if await self.readyz() == status:
                return time.perf_counter()
            if time.monotonic() > deadline:
                raise BenchError(f"/readyz did not answer {status} within {timeout} s")
            if self.process is not None and self.process.returncode is not None:
                raise BenchError(f"daemon exited with {self.process.returncode}")
            await asyncio.sleep(interval)

    async def stop(self) -> int | None:
        code = None
        if self.process is not None:
            code = await stop_process(self.process, 60.0)
        if self._http is not None:
            await self._http.close()
            self._http = None
        return code


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


@contextlib.asynccontextmanager
async def running_daemon(config: Path, workdir: Path) -> AsyncIterator[Daemon]:
    daemon = Daemon(config, workdir)
    try:
        await daemon.start()
        yield daemon
    finally:
        code = await daemon.stop()
        if code not in (0, None):
            note(f"daemon exited with {code}; its log: {daemon.log_path}")


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


def seq_id(n: int) -> str:
    """The email id cometd-server.js publishes for referenceId n."""
    return f"SEQ{n:010d}"


def _quiet_daemon_logs() -> None:
    """Daemon modules used in this process log warnings only, to stderr."""
    import logging

    import structlog

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def populate_store(path: Path, start: int, count: int) -> float:
    """Write `count` pending (accepted) sends for SEQ ids start..; returns seconds taken.

    The sends look answered now, with referenceId n, as after a Send whose answer
    carried it. One transaction (bulk) when the store module's row helper is there,
    else `Store.insert_send` one by one.
    """
    from daemon import store as store_module
    from daemon.sends import SendRecord, SendStatus, new_send_id

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
    store = store_module.Store(path)
    try:
        row = getattr(store_module, "_send_row", None)
        columns = getattr(store_module, "_SEND_COLUMNS", None)
        if row is None or columns is None:
            for send in sends:
                store.insert_send(send)
            return time.perf_counter() - began
    finally:
        store.close()
    marks = ",".join("?" * len(columns.split(",")))
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executemany(f"INSERT INTO sends ({columns}) VALUES ({marks})", map(row, sends))
    return time.perf_counter() - began


# -- the sink, watched ---------------------------------------------------------------


class SinkTailer(threading.Thread):
    """Polls the JSON-lines sink every `interval` seconds in a thread of its own.

    Each complete line is stamped with the wall-clock time (time.time()) of the poll
    that first saw its newline, so "sink-written" has the resolution of the poll
    period (measured: `poll_period`), plus the read itself. With `keep=False`
    only lines are counted (long runs), nothing is kept.
    """

    def __init__(self, path: Path, *, interval: float = 0.001, keep: bool = True) -> None:
        super().__init__(name="sink-tailer", daemon=True)
        self.path = path
        self.interval = interval
        self.keep = keep
        self.lines = 0
        self.last_seen = 0.0  # time.time() of the poll that saw the latest line
        self.chunks: list[tuple[float, bytes]] = []
        self._stop_event = threading.Event()
        self._polls = 0
        self._began = 0.0
        self._ended = 0.0
        self._offset = 0

    def skip_existing(self) -> None:
        """Ignore what the file holds now (call before start())."""
        with contextlib.suppress(FileNotFoundError):
            self._offset = self.path.stat().st_size

    def run(self) -> None:
        handle = None
        pending = b""
        self._began = time.perf_counter()
        try:
            while not self._stop_event.is_set():
                if handle is None:
                    try:
                        handle = self.path.open("rb")
                        handle.seek(self._offset)
                    except FileNotFoundError:
                        time.sleep(self.interval)
                        continue
                data = handle.read()
                now = time.time()
                self._polls += 1
                if data:
                    data = pending + data
                    cut = data.rfind(b"\n") + 1
                    if cut:
                        complete, pending = data[:cut], data[cut:]
                        self.lines += complete.count(b"\n")
                        self.last_seen = now
                        if self.keep:
                            self.chunks.append((now, complete))
                    else:
                        pending = data
                time.sleep(self.interval)
        finally:
            self._ended = time.perf_counter()
            if handle is not None:
                handle.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)

    @property
    def poll_period(self) -> float:
        """Mean seconds between polls (the timing resolution)."""
        end = self._ended or time.perf_counter()
        return (end - self._began) / max(1, self._polls)

    async def wait_lines(self, count: int, *, timeout: float, idle: float | None = None) -> bool:
        """Until `count` lines were seen; False on timeout or after `idle` s without growth."""
        deadline = time.monotonic() + timeout
        last, last_change = self.lines, time.monotonic()
        while self.lines < count:
            now = time.monotonic()
            if self.lines != last:
                last, last_change = self.lines, now
            if now > deadline or (idle is not None and now - last_change > idle):
                return False
            await asyncio.sleep(0.005)
        return True

    def events(self) -> list[tuple[float, dict[str, Any]]]:
        """(seen at, parsed event) for every kept line, in file order."""
        out = []
        for seen, chunk in self.chunks:
            for line in chunk.splitlines():
                if line:
                    out.append((seen, orjson.loads(line)))
        return out


def event_time(event: dict[str, Any]) -> float:
    """The CloudEvent `time` (the daemon's receipt time) as unix seconds."""
    return dt.datetime.fromisoformat(str(event["time"])).timestamp()


def latencies_ms(seen: Sequence[tuple[float, dict[str, Any]]]) -> list[float]:
    """Receipt (event `time`) to sink-written (tailer saw the line), in ms."""
    return [(at - event_time(event)) * 1000 for at, event in seen]


# -- profiling ------------------------------------------------------------------------

Profiler = tuple[subprocess.Popen[bytes], Path]
# py-spy --nonblocking cannot always tell a waiting thread: leaves that are waits.
_IDLE_LEAVES = ("EpollSelector.select ", "_worker (concurrent/futures/thread.py")


def start_profiler(pid: int | None, name: str) -> Profiler | None:
    """py-spy on a process (None: no profile), folded stacks to bench/results/<name>.folded."""
    if pid is None:
        return None
    spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.folded"
    path.unlink(missing_ok=True)
    command = [spy, "record", "--pid", str(pid), "--rate", "250", "--nonblocking"]
    command += ["--format", "raw", "--output", str(path)]
    try:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError as exc:
        note(f"py-spy not started: {exc}")
        return None
    return process, path


def stop_profiler(profiler: Profiler | None) -> dict[str, Any] | None:
    """Stop py-spy (SIGINT makes it write) and summarise the folded stacks."""
    if profiler is None:
        return None
    process, path = profiler
    process.send_signal(signal.SIGINT)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if not path.exists():
        return {"error": "py-spy wrote nothing (ptrace not permitted?)"}
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames[-1].startswith(_IDLE_LEAVES):
            idle += count
            continue
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count

    def top(table: dict[str, int], n: int) -> list[dict[str, Any]]:
        ranked = sorted(table.items(), key=lambda kv: -kv[1])[:n]
        return [{"frame": f, "percent": round(100 * c / max(1, total), 1)} for f, c in ranked]

    return {
        "folded_stacks": str(path.relative_to(ROOT)),
        "samples": total,
        "idle_samples": idle,
        "note": "percent of the non-idle samples (all threads); idle = a thread waiting "
        "in epoll or on the store's work queue",
        "top_self": top(own, 20),
        "top_inclusive": top(inclusive, 40),
    }


# -- receive: a bare Bayeux client in a process of its own -------------------------------


RECEIVE_MODES: Final[dict[str, str]] = {
    "live": "the peer publishes in chunks of 5,000 per event-loop turn while the client "
    "drains; span = first message to last, in the client; client CPU window = publish "
    "request to the client's report",
    "queued": "the peer queues the whole burst for the client's session and releases it at "
    "once (one /meta/connect answer); span = release (peer clock) to last message; client "
    "CPU window = release to the client's report",
}


@dataclass
class ReceiveRun:
    client: str
    mode: str
    expected: int
    received: int
    span_seconds: float  # see RECEIVE_MODES
    first_to_last_seconds: float  # in the client, whatever the mode
    publish_to_last_seconds: float  # publish request sent to last message
    cpu_seconds: float  # client process: live: publish to done; queued: release to done
    cpu_wall_seconds: float  # the wall time of that window
    server_cpu_seconds: float  # the node peer, same window
    rss_mb: float
    batches: int | None  # answers with data (our client only)

    @property
    def rate(self) -> float:
        return self.received / self.span_seconds if self.span_seconds > 0 else 0.0

    @property
    def end_to_end_rate(self) -> float:
        """Messages / (publish request sent -> last message): what the pipeline is timed by."""
        window = self.publish_to_last_seconds
        return self.received / window if window > 0 else 0.0

    @property
    def cpu_percent(self) -> float:
        """Client CPU seconds over the wall time of the CPU window, as % of one core."""
        window = self.cpu_wall_seconds
        return 100 * self.cpu_seconds / window if window > 0 else 0.0

    @property
    def server_cpu_percent(self) -> float:
        window = self.publish_to_last_seconds
        return 100 * self.server_cpu_seconds / window if window > 0 else 0.0

    @property
    def per_cpu_second(self) -> float:
        """Messages per client CPU second: what one full core would take."""
        return self.received / self.cpu_seconds if self.cpu_seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "mode": self.mode,
            "expected": self.expected,
            "received": self.received,
            "complete": self.received == self.expected,
            "msg_per_s": round(self.rate),
            "msg_per_s_publish_to_last": round(self.end_to_end_rate),
            "span_seconds": round(self.span_seconds, 3),
            "first_to_last_seconds": round(self.first_to_last_seconds, 3),
            "publish_to_last_seconds": round(self.publish_to_last_seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "cpu_percent_of_one_core": round(self.cpu_percent, 1),
            "msg_per_cpu_second": round(self.per_cpu_second),
            "server_cpu_seconds": round(self.server_cpu_seconds, 3),
            "server_cpu_percent_of_one_core": round(self.server_cpu_percent, 1),
            "rss_mb": round(self.rss_mb, 1),
            "batches": self.batches,
        }


RECEIVE_CLIENTS: Final[dict[str, str]] = {
    "ours": "daemon.cometd.BayeuxClient (bare, counting)",
    "aiocometd-noloop": "aiocometd-noloop 0.4.9 (bare, counting)",
    "cometd-js": "CometD JS client 9.0.0 + cometd-nodejs-client 2.0.0 (bare, counting)",
}


def _client_command(client: str, url: str, expected: int) -> list[str]:
    if client == "cometd-js":
        node = shutil.which("node")
        assert node is not None
        script = BENCH_DIR / "clients" / "cometd_js_client.mjs"
        return [node, str(script), str(PEERS_DIR), url, EMAILS_CHANNEL, str(expected)]
    script = BENCH_DIR / "clients" / "python_client.py"
    return [PYTHON, str(script), client, url, EMAILS_CHANNEL, str(expected)]


async def _read_report(
    process: asyncio.subprocess.Process, client: str, key: str, timeout: float
) -> dict[str, Any]:
    """The next JSON object line with `key` on the client's stdout (others are skipped)."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BenchError(f"{client}: no {key!r} line within {timeout} s")
        line = await asyncio.wait_for(process.stdout.readline(), remaining)
        if not line:
            raise BenchError(f"{client} exited with {await process.wait()} before {key!r}")
        with contextlib.suppress(ValueError):
            report = json.loads(line)
            if isinstance(report, dict) and key in report:
                return report


# The peer's long-poll timeout for the receive runs. aiocometd-noloop sends its first
# /meta/connect without advice {timeout: 0}, so the server holds it this long before
# the client can even subscribe (25 s at GWS's default). Not shorter: aiocometd-noloop
# gives each request 1.5 x this timeout, and in the queued mode its held connect must
# outlast the publish of the burst and the transfer of the whole answer (at 2 s it
# timed out and lost 170,000 of 200,000). Within a burst every answer is immediate.
RECEIVE_LONG_POLL_MS: Final = 10_000


async def run_receive(
    client: str, count: int, *, mode: str = "live", idle_timeout: float = 15.0
) -> ReceiveRun:
    """A fresh cometd-server, one client subscribed, a burst of `count`; its figures.

    The client prints {"subscribed": true} once subscribed, then one JSON line
    with what it received (after `count` messages, or after `idle_timeout` s
    without a message), and exits when its stdin closes: the CPU counters are
    read after its result line and before that.
    """
    async with cometd_peer(timeout_ms=RECEIVE_LONG_POLL_MS) as peer:
        process = await asyncio.create_subprocess_exec(
            *_client_command(client, peer.url, count),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "BENCH_IDLE_TIMEOUT": str(idle_timeout)},
        )
        assert process.stdout is not None
        assert process.stdin is not None
        try:
            await _read_report(process, client, "subscribed", 60)
            meter = CpuMeter(process.pid)
            server = CpuMeter(peer.pid)
            server.start()
            if mode == "live":
                meter.start()
            published_at = time.time()
            answer = await peer.publish(count, hold=mode == "queued")
            if mode == "queued":
                meter.start()  # released now: the client's work starts
            report = await _read_report(process, client, "received", 600)
            cpu, cpu_wall = meter.stop()
            server_cpu, _ = server.stop()
            rss = meter.rss_mb()
        finally:
            process.stdin.close()
            await stop_process(process, 10)
    last_wall = float(report["last_wall"])
    first_to_last = float(report["span_seconds"])
    span = first_to_last
    if mode == "queued":
        span = last_wall - float(answer["released_at"])
    return ReceiveRun(
        client=client,
        mode=mode,
        expected=count,
        received=int(report["received"]),
        span_seconds=span,
        first_to_last_seconds=first_to_last,
        publish_to_last_seconds=last_wall - published_at,
        cpu_seconds=cpu,
        cpu_wall_seconds=cpu_wall,
        server_cpu_seconds=server_cpu,
        rss_mb=rss,
        batches=report.get("batches"),
    )


def receive_table(title: str, runs: Sequence[ReceiveRun]) -> Table:
    table = Table(
        title,
        [
            "client",
            "received",
            "msg/s",
            "span s",
            "cpu s",
            "cpu %",
            "msg/cpu-s",
            "server cpu %",
            "vs aiocometd",
        ],
    )
    base = next((r.rate for r in runs if r.client == "aiocometd-noloop"), 0.0)
    for run in runs:
        ratio = f"{run.rate / base:.2f}x" if base else None
        table.add(
            run.client,
            run.received,
            run.rate,
            run.span_seconds,
            run.cpu_seconds,
            run.cpu_percent,
            run.per_cpu_second,
            run.server_cpu_percent,
            ratio,
        )
    return table
