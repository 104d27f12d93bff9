"""Nothing lost: kill -9, a sink down, GWS restarts, forced re-handshakes, hostile input.

Each fault test prints its figures (`-s` is not needed: they go to the terminal).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from daemon.gws.operations import notification_limit
from daemon.simulator import Simulator
from tests.harness.daemon_process import (
    DaemonProcess,
    cli_output,
    config_document,
    read_jsonl,
    send_body,
    to_toml,
    write_config,
)
from tests.harness.waiting import wait_until
from tests.harness.webhook_receiver import WebhookReceiver

KILLS = 20


def report(capsys: pytest.CaptureFixture[str], title: str, figures: dict[str, Any]) -> None:
    with capsys.disabled():
        width = max(len(k) for k in figures)
        print(f"\n== {title}")
        for key, value in figures.items():
            print(f"   {key:<{width}}  {value}")


def _sends_with_events(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by_send: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        send = event["data"].get("send")
        if send:
            by_send[send["sendId"]].append(event)
    return by_send


@pytest.mark.slow
async def test_kill_9_at_random_moments_loses_no_acknowledged_send(
    simulator: Simulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert simulator.base_url
    events_path = tmp_path / "events.jsonl"
    config = write_config(
        tmp_path, gws_url=simulator.base_url, correlation={"send_timeout_seconds": 120}
    )
    daemon = DaemonProcess(config, wait_ready=False)
    await daemon.start()
    acknowledged: dict[str, tuple[int, str]] = {}
    attempts = itertools.count()
    stop = asyncio.Event()

    async def produce() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            while not stop.is_set():
                api = daemon.api
                if not api:
                    await asyncio.sleep(0.01)
                    continue
                number = next(attempts)
                email_id = f"K-{number:06d}"
                body = send_body(queue="NoSuchQueue" if number % 10 == 0 else "Outbound")
                try:
                    async with http.post(f"{api}/api/v2/me/emails/{email_id}", json=body) as r:
                        answer = await r.json(content_type=None)
                except (aiohttp.ClientError, TimeoutError):
                    await asyncio.sleep(0.01)  # the daemon is down: not acknowledged
                    continue
                if isinstance(answer, dict) and "sendId" in answer:
                    acknowledged[answer["sendId"]] = (r.status, email_id)

    producers = [asyncio.create_task(produce()) for _ in range(4)]
    rng = random.Random(20261126)
    restart_seconds: list[float] = []
    try:
        for _ in range(KILLS):
            # A random moment in the flow, not a synchronisation.
            await asyncio.sleep(rng.uniform(0.2, 1.0))
            await daemon.kill()
            started = time.monotonic()
            await daemon.start()
            restart_seconds.append(time.monotonic() - started)
        await wait_until(lambda: len(acknowledged) > 0, timeout=10, what="some acknowledged sends")
        await asyncio.sleep(0.5)  # a last stretch of traffic after the final restart
    finally:
        stop.set()
        await asyncio.gather(*producers)

    try:

        def missing() -> set[str]:
            return set(acknowledged) - set(_sends_with_events(read_jsonl(events_path)))

        await wait_until(
            lambda: not missing(), timeout=60, what="an event for every acknowledged send"
        )
    finally:
        await daemon.stop()

    events = read_jsonl(events_path)
    by_send = _sends_with_events(events)
    duplicates = sum(len(v) - 1 for k, v in by_send.items() if k in acknowledged)
    for send_events in by_send.values():
        by_identity: dict[tuple[str, Any], set[str]] = defaultdict(set)
        for event in send_events:
            by_identity[(event["type"], event["data"]["state"])].add(event["id"])
        assert all(len(ids) == 1 for ids in by_identity.values()), (
            "a redelivered event must keep its id"
        )
    rejected = sum(1 for status, _ in acknowledged.values() if status == 400)
    report(
        capsys,
        "kill -9 loop",
        {
            "kills": KILLS,
            "sends attempted": next(attempts),
            "sends acknowledged": len(acknowledged),
            "  of which rejected by GWS": rejected,
            "events written": len(events),
            "duplicates (same id)": duplicates,
            "reconciled outcomes": sum(1 for e in events if e["data"]["reconciled"]),
            "missing": len(set(acknowledged) - set(by_send)),
            "restart to API up (median s)": round(
                sorted(restart_seconds)[len(restart_seconds) // 2], 3
            ),
        },
    )
    assert set(acknowledged) <= set(by_send)


@pytest.mark.slow
async def test_a_webhook_down_for_60_seconds_gets_every_event_once_it_is_back(
    simulator: Simulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert simulator.base_url
    receiver = WebhookReceiver()
    config = write_config(
        tmp_path,
        gws_url=simulator.base_url,
        sinks=[
            {"name": "archive", "type": "jsonl", "path": str(tmp_path / "events.jsonl")},
            {
                "name": "crm",
                "type": "webhook",
                "url": receiver.url,
                "secret": "s3cret",
                "backoff_max_seconds": 2,
                "timeout_seconds": 2,
            },
        ],
    )
    async with DaemonProcess(config) as daemon:
        down_at = time.monotonic()
        sent: list[str] = []
        while time.monotonic() - down_at < 60:
            status, answer = await daemon.send(f"W-{len(sent):04d}")
            assert status == 200
            sent.append(answer["sendId"])
            # The other sink is not held back by the dead one.
            await daemon.wait_events(tmp_path / "events.jsonl", len(sent))
            await asyncio.sleep(1.0)  # pacing the traffic over the outage
        _status_code, status = await daemon.get_json("/v1/status")
        crm = next(s for s in status["sinks"] if s["name"] == "crm")
        assert crm["backlog"] == len(sent)
        assert crm["lastError"]
        await receiver.start()
        up_at = time.monotonic()
        try:
            await wait_until(
                lambda: len(set(receiver.event_ids())) >= len(sent),
                timeout=30,
                what="every event at the webhook",
            )
            caught_up = time.monotonic() - up_at
            metrics = await daemon.metrics()
        finally:
            await receiver.stop()
    retried = next(
        line
        for line in metrics.splitlines()
        if line.startswith("gws_notifyd_sink_deliveries_total{")
        and 'sink="crm"' in line
        and 'outcome="retried"' in line
    )
    delivered_ids = {r.event["data"]["send"]["sendId"] for r in receiver.received}
    report(
        capsys,
        "webhook down for 60 s",
        {
            "events while down": len(sent),
            "delivered after recovery": len(delivered_ids),
            "duplicates": len(receiver.received) - len(set(receiver.event_ids())),
            "missing": len(set(sent) - delivered_ids),
            "caught up after (s)": round(caught_up, 2),
            "retries counted": retried.rsplit(" ", 1)[1],
        },
    )
    assert delivered_ids == set(sent)


async def test_gws_restart_with_sends_in_flight_every_outcome_still_arrives(
    simulator: Simulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = simulator.base_url
    assert base
    port = int(base.rsplit(":", 1)[1])
    config = write_config(tmp_path, gws_url=base)
    async with DaemonProcess(config) as daemon:
        simulator.settings.drop_emails.update(f"R-{i}" for i in range(5))
        in_flight = [(await daemon.send(f"R-{i}"))[1]["sendId"] for i in range(5)]
        await simulator.stop()
        stopped_at = time.monotonic()
        simulator.forget_sessions()
        await daemon.wait_ready_status(503)
        status, answer = await daemon.send("R-DOWN")
        assert status == 502
        assert answer["sendId"]
        await simulator.start("127.0.0.1", port)
        back_at = time.monotonic()
        await daemon.wait_ready_status(200)
        resubscribed = time.monotonic() - back_at
        events = await daemon.wait_events(tmp_path / "events.jsonl", 6)
    by_send = _sends_with_events(events)
    report(
        capsys,
        "GWS restart",
        {
            "sends in flight": len(in_flight),
            "outcomes reconciled": sum(
                1 for s in in_flight if by_send[s] and by_send[s][0]["data"]["reconciled"]
            ),
            "send during outage": "502 + send_rejected",
            "outage (s)": round(back_at - stopped_at, 2),
            "resubscribed after (s)": round(resubscribed, 3),
            "missing": len(set(in_flight) - set(by_send)),
        },
    )
    assert set(in_flight) <= set(by_send)
    assert by_send[answer["sendId"]][0]["type"] == "gws.email.send_rejected"


async def test_a_flood_of_malformed_notifications_leaves_the_daemon_ready_and_correlating(
    simulator: Simulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert simulator.base_url
    junk: list[object] = [
        None,
        42,
        "text",
        [],
        {},
        {"messageType": 7},
        {"messageType": ""},
        {"messageType": "EmailStateChangeMessage"},
        {"messageType": "EmailStateChangeMessage", "notificationType": "StatusChange"},
        {
            "messageType": "EmailStateChangeMessage",
            "notificationType": "StatusChange",
            "email": {"id": ""},
        },
        {
            "messageType": "EmailStateChangeMessage",
            "notificationType": "StatusChange",
            "referenceId": "x",
            "email": {"id": "A"},
        },
        {
            "messageType": "EmailStateChangeMessage",
            "notificationType": "StatusChange",
            "email": {"id": "A", "state": 5},
        },
    ]
    flood = [junk[i % len(junk)] for i in range(9_999)]
    flood.append(
        {
            "messageType": "EmailStateChangeMessage",
            "notificationType": "StatusChange",
            # Past what a notification about the largest Send the API takes may be.
            "email": {"id": "A", "body": "x" * (notification_limit(1024 * 1024) + 1)},
        }
    )
    async with DaemonProcess(write_config(tmp_path, gws_url=simulator.base_url)) as daemon:
        started = time.monotonic()
        await simulator.publish("/v2/me/emails", flood)
        status, answer = await daemon.send("AFTER-FLOOD")
        assert status == 200
        events = await daemon.wait_events(tmp_path / "events.jsonl", 1, timeout=60)
        took = time.monotonic() - started
        assert events[-1]["data"]["send"]["sendId"] == answer["sendId"]
        assert (await daemon.readyz())[0] == 200
        text = await daemon.metrics()
    counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gws_notifyd_notifications_malformed_total{")
    )
    report(
        capsys,
        "malformed flood",
        {
            "malformed published": len(flood),
            "malformed counted": int(counted),
            "then a send correlated after (s)": round(took, 2),
            "events lost": 0 if events else 1,
        },
    )
    assert counted == len(flood)


async def test_sigterm_refuses_new_sends_drains_and_keeps_the_undelivered_on_disk(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    receiver = WebhookReceiver()  # down for now
    config = write_config(
        tmp_path,
        gws_url=simulator.base_url,
        service={"shutdown_timeout_seconds": 3},
        sinks=[{"name": "crm", "type": "webhook", "url": receiver.url, "backoff_max_seconds": 0.5}],
    )
    daemon = DaemonProcess(config)
    await daemon.start()
    try:
        _, answer = await daemon.send("T-1")
        await daemon.wait_log(lambda e: e.get("event") == "sink_retry")
        await daemon.signal(signal.SIGTERM)
        await daemon.wait_ready_status(503, timeout=3)
        _, ready = await daemon.readyz()
        assert "notDraining" in ready["failed"]
        async with daemon.http.post(
            f"{daemon.api}/api/v2/me/emails/T-2", json=send_body()
        ) as response:
            assert response.status == 503
            assert response.headers["Retry-After"]
        assert await daemon.wait_exit(timeout=15) == 0
        stopped = next(e for e in daemon.logs if e.get("event") == "stopped")
        assert stopped["drained"] is False
        assert stopped["backlog"] == {"crm": 1}
    finally:
        await daemon.stop()
    await receiver.start()
    try:
        async with DaemonProcess(config):
            await wait_until(lambda: receiver.received, timeout=10, what="the undelivered event")
        assert receiver.received[0].event["data"]["send"]["sendId"] == answer["sendId"]
    finally:
        await receiver.stop()


async def test_sighup_reloads_sinks_and_keeps_the_old_config_when_the_new_one_is_invalid(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    config = write_config(tmp_path, gws_url=simulator.base_url)
    async with DaemonProcess(config) as daemon:
        config.write_text(config.read_text() + "\n[nonsense]\nkey = 1\n")
        await daemon.signal(signal.SIGHUP)
        rejected = await daemon.wait_log(lambda e: e.get("event") == "reload_rejected")
        assert "nonsense" in rejected["error"]
        document = config_document(
            tmp_path,
            gws_url=simulator.base_url,
            sinks=[
                {"name": "archive", "type": "jsonl", "path": str(tmp_path / "events.jsonl")},
                {"name": "second", "type": "jsonl", "path": str(tmp_path / "second.jsonl")},
            ],
        )
        config.write_text(to_toml(document))
        await daemon.signal(signal.SIGHUP)
        await daemon.wait_log(lambda e: e.get("event") == "reloaded")
        _, answer = await daemon.send("H-1")
        second = await daemon.wait_events(tmp_path / "second.jsonl", 1)
        assert second[0]["data"]["send"]["sendId"] == answer["sendId"]
        assert len(await daemon.wait_events(tmp_path / "events.jsonl", 1)) == 1


async def test_a_request_body_over_the_limit_gets_413(simulator: Simulator, tmp_path: Path) -> None:
    assert simulator.base_url
    async with DaemonProcess(write_config(tmp_path, gws_url=simulator.base_url)) as daemon:
        big = orjson.dumps(send_body(body="x" * (1024 * 1024 + 10)))
        status, _ = await daemon.send("BIG", big)
        assert status == 413
        assert simulator.sends_received == 0
        assert (await daemon.send("SMALL"))[0] == 200


async def test_an_oversized_cometd_batch_is_bounded_and_outcomes_are_reconciled(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    config = write_config(tmp_path, gws_url=simulator.base_url, gws={"max_batch_bytes": 256 * 1024})
    async with DaemonProcess(config) as daemon:
        simulator.settings.notify_delay_seconds = 0.3
        _, answer = await daemon.send("O-1")
        # ~1.5 MB of well-formed notifications land in the same answer as O-1's.
        await simulator.publish(
            "/v2/me/emails",
            [
                {
                    "messageType": "EmailStateChangeMessage",
                    "notificationType": "PropertiesUpdated",
                    "email": {"id": f"N-{i}", "body": "y" * 1000},
                }
                for i in range(1500)
            ],
        )
        await daemon.wait_log(lambda e: e.get("event") == "bayeux_response_oversized")
        events = await daemon.wait_events(tmp_path / "events.jsonl", 1, timeout=15)
        outcome = next(
            e for e in events if (e["data"].get("send") or {}).get("sendId") == answer["sendId"]
        )
        assert outcome["data"]["reconciled"] is True
        assert (await daemon.readyz())[0] == 200


async def test_a_dead_lettered_event_can_be_listed_shown_and_replayed(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    receiver = WebhookReceiver(refusing=True, status=400)
    await receiver.start()
    config = write_config(
        tmp_path,
        gws_url=simulator.base_url,
        sinks=[{"name": "crm", "type": "webhook", "url": receiver.url}],
    )
    try:
        async with DaemonProcess(config) as daemon:
            _, answer = await daemon.send("D-1")
            await daemon.wait_log(lambda e: e.get("event") == "sink_dead_letter")
            listing = await cli_output("dead-letters", "list", "--config", str(config))
            assert "crm" in listing
            assert "1 dead letter(s)" in listing
            letter_id = listing.splitlines()[1].split()[0]
            shown = orjson.loads(
                await cli_output("dead-letters", "show", letter_id, "--config", str(config))
            )
            assert shown["body"]["data"]["send"]["sendId"] == answer["sendId"]
            assert "HTTP 400" in shown["detail"]
            receiver.refusing = False
            replayed = await cli_output("dead-letters", "replay", "--all", "--config", str(config))
            assert "replayed 1" in replayed
            await wait_until(lambda: receiver.received, timeout=10, what="the replayed event")
            assert receiver.received[0].headers["Idempotency-Key"] == shown["eventId"]
            assert "0 dead letter(s)" in await cli_output(
                "dead-letters", "list", "--config", str(config)
            )
    finally:
        await receiver.stop()


async def test_a_full_outbox_is_announced_and_refuses_new_sends_without_dropping_anything(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    receiver = WebhookReceiver()  # down: nothing leaves the outbox
    config = write_config(
        tmp_path,
        gws_url=simulator.base_url,
        store={"max_outbox_events": 100},
        sinks=[{"name": "crm", "type": "webhook", "url": receiver.url, "backoff_max_seconds": 0.5}],
    )
    async with DaemonProcess(config) as daemon:
        await simulator.publish(
            "/v2/me/emails",
            [
                {
                    "messageType": "EmailStateChangeMessage",
                    "notificationType": "PropertiesUpdated",
                    "email": {"id": f"F-{i}", "state": "Composing"},
                }
                for i in range(120)
            ],
        )
        warning = await daemon.wait_log(lambda e: e.get("event") == "outbox_near_full")
        assert warning["capacity"] == 100

        async def full() -> bool:
            return "gws_notifyd_outbox_events 120.0" in await daemon.metrics()

        await wait_until(full, timeout=10, what="120 events counted in the outbox")
        async with daemon.http.post(
            f"{daemon.api}/api/v2/me/emails/F-SEND", json=send_body()
        ) as response:
            assert response.status == 503
            assert response.headers["Retry-After"]
        assert simulator.sends_received == 0
        await receiver.start()
        try:
            await wait_until(
                lambda: len(receiver.received) >= 120,
                timeout=30,
                what="all 120 events at the webhook once it is up",
            )
        finally:
            await receiver.stop()
