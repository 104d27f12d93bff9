"""The daemon as a subprocess against the GWS simulator: Send, correlate, forward."""

from __future__ import annotations

import signal
from pathlib import Path

import orjson
import pytest

from daemon.simulator import Simulator
from tests.harness.daemon_process import (
    DaemonProcess,
    cli_output,
    read_jsonl,
    send_body,
    write_config,
)


def _events(tmp_path: Path) -> Path:
    return tmp_path / "events.jsonl"


async def test_send_is_forwarded_answered_and_correlated_by_reference_id(
    simulator: Simulator, tmp_path: Path
) -> None:
    simulator.settings.reference_id_in_answer = True  # `simulate --reference-id`
    assert simulator.base_url
    async with DaemonProcess(write_config(tmp_path, gws_url=simulator.base_url)) as daemon:
        status, answer = await daemon.send("E-1")
        assert status == 200
        assert answer["statusCode"] == 0
        assert answer["referenceId"] == 1
        send_id = answer["sendId"]

        [event] = await daemon.wait_events(_events(tmp_path), 1)
        assert event["specversion"] == "1.0"
        assert event["type"] == "gws.email.state_changed"
        assert event["datacontenttype"] == "application/json"
        data = event["data"]
        assert data["correlated"] is True
        assert data["reconciled"] is False
        assert data["emailId"] == "E-1"
        assert data["state"] == "Sent"
        assert data["referenceId"] == 1
        assert data["notificationType"] == "StatusChange"
        assert data["send"]["sendId"] == send_id
        assert data["send"]["queueName"] == "Outbound"
        assert data["send"]["to"] == ["customer@example.com"]
        assert data["latencySeconds"] >= 0
        assert data["notification"]["email"]["id"] == "E-1"

        status, record = await daemon.get_json(f"/v1/sends/{send_id}")
        assert status == 200
        assert record["status"] == "resolved"
        assert record["state"] == "Sent"
        assert simulator.emails["E-1"]["state"] == "Sent"


