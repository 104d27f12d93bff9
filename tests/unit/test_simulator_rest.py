"""The simulated GWS REST side: auth, sessions, CSRF, Send and its fault switches, control.

Every test runs a real simulator on 127.0.0.1 and talks to it with a real
aiohttp client, one cookie jar per agent as the daemon does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
import structlog

from daemon.simulator import Simulator, SimulatorSettings, serve
from daemon.simulator.testing import AgentClient, control, running, send_body
from tests.harness.waiting import wait_until

CHANNEL = "/v2/me/emails"
DEADLINE = 5.0
# Long on purpose: a connect that is wrongly held fails on a test deadline.
LONG_POLL_MS = 30_000


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    settings = SimulatorSettings(notify_delay_seconds=0.0, long_poll_timeout_ms=LONG_POLL_MS)
    async with running(settings) as simulator:
        yield simulator


@pytest.fixture
async def agent(sim: Simulator) -> AsyncIterator[AgentClient]:
    assert sim.base_url is not None
    client = AgentClient(sim.base_url)
    try:
        await client.login()
        yield client
    finally:
        await client.close()


async def new_agent(sim: Simulator) -> AgentClient:
    assert sim.base_url is not None
    client = AgentClient(sim.base_url)
    await client.login()
    return client


# -- auth, sessions, CSRF --------------------------------------------------------


@pytest.mark.parametrize("password", [None, "wrong"])
async def test_requests_without_the_right_credentials_are_401(
    sim: Simulator, password: str | None
) -> None:
    assert sim.base_url is not None
    headers = {}
    if password is not None:
        headers["Authorization"] = aiohttp.encode_basic_auth("agent1", password)
    async with (
        aiohttp.ClientSession(sim.base_url) as http,
        http.get("/api/v2/me", headers=headers) as response,
    ):
        assert response.status == 401
        assert response.content_type == "application/json"
        assert await response.json() == {"statusCode": 20, "statusMessage": "Not authenticated"}
        assert "JSESSIONID" not in response.cookies


async def test_first_request_opens_a_session_and_every_get_carries_its_csrf_token(
    sim: Simulator,
) -> None:
    assert sim.base_url is not None
    client = AgentClient(sim.base_url)
    try:
        async with client.http.get("/api/v2/me") as first:
            assert first.status == 200
            assert "JSESSIONID" in first.cookies
            assert first.cookies["JSESSIONID"]["path"] == "/"
            token = first.headers["X-CSRF-TOKEN"]
            assert first.headers["X-CSRF-HEADER"] == "X-CSRF-TOKEN"
            body = await first.json()
        async with client.http.get("/api/v2/me/emails") as second:
            assert "JSESSIONID" not in second.cookies
            assert second.headers["X-CSRF-TOKEN"] == token
    finally:
        await client.close()

    assert body["statusCode"] == 0
    assert body["user"]["userName"] == "agent1"
    assert body["user"]["id"]
    assert sim.session_count == 1


async def test_posts_need_the_session_csrf_token(sim: Simulator, agent: AgentClient) -> None:
    start = {"operationName": "StartContactCenterSession", "channels": ["email"]}
    token = agent.csrf

    missing = await agent.post("/api/v2/me", start, csrf=False)
    agent.csrf = "not-the-token"
    wrong = await agent.post("/api/v2/me", start)
    agent.csrf = token
    right = await agent.post("/api/v2/me", start)
    sim.settings.csrf = False
    unchecked = await agent.post("/api/v2/me", start, csrf=False)

    denied = (403, {"statusCode": 3, "statusMessage": "Missing or invalid Csrf token"})
    assert missing == denied
    assert wrong == denied
    assert right == (200, {"statusCode": 0})
    assert unchecked == (200, {"statusCode": 0})


async def test_end_contact_center_session_invalidates_the_http_session_and_its_clients(
    sim: Simulator, agent: AgentClient
) -> None:
    client_id = await agent.listen()
    old_token = agent.csrf

    ended = await agent.post("/api/v2/me", {"operationName": "EndContactCenterSession"})
    refused = await agent.post(
        "/api/v2/notifications",
        [{"channel": "/meta/connect", "clientId": client_id, "connectionType": "long-polling"}],
    )
    sim.settings.csrf_cometd = False
    orphan = await agent.connect(client_id, timeout=0)
    stale = await agent.post("/api/v2/me", {"operationName": "StartContactCenterSession"})
    await agent.login()

    assert ended == (200, {"statusCode": 0})
    # The new session's CSRF token is not the old one: the CometD POST is refused ...
    assert refused == (403, {"statusCode": 3, "statusMessage": "Missing or invalid Csrf token"})
    # ... and without CSRF on CometD, Bayeux itself does not know the client.
    assert orphan[-1]["error"] == "402::Unknown client"
    assert orphan[-1]["advice"]["reconnect"] == "handshake"
    assert stale[0] == 403
    assert agent.csrf != old_token


async def test_cometd_posts_need_the_csrf_token_unless_told_otherwise(
    sim: Simulator, agent: AgentClient
) -> None:
    handshake = [{"channel": "/meta/handshake", "version": "1.0"}]

    without = await agent.post("/api/v2/notifications", handshake, csrf=False)
    with_token = await agent.post("/api/v2/notifications", handshake)
    sim.settings.csrf_cometd = False
    relaxed = await agent.post("/api/v2/notifications", handshake, csrf=False)

    assert without == (403, {"statusCode": 3, "statusMessage": "Missing or invalid Csrf token"})
    assert with_token[0] == 200
    assert relaxed[0] == 200
    assert (sim.bayeux_posts, sim.bayeux_posts_without_csrf) == (3, 2)


async def test_a_bayeux_client_belongs_to_the_session_it_handshook_in(
    sim: Simulator, agent: AgentClient
) -> None:
    client_id = await agent.listen()
    other = await new_agent(sim)
    try:
        stolen = await other.connect(client_id, timeout=0)
    finally:
        await other.close()
    own = await agent.connect(client_id, timeout=0)

    assert stolen[-1]["error"] == "402::Unknown client"
    assert own[-1]["successful"] is True


async def test_unknown_me_operation_and_unknown_path(agent: AgentClient) -> None:
    unknown_op = await agent.post("/api/v2/me", {"operationName": "Dance"})
    no_op = await agent.post("/api/v2/me", {"channels": []})
    status, body, _ = await agent.get("/api/v2/nowhere")

    assert unknown_op[0] == 400
    assert unknown_op[1]["statusCode"] == 10
    assert no_op == (
        400,
        {"statusCode": 1, "statusMessage": "Required parameter 'operationName' is missing"},
    )
    assert (status, body["statusCode"]) == (404, 6)


# -- emails ----------------------------------------------------------------------


async def test_create_get_and_list_emails(sim: Simulator, agent: AgentClient) -> None:
    status, created = await agent.post("/api/v2/me/emails", {"queueUri": "/queues/Outbound"})
    email_id = created["id"]
    got = await agent.get(f"/api/v2/me/emails/{email_id}")
    listed = await agent.get("/api/v2/me/emails?fields=*")
    missing = await agent.get("/api/v2/me/emails/NOPE")

    assert (status, created["statusCode"]) == (200, 0)
    assert got[0] == 200
    assert got[1]["email"]["id"] == email_id
    assert got[1]["email"]["state"] == "Composing"
    assert got[1]["email"]["uri"] == f"{sim.base_url}/api/v2/me/emails/{email_id}"
    assert [e["id"] for e in listed[1]["emails"]] == [email_id]
    assert missing[:2] == (404, {"statusCode": 6, "statusMessage": "Email 'NOPE' not found"})


@pytest.mark.parametrize(
    ("body", "status_code", "message"),
    [
        (b"{not json", 10, None),
        (send_body(queueName=None), 1, "Required parameter 'queueName' is missing"),
        (send_body(email=None), 1, "Required parameter 'email' is missing"),
        (send_body(email={"from": "a@b"}), 1, "Required parameter 'to' is missing"),
        (send_body(email={"to": [], "from": "a@b"}), 1, "Required parameter 'to' is missing"),
        (send_body(email={"to": 5, "from": "a@b"}), 1, None),
        (send_body(email={"to": " , ", "from": "a@b"}), 1, "Required parameter 'to' is missing"),
        (send_body(saveLAR="yes"), 10, "Parameter 'saveLAR' must be true or false"),
        (send_body(email={"to": ["x@y"]}), 1, "Required parameter 'from' is missing"),
        (send_body(queueName="Nope"), 2, "Queue 'Nope' not found"),
    ],
)
async def test_send_is_validated_like_gws(
    sim: Simulator, agent: AgentClient, body: object, status_code: int, message: str | None
) -> None:
    if isinstance(body, dict) and body.get("queueName") is None:
        del body["queueName"]
    if isinstance(body, dict) and body.get("email") is None:
        body.pop("email", None)

    status, answer = await agent.post("/api/v2/me/emails/E1", body)

    assert status == 400
    assert answer["statusCode"] == status_code
    if message is not None:
        assert answer["statusMessage"] == message
    assert "E1" not in sim.emails


async def test_send_answers_per_session_reference_ids_and_marks_the_email_sent(
    sim: Simulator, agent: AgentClient
) -> None:
    sim.settings.reference_id_in_answer = True
    first = await agent.post("/api/v2/me/emails/E1", send_body())
    second = await agent.post("/api/v2/me/emails/E2", send_body())
    other = await new_agent(sim)
    try:
        elsewhere = await other.post("/api/v2/me/emails/E3", send_body())
    finally:
        await other.close()

    assert first == (200, {"statusCode": 0, "referenceId": 1})
    assert second == (200, {"statusCode": 0, "referenceId": 2})
    assert elsewhere == (200, {"statusCode": 0, "referenceId": 1})
    email = sim.emails["E1"]
    assert email["state"] == "Sent"
    assert email["to"] == ["customer@example.com", "other@example.com"]
    assert email["from"] == "agent@example.com"
    assert email["subject"] == "Your case"
    assert email["cc"] == ["boss@example.com"]
    assert email["mime"] == "text/html"
    assert email["capabilities"] == []
    assert email["userData"] == {}
    assert sim.sends_received == 3


async def test_send_answers_without_reference_id_by_default(
    sim: Simulator, agent: AgentClient
) -> None:
    assert await agent.post("/api/v2/me/emails/E1", send_body()) == (200, {"statusCode": 0})


async def test_a_to_of_one_comma_separated_string_and_a_textual_save_lar_are_taken(
    sim: Simulator, agent: AgentClient
) -> None:
    body = send_body(saveLAR="true")
    body["email"]["to"] = "customer@example.com, other@example.com"

    assert (await agent.post("/api/v2/me/emails/E1", body))[0] == 200
    assert sim.emails["E1"]["to"] == ["customer@example.com", "other@example.com"]


async def test_a_second_send_of_a_sent_email_is_refused(agent: AgentClient) -> None:
    await agent.post("/api/v2/me/emails/E1", send_body())

    again = await agent.post("/api/v2/me/emails/E1", send_body())

    assert again == (
        400,
        {"statusCode": 2, "statusMessage": "Operation Send is not valid for email in state Sent"},
    )


async def test_send_publishes_a_status_change_with_the_reference_id(
    sim: Simulator, agent: AgentClient
) -> None:
    sim.settings.reference_id_in_answer = True
    sim.settings.follow_up_properties_updated = True
    client_id = await agent.listen()

    _, answer = await agent.post("/api/v2/me/emails/E1", send_body())
    notes = await agent.notifications(client_id)
    while len(notes) < 2:
        notes += await agent.notifications(client_id)

    sent, follow_up = notes
    assert sent["messageType"] == "EmailStateChangeMessage"
    assert sent["notificationType"] == "StatusChange"
    assert sent["referenceId"] == answer["referenceId"]
    assert sent["email"] == sim.emails["E1"]
    assert sent["email"]["state"] == "Sent"
    assert follow_up["notificationType"] == "PropertiesUpdated"
    assert "referenceId" not in follow_up
    assert follow_up["email"]["id"] == "E1"


async def test_error_email_is_accepted_then_an_error_is_notified(
    sim: Simulator, agent: AgentClient
) -> None:
    sim.settings.reference_id_in_answer = True
    sim.settings.error_emails.add("BAD")
    client_id = await agent.listen()

    answer = await agent.post("/api/v2/me/emails/BAD", send_body())
    [note] = await agent.notifications(client_id)

    assert answer == (200, {"statusCode": 0, "referenceId": 1})
    assert note["notificationType"] == "Error"
    assert note["referenceId"] == 1
    assert note["errorCode"]
    assert note["errorMessage"]
    assert note["email"]["id"] == "BAD"
    assert note["email"]["state"] == "Composing"
    assert sim.emails["BAD"]["state"] == "Composing"


async def test_dropped_email_is_sent_but_never_notified(sim: Simulator, agent: AgentClient) -> None:
    sim.settings.reference_id_in_answer = True
    sim.settings.drop_emails.add("LOST")
    client_id = await agent.listen()

    dropped = await agent.post("/api/v2/me/emails/LOST", send_body())
    await agent.post("/api/v2/me/emails/SEEN", send_body())
    # Notifications are published in Send order (no delay), so once SEEN's has
    # arrived, LOST's would have arrived before it.
    notes = await agent.notifications(client_id)

    assert dropped == (200, {"statusCode": 0, "referenceId": 1})
    assert sim.emails["LOST"]["state"] == "Sent"
    assert [n["email"]["id"] for n in notes] == ["SEEN"]


async def test_hung_email_gets_no_answer_but_is_sent_and_notified(
    sim: Simulator, agent: AgentClient
) -> None:
    sim.settings.hang_emails.add("HANG")
    client_id = await agent.listen()

    hung = asyncio.create_task(agent.post("/api/v2/me/emails/HANG", send_body()))
    [note] = await agent.notifications(client_id)
    await wait_until(
        lambda: sim.emails.get("HANG", {}).get("state") == "Sent",
        timeout=DEADLINE,
        what="HANG sent",
    )
    assert not hung.done()
    # The client giving up must end the server side too (no handler left behind).
    hung.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hung

    assert note["email"]["id"] == "HANG"
    assert note["referenceId"] == 1


async def test_stopping_the_simulator_drops_a_hung_send_without_an_answer(
    sim: Simulator, agent: AgentClient
) -> None:
    sim.settings.hang_emails.add("HANG")
    hung = asyncio.create_task(agent.post("/api/v2/me/emails/HANG", send_body()))
    await wait_until(
        lambda: sim.emails.get("HANG", {}).get("state") == "Sent",
        timeout=DEADLINE,
        what="HANG sent",
    )

    async with asyncio.timeout(DEADLINE):
        await sim.stop()
        with pytest.raises(aiohttp.ClientError):
            await hung


async def test_notify_before_answer_queues_the_notification_before_the_answer(
    sim: Simulator, agent: AgentClient
) -> None:
    sim.settings.reference_id_in_answer = True
    client_id = await agent.listen()
    sim.settings.notify_delay_seconds = 60.0
    await agent.post("/api/v2/me/emails/LATER", send_body())
    assert sim.bayeux.queued(client_id) == 0

    sim.settings.notify_before_answer = True
    sim.settings.notify_delay_seconds = 0.01
    answer = await agent.post("/api/v2/me/emails/FIRST", send_body())

    assert answer == (200, {"statusCode": 0, "referenceId": 2})
    assert sim.bayeux.queued(client_id) == 1
    [note] = await agent.notifications(client_id)
    assert note["email"]["id"] == "FIRST"


async def test_other_operations_change_state_and_notify(sim: Simulator, agent: AgentClient) -> None:
    sim.settings.reference_id_in_answer = True
    client_id = await agent.listen()
    _, created = await agent.post("/api/v2/me/emails", {})
    email_id = created["id"]

    saved = await agent.post(
        f"/api/v2/me/emails/{email_id}", {"operationName": "Save", "email": {"subject": "Draft"}}
    )
    canceled = await agent.post(f"/api/v2/me/emails/{email_id}", {"operationName": "Cancel"})
    completed = await agent.post(f"/api/v2/me/emails/{email_id}", {"operationName": "Complete"})
    unknown = await agent.post(f"/api/v2/me/emails/{email_id}", {"operationName": "Fly"})
    missing = await agent.post("/api/v2/me/emails/NOPE", {"operationName": "Cancel"})
    notes = await agent.notifications(client_id)
    while len(notes) < 3:
        notes += await agent.notifications(client_id)

    assert [saved, canceled, completed] == [
        (200, {"statusCode": 0, "referenceId": n}) for n in (1, 2, 3)
    ]
    assert unknown[0] == 400
    assert unknown[1]["statusCode"] == 10
    assert missing[0] == 404
    assert [(n["notificationType"], n["referenceId"], n["email"]["state"]) for n in notes] == [
        ("StatusChange", 1, "Composing"),
        ("StatusChange", 2, "Canceled"),
        ("StatusChange", 3, "Completed"),
    ]
    assert sim.emails[email_id]["subject"] == "Draft"
    assert sim.emails[email_id]["state"] == "Completed"


# -- control -------------------------------------------------------------------------


async def test_control_settings_read_and_partial_update(sim: Simulator) -> None:
    status, current = await control(sim, "GET", "/control/settings")
    assert status == 200
    assert "password" not in current
    assert current["queues"] == ["Outbound", "Forwarde-mails", "Support"]
    assert current["error_emails"] == []

    status, updated = await control(
        sim,
        "POST",
        "/control/settings",
        {"error_emails": ["X1"], "reference_id_in_answer": False, "notify_delay_seconds": 1},
    )
    unknown = await control(sim, "POST", "/control/settings", {"colour": "blue"})
    wrong_type = await control(sim, "POST", "/control/settings", {"csrf": "yes", "queues": []})

    assert status == 200
    assert updated["error_emails"] == ["X1"]
    assert sim.settings.error_emails == {"X1"}
    assert sim.settings.reference_id_in_answer is False
    assert sim.settings.notify_delay_seconds == 1.0
    assert unknown[0] == 400
    assert wrong_type[0] == 400
    assert sim.settings.csrf is True


async def test_control_forget_drops_sessions_and_bayeux_clients(
    sim: Simulator, agent: AgentClient
) -> None:
    client_id = await agent.listen()

    assert await control(sim, "POST", "/control/forget") == (200, {"forgotten": True})
    sim.settings.csrf_cometd = False  # the session's token went with it: Bayeux's answer
    orphan = await agent.connect(client_id, timeout=0)

    assert orphan[-1]["error"] == "402::Unknown client"
    assert sim.bayeux.client_ids() == []


async def test_control_publish_sequence_and_raw_data(sim: Simulator, agent: AgentClient) -> None:
    client_id = await agent.listen()

    counted = await control(
        sim, "POST", "/control/publish", {"channel": CHANNEL, "count": 3, "start": 5}
    )
    raw = await control(
        sim, "POST", "/control/publish", {"channel": CHANNEL, "data": [{"anything": True}]}
    )
    notes = await agent.notifications(client_id)

    assert counted == (200, {"published": 3})
    assert raw == (200, {"published": 1})
    assert [n.get("referenceId") for n in notes] == [5, 6, 7, None]
    assert [n["email"]["id"] for n in notes[:3]] == [f"SEQ{n:010d}" for n in (5, 6, 7)]
    assert all(n["notificationType"] == "StatusChange" for n in notes[:3])
    assert all(n["email"]["state"] == "Sent" for n in notes[:3])
    assert len(notes[0]["email"]["body"]) >= 300
    assert notes[3] == {"anything": True}


async def test_control_publish_of_200k_messages_is_fast_and_comes_in_one_batch(
    sim: Simulator, agent: AgentClient
) -> None:
    client_id = await agent.listen()

    started = time.monotonic()
    published = await control(sim, "POST", "/control/publish", {"count": 200_000})
    elapsed = time.monotonic() - started
    async with agent.http.post(
        "/api/v2/notifications",
        data=orjson.dumps([{"channel": "/meta/connect", "clientId": client_id}]),
        headers={"X-CSRF-TOKEN": agent.csrf},
    ) as response:
        body = await response.read()

    assert published == (200, {"published": 200_000})
    assert elapsed < 3.0
    assert body.count(b'"channel":"/v2/me/emails"') == 200_000
    assert body.rstrip(b"]").endswith(b"}")
    assert b'"SEQ0000199999"' in body


async def test_serve_logs_the_url_and_username_but_not_the_password() -> None:
    settings = SimulatorSettings(password="s3cret-pass")
    with structlog.testing.capture_logs() as logs:
        server = asyncio.create_task(serve("127.0.0.1", 0, settings))
        await wait_until(
            lambda: any("base_url" in entry for entry in logs),
            timeout=DEADLINE,
            what="the log line with base_url",
        )
        base_url = next(entry["base_url"] for entry in logs if "base_url" in entry)
        async with (
            aiohttp.ClientSession(base_url) as http,
            http.get("/control/settings") as response,
        ):
            assert response.status == 200
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server

    assert any(entry.get("username") == "agent1" for entry in logs)
    assert "s3cret-pass" not in repr(logs)


# -- the docs' GWS, and what it departs from on request ---------------------------------


async def test_the_handshake_offers_long_polling_only_unless_websocket_is_offered(
    sim: Simulator, agent: AgentClient
) -> None:
    handshake = {"channel": "/meta/handshake", "version": "1.0"}
    [plain] = await agent.bayeux(handshake)
    sim.settings.offer_websocket = True
    [offering] = await agent.bayeux(handshake)

    async with agent.http.get(
        "/api/v2/notifications", headers={"X-CSRF-TOKEN": agent.csrf}
    ) as response:
        upgrade_status = response.status
    async with agent.http.get("/api/v2/notifications") as response:
        pass

    assert plain["supportedConnectionTypes"] == ["long-polling"]
    assert offering["supportedConnectionTypes"] == ["websocket", "long-polling"]
    assert upgrade_status == 400
    assert (sim.websocket_upgrades, sim.websocket_upgrades_without_csrf) == (2, 1)


async def test_a_sent_email_can_leave_the_workspace(sim: Simulator, agent: AgentClient) -> None:
    sim.settings.sent_emails_leave = True

    assert (await agent.post("/api/v2/me/emails/GONE", send_body()))[0] == 200
    status, _, _ = await agent.get("/api/v2/me/emails/GONE")
    _, listed, _ = await agent.get("/api/v2/me/emails")

    assert status == 404
    assert listed["emails"] == []


async def test_an_error_can_come_without_its_email(sim: Simulator, agent: AgentClient) -> None:
    sim.settings.error_emails.add("BAD")
    sim.settings.error_without_email = True
    sim.settings.reference_id_in_answer = True
    client_id = await agent.listen()

    _, answer = await agent.post("/api/v2/me/emails/BAD", send_body())
    [note] = await agent.notifications(client_id)

    assert note["notificationType"] == "Error"
    assert note["referenceId"] == answer["referenceId"]
    assert "email" not in note


async def test_a_password_change_refuses_the_old_password_and_counts_every_try(
    sim: Simulator, agent: AgentClient
) -> None:
    assert await control(sim, "POST", "/control/password", {"password": "new-one"}) == (
        200,
        {"changed": True},
    )
    old_status, _, _ = await agent.get("/api/v2/me")
    assert sim.base_url is not None
    renewed = AgentClient(sim.base_url, password="new-one")
    try:
        await renewed.login()
    finally:
        await renewed.close()
    _, stats = await control(sim, "GET", "/control/stats")

    assert old_status == 401
    assert sim.session_count == 1  # every old session was dropped
    assert stats["loginAttempts"] == 3  # the agent fixture's, the refused one, the new one
    assert stats["refusedRequests"] == 1
    assert await control(sim, "POST", "/control/password", {"password": ""}) == (
        400,
        {"error": "'password' must be a non-empty string"},
    )


async def test_samples_of_every_kind_are_published_on_their_channels(
    sim: Simulator, agent: AgentClient
) -> None:
    client_id = await agent.listen()
    [subscribed] = await agent.bayeux(
        {"channel": "/meta/subscribe", "clientId": client_id, "subscription": "/v2/me/**"}
    )
    assert subscribed["successful"] is True

    status, published = await control(sim, "POST", "/control/samples", {})
    notes = await agent.notifications(client_id)
    some = await control(sim, "POST", "/control/samples", {"samples": ["ErrorMessage"]})
    unknown = await control(sim, "POST", "/control/samples", {"samples": ["Fax"]})

    assert status == 200
    types = {p["messageType"] for p in published["published"]}
    assert types >= {
        "CallStateChangeMessage",
        "ErrorMessage",
        "DeviceStateChangeMessage",
        "ChatStateChangeMessage",
        "MessageLogUpdated",
        "WorkitemStateChangeMessage",
        "OpenmediaStateChangeMessage",
        "WorkbinStateChangeMessage",
        "WorkbinSubscriptionStateChangeMessage",
        "OutboundRecordMessage",
        "EmailStateChangeMessage",
    }
    assert len(notes) == len(published["published"])
    assert some[1]["published"] == [
        {
            "sample": "ErrorMessage",
            "channel": "/v2/me/calls",
            "messageType": "ErrorMessage",
            "notificationType": None,
        }
    ]
    assert unknown == (400, {"error": "no sample 'Fax'"})
