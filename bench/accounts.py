"""Scale: one daemon, 1,000 GWS accounts, against the simulator in a process of its own.

    .venv/bin/python bench/accounts.py [--quick] [--accounts N] [--idle-seconds S]
                                       [--sends K] [--pending P] [--down-seconds D]
                                       [--term] [--seed X] [--profile]

1. `gws-notifyd simulate --agents N`; the daemon (a subprocess) with N `[[gws.accounts]]`
   (agent-0001 …, one shared password_file): process start -> /readyz 200 (every
   account subscribed), and the simulator's most handshakes within one second.
2. The daemon's RSS then, and its CPU over S s (30: longer than one 25 s long-poll
   cycle) with N long-polls parked and nothing else asked of anyone.
3. One Send through each of K random accounts (100): correlated events in the sink
   (the right account and sendId), and send -> sink-written latency.
4. P sends (100) through random accounts that the simulator takes and never notifies
   (pending); the simulator killed (SIGKILL; --term: SIGTERM) and D s later started
   again on the same port. Simulator back -> /readyz 200, and -> every account with a
   pending send has logged `reconciled` (and the sends are resolved); the most
   handshakes within one second at the new simulator.

A simulator started again has lost the emails that GWS keeps in its database, so the
daemon reaches the simulator through a gate (`Gate`, a TCP forwarder in this process)
that refuses connections while the simulator is down and until those emails are back
in the new one, Sent as they were; "simulator back" is the gate opening.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import measure
import notifyd
import peers
import profiling
import psutil
import report
import stats
from basics import HOST, BenchError

from daemon.gws.session import basic_authorization
from daemon.simulator.agents import generated_name
from tests.harness.daemon_process import SIM_PASSWORD, DaemonProcess, send_body
from tests.harness.webhook_receiver import free_port

TARGET_SUBSCRIBED_S: Final = 30.0
TARGET_RSS_MB: Final = 400.0
TARGET_IDLE_CPU_PERCENT: Final = 10.0
TARGET_RECOVERED_S: Final = 60.0
TARGET_HANDSHAKES_PER_S: Final = 200
LONG_POLL_S: Final = 25.0  # the simulator's default long_poll_timeout_ms
DAEMON_PACE: Final = 100  # gws.handshakes_per_second's default: logins + handshakes a second
READY_POLL_S: Final = 0.1
SETTLE_S: Final = 3.0  # after /readyz 200, before the idle window: the last connects go out
SEND_GAP_S: Final = 0.02  # Sends go out one every 20 ms (50/s), each without waiting
STATE_CHANGED: Final = "gws.email.state_changed"
# The daemon's entry point: in every stack, it says nothing.
_ENTRY_FILES: Final = ("(daemon/__main__.py:", "(daemon/cli.py:")


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--accounts", type=int, help="GWS accounts (1,000; --quick: 50)")
    parser.add_argument(
        "--idle-seconds", type=float, help="idle CPU window (30; --quick: 10, under a cycle)"
    )
    parser.add_argument("--sends", type=int, help="Sends, one per random account (100)")
    parser.add_argument("--pending", type=int, help="pending sends at the restart (100)")
    parser.add_argument(
        "--down-seconds", type=float, help="simulator down before it starts again (2)"
    )
    parser.add_argument(
        "--term", action="store_true", help="stop the simulator with SIGTERM, not SIGKILL"
    )
    parser.add_argument("--seed", type=int, default=1, help="picks the random accounts (1)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the daemon during the start and the restart waves: "
        "bench/results/accounts-{start,restart}.folded",
    )


@dataclass(frozen=True)
class Plan:
    accounts: int
    idle_seconds: float
    sends: int
    pending: int
    down_seconds: float
    harsh: bool
    seed: int
    profile: bool

    @property
    def names(self) -> list[str]:
        """The accounts, named as the simulator's users: agent-0001 …"""
        return [generated_name(n) for n in range(1, self.accounts + 1)]


def plan_of(args: argparse.Namespace) -> Plan:
    accounts = args.accounts or (50 if args.quick else 1000)
    if not 1 <= accounts <= 9999:
        raise BenchError("--accounts: 1 to 9,999 (the simulator's agent-NNNN)")
    idle = args.idle_seconds or (10.0 if args.quick else 30.0)
    return Plan(
        accounts=accounts,
        idle_seconds=idle,
        sends=min(args.sends or 100, accounts),
        pending=min(args.pending or 100, accounts),
        down_seconds=args.down_seconds if args.down_seconds is not None else 2.0,
        harsh=not args.term,
        seed=args.seed,
        profile=args.profile,
    )


# -- the simulator, and the gate in front of it ---------------------------------------------


