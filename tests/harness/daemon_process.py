"""`gws-notifyd run` as a real subprocess, driven over HTTP, with its logs captured.

    config = write_config(tmp_path, gws_url=sim.base_url)
    async with DaemonProcess(config) as daemon:
        status, body = await daemon.send("E1")
        events = await daemon.wait_events(1)

The daemon listens on a free port (`listen = "127.0.0.1:0"`); its URL comes
from its own `started` log line. Every wait has a deadline (`wait_until`); nothing
sleeps for synchronisation.

Its logs are read from a pipe as they come (`logs`), or, with `log_path`, go to a
file that is read only when a log line is waited for or `read_logs()` is called:
the benchmarks' way, so that the measuring process does not parse every line
during a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from tests.harness.waiting import wait_until

SIM_PASSWORD = "agent1-password"  # the simulator's default
READY_TIMEOUT = 20.0


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def to_toml(document: dict[str, Any]) -> str:
    """Enough TOML for our configs: tables of scalars, and [[sinks]]."""
    lines: list[str] = []
    for section, content in document.items():
        if isinstance(content, list):
            for item in content:
                lines.append(f"[[{section}]]")
                lines.extend(f"{k} = {_toml_value(v)}" for k, v in item.items())
                lines.append("")
        else:
            lines.append(f"[{section}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in content.items())
            lines.append("")
    return "\n".join(lines)


def config_document(
    tmp_path: Path,
    *,
    gws_url: str,
    sinks: list[dict[str, Any]] | None = None,
    **sections: dict[str, Any],
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "gws": {"base_url": gws_url, "username": "agent1", "request_timeout_seconds": 5},
        "http": {"listen": "127.0.0.1:0"},
        "store": {"path": str(tmp_path / "state.db")},
        "correlation": {"send_timeout_seconds": 30},
        "service": {"shutdown_timeout_seconds": 10},
        "logging": {"level": "debug", "format": "json"},
    }
    for name, values in sections.items():
        document.setdefault(name, {}).update(values)
    document["sinks"] = (
        sinks
        if sinks is not None
        else [{"name": "archive", "type": "jsonl", "path": str(tmp_path / "events.jsonl")}]
    )
    return document


def write_config(tmp_path: Path, *, gws_url: str, **kwargs: Any) -> Path:
    path = tmp_path / "gws-notifyd.toml"
    path.write_text(to_toml(config_document(tmp_path, gws_url=gws_url, **kwargs)))
    return path


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """`gws-notifyd ARGS` as a subprocess: exit code, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def cli_output(*args: str) -> str:
    """What `gws-notifyd ARGS` printed, stdout then stderr."""
    _, out, err = await run_cli(*args)
    return out + err


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The file's complete lines. A line without its newline yet is being written
    (a read can catch a batch's write half done): it is left for the next look."""
    if not path.exists():
        return []
    complete = path.read_bytes().split(b"\n")[:-1]
    return [orjson.loads(line) for line in complete if line.strip()]


def send_body(queue: str = "Outbound", **email: Any) -> dict[str, Any]:
    return {
        "operationName": "Send",
        "queueName": queue,
        "email": {
            "from": "support@acme.example",
            "to": ["customer@example.com"],
            "subject": "Hello",
            "body": "<p>Hello</p>",
            **email,
        },
    }


class DaemonProcess:
    """One `gws-notifyd run --config CONFIG`; see the module docstring.

    `log_path`: stdout and stderr appended to that file instead of read from pipes.
    `cwd`: where it runs (`python -m daemon` imports the `daemon` found from there).
    `start_timeout`: how long `start()` waits for the `started` log line.
    """

    def __init__(
        self,
        config: Path,
        *,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
        password: str | None = SIM_PASSWORD,
        log_path: Path | None = None,
        cwd: Path | None = None,
        start_timeout: float = READY_TIMEOUT,
    ) -> None:
        self.config = config
        self.log_path = log_path
        self.cwd = cwd
        self.start_timeout = start_timeout
        inherited = {
            k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")
        }
        self.env = {**inherited, **(env or {})}
        if password is not None:
            self.env.setdefault("GWS_PASSWORD", password)
        self.wait_ready = wait_ready
        self.process: asyncio.subprocess.Process | None = None
        self.logs: list[dict[str, Any]] = []
        self.raw_stdout: list[bytes] = []
        self.stderr = b""
        self.api = ""
        self._readers: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None
        self._log_offset = 0  # with log_path: how far the file has been read

    async def __aenter__(self) -> DaemonProcess:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self._http

    async def start(self) -> None:
        self.logs.clear()
        self.api = ""
        command = (sys.executable, "-m", "daemon", "run", "--config", str(self.config))
        if self.log_path is None:
            self.process = await asyncio.create_subprocess_exec(
                *command,
                cwd=self.cwd,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.env,
            )
            self._readers = [
                asyncio.create_task(self._read_stdout()),
                asyncio.create_task(self._read_stderr()),
            ]
        else:
            with self.log_path.open("ab") as log:
                self._log_offset = log.tell()  # this run's lines only
                self.process = await asyncio.create_subprocess_exec(
                    *command,
                    cwd=self.cwd,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env=self.env,
                )
            self._readers = []
        started = await self.wait_log(
            lambda e: e.get("event") == "started", timeout=self.start_timeout
        )
        self.api = str(started["api"])
        if self.wait_ready:
            await self.wait_ready_status(200)

    async def _read_stdout(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.raw_stdout.append(line)
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(entry, dict):
                if entry.get("event") == "started":
                    self.api = entry["api"]
                self.logs.append(entry)

    async def _read_stderr(self) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        self.stderr += await self.process.stderr.read()

    def _read_log_file(self) -> None:
        """With log_path: take the complete lines written since the last read into `logs`."""
        assert self.log_path is not None
        with self.log_path.open("rb") as handle:
            handle.seek(self._log_offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._log_offset += len(complete)
        for line in complete.splitlines():
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(entry, dict):
                self.logs.append(entry)

    def read_logs(self) -> list[dict[str, Any]]:
        """Every JSON log line of this run so far (with log_path: read from the file now)."""
        if self.log_path is not None:
            self._read_log_file()
        return self.logs

    def _exit_detail(self) -> str:
        if self.log_path is not None:
            return f"its log: {self.log_path.read_text(errors='replace')[-2000:]}"
        return f"stderr: {self.stderr.decode(errors='replace')[-2000:]}"

    async def wait_log(
        self, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = 10.0
    ) -> dict[str, Any]:
        """The first log line of this run that `predicate` accepts."""

        def found() -> dict[str, Any] | None:
            logs = self.read_logs()
            if (
                self.process is not None
                and self.process.returncode is not None
                and not any(predicate(e) for e in logs)
            ):
                raise AssertionError(
                    f"daemon exited with {self.process.returncode} before the log line came; "
                    + self._exit_detail()
                )
            return next((e for e in logs if predicate(e)), None)

        result = await wait_until(found, timeout=timeout, what="a log line")
        assert result is not None
        return result

    async def readyz(self) -> tuple[int, dict[str, Any]]:
        async with self.http.get(f"{self.api}/readyz") as response:
            return response.status, await response.json()

    async def wait_ready_status(self, status: int, timeout: float = READY_TIMEOUT) -> None:
        """Poll /readyz (every waiting.POLL_SECONDS) until it answers `status`."""

        async def check() -> bool:
            if self.process is not None and self.process.returncode is not None:
                raise AssertionError(
                    f"daemon exited with {self.process.returncode} while waiting for "
                    f"/readyz {status}; " + self._exit_detail()
                )
            try:
                return (await self.readyz())[0] == status
            except aiohttp.ClientError:
                return False

        await wait_until(check, timeout=timeout, what=f"/readyz {status}")

    async def send(
        self,
        email_id: str,
        body: dict[str, Any] | bytes | None = None,
        *,
        account: str | None = None,
        **headers: str,
    ) -> tuple[int, dict[str, Any]]:
        """A Send through the daemon (as `account`: its /accounts/{name} route)."""
        payload = body if isinstance(body, bytes) else orjson.dumps(body or send_body())
        prefix = f"/accounts/{account}" if account is not None else ""
        async with self.http.post(
            f"{self.api}{prefix}/api/v2/me/emails/{email_id}",
            # A stream: aiohttp warns about large raw bytes bodies.
            data=io.BytesIO(payload) if len(payload) > 65536 else payload,
            headers={"Content-Type": "application/json", **headers},
        ) as response:
            return response.status, await response.json(content_type=None)

    async def get_json(self, path: str) -> tuple[int, Any]:
        async with self.http.get(self.api + path) as response:
            return response.status, await response.json(content_type=None)

    async def metrics(self) -> str:
        async with self.http.get(f"{self.api}/metrics") as response:
            return await response.text()

    async def wait_events(
        self, path: Path, count: int, *, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        result = await wait_until(
            lambda: events if len(events := read_jsonl(path)) >= count else None,
            timeout=timeout,
            what=f"{count} events in {path.name}",
        )
        assert result is not None
        return result

    async def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait_exit(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        code = await asyncio.wait_for(self.process.wait(), timeout)
        for reader in self._readers:
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        return code

    async def kill(self) -> None:
        """kill -9: no chance to clean up."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.wait_exit()

    async def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then kill -9 if it has not exited within `timeout` s; its exit code."""
        code: int | None = None
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                code = await self.wait_exit(timeout)
            except TimeoutError:
                self.process.kill()
                code = await self.process.wait()
        elif self.process is not None:
            code = self.process.returncode
        if self._http is not None:
            await self._http.close()
            self._http = None
        return code
