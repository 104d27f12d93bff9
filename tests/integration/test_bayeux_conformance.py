"""daemon.cometd.BayeuxClient against independent Bayeux servers.

Peers: cometd-nodejs-server 1.2.1 (the CometD project's Node server, long-polling),
faye 1.4.3 (long-polling and WebSocket), and our own simulator (daemon.simulator).
The Node peers live in tests/peers (`npm ci` there); see tests/harness/bayeux_peers.py.

Nothing here sleeps to synchronise: every wait is on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from daemon.cometd import (
    LONG_POLLING,
    WEBSOCKET,
    BayeuxClient,
    ClientSettings,
    ConnectionState,
    Message,
    Subscribed,
    payload,
)
from tests.harness.bayeux_peers import BayeuxPeer, PeerKind, start_peer
from tests.harness.waiting import wait_until

CHANNEL = "/v2/me/emails"
# Long enough that a connect the server holds is unmistakable, short enough that
# nothing in here ever waits for it.
LONG_POLL_MS = 20_000
SUBSCRIBE_WITHIN = 5.0
WAIT = 10.0


@dataclass(frozen=True)
class Case:
    kind: PeerKind
    websocket: bool
    restartable: bool

    @property
    def transport(self) -> str:
        return WEBSOCKET if self.websocket else LONG_POLLING


COMETD = pytest.param(
    Case("cometd", websocket=False, restartable=True),
    id="cometd-nodejs-server/long-polling",
    marks=pytest.mark.peers,
)
FAYE_LP = pytest.param(
    Case("faye", websocket=False, restartable=False),
    id="faye/long-polling",
    marks=pytest.mark.peers,
)
FAYE_WS = pytest.param(
    Case("faye", websocket=True, restartable=False),
    id="faye/websocket",
    marks=pytest.mark.peers,
)
SIMULATOR = pytest.param(
    Case("simulator", websocket=False, restartable=True), id="simulator/long-polling"
)
ALL_CASES = [COMETD, FAYE_LP, FAYE_WS, SIMULATOR]
RESTARTABLE_CASES = [COMETD, SIMULATOR]


@pytest.fixture(params=ALL_CASES)
def case(request: pytest.FixtureRequest) -> Case:
    param = request.param
    assert isinstance(param, Case)
    return param


@pytest.fixture
async def peer(case: Case) -> AsyncIterator[BayeuxPeer]:
    async with start_peer(case.kind, timeout_ms=LONG_POLL_MS) as started:
        yield started


# -- recording what the client reports ----------------------------------------------


@dataclass
class Recorder:
    """Everything the client told us, in order."""

    batches: list[list[Message]] = field(default_factory=list)
    subscribed: list[Subscribed] = field(default_factory=list)
    states: list[ConnectionState] = field(default_factory=list)
    # ("state", ConnectionState) and ("subscribed", Subscribed), interleaved as told.
    events: list[tuple[str, object]] = field(default_factory=list)

    async def on_batch(self, batch: list[Message]) -> None:
        assert isinstance(batch, list), f"a batch must be a list, got {type(batch).__name__}"
        assert batch, "an empty batch was handed over"
        # Payloads come as JSON text; recorded as their values.
        self.batches.append([Message(m.channel, payload(m.data)) for m in batch])

    async def on_subscribed(self, info: Subscribed) -> None:
        self.subscribed.append(info)
        self.events.append(("subscribed", info))

    def on_state(self, state: ConnectionState) -> None:
        self.states.append(state)
        self.events.append(("state", state))

    @property
    def messages(self) -> list[Message]:
        return [m for batch in self.batches for m in batch]

    @property
    def reference_ids(self) -> list[int]:
        return [_reference_id(m) for m in self.messages]

    def count(self) -> int:
        return sum(len(b) for b in self.batches)

    def states_since(self, index: int) -> list[ConnectionState]:
        return self.states[index:]

    def summary(self) -> str:
        ids = self.reference_ids
        tail = ids[-5:]
        return (
            f"states={[s.value for s in self.states]} subscribed={len(self.subscribed)} "
            f"batches={len(self.batches)} messages={len(ids)} last_ids={tail}"
        )


def _reference_id(message: Message) -> int:
    assert message.channel == CHANNEL, message
    assert isinstance(message.data, dict), message
    reference_id = message.data.get("referenceId")
    assert isinstance(reference_id, int), message
    return reference_id


@dataclass
class Harness:
    peer: BayeuxPeer
    client: BayeuxClient
    task: asyncio.Task[None]
    rec: Recorder

    def state(self) -> ConnectionState:
        """The client's state now (a call, so that type checkers do not pin it)."""
        return self.client.state

    async def wait_until(
        self, predicate: Callable[[], bool], what: str, timeout: float = WAIT
    ) -> None:
        """Wait until `predicate()` holds; fail at once if run() ends first.

        A failure says what the client reported so far.
        """

        def holds() -> bool:
            if predicate():
                return True
            if self.task.done():
                raise AssertionError(f"run() ended while waiting for {what}: {_outcome(self.task)}")
            return False

        try:
            await wait_until(holds, timeout=timeout, what=what)
        except AssertionError as failure:
            raise AssertionError(f"{failure}; {self.rec.summary()}") from None

    async def wait_for_messages(self, count: int, timeout: float = WAIT) -> None:
        await self.wait_until(lambda: self.rec.count() >= count, f"{count} messages", timeout)

    async def wait_subscribed(self, times: int = 1, timeout: float = WAIT) -> Subscribed:
        await self.wait_until(
            lambda: len(self.rec.subscribed) >= times, f"subscription #{times}", timeout
        )
        return self.rec.subscribed[times - 1]

    async def wait_state(
        self, state: ConnectionState, *, after: int = 0, timeout: float = WAIT
    ) -> int:
        """Wait until `state` is reported at index >= `after`; returns that index."""

        def seen() -> bool:
            return state in self.rec.states[after:]

        await self.wait_until(seen, f"state {state.value} (after report #{after})", timeout)
        return self.rec.states.index(state, after)


