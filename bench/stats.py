"""Statistics of the figures: percentile summaries and event latencies."""

from __future__ import annotations

import datetime as dt
import math
import statistics
from collections.abc import Sequence
from typing import Any


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


def event_time(event: dict[str, Any]) -> float:
    """The CloudEvent `time` (the daemon's receipt time) as unix seconds."""
    return dt.datetime.fromisoformat(str(event["time"])).timestamp()


def latencies_ms(seen: Sequence[tuple[float, dict[str, Any]]]) -> list[float]:
    """Receipt (event `time`) to sink-written (tailer saw the line), in ms."""
    return [(at - event_time(event)) * 1000 for at, event in seen]
