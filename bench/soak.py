"""Soak: minutes of Sends through the daemon with faults; RSS drift, re-deliveries, nothing lost.

    .venv/bin/python bench/soak.py [--quick] [--minutes M] [--rate R] [--fault-every S]

The simulator (`gws-notifyd simulate`) and the daemon run in processes of their own;
two webhook receivers run here, a slow one (~40 ms an answer) and a fast one, beside
the daemon's jsonl sink. Sends go out at R a second (20), each to a new email. Every S
seconds (a twelfth of the run, at least 10 and at most 60) comes one fault, in turn:

- a GWS session loss (`POST /control/forget`: sessions and Bayeux clients dropped);
- a webhook outage (one receiver down for OUTAGE_SECONDS, the slow and the fast in turn);
- a SIGHUP, with the slow webhook's `timeout_seconds` changed each time (so its worker
  hands over to a new one, the path where a rewind would show).

Afterwards every acknowledged Send (an answer carrying a `sendId`) must have an event
in every sink. Reported: the daemon's RSS after the warm-up (until the correlator's
10,000 recently resolved sends are held, or half the run) and its drift to the end
(target: flat within +/- 10 %), same-id re-deliveries per webhook by the fault they
followed, and what is missing (target: 0). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import measure
import notifyd
import orjson
import peers
import psutil
import report
from basics import BenchError

from tests.harness.daemon_process import DaemonProcess, read_jsonl, send_body, write_config
from tests.harness.webhook_receiver import free_port

TARGET_DRIFT_PERCENT = 10.0
SLOW_SECONDS = 0.04
OUTAGE_SECONDS = 10.0
FAULTS = ("session_loss", "webhook_outage", "sighup")
SETTLE_TIMEOUT = 180.0
# RSS gained within this long after a fault is put down to it (a reconcile, a backlog).
FAULT_EFFECT_SECONDS = 10.0
RECENT_SENDS = 10_000  # daemon.correlator.Correlator's recent_capacity


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, help="length of the run (30; --quick: 1)")
    parser.add_argument("--rate", type=float, default=20.0, help="Sends a second (20)")
    parser.add_argument(
        "--fault-every", type=float, help="seconds between two faults (run / 12, 10 to 60)"
    )


# -- the webhooks ------------------------------------------------------------------------


@dataclass
class Receiver:
    """POST /hook on a port of its own: answers 200 after `delay`, records what it took."""

    name: str
    delay: float = 0.0
    port: int = field(default_factory=free_port)
    taken: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, event id)
    send_ids: set[str] = field(default_factory=set)
    _runner: aiohttp.web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        body = await request.read()
        if self.delay:
            await asyncio.sleep(self.delay)  # the receiver's own pace
        self.taken.append((time.monotonic(), request.headers["Idempotency-Key"]))
        send = orjson.loads(body)["data"].get("send")
        if send:
            self.send_ids.add(send["sendId"])
        return aiohttp.web.Response(status=200)

    async def start(self) -> None:
        app = aiohttp.web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = aiohttp.web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await aiohttp.web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def duplicates(self) -> list[tuple[float, str]]:
        """(time, id) of every delivery of an id taken before."""
        seen: set[str] = set()
        again = []
        for at, event_id in self.taken:
            if event_id in seen:
                again.append((at, event_id))
            seen.add(event_id)
        return again


# -- the run -------------------------------------------------------------------------------


@dataclass
class Load:
    """Sends at a steady rate; what each answer said."""

    api: str
    acknowledged: set[str] = field(default_factory=set)
    answers: dict[str, int] = field(default_factory=dict)
    numbers: itertools.count[int] = field(default_factory=itertools.count)

    async def one(self, http: aiohttp.ClientSession) -> None:
        email_id = f"SOAK-{next(self.numbers):07d}"
        try:
            async with http.post(
                f"{self.api}/api/v2/me/emails/{email_id}", json=send_body()
            ) as response:
                answer = await response.json(content_type=None)
                key = f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            answer, key = None, type(exc).__name__
        self.answers[key] = self.answers.get(key, 0) + 1
        if isinstance(answer, dict) and isinstance(answer.get("sendId"), str):
            self.acknowledged.add(answer["sendId"])

    async def run(self, rate: float, until: float) -> None:
        tasks: set[asyncio.Task[None]] = set()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            next_at = time.monotonic()
            while next_at < until:
                task = asyncio.create_task(self.one(http))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                next_at += 1.0 / rate
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))  # pacing the load
            await asyncio.gather(*tasks)


@dataclass
class Faults:
    """One fault every so often, in turn; when each began."""

    simulator_url: str
    daemon: DaemonProcess
    receivers: tuple[Receiver, Receiver]
    config: Path
    outage: float
    log: list[tuple[float, str]] = field(default_factory=list)  # (monotonic time, kind)
    _outages: set[asyncio.Task[None]] = field(default_factory=set)
    _timeout: int = 10

    async def inject(self, number: int) -> None:
        kind = FAULTS[number % len(FAULTS)]
        self.log.append((time.monotonic(), kind))
        report.note(f"soak: fault {number + 1}, {kind}")
        if kind == "session_loss":
            async with (
                aiohttp.ClientSession() as http,
                http.post(self.simulator_url + "/control/forget") as response,
            ):
                await response.read()
        elif kind == "webhook_outage":
            receiver = self.receivers[(number // len(FAULTS)) % len(self.receivers)]
            task = asyncio.create_task(self._outage(receiver))
            self._outages.add(task)
            task.add_done_callback(self._outages.discard)
        else:
            self._timeout = 21 - self._timeout  # 10 <-> 11: the slow sink's settings change
            write_daemon_config(
                self.config.parent, self.simulator_url, self.receivers, self._timeout
            )
            await self.daemon.signal(signal.SIGHUP)

    async def _outage(self, receiver: Receiver) -> None:
        await receiver.stop()
        await asyncio.sleep(self.outage)  # the length of the outage
        await receiver.start()

    async def run(self, every: float, until: float) -> None:
        for number in itertools.count():
            await asyncio.sleep(every)  # the time between two faults
            if time.monotonic() >= until:
                break
            await self.inject(number)
        await asyncio.gather(*self._outages)

    def before(self, at: float) -> str:
        """The kind of the last fault before `at` ("none" before the first)."""
        kind = "none"
        for started, name in self.log:
            if started > at:
                break
            kind = name
        return kind

    def kind_between(self, start: float, end: float) -> str | None:
        """The kind of the last fault begun between `start` and `end`, if any."""
        kinds = [kind for began, kind in self.log if start <= began <= end]
        return kinds[-1] if kinds else None

    def counts(self) -> dict[str, int]:
        return {kind: sum(1 for _, k in self.log if k == kind) for kind in FAULTS}


def write_daemon_config(
    work: Path, simulator_url: str, receivers: tuple[Receiver, Receiver], slow_timeout: int = 10
) -> Path:
    slow, fast = receivers
    webhook: dict[str, Any] = {"type": "webhook", "backoff_max_seconds": 2.0}
    return write_config(
        work,
        gws_url=simulator_url,
        sinks=[
            {"name": "archive", "type": "jsonl", "path": str(notifyd.sink_path(work))},
            {"name": "slow", "url": slow.url, "timeout_seconds": slow_timeout, **webhook},
            {"name": "fast", "url": fast.url, "timeout_seconds": 10, **webhook},
        ],
        gws={"request_timeout_seconds": 10},
        correlation={"send_timeout_seconds": 30},
        service={"shutdown_timeout_seconds": 20},
        logging={"level": "info", "format": "json"},
    )


async def sample_rss(meter: measure.CpuMeter, every: float, out: list[tuple[float, float]]) -> None:
    """The daemon's RSS (MB) every `every` s, with the time (monotonic) of each sample."""
    while True:
        with contextlib.suppress(psutil.Error):
            out.append((time.monotonic(), meter.rss_mb()))
        await asyncio.sleep(every)  # the sampling period


