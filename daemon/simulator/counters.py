"""Counters for the simulator's stats: a total, and its peak within one wall-clock second.

Plain bookkeeping, no I/O: a benchmark reads the peak to see how hard a
reconnect wave hit the server (e.g. the most handshakes in one second).
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["PeakCounter"]


class PeakCounter:
    """Counts events; `peak` is the most that fell within any one wall-clock second."""

    __slots__ = ("_clock", "_second", "_this_second", "peak", "total")

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.total = 0
        self.peak = 0
        self._second = -1
        self._this_second = 0

    def add(self) -> None:
        second = int(self._clock())
        if second != self._second:
            self._second = second
            self._this_second = 0
        self._this_second += 1
        self.total += 1
        self.peak = max(self.peak, self._this_second)

    def reset(self) -> None:
        """Zero the total and the peak (the current second starts afresh too)."""
        self.total = 0
        self.peak = 0
        self._second = -1
        self._this_second = 0
