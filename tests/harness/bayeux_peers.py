"""Bayeux servers for tests and benchmarks: the Node peers in tests/peers, and our simulator.

Every peer serves Bayeux at `url` (`<base>/api/v2/notifications`) and takes orders
at `control_url` (`<base>/control`): publish GWS-shaped messages or given payloads,
forget every client (so the next /meta/connect is told "unknown client"), stats.

    async with start_peer("cometd", timeout_ms=20_000) as peer:
        async with peer.client_session() as session:
            ...
        await peer.publish("/v2/me/emails", 1000)

`start_peer` skips the calling test (pytest.skip) when the peer cannot run here:
no `node`, no `tests/peers/node_modules` (run `npm ci` in tests/peers), or no
`daemon.simulator` yet. The benchmarks use `NodePeer` directly (pytest is not
needed then), the cometd peer with its GWS REST stub (`GwsStub`) and the paced
or held publishes of `order_publish`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, NoReturn

import aiohttp

PEERS_DIR: Final = Path(__file__).resolve().parent.parent / "peers"
NOTIFICATIONS_PATH: Final = "/api/v2/notifications"
CONTROL_PATH: Final = "/control"

PeerKind = Literal["cometd", "faye", "simulator"]
NODE_SCRIPTS: Final[dict[str, str]] = {"cometd": "cometd-server.js", "faye": "faye-server.js"}

# A publish of 300,000 messages takes a few seconds; nothing else comes close.
_CONTROL_SECONDS: Final = 120.0
_CONTROL_TIMEOUT: Final = aiohttp.ClientTimeout(total=_CONTROL_SECONDS)
_START_TIMEOUT: Final = 15.0
_STOP_TIMEOUT: Final = 5.0


class PeerError(RuntimeError):
    """A peer failed to start, or refused a control order."""


def _skip(reason: str) -> NoReturn:
    """Skip the calling test (pytest is imported only when a test must be skipped)."""
    import pytest

    pytest.skip(reason)


@dataclass(frozen=True)
class GwsStub:
    """cometd-server.js's stub of the GWS REST calls a daemon makes (`--gws-stub`).

    It lists `emails` emails, ids `SEQ` + start..start+emails-1, all `Composing`
    (none listed when `unlisted`: a daemon then GETs each one).
    """

    emails: int
    start: int = 0
    unlisted: bool = False

    def arguments(self) -> list[str]:
        args = ["--gws-stub", str(self.emails), "--gws-stub-start", str(self.start)]
        return [*args, "--gws-stub-unlisted"] if self.unlisted else args


class BayeuxPeer(ABC):
    """A running Bayeux server with control endpoints; see the module docstring."""

    kind: PeerKind

    def __init__(self, *, timeout_ms: int, port: int) -> None:
        self.timeout_ms = timeout_ms
        self.port = port
        self.base_url = ""
        self._control: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        """The Bayeux endpoint."""
        return self.base_url + NOTIFICATIONS_PATH

    @property
    def control_url(self) -> str:
        return self.base_url + CONTROL_PATH

    @property
    def authorization(self) -> str | None:
        """The Authorization header the Bayeux endpoint wants, if any."""
        return None

    def client_session(self) -> aiohttp.ClientSession:
        """A session for a Bayeux client of this peer: cookies kept on IP hosts, auth set.

        Credentials go in a default header: aiohttp 3.14 deprecates aiohttp.BasicAuth
        (a DeprecationWarning, an error under this project's pytest settings).
        """
        authorization = self.authorization
        headers = {"Authorization": authorization} if authorization else None
        return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), headers=headers)

    @property
    def running(self) -> bool:
        return bool(self.base_url) and self._is_serving()

    async def start(self) -> None:
        """Start serving on `port` (0 = a free one, which `port` then holds)."""
        await self._start()
        if self._control is None:
            # No keep-alive: a restarted peer must not see a dead pooled connection.
            self._control = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True), timeout=_CONTROL_TIMEOUT
            )

    async def stop(self) -> None:
        """Stop serving; `start()` serves again on the same port."""
        await self._stop()

    async def restart(self) -> None:
        """Stop, then serve again on the same port: every client session is lost."""
        await self.stop()
        await self.start()

    async def aclose(self) -> None:
        await self.stop()
        if self._control is not None:
            await self._control.close()
            self._control = None

    async def publish(self, channel: str, count: int, start: int = 0) -> int:
        """Publish `count` GWS EmailStateChangeMessages, referenceId start..start+count-1."""
        await self.order_publish(channel, count, start=start)
        return count

    async def order_publish(
        self,
        channel: str,
        count: int,
        *,
        start: int = 0,
        rate: float | None = None,
        tick_ms: int | None = None,
        hold: bool = False,
    ) -> dict[str, Any]:
        """`publish`, with cometd-server.js's options; returns the peer's whole answer.

        `rate` (msg/s): paced, what is due every `tick_ms`; `hold`: queued for every
        session and released at once (the answer then says when: `released_at`).
        Answered once all are published: a paced publish's request may last long.
        """
        body: dict[str, Any] = {"channel": channel, "count": count, "start": start}
        timeout = _CONTROL_TIMEOUT
        if hold:
            body["hold"] = True
        if rate is not None:
            body["rate"] = rate
            timeout = aiohttp.ClientTimeout(total=_CONTROL_SECONDS + count / rate)
        if tick_ms is not None:
            body["tick_ms"] = tick_ms
        answer = await self._order("POST", "/publish", body, timeout=timeout)
        _published(answer, count)
        return answer

    async def publish_data(self, channel: str, items: Sequence[Any]) -> int:
        """Publish the given payloads, in order."""
        answer = await self._order("POST", "/publish", {"channel": channel, "data": list(items)})
        return _published(answer, len(items))

    async def forget(self) -> None:
        """Make the server forget every client: its next /meta/connect hears "unknown client"."""
        await self._order("POST", "/forget", {})

    async def refuse_subscribes(self, count: int) -> None:
        """Refuse the next `count` /meta/subscribe requests (403::subscribe_denied)."""
        await self._order("POST", "/refuse-subscribe", {"count": count})

    async def stats(self) -> dict[str, Any]:
        return await self._order("GET", "/stats", None)

    async def sessions(self) -> int:
        """How many Bayeux clients the server knows now."""
        stats = await self.stats()
        return int(stats["sessions"])

    async def held_connects(self) -> int | None:
        """How many /meta/connect requests the server holds now (None: it cannot tell)."""
        held = (await self.stats()).get("held")
        return held if isinstance(held, int) else None

    async def _order(
        self, method: str, path: str, body: object, *, timeout: aiohttp.ClientTimeout | None = None
    ) -> dict[str, Any]:
        if self._control is None:
            raise PeerError(f"{self.kind} peer is not started")
        kwargs: dict[str, Any] = {} if body is None else {"json": body}
        if timeout is not None:
            kwargs["timeout"] = timeout
        async with self._control.request(method, self.control_url + path, **kwargs) as response:
            text = await response.text()
            if response.status != 200:
                raise PeerError(f"{method} {path} on {self.kind}: HTTP {response.status}: {text}")
        answer = json.loads(text)
        if not isinstance(answer, dict):
            raise PeerError(f"{method} {path} on {self.kind}: not a JSON object: {text[:200]}")
        return answer

    @abstractmethod
    async def _start(self) -> None: ...

    @abstractmethod
    async def _stop(self) -> None: ...

    @abstractmethod
    def _is_serving(self) -> bool: ...


class _ExitedEarly(PeerError):
    """The peer process exited before it listened (perhaps: its port was still held)."""


def _published(answer: dict[str, Any], expected: int) -> int:
    published = answer.get("published")
    if published != expected:
        raise PeerError(f"asked to publish {expected}, the peer says {answer}")
    return expected


class NodePeer(BayeuxPeer):
    """cometd-nodejs-server or faye, in a `node` child process (see tests/peers/*.js).

    `gws_stub` (cometd only): also serve the GWS REST calls of a daemon.
    """

    def __init__(
        self,
        kind: Literal["cometd", "faye"],
        *,
        timeout_ms: int,
        port: int,
        gws_stub: GwsStub | None = None,
    ) -> None:
        super().__init__(timeout_ms=timeout_ms, port=port)
        if gws_stub is not None and kind != "cometd":
            raise PeerError("only the cometd peer has a GWS stub")
        self.kind = kind
        self.gws_stub = gws_stub
        self._process: asyncio.subprocess.Process | None = None

    @staticmethod
    def unavailable() -> str | None:
        """Why the Node peers cannot run here, or None."""
        if shutil.which("node") is None:
            return "node is not installed"
        if not (PEERS_DIR / "node_modules").is_dir():
            return f"no {PEERS_DIR / 'node_modules'}: run `npm ci` in {PEERS_DIR}"
        return None

    @property
    def pid(self) -> int:
        """The node process (while started)."""
        if self._process is None:
            raise PeerError(f"{self.kind} peer is not started")
        return self._process.pid

    def _is_serving(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def _start(self) -> None:
        if self._process is not None:
            raise PeerError(f"{self.kind} peer already started")
        # Started again on its port right after a stop, the port may still be held for
        # a moment (the peer exits at once): try again until the deadline.
        deadline = asyncio.get_running_loop().time() + _START_TIMEOUT
        while True:
            try:
                await self._launch()
                return
            except _ExitedEarly:
                if self.port == 0 or asyncio.get_running_loop().time() > deadline:
                    raise
            await asyncio.sleep(0.01)

    async def _launch(self) -> None:
        node = shutil.which("node")
        assert node is not None
        args = [NODE_SCRIPTS[self.kind], "--port", str(self.port)]
        args += ["--timeout-ms", str(self.timeout_ms)]
        if self.gws_stub is not None:
            args += self.gws_stub.arguments()
        process = await asyncio.create_subprocess_exec(
            node,
            *args,
            cwd=PEERS_DIR,
            # The peer exits when this pipe closes, even if the tests are killed.
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            # Inherited: pytest captures it and shows it with a failing test.
            stderr=None,
        )
        self._process = process
        try:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), _START_TIMEOUT)
            if not line:
                code = await asyncio.wait_for(process.wait(), _STOP_TIMEOUT)
                raise _ExitedEarly(f"{self.kind} peer exited with {code} before listening")
            base_url = json.loads(line)["listening"]
        except BaseException:
            await self._stop()
            raise
        if not isinstance(base_url, str):
            await self._stop()
            raise PeerError(f"{self.kind} peer printed {line!r}")
        self.base_url = base_url
        self.port = int(base_url.rsplit(":", 1)[1])

    async def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), _STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if process.stdout is not None:
            # Read to EOF so that the pipe transport is closed, not left to the GC.
            await process.stdout.read()


class SimulatorPeer(BayeuxPeer):
    """The project's own GWS simulator (daemon.simulator), in this process."""

    kind: PeerKind = "simulator"

    def __init__(self, *, timeout_ms: int, port: int) -> None:
        super().__init__(timeout_ms=timeout_ms, port=port)
        try:
            from daemon.simulator import Simulator, SimulatorSettings
        except ImportError as exc:
            _skip(f"daemon.simulator is not importable yet: {exc}")
        # A Bayeux peer: the client under test knows nothing of GWS's CSRF token.
        self._settings = SimulatorSettings(long_poll_timeout_ms=timeout_ms, csrf_cometd=False)
        self._simulator_class = Simulator
        self._simulator: Simulator | None = None

    @property
    def authorization(self) -> str:
        return aiohttp.encode_basic_auth(self._settings.username, self._settings.password)

    def _is_serving(self) -> bool:
        return self._simulator is not None

    async def _start(self) -> None:
        if self._simulator is not None:
            raise PeerError("simulator already started")
        # A restart is a new simulator (a GWS restart forgets everything), same settings.
        simulator = self._simulator_class(self._settings)
        self.base_url = (await simulator.start("127.0.0.1", self.port)).rstrip("/")
        self.port = int(self.base_url.rsplit(":", 1)[1])
        self._simulator = simulator

    async def _stop(self) -> None:
        simulator, self._simulator = self._simulator, None
        if simulator is not None:
            await simulator.stop()

    async def refuse_subscribes(self, count: int) -> None:
        raise PeerError("the simulator cannot refuse subscriptions")

    async def sessions(self) -> int:
        return int((await self.stats())["bayeuxClients"])

    async def held_connects(self) -> int | None:
        # The simulator's stats do not say; it runs in this process, so look.
        clients = getattr(getattr(self._simulator, "bayeux", None), "_clients", None)
        if not isinstance(clients, dict):
            return None
        return sum(1 for c in clients.values() if getattr(c, "held", None) is not None)


def make_peer(kind: PeerKind, *, timeout_ms: int = 25_000, port: int = 0) -> BayeuxPeer:
    """A peer, not started yet; skips the test if it cannot run here."""
    if kind == "simulator":
        return SimulatorPeer(timeout_ms=timeout_ms, port=port)
    reason = NodePeer.unavailable()
    if reason is not None:
        _skip(reason)
    return NodePeer(kind, timeout_ms=timeout_ms, port=port)


@contextlib.asynccontextmanager
async def start_peer(
    kind: PeerKind, *, timeout_ms: int = 25_000, port: int = 0
) -> AsyncIterator[BayeuxPeer]:
    """Start a peer (port 0 = a free port) and stop it on the way out."""
    peer = make_peer(kind, timeout_ms=timeout_ms, port=port)
    try:
        await peer.start()
        yield peer
    finally:
        await peer.aclose()
