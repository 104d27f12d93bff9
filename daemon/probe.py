"""`gws-notifyd probe`: what your GWS says and sends, before the daemon runs against it.

Does what the daemon does at start, and writes down what GWS answered: the
login (the CSRF header it names, the cookies it sets, StartContactCenterSession's
answer), the CometD handshake (connection types, advice), every notification
that arrives while subscribed for `--seconds` (its shape: channel, messageType,
notificationType, keys, whether it has a referenceId and an email.id, and what
the daemon would make of it), and the workspace (`GET /api/v2/me/emails`).

It never sends an email, and never writes a secret: no password, token, cookie
value or clientId reaches its report or its summary. Exit codes are `run`'s:
0 everything worked, 77 GWS refused the credentials, 69 GWS unreachable (or
failing) at login, 1 something after the login did not work.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

import orjson

from daemon import eventloop, exitcodes
from daemon.backoff import BackoffPolicy
from daemon.cometd import (
    BayeuxClient,
    ClientSettings,
    ConnectionState,
    Message,
    Subscribed,
    payload,
)
from daemon.config import GwsSettings
from daemon.errors import GwsError
from daemon.events import notification_type_of
from daemon.gws.login import failure_reason
from daemon.gws.messages import EmailStateChange, Malformed, parse_message
from daemon.gws.session import GwsSession
from daemon.metrics import Metrics

# Of the handshake reply, what is shown; the rest (clientId, ext) only by name.
_HANDSHAKE_SHOWN = ("successful", "version", "minimumVersion", "supportedConnectionTypes", "advice")
# A probe must never hammer GWS: its CometD retries are slow.
_PROBE_BACKOFF = BackoffPolicy(initial=1.0, maximum=5.0, floor=0.5)


class _Listening:
    """What the probe's Bayeux client saw: states, subscriptions, notification shapes."""

    def __init__(self) -> None:
        self.states: list[str] = []
        self.subscribed = asyncio.Event()
        self.transport: str | None = None
        self.shapes: Counter[bytes] = Counter()  # each shape as JSON

    async def on_batch(self, batch: list[Message]) -> None:
        for message in batch:
            self.shapes[orjson.dumps(_shape(message))] += 1

    async def on_subscribed(self, info: Subscribed) -> None:
        self.transport = info.transport
        self.subscribed.set()

    def on_state(self, state: ConnectionState) -> None:
        self.states.append(state.value)


def _shape(message: Message) -> dict[str, Any]:
    """One notification's shape: never its values (ids and addresses stay out)."""
    data = payload(message.data)
    fields = data if isinstance(data, dict) else {}
    email = fields.get("email")
    parsed = parse_message(message.channel, data)
    if isinstance(parsed, EmailStateChange):
        daemon_sees = "email state change"
    elif isinstance(parsed, Malformed):
        daemon_sees = f"malformed ({parsed.reason})"
    else:
        daemon_sees = f"forwarded as {notification_type_of(parsed.message_type)}"
    return {
        "channel": message.channel,
        "messageType": fields.get("messageType"),
        "notificationType": fields.get("notificationType"),
        "keys": sorted(str(k) for k in fields),
        "emailKeys": sorted(str(k) for k in email) if isinstance(email, dict) else None,
        "referenceId": "referenceId" in fields,
        "emailId": isinstance(email, dict) and bool(email.get("id")),
        "daemon": daemon_sees,
    }


async def _login(session: GwsSession, report: dict[str, Any]) -> int:
    """Log in as the daemon does; the exit code if that failed, else OK."""
    try:
        answer = await session.login()
    except GwsError as exc:
        report["login"] = {"ok": False, "error": str(exc)}
        refused = failure_reason(exc) == "refused"
        report["login"]["refused"] = refused
        return exitcodes.NOPERM if refused else exitcodes.UNAVAILABLE
    finally:
        report["csrfHeader"] = session.csrf_header_name
        report["cookies"] = session.cookie_names()
    report["login"] = {"ok": True}
    report["startContactCenterSession"] = (
        None
        if answer is None
        else {
            "httpStatus": answer.http_status,
            "statusCode": answer.status_code,
            "statusMessage": answer.status_message,
        }
    )
    return exitcodes.OK


