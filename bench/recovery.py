"""Recovery: resubscription after a CometD server restart, and reconciliation time.

    .venv/bin/python bench/recovery.py [--quick] [--restarts R] [--down-seconds D]
                                       [--pending P] [--repeat K]

(a) The daemon runs against cometd-server.js (with its GWS stub). R times: stop the
    server, wait until /readyz says 503, keep it down D seconds, start it again on the
    SAME port, and poll /readyz every 10 ms until 200: the time from the server being
    back (its "listening" line read) to /readyz 200.
(b) P pending sends in the store, the stub answering: the time from the daemon's
    subscription (its `bayeux_subscribed` log line) to its `reconciled` log line, and
    the `seconds` that line carries; once with the stub listing every email (one list
    request) and once with it listing none (one GET per email). K fresh daemons each.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import time
from typing import Any

import notifyd
import peers
import report
import seeding

from tests.harness.waiting import POLL_SECONDS

TARGET_RESUBSCRIBED_S = 1.0
TARGET_RECONCILE_S = 2.0
# DaemonProcess.wait_ready_status polls /readyz this often.
POLL_MS = round(POLL_SECONDS * 1000)


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--restarts", type=int, help="server restarts (5)")
    parser.add_argument(
        "--down-seconds", type=float, help="how long the server stays down (2; quick: 0.5)"
    )
    parser.add_argument("--pending", type=int, help="pending sends to reconcile (1,000)")
    parser.add_argument("--repeat", type=int, help="daemon starts per reconcile case (3)")


def _stamp(entry: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(str(entry["timestamp"])).timestamp()


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }


_TIMELINE_KEYS = ("reason", "error", "attempt", "delay_seconds", "state", "handshakes")


def _timeline(
    entries: list[dict[str, Any]], stopped: float, back: float, ready: float
) -> list[str]:
    """The daemon's log lines from the stop to /readyz 200, timed from the server's return."""
    lines = []
    for entry in entries:
        at = _stamp(entry)
        if stopped <= at <= ready + 0.05:
            detail = ", ".join(f"{k}={str(entry[k])[:60]}" for k in _TIMELINE_KEYS if k in entry)
            lines.append(f"{at - back:+.3f} s {entry.get('event')} {detail}".rstrip())
    return lines


async def resubscription(restarts: int, down: float) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    windows: list[tuple[float, float, float]] = []  # stopped, back, ready (wall clock)
    with notifyd.workdir("recovery-a") as work:
        peer = peers.new_cometd_peer(gws_stub=peers.GwsStub(0))
        try:
            await peer.start()
            config = notifyd.daemon_config(work, gws_url=peer.base_url)
            async with notifyd.running_daemon(config, work) as daemon:
                await daemon.wait_ready_status(200, timeout=60)
                for number in range(1, restarts + 1):
                    await asyncio.sleep(1.0)  # subscribed for a while
                    stopped = time.perf_counter()
                    stopped_wall = time.time()
                    await peer.stop()
                    await daemon.wait_ready_status(503, timeout=60)
                    not_ready = time.perf_counter()
                    await asyncio.sleep(down)
                    starting = time.perf_counter()
                    await peer.start()  # same port: the peer keeps the one it got
                    back = time.perf_counter()
                    back_wall = time.time()
                    await daemon.wait_ready_status(200, timeout=60)
                    ready = time.perf_counter()
                    ready_wall = time.time()
                    run: dict[str, Any] = {
                        "restart": number,
                        "server_back_to_ready_s": round(ready - back, 3),
                        "server_start_s": round(back - starting, 3),
                        "stop_to_503_s": round(not_ready - stopped, 3),
                        "server_down_s": round(back - stopped, 3),
                    }
                    runs.append(run)
                    windows.append((stopped_wall, back_wall, ready_wall))
                    report.note(
                        f"  restart {number}: ready {run['server_back_to_ready_s']} s after"
                    )
                entries = daemon.read_logs()
                log = notifyd.log_summary(entries)
        finally:
            await peer.aclose()
    for run, window in zip(runs, windows, strict=True):
        run["daemon_log_timeline"] = _timeline(entries, *window)
    values = [float(r["server_back_to_ready_s"]) for r in runs]
    return {
        "restarts": restarts,
        "down_seconds": down,
        "runs": runs,
        "server_back_to_ready_s": _stats(values),
        "daemon_log": log,
    }


async def reconcile_once(pending: int, *, listed: bool) -> dict[str, Any]:
    with notifyd.workdir("recovery-b") as work:
        seeding.populate_store(work / "state.db", 1, pending)
        async with peers.cometd_peer(
            gws_stub=peers.GwsStub(pending, start=1, unlisted=not listed)
        ) as peer:
            config = notifyd.daemon_config(work, gws_url=peer.base_url)
            async with notifyd.running_daemon(config, work) as daemon:
                reconciled = await daemon.wait_log(notifyd.logged("reconciled"), timeout=120)
                stats = await peer.stats()
            entries = daemon.read_logs()
    subscribed = next(
        (e for e in entries if e.get("event") == "bayeux_subscribed"),
        next(e for e in entries if e.get("event") == "ready"),
    )
    return {
        "subscribed_to_reconciled_s": round(_stamp(reconciled) - _stamp(subscribed), 4),
        "reconciled_line_seconds": reconciled.get("seconds"),
        "reconciled_line": reconciled,
        "stub_requests": stats.get("gwsRequests"),
    }


async def main() -> None:
    args = report.parse_args(__doc__ or "", _options)
    restarts = args.restarts or (2 if args.quick else 5)
    down = args.down_seconds if args.down_seconds is not None else (0.5 if args.quick else 2.0)
    pending = args.pending or 1000
    repeat = args.repeat or (1 if args.quick else 3)

    report.note(f"recovery (a): {restarts} server restarts, down {down} s each")
    part_a = await resubscription(restarts, down)
    part_b: dict[str, Any] = {}
    for listed in (True, False):
        case = "listed" if listed else "unlisted"
        runs = []
        for _ in range(repeat):
            report.note(f"recovery (b): reconcile {pending:,} pending, {case}")
            runs.append(await reconcile_once(pending, listed=listed))
        part_b[case] = {
            "runs": runs,
            "subscribed_to_reconciled_s": _stats(
                [float(r["subscribed_to_reconciled_s"]) for r in runs]
            ),
            "reconciled_line_seconds": _stats([float(r["reconciled_line_seconds"]) for r in runs]),
        }

    worst_a = part_a["server_back_to_ready_s"]["max"]
    median_a = part_a["server_back_to_ready_s"]["median"]
    worst_b = max(part_b[c]["subscribed_to_reconciled_s"]["max"] for c in part_b)
    verdict = {
        "resubscribed_median_s": median_a,
        "resubscribed_max_s": worst_a,
        "target_resubscribed_s": TARGET_RESUBSCRIBED_S,
        "resubscribed_target_met_every_time": worst_a <= TARGET_RESUBSCRIBED_S,
        "reconcile_max_s": worst_b,
        "target_reconcile_s": TARGET_RECONCILE_S,
        "reconcile_target_met": worst_b <= TARGET_RECONCILE_S,
    }
    table_a = report.Table(
        f"(a) server back -> /readyz 200, s (down {down} s; polled every {POLL_MS} ms)",
        ["restart", "back -> ready", "stop -> 503", "node start"],
    )
    for run in part_a["runs"]:
        table_a.add(
            run["restart"],
            run["server_back_to_ready_s"],
            run["stop_to_503_s"],
            run["server_start_s"],
        )
    stats_a = part_a["server_back_to_ready_s"]
    table_a.add(
        "min / median / max",
        f"{stats_a['min']} / {stats_a['median']} / {stats_a['max']}",
        None,
        None,
    )
    table_b = report.Table(
        f"(b) reconcile {pending:,} pending sends, s ({repeat} daemon starts each)",
        [
            "stub lists the emails",
            "subscribed -> reconciled (min/med/max)",
            "line 'seconds' (min/med/max)",
            "GETs",
        ],
    )
    for case, section in part_b.items():
        a = section["subscribed_to_reconciled_s"]
        b = section["reconciled_line_seconds"]
        requests = section["runs"][-1]["stub_requests"] or {}
        table_b.add(
            "yes (one list request)" if case == "listed" else "no (one GET per email)",
            f"{a['min']} / {a['median']} / {a['max']}",
            f"{b['min']} / {b['median']} / {b['max']}",
            requests.get("getEmail"),
        )
    report.emit(
        "recovery",
        {
            "quick": args.quick,
            "method": {
                "a": f"server stopped (SIGTERM), /readyz polled every {POLL_MS} ms until 503, "
                f"server kept down {down} s, started again on the same port; the time from "
                f"reading its 'listening' line to the first /readyz 200 (resolution ~{POLL_MS} ms "
                "plus one request)",
                "b": "fresh store with the pending sends, fresh daemon; the timestamps of "
                "its bayeux_subscribed and reconciled log lines (structlog, microseconds), "
                "and the 'seconds' field of the reconciled line (its own measure: from the "
                "start of reconciliation)",
            },
            "resubscription": part_a,
            "reconcile": {"pending": pending, **part_b},
            "verdict": verdict,
        },
        [table_a, table_b],
    )


if __name__ == "__main__":
    asyncio.run(main())
