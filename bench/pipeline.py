"""The whole daemon: a burst, then a steady stream, of outcomes for pending sends.

    .venv/bin/python bench/pipeline.py [--quick] [--count N] [--mode live|queued]
                                       [--steady-rate R] [--steady-seconds S] [--profile]

1. Bare clients first, same burst and mode: ours and aiocometd-noloop (bench/receive.py);
   then aiocometd-noloop alone with the steady stream of step 3: the reference for the
   daemon's CPU per notification.
2. A store with N + R*S pending (accepted) sends is written before the daemon starts;
   cometd-server.js serves Bayeux and, with --gws-stub, the GWS REST calls; the daemon
   reconciles (one list request: every email still Composing) and is then sent the burst
   of N outcomes: events/s from the publish request to the last line of its JSON-lines
   sink, and the latency of each event from its receipt (CloudEvent `time`) to when a
   tailer thread polling the sink every ~1 ms saw it.
3. Steady: R msg/s for S seconds: latency p50/p99/max and the daemon's CPU.

Targets, as ratios to references from the same run: the burst end to end >= 2x
aiocometd-noloop's bare rate; at the steady pace the daemon's CPU per notification
<= 0.5x what aiocometd-noloop spends just receiving it, p99 <= 10 ms, max <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import bare_clients
import measure
import notifyd
import peers
import profiling
import report
import seeding
import stats
from basics import EMAILS_CHANNEL, BenchError

TARGET_RATIO = 2.0  # pipeline events/s over aiocometd-noloop's bare msg/s
TARGET_STEADY_P99_MS = 10.0
TARGET_STEADY_MAX_MS = 50.0
# Daemon CPU per steady notification over aiocometd-noloop's, receiving the same stream.
TARGET_STEADY_CPU_RATIO = 0.5
# The peer publishes what is due every 2 ms: 10 messages at 5,000/s. Smaller batches cost
# the daemon more per message (a transaction each): --steady-tick-ms shows how much.
STEADY_TICK_MS = 2


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, help="burst size (default 200,000)")
    parser.add_argument("--mode", default="live", choices=sorted(bare_clients.RECEIVE_MODES))
    parser.add_argument("--steady-rate", type=float, default=5000.0, help="msg/s (5,000)")
    parser.add_argument("--steady-seconds", type=float, help="default 20 (quick: 4)")
    parser.add_argument(
        "--steady-tick-ms",
        type=int,
        default=STEADY_TICK_MS,
        help=f"the peer publishes what is due every this many ms ({STEADY_TICK_MS})",
    )
    parser.add_argument(
        "--batch-window",
        type=float,
        metavar="SECONDS",
        help="the daemon's gws.batch_window_seconds (default: the daemon's own)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the daemon (slows it a little): bench/results/pipeline-{burst,steady}.folded",
    )
    parser.add_argument(
        "--skip-bare", action="store_true", help="do not run the bare clients first"
    )


def _latency_section(seen: list[tuple[float, dict[str, Any]]]) -> dict[str, Any]:
    correlated = sum(1 for _, e in seen if e.get("data", {}).get("correlated") is True)
    return {
        "events": len(seen),
        "correlated": correlated,
        "latency_ms": stats.summarize(stats.latencies_ms(seen)),
    }


def _due_latencies_ms(
    seen: list[tuple[float, dict[str, Any]]], ordered_at: float, first: int, rate: float
) -> list[float]:
    """From when each steady message was due at the peer to sink-written, in ms.

    The peer publishes message `first + k` (its referenceId) once `k / rate` seconds
    have passed since it took the order (cometd-server.js): that, from when the
    order was sent, is its due time. Unlike receipt -> sink, this also counts the
    peer's tick, the wait for the daemon's next long-poll (`gws.batch_window_seconds`)
    and the answer's way to the daemon.
    """
    latencies = []
    for at, event in seen:
        reference = event.get("data", {}).get("referenceId")
        if isinstance(reference, int):
            latencies.append((at - ordered_at - (reference - first) / rate) * 1000)
    return latencies


async def run_pipeline(args: argparse.Namespace, count: int, steady: int) -> dict[str, Any]:
    total = count + steady
    with notifyd.workdir("pipeline") as work:
        seconds = seeding.populate_store(work / "state.db", 1, total)
        report.note(f"pipeline: {total:,} pending sends written in {seconds:.1f} s")
        async with peers.cometd_peer(gws_stub=peers.GwsStub(total, start=1)) as peer:
            window = args.batch_window
            gws = {} if window is None else {"batch_window_seconds": window}
            config = notifyd.daemon_config(work, gws_url=peer.base_url, **gws)
            async with notifyd.running_daemon(config, work) as daemon:
                reconciled = await daemon.wait_log(notifyd.logged("reconciled"), timeout=600)
                report.note(f"pipeline: daemon reconciled {reconciled}")
                meter = measure.CpuMeter(daemon.pid)
                rss_start = meter.rss_mb()
                tailer = measure.SinkTailer(notifyd.sink_path(work))
                tailer.skip_existing()
                tailer.start()
                try:
                    # -- burst
                    profiled = daemon.pid if args.profile else None
                    profiler = profiling.start_profiler(profiled, "pipeline-burst")
                    meter.start()
                    published_at = time.time()
                    await peer.order_publish(
                        EMAILS_CHANNEL, count, start=1, hold=args.mode == "queued"
                    )
                    done = await tailer.wait_lines(count, timeout=1800, idle=120)
                    burst_cpu, _ = meter.stop()
                    profile_burst = profiling.stop_profiler(profiler)
                    if not done:
                        raise BenchError(f"the sink got {tailer.lines:,} of {count:,} burst events")
                    burst_seconds = tailer.last_seen - published_at
                    rss_burst = meter.rss_mb()
                    report.note(
                        f"pipeline: burst {count:,} in {burst_seconds:.2f} s = "
                        f"{count / burst_seconds:,.0f} events/s"
                    )
                    # -- steady
                    report.note(
                        f"pipeline: steady {args.steady_rate:,.0f} msg/s, {steady:,} messages"
                    )
                    profiler = profiling.start_profiler(profiled, "pipeline-steady")
                    meter.start()
                    ordered_at = time.time()
                    await peer.order_publish(
                        EMAILS_CHANNEL,
                        steady,
                        start=1 + count,
                        rate=args.steady_rate,
                        tick_ms=args.steady_tick_ms,
                    )
                    done = await tailer.wait_lines(total, timeout=600, idle=60)
                    steady_cpu, steady_wall = meter.stop()
                    profile_steady = profiling.stop_profiler(profiler)
                    if not done:
                        raise BenchError(
                            f"the sink got {tailer.lines - count:,} of {steady:,} steady events"
                        )
                finally:
                    tailer.stop()
                seen = tailer.events()
                rss_end = meter.rss_mb()
            log = notifyd.log_summary(daemon.read_logs())
    burst, steady_seen = seen[:count], seen[count:]
    return {
        "pending_sends": total,
        "reconciled_log_line": reconciled,
        "tailer_poll_period_ms": round(tailer.poll_period * 1000, 3),
        "burst": {
            "count": count,
            "mode": args.mode,
            "seconds": round(burst_seconds, 3),
            "events_per_s": round(count / burst_seconds),
            "daemon_cpu_seconds": round(burst_cpu, 2),
            "daemon_cpu_percent_of_one_core": round(100 * burst_cpu / burst_seconds, 1),
            **_latency_section(burst),
        },
        "steady": {
            "rate": args.steady_rate,
            "count": steady,
            "tick_ms": args.steady_tick_ms,
            "seconds": round(steady_wall, 3),
            "daemon_cpu_seconds": round(steady_cpu, 2),
            "daemon_cpu_percent_of_one_core": round(100 * steady_cpu / steady_wall, 1),
            **_latency_section(steady_seen),
            "due_to_sink_ms": stats.summarize(
                _due_latencies_ms(steady_seen, ordered_at, 1 + count, args.steady_rate)
            ),
        },
        "daemon_rss_mb": {
            "reconciled": round(rss_start, 1),
            "after_burst": round(rss_burst, 1),
            "after_steady": round(rss_end, 1),
        },
        "daemon_log": log,
        "profile": {"burst": profile_burst, "steady": profile_steady} if args.profile else None,
    }


async def main() -> None:
    args = report.parse_args(__doc__ or "", _options)
    count = args.count or (10_000 if args.quick else 200_000)
    steady_seconds = args.steady_seconds or (4.0 if args.quick else 20.0)
    steady = round(args.steady_rate * steady_seconds)

    bare: dict[str, bare_clients.ReceiveRun] = {}
    bare_steady: bare_clients.ReceiveRun | None = None
    if not args.skip_bare:
        for client in ("ours", "aiocometd-noloop"):
            report.note(f"bare: {client}, {args.mode}, {count:,} messages")
            bare[client] = await bare_clients.run_receive(client, count, mode=args.mode)
            report.note(f"  {bare[client].rate:,.0f} msg/s")
        report.note(f"bare: aiocometd-noloop, steady {args.steady_rate:,.0f} msg/s")
        bare_steady = await bare_clients.run_receive(
            "aiocometd-noloop", steady, rate=args.steady_rate, tick_ms=args.steady_tick_ms
        )
        report.note(f"  {bare_steady.cpu_percent:.1f} % of one core")
    result = await run_pipeline(args, count, steady)

    rate = result["burst"]["events_per_s"]
    ratios = {
        f"to_bare_{name}": round(rate / run.rate, 3) for name, run in bare.items() if run.rate
    }
    end_to_end = {
        f"to_bare_{name}_publish_to_last": round(rate / run.end_to_end_rate, 3)
        for name, run in bare.items()
        if run.end_to_end_rate
    }
    steady_result = result["steady"]
    steady_latency = steady_result["latency_ms"]
    daemon_us = 1e6 * steady_result["daemon_cpu_seconds"] / max(1, steady_result["events"])
    verdict = {
        "pipeline_events_per_s": rate,
        **{f"ratio_{k}": v for k, v in ratios.items()},
        **{f"ratio_{k}": v for k, v in end_to_end.items()},
        "ratio_target": TARGET_RATIO,
        "ratio_target_met": ratios.get("to_bare_aiocometd-noloop", 0) >= TARGET_RATIO,
        "steady_p99_ms": steady_latency.get("p99"),
        "steady_p99_target_ms": TARGET_STEADY_P99_MS,
        "steady_p99_target_met": (steady_latency.get("p99") or 1e9) <= TARGET_STEADY_P99_MS,
        "steady_max_ms": steady_latency.get("max"),
        "steady_max_target_ms": TARGET_STEADY_MAX_MS,
        "steady_max_target_met": (steady_latency.get("max") or 1e9) <= TARGET_STEADY_MAX_MS,
        "steady_cpu_percent": steady_result["daemon_cpu_percent_of_one_core"],
        "steady_cpu_us_per_notification": round(daemon_us, 1),
    }
    if bare_steady is not None and bare_steady.received:
        noloop_us = 1e6 * bare_steady.cpu_seconds / bare_steady.received
        verdict |= {
            "steady_noloop_cpu_percent": round(bare_steady.cpu_percent, 1),
            "steady_noloop_cpu_us_per_notification": round(noloop_us, 1),
            "steady_cpu_ratio_to_noloop": round(daemon_us / noloop_us, 3),
            "steady_cpu_ratio_target": TARGET_STEADY_CPU_RATIO,
            "steady_cpu_ratio_target_met": daemon_us / noloop_us <= TARGET_STEADY_CPU_RATIO,
        }

    throughput = report.Table(
        f"pipeline burst of {count:,} ({args.mode}) vs bare clients",
        ["what", "msg/s", "seconds", "publish->last msg/s", "cpu s", "pipeline / this"],
    )
    for name, run in bare.items():
        # No ratio when the client's span was 0 (the whole burst came in one answer).
        ratio = ratios.get(f"to_bare_{name}")
        throughput.add(
            f"bare {name}",
            run.rate,
            run.span_seconds,
            run.end_to_end_rate,
            run.cpu_seconds,
            f"{ratio:.2f}x" if ratio is not None else None,
        )
    throughput.add(
        "daemon: publish -> last sink line",
        float(rate),
        result["burst"]["seconds"],
        float(rate),
        result["burst"]["daemon_cpu_seconds"],
        None,
    )
    latency = report.Table(
        f"receipt -> sink-written latency, ms (tailer poll {result['tailer_poll_period_ms']} ms)",
        ["phase", "events", "correlated", "p50", "p90", "p99", "max", "daemon cpu %"],
    )
    for phase in ("burst", "steady"):
        section = result[phase]
        lat = section["latency_ms"]
        latency.add(
            phase,
            section["events"],
            section["correlated"],
            lat.get("p50"),
            lat.get("p90"),
            lat.get("p99"),
            lat.get("max"),
            section["daemon_cpu_percent_of_one_core"],
        )
    due = result["steady"]["due_to_sink_ms"]
    latency.add(
        "steady, from due at the peer",
        due.get("count"),
        None,
        due.get("p50"),
        due.get("p90"),
        due.get("p99"),
        due.get("max"),
        None,
    )
    cpu = report.Table(
        f"steady {args.steady_rate:,.0f} msg/s: CPU per notification",
        ["who", "cpu % of one core", "us per notification", "daemon / this"],
    )
    cpu.add("daemon (durable, correlated)", verdict["steady_cpu_percent"], daemon_us, None)
    if bare_steady is not None:
        ratio = verdict.get("steady_cpu_ratio_to_noloop")
        cpu.add(
            "bare aiocometd-noloop (receives only)",
            verdict["steady_noloop_cpu_percent"],
            verdict["steady_noloop_cpu_us_per_notification"],
            f"{ratio:.2f}x" if ratio is not None else None,
        )
    report.emit(
        "pipeline",
        {
            "quick": args.quick,
            "method": {
                "events_per_s": "burst count / (time the tailer saw the last burst line - "
                "time the publish request was sent); bare client rates: first message to "
                "last (live) or release to last (queued), as in bench/receive.py",
                "latency": "tailer wall-clock time when it first read the line minus the "
                "event's CloudEvent time (the daemon's receipt time, microseconds); the "
                "tailer is a thread polling the file every ~1 ms: resolution ~"
                f"{result['tailer_poll_period_ms']} ms (mean poll period)",
                "due_to_sink": "steady phase: tailer time minus when the message was due at "
                "the peer (when the publish order was sent + its index / rate): also counts "
                "the peer's tick, the wait for the daemon's next long-poll and the way there",
                "cpu": "psutil user+sys of the daemon process over the phase's wall time",
                "daemon": "python -m daemon run, logging level info (JSON) to a file, one "
                "jsonl sink, store synchronous=normal, gws.batch_window_seconds "
                f"{'default' if args.batch_window is None else args.batch_window}",
            },
            "bare": {name: run.as_json() for name, run in bare.items()},
            "bare_steady_aiocometd_noloop": bare_steady.as_json() if bare_steady else None,
            **result,
            "verdict": verdict,
        },
        [throughput, latency, cpu],
    )


if __name__ == "__main__":
    asyncio.run(main())
