"""Every performance target in one command: each benchmark in turn, then one table.

    .venv/bin/python bench/all.py [--quick] [--only receive,pipeline,...] [--profile]

Runs bench/receive.py (`--repeat 3`), pipeline.py, send.py, memory.py, recovery.py and
sinks.py, each in a process of its own, one after the other (they would compete for the
two cores), with `--quick` and `--profile` passed on where given. Each writes its own
bench/results/<name>.json; this script then reads their verdicts and prints every
target beside the reference it is measured against in the same run, and writes
bench/results/all.json. A script that fails is reported, and the others still run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import report
from basics import BENCH_DIR, PYTHON, RESULTS_DIR, ROOT

Row = tuple[str, str, str, str, bool | None]  # what, measured, reference, target, met


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--only", default=",".join(SCRIPTS), help="comma-separated subset of " + ", ".join(SCRIPTS)
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the daemon where a script can (pipeline, send, sinks)",
    )


def _receive(result: dict[str, Any]) -> list[Row]:
    live = result["modes"].get("live", {}).get("verdict", {})
    runs = {r["client"]: r for r in result["modes"].get("live", {}).get("runs", [])}
    js = runs.get("cometd-js", {}).get("msg_per_s")
    noloop = runs.get("aiocometd-noloop", {}).get("msg_per_s")
    return [
        (
            "receive, live: our Bayeux client",
            f"{live.get('ours_msg_per_s', 0):,} msg/s = {live.get('ratio_to_cometd_js')}x",
            f"CometD JS client {js:,} msg/s" if js else "-",
            f">= {live.get('target_ratio_to_cometd_js')}x",
            live.get("ratio_to_cometd_js_target_met"),
        ),
        (
            "receive, live: our Bayeux client",
            f"{live.get('ratio_to_aiocometd_noloop')}x",
            f"aiocometd-noloop {noloop:,} msg/s" if noloop else "-",
            f">= {live.get('target_ratio')}x",
            live.get("ratio_target_met"),
        ),
    ]


def _pipeline(result: dict[str, Any]) -> list[Row]:
    verdict = result["verdict"]
    noloop = result.get("bare", {}).get("aiocometd-noloop", {}).get("msg_per_s")
    steady = result["steady"]
    due = steady.get("due_to_sink_ms", {})
    return [
        (
            "burst, durable end to end",
            f"{verdict['pipeline_events_per_s']:,} events/s = "
            f"{verdict.get('ratio_to_bare_aiocometd-noloop')}x",
            f"aiocometd-noloop bare {noloop:,} msg/s" if noloop else "-",
            f">= {verdict['ratio_target']}x",
            verdict["ratio_target_met"],
        ),
        (
            f"steady {steady['rate']:,.0f}/s: daemon CPU per notification",
            f"{verdict['steady_cpu_us_per_notification']} us "
            f"({verdict['steady_cpu_percent']} %) = {verdict.get('steady_cpu_ratio_to_noloop')}x",
            f"aiocometd-noloop receiving it: {verdict.get('steady_noloop_cpu_us_per_notification')}"
            f" us ({verdict.get('steady_noloop_cpu_percent')} %)",
            f"<= {verdict.get('steady_cpu_ratio_target')}x",
            verdict.get("steady_cpu_ratio_target_met"),
        ),
        (
            "steady: receipt -> sink-written",
            f"p99 {verdict['steady_p99_ms']} / max {verdict['steady_max_ms']} ms",
            f"from when due at the peer: p99 {due.get('p99')} / max {due.get('max')} ms",
            f"p99 <= {verdict['steady_p99_target_ms']:g}, "
            f"max <= {verdict['steady_max_target_ms']:g} ms",
            bool(verdict["steady_p99_target_met"] and verdict["steady_max_target_met"]),
        ),
    ]


def _send(result: dict[str, Any]) -> list[Row]:
    verdict = result["verdict"]
    phases = {(p["path"], p["concurrency"]): p for p in result["phases"]}
    single = phases.get(("direct", 1), {}).get("latency_ms", {}).get("p99")
    width = max((c for _, c in phases), default=0)
    direct = phases.get(("direct", width), {}).get("sends_per_s")
    through = phases.get(("daemon", width), {}).get("sends_per_s")
    return [
        (
            "Sends one at a time: added p99",
            f"{verdict.get('added_p99_ms_one_at_a_time')} ms",
            f"direct p99 {single} ms",
            f"<= {verdict.get('target_added_p99_ms')} ms",
            verdict.get("added_p99_target_met"),
        ),
        (
            f"Sends, {width} in flight, through the daemon",
            f"{through:,}/s = {verdict.get('daemon_over_direct_rate')}x" if through else "-",
            f"direct {direct:,}/s" if direct else "-",
            f">= {verdict.get('target_rate_ratio')}x",
            verdict.get("rate_ratio_target_met"),
        ),
    ]


def _memory(result: dict[str, Any]) -> list[Row]:
    verdict = result["verdict"]
    events = result["events_after_warm_up"]
    return [
        (
            f"RSS with {result['pending']:,} pending sends",
            f"{verdict['pending_held_mb']} MB",
            "-",
            f"<= {verdict['target_pending_mb']:g} MB",
            verdict["pending_target_met"],
        ),
        (
            f"RSS over {events:,} events",
            f"{verdict['change_over_run_percent']:+} %",
            "after warm-up",
            f"+/- {verdict['target_change_percent']:g} %",
            verdict["change_target_met"],
        ),
    ]


def _recovery(result: dict[str, Any]) -> list[Row]:
    verdict = result["verdict"]
    return [
        (
            "server back -> resubscribed",
            f"max {verdict['resubscribed_max_s']} s (median {verdict['resubscribed_median_s']})",
            "-",
            f"<= {verdict['target_resubscribed_s']:g} s",
            verdict["resubscribed_target_met_every_time"],
        ),
        (
            "reconcile 1,000 pending sends",
            f"{verdict['reconcile_max_s']} s",
            "-",
            f"<= {verdict['target_reconcile_s']:g} s",
            verdict["reconcile_target_met"],
        ),
    ]


def _sinks(result: dict[str, Any]) -> list[Row]:
    verdict = result["verdict"]
    jsonl = verdict.get("jsonl", {}).get("events_per_s")
    rows: list[Row] = []
    for bus in ("redis", "nats"):
        if bus in verdict:
            figures = verdict[bus]
            rows.append(
                (
                    f"bus sink {bus}, burst end to end",
                    f"{figures['events_per_s']:,} events/s = {figures.get('to_jsonl')}x",
                    f"jsonl sink {jsonl:,} events/s" if jsonl else "-",
                    f">= {figures['target_events_per_s']:,.0f}/s and "
                    f">= {figures['target_to_jsonl']}x",
                    figures.get("target_met"),
                )
            )
    return rows


class Script(NamedTuple):
    """A benchmark: its rows of the summary (from its JSON, targets included), whether it
    takes --profile, and its options here."""

    summary: Callable[[dict[str, Any]], list[Row]]
    profiled: bool = False
    options: tuple[str, ...] = ()


# receive.py runs each client three times and keeps the median: a single live run of a
# client swings by 20 %.
SCRIPTS: dict[str, Script] = {
    "receive": Script(_receive, options=("--repeat", "3")),
    "pipeline": Script(_pipeline, profiled=True),
    "send": Script(_send, profiled=True),
    "memory": Script(_memory),
    "recovery": Script(_recovery),
    "sinks": Script(_sinks, profiled=True),
}


def run_script(name: str, args: argparse.Namespace) -> tuple[int, float]:
    """One benchmark as a process of its own; its exit status and wall time."""
    script = SCRIPTS[name]
    command = [PYTHON, str(BENCH_DIR / f"{name}.py"), *script.options]
    if args.quick:
        command.append("--quick")
    if args.profile and script.profiled:
        command.append("--profile")
    report.note(f"all: {' '.join(command[1:])}")
    began = time.monotonic()
    # Its tables and JSON go to our stdout as they come; progress to stderr.
    status = subprocess.run(command, cwd=ROOT, check=False).returncode
    return status, time.monotonic() - began


async def main() -> None:
    args = report.parse_args(__doc__ or "", _options)
    names = [n for n in args.only.split(",") if n]
    unknown = set(names) - set(SCRIPTS)
    if unknown:
        raise SystemExit(f"--only: unknown {sorted(unknown)}; choose from {', '.join(SCRIPTS)}")
    table = report.Table(
        "every target, each beside its reference from the same run",
        ["what", "measured", "reference", "target", "met"],
    )
    scripts: dict[str, Any] = {}
    for name in names:
        path = RESULTS_DIR / f"{name}.json"
        path.unlink(missing_ok=True)
        status, seconds = run_script(name, args)
        scripts[name] = {"exit_status": status, "seconds": round(seconds, 1)}
        if status != 0 or not path.exists():
            table.add(f"{name}.py", f"FAILED (exit {status})", "-", "-", False)
            continue
        for row in SCRIPTS[name].summary(json.loads(path.read_text())):
            table.add(*row)
    rows = [dict(zip(table.columns, row, strict=True)) for row in table.rows]
    report.emit(
        "all",
        {
            "quick": args.quick,
            "scripts": scripts,
            "targets": rows,
            "met": sum(1 for r in rows if r["met"] is True),
            "missed": sum(1 for r in rows if r["met"] is False),
        },
        [table],
    )


if __name__ == "__main__":
    asyncio.run(main())
