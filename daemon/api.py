"""The local HTTP API: the Send drop-in, what the daemon knows, health and metrics.

    POST /accounts/{name}/api/v2/me/emails/{id}
                                  GWS's path and body, as account `name`. Send is
                                  validated, recorded (before it leaves), forwarded
                                  and answered with GWS's answer + sendId
                                  (+ referenceId). Other operationNames pass
                                  through unchanged.
    POST /api/v2/me/emails/{id}   the same, when exactly one account is configured
                                  (otherwise 404 naming the prefixed form)
    GET  /v1/sends/{sendId}       one send, pending or not (with its account)
    GET  /v1/sends?state=pending&account=NAME
                                  sends by state (pending = every pending state)
    GET  /v1/status               every account, pending, backlog and dead letters
    GET  /healthz                 the process and its event loop answer
    GET  /readyz                  every account subscribed, store writable, not
                                  draining (JSON says which, and which accounts)
    GET  /metrics                 Prometheus text format

Owns HTTP concerns only (status codes, bodies, the bearer token): what a
Send *does* is `daemon.sending`'s business, whose outcomes are mapped here.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import orjson
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST

from daemon import __version__
from daemon.accounts import Account, Accounts
from daemon.config import HttpSettings
from daemon.dispatcher import Dispatcher
from daemon.errors import StoreError
from daemon.gws.operations import (
    INTERNAL_ERROR,
    INVALID,
    NOT_AUTHENTICATED,
    PROCESSING_INCOMPLETE,
    Invalid,
    check_email_id,
)
from daemon.metrics import Metrics
from daemon.sending import (
    Answered,
    ClientGone,
    NeverLeft,
    NotRecorded,
    OutboxFull,
    Outcome,
)
from daemon.sends import PENDING_STATUSES, SendStatus
from daemon.store import MALFORMED_SINK, AsyncStore

log = structlog.get_logger(logger_name="daemon.api")

RETRY_AFTER_SECONDS = "5"
EMAILS_PATH = "/api/v2/me/emails/"
ACCOUNT_PREFIX = "/accounts/"


@dataclass(slots=True)
class RuntimeState:
    """What the service tells the API about itself."""

    started_at: float = field(default_factory=time.time)
    draining: bool = False


@dataclass(slots=True)
class ApiContext:
    http: HttpSettings
    metrics: Metrics
    accounts: Accounts
    store: AsyncStore
    dispatcher: Dispatcher
    state: RuntimeState


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def _gws_error(
    status: int,
    code: int,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    send_id: str | None = None,
) -> web.Response:
    body: dict[str, object] = {"statusCode": code, "statusMessage": message}
    if send_id is not None:
        body["sendId"] = send_id
    return _json(body, status, headers)


_CONTEXT = web.AppKey("context", ApiContext)


def build_app(context: ApiContext) -> web.Application:
    limit = context.http.max_body_bytes

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        """The bearer token (when configured), the email id, and a GWS-style 413."""
        refusal = _unauthorized(request, context.http) or _bad_email_id(request)
        if refusal is not None:
            return refusal
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return _gws_error(413, INVALID, f"Request body is larger than {limit} bytes")

    app = web.Application(client_max_size=limit, middlewares=[guard])
    app[_CONTEXT] = context
    app.router.add_post(EMAILS_PATH + "{email_id}", _email_operation)
    app.router.add_post(ACCOUNT_PREFIX + "{account}" + EMAILS_PATH + "{email_id}", _email_operation)
    app.router.add_get("/v1/sends/{send_id}", _get_send)
    app.router.add_get("/v1/sends", _list_sends)
    app.router.add_get("/v1/status", _status)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


_OPEN_PATHS = ("/healthz", "/readyz", "/metrics")


def _unauthorized(request: web.Request, http: HttpSettings) -> web.Response | None:
    token = http.token
    if token is None or request.path.startswith(_OPEN_PATHS):
        return None
    # Header bytes that are not UTF-8 arrive as surrogates: compared as they came.
    given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
    if hmac.compare_digest(given, b"Bearer " + token.reveal().encode()):
        return None
    return _gws_error(401, NOT_AUTHENTICATED, "Missing or invalid bearer token")


def _bad_email_id(request: web.Request) -> web.Response | None:
    """400 for a POST under /api/v2/me/emails/ whose rest is not one GWS email id.

    Read from the raw path, so that an id routing would not take (one with a `/`,
    or empty) is a 400 naming `id` too, not a 404. The guard that counts is the
    workflow's own check: a percent-encoded path (`/api/v2/me/%65mails/%2E%2E`)
    passes this one and still routes with id `..`.
    """
    raw = request.raw_path.partition("?")[0]
    if raw.startswith(ACCOUNT_PREFIX):  # /accounts/{name}/api/v2/me/emails/...
        raw = "/" + raw.removeprefix(ACCOUNT_PREFIX).partition("/")[2]
    if request.method != "POST" or not raw.startswith(EMAILS_PATH):
        return None
    invalid = check_email_id(unquote(raw.removeprefix(EMAILS_PATH)))
    if invalid is None:
        return None
    log.info("send_invalid", field=invalid.field, path=raw[:120])
    return _answer(invalid)


# -- Send drop-in -----------------------------------------------------------------

_RETRY_LATER = {"Retry-After": RETRY_AFTER_SECONDS}


def _account_of(request: web.Request, accounts: Accounts) -> Account | web.Response:
    """The account a Send is for: named in the path, or the only one configured."""
    name = request.match_info.get("account")
    if name is None:
        if len(accounts) == 1:
            return accounts.first
        return _gws_error(
            404,
            INVALID,
            f"Several GWS accounts are configured: use {ACCOUNT_PREFIX}{{name}}"
            f"{EMAILS_PATH}{{id}} (accounts: {', '.join(accounts.names)})",
        )
    account = accounts.get(name)
    if account is None:
        return _gws_error(404, INVALID, f"No GWS account {name[:64]!r} is configured")
    return account


async def _email_operation(request: web.Request) -> web.StreamResponse:
    context = request.app[_CONTEXT]
    account = _account_of(request, context.accounts)
    if isinstance(account, web.Response):
        return account
    timeout = context.http.read_timeout_seconds
    try:
        async with asyncio.timeout(timeout):
            raw = await request.read()
    except TimeoutError:
        answer = _gws_error(
            408, INVALID, f"Input validation error: the body did not arrive within {timeout:g} s"
        )
        answer.force_close()  # the rest of the body may still be on its way
        return answer
    # After the body (which may take read_timeout_seconds), with nothing awaited
    # between this and the workflow counting the send in flight: a drain that
    # began meanwhile refuses it, one that begins later waits for it.
    if context.state.draining:
        return _gws_error(
            503, INTERNAL_ERROR, "gws-notifyd is shutting down; retry later", headers=_RETRY_LATER
        )
    with structlog.contextvars.bound_contextvars(account=account.name):
        outcome = await account.workflow.handle(
            request.match_info["email_id"], raw, client_gone=lambda: _client_gone(request)
        )
    return _answer(outcome)


def _client_gone(request: web.Request) -> bool:
    """Whether the integration has closed the connection (nobody would read the answer)."""
    transport = request.transport
    return transport is None or transport.is_closing()


def _answer(outcome: Outcome) -> web.Response:
    """The HTTP answer for what the Send workflow made of a request."""
    if isinstance(outcome, Answered):
        return _answered(outcome)
    if isinstance(outcome, Invalid):
        return _json(outcome.as_json(), status=400)
    if isinstance(outcome, OutboxFull):
        return _gws_error(
            503,
            INTERNAL_ERROR,
            "gws-notifyd outbox is full: sinks are not keeping up",
            headers=_RETRY_LATER,
        )
    if isinstance(outcome, NotRecorded):
        return _gws_error(
            503, INTERNAL_ERROR, "gws-notifyd cannot record the send", headers=_RETRY_LATER
        )
    if isinstance(outcome, ClientGone):
        # Nobody reads it: the connection is gone.
        return _gws_error(
            503, INTERNAL_ERROR, "Not forwarded: the connection closed", send_id=outcome.send_id
        )
    if isinstance(outcome, NeverLeft):
        return _gws_error(
            502, INTERNAL_ERROR, f"GWS unreachable: {outcome.reason}", send_id=outcome.send_id
        )
    if outcome.send_id is None:
        return _gws_error(504, PROCESSING_INCOMPLETE, f"No answer from GWS: {outcome.reason}")
    return _gws_error(
        504,
        PROCESSING_INCOMPLETE,
        "No answer from GWS; the send stays pending, see /v1/sends/" + outcome.send_id,
        send_id=outcome.send_id,
    )


def _answered(outcome: Answered) -> web.Response:
    answer = outcome.answer
    if outcome.send_id is None:  # passed through, byte for byte
        headers = {"Content-Type": answer.content_type} if answer.content_type else None
        return web.Response(body=answer.raw, status=answer.http_status, headers=headers)
    body: dict[str, Any] = dict(answer.body) if isinstance(answer.body, dict) else {}
    if answer.ok:
        body.setdefault("statusCode", 0)
        body["sendId"] = outcome.send_id
        if outcome.reference_id is not None:
            body["referenceId"] = outcome.reference_id
        return _json(body, status=answer.http_status)
    if not body:
        return _gws_error(
            answer.http_status,
            INTERNAL_ERROR,
            f"GWS answered HTTP {answer.http_status}",
            send_id=outcome.send_id,
        )
    body["sendId"] = outcome.send_id
    return _json(body, status=answer.http_status)


# -- what the daemon knows ------------------------------------------------------------


async def _get_send(request: web.Request) -> web.Response:
    context = request.app[_CONTEXT]
    send_id = request.match_info["send_id"]
    send = next((s for a in context.accounts if (s := a.tracker.get(send_id))), None)
    if send is None:
        send = await context.store.get_send(send_id)
    if send is None:
        return _json({"error": f"no send {send_id!r}"}, status=404)
    return _json(send.as_json())


async def _list_sends(request: web.Request) -> web.Response:
    context = request.app[_CONTEXT]
    state = request.query.get("state")
    try:
        limit = min(10_000, max(1, int(request.query.get("limit", "1000"))))
    except ValueError:
        return _json({"error": "limit must be an integer"}, status=400)
    account = request.query.get("account")
    running = list(context.accounts)
    if account is not None:
        running = [a for a in running if a.name == account]
        if not running and account not in await context.store.pending_by_account():
            return _json({"error": f"no account {account[:64]!r}"}, status=404)
    if state == "pending":
        pending = (s for a in running for s in a.tracker.pending())
        sends = sorted(pending, key=lambda s: s.requested_at)[:limit]
    else:
        known = {s.value for s in SendStatus}
        if state is not None and state not in known:
            choices = ", ".join(["pending", *sorted(known)])
            return _json({"error": f"state must be one of {choices}"}, status=400)
        statuses = [state] if state else None
        sends = await context.store.list_sends(statuses, limit, account)
    return _json({"sends": [s.as_json() for s in sends], "count": len(sends)})


async def _status(request: web.Request) -> web.Response:
    context = request.app[_CONTEXT]
    document = status_document(context)
    # Pending sends of accounts no longer configured stay in the store until they
    # come back: shown, so that they are not forgotten.
    try:
        stored = await context.store.pending_by_account()
    except StoreError:
        stored = {}
    document["accounts"].extend(
        {"name": name, "configured": False, "pendingSends": count}
        for name, count in sorted(stored.items())
        if context.accounts.get(name) is None
    )
    return _json(document)


def status_document(context: ApiContext) -> dict[str, Any]:
    dispatcher = context.dispatcher
    backlog = dispatcher.backlog()
    dead = dispatcher.dead_letter_counts
    accounts = [a.status() for a in context.accounts]
    return {
        "version": __version__,
        "uptimeSeconds": round(time.time() - context.state.started_at, 3),
        "draining": context.state.draining,
        "accounts": accounts,
        "subscribed": all(a["subscribed"] for a in accounts),
        "pendingSends": context.accounts.pending_sends(),
        "pendingStates": list(PENDING_STATUSES),
        "outboxEvents": context.store.outbox_rows,
        "sinks": [
            {
                "name": s.name,
                "type": s.kind,
                "backlog": backlog.get(s.name, 0),
                "delivered": s.delivered,
                "retries": s.retries,
                "deadLetters": dead.get(s.name, 0),
                "lastError": s.last_error,
            }
            for s in dispatcher.statuses()
        ],
        "malformedNotifications": dead.get(MALFORMED_SINK, 0),
    }


# -- health and metrics -----------------------------------------------------------------


async def _healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readiness(context: ApiContext) -> dict[str, Any]:
    accounts = list(context.accounts)
    not_subscribed = [a.name for a in accounts if not a.listener.subscribed]
    refused = [a.name for a in accounts if a.listener.credentials_refused]
    checks: dict[str, Any] = {
        "subscribed": not not_subscribed,
        "notDraining": not context.state.draining,
        # False while GWS refuses an account's credentials (it waits to log in again).
        "gws_auth": not refused,
    }
    if not_subscribed:
        checks["accountsNotSubscribed"] = not_subscribed
    if refused:
        checks["accountsRefused"] = refused
    try:
        # A real write (the heartbeat row), and no background duty failing on the store.
        await context.store.check_writable()
        checks["store"] = True
    except StoreError as exc:
        checks["store"] = False
        checks["storeError"] = str(exc)
    failed = [k for k, v in checks.items() if v is False]
    return {"ready": not failed, "checks": checks, "failed": failed}


async def _readyz(request: web.Request) -> web.Response:
    context = request.app[_CONTEXT]
    document = await readiness(context)
    context.metrics.ready.set(1 if document["ready"] else 0)
    return _json(document, status=200 if document["ready"] else 503)


async def _metrics(request: web.Request) -> web.Response:
    context = request.app[_CONTEXT]
    context.metrics.outbox_events.set(context.store.outbox_rows)
    return web.Response(
        body=context.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
