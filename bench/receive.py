"""Bare Bayeux clients against cometd-nodejs-server: a burst of GWS-shaped notifications.

    .venv/bin/python bench/receive.py [--quick] [--count N] [--modes live,queued]

Each client runs in a process of its own, subscribed before the burst, one after
another, each with a fresh server: (a) daemon.cometd.BayeuxClient, (b) aiocometd-noloop
0.4.9, (c) the CometD JS client. Each only counts. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import bare_clients
import report

TARGET_TO_JS = 0.9  # ours / the CometD JS client, live (the reference in the same run)
TARGET_RATIO = 2.8  # ours / aiocometd-noloop


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--count", type=int, help="messages in the burst (default 200,000)")
    parser.add_argument(
        "--modes",
        default="live,queued",
        help="comma-separated: live (published while the client drains), "
        "queued (released at once); default both",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per client and mode; the table shows the median run by msg/s (1)",
    )
    parser.add_argument(
        "--clients",
        default=",".join(bare_clients.RECEIVE_CLIENTS),
        help="comma-separated subset of " + ", ".join(bare_clients.RECEIVE_CLIENTS),
    )


def verdict(runs: list[bare_clients.ReceiveRun], mode: str) -> dict[str, Any]:
    ours = next((r for r in runs if r.client == "ours"), None)
    theirs = next((r for r in runs if r.client == "aiocometd-noloop"), None)
    js = next((r for r in runs if r.client == "cometd-js"), None)
    if ours is None:
        return {}
    out: dict[str, Any] = {"ours_msg_per_s": round(ours.rate)}
    if js is not None and js.rate > 0:
        out["ratio_to_cometd_js"] = round(ours.rate / js.rate, 3)
        if mode == "live":  # the target is on the live rate
            out |= {
                "target_ratio_to_cometd_js": TARGET_TO_JS,
                "ratio_to_cometd_js_target_met": ours.rate / js.rate >= TARGET_TO_JS,
            }
    if theirs is not None and theirs.rate > 0:
        ratio = ours.rate / theirs.rate
        out |= {
            "ratio_to_aiocometd_noloop": round(ratio, 2),
            "target_ratio": TARGET_RATIO,
            "ratio_target_met": ratio >= TARGET_RATIO,
        }
    return out


async def main() -> None:
    args = report.parse_args(__doc__ or "", _options)
    count = args.count or (20_000 if args.quick else 200_000)
    modes = [m for m in args.modes.split(",") if m]
    clients = [c for c in args.clients.split(",") if c]
    for name in modes:
        if name not in bare_clients.RECEIVE_MODES:
            raise SystemExit(f"unknown mode {name!r}")
    for name in clients:
        if name not in bare_clients.RECEIVE_CLIENTS:
            raise SystemExit(f"unknown client {name!r}")

    tables = []
    results: dict[str, Any] = {}
    for mode in modes:
        runs = []
        every: list[bare_clients.ReceiveRun] = []
        for client in clients:
            tries = []
            for attempt in range(1, args.repeat + 1):
                report.note(f"receive: {client}, {mode}, {count:,} messages, run {attempt}")
                run = await bare_clients.run_receive(client, count, mode=mode)
                report.note(
                    f"  {run.received:,} in {run.span_seconds:.2f} s = {run.rate:,.0f} msg/s"
                )
                if run.received != count:
                    report.note(f"  INCOMPLETE: {client} lost {count - run.received:,} messages")
                tries.append(run)
            every += tries
            runs.append(sorted(tries, key=lambda r: r.rate)[len(tries) // 2])
        tables.append(bare_clients.receive_table(f"receive, {mode}: burst of {count:,}", runs))
        results[mode] = {
            "method": bare_clients.RECEIVE_MODES[mode],
            "runs": [r.as_json() for r in runs],
            "all_runs": [r.as_json() for r in every] if args.repeat > 1 else None,
            "verdict": verdict(runs, mode),
        }
    report.emit(
        "receive",
        {
            "count": count,
            "quick": args.quick,
            "repeat": args.repeat,
            "server": "cometd-nodejs-server 1.2.1 (tests/peers/cometd-server.js), long-polling, "
            f"long-poll timeout {bare_clients.RECEIVE_LONG_POLL_MS} ms",
            "clients": {c: bare_clients.RECEIVE_CLIENTS[c] for c in clients},
            "cpu_note": "cpu_seconds: user+sys of the client process (psutil) over its CPU "
            "window (see each mode's method); cpu % = cpu_seconds / that window's wall time; "
            "msg_per_cpu_second = received / cpu_seconds (the rate one full core would give); "
            "server_cpu_*: the node peer, from the publish request to the client's last message",
            "modes": results,
        },
        tables,
    )


if __name__ == "__main__":
    asyncio.run(main())