def _outcome(task: asyncio.Task[None]) -> str:
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    return "returned" if exc is None else f"raised {exc!r}"


@contextlib.asynccontextmanager
async def running_client(peer: BayeuxPeer, case: Case) -> AsyncIterator[Harness]:
    """A BayeuxClient subscribed to CHANNEL on `peer`, run() in a task; closed on exit."""
    rec = Recorder()
    async with peer.client_session() as session:
        client = BayeuxClient(
            session=session,
            settings=ClientSettings(
                url=peer.url, channels=(CHANNEL,), allow_websocket=case.websocket
            ),
            on_batch=rec.on_batch,
            on_subscribed=rec.on_subscribed,
            on_state=rec.on_state,
        )
        task = asyncio.create_task(client.run(), name="bayeux-client-under-test")
        try:
            yield Harness(peer=peer, client=client, task=task, rec=rec)
        finally:
            await client.close()
            try:
                await asyncio.wait_for(task, 5.0)
            finally:
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task


async def poll_until(
    probe: Callable[[], Awaitable[bool]], what: str, timeout: float = WAIT
) -> None:
    """For conditions only the server can tell: ask it until yes, with a deadline."""
    try:
        async with asyncio.timeout(timeout):
            # The condition lives in the peer process: there is no event to await.
            while not await probe():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"no {what} within {timeout} s") from None


async def server_stat(peer: BayeuxPeer, key: str) -> Any:
    return (await peer.stats()).get(key)


# -- a. first subscription and one big publish ------------------------------------


async def test_subscribes_at_once_and_receives_a_burst_exactly_once(
    peer: BayeuxPeer, case: Case
) -> None:
    n = 2_000
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with running_client(peer, case) as h:
        info = await h.wait_subscribed(timeout=SUBSCRIBE_WITHIN)
        assert loop.time() - started < SUBSCRIBE_WITHIN
        assert info.handshakes == 1
        assert not info.rehandshake
        assert info.channels == (CHANNEL,)
        assert info.transport == case.transport
        assert h.client.transport_name == case.transport
        # CONNECTED comes with the first /meta/connect answer: it must not have
        # been held for the server's long-poll timeout (20 s).
        await h.wait_state(ConnectionState.CONNECTED, timeout=SUBSCRIBE_WITHIN)
        assert loop.time() - started < SUBSCRIBE_WITHIN

        assert await peer.publish(CHANNEL, n) == n
        await h.wait_for_messages(n)
        # A last message as a barrier: duplicates of the burst would come before it.
        await peer.publish(CHANNEL, 1, start=n)
        await h.wait_for_messages(n + 1)

        ids = h.rec.reference_ids
        assert len(ids) == n + 1, f"{len(ids) - n - 1} extra messages"
        assert len(set(ids)) == len(ids), "duplicates"
        assert ids == list(range(n + 1)), "out of order"
        first = h.rec.messages[0].data
        assert first["messageType"] == "EmailStateChangeMessage"
        assert first["email"]["id"] == "SEQ0000000000"
        assert first["email"]["state"] == "Sent"
        assert h.rec.subscribed == [info], "re-subscribed without cause"


# -- b. bursts while connected ------------------------------------------------------


