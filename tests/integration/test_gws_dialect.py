"""The daemon against GWS as its 8.5/8.6 docs describe it (the simulator's default mode).

CSRF on every CometD POST, the session checked before each re-handshake, a refused
password never retried fast, WebSocket given up after two failures, every documented
message type taken as data, an Error without its email, read-backs that end with a
reason, Send bodies the docs allow, and `gws-notifyd probe`.

The daemon runs as a subprocess; nothing sleeps to synchronise (one test observes
the login pace over three minutes on purpose).
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from daemon.simulator import Simulator
from tests.harness.daemon_process import (
    DaemonProcess,
    read_jsonl,
    run_cli,
    send_body,
    write_config,
)
from tests.harness.waiting import wait_until

DOCUMENTED_CHANNELS = [
    "/v2/me/emails",
    "/v2/me/calls",
    "/v2/me/devices",
    "/v2/me/chats",
    "/v2/me/workitems",
    "/v2/me/openmedia",
    "/v2/me/workbins",
    "/v2/me/outbound",
]


def _events(tmp_path: Path) -> Path:
    return tmp_path / "events.jsonl"


def _sample(metrics: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus exposition (0.0 when absent); a per-account series is
    the `default` account's."""
    for wanted in (labels, {"account": "default", **labels}):
        text = ",".join(f'{k}="{v}"' for k, v in sorted(wanted.items()))
        prefix = f"{name}{{{text}}} " if wanted else f"{name} "
        for line in metrics.splitlines():
            if line.startswith(prefix):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _control(simulator: Simulator, path: str, body: object) -> Any:
    assert simulator.base_url
    async with (
        aiohttp.ClientSession() as http,
        http.post(simulator.base_url + path, data=orjson.dumps(body)) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


async def _subscribed_again(daemon: DaemonProcess, simulator: Simulator, handshakes: int) -> None:
    async def resubscribed() -> bool:
        metrics = await daemon.metrics()
        return (
            _sample(metrics, "gws_notifyd_cometd_handshakes_total") >= handshakes
            and simulator.subscriber_count() == 1
        )

    await wait_until(resubscribed, timeout=15, what=f"handshake #{handshakes}")


# -- CSRF on CometD, the session first -------------------------------------------------


async def test_every_cometd_post_carries_the_csrf_token_also_after_gws_forgot_the_session(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.settings.csrf_cometd  # the default: a POST without it is refused
    assert simulator.base_url
    async with DaemonProcess(write_config(tmp_path, gws_url=simulator.base_url)) as daemon:
        simulator.settings.drop_emails.add("C-1")  # sent; only a read-back can tell
        _, answer = await daemon.send("C-1")
        simulator.forget_sessions()  # a GWS restart: new session, new CSRF token
        await _subscribed_again(daemon, simulator, 2)
        [event] = await daemon.wait_events(_events(tmp_path), 1)
        metrics = await daemon.metrics()

    assert event["data"]["send"]["sendId"] == answer["sendId"]
    assert event["data"]["reconciled"] is True
    assert simulator.bayeux_posts >= 6  # two handshakes, two subscribes, connects
    assert simulator.bayeux_posts_without_csrf == 0
    # The session was mended before the re-handshake: one login for it, not a refused POST.
    assert (
        _sample(
            metrics,
            "gws_notifyd_gws_request_duration_seconds_count",
            operation="StartContactCenterSession",
            result="ok",
        )
        == 2
    )


@pytest.mark.slow
async def test_a_password_changed_on_the_server_is_tried_slowly_and_a_new_file_and_sighup_mend_it(
    simulator: Simulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert simulator.base_url
    password_file = tmp_path / "gws-password"
    password_file.write_text(simulator.settings.password + "\n")
    config = write_config(
        tmp_path,
        gws_url=simulator.base_url,
        gws={"password_file": str(password_file), "auth_retry_seconds": 2},
        correlation={"send_timeout_seconds": 600},
    )
    async with DaemonProcess(config, password=None) as daemon:
        simulator.settings.drop_emails.add("P-1")  # its outcome must be read back
        _, pending = await daemon.send("P-1")
        await _control(simulator, "/control/password", {"password": "rotated-by-the-admin"})
        changed_at = time.monotonic()
        await daemon.wait_ready_status(503)
        _, ready = await daemon.readyz()
        assert "gws_auth" in ready["failed"]
        status, refused_send = await daemon.send("P-2")
        assert (status, refused_send["statusCode"]) == (502, 4)  # never left: no failed login
        # Observed for three minutes on purpose: the pace of the tries is the subject.
        await asyncio.sleep(max(0.0, changed_at + 180 - time.monotonic()))
        tries = [t - changed_at for t in simulator.refused_times]
        metrics = await daemon.metrics()

        password_file.write_text("rotated-by-the-admin\n")
        fixed_at = time.monotonic()
        await daemon.signal(signal.SIGHUP)
        await daemon.wait_ready_status(200, timeout=10)
        recovered = time.monotonic() - fixed_at
        events = await daemon.wait_events(_events(tmp_path), 2)

    gaps = [later - earlier for earlier, later in itertools.pairwise(tries)]
    with capsys.disabled():
        print(
            f"\n== refused tries at (s): {[round(t, 1) for t in tries]}; "
            f"recovered {recovered:.2f} s after SIGHUP"
        )
    # 2 s, doubling (with up to a fifth more): 0, 2, 6, 14, 30, 62, 126 ... in 180 s.
    assert 5 <= len(tries) <= 8
    for index, gap in enumerate(gaps):
        assert gap >= 2.0 * 2**index * 0.99, (index, gaps)
    assert _sample(metrics, "gws_notifyd_gws_login_failures_total", reason="refused") == len(tries)
    assert _sample(metrics, "gws_notifyd_gws_credentials_refused") == 1
    assert recovered < 5.0
    by_send = {(e["data"].get("send") or {}).get("sendId"): e for e in events}
    assert by_send[pending["sendId"]]["data"]["reconciled"] is True
    assert by_send[pending["sendId"]]["data"]["state"] == "Sent"
    assert by_send[refused_send["sendId"]]["type"] == "gws.email.send_rejected"


async def test_a_send_answered_401_stops_every_other_request_until_a_login_succeeds(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    async with DaemonProcess(write_config(tmp_path, gws_url=simulator.base_url)) as daemon:
        right = simulator.settings.password
        await wait_until(lambda: simulator.bayeux.held_connects() == 1, timeout=5, what="a poll")
        # Changed under a held long-poll: the first to hear of it is a Send.
        simulator.settings.password = "changed-elsewhere"
        status, first = await daemon.send("U-1")
        await daemon.wait_ready_status(503, timeout=5)
        _, ready = await daemon.readyz()
        status_2, second = await daemon.send("U-2")
        await daemon.wait_log(lambda e: e.get("event") == "gws_login_failed")
        refused = len(simulator.refused_times)

        simulator.settings.password = right
        await daemon.signal(signal.SIGHUP)  # tries at once, not in a minute
        await daemon.wait_ready_status(200, timeout=10)

    assert (status, first["statusCode"]) == (401, 20)  # GWS's answer, passed on
    assert "gws_auth" in ready["failed"]
    assert (status_2, second["statusCode"]) == (502, 4)  # never left
    assert refused == 2  # the Send, then one login check: nothing else


async def test_a_websocket_offer_that_fails_is_tried_twice_in_the_process_life_then_long_polling(
    simulator: Simulator, tmp_path: Path
) -> None:
    simulator.settings.offer_websocket = True  # offered; every upgrade fails
    assert simulator.base_url
    config = write_config(tmp_path, gws_url=simulator.base_url, gws={"allow_websocket": True})
    async with DaemonProcess(config) as daemon:
        for handshakes in (2, 3, 4):
            simulator.forget_sessions()
            await _subscribed_again(daemon, simulator, handshakes)
        status, answer = await daemon.send("W-1")
        [event] = await daemon.wait_events(_events(tmp_path), 1)
        _, document = await daemon.get_json("/v1/status")

    assert status == 200
    assert event["data"]["send"]["sendId"] == answer["sendId"]
    assert simulator.websocket_upgrades == 2
    assert simulator.websocket_upgrades_without_csrf == 0
    assert document["accounts"][0]["transport"] == "long-polling"
    abandoned = [e for e in daemon.logs if e.get("event") == "bayeux_websocket_abandoned"]
    assert len(abandoned) == 1


# -- every message type is data; an Error without an email --------------------------


async def test_every_documented_message_type_is_counted_as_received_and_none_as_malformed(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    config = write_config(
        tmp_path, gws_url=simulator.base_url, gws={"channels": DOCUMENTED_CHANNELS}
    )
    async with DaemonProcess(config) as daemon:
        published = (await _control(simulator, "/control/samples", {}))["published"]

        async def all_counted() -> str | None:
            text = await daemon.metrics()
            total = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("gws_notifyd_notifications_received_total{")
            )
            return text if total >= len(published) else None

        metrics = await wait_until(all_counted, timeout=10, what="every sample counted")
        assert metrics is not None

    for sample in published:
        message_type = sample["messageType"]
        if sample["sample"] == "UnknownMessageType":
            message_type = "other"
        labels = {"channel": sample["channel"], "message_type": message_type}
        assert any(
            line.startswith("gws_notifyd_notifications_received_total{")
            and all(f'{k}="{v}"' in line for k, v in labels.items())
            for line in metrics.splitlines()
        ), sample
    malformed = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("gws_notifyd_notifications_malformed_total{")
    )
    assert malformed == 0
    # The email notifications (none for a send of ours) are forwarded, uncorrelated.
    forwarded = read_jsonl(_events(tmp_path))
    assert {e["data"]["notificationType"] for e in forwarded} >= {
        "StatusChange",
        "PropertiesUpdated",
        "EmailSaved",
        "AttachmentAdded",
        "AttachmentRemoved",
    }


async def test_an_error_without_its_email_is_correlated_by_reference_id(
    simulator: Simulator, tmp_path: Path
) -> None:
    simulator.settings.reference_id_in_answer = True  # `simulate --reference-id`
    simulator.settings.error_without_email = True
    simulator.settings.error_emails.add("X-1")
    assert simulator.base_url
    async with DaemonProcess(write_config(tmp_path, gws_url=simulator.base_url)) as daemon:
        _, answer = await daemon.send("X-1")
        [event] = await daemon.wait_events(_events(tmp_path), 1)
        _, record = await daemon.get_json(f"/v1/sends/{answer['sendId']}")

    assert event["data"]["correlated"] is True
    assert event["data"]["notificationType"] == "Error"
    assert event["data"]["emailId"] == "X-1"
    assert event["subject"] == "X-1"
    assert "email" not in event["data"]["notification"]
    assert (record["status"], record["state"]) == ("resolved", "Error")


# -- read-backs that tell the truth, and end --------------------------------------------


async def test_each_read_back_reason_ends_its_send(simulator: Simulator, tmp_path: Path) -> None:
    simulator.settings.drop_emails.update({"R-COMPOSING", "R-GONE", "R-DOWN"})
    simulator.settings.error_emails.add("R-COMPOSING")  # stays Composing, silently
    assert simulator.base_url
    config = write_config(
        tmp_path,
        gws_url=simulator.base_url,
        correlation={"send_timeout_seconds": 0.5, "read_back_give_up_seconds": 1},
        gws={"request_timeout_seconds": 1, "retry_max_seconds": 1},
    )
    async with DaemonProcess(config) as daemon:
        _, composing = await daemon.send("R-COMPOSING")
        simulator.settings.sent_emails_leave = True  # GET answers 404 once sent
        _, gone = await daemon.send("R-GONE")
        by_send = await _wait_timed_out(daemon, tmp_path, {composing["sendId"], gone["sendId"]})
        _, down = await daemon.send("R-DOWN")
        await simulator.stop()  # every read-back of it fails from now on
        by_send |= await _wait_timed_out(daemon, tmp_path, {down["sendId"]})

    assert by_send[composing["sendId"]]["data"]["reason"] == "not_sent"
    assert by_send[composing["sendId"]]["data"]["state"] == "Composing"
    assert by_send[gone["sendId"]]["data"]["reason"] == "not_found"
    assert by_send[down["sendId"]]["data"]["reason"] == "read_back_failed"


async def _wait_timed_out(
    daemon: DaemonProcess, tmp_path: Path, send_ids: set[str]
) -> dict[str, dict[str, Any]]:
    def ended() -> dict[str, dict[str, Any]] | None:
        found = {
            e["data"]["send"]["sendId"]: e
            for e in read_jsonl(_events(tmp_path))
            if e["type"] == "gws.email.send_timed_out"
        }
        return found if send_ids <= set(found) else None

    result = await wait_until(ended, timeout=15, what="the sends timed out")
    assert result is not None
    return {k: v for k, v in result.items() if k in send_ids}


# -- Send bodies the docs allow ------------------------------------------------------------


async def test_a_string_to_and_a_textual_save_lar_are_accepted_and_forwarded_byte_for_byte(
    simulator: Simulator, tmp_path: Path
) -> None:
    body = send_body(to="customer@example.com, other@example.com")
    body["email"]["x-unknown"] = [1, {"a": 2}]
    body["saveLAR"] = "true"
    body["somethingNew"] = {"kept": True}
    raw = orjson.dumps(body)
    assert simulator.base_url
    async with DaemonProcess(write_config(tmp_path, gws_url=simulator.base_url)) as daemon:
        status, answer = await daemon.send("B-1", raw)
        [event] = await daemon.wait_events(_events(tmp_path), 1)

    assert (status, answer["statusCode"]) == (200, 0)
    assert simulator.last_send_body == raw
    assert event["data"]["send"]["to"] == ["customer@example.com", "other@example.com"]
    assert simulator.emails["B-1"]["to"] == ["customer@example.com", "other@example.com"]


# -- gws-notifyd probe -----------------------------------------------------------------------


async def test_probe_reports_what_gws_says_and_sends_and_never_a_secret(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    config = write_config(
        tmp_path, gws_url=simulator.base_url, gws={"channels": ["/v2/me/emails", "/v2/me/calls"]}
    )
    out = tmp_path / "probe.json"
    probing = asyncio.create_task(
        run_cli(
            "probe",
            "--config",
            str(config),
            "--seconds",
            "2",
            "--out",
            str(out),
            env={"GWS_PASSWORD": simulator.settings.password},
        )
    )
    await wait_until(
        lambda: simulator.subscriber_count("/v2/me/calls") == 1, timeout=20, what="the probe"
    )
    await _control(
        simulator, "/control/samples", {"samples": ["CallStateChangeMessage", "InboundEmail"]}
    )
    code, stdout, stderr = await probing
    report = orjson.loads(out.read_bytes())

    assert code == 0, stderr
    assert "result: ok" in stdout
    assert report["csrfHeader"] == "X-CSRF-TOKEN"
    assert report["cookies"] == ["JSESSIONID"]
    assert report["startContactCenterSession"]["statusCode"] == 0
    handshake = report["cometd"]["handshake"]
    assert handshake["supportedConnectionTypes"] == ["long-polling"]
    assert handshake["advice"]["reconnect"] == "retry"
    assert "clientId" in report["cometd"]["handshakeOtherKeys"]
    shapes = {n["messageType"]: n for n in report["cometd"]["notifications"]}
    assert shapes["CallStateChangeMessage"]["channel"] == "/v2/me/calls"
    assert shapes["CallStateChangeMessage"]["emailId"] is False
    assert shapes["EmailStateChangeMessage"]["referenceId"] is True
    assert shapes["EmailStateChangeMessage"]["emailId"] is True
    assert "receivedDate" in shapes["EmailStateChangeMessage"]["emailKeys"]
    assert report["workspace"]["ok"] is True
    assert simulator.sends_received == 0  # it never sends an email
    written = out.read_text() + stdout + stderr
    assert simulator.settings.password not in written
    secrets = simulator.issued_secrets()
    assert secrets
    assert not [secret for secret in secrets if secret in written]


@pytest.mark.parametrize(("refused", "code"), [(True, 77), (False, 69)])
async def test_probe_exits_as_run_does_when_refused_or_unreachable(
    simulator: Simulator, tmp_path: Path, refused: bool, code: int
) -> None:
    assert simulator.base_url
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        closed_port = free.getsockname()[1]
    url = simulator.base_url if refused else f"http://127.0.0.1:{closed_port}"
    password = "not-the-agents-password" if refused else simulator.settings.password

    exit_code, stdout, stderr = await run_cli(
        "probe",
        "--config",
        str(write_config(tmp_path, gws_url=url)),
        "--seconds",
        "1",
        env={"GWS_PASSWORD": password},
    )

    assert exit_code == code, stderr
    report = orjson.loads(stdout)
    assert report["login"]["ok"] is False
    assert report["login"]["refused"] is refused
    assert "login: FAILED" in stderr
    assert password not in stdout + stderr
