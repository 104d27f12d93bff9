"""The daemon's memory: with 100,000 pending sends held, and over 1,000,000 events.

    .venv/bin/python bench/memory.py [--quick] [--pending N] [--bursts B] [--burst-size S]

A store with N pending sends is written before the daemon starts (against
cometd-server.js with its GWS stub listing those emails as still Composing). RSS
(psutil) once it has reconciled them; then a warm-up (the N outcomes of those sends,
then one burst of unmatched notifications); then B bursts of S unmatched
notifications, each waited for in the sink. RSS after warm-up, after every burst
and after the run; the change over the run in % (the target's figure). RSS after a
burst moves by tens of MB with what the allocator happens to hand back to the system
then, so each burst's peak (sampled every 0.25 s) is shown too, and the change of the
highest peak of the first three bursts to that of the last three: what the bursts
need, at the start and at the end of the run. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
from typing import Any

import measure
import notifyd
import peers
import report
import seeding
from basics import EMAILS_CHANNEL, BenchError

TARGET_PENDING_MB = 150.0
TARGET_DRIFT_PERCENT = 10.0
UNMATCHED_START = 100_000_000  # referenceIds / SEQ ids no pending send has
SETTLE_SECONDS = 2.0


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pending", type=int, help="pending sends held (100,000)")
    parser.add_argument("--bursts", type=int, help="measured bursts (10)")
    parser.add_argument("--burst-size", type=int, help="notifications per burst (100,000)")


class RssSampler(threading.Thread):
    """The daemon's RSS every 0.25 s: the peak of the run, and of the span since
    `lap()` (one burst's)."""

    def __init__(self, meter: measure.CpuMeter) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.meter = meter
        self.peak = 0.0
        self._lap_peak = 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.25):
            try:
                rss = self.meter.rss_mb()
            except Exception:  # the process went away: nothing more to sample
                return
            self.peak = max(self.peak, rss)
            self._lap_peak = max(self._lap_peak, rss)

    def lap(self) -> float:
        """The peak since the last lap (or the start), and a new lap from now."""
        peak, self._lap_peak = self._lap_peak, 0.0
        return peak

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


async def burst(
    peer: peers.NodePeer,
    tailer: measure.SinkTailer,
    meter: measure.CpuMeter,
    start: int,
    size: int,
) -> tuple[float, float]:
    """Publish `size` notifications from `start`; wait for them all in the sink.

    Returns (seconds, daemon CPU % of one core).
    """
    expected = tailer.lines + size
    meter.start()
    await peer.publish(EMAILS_CHANNEL, size, start)
    if not await tailer.wait_lines(expected, timeout=1800, idle=120):
        raise BenchError(f"the sink has {tailer.lines:,} lines, expected {expected:,}")
    cpu, wall = meter.stop()
    return wall, 100 * cpu / wall


