"""Many agents in one simulated GWS: users, their workspaces, sessions and notifications.

Every test runs a real simulator on 127.0.0.1 and talks to it over real HTTP:
raw REST and Bayeux with `AgentClient` (one cookie jar per agent), and the
daemon's own CometD client where what matters is what a real client receives.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from daemon.cometd import BayeuxClient, ClientSettings, Message, Subscribed, payload
from daemon.simulator import Simulator, SimulatorSettings
from daemon.simulator.testing import AgentClient, control, running, send_body
from tests.harness.waiting import wait_until

PASSWORD = "agent1-password"  # the simulator's well-known demo credential
DEADLINE = 5.0
# Long on purpose: a connect that is wrongly held fails on a test deadline.
LONG_POLL_MS = 30_000
EMAILS = "/v2/me/emails"
CALLS = "/v2/me/calls"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    settings = SimulatorSettings(
        agents=3, notify_delay_seconds=0.0, long_poll_timeout_ms=LONG_POLL_MS
    )
    async with running(settings) as simulator:
        yield simulator


@contextlib.asynccontextmanager
async def logged_in(sim: Simulator, *usernames: str) -> AsyncIterator[list[AgentClient]]:
    """One logged-in AgentClient per username, closed after the block."""
    clients = [AgentClient(sim, username=name, password=PASSWORD) for name in usernames]
    try:
        for client in clients:
            await client.login()
        yield clients
    finally:
        for client in clients:
            await client.close()


@contextlib.asynccontextmanager
async def cometd_client(
    sim: Simulator, agent: AgentClient, *channels: str
) -> AsyncIterator[list[Message]]:
    """The daemon's CometD client in `agent`'s HTTP session, subscribed to `channels`;
    yields the list it appends every received message to."""
    received: list[Message] = []
    subscribed = asyncio.Event()

    async def on_batch(batch: list[Message]) -> None:
        received.extend(batch)

    async def on_subscribed(_subscribed: Subscribed) -> None:
        subscribed.set()

    client = BayeuxClient(
        session=agent.http,
        settings=ClientSettings(
            url=f"{sim.base_url}/api/v2/notifications", channels=channels, allow_websocket=False
        ),
        on_batch=on_batch,
        on_subscribed=on_subscribed,
        headers=lambda: {"X-CSRF-TOKEN": agent.csrf},
    )
    running_client = asyncio.create_task(client.run())
    try:
        async with asyncio.timeout(DEADLINE):
            await subscribed.wait()
        yield received
    finally:
        await client.close()
        await asyncio.wait_for(running_client, DEADLINE)


# -- users ------------------------------------------------------------------------------


async def test_the_agents_setting_makes_users_who_log_in_with_the_simulators_password(
    sim: Simulator,
) -> None:
    names = ["agent1", "agent-0001", "agent-0002", "agent-0003"]
    async with logged_in(sim, *names) as agents:
        me = [(await agent.get("/api/v2/me"))[1]["user"] for agent in agents]
    beyond = AgentClient(sim, username="agent-0004", password=PASSWORD)
    wrong = AgentClient(sim, username="agent-0002", password="not-it")
    try:
        refused = [(await client.get("/api/v2/me"))[0] for client in (beyond, wrong)]
    finally:
        await beyond.close()
        await wrong.close()
    _, stats = await control(sim, "GET", "/control/stats")

    assert [user["userName"] for user in me] == names
    assert len({user["id"] for user in me}) == 4
    assert me[0]["id"] == sim.user_id  # the configured user's id is what it always was
    assert refused == [401, 401]
    assert stats["users"] == 4


async def test_control_users_adds_a_user_and_changes_a_password(sim: Simulator) -> None:
    added = await control(sim, "POST", "/control/users", {"username": "sup1", "password": "pw-1"})
    same = await control(sim, "POST", "/control/users", {"username": "sup1", "password": "pw-1"})
    new_client = AgentClient(sim, username="sup1", password="pw-1")
    try:
        await new_client.login()
        changed = await control(
            sim, "POST", "/control/users", {"username": "sup1", "password": "pw-2"}
        )
        old_status = (await new_client.get("/api/v2/me"))[0]
    finally:
        await new_client.close()
    renewed = AgentClient(sim, username="sup1", password="pw-2")
    try:
        await renewed.login()
    finally:
        await renewed.close()
    no_name = await control(sim, "POST", "/control/users", {"password": "x"})
    colon = await control(sim, "POST", "/control/users", {"username": "a:b", "password": "x"})
    no_password = await control(sim, "POST", "/control/users", {"username": "sup2"})

    assert added == (200, {"username": "sup1", "created": True})
    assert same == (200, {"username": "sup1", "created": False})
    assert changed == (200, {"username": "sup1", "created": False})
    assert old_status == 401
    assert [no_name[0], colon[0], no_password[0]] == [400, 400, 400]
    assert sim.agent("sup2") is None


async def test_the_agents_setting_changes_at_runtime(sim: Simulator) -> None:
    async with logged_in(sim, "agent-0003") as [third]:
        lowered = await control(sim, "POST", "/control/settings", {"agents": 2})
        gone_status = (await third.get("/api/v2/me"))[0]
        raised = await control(sim, "POST", "/control/settings", {"agents": 5})
        async with logged_in(sim, "agent-0005"):
            pass
    too_many = await control(sim, "POST", "/control/settings", {"agents": 10_000})

    assert lowered[1]["agents"] == 2
    assert gone_status == 401
    assert raised[1]["agents"] == 5
    assert too_many == (
        400,
        {"error": "setting 'agents' needs a whole number from 0 to 9999, got 10000"},
    )
    assert sim.settings.agents == 5


# -- workspaces and sessions ----------------------------------------------------------------


async def test_each_user_has_a_workspace_of_its_own(sim: Simulator) -> None:
    async with logged_in(sim, "agent-0001", "agent-0002") as [alice, bob]:
        _, mine = await alice.post("/api/v2/me/emails", {"queueUri": "/queues/Outbound"})
        _, theirs = await bob.post("/api/v2/me/emails", {})
        assert (await alice.post("/api/v2/me/emails/SENT-A", send_body()))[0] == 200
        alice_list = (await alice.get("/api/v2/me/emails?fields=*"))[1]["emails"]
        bob_list = (await bob.get("/api/v2/me/emails?fields=*"))[1]["emails"]
        bob_me = (await bob.get("/api/v2/me?subresources=*"))[1]["user"]
        bob_get = await bob.get(f"/api/v2/me/emails/{mine['id']}")
        bob_cancel = await bob.post(f"/api/v2/me/emails/{mine['id']}", {"operationName": "Cancel"})
        bob_send = await bob.post(f"/api/v2/me/emails/{mine['id']}", send_body())
        bob_send_sent = await bob.post("/api/v2/me/emails/SENT-A", send_body())
        alice_get = await alice.get(f"/api/v2/me/emails/{mine['id']}")

    not_found = {"statusCode": 6, "statusMessage": f"Email '{mine['id']}' not found"}
    assert sorted(e["id"] for e in alice_list) == sorted([mine["id"], "SENT-A"])
    assert [e["id"] for e in bob_list] == [theirs["id"]]
    assert [e["id"] for e in bob_me["emails"]] == [theirs["id"]]
    assert bob_get[:2] == (404, not_found)
    assert bob_cancel == (404, not_found)
    assert bob_send == (404, not_found)
    assert bob_send_sent[0] == 404
    assert alice_get[0] == 200
    assert alice_get[1]["email"]["state"] == "Composing"
    assert sim.sends_accepted == 1


async def test_two_users_sends_each_get_reference_id_1_in_their_own_sessions(
    sim: Simulator,
) -> None:
    sim.settings.reference_id_in_answer = True
    async with logged_in(sim, "agent-0001", "agent-0002") as [alice, bob]:
        alice_client = await alice.listen()
        bob_client = await bob.listen()
        first_alice = await alice.post("/api/v2/me/emails/A1", send_body())
        first_bob = await bob.post("/api/v2/me/emails/B1", send_body())
        second_alice = await alice.post("/api/v2/me/emails/A2", send_body())
        bob_notes = await bob.notifications(bob_client)
        alice_notes = await alice.notifications(alice_client)
        while len(alice_notes) < 2:
            alice_notes += await alice.notifications(alice_client)

    assert first_alice == (200, {"statusCode": 0, "referenceId": 1})
    assert first_bob == (200, {"statusCode": 0, "referenceId": 1})
    assert second_alice == (200, {"statusCode": 0, "referenceId": 2})
    assert [(n["referenceId"], n["email"]["id"]) for n in bob_notes] == [(1, "B1")]
    assert [(n["referenceId"], n["email"]["id"]) for n in alice_notes] == [(1, "A1"), (2, "A2")]


async def test_a_request_with_another_users_credentials_gets_a_session_of_its_own(
    sim: Simulator,
) -> None:
    assert sim.base_url is not None
    alice = {"Authorization": aiohttp.encode_basic_auth("agent-0001", PASSWORD)}
    bob = {"Authorization": aiohttp.encode_basic_auth("agent-0002", PASSWORD)}
    async with aiohttp.ClientSession(
        sim.base_url, cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as http:
        async with http.get("/api/v2/me", headers=alice) as first:
            alice_cookie = first.cookies["JSESSIONID"].value
        # The jar sends alice's cookie along with bob's credentials.
        async with http.get("/api/v2/me", headers=bob) as second:
            bob_cookie = second.cookies["JSESSIONID"].value
            bob_user = (await second.json())["user"]["userName"]

    assert bob_cookie != alice_cookie
    assert bob_user == "agent-0002"
    assert sim.session_count == 2  # alice's session lives on


async def test_a_password_change_for_one_user_leaves_the_others_sessions_alive(
    sim: Simulator,
) -> None:
    async with logged_in(sim, "agent-0001", "agent-0002") as [alice, bob]:
        alice_client = await alice.listen()
        bob_client = await bob.listen()
        held = asyncio.create_task(bob.connect(bob_client))
        await wait_until(
            lambda: sim.bayeux.held_connects() == 1, timeout=DEADLINE, what="bob's held connect"
        )

        changed = await control(
            sim, "POST", "/control/password", {"username": "agent-0002", "password": "new"}
        )
        released = await asyncio.wait_for(held, DEADLINE)
        bob_status = (await bob.get("/api/v2/me"))[0]
        async with alice.http.get("/api/v2/me") as response:
            alice_status = response.status
            alice_cookie_renewed = "JSESSIONID" in response.cookies
        alice_connect = await alice.connect(alice_client, timeout=0)
        unknown = await control(
            sim, "POST", "/control/password", {"username": "nobody", "password": "x"}
        )

    assert changed == (200, {"changed": True})
    assert released[-1]["error"] == "402::Unknown client"
    assert bob_status == 401
    assert (alice_status, alice_cookie_renewed) == (200, False)
    assert alice_connect[-1]["successful"] is True
    assert sim.bayeux.client_ids() == [alice_client]
    assert unknown == (404, {"error": "no user 'nobody'"})
    assert sim.settings.password == PASSWORD  # the configured user's is untouched


async def test_forgetting_one_user_drops_that_users_sessions_and_clients_only(
    sim: Simulator,
) -> None:
    async with logged_in(sim, "agent-0001", "agent-0002") as [alice, bob]:
        alice_client = await alice.listen()
        bob_client = await bob.listen()

        forgotten = await control(sim, "POST", "/control/forget", {"username": "agent-0001"})
        sim.settings.csrf_cometd = False  # alice's token went with her session
        alice_after = await alice.connect(alice_client, timeout=0)
        bob_after = await bob.connect(bob_client, timeout=0)

    assert forgotten == (200, {"forgotten": True})
    assert alice_after[-1]["error"] == "402::Unknown client"
    assert bob_after[-1]["successful"] is True


# -- notifications go to their user only ------------------------------------------------------


async def test_a_cometd_client_never_receives_another_users_notifications(
    sim: Simulator,
) -> None:
    async with (
        logged_in(sim, "agent-0001", "agent-0002") as [alice, bob],
        cometd_client(sim, alice, EMAILS, CALLS) as alice_got,
        cometd_client(sim, bob, EMAILS, CALLS) as bob_got,
    ):
        assert (await bob.post("/api/v2/me/emails/B1", send_body()))[0] == 200
        _, call = await control(
            sim, "POST", "/control/notify", {"username": "agent-0002", "kind": "call"}
        )
        await wait_until(lambda: len(bob_got) == 2, timeout=DEADLINE, what="bob's two")
        # A message of bob's that reached alice would be queued before this one.
        _, barrier = await control(
            sim, "POST", "/control/notify", {"username": "agent-0001", "kind": "call"}
        )
        await wait_until(lambda: alice_got, timeout=DEADLINE, what="alice's barrier")

    assert sorted(m.channel for m in bob_got) == [CALLS, EMAILS]
    bob_data = [payload(m.data) for m in bob_got]
    assert {d.get("email", {}).get("id") for d in bob_data} >= {"B1"}
    assert any(d.get("call", {}).get("id") == call["ids"][0] for d in bob_data)
    assert [(m.channel, payload(m.data)["call"]["id"]) for m in alice_got] == [
        (CALLS, barrier["ids"][0])
    ]


async def test_publish_and_samples_with_a_username_reach_that_users_clients_only(
    sim: Simulator,
) -> None:
    async with logged_in(sim, "agent-0001", "agent-0002") as [alice, bob]:
        alice_client = await alice.listen("/v2/me/**")
        bob_client = await bob.listen("/v2/me/**")

        to_bob = await control(
            sim, "POST", "/control/publish", {"data": [{"n": 1}], "username": "agent-0002"}
        )
        sequence = await control(
            sim, "POST", "/control/publish", {"count": 2, "username": "agent-0002"}
        )
        samples = await control(
            sim, "POST", "/control/samples", {"samples": ["ErrorMessage"], "username": "agent-0002"}
        )
        to_all = await control(sim, "POST", "/control/publish", {"data": [{"n": 2}]})
        unknown = await control(
            sim, "POST", "/control/publish", {"data": [{}], "username": "nobody"}
        )
        bob_notes = await bob.notifications(bob_client)
        alice_notes = await alice.notifications(alice_client)

    assert to_bob == (200, {"published": 1})
    assert sequence == (200, {"published": 2})
    assert to_all == (200, {"published": 1})
    assert samples[0] == 200
    assert len(bob_notes) == 5
    assert bob_notes[0] == {"n": 1}
    assert bob_notes[3]["messageType"] == "ErrorMessage"
    assert alice_notes == [{"n": 2}]
    assert unknown == (404, {"error": "no user 'nobody'"})


# -- stats --------------------------------------------------------------------------------


async def test_handshake_stats_count_a_burst_and_reset(sim: Simulator) -> None:
    async with logged_in(sim, "agent-0001", "agent-0002", "agent-0003") as agents:
        alice, bob, carol = agents
        await asyncio.gather(*(alice.handshake() for _ in range(30)))
        _, burst = await control(sim, "GET", "/control/stats")
        reset = await control(sim, "POST", "/control/stats/reset")
        _, after_reset = await control(sim, "GET", "/control/stats")
        await alice.listen()
        await bob.handshake()  # handshook, subscribed to nothing
        await carol.listen(EMAILS, CALLS)
        _, later = await control(sim, "GET", "/control/stats")

    assert burst["handshakes"] == 30
    # A burst of 30 may straddle a second boundary, so at least half fall in one second.
    assert 15 <= burst["handshakes_max_per_second"] <= 30
    assert reset == (200, {"reset": True})
    assert (after_reset["handshakes"], after_reset["handshakes_max_per_second"]) == (0, 0)
    assert later["handshakes"] == 3
    assert 1 <= later["handshakes_max_per_second"] <= 3
    assert later["users_subscribed"] == 2
    assert later["bayeuxClients"] == 33
    assert "logins_by_user" not in later
