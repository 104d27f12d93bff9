"""Several GWS accounts in one daemon (a subprocess), on one simulator with several agents."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.simulator import Simulator
from tests.harness.daemon_process import (
    DaemonProcess,
    config_document,
    read_jsonl,
    to_toml,
)
from tests.harness.waiting import wait_until

DEADLINE = 15.0
CHANNELS = ["/v2/me/emails", "/v2/me/calls", "/v2/me/devices", "/v2/me/chats"]


@pytest.fixture
async def control(simulator: Simulator) -> AsyncIterator[Any]:
    """`await control(path, body)`: a POST to the simulator's control API (its JSON answer)."""
    async with aiohttp.ClientSession() as http:

        async def post(path: str, body: dict[str, Any]) -> Any:
            async with http.post(f"{simulator.base_url}/control/{path}", json=body) as response:
                assert response.status == 200, await response.text()
                return await response.json()

        yield post


@pytest.fixture
async def agents(control: Any) -> list[str]:
    """Three agents of the simulator, each with its own password."""
    names = ["sales-1", "sales-2", "support"]
    for name in names:
        await control("users", {"username": f"agent-{name}", "password": f"pw-{name}"})
    return names


def account(name: str, **keys: Any) -> dict[str, Any]:
    return {"name": name, "username": f"agent-{name}", "password": f"pw-{name}", **keys}


def write_accounts(
    tmp_path: Path,
    simulator: Simulator,
    accounts: list[dict[str, Any]],
    sinks: list[dict[str, Any]] | None = None,
) -> Path:
    assert simulator.base_url
    document = config_document(tmp_path, gws_url=simulator.base_url, sinks=sinks)
    gws = document["gws"]
    del gws["username"]
    gws["channels"] = CHANNELS
    gws["accounts"] = accounts
    path = tmp_path / "gws-notifyd.toml"
    path.write_text(to_toml(document))
    return path


def events_of(tmp_path: Path, name: str = "events.jsonl") -> list[dict[str, Any]]:
    return read_jsonl(tmp_path / name)