async def test_bursts_arrive_in_order_as_batches(peer: BayeuxPeer, case: Case) -> None:
    async with running_client(peer, case) as h:
        await h.wait_subscribed()
        await h.wait_state(ConnectionState.CONNECTED)
        expected: list[int] = []

        # Back to back: the first burst meets a held connect, the next ones queue.
        await peer.publish(CHANNEL, 500, start=0)
        expected += range(500)
        await peer.publish_data(
            CHANNEL, [{"referenceId": i, "note": "given"} for i in range(500, 600)]
        )
        expected += range(500, 600)
        await peer.publish(CHANNEL, 20_000, start=600)
        expected += range(600, 20_600)
        await h.wait_for_messages(len(expected), timeout=30.0)

        # And once everything is delivered and a connect is held again.
        await peer.publish(CHANNEL, 3, start=20_600)
        expected += range(20_600, 20_603)
        await h.wait_for_messages(len(expected))

        ids = h.rec.reference_ids
        assert len(ids) == len(expected)
        assert ids == expected
        given = [m.data for m in h.rec.messages[500:600]]
        assert given == [{"referenceId": i, "note": "given"} for i in range(500, 600)]
        sizes = [len(b) for b in h.rec.batches]
        if case.transport == LONG_POLLING:
            # Each /meta/connect answer carries the whole queue: handed over as one batch.
            assert max(sizes) > 1, f"every batch had one message: {len(sizes)} batches"
            assert len(sizes) < len(ids)
        # (faye over WebSocket sends every message in its own frame, so its
        # batches are single messages by construction.)
        assert len(h.rec.subscribed) == 1


# -- c. the server forgets the client --------------------------------------------


async def test_unknown_client_rehandshakes_and_resubscribes(peer: BayeuxPeer, case: Case) -> None:
    async with running_client(peer, case) as h:
        first = await h.wait_subscribed()
        await h.wait_state(ConnectionState.CONNECTED)
        await peer.publish(CHANNEL, 100, start=0)
        await h.wait_for_messages(100)

        await peer.forget()
        second = await h.wait_subscribed(times=2)
        assert second.handshakes == 2
        assert second.rehandshake
        assert not first.rehandshake
        assert second.client_id != first.client_id
        assert second.transport == case.transport
        assert h.client.handshakes == 2

        await peer.publish(CHANNEL, 100, start=1_000)
        await h.wait_for_messages(200)
        await peer.publish(CHANNEL, 1, start=1_100)  # barrier
        await h.wait_for_messages(201)

        assert h.rec.reference_ids == [*range(100), *range(1_000, 1_101)]
        assert len(h.rec.subscribed) == 2
        assert await peer.sessions() == 1
        handshakes = await server_stat(peer, "handshakes")
        if handshakes is not None:
            assert handshakes == 2, "more than one handshake to recover from one forget"


# -- d. server restart -------------------------------------------------------------


@pytest.mark.parametrize("case", RESTARTABLE_CASES)
async def test_server_restart_recovers_and_resubscribes(peer: BayeuxPeer, case: Case) -> None:
    async with running_client(peer, case) as h:
        await h.wait_subscribed()
        connected_at = await h.wait_state(ConnectionState.CONNECTED)
        await peer.publish(CHANNEL, 10, start=0)
        await h.wait_for_messages(10)

        port = peer.port
        await peer.stop()
        await h.wait_state(ConnectionState.RECONNECTING, after=connected_at + 1)
        await peer.start()
        assert peer.port == port

        second = await h.wait_subscribed(times=2)
        assert second.handshakes == 2
        assert second.rehandshake
        await h.wait_state(ConnectionState.CONNECTED, after=connected_at + 1)

        await peer.publish(CHANNEL, 10, start=1_000)
        await peer.publish(CHANNEL, 1, start=1_010)  # barrier
        await h.wait_for_messages(21)
        assert h.rec.reference_ids == [*range(10), *range(1_000, 1_011)]
        assert await peer.sessions() == 1
        handshakes = await server_stat(peer, "handshakes")
        if handshakes is not None:
            assert handshakes == 1, "the restarted server saw more than one handshake"


# -- e. clean close ----------------------------------------------------------------


async def test_close_ends_run_promptly_during_a_held_connect(peer: BayeuxPeer, case: Case) -> None:
    rec_states: list[ConnectionState] = []
    async with running_client(peer, case) as h:
        await h.wait_subscribed()
        await h.wait_state(ConnectionState.CONNECTED)
        if await peer.held_connects() is not None:

            async def held() -> bool:
                return (await peer.held_connects() or 0) >= 1

            await poll_until(held, "held /meta/connect on the server")
        assert await peer.sessions() == 1

        loop = asyncio.get_running_loop()
        began = loop.time()
        await h.client.close()
        await asyncio.wait_for(asyncio.shield(h.task), 2.0)
        took = loop.time() - began
        assert took < 2.0
        assert h.task.exception() is None
        assert h.state() is ConnectionState.CLOSED
        rec_states = list(h.rec.states)

    assert rec_states[-1] is ConnectionState.CLOSED
    assert ConnectionState.RECONNECTING not in rec_states

    # The client said /meta/disconnect: the server dropped the session.
    async def forgotten() -> bool:
        return await peer.sessions() == 0

    await poll_until(forgotten, "session removed by /meta/disconnect", timeout=3.0)


