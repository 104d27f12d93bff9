"""The processes the bench starts besides the daemon: GWS stand-ins, and stopping a child.

- `cometd_peer`: tests/peers/cometd-server.js (cometd-nodejs-server 1.2.1), optionally
  with its GWS REST stub, as the test harness runs it (tests.harness.bayeux_peers);
- `simulator_process`: `gws-notifyd simulate` in a process of its own;
- `stop_process`: SIGTERM, then SIGKILL, for any child.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

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
        yield SimulatorProcess(base_url, process.pid)
    finally:
        await stop_process(process)