def jsonl_send_ids(path: Path) -> set[str]:
    return {e["data"]["send"]["sendId"] for e in read_jsonl(path) if e["data"].get("send")}


async def settle(load: Load, work: Path, receivers: tuple[Receiver, Receiver]) -> dict[str, int]:
    """Wait (bounded) for an event of every acknowledged send in every sink; what is missing."""
    slow, fast = receivers
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        seen = {
            "archive": jsonl_send_ids(notifyd.sink_path(work)),
            "slow": slow.send_ids,
            "fast": fast.send_ids,
        }
        missing = {name: len(load.acknowledged - ids) for name, ids in seen.items()}
        if not any(missing.values()) or time.monotonic() > deadline:
            return missing
        await asyncio.sleep(1.0)  # polling the sinks


# -- figures -------------------------------------------------------------------------------


def rss_figures(
    samples: list[tuple[float, float]], warm_up: float, faults: Faults
) -> dict[str, Any]:
    began = samples[0][0]
    after = [(at, mb) for at, mb in samples if at - began >= warm_up]
    if not after:
        raise BenchError("no RSS sample after the warm-up")
    start, end = after[0][1], after[-1][1]
    return {
        "warm_up_seconds": round(warm_up),
        "after_warm_up_mb": round(start, 1),
        "end_mb": round(end, 1),
        "max_mb": round(max(mb for _, mb in after), 1),
        "drift_percent": round(100 * (end - start) / start, 1),
        "target_percent": TARGET_DRIFT_PERCENT,
        "met": abs(end - start) / start * 100 <= TARGET_DRIFT_PERCENT,
        "growth_by_cause_mb": {
            "whole run": growth_by_cause(samples, faults, began),
            "after warm-up": growth_by_cause(after, faults, after[0][0]),
        },
        "samples": [(round(at - began), round(mb, 1)) for at, mb in samples],
    }


