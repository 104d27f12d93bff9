"""Notifications of every kind for one user: on request (/control/notify) and as demo traffic.

The simulator runs on 127.0.0.1 and is spoken to over real HTTP (`AgentClient`);
`Activity`'s pacing is also tested on its own, with a publish that records times.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from daemon.simulator import Simulator, SimulatorSettings
from daemon.simulator.activity import Activity
from daemon.simulator.samples import SAMPLES, UNKNOWN_ON_CALLS
from daemon.simulator.testing import AgentClient, control, running
from tests.harness.waiting import wait_until

PASSWORD = "agent1-password"  # the simulator's well-known demo credential
DEADLINE = 5.0
LONG_POLL_MS = 30_000
EVERYTHING = "/v2/me/**"

# kind -> (channel, messageType, how to read the object's id from a payload)
KINDS: dict[str, tuple[str, str, Any]] = {
    "call": ("/v2/me/calls", "CallStateChangeMessage", lambda d: d["call"]["id"]),
    "device": ("/v2/me/devices", "DeviceStateChangeMessage", lambda d: d["devices"][0]["id"]),
    "chat": ("/v2/me/chats", "ChatStateChangeMessage", lambda d: d["chat"]["id"]),
    "workitem": ("/v2/me/workitems", "WorkitemStateChangeMessage", lambda d: d["workitem"]["id"]),
    "unknown": ("/v2/me/calls", "SupervisorMonitoringMessage", lambda d: d["monitoring"]["id"]),
}
DOCUMENTED_TYPES = {name for name in SAMPLES if name != "UnknownMessageType"}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    settings = SimulatorSettings(agents=4, long_poll_timeout_ms=LONG_POLL_MS)
    async with running(settings) as simulator:
        yield simulator


@pytest.fixture
async def alice(sim: Simulator) -> AsyncIterator[AgentClient]:
    client = AgentClient(sim, username="agent-0001", password=PASSWORD)
    try:
        await client.login()
        yield client
    finally:
        await client.close()


# -- /control/notify ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
async def test_notify_publishes_that_many_of_a_kind_on_its_channel_with_distinct_ids(
    sim: Simulator, alice: AgentClient, kind: str
) -> None:
    channel, message_type, object_id = KINDS[kind]
    client_id = await alice.listen(EVERYTHING)

    status, answer = await control(
        sim, "POST", "/control/notify", {"username": "agent-0001", "kind": kind, "count": 3}
    )
    messages = await alice.messages(client_id)
    while len(messages) < 3:
        messages += await alice.messages(client_id)

    assert status == 200
    assert answer["published"] == 3
    assert answer["channel"] == channel
    assert len(set(answer["ids"])) == 3
    assert [m["channel"] for m in messages] == [channel] * 3
    assert [m["data"]["messageType"] for m in messages] == [message_type] * 3
    assert [object_id(m["data"]) for m in messages] == answer["ids"]
    # The shape is the sample's, the id aside.
    if kind == "unknown":
        assert message_type not in DOCUMENTED_TYPES
        assert not message_type.endswith("StateChangeMessage")
        assert set(messages[0]["data"]) == set(UNKNOWN_ON_CALLS)
    else:
        assert set(messages[0]["data"]) == set(SAMPLES[message_type][1])


async def test_notify_ids_stay_distinct_across_orders_and_default_to_the_configured_user(
    sim: Simulator,
) -> None:
    configured = AgentClient(sim)
    try:
        await configured.login()
        client_id = await configured.listen(EVERYTHING)
        _, first = await control(sim, "POST", "/control/notify", {"kind": "chat", "count": 2})
        _, second = await control(sim, "POST", "/control/notify", {"kind": "chat"})
        notes = await configured.notifications(client_id)
        while len(notes) < 3:
            notes += await configured.notifications(client_id)
    finally:
        await configured.close()

    ids = first["ids"] + second["ids"]
    assert len(set(ids)) == 3
    assert [n["chat"]["id"] for n in notes] == ids


@pytest.mark.parametrize(
    ("order", "status", "error"),
    [
        ({"kind": "fax"}, 400, "'kind' must be one of call, device, chat, workitem, unknown"),
        ({"kind": "call", "count": -1}, 400, "'count' must be an integer from 0 to 100000"),
        ({"kind": "call", "count": 100_001}, 400, "'count' must be an integer from 0 to 100000"),
        ({"kind": "call", "count": True}, 400, "'count' must be an integer from 0 to 100000"),
        ({"kind": "call", "username": "nobody"}, 404, "no user 'nobody'"),
        ({"kind": "call", "username": 7}, 400, "'username' must be a non-empty string"),
    ],
)
async def test_notify_refuses_a_bad_order(
    sim: Simulator, order: dict[str, Any], status: int, error: str
) -> None:
    assert await control(sim, "POST", "/control/notify", order) == (status, {"error": error})
    assert sim.bayeux.messages_published == 0


# -- steady demo traffic --------------------------------------------------------------------


async def test_activity_publishes_at_about_the_rate_to_subscribed_users_only(
    sim: Simulator,
) -> None:
    names = ["agent-0001", "agent-0002", "agent-0003"]
    agents = [AgentClient(sim, username=name, password=PASSWORD) for name in names]
    try:
        for agent in agents:
            await agent.login()
        subscribed = [await agent.listen(EVERYTHING) for agent in agents[:2]]
        handshook_only = await agents[2].handshake()  # and agent-0004 never logs in
        received: list[list[dict[str, Any]]] = [[], []]

        async def all_received() -> bool:
            for n, (agent, client_id) in enumerate(zip(agents, subscribed, strict=False)):
                batch = await agent.connect(client_id, timeout=0)
                received[n] += [message["data"] for message in batch[:-1]]
            total = sum(len(got) for got in received)
            assert total <= published, "more received than published"
            return total == published

        rate, count = 50.0, 50
        started = time.monotonic()
        await control(sim, "POST", "/control/settings", {"activity_per_second": rate})
        await wait_until(
            lambda: sim.activity.published >= count, timeout=10, what=f"{count} published"
        )
        elapsed = time.monotonic() - started
        await control(sim, "POST", "/control/settings", {"activity_per_second": 0})
        published = sim.activity.published
        await wait_until(all_received, timeout=DEADLINE, what="everything received")
    finally:
        for agent in agents:
            await agent.close()
    _, stats = await control(sim, "GET", "/control/stats")

    # 50 at 50/s take about a second; generous bounds for a loaded machine.
    assert 0.5 <= elapsed <= 3.0, elapsed
    assert all(received), "both subscribed users got some"
    types = {note["messageType"] for got in received for note in got}
    assert types <= {"CallStateChangeMessage", "DeviceStateChangeMessage", "ChatStateChangeMessage"}
    assert sim.bayeux.queued(handshook_only) == 0
    assert stats["activity_published"] == published
    assert stats["users_subscribed"] == 2


async def test_activity_stops_with_the_simulator() -> None:
    settings = SimulatorSettings(activity_per_second=1000.0, long_poll_timeout_ms=LONG_POLL_MS)
    async with running(settings) as sim:
        agent = AgentClient(sim)
        try:
            await agent.login()
            await agent.listen(EVERYTHING)
            await wait_until(lambda: sim.activity.published >= 10, timeout=DEADLINE, what="traffic")
        finally:
            await agent.close()
        async with asyncio.timeout(DEADLINE):
            await sim.stop()

    still_running = [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "") == "Activity.run"
    ]
    assert still_running == []


async def test_activity_spreads_its_publishes_rather_than_bunching_them() -> None:
    times: list[float] = []
    done = asyncio.Event()

    def publish(_user: str, _kind: str) -> None:
        times.append(time.monotonic())
        if len(times) == 60:
            done.set()

    activity = Activity(rate=lambda: 100.0, subscribed=lambda: ["u1"], publish=publish)
    task = asyncio.create_task(activity.run())
    try:
        async with asyncio.timeout(DEADLINE):
            await done.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # Gaps are 5-15 ms at 100/s; a late wake-up may bunch a few, a burst bunches them all.
    assert 0.005 <= statistics.median(gaps) <= 0.02
    assert sum(1 for gap in gaps if gap < 0.001) <= len(gaps) // 4


async def test_activity_publishes_nothing_while_nobody_is_subscribed() -> None:
    calls: list[tuple[str, str]] = []
    users: list[str] = []
    looked = 0

    def subscribed() -> list[str]:
        nonlocal looked
        looked += 1
        return users

    activity = Activity(
        rate=lambda: 1000.0, subscribed=subscribed, publish=lambda u, k: calls.append((u, k))
    )
    task = asyncio.create_task(activity.run())
    try:
        await wait_until(lambda: looked >= 5, timeout=DEADLINE, what="a few looks at nobody")
        published_to_nobody = activity.published
        users.append("late")
        await wait_until(lambda: len(calls) >= 5, timeout=DEADLINE, what="publishes to late")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    assert published_to_nobody == 0
    assert {user for user, _ in calls} == {"late"}
    assert {kind for _, kind in calls} <= {"call", "device", "chat"}
    assert activity.published == len(calls)