async def test_without_reference_id_in_the_answer_correlation_uses_the_email_id(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert not simulator.settings.reference_id_in_answer  # as the docs show the answer
    assert simulator.base_url
    async with DaemonProcess(write_config(tmp_path, gws_url=simulator.base_url)) as daemon:
        status, answer = await daemon.send("E-2")
        assert status == 200
        assert "referenceId" not in answer or answer["referenceId"] == 1
        [event] = await daemon.wait_events(_events(tmp_path), 1)
        assert event["data"]["correlated"] is True
        assert event["data"]["send"]["sendId"] == answer["sendId"]
        # learned from the notification
        status, record = await daemon.get_json(f"/v1/sends/{answer['sendId']}")
        assert record["referenceId"] == 1


async def test_a_notification_that_overtakes_the_answer_is_still_matched(
    simulator: Simulator, tmp_path: Path
) -> None:
    simulator.settings.notify_before_answer = True
    simulator.settings.notify_delay_seconds = 0.05
    simulator.settings.reference_id_in_answer = True
    assert simulator.base_url
    async with DaemonProcess(write_config(tmp_path, gws_url=simulator.base_url)) as daemon:
        status, answer = await daemon.send("E-3")
        assert status == 200
        [event] = await daemon.wait_events(_events(tmp_path), 1)
        assert event["data"]["correlated"] is True
        assert event["data"]["send"]["sendId"] == answer["sendId"]
        assert answer["referenceId"] == event["data"]["referenceId"]


async def test_a_send_gws_rejects_is_answered_as_gws_did_and_becomes_send_rejected(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    async with DaemonProcess(write_config(tmp_path, gws_url=simulator.base_url)) as daemon:
        status, answer = await daemon.send("E-4", send_body(queue="NoSuchQueue"))
        assert status == 400
        assert answer["statusCode"] == 2
        assert "NoSuchQueue" in answer["statusMessage"]
        [event] = await daemon.wait_events(_events(tmp_path), 1)
        assert event["type"] == "gws.email.send_rejected"
        assert event["data"]["statusCode"] == 2
        assert event["data"]["httpStatus"] == 400
        assert event["data"]["send"]["sendId"] == answer["sendId"]


async def test_an_error_notification_resolves_the_send_as_an_error(
    simulator: Simulator, tmp_path: Path
) -> None:
    simulator.settings.error_emails.add("E-5")
    assert simulator.base_url
    async with DaemonProcess(write_config(tmp_path, gws_url=simulator.base_url)) as daemon:
        status, answer = await daemon.send("E-5")
        assert status == 200
        [event] = await daemon.wait_events(_events(tmp_path), 1)
        assert event["data"]["notificationType"] == "Error"
        assert event["data"]["correlated"] is True
        assert event["data"]["notification"]["errorCode"] == "SendFailed"
        _, record = await daemon.get_json(f"/v1/sends/{answer['sendId']}")
        assert record["state"] == "Error"


@pytest.mark.parametrize(
    ("body", "status_code", "field"),
    [
        (b"{not json", 10, ""),
        (orjson.dumps({"operationName": "Send", "email": {}}), 1, "queueName"),
        (orjson.dumps({"operationName": "Send", "queueName": "Outbound"}), 1, "email"),
        (
            orjson.dumps({"operationName": "Send", "queueName": "Q", "email": {"from": "a@b"}}),
            1,
            "email.to",
        ),
        (
            orjson.dumps(
                {"operationName": "Send", "queueName": "Q", "email": {"from": "a", "to": 5}}
            ),
            10,
            "email.to",
        ),
    ],
)
async def test_an_invalid_send_gets_400_naming_the_field_and_never_reaches_gws(
    simulator: Simulator, tmp_path: Path, body: bytes, status_code: int, field: str
) -> None:
    assert simulator.base_url
    async with DaemonProcess(write_config(tmp_path, gws_url=simulator.base_url)) as daemon:
        status, answer = await daemon.send("E-6", body)
        assert status == 400
        assert answer["statusCode"] == status_code
        assert answer["field"] == field
        if field:
            assert f"'{field}'" in answer["statusMessage"]
        assert simulator.sends_received == 0


async def test_other_operations_pass_through_unchanged(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    async with DaemonProcess(write_config(tmp_path, gws_url=simulator.base_url)) as daemon:
        status, answer = await daemon.send("UNKNOWN", {"operationName": "Save"})
        assert status == 404
        assert answer["statusCode"] == 6
        status, answer = await daemon.send("E-7")
        status, answer = await daemon.send("E-7", {"operationName": "Complete"})
        assert status == 200
        assert answer == {"statusCode": 0}


async def test_a_notification_for_no_send_is_forwarded_uncorrelated(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    async with DaemonProcess(write_config(tmp_path, gws_url=simulator.base_url)) as daemon:
        await simulator.publish(
            "/v2/me/emails",
            [
                {
                    "messageType": "EmailStateChangeMessage",
                    "notificationType": "PropertiesUpdated",
                    "email": {"id": "OTHER", "state": "Composing"},
                },
            ],
        )
        [event] = await daemon.wait_events(_events(tmp_path), 1)
        assert event["data"]["correlated"] is False
        assert event["data"]["send"] is None
        assert event["data"]["notificationType"] == "PropertiesUpdated"


async def test_malformed_notifications_are_counted_kept_and_do_not_stop_the_listener(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    config = write_config(tmp_path, gws_url=simulator.base_url)
    async with DaemonProcess(config) as daemon:
        await simulator.publish(
            "/v2/me/emails",
            [
                "just a string",
                {"notificationType": "StatusChange"},
                {"messageType": "NoSuchMessage"},
                {
                    "messageType": "EmailStateChangeMessage",
                    "notificationType": "StatusChange",
                    "email": {"state": "Sent"},
                },
            ],
        )
        await daemon.wait_log(
            lambda e: (
                e.get("event") == "notification_malformed" and e.get("reason") == "no_email_id"
            )
        )
        status, answer = await daemon.send("E-8")
        assert status == 200
        # A well-formed message of a type no page names is data: an event of its own.
        unknown, event = await daemon.wait_events(_events(tmp_path), 2)
        assert unknown["type"] == "gws.notification"
        assert unknown["data"]["messageType"] == "NoSuchMessage"
        assert event["data"]["send"]["sendId"] == answer["sendId"]
        text = await daemon.metrics()
        for reason in ("not_an_object", "no_message_type", "no_email_id"):
            assert f'gws_notifyd_notifications_malformed_total{{reason="{reason}"}} 1.0' in text
        # ... and counted as "other".
        assert (
            'gws_notifyd_notifications_received_total{account="default",channel="/v2/me/emails",'
            'message_type="other",notification_type="none"} 1.0'
        ) in text
        status, _ready = await daemon.readyz()
        assert status == 200
    result = await cli_output("dead-letters", "list", "--config", str(config))
    assert "3 dead letter(s)" in result


async def test_a_send_without_outcome_is_read_back_by_get_after_the_timeout(
    simulator: Simulator, tmp_path: Path
) -> None:
    simulator.settings.drop_emails.update({"E-9", "E-10"})
    simulator.settings.error_emails.add("E-10")  # stays Composing, and silent
    assert simulator.base_url
    config = write_config(
        tmp_path, gws_url=simulator.base_url, correlation={"send_timeout_seconds": 0.5}
    )
    async with DaemonProcess(config) as daemon:
        _, _sent = await daemon.send("E-9")
        _, silent = await daemon.send("E-10")
        events = await daemon.wait_events(_events(tmp_path), 2)
        by_email = {e["data"]["emailId"]: e for e in events}
        assert by_email["E-9"]["type"] == "gws.email.state_changed"
        assert by_email["E-9"]["data"]["reconciled"] is True
        assert by_email["E-9"]["data"]["notification"] is None
        assert by_email["E-9"]["data"]["state"] == "Sent"
        assert by_email["E-10"]["type"] == "gws.email.send_timed_out"
        assert by_email["E-10"]["data"]["state"] == "Composing"
        _, record = await daemon.get_json(f"/v1/sends/{silent['sendId']}")
        assert record["status"] == "timed_out"


async def test_an_answer_that_never_comes_gives_504_and_the_send_stays_pending(
    simulator: Simulator, tmp_path: Path
) -> None:
    simulator.settings.hang_emails.add("E-11")
    assert simulator.base_url
    config = write_config(
        tmp_path, gws_url=simulator.base_url, gws={"request_timeout_seconds": 0.5}
    )
    async with DaemonProcess(config) as daemon:
        status, answer = await daemon.send("E-11")
        assert status == 504
        assert answer["statusCode"] == 9
        # GWS did send it: the notification resolves the send.
        [event] = await daemon.wait_events(_events(tmp_path), 1)
        assert event["data"]["send"]["sendId"] == answer["sendId"]
        assert event["data"]["state"] == "Sent"


async def test_pending_sends_are_listed_and_resolved_ones_are_not(
    simulator: Simulator, tmp_path: Path
) -> None:
    simulator.settings.drop_emails.add("E-12")
    assert simulator.base_url
    async with DaemonProcess(write_config(tmp_path, gws_url=simulator.base_url)) as daemon:
        _, pending = await daemon.send("E-12")
        _, done = await daemon.send("E-13")
        await daemon.wait_events(_events(tmp_path), 1)
        status, listing = await daemon.get_json("/v1/sends?state=pending")
        assert status == 200
        assert [s["sendId"] for s in listing["sends"]] == [pending["sendId"]]
        status, listing = await daemon.get_json("/v1/sends?state=resolved")
        assert [s["sendId"] for s in listing["sends"]] == [done["sendId"]]
        status, _ = await daemon.get_json("/v1/sends?state=bogus")
        assert status == 400
        status, _ = await daemon.get_json("/v1/sends/nope")
        assert status == 404


async def test_readyz_is_503_until_subscribed_and_healthz_answers_anyway(tmp_path: Path) -> None:
    # Nothing listens on this port: GWS is "down".
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = write_config(tmp_path, gws_url=f"http://127.0.0.1:{port}")
    async with DaemonProcess(config, wait_ready=False) as daemon:
        status, _body = await daemon.get_json("/healthz")
        assert status == 200
        status, ready = await daemon.readyz()
        assert status == 503
        assert ready["failed"] == ["subscribed"]
        await daemon.wait_log(lambda e: e.get("event") == "gws_login_retry")


async def test_one_info_log_line_per_outcome_with_the_ids(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    async with DaemonProcess(write_config(tmp_path, gws_url=simulator.base_url)) as daemon:
        _, answer = await daemon.send("E-14")
        line = await daemon.wait_log(lambda e: e.get("event") == "email_state_changed")
        assert line["level"] == "info"
        assert line["logger"] == "daemon.tracker"
        assert line["email_id"] == "E-14"
        assert line["send_id"] == answer["sendId"]
        assert line["reference_id"] == 1
        assert line["state"] == "Sent"
        assert "timestamp" in line
    output = b"".join(daemon.raw_stdout)
    assert b"agent1-password" not in output


async def test_sigterm_stops_cleanly_with_exit_0_and_events_on_disk(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    daemon = DaemonProcess(write_config(tmp_path, gws_url=simulator.base_url))
    await daemon.start()
    try:
        await daemon.send("E-15")
        await daemon.wait_events(_events(tmp_path), 1)
        await daemon.signal(signal.SIGTERM)
        assert await daemon.wait_exit() == 0
        assert any(e.get("event") == "stopped" for e in daemon.logs)
    finally:
        await daemon.stop()
    assert len(read_jsonl(_events(tmp_path))) == 1


async def test_a_forgotten_session_is_rehandshaken_and_missed_outcomes_reconciled(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    async with DaemonProcess(write_config(tmp_path, gws_url=simulator.base_url)) as daemon:
        simulator.settings.drop_emails.update({"E-16", "E-17"})
        _, first = await daemon.send("E-16")
        _, second = await daemon.send("E-17")
        simulator.forget_sessions()
        events = await daemon.wait_events(_events(tmp_path), 2)
        assert {e["data"]["send"]["sendId"] for e in events} == {first["sendId"], second["sendId"]}
        assert all(e["data"]["reconciled"] for e in events)
        metrics = await daemon.metrics()
        assert 'gws_notifyd_cometd_handshakes_total{account="default"} 2.0' in metrics
        simulator.settings.drop_emails.clear()
        status, answer = await daemon.send("E-18")
        assert status == 200
        events = await daemon.wait_events(_events(tmp_path), 3)
        assert events[-1]["data"]["send"]["sendId"] == answer["sendId"]


async def test_status_shows_connection_pending_and_sinks_as_a_table_and_as_json(
    simulator: Simulator, tmp_path: Path
) -> None:
    from tests.harness.webhook_receiver import free_port

    assert simulator.base_url
    simulator.settings.drop_emails.add("ST-1")
    config = write_config(
        tmp_path, gws_url=simulator.base_url, http={"listen": f"127.0.0.1:{free_port()}"}
    )
    async with DaemonProcess(config) as daemon:
        await daemon.send("ST-1")
        table = await cli_output("status", "--config", str(config))
        assert "READY" in table
        [row] = [line.split() for line in table.splitlines() if line.startswith("default ")]
        assert row[:4] == ["default", "connected", "yes", "ok"]
        assert "pending sends: 1" in table
        assert "archive" in table
        document = orjson.loads(await cli_output("status", "--config", str(config), "--json"))
        assert document["pendingSends"] == 1
        [account] = document["accounts"]
        assert (account["name"], account["subscribed"]) == ("default", True)
        assert document["ready"]["ready"] is True
        assert [s["name"] for s in document["sinks"]] == ["archive"]
    down = await cli_output("status", "--config", str(config))
    assert "does not answer" in down


async def test_with_a_token_the_api_needs_it_and_health_and_metrics_do_not(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    (tmp_path / "api-token").write_text("t0k3n-for-tests\n")
    config = write_config(
        tmp_path, gws_url=simulator.base_url, http={"token_file": str(tmp_path / "api-token")}
    )
    async with DaemonProcess(config) as daemon:
        status, answer = await daemon.send("TK-1")
        assert status == 401
        assert answer["statusCode"] == 20
        assert simulator.sends_received == 0
        status, answer = await daemon.send("TK-1", Authorization="Bearer t0k3n-for-tests")
        assert status == 200
        assert (await daemon.get_json("/healthz"))[0] == 200
        assert "gws_notifyd_sends_total" in await daemon.metrics()
        assert (await daemon.get_json(f"/v1/sends/{answer['sendId']}"))[0] == 401
    assert b"t0k3n-for-tests" not in b"".join(daemon.raw_stdout)
