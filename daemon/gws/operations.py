"""Email operation bodies as the integration posts them: parsed and validated.

Owns the Send contract of GWS (the GWS API v2 page "Send" of email operations): `operationName`
"Send", `queueName` (required), `email` with `to` (non-empty) and `from`
(required), optional `subject`, `body`, `bodyAsPlainText`, `mime`, `cc`, `bcc`
(each address field a list or a comma-separated string), and an optional
`saveLAR` (true or false, as a boolean or as text). Problems come back as
`Invalid` with a GWS-style statusCode (1 = required parameter missing, 10 =
input validation error) and a message naming the field. Never raises on bad
input. The body itself is forwarded as received: these checks change nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from daemon.gws.messages import DEFAULT_MAX_MESSAGE_BYTES

# GWS statusCodes (GWS API v2, "Error handling"); the daemon uses the same in
# the answers it makes up itself, so an integration reads one vocabulary.
MISSING = 1  # a required parameter is missing
INTERNAL_ERROR = 4
PROCESSING_INCOMPLETE = 9  # the operation may or may not have been carried out
INVALID = 10  # input validation error
NOT_AUTHENTICATED = 20

# Letters and digits in GWS's samples; `_` and `-` for deployments that use them.
MAX_EMAIL_ID_LENGTH = 64
_EMAIL_ID = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_EMAIL_ID_LENGTH}}}")

_OPTIONAL_TEXT = ("subject", "body", "bodyAsPlainText", "mime")
_ADDRESS_LISTS = ("cc", "bcc")
# saveLAR: "Possible values are true or false", as JSON booleans or as text.
_BOOL_TEXT = ("true", "false")


@dataclass(frozen=True, slots=True)
class Invalid:
    status_code: int
    message: str
    field: str

    def as_json(self) -> dict[str, Any]:
        return {"statusCode": self.status_code, "statusMessage": self.message, "field": self.field}


@dataclass(frozen=True, slots=True)
class Operation:
    """A well-formed JSON object with an operationName that is not Send."""

    name: str


@dataclass(frozen=True, slots=True)
class SendRequest:
    queue_name: str
    to: tuple[str, ...]
    sender: str
    subject: str | None


def _missing(field: str) -> Invalid:
    return Invalid(MISSING, f"Required parameter '{field}' is missing", field)


def _invalid(field: str, what: str) -> Invalid:
    return Invalid(INVALID, f"Input validation error: '{field}' {what}", field)


def _address_list(email: dict[str, Any], key: str, *, required: bool) -> tuple[str, ...] | Invalid:
    field = f"email.{key}"
    value = email.get(key)
    if value is None:
        return _missing(field) if required else ()
    # GWS's page says cc/bcc "must be comma delimited" and words `to` alike
    # ("one or more addresses"), while its samples use lists; both are accepted.
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list):
        return _invalid(field, "must be a list of addresses")
    if required and not value:
        return _invalid(field, "must list at least one address")
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            return _invalid(f"{field}[{index}]", "must be a non-empty string")
    return tuple(value)


# What GWS adds to the email it notifies about: ids, uri, queue, capabilities, user data.
_NOTIFICATION_HEADROOM = 64 * 1024


def notification_limit(max_send_bytes: int) -> int:
    """The size a notification about a Send of up to `max_send_bytes` may reach.

    The notification carries the email as sent (its body, and perhaps a plain-text
    copy GWS derived from it) and what GWS adds; never less than the default.
    """
    return max(DEFAULT_MAX_MESSAGE_BYTES, 2 * max_send_bytes + _NOTIFICATION_HEADROOM)


def check_email_id(email_id: str) -> Invalid | None:
    """None for an id GWS can have; otherwise why not, as the 400 GWS would give."""
    if _EMAIL_ID.fullmatch(email_id):
        return None
    return Invalid(
        INVALID,
        f"Input validation error: 'id' must be 1 to {MAX_EMAIL_ID_LENGTH} "
        "letters, digits, '_' or '-'",
        "id",
    )


def parse_operation(raw: bytes) -> SendRequest | Operation | Invalid:
    """Classify a POST body for /api/v2/me/emails/{id}."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Invalid(INVALID, f"Input validation error: body is not valid JSON ({exc})", "")
    if not isinstance(body, dict):
        return Invalid(INVALID, "Input validation error: body must be a JSON object", "")
    name = body.get("operationName")
    if name is None:
        return _missing("operationName")
    if not isinstance(name, str) or not name:
        return _invalid("operationName", "must be a non-empty string")
    if name != "Send":
        return Operation(name)
    return validate_send(body)


def validate_send(body: dict[str, Any]) -> SendRequest | Invalid:
    queue = body.get("queueName")
    if queue is None:
        return _missing("queueName")
    if not isinstance(queue, str) or not queue.strip():
        return _invalid("queueName", "must be a non-empty string")
    save_lar = body.get("saveLAR")
    if save_lar is not None and not isinstance(save_lar, bool) and save_lar not in _BOOL_TEXT:
        return _invalid("saveLAR", "must be true or false")
    email = body.get("email")
    if email is None:
        return _missing("email")
    if not isinstance(email, dict):
        return _invalid("email", "must be an object")
    return _validate_email(queue, email)


def _validate_email(queue: str, email: dict[str, Any]) -> SendRequest | Invalid:
    to = _address_list(email, "to", required=True)
    if isinstance(to, Invalid):
        return to
    sender = email.get("from")
    if sender is None:
        return _missing("email.from")
    if not isinstance(sender, str) or not sender.strip():
        return _invalid("email.from", "must be a non-empty string")
    for key in _OPTIONAL_TEXT:
        value = email.get(key)
        if value is not None and not isinstance(value, str):
            return _invalid(f"email.{key}", "must be a string")
    for key in _ADDRESS_LISTS:
        addresses = _address_list(email, key, required=False)
        if isinstance(addresses, Invalid):
            return addresses
    subject = email.get("subject")
    return SendRequest(
        queue_name=queue,
        to=to,
        sender=sender,
        subject=subject if isinstance(subject, str) else None,
    )