# -- f. connection state callback -------------------------------------------------


async def test_state_callback_reports_connected_and_reconnecting(
    peer: BayeuxPeer, case: Case
) -> None:
    async with running_client(peer, case) as h:
        await h.wait_subscribed()
        connected_at = await h.wait_state(ConnectionState.CONNECTED)
        kinds = [kind for kind, _ in h.rec.events]
        subscribed_at = kinds.index("subscribed")
        assert h.rec.events.index(("state", ConnectionState.CONNECTED)) > subscribed_at, (
            "CONNECTED reported before the subscription"
        )
        assert h.rec.states[:connected_at] == [ConnectionState.HANDSHAKING]
        assert h.state() is ConnectionState.CONNECTED

        # The outage: the server goes away (restartable peers) or forgets us.
        if case.restartable:
            await h.peer.stop()
        else:
            await h.peer.forget()
        reconnecting_at = await h.wait_state(ConnectionState.RECONNECTING, after=connected_at + 1)
        if case.restartable:
            # Still down: nothing but RECONNECTING can be true now.
            assert h.state() is ConnectionState.RECONNECTING
            await h.peer.start()
        back_at = await h.wait_state(ConnectionState.CONNECTED, after=reconnecting_at + 1)
        await h.wait_subscribed(times=2)

        outage = h.rec.states[connected_at + 1 : back_at + 1]
        assert outage[0] is ConnectionState.RECONNECTING
        assert outage[-1] is ConnectionState.CONNECTED
        assert ConnectionState.HANDSHAKING in outage
        assert ConnectionState.CLOSED not in outage
        assert ConnectionState.DISCONNECTED not in outage
        assert h.state() is ConnectionState.CONNECTED


# -- g. a refused subscription -------------------------------------------------------


@pytest.mark.parametrize("case", [COMETD, FAYE_LP, FAYE_WS])
async def test_refused_subscription_is_retried(peer: BayeuxPeer, case: Case) -> None:
    """A refused /meta/subscribe must not leave the client connected but unsubscribed.

    (It did on long-polling: run() kept the clientId and entered the connect loop,
    CONNECTED with no subscription and no messages, on_subscribed never called.)
    """
    await peer.refuse_subscribes(1)
    async with running_client(peer, case) as h:
        # A correct client handshakes (or subscribes) again within its 1 s backoff cap.
        info = await h.wait_subscribed(timeout=4.0)
        assert info.channels == (CHANNEL,)
        await peer.publish(CHANNEL, 10)
        await h.wait_for_messages(10, timeout=4.0)
        assert h.rec.reference_ids == list(range(10))


# -- the peers themselves --------------------------------------------------------


@pytest.mark.parametrize("case", [COMETD, FAYE_LP, SIMULATOR])
async def test_forget_makes_the_server_answer_unknown_client(peer: BayeuxPeer) -> None:
    """What /control/forget does, seen without our client: 401/402 and advice handshake."""
    async with peer.client_session() as session:

        async def bayeux(message: dict[str, Any]) -> list[dict[str, Any]]:
            async with session.post(peer.url, json=[message]) as response:
                assert response.status == 200
                answer = await response.json()
                assert isinstance(answer, list)
                return answer

        handshake = await bayeux(
            {
                "channel": "/meta/handshake",
                "version": "1.0",
                "id": "1",
                "supportedConnectionTypes": ["long-polling"],
            }
        )
        client_id = handshake[0]["clientId"]
        connect = {
            "channel": "/meta/connect",
            "clientId": client_id,
            "connectionType": "long-polling",
            "advice": {"timeout": 0},
            "id": "2",
        }
        (reply,) = [r for r in await bayeux(connect) if r["channel"] == "/meta/connect"]
        assert reply["successful"] is True
        assert await peer.sessions() == 1

        await peer.forget()
        (reply,) = [
            r for r in await bayeux(connect | {"id": "3"}) if r["channel"] == "/meta/connect"
        ]
        assert reply["successful"] is False
        assert str(reply["error"]).split(":", 1)[0] in ("401", "402"), reply
        assert reply["advice"]["reconnect"] == "handshake"
        assert await peer.sessions() == 0