async def _listen(session: GwsSession, gws: GwsSettings, seconds: float) -> dict[str, Any]:
    """Handshake, subscribe, and take notifications for `seconds`; what was seen."""
    listening = _Listening()
    client = BayeuxClient(
        session=session.http,
        settings=ClientSettings(
            url=gws.notifications_url,
            channels=gws.channels,
            allow_websocket=gws.allow_websocket,
            max_response_bytes=gws.max_batch_bytes,
            backoff=_PROBE_BACKOFF,
        ),
        on_batch=listening.on_batch,
        on_subscribed=listening.on_subscribed,
        on_state=listening.on_state,
        headers=session.bayeux_headers,
    )
    running = asyncio.create_task(client.run(), name="probe-bayeux")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(listening.subscribed.wait(), seconds)
    if listening.subscribed.is_set():
        await asyncio.sleep(seconds)  # listening is what a probe is for
    await client.close()
    error: str | None = None
    try:
        await asyncio.wait_for(running, 10)
    except Exception as exc:  # a probe reports what went wrong, whatever it was
        error = f"{type(exc).__name__}: {exc}"
    reply = client.handshake_reply
    return {
        "url": gws.notifications_url,
        "handshake": {k: reply[k] for k in _HANDSHAKE_SHOWN if k in reply} if reply else None,
        "handshakeOtherKeys": sorted(k for k in reply if k not in _HANDSHAKE_SHOWN),
        "subscribed": listening.subscribed.is_set() and error is None,
        "error": error,
        "channels": list(gws.channels),
        "transport": listening.transport,
        "states": listening.states,
        "listenedSeconds": seconds,
        "notifications": [
            orjson.loads(shape) | {"count": count}
            for shape, count in listening.shapes.most_common()
        ],
    }


async def _workspace(session: GwsSession) -> dict[str, Any]:
    try:
        emails = await session.list_emails()
    except GwsError as exc:
        return {"ok": False, "error": str(exc)}
    return {
        "ok": True,
        "emails": [
            {
                "id": email_id,
                "state": email.get("state"),
                "emailType": email.get("emailType"),
                "keys": sorted(email),
            }
            for email_id, email in emails.items()
        ],
    }


async def probe(gws: GwsSettings, *, seconds: float) -> tuple[int, dict[str, Any]]:
    """Everything the probe learns; and its exit code."""
    report: dict[str, Any] = {
        "gws": gws.base_url,
        "username": gws.username,
        "startSession": gws.start_session,
    }
    session = GwsSession(gws, Metrics().account("probe"))
    session.open()
    try:
        code = await _login(session, report)
        if code == exitcodes.OK:
            report["cometd"] = await _listen(session, gws, seconds)
            report["workspace"] = await _workspace(session)
            if not (report["cometd"]["subscribed"] and report["workspace"]["ok"]):
                code = exitcodes.FAILURE
    finally:
        await session.close()
    report["exitCode"] = code
    return code, report


def summary(report: dict[str, Any]) -> str:
    """A few lines for a person; the JSON has the rest."""
    login = report.get("login", {})
    lines = [f"GWS {report['gws']} as {report['username']}"]
    if not login.get("ok"):
        lines.append(f"login: FAILED ({login.get('error')})")
        return "\n".join(lines)
    start = report.get("startContactCenterSession")
    lines.append(
        f"login: ok; CSRF header: {report.get('csrfHeader') or 'none'}; "
        f"cookies: {', '.join(report.get('cookies') or []) or 'none'}; "
        f"StartContactCenterSession: {_start_text(start)}"
    )
    lines.extend(_cometd_lines(report["cometd"]))
    workspace = report["workspace"]
    lines.append(
        f"workspace: {len(workspace['emails'])} email(s)"
        if workspace["ok"]
        else f"workspace: FAILED ({workspace['error']})"
    )
    lines.append("result: " + ("ok" if report["exitCode"] == exitcodes.OK else "NOT OK"))
    return "\n".join(lines)


def _start_text(start: dict[str, Any] | None) -> str:
    if start is None:
        return "not sent (gws.start_session = false)"
    return f"HTTP {start['httpStatus']}, statusCode {start['statusCode']}"


def _cometd_lines(cometd: dict[str, Any]) -> list[str]:
    handshake = cometd["handshake"] or {}
    lines = [
        f"CometD: {'subscribed' if cometd['subscribed'] else 'NOT subscribed'} "
        f"({cometd['transport'] or 'no transport'}); offered: "
        f"{', '.join(handshake.get('supportedConnectionTypes') or []) or '-'}; "
        f"advice: {orjson.dumps(handshake.get('advice')).decode()}",
        f"notifications in {cometd['listenedSeconds']:g} s: "
        f"{sum(n['count'] for n in cometd['notifications'])}",
    ]
    if cometd["error"]:
        lines.append(f"CometD stopped: {cometd['error']}")
    for shape in cometd["notifications"]:
        lines.append(
            f"  {shape['count']:>5} x {shape['channel']} {shape['messageType']}"
            f"/{shape['notificationType']}  referenceId: {'yes' if shape['referenceId'] else 'no'}"
            f"  email.id: {'yes' if shape['emailId'] else 'no'}  → {shape['daemon']}"
        )
    return lines


def run_probe(
    gws: GwsSettings,
    *,
    seconds: float,
    out: Path | None,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    """The command, as one account (`gws`: its settings): the report as JSON (to `out`,
    or stdout), the summary beside it."""
    code, report = eventloop.run(probe(gws, seconds=seconds))
    document = orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n"
    if out is not None:
        out.write_text(document)
        stdout.write(summary(report) + f"\nreport: {out}\n")
    else:
        stdout.write(document)
        stderr.write(summary(report) + "\n")
    return code
