"""What is observed during a run: a process's CPU and RSS, and the sink's lines as written.

Both are read from outside the daemon (psutil; polling its JSON-lines sink file), so
that the daemon stays a black box.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import psutil


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


class MachineCpuMeter:
    """Busy CPU seconds of the whole machine (every process, every core: all but idle
    and iowait) between two marks: with every process of a run on the same cores,
    `cores / busy seconds per event` is the most events/s they could give it."""

    def __init__(self) -> None:
        self.cores = psutil.cpu_count() or 1
        self._busy = 0.0

    @staticmethod
    def _busy_now() -> float:
        times = psutil.cpu_times()
        return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))

    def start(self) -> None:
        self._busy = self._busy_now()

    def stop(self) -> float:
        return self._busy_now() - self._busy


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
