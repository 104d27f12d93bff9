"""The daemon speaks systemd's notify protocol to a real $NOTIFY_SOCKET.

The test plays systemd's part: a Unix datagram socket bound in tmp_path, with
SO_PASSCRED so that each datagram carries its sender's pid (systemd, with
NotifyAccess=main, drops messages from any other pid). The daemon runs as a
subprocess against the embedded simulator.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from daemon.simulator import Simulator
from tests.harness.daemon_process import DaemonProcess, write_config
from tests.harness.waiting import wait_until

WATCHDOG_USEC = 1_000_000  # the daemon pings every 0.5 s
UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid


@dataclass
class Datagram:
    pid: int | None
    lines: list[str]


@dataclass
class NotifySocket:
    """What systemd would receive on $NOTIFY_SOCKET, in arrival order."""

    sock: socket.socket
    path: Path
    received: list[Datagram] = field(default_factory=list)

    def read_ready(self) -> None:
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
            except BlockingIOError:
                return
            pid = None
            for level, kind, payload in ancillary:
                if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                    pid = UCRED.unpack(payload[: UCRED.size])[0]
            self.received.append(Datagram(pid, data.decode().split("\n")))

    def lines(self) -> list[str]:
        return [line for datagram in self.received for line in datagram.lines]

    def first(self, line: str) -> int | None:
        return next((i for i, seen in enumerate(self.lines()) if seen == line), None)


@pytest.fixture
async def notify_socket(tmp_path: Path) -> AsyncIterator[NotifySocket]:
    path = tmp_path / "notify.sock"
    assert len(str(path)) < 108, "sun_path holds 107 bytes; use a shorter tmp path"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(str(path))
    receiver = NotifySocket(sock, path)
    loop = asyncio.get_running_loop()
    loop.add_reader(sock.fileno(), receiver.read_ready)
    try:
        yield receiver
    finally:
        loop.remove_reader(sock.fileno())
        sock.close()


async def test_ready_then_watchdog_pings_then_stopping_from_the_main_pid(
    simulator: Simulator,
    tmp_path: Path,
    notify_socket: NotifySocket,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # WATCHDOG_PID set (to another pid) would tell the daemon the watchdog is not its own.
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert simulator.base_url
    daemon = DaemonProcess(
        write_config(tmp_path, gws_url=simulator.base_url),
        env={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)},
    )
    async with daemon:
        await wait_until(
            lambda: notify_socket.first("READY=1") is not None, timeout=10, what="READY=1"
        )

        def pings_after_ready() -> bool:
            lines = notify_socket.lines()
            ready = lines.index("READY=1")
            return lines[ready:].count("WATCHDOG=1") >= 2

        # Two pings take one WATCHDOG_USEC; the deadline allows for a slow machine.
        await wait_until(pings_after_ready, timeout=10, what="2 WATCHDOG=1 after READY=1")
        assert daemon.process is not None
        pid = daemon.process.pid

        await daemon.signal(signal.SIGTERM)
        code = await daemon.wait_exit()
        await wait_until(
            lambda: notify_socket.first("STOPPING=1") is not None, timeout=10, what="STOPPING=1"
        )

    assert code == 0
    lines = notify_socket.lines()
    ready, stopping = lines.index("READY=1"), lines.index("STOPPING=1")
    assert ready < stopping
    assert lines[ready:stopping].count("WATCHDOG=1") >= 2
    statuses = [line for line in lines[:stopping] if line.startswith("STATUS=")]
    assert any(status.startswith("STATUS=connected") for status in statuses), statuses
    # NotifyAccess=main: every datagram must come from the daemon's own pid.
    assert {datagram.pid for datagram in notify_socket.received} == {pid}
