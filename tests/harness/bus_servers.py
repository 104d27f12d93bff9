"""Real message buses for tests: `redis-server` and `nats-server -js` on loopback.

Each server runs as a process of its own on a free port, with its data in a
temporary directory, and is stopped by its pid. `stop()` then `start()` brings
the same server back on the same port with the same data (Redis keeps an
append-only file; JetStream its file store), which is how a test takes a bus
away for a while. Needs the Debian packages `redis-server` and `nats-server`
(`.ci/run` installs them); a test that finds neither on PATH is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.harness.waiting import wait_until
from tests.harness.webhook_receiver import free_port

START_SECONDS = 15.0
STOP_SECONDS = 10.0


def executable(name: str) -> str:
    """The server's path, or skip the test (the Debian package is not installed)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        if os.environ.get("CI"):  # CI installs both (.ci/run): a missing one is a failure
            raise AssertionError(f"{name} is not installed (apt-get install {name})")
        import pytest

        pytest.skip(f"{name} is not installed (apt-get install {name})")
    return found


async def _port_open(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class BusServer:
    """A server process on 127.0.0.1:`port` with its data in `directory`."""

    name = "server"

    def __init__(self) -> None:
        self.port = free_port()
        self._temporary = tempfile.TemporaryDirectory(prefix=f"gws-notifyd-{self.name}-")
        self.directory = Path(self._temporary.name)
        self._process: subprocess.Popen[bytes] | None = None
        self.log = self.directory / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(  # noqa: ASYNC220 - a short fork, not a wait
                self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.directory
            )
        process = self._process

        async def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {process.returncode}: {self.log.read_text()[-2000:]}"
                )
            return await self._ready()

        await wait_until(ready, timeout=START_SECONDS, what=f"{self.name} on port {self.port}")

    async def _ready(self) -> bool:
        return await _port_open(self.port)

    async def stop(self) -> None:
        """SIGTERM by pid, SIGKILL if it lingers; the data directory stays."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await wait_until(
                lambda: process.poll() is not None, timeout=STOP_SECONDS, what=f"{self.name} exit"
            )
        except AssertionError:
            process.kill()
            process.wait()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.stop()
        self._temporary.cleanup()


class RedisServer(BusServer):
    """redis-server with an append-only file (so a restart keeps the streams: a stop is a
    SIGTERM, which writes it out).
    """

    name = "redis"

    def __init__(self, *, password: str | None = None) -> None:
        super().__init__()
        self.password = password

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        command = [
            executable("redis-server"),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--protected-mode",
            "no",
        ]
        if self.password is not None:
            command += ["--requirepass", self.password]
        return command


class NatsServer(BusServer):
    """nats-server with JetStream, its file store in the data directory."""

    name = "nats"

    def __init__(self, *, token: str | None = None) -> None:
        super().__init__()
        self.token = token

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        command = [
            executable("nats-server"),
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-sd",
            str(self.directory / "jetstream"),
        ]
        if self.token is not None:
            command += ["--auth", self.token]
        return command
