"""The processes the bench starts besides the daemon: GWS stand-ins, and stopping a child.

- `cometd_peer`: tests/peers/cometd-server.js (cometd-nodejs-server 1.2.1), optionally
  with its GWS REST stub, as the test harness runs it (tests.harness.bayeux_peers);
- `simulator_process`: `gws-notifyd simulate` in a process of its own;
  `start_simulator`: the same on a port the caller keeps (to start it again there);
- `stop_process`: SIGTERM, then SIGKILL, for any child.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import aiohttp
from basics import HOST, PYTHON, ROOT, BenchError

from tests.harness.bayeux_peers import GwsStub, NodePeer
from tests.harness.daemon_process import SIM_PASSWORD
from tests.harness.waiting import wait_until
from tests.harness.webhook_receiver import free_port

__all__ = [
    "GwsStub",
    "NodePeer",
    "cometd_peer",
    "new_cometd_peer",
    "simulator_process",
    "start_simulator",
    "stop_process",
]


async def stop_process(process: asyncio.subprocess.Process, timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode


def new_cometd_peer(*, timeout_ms: int = 25_000, gws_stub: GwsStub | None = None) -> NodePeer:
    """cometd-server.js, not started yet (`start()` takes a free port, then keeps it)."""
    reason = NodePeer.unavailable()
    if reason is not None:
        raise BenchError(reason)
    return NodePeer("cometd", timeout_ms=timeout_ms, port=0, gws_stub=gws_stub)


@contextlib.asynccontextmanager
async def cometd_peer(
    *, timeout_ms: int = 25_000, gws_stub: GwsStub | None = None
) -> AsyncIterator[NodePeer]:
    """cometd-server.js on a free port (stopped on the way out)."""
    peer = new_cometd_peer(timeout_ms=timeout_ms, gws_stub=gws_stub)
    try:
        await peer.start()
        yield peer
    finally:
        await peer.aclose()


@dataclass(frozen=True)
class SimulatorProcess:
    base_url: str
    pid: int


@contextlib.asynccontextmanager
async def simulator_process(**flags: str | None) -> AsyncIterator[SimulatorProcess]:
    """`gws-notifyd simulate` on a free port (flags: --name value, None for a switch)."""
    port = free_port()
    args = [PYTHON, "-m", "daemon", "simulate", "--listen", f"{HOST}:{port}"]
    for flag, value in flags.items():
        args.append("--" + flag.replace("_", "-"))
        if value is not None:
            args.append(value)
    process = await asyncio.create_subprocess_exec(
        *args,
        cwd=ROOT,
        env={**os.environ, "GWS_PASSWORD": SIM_PASSWORD},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    base_url = f"http://{HOST}:{port}"
    try:
        await _wait_answering(process, base_url)
        yield SimulatorProcess(base_url, process.pid)
    finally:
        await stop_process(process)


async def start_simulator(
    port: int, *, log_path: Path | None = None, **flags: str | None
) -> asyncio.subprocess.Process:
    """`gws-notifyd simulate` on a given port, answering when this returns.

    Unlike `simulator_process`, the caller owns the process (`stop_process`, or
    `kill()` to crash it) and the port, so a simulator can be started again where
    the last one was, as GWS comes back after a restart. Flags as there; its output
    is appended to `log_path` (default: discarded).
    """
    args = [PYTHON, "-m", "daemon", "simulate", "--listen", f"{HOST}:{port}"]
    for flag, value in flags.items():
        args.append("--" + flag.replace("_", "-"))
        if value is not None:
            args.append(value)
    with contextlib.ExitStack() as files:
        output: IO[bytes] | int = (
            files.enter_context(log_path.open("ab"))
            if log_path is not None
            else asyncio.subprocess.DEVNULL
        )
        process = await asyncio.create_subprocess_exec(
            *args,
            cwd=ROOT,
            env={**os.environ, "GWS_PASSWORD": SIM_PASSWORD},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=output,
        )
    try:
        await _wait_answering(process, f"http://{HOST}:{port}")
    except BaseException:
        await stop_process(process)
        raise
    return process


async def _wait_answering(process: asyncio.subprocess.Process, base_url: str) -> None:
    """Until the simulator at `base_url` answers its control API (BenchError if it exits)."""
    async with aiohttp.ClientSession() as http:

        async def answering() -> bool:
            if process.returncode is not None:
                raise BenchError(f"the simulator exited with {process.returncode}")
            try:
                async with http.get(base_url + "/control/stats") as response:
                    return response.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(answering, timeout=15, what="the simulator to answer")