def growth_by_cause(
    samples: list[tuple[float, float]], faults: Faults, since: float
) -> dict[str, float]:
    """RSS change between consecutive samples, by the fault begun shortly before, or "steady"."""
    out = dict.fromkeys(("steady", *FAULTS), 0.0)
    for (before, low), (at, high) in itertools.pairwise(samples):
        if before >= since:
            out[faults.kind_between(before - FAULT_EFFECT_SECONDS, at) or "steady"] += high - low
    return {kind: round(mb, 1) for kind, mb in out.items()}


def redelivery_figures(faults: Faults, receivers: tuple[Receiver, ...]) -> dict[str, Any]:
    counts = faults.counts()
    out: dict[str, Any] = {}
    for receiver in receivers:
        by_fault: dict[str, int] = dict.fromkeys(("none", *FAULTS), 0)
        for at, _ in receiver.duplicates():
            by_fault[faults.before(at)] += 1
        out[receiver.name] = {
            "deliveries": len(receiver.taken),
            "same_id_redeliveries": sum(by_fault.values()),
            "after_fault": by_fault,
            "per_fault": {
                k: round(by_fault[k] / counts[k], 1) if counts[k] else None for k in FAULTS
            },
        }
    return out


def tables_of(result: dict[str, Any]) -> list[report.Table]:
    run = report.Table("soak: the run", ["what", "value"])
    run.add("minutes", result["minutes"])
    run.add("Sends attempted", result["sends"]["attempted"])
    run.add("Sends acknowledged (with a sendId)", result["sends"]["acknowledged"])
    for answer, count in sorted(result["sends"]["answers"].items()):
        run.add(f"  answered {answer}", count)
    for kind, count in result["faults"].items():
        run.add(f"faults: {kind}", count)
    rss = result["rss"]
    memory = report.Table(
        "soak: daemon RSS", ["after warm-up MB", "end MB", "max MB", "drift %", "target", "met"]
    )
    memory.add(
        rss["after_warm_up_mb"],
        rss["end_mb"],
        rss["max_mb"],
        rss["drift_percent"],
        f"+/- {rss['target_percent']:g} %",
        "yes" if rss["met"] else "NO",
    )
    causes = report.Table(
        "soak: RSS change by what came before it (MB)", ["span", "steady", *FAULTS]
    )
    for span, growth in rss["growth_by_cause_mb"].items():
        causes.add(span, growth["steady"], *(growth[k] for k in FAULTS))
    again = report.Table(
        "soak: same-id re-deliveries by the fault they followed",
        ["webhook", "deliveries", "re-deliveries", *(f"per {k}" for k in FAULTS), "before any"],
    )
    for name, figures in result["redeliveries"].items():
        again.add(
            name,
            figures["deliveries"],
            figures["same_id_redeliveries"],
            *(figures["per_fault"][k] for k in FAULTS),
            figures["after_fault"]["none"],
        )
    missing = report.Table(
        "soak: acknowledged Sends without an event", ["sink", "missing", "target"]
    )
    for name, count in result["missing"].items():
        missing.add(name, count, 0)
    return [run, memory, causes, again, missing]