def metric(text: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{") and line.split("}")[0] == f"{name}{{{wanted}":
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_two_accounts_reusing_a_reference_id_are_never_cross_matched(
    simulator: Simulator, agents: list[str], tmp_path: Path
) -> None:
    simulator.settings.reference_id_in_answer = True
    config = write_accounts(tmp_path, simulator, [account(n) for n in agents])
    async with DaemonProcess(config) as daemon:
        await daemon.wait_ready_status(200)
        # Each account's first Send in its own GWS session: referenceId 1 twice.
        status_a, answer_a = await daemon.send("E-A", account="sales-1")
        status_b, answer_b = await daemon.send("E-B", account="sales-2")
        events = await daemon.wait_events(tmp_path / "events.jsonl", 2)

    assert (status_a, status_b) == (200, 200)
    assert answer_a["referenceId"] == answer_b["referenceId"] == 1
    by_email = {e["data"]["emailId"]: e for e in events}
    for email_id, answer, name in (("E-A", answer_a, "sales-1"), ("E-B", answer_b, "sales-2")):
        event = by_email[email_id]
        assert event["data"]["correlated"] is True
        assert event["data"]["send"]["sendId"] == answer["sendId"]
        assert event["data"]["account"] == name
        assert event["source"].endswith(f"?account={name}")
    assert by_email["E-A"]["id"] != by_email["E-B"]["id"]


async def test_errors_without_an_email_find_their_own_accounts_send_by_the_same_reference_id(
    simulator: Simulator, agents: list[str], tmp_path: Path
) -> None:
    # Both Sends fail; GWS tells each agent by referenceId 1 alone (no email). Matched
    # across accounts, the two would be one referenceId held by two sends: unmatched.
    simulator.settings.reference_id_in_answer = True
    simulator.settings.error_without_email = True
    simulator.settings.error_emails.update({"E-A", "E-B"})
    config = write_accounts(tmp_path, simulator, [account(n) for n in agents])
    async with DaemonProcess(config) as daemon:
        _, answer_a = await daemon.send("E-A", account="sales-1")
        _, answer_b = await daemon.send("E-B", account="sales-2")
        events = await daemon.wait_events(tmp_path / "events.jsonl", 2)

    assert answer_a["referenceId"] == answer_b["referenceId"] == 1
    outcome = {
        e["data"]["account"]: (e["data"]["correlated"], e["data"]["send"]["sendId"], e["subject"])
        for e in events
    }
    assert outcome == {
        "sales-1": (True, answer_a["sendId"], "E-A"),
        "sales-2": (True, answer_b["sendId"], "E-B"),
    }
    assert {e["data"]["notificationType"] for e in events} == {"Error"}


async def test_one_accounts_refused_password_leaves_the_others_sending(
    simulator: Simulator, agents: list[str], tmp_path: Path
) -> None:
    accounts = [account("sales-1"), account("sales-2"), account("support", password="wrong")]
    config = write_accounts(tmp_path, simulator, accounts)
    async with DaemonProcess(config, wait_ready=False) as daemon:
        await daemon.wait_log(lambda e: e.get("event") == "account_credentials_refused")
        for name in ("sales-1", "sales-2"):
            status, answer = await daemon.send(f"E-{name}", account=name)
            assert status == 200, answer
        events = await daemon.wait_events(tmp_path / "events.jsonl", 2)
        ready_status, ready = await daemon.readyz()
        metrics = await daemon.metrics()
        _, document = await daemon.get_json("/v1/status")

    assert {e["data"]["account"] for e in events} == {"sales-1", "sales-2"}
    assert all(e["data"]["correlated"] for e in events)
    assert ready_status == 503
    assert ready["checks"]["accountsRefused"] == ["support"]
    assert ready["checks"]["accountsNotSubscribed"] == ["support"]
    assert metric(metrics, "gws_notifyd_gws_credentials_refused", account="support") == 1
    assert metric(metrics, "gws_notifyd_cometd_subscribed", account="sales-1") == 1
    states = {a["name"]: (a["subscribed"], a["auth"]) for a in document["accounts"]}
    assert states == {
        "sales-1": (True, "ok"),
        "sales-2": (True, "ok"),
        "support": (False, "refused"),
    }


async def test_every_channels_notifications_reach_the_sink_as_their_types(
    simulator: Simulator, agents: list[str], control: Any, tmp_path: Path
) -> None:
    config = write_accounts(tmp_path, simulator, [account(n) for n in agents])
    async with DaemonProcess(config) as daemon:
        await daemon.wait_ready_status(200)
        published = {
            kind: await control("notify", {"username": "agent-support", "kind": kind, "count": 2})
            for kind in ("call", "device", "chat", "unknown")
        }
        events = await daemon.wait_events(tmp_path / "events.jsonl", 8)

    by_type: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_type.setdefault(event["type"], []).append(event)
    assert {t: len(e) for t, e in by_type.items()} == {
        "gws.call.state_changed": 2,
        "gws.device.state_changed": 2,
        "gws.chat.state_changed": 2,
        "gws.notification": 2,
    }
    assert {e["data"]["account"] for e in events} == {"support"}
    assert sorted(e["subject"] for e in by_type["gws.call.state_changed"]) == sorted(
        published["call"]["ids"]
    )
    call = by_type["gws.call.state_changed"][0]["data"]
    assert call["channel"] == "/v2/me/calls"
    assert call["messageType"] == "CallStateChangeMessage"
    assert call["notification"]["call"]["id"] == by_type["gws.call.state_changed"][0]["subject"]


async def test_a_sink_with_filters_gets_only_its_share_and_its_backlog_ignores_the_rest(
    simulator: Simulator, agents: list[str], control: Any, tmp_path: Path
) -> None:
    sinks: list[dict[str, Any]] = [
        {"name": "archive", "type": "jsonl", "path": str(tmp_path / "events.jsonl")},
        {
            "name": "sales-calls",
            "type": "jsonl",
            "path": str(tmp_path / "sales-calls.jsonl"),
            "types": ["gws.call.*"],
            "accounts": ["sales-*"],
        },
    ]
    config = write_accounts(tmp_path, simulator, [account(n) for n in agents], sinks)
    async with DaemonProcess(config) as daemon:
        await daemon.wait_ready_status(200)
        for name in agents:
            await control("notify", {"username": f"agent-{name}", "kind": "call", "count": 3})
            await control("notify", {"username": f"agent-{name}", "kind": "chat", "count": 3})
        status, _ = await daemon.send("E-1", account="sales-2")
        assert status == 200
        everything = await daemon.wait_events(tmp_path / "events.jsonl", 19)
        share = await daemon.wait_events(tmp_path / "sales-calls.jsonl", 6)
        _, document = await daemon.get_json("/v1/status")

    expected = [
        e["id"]
        for e in everything
        if e["type"] == "gws.call.state_changed" and e["data"]["account"].startswith("sales-")
    ]
    assert [e["id"] for e in share] == expected
    assert len(expected) == 6
    backlog = {s["name"]: s["backlog"] for s in document["sinks"]}
    assert backlog == {"archive": 0, "sales-calls": 0}


async def test_the_unprefixed_send_path_needs_the_account_when_there_are_several(
    simulator: Simulator, agents: list[str], tmp_path: Path
) -> None:
    config = write_accounts(tmp_path, simulator, [account(n) for n in agents])
    async with DaemonProcess(config) as daemon:
        await daemon.wait_ready_status(200)
        unprefixed = await daemon.send("E-1")
        unknown = await daemon.send("E-1", account="nobody")

    assert unprefixed[0] == 404
    assert "/accounts/{name}/api/v2/me/emails/" in unprefixed[1]["statusMessage"]
    assert unknown[0] == 404
    assert "nobody" in unknown[1]["statusMessage"]
    assert simulator.sends_received == 0


async def test_reload_adds_and_removes_accounts_and_keeps_the_others_sessions(
    simulator: Simulator, agents: list[str], control: Any, tmp_path: Path
) -> None:
    first = write_accounts(tmp_path, simulator, [account("sales-1"), account("sales-2")])
    async with DaemonProcess(first) as daemon:
        await daemon.wait_ready_status(200)
        # A send of sales-2 that stays pending: GWS sends it and says nothing.
        simulator.settings.drop_emails.add("E-P")
        status, pending = await daemon.send("E-P", account="sales-2")
        assert status == 200
        before = await daemon.metrics()

        write_accounts(tmp_path, simulator, [account("sales-1"), account("support")])
        await daemon.signal(signal.SIGHUP)
        await daemon.wait_log(lambda e: e.get("event") == "account_removed")
        await daemon.wait_ready_status(200)
        _, removed = await daemon.get_json("/v1/status")
        during = await daemon.metrics()

        # sales-2 comes back: its pending send is read back and resolved.
        write_accounts(tmp_path, simulator, [account(n) for n in agents])
        await daemon.signal(signal.SIGHUP)
        await wait_until(
            lambda: any(e["data"]["emailId"] == "E-P" for e in events_of(tmp_path)),
            timeout=DEADLINE,
            what="the pending send of the account that came back, read back",
        )
        after = await daemon.metrics()

    handshakes = "gws_notifyd_cometd_handshakes_total"
    assert metric(before, handshakes, account="sales-1") == 1
    assert metric(during, handshakes, account="sales-1") == 1  # never reconnected
    assert metric(after, handshakes, account="sales-1") == 1
    assert metric(during, handshakes, account="sales-2") is None  # its series went with it
    assert metric(during, handshakes, account="support") == 1
    listed = {a["name"]: a for a in removed["accounts"]}
    assert listed["sales-2"] == {"name": "sales-2", "configured": False, "pendingSends": 1}
    assert listed["support"]["subscribed"] is True
    [event] = [e for e in events_of(tmp_path) if e["data"]["emailId"] == "E-P"]
    assert event["data"]["account"] == "sales-2"
    assert event["data"]["send"]["sendId"] == pending["sendId"]
    assert event["data"]["reconciled"] is True
