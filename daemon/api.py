"""The local HTTP API: the Send drop-in, what the daemon knows, health and metrics.

    POST /api/v2/me/emails/{id}   GWS's path and body. Send is validated, recorded
                                  (before it leaves), forwarded and answered with
                                  GWS's answer + sendId (+ referenceId). Other
                                  operationNames pass through unchanged.
    GET  /v1/sends/{sendId}       one send, pending or not
    GET  /v1/sends?state=pending  sends by state (pending = every pending state)
    GET  /v1/status               connection, pending, backlog and dead letters
    GET  /healthz                 the process and its event loop answer
    GET  /readyz                  subscribed, store writable, not draining (JSON says which)
    GET  /metrics                 Prometheus text format

Owns HTTP concerns only (status codes, bodies, the bearer token); what a
send *means* is the tracker's business.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from daemon import __version__
from daemon.config import Settings
from daemon.dispatcher import Dispatcher
from daemon.errors import GwsAnswerLostError, GwsUnreachableError, StoreError
from daemon.gws.listener import Listener
from daemon.gws.operations import Invalid, Operation, SendRequest, parse_operation
from daemon.gws.session import Answer, GwsSession
from daemon.metrics import Metrics
from daemon.sends import PENDING_STATUSES, SendRecord, SendStatus, new_send_id
from daemon.store import MALFORMED_SINK, AsyncStore
from daemon.tracker import Tracker

log = structlog.get_logger(logger_name="daemon.api")

# GWS statusCodes used in our own answers (reference/gws-api.md).
INTERNAL_ERROR = 4
PROCESSING_INCOMPLETE = 9
INPUT_VALIDATION_ERROR = 10
NOT_AUTHENTICATED = 20
RETRY_AFTER_SECONDS = "5"


@dataclass(slots=True)
class RuntimeState:
    """What the service tells the API about itself."""

    started_at: float = field(default_factory=time.time)
    draining: bool = False
    sends_in_flight: int = 0
    sends_idle: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(slots=True)
class ApiContext:
    settings: Settings
    metrics: Metrics
    tracker: Tracker
    session: GwsSession
    store: AsyncStore
    dispatcher: Dispatcher
    listener: Listener
    state: RuntimeState


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def _gws_error(status: int, code: int, message: str, **extra: object) -> web.Response:
    return _json({"statusCode": code, "statusMessage": message, **extra}, status=status)


_CONTEXT = web.AppKey("context", ApiContext)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(context: ApiContext) -> web.Application:
    token = context.settings.http.token

    limit = context.settings.http.max_body_bytes

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        """The bearer token (when configured), and a GWS-style 413."""
        if token is not None and not request.path.startswith(("/healthz", "/readyz", "/metrics")):
            given = request.headers.get("Authorization", "")
            expected = "Bearer " + token.reveal()
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return _gws_error(401, NOT_AUTHENTICATED, "Missing or invalid bearer token")
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return _gws_error(
                413, INPUT_VALIDATION_ERROR, f"Request body is larger than {limit} bytes"
            )

    app = web.Application(client_max_size=limit, middlewares=[guard])
    app[_CONTEXT] = context
    app.router.add_post("/api/v2/me/emails/{email_id}", _email_operation)
    app.router.add_get("/v1/sends/{send_id}", _get_send)
    app.router.add_get("/v1/sends", _list_sends)
    app.router.add_get("/v1/status", _status)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    return app


# -- Send drop-in -----------------------------------------------------------------


async def _email_operation(request: web.Request) -> web.StreamResponse:
    context = request.app[_CONTEXT]
    if context.state.draining:
        return _json(
            {
                "statusCode": INTERNAL_ERROR,
                "statusMessage": "gws-notifyd is shutting down; retry later",
            },
            status=503,
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    email_id = request.match_info["email_id"]
    raw = await request.read()
    operation = parse_operation(raw)
    if isinstance(operation, Invalid):
        log.info(
            "send_invalid",
            email_id=email_id,
            field=operation.field,
            status_message=operation.message,
        )
        return _json(operation.as_json(), status=400)
    if isinstance(operation, Operation):
        return await _pass_through(context, email_id, raw, operation.name)
    if context.dispatcher.outbox_full():
        log.warning("send_refused_outbox_full", email_id=email_id)
        return _json(
            {
                "statusCode": INTERNAL_ERROR,
                "statusMessage": "gws-notifyd outbox is full: sinks are not keeping up",
            },
            status=503,
            headers={"Retry-After": RETRY_AFTER_SECONDS},
        )
    # Shielded: once the send is recorded, finishing its bookkeeping must not
    # depend on the integration keeping its connection open.
    state = context.state
    state.sends_in_flight += 1
    state.sends_idle.clear()
    try:
        return await asyncio.shield(_send(context, email_id, raw, operation))
    finally:
        state.sends_in_flight -= 1
        if state.sends_in_flight == 0:
            state.sends_idle.set()


async def _send(
    context: ApiContext, email_id: str, raw: bytes, request: SendRequest
) -> web.Response:
    tracker = context.tracker
    send = SendRecord(
        send_id=new_send_id(),
        email_id=email_id,
        queue_name=request.queue_name,
        requested_at=time.time(),
        subject=request.subject,
        to=request.to,
    )
    try:
        await tracker.register(send)
    except StoreError as exc:
        log.error("send_not_recorded", email_id=email_id, error=str(exc))
        return _gws_error(503, INTERNAL_ERROR, "gws-notifyd cannot record the send")
    send_id = send.send_id
    try:
        answer = await context.session.email_operation(email_id, raw, operation="Send")
    except GwsUnreachableError as exc:
        await tracker.rejected(send_id, status_code=None, status_message=str(exc), http_status=None)
        return _gws_error(502, INTERNAL_ERROR, f"GWS unreachable: {exc}", sendId=send_id)
    except GwsAnswerLostError as exc:
        # GWS may have sent it: it stays pending (rule 7), resolved by a
        # notification or by GET; the integration can ask /v1/sends/{sendId}.
        await tracker.answer_lost(send_id, str(exc))
        return _gws_error(
            504,
            PROCESSING_INCOMPLETE,
            "No answer from GWS; the send stays pending, see /v1/sends/" + send_id,
            sendId=send_id,
        )
    body: dict[str, Any] = dict(answer.body) if isinstance(answer.body, dict) else {}
    if answer.ok:
        tracker.accepted(send_id, answer.reference_id)
        reference_id = answer.reference_id if answer.reference_id is not None else send.reference_id
        body.setdefault("statusCode", 0)
        body["sendId"] = send_id
        if reference_id is not None:
            body["referenceId"] = reference_id
        return _json(body, status=answer.http_status)
    await tracker.rejected(
        send_id,
        status_code=answer.status_code,
        status_message=answer.status_message,
        http_status=answer.http_status,
    )
    if not body:
        body = {
            "statusCode": INTERNAL_ERROR,
            "statusMessage": f"GWS answered HTTP {answer.http_status}",
        }
    body["sendId"] = send_id
    return _json(body, status=answer.http_status)


async def _pass_through(context: ApiContext, email_id: str, raw: bytes, name: str) -> web.Response:
    try:
        answer: Answer = await context.session.email_operation(email_id, raw, operation=name)
    except GwsUnreachableError as exc:
        return _gws_error(502, INTERNAL_ERROR, f"GWS unreachable: {exc}")
    except GwsAnswerLostError as exc:
        return _gws_error(504, PROCESSING_INCOMPLETE, f"No answer from GWS: {exc}")
    headers = {"Content-Type": answer.content_type} if answer.content_type else None
    return web.Response(body=answer.raw, status=answer.http_status, headers=headers)


# -- what the daemon knows ------------------------------------------------------------


async def _get_send(request: web.Request) -> web.Response:
    context = request.app[_CONTEXT]
    send_id = request.match_info["send_id"]
    send = context.tracker.correlator.get(send_id)
    if send is None:
        send = await context.store.run(context.store.store.get_send, send_id)
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
    if state == "pending":
        sends = sorted(context.tracker.correlator.pending(), key=lambda s: s.requested_at)[:limit]
    else:
        known = {s.value for s in SendStatus}
        if state is not None and state not in known:
            choices = ", ".join(["pending", *sorted(known)])
            return _json({"error": f"state must be one of {choices}"}, status=400)
        statuses = [state] if state else None
        sends = await context.store.run(context.store.store.list_sends, statuses, limit)
    return _json({"sends": [s.as_json() for s in sends], "count": len(sends)})


async def _status(request: web.Request) -> web.Response:
    context = request.app[_CONTEXT]
    return _json(status_document(context))


def status_document(context: ApiContext) -> dict[str, Any]:
    dispatcher = context.dispatcher
    backlog = dispatcher.backlog()
    dead = dispatcher.dead_letter_counts
    listener = context.listener
    return {
        "version": __version__,
        "uptimeSeconds": round(time.time() - context.state.started_at, 3),
        "draining": context.state.draining,
        "cometd": {
            "state": listener.state.value,
            "subscribed": listener.subscribed,
            "transport": listener.transport,
            "lastReconcileSeconds": listener.reconcile_seconds,
        },
        "pendingSends": len(context.tracker.correlator),
        "pendingStates": list(PENDING_STATUSES),
        "outboxEvents": context.store.store.outbox_rows,
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
    checks: dict[str, Any] = {
        "subscribed": context.listener.subscribed,
        "notDraining": not context.state.draining,
    }
    try:
        await context.store.run(context.store.store.check_writable)
        checks["storeWritable"] = True
    except StoreError as exc:
        checks["storeWritable"] = False
        checks["storeError"] = str(exc)
    ready = all(v for k, v in checks.items() if k != "storeError")
    return {
        "ready": ready,
        "checks": checks,
        "failed": [k for k, v in checks.items() if v is False],
    }


async def _readyz(request: web.Request) -> web.Response:
    context = request.app[_CONTEXT]
    document = await readiness(context)
    context.metrics.ready.set(1 if document["ready"] else 0)
    return _json(document, status=200 if document["ready"] else 503)


async def _metrics(request: web.Request) -> web.Response:
    context = request.app[_CONTEXT]
    context.metrics.outbox_events.set(context.store.store.outbox_rows)
    return web.Response(
        body=context.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