# -- main ----------------------------------------------------------------------------------


@dataclass
class Plan:
    minutes: float
    rate: float
    fault_every: float
    outage: float
    warm_up: float
    sample_every: float


def plan_of(args: argparse.Namespace) -> Plan:
    minutes = args.minutes or (1.0 if args.quick else 30.0)
    # Every kind of fault at least four times, and not more often than every 10 s.
    fault_every = args.fault_every or min(60.0, max(10.0, minutes * 60 / 12))
    # Until the correlator holds its 10,000 recently resolved sends (8.3 min at
    # 20/s) its memory grows by design; the drift is measured after that, or
    # after half the run when the run is shorter (then that fill is part of it).
    warm_up = min(max(20.0, RECENT_SENDS / args.rate), minutes * 60 / 2)
    if minutes * 60 < 40:
        raise BenchError("a run needs at least 40 s: raise --minutes")
    return Plan(
        minutes=minutes,
        rate=args.rate,
        fault_every=fault_every,
        outage=min(OUTAGE_SECONDS, fault_every / 2),
        warm_up=warm_up,
        sample_every=2.0 if minutes <= 5 else 5.0,
    )


async def soak(
    plan: Plan, work: Path, simulator_url: str, receivers: tuple[Receiver, Receiver]
) -> dict[str, Any]:
    config = write_daemon_config(work, simulator_url, receivers)
    async with notifyd.running_daemon(config, work) as daemon:
        await daemon.wait_ready_status(200, timeout=60)
        load = Load(daemon.api)
        faults = Faults(simulator_url, daemon, receivers, config, plan.outage)
        samples: list[tuple[float, float]] = []
        sampler = asyncio.create_task(
            sample_rss(measure.CpuMeter(daemon.pid), plan.sample_every, samples)
        )
        until = time.monotonic() + plan.minutes * 60
        report.note(
            f"soak: {plan.minutes:g} min, {plan.rate:g}/s, faults every {plan.fault_every:g} s"
        )
        await asyncio.gather(load.run(plan.rate, until), faults.run(plan.fault_every, until))
        report.note(f"soak: {len(load.acknowledged):,} Sends acknowledged; waiting for every event")
        missing = await settle(load, work, receivers)
        sampler.cancel()
        log = notifyd.log_summary(daemon.read_logs())
    return {
        "minutes": plan.minutes,
        "rate_per_s": plan.rate,
        "fault_every_seconds": plan.fault_every,
        "outage_seconds": plan.outage,
        "sends": {
            "attempted": next(load.numbers),
            "acknowledged": len(load.acknowledged),
            "answers": load.answers,
        },
        "faults": faults.counts(),
        "rss": rss_figures(samples, plan.warm_up, faults),
        "redeliveries": redelivery_figures(faults, receivers),
        "missing": missing,
        "log": log,
    }


async def main() -> None:
    args = report.parse_args(__doc__ or "", _options)
    plan = plan_of(args)
    receivers = (Receiver("slow", delay=SLOW_SECONDS), Receiver("fast"))
    with notifyd.workdir("soak") as work:
        for receiver in receivers:
            await receiver.start()
        try:
            async with peers.simulator_process(notify_delay="0.02") as simulator:
                result = await soak(plan, work, simulator.base_url, receivers)
        finally:
            for receiver in receivers:
                await receiver.stop()
    report.emit("soak", result, tables_of(result))


if __name__ == "__main__":
    asyncio.run(main())