class Gate:
    """A TCP forwarder on a port of its own to the simulator's port; closed, it refuses.

    Closing aborts every connection through it and stops listening (connect: refused,
    as to a GWS that is down); opening listens again on the same port.
    """

    def __init__(self, upstream_port: int) -> None:
        self.port = free_port()
        self._upstream = upstream_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.connections = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def open(self) -> None:
        self._server = await asyncio.start_server(
            self._connection, HOST, self.port, reuse_address=True
        )

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self._upstream)
        except OSError:
            writer.transport.abort()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._writers.discard(writer)
            self._writers.discard(up_writer)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Bytes from `reader` to `writer`; an end passes on as an end, a reset as a reset."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        writer.transport.abort()
    else:
        writer.close()


@dataclass
class Simulator:
    """The simulator's process on a port of its own (it may be started again there)."""

    log_path: Path
    agents: int
    port: int = field(default_factory=free_port)
    process: asyncio.subprocess.Process | None = None
    http: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        self.process = await peers.start_simulator(
            self.port, log_path=self.log_path, agents=str(self.agents)
        )

    async def stop(self, *, harsh: bool) -> int:
        """SIGKILL (harsh: a crash) or SIGTERM; its exit code."""
        process, self.process = self.process, None
        if process is None:
            return 0
        if harsh and process.returncode is None:
            process.kill()
            return await process.wait()
        return await peers.stop_process(process)

    async def control(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """A call to its control API (/control/...), JSON in and out."""
        if self.http is None:
            self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        async with self.http.request(method, self.url + path, json=body) as response:
            answer: dict[str, Any] = await response.json(content_type=None)
            if response.status != 200:
                raise BenchError(f"simulator {method} {path}: HTTP {response.status} {answer}")
            return answer

    async def stats(self) -> dict[str, Any]:
        return await self.control("GET", "/control/stats")

    async def close(self) -> None:
        await self.stop(harsh=False)
        if self.http is not None:
            await self.http.close()


async def put_back(simulator: Simulator, emails: Sequence[tuple[str, str]]) -> None:
    """Each (user, email id) Sent again as its user in a new simulator (no notification):
    the emails GWS would have kept across its restart."""
    ids = [email_id for _, email_id in emails]
    await simulator.control("POST", "/control/settings", {"drop_emails": ids})
    limit = asyncio.Semaphore(20)

    async def one(username: str, email_id: str) -> None:
        async with (
            limit,
            aiohttp.ClientSession(
                headers={"Authorization": basic_authorization(username, SIM_PASSWORD)},
                cookie_jar=aiohttp.CookieJar(unsafe=True),  # cookies of 127.0.0.1
            ) as http,
        ):
            async with http.get(simulator.url + "/api/v2/me") as response:
                await response.read()
                token = {"X-CSRF-TOKEN": response.headers.get("X-CSRF-TOKEN", "")}
            async with http.post(
                f"{simulator.url}/api/v2/me/emails/{email_id}", json=send_body(), headers=token
            ) as response:
                if response.status != 200:
                    raise BenchError(f"put back {email_id}: HTTP {response.status}")

    await asyncio.gather(*(one(user, email_id) for user, email_id in emails))


# -- what is observed ---------------------------------------------------------------------


@dataclass
class RssSampler:
    """The daemon's RSS every `every` s in the background (psutil reads /proc: the
    daemon is not woken)."""

    meter: measure.CpuMeter
    every: float = 0.5
    peak_mb: float = 0.0
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(psutil.Error):
                self.peak_mb = max(self.peak_mb, self.meter.rss_mb())
            await asyncio.sleep(self.every)  # the sampling period

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class CpuWindow:
    """CPU of several processes over one window, as % of one core: the daemon, the
    simulator, and this process (its gate forwards every byte between those two)."""

    def __init__(self, **pids: int) -> None:
        self._meters = {name: measure.CpuMeter(pid) for name, pid in pids.items()}
        self.wall = 0.0

    def start(self) -> None:
        for meter in self._meters.values():
            meter.start()

    def stop(self) -> dict[str, float]:
        percent = {}
        for name, meter in self._meters.items():
            cpu, self.wall = meter.stop()
            percent[name] = _percent(cpu, self.wall)
        return percent


async def wait_ready(
    daemon: DaemonProcess, simulator: Simulator, *, timeout: float, what: str
) -> float | None:
    """Poll /readyz until 200: seconds waited, or None after `timeout`. Progress (the
    simulator's subscribed users) every 2 s on stderr."""
    began = time.perf_counter()
    next_note = began + 2.0
    while True:
        process = daemon.process
        if process is not None and process.returncode is not None:
            raise BenchError(f"the daemon exited with {process.returncode} ({what})")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            if (await daemon.readyz())[0] == 200:
                return time.perf_counter() - began
        now = time.perf_counter()
        if now - began > timeout:
            return None
        if now >= next_note:
            subscribed = (await simulator.stats())["users_subscribed"]
            report.note(f"  {what}: {subscribed:,} users subscribed at the simulator")
            next_note += 2.0
        await asyncio.sleep(READY_POLL_S)  # the /readyz poll period


def _stamp(entry: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(str(entry["timestamp"])).timestamp()


def _percent(cpu: float, wall: float) -> float:
    return round(100 * cpu / wall, 1) if wall else 0.0


@contextlib.asynccontextmanager
async def profiled(plan: Plan, pid: int, name: str, out: dict[str, Any]) -> AsyncIterator[None]:
    """py-spy on the daemon within the block (with --profile); its summary to out[name]."""
    profiler = profiling.start_profiler(pid if plan.profile else None, f"accounts-{name}")
    try:
        yield
    finally:
        summary = profiling.stop_profiler(profiler)
        if summary is not None:
            out[name] = summary


# -- the phases ------------------------------------------------------------------------------


async def start_wave(
    plan: Plan, daemon: DaemonProcess, simulator: Simulator, began: float, others: CpuWindow
) -> dict[str, Any]:
    """Process start -> /readyz 200; the handshake pace the simulator saw. `others`: the
    simulator's and this process's CPU, started with the daemon."""
    waited = await wait_ready(daemon, simulator, timeout=120.0, what="start")
    ready_s = time.perf_counter() - began
    sim = await simulator.stats()
    if waited is None:
        status = await account_states(daemon)
        raise BenchError(
            f"not every account subscribed 120 s after start: {status}; simulator: "
            f"{sim['users_subscribed']} users subscribed, {sim['handshakes']} handshakes"
        )
    cpu = psutil.Process(daemon.pid).cpu_times()  # all of it: the window is its life
    return {
        "start_to_ready_s": round(ready_s, 2),
        "pace_floor_s": round(plan.accounts / DAEMON_PACE, 2),
        "handshakes": sim["handshakes"],
        "handshakes_max_per_second": sim["handshakes_max_per_second"],
        "login_attempts": sim["loginAttempts"],
        "users_subscribed": sim["users_subscribed"],
        "cpu_percent": {"daemon": _percent(cpu.user + cpu.system, ready_s), **others.stop()},
    }


async def account_states(daemon: DaemonProcess) -> dict[str, int]:
    """How many accounts are in each state, by /v1/status."""
    _, status = await daemon.get_json("/v1/status")
    return dict(Counter(str(a.get("state")) for a in status.get("accounts", [])))


async def idle_window(plan: Plan, daemon: DaemonProcess, simulator: Simulator) -> dict[str, Any]:
    """The daemon's CPU with every long-poll parked and nothing asked of it."""
    await asyncio.sleep(SETTLE_S)  # the start's last requests are answered
    meter = measure.CpuMeter(daemon.pid)
    rss_mb = meter.rss_mb()
    before = await simulator.stats()
    sim_meter = measure.CpuMeter(simulator.pid)
    meter.start()
    sim_meter.start()
    psutil.cpu_percent(None)
    await asyncio.sleep(plan.idle_seconds)  # the idle window itself
    cpu, wall = meter.stop()
    sim_cpu, _ = sim_meter.stop()
    machine = psutil.cpu_percent(None)
    after = await simulator.stats()
    posts = after["bayeuxPosts"] - before["bayeuxPosts"]
    return {
        "rss_all_subscribed_mb": round(rss_mb, 1),
        "seconds": round(wall, 2),
        "daemon_cpu_s": round(cpu, 3),
        "daemon_cpu_percent": _percent(cpu, wall),
        "simulator_cpu_percent": _percent(sim_cpu, wall),
        "machine_cpu_percent_of_all_cores": machine,
        "bayeux_posts": posts,
        "bayeux_posts_per_account": round(posts / plan.accounts, 2),
        "handshakes": after["handshakes"] - before["handshakes"],
        "rss_after_mb": round(meter.rss_mb(), 1),
    }


@dataclass
class Sent:
    account: str
    email_id: str
    posted_at: float  # time.time() as the POST went out
    status: int
    send_id: str | None


async def send_through(daemon: DaemonProcess, pairs: Sequence[tuple[str, str]]) -> list[Sent]:
    """One Send per (account, email id) through the daemon, one every SEND_GAP_S."""

    async def one(number: int, account: str, email_id: str) -> Sent:
        await asyncio.sleep(number * SEND_GAP_S)  # pacing: each goes out in its turn
        posted = time.time()
        try:
            status, answer = await daemon.send(email_id, account=account)
        except (aiohttp.ClientError, TimeoutError):
            status, answer = 0, {}
        send_id = answer.get("sendId") if status == 200 else None
        return Sent(
            account, email_id, posted, status, send_id if isinstance(send_id, str) else None
        )

    return list(await asyncio.gather(*(one(n, a, e) for n, (a, e) in enumerate(pairs))))


def correlated(
    sent: Sequence[Sent], events: Sequence[tuple[float, dict[str, Any]]], *, reconciled: bool
) -> dict[str, float]:
    """sendId -> seconds from the Send to its line in the sink, for every event that
    names the send's account and sendId (read back by GET when `reconciled`)."""
    by_id = {s.send_id: s for s in sent if s.send_id is not None}
    found: dict[str, float] = {}
    for seen, event in events:
        data = event.get("data") or {}
        send_id = (data.get("send") or {}).get("sendId")
        send = by_id.get(send_id) if isinstance(send_id, str) else None
        if (
            send is not None
            and isinstance(send_id, str)
            and send_id not in found
            and event.get("type") == STATE_CHANGED
            and data.get("correlated") is True
            and data.get("reconciled") is reconciled
            and data.get("account") == send.account
        ):
            found[send_id] = seen - send.posted_at
    return found


async def sends_phase(
    plan: Plan, daemon: DaemonProcess, work: Path, rng: random.Random
) -> dict[str, Any]:
    """A Send through each of `plan.sends` random accounts; the correlated events."""
    pairs = [(a, f"SCALE-SEND-{n:05d}") for n, a in enumerate(rng.sample(plan.names, plan.sends))]
    tailer = measure.SinkTailer(notifyd.sink_path(work))
    tailer.skip_existing()
    tailer.start()
    try:
        sent = await send_through(daemon, pairs)
        accepted = [s for s in sent if s.send_id is not None]
        await tailer.wait_lines(len(accepted), timeout=60, idle=15)
    finally:
        tailer.stop()
    found = correlated(sent, tailer.events(), reconciled=False)
    return {
        "sends": len(sent),
        "accepted": len(accepted),
        "answers": dict(Counter(f"HTTP {s.status}" for s in sent)),
        "correlated": len(found),
        "sink_lines": tailer.lines,
        "send_to_sink_ms": stats.summarize(list(found.values()), scale=1000, digits=1),
        "tailer_poll_ms": round(tailer.poll_period * 1000, 2),
    }


async def make_pending(
    plan: Plan, daemon: DaemonProcess, simulator: Simulator, rng: random.Random
) -> list[Sent]:
    """Sends GWS takes (Sent) and never notifies: pending in the daemon."""
    pairs = [
        (a, f"SCALE-PENDING-{n:05d}") for n, a in enumerate(rng.sample(plan.names, plan.pending))
    ]
    ids = [email_id for _, email_id in pairs]
    await simulator.control("POST", "/control/settings", {"drop_emails": ids})
    sent = await send_through(daemon, pairs)
    refused = [s for s in sent if s.send_id is None]
    if refused:
        raise BenchError(f"{len(refused)} of the sends to be left pending were not accepted")
    _, listed = await daemon.get_json("/v1/sends?state=pending&limit=10000")
    if listed.get("count") != len(sent):
        raise BenchError(f"pending before the restart: {listed.get('count')}, not {len(sent)}")
    return sent


@dataclass
class Restart:
    """What happened around the simulator's restart (perf_counter and wall times)."""

    stopped: float = 0.0
    not_ready: float = 0.0
    simulator_up: float = 0.0
    put_back: float = 0.0
    back: float = 0.0
    back_wall: float = 0.0
    ready_s: float | None = None
    resolved_in_sink_s: float | None = None
    figures: dict[str, Any] = field(default_factory=dict)


async def restart_wave(
    plan: Plan,
    daemon: DaemonProcess,
    simulator: Simulator,
    gate: Gate,
    pending: Sequence[Sent],
    work: Path,
    profile: dict[str, Any],
) -> Restart:
    """Kill the simulator, start it again on its port, open the gate: the wave that follows."""
    times = Restart()
    tailer = measure.SinkTailer(notifyd.sink_path(work), interval=0.01)
    tailer.skip_existing()
    tailer.start()
    outage = CpuWindow(daemon=daemon.pid, bench=os.getpid())
    try:
        async with profiled(plan, daemon.pid, "restart", profile):
            outage.start()
            times.stopped = time.perf_counter()
            await gate.close()
            exit_code = await simulator.stop(harsh=plan.harsh)
            await daemon.wait_ready_status(503, timeout=30)
            times.not_ready = time.perf_counter()
            await asyncio.sleep(plan.down_seconds)  # GWS down, as while it restarts
            await simulator.start()
            times.simulator_up = time.perf_counter()
            await put_back(simulator, [(s.account, s.email_id) for s in pending])
            times.put_back = time.perf_counter()
            wave = CpuWindow(daemon=daemon.pid, simulator=simulator.pid, bench=os.getpid())
            outage_cpu = outage.stop()
            wave.start()
            await gate.open()
            times.back, times.back_wall = time.perf_counter(), time.time()
            times.ready_s = await wait_ready(
                daemon, simulator, timeout=2 * TARGET_RECOVERED_S, what="restart"
            )
            if await tailer.wait_lines(len(pending), timeout=2 * TARGET_RECOVERED_S, idle=30):
                times.resolved_in_sink_s = round(tailer.last_seen - times.back_wall, 3)
            wave_cpu = wave.stop()
    finally:
        tailer.stop()
    sim = await simulator.stats()
    times.figures = {
        "simulator_exit_code": exit_code,
        "stop_to_503_s": round(times.not_ready - times.stopped, 3),
        "down_s": round(times.back - times.stopped, 2),
        "put_back_s": round(times.put_back - times.simulator_up, 3),
        "handshakes": sim["handshakes"],
        "handshakes_max_per_second": sim["handshakes_max_per_second"],
        "login_attempts": sim["loginAttempts"] - len(pending),  # without put_back's
        "users_subscribed": sim["users_subscribed"],
        "cpu_percent_while_down": outage_cpu,
        "cpu_percent": wave_cpu,
        "wave_wall_s": round(wave.wall, 2),
        "resolved_in_sink": len(correlated(pending, tailer.events(), reconciled=True)),
    }
    return times


def log_pace(entries: Sequence[dict[str, Any]], since: float, until: float) -> dict[str, Any]:
    """From the daemon's log between two wall-clock times: the most logins and
    subscriptions within one second, and how far its Bayeux retries lagged behind the
    delays they planned (a loop behind its timers releases paced turns together)."""
    per_second: dict[str, Counter[int]] = {
        "gws_logged_in": Counter(),
        "bayeux_subscribed": Counter(),
    }
    planned: list[float] = []
    gaps: list[float] = []
    last_retry: dict[str, tuple[float, float]] = {}  # account -> (at, planned delay)
    for entry in entries:
        at = _stamp(entry) if "timestamp" in entry else 0.0
        if not since <= at <= until:
            continue
        event = str(entry.get("event"))
        if event in per_second:
            per_second[event][int(at)] += 1
        elif event == "bayeux_retry":
            account, delay = str(entry.get("account")), float(entry.get("delay_seconds", 0))
            if account in last_retry:
                before, before_delay = last_retry[account]
                planned.append(before_delay)
                gaps.append(at - before)
            last_retry[account] = (at, delay)
    return {
        "logins_max_per_second": max(per_second["gws_logged_in"].values(), default=0),
        "subscribed_max_per_second": max(per_second["bayeux_subscribed"].values(), default=0),
        "bayeux_retries": len(planned) + len(last_retry),
        "retry_planned_delay_median_s": stats.summarize(planned).get("p50"),
        "retry_gap_median_s": stats.summarize(gaps).get("p50"),
    }


def reconciled_after(
    entries: Sequence[dict[str, Any]], pending: Sequence[Sent], back_wall: float
) -> dict[str, Any]:
    """From the daemon's log: each pending account's first `reconciled` line after the
    simulator was back, and every account's resubscriptions then."""
    accounts = {s.account for s in pending}
    first: dict[str, dict[str, Any]] = {}
    subscribed: dict[str, float] = {}
    window: Counter[str] = Counter()
    for entry in entries:
        if "timestamp" not in entry or _stamp(entry) < back_wall:
            continue
        event, account = str(entry.get("event")), str(entry.get("account"))
        window[event] += 1
        if event == "reconciled" and account in accounts and account not in first:
            first[account] = entry
        elif event == "bayeux_subscribed":
            subscribed[account] = _stamp(entry)
    last = max((_stamp(e) for e in first.values()), default=None)
    return {
        "accounts_with_pending": len(accounts),
        "accounts_reconciled": len(first),
        "pending_in_their_lines": sum(int(e.get("pending", 0)) for e in first.values()),
        "resolved_in_their_lines": sum(int(e.get("resolved", 0)) for e in first.values()),
        "back_to_all_reconciled_s": None if last is None else round(last - back_wall, 3),
        "accounts_resubscribed": len(subscribed),
        "back_to_last_resubscribed_s": (
            round(max(subscribed.values()) - back_wall, 3) if subscribed else None
        ),
        "daemon_log_lines_by_event": dict(window.most_common(12)),
    }


# -- the verdict ------------------------------------------------------------------------------


def _met(ok: bool | None) -> str:
    return "-" if ok is None else "yes" if ok else "NO"


def _within(value: float | None, target: float) -> bool:
    return value is not None and value <= target


def verdict_rows(result: dict[str, Any]) -> list[tuple[str, Any, str, bool | None]]:
    """(figure, value, target, met) for every target of the issue."""
    n = result["accounts"]
    start, idle, sends = result["start"], result["idle"], result["sends"]
    restart, log = result["restart"], result["restart"]["log"]
    latency = sends["send_to_sink_ms"]
    reconciled = log["back_to_all_reconciled_s"]
    all_reconciled = log["accounts_reconciled"] == log["accounts_with_pending"]
    resolved = restart["resolved_in_sink"]
    return [
        (
            f"start -> all {n:,} subscribed (/readyz 200), s",
            start["start_to_ready_s"],
            f"<= {TARGET_SUBSCRIBED_S:g}",
            _within(start["start_to_ready_s"], TARGET_SUBSCRIBED_S),
        ),
        (
            "handshakes at the simulator during start, most in 1 s",
            start["handshakes_max_per_second"],
            f"<= {TARGET_HANDSHAKES_PER_S}",
            _within(start["handshakes_max_per_second"], TARGET_HANDSHAKES_PER_S),
        ),
        (
            "daemon RSS, all subscribed, MB",
            idle["rss_all_subscribed_mb"],
            f"<= {TARGET_RSS_MB:g}",
            _within(idle["rss_all_subscribed_mb"], TARGET_RSS_MB),
        ),
        (
            "daemon RSS, most over the run, MB",
            result["rss_peak_mb"],
            f"<= {TARGET_RSS_MB:g}",
            _within(result["rss_peak_mb"], TARGET_RSS_MB),
        ),
        (
            f"idle daemon CPU, {idle['seconds']:g} s, {n:,} long-polls parked, % of one core",
            idle["daemon_cpu_percent"],
            f"<= {TARGET_IDLE_CPU_PERCENT:g}",
            _within(idle["daemon_cpu_percent"], TARGET_IDLE_CPU_PERCENT),
        ),
        (
            f"Sends through {sends['sends']} random accounts, correlated",
            sends["correlated"],
            f"{sends['sends']}",
            sends["correlated"] == sends["sends"],
        ),
        (
            "... Send -> event in the sink, p50 / p99 ms",
            f"{latency.get('p50')} / {latency.get('p99')}",
            "-",
            None,
        ),
        (
            "simulator back -> /readyz 200 (all resubscribed), s",
            restart["ready_s"],
            f"<= {TARGET_RECOVERED_S:g}",
            _within(restart["ready_s"], TARGET_RECOVERED_S),
        ),
        (
            f"simulator back -> all {log['accounts_with_pending']} accounts with pending sends "
            "logged reconciled, s",
            reconciled,
            f"<= {TARGET_RECOVERED_S:g}",
            all_reconciled and _within(reconciled, TARGET_RECOVERED_S),
        ),
        (
            "... pending sends resolved by read-back (events in the sink)",
            f"{resolved} of {result['pending']}",
            f"{result['pending']}",
            resolved == result["pending"],
        ),
        (
            "handshakes at the restarted simulator, most in 1 s",
            restart["handshakes_max_per_second"],
            f"<= {TARGET_HANDSHAKES_PER_S}",
            _within(restart["handshakes_max_per_second"], TARGET_HANDSHAKES_PER_S),
        ),
    ]


def miss_causes(
    result: dict[str, Any], rows: Sequence[tuple[str, Any, str, bool | None]]
) -> list[str]:
    """What the run shows about each missed target."""
    start, idle, restart = result["start"], result["idle"], result["restart"]
    start_log, restart_log = start["daemon_log"], restart["log"]["pace"]
    n = result["accounts"]
    hints: dict[str, Callable[[], str]] = {
        "start ->": lambda: (
            f"the pace alone takes {start['pace_floor_s']} s; {start['handshakes']:,} handshakes "
            f"and {start['login_attempts']:,} logins for {n:,} accounts; daemon CPU "
            f"{start['cpu_percent']['daemon']} % of one core from start to ready"
        ),
        "daemon RSS": lambda: (
            f"RSS all subscribed {idle['rss_all_subscribed_mb']} MB, peak "
            f"{result['rss_peak_mb']} MB: {result['rss_peak_mb'] * 1024 / n:.0f} KB an account"
        ),
        "idle daemon": lambda: (
            f"{idle['bayeux_posts']:,} Bayeux POSTs in the window "
            f"({idle['bayeux_posts_per_account']} an account; one long-poll cycle is "
            f"{LONG_POLL_S:g} s), {idle['handshakes']} handshakes"
        ),
        "simulator back": lambda: (
            f"{restart['handshakes']:,} handshakes, {restart['login_attempts']:,} logins for "
            f"{n:,} accounts; daemon CPU {restart['cpu_percent']['daemon']} % of one core in "
            f"the wave; its log then: {restart['log']['daemon_log_lines_by_event']}"
        ),
        "handshakes at the simulator during start": lambda: (
            f"logins were paced (daemon log: at most {start_log['logins_max_per_second']} in "
            f"one second) but the handshakes after them were not (at most "
            f"{start_log['subscribed_max_per_second']} subscriptions in one second): each "
            "account's first handshake rides on its login's turn, and the accounts start "
            "only once every first login is done"
        ),
        "handshakes at the restarted": lambda: (
            f"daemon log: at most {restart_log['logins_max_per_second']} logins and "
            f"{restart_log['subscribed_max_per_second']} subscriptions in one second, more "
            f"than gws.handshakes_per_second ({DAEMON_PACE}) lets through: those did not wait "
            f"for the pace. While the simulator was down ({restart['down_s']} s) the daemon used "
            f"{restart['cpu_percent_while_down']['daemon']} % of one core and its Bayeux "
            f"retries came a median {restart_log['retry_gap_median_s']} s apart for a planned "
            f"{restart_log['retry_planned_delay_median_s']} s "
            f"({restart_log['bayeux_retries']:,} retries, each a warning line)"
        ),
        "Sends through": lambda: (
            f"answers {result['sends']['answers']}, "
            f"{result['sends']['sink_lines']} lines in the sink"
        ),
        "... pending": lambda: "the rest stayed pending (see daemon_log in the JSON)",
    }
    causes = []
    for figure, _value, _target, met in rows:
        if met is False:
            hint = next((h for key, h in hints.items() if figure.startswith(key)), None)
            causes.append(f"{figure}: {hint() if hint else 'see the JSON'}")
    if causes and not result["profile"]:
        causes.append("rerun with --profile for the daemon's top frames in the waves")
    return causes


def tables_of(result: dict[str, Any], machine: dict[str, Any]) -> list[report.Table]:
    rows = verdict_rows(result)
    title = (
        f"accounts: {result['accounts']:,} GWS accounts in one daemon "
        f"({machine['cpu_model']}, {machine['cpu_logical']} cores, "
        f"{machine['memory_total_mb'] / 1024:.0f} GB, Python {machine['python']})"
    )
    verdict = report.Table(title, ["figure", "value", "target", "met"])
    for figure, value, target, met in rows:
        verdict.add(figure, value, target, _met(met))
    start, restart = result["start"], result["restart"]
    waves = report.Table(
        "the waves: handshakes and logins at the simulator; CPU % of one core "
        "(bench: this process, whose gate forwards the daemon's traffic)",
        ["wave", "s", "handshakes", "most in 1 s", "logins", "daemon", "simulator", "bench"],
    )
    for name, seconds, wave in (
        ("start -> ready", start["start_to_ready_s"], start),
        ("simulator down (gate closed)", restart["down_s"], None),
        ("simulator back -> resolved", restart["wave_wall_s"], restart),
    ):
        cpu = restart["cpu_percent_while_down"] if wave is None else wave["cpu_percent"]
        figures = (
            [None] * 3
            if wave is None
            else [wave["handshakes"], wave["handshakes_max_per_second"], wave["login_attempts"]]
        )
        waves.add(name, seconds, *figures, cpu["daemon"], cpu.get("simulator"), cpu["bench"])
    tables = [verdict, waves]
    causes = miss_causes(result, rows)
    if causes:
        misses = report.Table("missed targets: what the run shows", ["cause"])
        for cause in causes:
            misses.add(cause)
        tables.append(misses)
    for phase, summary in result.get("profile_top", {}).items():
        top = report.Table(
            f"profile, {phase} wave: top frames, % of the daemon's busy samples",
            ["frame", "own %", "daemon/ frame (with callees)", "%"],
        )
        own: list[dict[str, Any]] = summary.get("top_self", [])[:12]
        ours: list[dict[str, Any]] = [
            f
            for f in summary.get("top_inclusive", [])
            if "(daemon/" in f["frame"] and not any(e in f["frame"] for e in _ENTRY_FILES)
        ][:12]
        blank: dict[str, Any] = {"frame": "", "percent": None}
        for number in range(max(len(own), len(ours))):
            a = own[number] if number < len(own) else blank
            b = ours[number] if number < len(ours) else blank
            top.add(a["frame"][:80], a["percent"], b["frame"][:80], b["percent"])
        tables.append(top)
    return tables


# -- main ------------------------------------------------------------------------------------


async def run(plan: Plan, work: Path, simulator: Simulator, gate: Gate) -> dict[str, Any]:
    rng = random.Random(plan.seed)
    password = work / "gws.password"
    password.write_text(SIM_PASSWORD + "\n")
    password.chmod(0o600)
    config = notifyd.accounts_config(
        work,
        gws_url=gate.url,
        accounts=[{"name": a, "username": a, "password_file": str(password)} for a in plan.names],
    )
    profile: dict[str, Any] = {}
    report.note(f"accounts: starting the daemon with {plan.accounts:,} accounts")
    others = CpuWindow(simulator=simulator.pid, bench=os.getpid())
    others.start()
    began, began_wall = time.perf_counter(), time.time()
    async with notifyd.running_daemon(config, work) as daemon:
        rss = RssSampler(measure.CpuMeter(daemon.pid))
        rss.start()
        async with profiled(plan, daemon.pid, "start", profile):
            start = await start_wave(plan, daemon, simulator, began, others)
        ready_wall = time.time()
        report.note(f"accounts: all subscribed after {start['start_to_ready_s']} s; idle window")
        idle = await idle_window(plan, daemon, simulator)
        report.note(f"accounts: idle CPU {idle['daemon_cpu_percent']} %; {plan.sends} Sends")
        sends = await sends_phase(plan, daemon, work, rng)
        report.note(f"accounts: {plan.pending} pending sends; restarting the simulator")
        pending = await make_pending(plan, daemon, simulator, rng)
        restart = await restart_wave(plan, daemon, simulator, gate, pending, work, profile)
        report.note(f"accounts: ready {restart.ready_s or 0:.2f} s after the simulator was back")
        entries = daemon.read_logs()
        log = reconciled_after(entries, pending, restart.back_wall)
        start["daemon_log"] = log_pace(entries, began_wall, ready_wall)
        log["pace"] = log_pace(entries, restart.back_wall - restart.figures["down_s"], time.time())
        await rss.stop()
    return {
        "quick_sizes": plan.accounts < 1000,
        "accounts": plan.accounts,
        "pending": plan.pending,
        "profile": plan.profile,
        "seed": plan.seed,
        "start": start,
        "idle": idle,
        "sends": sends,
        "restart": {
            **restart.figures,
            "signal": "SIGKILL" if plan.harsh else "SIGTERM",
            "down_seconds": plan.down_seconds,
            "ready_s": None if restart.ready_s is None else round(restart.ready_s, 3),
            "back_to_resolved_in_sink_s": restart.resolved_in_sink_s,
            "log": log,
        },
        "rss_peak_mb": round(rss.peak_mb, 1),
        "daemon_log": notifyd.log_summary(entries),
        "profile_top": profile,
        "gate_connections": gate.connections,
    }


async def main() -> None:
    args = report.parse_args(__doc__ or "", _options)
    plan = plan_of(args)
    with notifyd.workdir("accounts") as work:
        simulator = Simulator(work / "simulator.log", plan.accounts)
        gate = Gate(simulator.port)
        report.note(f"accounts: simulator with {plan.accounts:,} agents")
        await simulator.start()
        await gate.open()
        try:
            result = await run(plan, work, simulator, gate)
        finally:
            await gate.close()
            await simulator.close()
    method = {
        "gate": "the daemon reaches the simulator through a TCP forwarder in the bench "
        "process; closed while the simulator restarts and until the pending sends' emails "
        "are Sent again in the new one (a restarted simulator has lost them; GWS keeps "
        "them); 'simulator back' is its opening",
        "idle": f"user+system CPU of the daemon over the window / its wall time, after "
        f"{SETTLE_S:g} s of settling; nothing is sent or asked during it",
        "sends": f"one every {SEND_GAP_S * 1000:g} ms without waiting; latency = POST "
        "issued (bench clock) -> its line seen in the sink (polled every ~1 ms); the "
        "simulator notifies 20 ms after its answer",
        "reconciled": "timestamps of each pending account's first `reconciled` log line "
        "after the gate opened",
    }
    machine = report.machine_info()
    report.emit("accounts", {"method": method, **result}, tables_of(result, machine))


if __name__ == "__main__":
    asyncio.run(main())
