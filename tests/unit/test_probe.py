"""`gws-notifyd probe`: a notification's shape without its values, and the summary."""

from __future__ import annotations

from pathlib import Path

import orjson

from daemon.cometd import Message
from daemon.config import settings_from_dict
from daemon.probe import _shape, probe, summary
from daemon.simulator import Simulator


def test_a_shape_names_keys_and_what_the_daemon_makes_of_it_never_values() -> None:
    error_without_email = {
        "messageType": "EmailStateChangeMessage",
        "notificationType": "Error",
        "referenceId": 9,
        "errorMessage": "customer@example.com bounced",
    }
    shape = _shape(Message("/v2/me/emails", error_without_email))

    assert shape == {
        "channel": "/v2/me/emails",
        "messageType": "EmailStateChangeMessage",
        "notificationType": "Error",
        "keys": ["errorMessage", "messageType", "notificationType", "referenceId"],
        "emailKeys": None,
        "referenceId": True,
        "emailId": False,
        "daemon": "email state change",
    }
    assert b"customer@example.com" not in orjson.dumps(shape)
    assert _shape(Message("/v2/me/emails", "junk"))["daemon"] == "malformed (not_an_object)"
    call = _shape(Message("/v2/me/calls", {"messageType": "CallStateChangeMessage"}))
    assert call["daemon"] == "forwarded as gws.call.state_changed"


async def test_a_probe_of_the_simulator_works_and_its_summary_says_so(
    simulator: Simulator, tmp_path: Path
) -> None:
    assert simulator.base_url
    settings = settings_from_dict(
        {
            "gws": {"base_url": simulator.base_url, "username": "agent1", "password": "x"},
            "store": {"path": "state.db"},
        },
        base=tmp_path,
        environ={},
    )
    simulator.settings.password = "x"

    code, report = await probe(settings.accounts[0].gws, seconds=0.2)
    text = summary(report)

    assert code == 0
    assert report["cometd"]["subscribed"] is True
    assert "login: ok; CSRF header: X-CSRF-TOKEN; cookies: JSESSIONID" in text
    assert "CometD: subscribed (long-polling); offered: long-polling" in text
    assert text.endswith("result: ok")
    assert simulator.sends_received == 0