async def main() -> None:
    args = report.parse_args(__doc__ or "", _options)
    pending = args.pending or (10_000 if args.quick else 100_000)
    bursts = args.bursts or (5 if args.quick else 10)
    size = args.burst_size or (10_000 if args.quick else 100_000)

    rows: list[dict[str, Any]] = []
    with notifyd.workdir("memory") as work:
        seconds = seeding.populate_store(work / "state.db", 1, pending)
        report.note(f"memory: {pending:,} pending sends written in {seconds:.1f} s")
        async with peers.cometd_peer(gws_stub=peers.GwsStub(pending, start=1)) as peer:
            config = notifyd.daemon_config(work, gws_url=peer.base_url)
            async with notifyd.running_daemon(config, work) as daemon:
                meter = measure.CpuMeter(daemon.pid)
                rss_started = meter.rss_mb()
                reconciled = await daemon.wait_log(notifyd.logged("reconciled"), timeout=600)
                rss_reconciled = meter.rss_mb()
                await asyncio.sleep(SETTLE_SECONDS)
                rss_pending = meter.rss_mb()
                report.note(f"memory: {pending:,} pending held: RSS {rss_pending:.1f} MB")
                sampler = RssSampler(meter)
                sampler.start()
                tailer = measure.SinkTailer(notifyd.sink_path(work), interval=0.01, keep=False)
                tailer.skip_existing()
                tailer.start()
                try:
                    report.note(f"memory: warm-up: {pending:,} outcomes, {size:,} unmatched")
                    await burst(peer, tailer, meter, 1, pending)
                    await burst(peer, tailer, meter, UNMATCHED_START, size)
                    await asyncio.sleep(SETTLE_SECONDS)
                    rss_warm = meter.rss_mb()
                    next_start = UNMATCHED_START + size
                    sampler.lap()
                    for number in range(1, bursts + 1):
                        took, cpu = await burst(peer, tailer, meter, next_start, size)
                        next_start += size
                        rss = meter.rss_mb()
                        # The last sample may precede the burst's end by up to 0.25 s.
                        peak = max(sampler.lap(), rss)
                        rows.append(
                            {
                                "burst": number,
                                "events_total": number * size,
                                "seconds": round(took, 2),
                                "events_per_s": round(size / took),
                                "daemon_cpu_percent_of_one_core": round(cpu, 1),
                                "rss_mb": round(rss, 1),
                                "peak_rss_mb": round(peak, 1),
                            }
                        )
                        report.note(f"  burst {number}/{bursts}: RSS {rss:.1f} MB")
                    await asyncio.sleep(SETTLE_SECONDS)
                    rss_end = meter.rss_mb()
                finally:
                    tailer.stop()
                    sampler.stop()
            log = notifyd.log_summary(daemon.read_logs())

    drift = 100 * (rss_end - rss_warm) / rss_warm
    ends = min(3, len(rows) // 2) or 1
    peak_first = max(row["peak_rss_mb"] for row in rows[:ends])
    peak_last = max(row["peak_rss_mb"] for row in rows[-ends:])
    peak_drift = 100 * (peak_last - peak_first) / peak_first
    verdict = {
        "pending_held_mb": round(rss_pending, 1),
        "target_pending_mb": TARGET_PENDING_MB,
        "pending_target_met": rss_pending <= TARGET_PENDING_MB,
        "change_over_run_percent": round(drift, 1),
        "target_change_percent": TARGET_DRIFT_PERCENT,
        "change_target_met": abs(drift) <= TARGET_DRIFT_PERCENT,
        "peak_change_percent": round(peak_drift, 1),
    }
    table = report.Table(
        f"daemon RSS, MB ({pending:,} pending; {bursts} x {size:,} events)",
        ["when", "events", "RSS MB", "burst's peak MB", "events/s", "daemon cpu %"],
    )
    table.add("started (pending loaded)", 0, rss_started, None, None, None)
    table.add("reconciled", 0, rss_reconciled, None, None, None)
    table.add(f"reconciled + {SETTLE_SECONDS:g} s", 0, rss_pending, None, None, None)
    table.add("after warm-up", 0, rss_warm, None, None, None)
    for row in rows:
        table.add(
            f"after burst {row['burst']}",
            row["events_total"],
            row["rss_mb"],
            row["peak_rss_mb"],
            row["events_per_s"],
            row["daemon_cpu_percent_of_one_core"],
        )
    table.add(f"after the run + {SETTLE_SECONDS:g} s", bursts * size, rss_end, None, None, None)
    table.add("peak (sampled every 0.25 s)", None, sampler.peak, None, None, None)
    table.add("change after warm-up -> after run, %", None, round(drift, 1), None, None, None)
    table.add(
        f"change of the bursts' peak, first {ends} -> last {ends}, %",
        None,
        None,
        round(peak_drift, 1),
        None,
        None,
    )
    report.emit(
        "memory",
        {
            "quick": args.quick,
            "method": {
                "rss": "psutil memory_info().rss of the daemon process",
                "pending": f"{pending:,} accepted sends written to the store before start; "
                "the GWS stub lists their emails as Composing, so reconciliation keeps them "
                "all pending",
                "warm_up": f"the {pending:,} outcomes of the pending sends (all resolved), then "
                f"{size:,} unmatched notifications",
                "peaks": "each burst's highest RSS sampled every 0.25 s; their change: the "
                f"highest of the first {ends} bursts to the highest of the last {ends}",
                "run": f"{bursts} bursts of {size:,} unmatched notifications (SEQ ids from "
                f"{UNMATCHED_START:,}), each published as fast as the peer can and waited "
                "for in the jsonl sink",
            },
            "pending": pending,
            "reconciled_log_line": reconciled,
            "rss_mb": {
                "started": round(rss_started, 1),
                "reconciled": round(rss_reconciled, 1),
                "pending_held": round(rss_pending, 1),
                "after_warm_up": round(rss_warm, 1),
                "after_run": round(rss_end, 1),
                "peak": round(sampler.peak, 1),
            },
            "bursts": rows,
            "events_after_warm_up": bursts * size,
            "daemon_log": log,
            "verdict": verdict,
        },
        [table],
    )


if __name__ == "__main__":
    asyncio.run(main())
