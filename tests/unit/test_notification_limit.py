"""A notification about a Send as large as the API takes is not refused as oversized."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.config import HttpSettings
from daemon.gws.messages import EMAIL_STATE_CHANGE, EmailStateChange, Malformed, parse_message
from daemon.gws.operations import notification_limit

CHANNEL = "/v2/me/emails"


def sent_notification(body: str, **email: Any) -> dict[str, Any]:
    """What GWS says once an email is sent: the email resource as it now is, its body included."""
    return {
        "messageType": EMAIL_STATE_CHANGE,
        "notificationType": "StatusChange",
        "referenceId": 26,
        "email": {
            "id": "01QG9WAK37H38024",
            "state": "Sent",
            "uri": "https://gws.example.com/api/v2/me/emails/01QG9WAK37H38024",
            "queue": "Outbound",
            "to": ["customer@example.com"],
            "from": "support@acme.example",
            "subject": "Hello",
            "body": body,
            "capabilities": [],
            **email,
        },
    }


@pytest.mark.parametrize("max_body_bytes", [1024, 1024 * 1024, HttpSettings().max_body_bytes * 8])
def test_the_notification_of_the_largest_send_fits_the_limit_made_for_it(
    max_body_bytes: int,
) -> None:
    body = "x" * (max_body_bytes - 200)
    notification = sent_notification(body, bodyAsPlainText=body)

    parsed = parse_message(CHANNEL, notification, max_bytes=notification_limit(max_body_bytes))

    assert isinstance(parsed, EmailStateChange)


def test_with_the_default_message_limit_it_was_refused_as_oversized() -> None:
    body = "x" * (HttpSettings().max_body_bytes - 200)

    parsed = parse_message(CHANNEL, sent_notification(body))

    assert isinstance(parsed, Malformed)
    assert parsed.reason == "oversized"


def test_the_limit_never_goes_below_the_default() -> None:
    from daemon.gws.messages import DEFAULT_MAX_MESSAGE_BYTES

    assert notification_limit(1024) == DEFAULT_MAX_MESSAGE_BYTES
