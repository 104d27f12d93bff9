"""The simulated GWS: REST email resources, HTTP sessions, Basic auth, CSRF and fault switches.

This module owns everything GWS-specific in the simulator; it publishes
notifications through the generic Bayeux server in `bayeux.py`, mounted at
`/api/v2/notifications`, keeps its users in `agents.py`, runs the demo traffic
of `activity.py` and serves the control API of `control.py`. It exists for
tests, demos and benchmarks of gws-notifyd, so it follows the public GWS v2
documentation where that says something and picks a plausible behaviour where
it is silent.

By default it is GWS as its 8.5/8.6 docs describe it: the Send answer is
`{"statusCode":0}` without a referenceId, CSRF is required on every POST (the
CometD ones too), and the handshake offers long-polling only.

Answers (always `Content-Type: application/json`):

=====  ==========  ====================================================================
HTTP   statusCode  when
=====  ==========  ====================================================================
200    0           success (Send: `{"statusCode":0}`, or `{"statusCode":0,"referenceId":N}`)
400    1           a required parameter is missing or unusable: operationName, queueName,
                   email, to (addresses as a list or a comma-separated string), from
400    2           the operation is not valid for the email's state, or the Send's
                   queueName is not one of `settings.queues` ("Queue 'X' not found")
403    3           CSRF on and the POST (CometD's too, unless `csrf_cometd` is off) lacks
                   the session's X-CSRF-TOKEN header
404    6           unknown email id (GET and non-Send operations; with `sent_emails_leave`
                   an email that was sent), another user's email id (GET and every
                   operation, Send included), or an unknown path
400    10          body is not a JSON object, an unknown operationName, a bad optional
                   field (cc, bcc, saveLAR, channels, userData), a WebSocket upgrade
405    10          method not allowed on that path
401    20          missing or wrong Basic credentials
=====  ==========  ====================================================================

Users: the configured one (`settings.username`/`password`), `agent-0001` …
`agent-NNNN` (`settings.agents`, all with the simulator's password) and those
added with `POST /control/users` (see `agents.py`). A request's Basic auth
username decides the user. Each user has a workspace of its own: the email
list, `GET /api/v2/me?subresources=*` and an email id of another user (404 for
GET, Send and every other operation); an email belongs to whoever created it.
Email ids are global, as GWS's are.

Sessions: a request without a known `JSESSIONID` cookie gets a new HTTP session
(Set-Cookie, path=/), with its own CSRF token and its own referenceId counter
starting at 1; so does a request whose Basic auth names another user than its
session's (a different login). `EndContactCenterSession`, a password change and
`forget_sessions()` invalidate sessions and the Bayeux clients that handshook in
them.

Notifications go to their user only: a Bayeux client is tagged at its handshake
with the user of its HTTP session, and a user's email state changes (and what
`/control/notify` and the demo traffic publish for it) reach that user's clients
only.

Fault switches (all in `SimulatorSettings`, changeable at runtime directly or
with `POST /control/settings`): `error_emails` (accepted, then an Error
notification with errorCode "SendFailed"), `drop_emails` (accepted and Sent, no
notification), `hang_emails` (Sent and notified, but the HTTP answer never comes:
the connection is closed without one when the client gives up or the simulator
stops), `notify_before_answer`, `reference_id_in_answer`,
`follow_up_properties_updated`, `csrf_cometd`, `offer_websocket` (the handshake
offers WebSocket; every upgrade fails), `sent_emails_leave` (a sent email leaves
the workspace), `error_without_email` (an Error notification carries its
referenceId and no email).

Demo traffic: while `activity_per_second` > 0 (also `POST /control/settings`),
call, device and chat notifications go to random subscribed users at about that
rate in total (`activity.py`).

It counts what a client should be careful with: login attempts (GET /api/v2/me)
and requests refused for their credentials, with their times; CometD POSTs
without the CSRF token; WebSocket upgrades; handshakes, with the most in one
wall-clock second.

Control endpoints (no auth, JSON in and out, served by `control.py`; a bad order
is 400 `{"error": ...}` and changes nothing, an unknown "username" 404
`{"error": "no user 'X'"}`; "username" is optional wherever it appears):

====  ======================  ===========================================================
GET   /control/settings       the settings, as JSON (no password)
POST  /control/settings       `{setting: value, ...}`: a partial update, all or nothing
                              (`agents` and `activity_per_second` included); answers the
                              settings
POST  /control/users          `{"username", "password"}` (non-empty, no ':' in the name): add
                              a user, or change one's password (a change drops that user's
                              sessions)
                              → `{"username": U, "created": bool}`
POST  /control/password       `{"password", "username"}`: that user's password changes
                              (default: the configured user's): the old one is refused from
                              then on, that user's sessions and Bayeux clients are dropped,
                              nobody else's → `{"changed": true}`
POST  /control/forget         `{"username"}` or no body: drop every HTTP session and Bayeux
                              client (a GWS restart), or that user's only
                              → `{"forgotten": true}`
POST  /control/publish        `{"channel", "data": [payload, ...], "username"}` or
                              `{"channel", "count", "start", "username"}`: the payloads, or
                              `count` Sent email notifications numbered from `start`
                              (default channel `/v2/me/emails`), to every subscriber of the
                              channel, or to that user's clients only → `{"published": N}`
POST  /control/samples        `{"samples": [name, ...], "username"}`: one notification of each
                              kind in `samples.py` (or of the named ones) on its channel, to
                              everyone or to that user → `{"published": [{"sample", "channel",
                              "messageType", "notificationType"}, ...]}`
POST  /control/notify         `{"username", "kind", "count"}`: `count` (default 1, at most
                              100,000) notifications of `kind` to that user (default: the
                              configured one), each about an object of its own id: `call`
                              (CallStateChangeMessage on /v2/me/calls, `call.id`), `device`
                              (DeviceStateChangeMessage on /v2/me/devices, `devices[0].id`),
                              `chat` (ChatStateChangeMessage on /v2/me/chats, `chat.id`),
                              `workitem` (WorkitemStateChangeMessage on /v2/me/workitems,
                              `workitem.id`), `unknown` (a type no page names,
                              SupervisorMonitoringMessage on /v2/me/calls, `monitoring.id`)
                              → `{"published": N, "channel": C, "ids": [...]}`
GET   /control/stats          the counters: sendsReceived, sendsAccepted,
                              notificationsPublished, loginAttempts, refusedRequests,
                              bayeuxPosts, bayeuxPostsWithoutCsrf, websocketUpgrades,
                              websocketUpgradesWithoutCsrf, messagesPublished, httpSessions,
                              bayeuxClients, emails, users; `handshakes` (successful
                              /meta/handshakes), `handshakes_max_per_second` (the most within
                              one wall-clock second), `users_subscribed` (users with at least
                              one client subscribed to a channel), `activity_published`
POST  /control/stats/reset    zero `handshakes` and `handshakes_max_per_second`
                              → `{"reset": true}`
====  ======================  ===========================================================
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final

import orjson
import structlog
from aiohttp import hdrs, web

from daemon.simulator import control
from daemon.simulator.activity import Activity
from daemon.simulator.agents import MAX_GENERATED, Agent, Agents, HttpSession
from daemon.simulator.bayeux import BayeuxServer
from daemon.simulator.bodies import json_object, json_response
from daemon.simulator.samples import kind_channel, object_ids, of_kind

__all__ = ["EMAILS_CHANNEL", "NOTIFICATIONS_PATH", "Simulator", "SimulatorSettings", "serve"]

NOTIFICATIONS_PATH: Final = "/api/v2/notifications"
EMAILS_CHANNEL: Final = "/v2/me/emails"
SESSION_COOKIE: Final = "JSESSIONID"
CSRF_HEADER: Final = "X-CSRF-TOKEN"

_COMPOSING_CAPABILITIES = ("Save", "Send", "Cancel", "AddAttachment", "RemoveAttachment")
# Where these operations move an email; the other operations leave its state alone.
_STATE_AFTER: Final = {
    "Accept": "Processing",
    "Cancel": "Canceled",
    "Complete": "Completed",
}
_OPERATIONS_NEEDING_COMPOSING: Final = frozenset({"Save", "Cancel"})
_OTHER_OPERATIONS: Final = frozenset(
    {
        "Accept",
        "Reject",
        "Reply",
        "ReplyAll",
        "Forward",
        "Save",
        "Cancel",
        "Transfer",
        "Complete",
        "PlaceInQueue",
    }
)
_CREATING_OPERATIONS: Final = frozenset({"Reply", "ReplyAll", "Forward"})
_ME_OPERATIONS: Final = frozenset(
    {"StartContactCenterSession", "EndContactCenterSession", "Ready", "NotReady"}
)
_log = structlog.get_logger(__name__)


@dataclass
class SimulatorSettings:
    """What the simulated GWS accepts and how it misbehaves; mutable at runtime."""

    username: str = "agent1"
    # The simulator's well-known demo credential, not a secret.
    password: str = "agent1-password"  # noqa: S105
    # Users agent-0001 … agent-NNNN besides the configured one, with the password above.
    agents: int = 0
    # Demo traffic: call/device/chat notifications a second to random subscribed users.
    activity_per_second: float = 0.0
    # The docs' Send answer is {"statusCode":0}; other operations show a referenceId.
    reference_id_in_answer: bool = False
    notify_delay_seconds: float = 0.02
    notify_before_answer: bool = False
    csrf: bool = True
    # No page exempts CometD from CSRF, and browser clients send it there too.
    csrf_cometd: bool = True
    # GWS 8.5 "does not currently support web sockets": offered, every upgrade fails.
    offer_websocket: bool = False
    # A sent email may leave the workspace: GET answers 404, the list omits it.
    sent_emails_leave: bool = False
    # Error notifications of error_emails carry the referenceId and no email.
    error_without_email: bool = False
    long_poll_timeout_ms: int = 25000
    max_interval_ms: int = 10000
    queues: tuple[str, ...] = ("Outbound", "Forwarde-mails", "Support")
    error_emails: set[str] = field(default_factory=set)
    drop_emails: set[str] = field(default_factory=set)
    hang_emails: set[str] = field(default_factory=set)
    follow_up_properties_updated: bool = False

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON-ready values: sets and tuples as lists, no password."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "password":
                continue
            value = getattr(self, f.name)
            if isinstance(value, set):
                value = sorted(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a partial JSON object; all or nothing. Raises ValueError on a bad key/value."""
        converted: dict[str, object] = {}
        for key, value in changes.items():
            kind = _SETTING_KINDS.get(key)
            if kind is None:
                raise ValueError(f"unknown setting {key!r}")
            converted[key] = _convert_setting(key, kind, value)
        for key, value in converted.items():
            setattr(self, key, value)


_SETTING_KINDS: Final = {
    "username": "str",
    "password": "str",
    "agents": "agents",
    "activity_per_second": "float",
    "reference_id_in_answer": "bool",
    "notify_delay_seconds": "float",
    "notify_before_answer": "bool",
    "csrf": "bool",
    "csrf_cometd": "bool",
    "offer_websocket": "bool",
    "sent_emails_leave": "bool",
    "error_without_email": "bool",
    "long_poll_timeout_ms": "int",
    "max_interval_ms": "int",
    "queues": "tuple",
    "error_emails": "set",
    "drop_emails": "set",
    "hang_emails": "set",
    "follow_up_properties_updated": "bool",
}


def _convert_setting(key: str, kind: str, value: object) -> object:
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "str" and isinstance(value, str) and value:
        return value
    if (
        kind in _INT_MAXIMUM
        and isinstance(value, int)
        and not isinstance(value, bool)
        and 0 <= value <= _INT_MAXIMUM[kind]
    ):
        return value
    if (
        kind == "float"
        and isinstance(value, int | float)
        and not isinstance(value, bool)
        and value >= 0
    ):
        return float(value)
    if (
        kind in ("tuple", "set")
        and isinstance(value, list)
        and all(isinstance(v, str) for v in value)
    ):
        return tuple(value) if kind == "tuple" else set(value)
    raise ValueError(f"setting {key!r} needs a {_KIND_NAMES[kind]}, got {value!r}")


_INT_MAXIMUM: Final[dict[str, float]] = {"int": float("inf"), "agents": MAX_GENERATED}
_KIND_NAMES: Final = {
    "bool": "boolean",
    "str": "non-empty string",
    "int": "non-negative integer",
    "float": "non-negative number",
    "agents": f"whole number from 0 to {MAX_GENERATED}",
    "tuple": "list of strings",
    "set": "list of strings",
}


_SESSION: Final = web.RequestKey("gws_session", HttpSession)


class _GwsFailure(Exception):
    """A GWS error answer, raised deep in a handler and rendered by the middleware."""

    def __init__(self, http_status: int, status_code: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.status_code = status_code
        self.message = message


class Simulator:
    """An in-process GWS: REST + Bayeux notifications on one aiohttp application."""

    def __init__(self, settings: SimulatorSettings | None = None) -> None:
        self.settings = settings if settings is not None else SimulatorSettings()
        # Every user's emails by id (ids are global, as GWS's are); each user's
        # workspace (`Agent.emails`) holds the same resources, its own only.
        self.emails: dict[str, dict[str, Any]] = {}
        self.sends_received = 0
        self.sends_accepted = 0
        self.notifications_published = 0
        # monotonic times of logins (GET /api/v2/me) and of requests refused (401)
        self.login_attempts = 0
        self.refused_times: list[float] = []
        self.bayeux_posts = 0
        self.bayeux_posts_without_csrf = 0
        self.websocket_upgrades = 0
        self.websocket_upgrades_without_csrf = 0
        self.last_send_body: bytes | None = None  # the raw body of the last Send
        self.base_url: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.bayeux = BayeuxServer(
            long_poll_timeout_ms=lambda: self.settings.long_poll_timeout_ms,
            max_interval_ms=lambda: self.settings.max_interval_ms,
            session_of=_session_id_of,
            tag_of=_user_tag_of,
            connection_types=self._connection_types,
        )
        self.agents = Agents(self.settings, on_session_dropped=self.bayeux.drop_session)
        self.user_id = self.agents.configured.user_id
        self._object_ids = object_ids()
        self.activity = Activity(
            rate=lambda: self.settings.activity_per_second,
            subscribed=self.bayeux.subscribed_tags,
            publish=self._publish_activity,
        )
        self.app = self._build_app()

    def _connection_types(self) -> list[str]:
        return ["websocket", "long-polling"] if self.settings.offer_websocket else ["long-polling"]

    # -- lifecycle -----------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0 = a free port); returns the base URL."""
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        runner = web.AppRunner(
            self.app,
            # A client that gives up on a hung Send or a held connect cancels
            # its handler, like a servlet container noticing the socket close.
            handler_cancellation=True,
            access_log=None,
            # on_shutdown answers everything that waits, so this is only a backstop.
            shutdown_timeout=5.0,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_port = runner.addresses[0][1]
        shown_host = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{shown_host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        """Stop the demo traffic, answer held connects, end hung Sends, stop listening."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def forget_sessions(self, agent: Agent | None = None) -> None:
        """Drop every HTTP session and every Bayeux client (as a GWS restart would), or
        those of one user only."""
        if agent is not None:
            self.agents.drop_sessions(agent)
            return
        self.agents.drop_all_sessions()
        self.bayeux.drop_all()

    def agent(self, username: str | None = None) -> Agent | None:
        """The user called `username` (None: the configured user), or None."""
        return self.agents.configured if username is None else self.agents.get(username)

    async def publish(
        self, channel: str, data_items: Sequence[object], *, agent: Agent | None = None
    ) -> int:
        """Publish raw payloads to the subscribers of `channel` (with `agent`: to that
        user's only); returns how many payloads."""
        return self.bayeux.publish(channel, data_items, tag=_tag(agent))

    def publish_json(
        self, channel: str, data_json: Sequence[bytes], *, agent: Agent | None = None
    ) -> int:
        """`publish`, with each payload already serialised."""
        return self.bayeux.publish_json(channel, data_json, tag=_tag(agent))

    def notify(self, agent: Agent, kind: str, count: int) -> tuple[str, list[str]]:
        """Publish `count` notifications of `kind` (see `samples.KINDS`) to `agent`, each
        about an object of its own id; (their channel, the ids). KeyError: unknown kind."""
        channel = kind_channel(kind)
        ids = [next(self._object_ids) for _ in range(count)]
        self.bayeux.publish(channel, [of_kind(kind, i) for i in ids], tag=agent.user_id)
        return channel, ids

    def subscriber_count(self, channel: str = EMAILS_CHANNEL, *, agent: Agent | None = None) -> int:
        """How many Bayeux clients a publish on `channel` (to `agent`) would reach now."""
        return self.bayeux.subscriber_count(channel, tag=_tag(agent))

    @property
    def session_count(self) -> int:
        return self.agents.session_count

    def issued_secrets(self) -> list[str]:
        """Every session id (cookie value) and CSRF token handed out and still valid:
        what a client must never print."""
        return [v for s in self.agents.sessions() for v in (s.session_id, s.csrf_token)]

    def stats(self) -> dict[str, Any]:
        """The counters `GET /control/stats` answers (see the module docstring)."""
        return {
            "sendsReceived": self.sends_received,
            "sendsAccepted": self.sends_accepted,
            "notificationsPublished": self.notifications_published,
            "loginAttempts": self.login_attempts,
            "refusedRequests": len(self.refused_times),
            "bayeuxPosts": self.bayeux_posts,
            "bayeuxPostsWithoutCsrf": self.bayeux_posts_without_csrf,
            "websocketUpgrades": self.websocket_upgrades,
            "websocketUpgradesWithoutCsrf": self.websocket_upgrades_without_csrf,
            "messagesPublished": self.bayeux.messages_published,
            "httpSessions": self.agents.session_count,
            "bayeuxClients": len(self.bayeux.client_ids()),
            "emails": len(self.emails),
            "users": len(self.agents),
            "handshakes": self.bayeux.handshakes.total,
            "handshakes_max_per_second": self.bayeux.handshakes.peak,
            "users_subscribed": self.bayeux.subscribed_tag_count(),
            "activity_published": self.activity.published,
        }

    def reset_handshake_stats(self) -> None:
        """Zero the handshake counters, so that a reconnect wave can be measured alone."""
        self.bayeux.handshakes.reset()

    # -- application ---------------------------------------------------------

    def _build_app(self) -> web.Application:
        # /control/publish may carry a large list of payloads.
        app = web.Application(middlewares=[self._middleware], client_max_size=256 * 1024 * 1024)
        r = app.router
        r.add_get("/api/v2/me", self._get_me)
        r.add_post("/api/v2/me", self._post_me)
        r.add_get("/api/v2/me/emails", self._get_emails)
        r.add_post("/api/v2/me/emails", self._create_email)
        r.add_get("/api/v2/me/emails/{email_id}", self._get_email)
        r.add_post("/api/v2/me/emails/{email_id}", self._email_operation)
        self.bayeux.add_routes(app, NOTIFICATIONS_PATH)
        r.add_get(NOTIFICATIONS_PATH, self._websocket_upgrade)
        control.add_routes(app, self)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        # A fresh event per run: a restarted simulator may live on another loop.
        self._closing = asyncio.Event()
        self._spawn(self.activity.run())

    async def _on_shutdown(self, _app: web.Application) -> None:
        self._closing.set()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            if request.path.startswith("/control/"):
                return await handler(request)
            return await self._gws_request(request, handler)
        except _GwsFailure as failure:
            return _gws_error(failure.http_status, failure.status_code, failure.message)
        except web.HTTPException as exc:
            return _routing_error(request, exc)

    async def _gws_request(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.method == hdrs.METH_GET and request.path == "/api/v2/me":
            self.login_attempts += 1
        agent = self._authenticated(request)
        if agent is None:
            return self._refused()
        session, is_new = self._session_of(request, agent)
        request[_SESSION] = session
        self._count_bayeux(request, session)
        response: web.StreamResponse
        try:
            if self._csrf_ok(request, session):
                response = await handler(request)
            else:
                response = _gws_error(403, 3, "Missing or invalid Csrf token")
        except _GwsFailure as failure:
            response = _gws_error(failure.http_status, failure.status_code, failure.message)
        except web.HTTPException as exc:
            response = _routing_error(request, exc)
        if is_new:
            response.set_cookie(SESSION_COOKIE, session.session_id, path="/", httponly=True)
        if request.method == hdrs.METH_GET:
            response.headers["X-CSRF-HEADER"] = CSRF_HEADER
            response.headers[CSRF_HEADER] = session.csrf_token
        return response

    def _refused(self) -> web.Response:
        """401 for wrong credentials (counted, as logins are: a real GWS may lock the agent)."""
        self.refused_times.append(time.monotonic())
        denied = _gws_error(401, 20, "Not authenticated")
        denied.headers[hdrs.WWW_AUTHENTICATE] = 'Basic realm="GWS"'
        return denied

    def _session_of(self, request: web.Request, agent: Agent) -> tuple[HttpSession, bool]:
        """The request's HTTP session (by cookie), and whether it was made just now."""
        session = self.agents.session(request.cookies.get(SESSION_COOKIE))
        if session is not None and session.agent is agent:
            return session, False
        # No session, or another user's: a different login gets a session of its own.
        return self.agents.open_session(agent), True

    def _csrf_ok(self, request: web.Request, session: HttpSession) -> bool:
        return (
            request.method != hdrs.METH_POST
            or not self.settings.csrf
            or (request.path.startswith(NOTIFICATIONS_PATH) and not self.settings.csrf_cometd)
            or not request.path.startswith("/api/v2/")
            or _carries_token(request, session)
        )

    def _count_bayeux(self, request: web.Request, session: HttpSession) -> None:
        if request.method == hdrs.METH_POST and request.path.startswith(NOTIFICATIONS_PATH):
            self.bayeux_posts += 1
            if not _carries_token(request, session):
                self.bayeux_posts_without_csrf += 1

    def _authenticated(self, request: web.Request) -> Agent | None:
        """The user whose Basic credentials the request carries, or None."""
        scheme, _, encoded = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            credentials = base64.b64decode(encoded.strip(), validate=True).decode()
        except (ValueError, binascii.Error):
            return None
        username, colon, password = credentials.partition(":")
        return self.agents.authenticate(username, password) if colon else None

    # -- /api/v2/me ----------------------------------------------------------

    async def _get_me(self, request: web.Request) -> web.Response:
        agent = request[_SESSION].agent
        user: dict[str, Any] = {
            "id": agent.user_id,
            "userName": agent.name,
            "firstName": "Simulated",
            "lastName": "Agent",
            "roles": ["ROLE_AGENT"],
            "enabled": True,
        }
        if "subresources" in request.query:
            user["emails"] = list(agent.emails.values())
        return json_response({"statusCode": 0, "user": user})

    async def _post_me(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        operation = _operation_name(body)
        if operation not in _ME_OPERATIONS:
            raise _GwsFailure(400, 10, f"Unsupported operationName '{operation}'")
        if operation == "StartContactCenterSession":
            channels = body.get("channels", [])
            if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
                raise _GwsFailure(400, 10, "Parameter 'channels' must be a list of strings")
        elif operation == "EndContactCenterSession":
            self.agents.end_session(request[_SESSION])
        return json_response({"statusCode": 0})

    # -- /api/v2/me/emails ---------------------------------------------------

    async def _websocket_upgrade(self, request: web.Request) -> web.Response:
        """GWS 8.5 has no WebSocket for CometD: an offered upgrade fails (and is counted)."""
        self.websocket_upgrades += 1
        if not _carries_token(request, request[_SESSION]):
            self.websocket_upgrades_without_csrf += 1
        raise _GwsFailure(400, 10, "WebSocket is not supported")

    async def _get_emails(self, request: web.Request) -> web.Response:
        emails = request[_SESSION].agent.emails
        return json_response({"statusCode": 0, "emails": list(emails.values())})

    async def _get_email(self, request: web.Request) -> web.Response:
        email_id = request.match_info["email_id"]
        return json_response({"statusCode": 0, "email": _own_email(request, email_id)})

    async def _create_email(self, request: web.Request) -> web.Response:
        body = await _json_object(request, empty_ok=True)
        user_data = body.get("userData", {})
        if not isinstance(user_data, dict):
            raise _GwsFailure(400, 10, "Parameter 'userData' must be an object")
        email = self._new_email(request, secrets.token_hex(8).upper())
        email["userData"] = user_data
        for key in ("queueUri", "parentId"):
            if isinstance(body.get(key), str):
                email[key] = body[key]
        return json_response({"statusCode": 0, "id": email["id"]})

    async def _email_operation(self, request: web.Request) -> web.StreamResponse:
        email_id = request.match_info["email_id"]
        body = await _json_object(request)
        operation = _operation_name(body)
        if operation == "Send":
            self.sends_received += 1
            self.last_send_body = await request.read()
            return await self._send(request, email_id, body)
        if operation not in _OTHER_OPERATIONS:
            raise _GwsFailure(400, 10, f"Unsupported operationName '{operation}'")
        return self._other_operation(request, email_id, operation, body)

    async def _send(
        self, request: web.Request, email_id: str, body: dict[str, Any]
    ) -> web.StreamResponse:
        settings = self.settings
        sent_fields = _validate_send(body, settings.queues)
        session = request[_SESSION]
        email = session.agent.emails.get(email_id)
        if email is None and email_id in self.emails:
            raise _GwsFailure(404, 6, f"Email '{email_id}' not found")  # another user's
        if email is not None and email["state"] != "Composing":
            raise _GwsFailure(
                400, 2, f"Operation Send is not valid for email in state {email['state']}"
            )
        if email is None:
            # Integrators may Send to any id; GWS would have had it from a Reply.
            email = self._new_email(request, email_id)
        reference_id = session.take_reference_id()
        self.sends_accepted += 1

        notifications = self._send_outcome(session.agent, email, sent_fields, reference_id)

        answer: dict[str, Any] = {"statusCode": 0}
        if settings.reference_id_in_answer:
            answer["referenceId"] = reference_id
        if settings.notify_before_answer:
            await self._pause(settings.notify_delay_seconds)
            self._publish_emails(session.agent, notifications)
        else:
            self._publish_emails_later(settings.notify_delay_seconds, session.agent, notifications)
        if email_id in settings.hang_emails:
            await self._hang(request)
        return json_response(answer)

    def _send_outcome(
        self,
        agent: Agent,
        email: dict[str, Any],
        sent_fields: dict[str, Any],
        reference_id: int,
    ) -> list[dict[str, Any]]:
        """What a Send does to the email, and the notifications that say so."""
        settings = self.settings
        email_id = email["id"]
        notifications: list[dict[str, Any]]
        if email_id in settings.error_emails:
            error: dict[str, Any] = {
                "messageType": "EmailStateChangeMessage",
                "notificationType": "Error",
                "referenceId": reference_id,
                "errorCode": "SendFailed",
                "errorMessage": f"Simulated failure: email '{email_id}' was not sent",
            }
            if not settings.error_without_email:
                error["email"] = _snapshot(email)
            notifications = [error]
        else:
            email.update(sent_fields)
            email["state"] = "Sent"
            email["capabilities"] = []
            notifications = [_state_change(email, reference_id)]
            if settings.sent_emails_leave:
                self.emails.pop(email_id, None)
                agent.emails.pop(email_id, None)
            if settings.follow_up_properties_updated:
                notifications.append(
                    {
                        "messageType": "EmailStateChangeMessage",
                        "notificationType": "PropertiesUpdated",
                        "email": _snapshot(email),
                    }
                )
        return [] if email_id in settings.drop_emails else notifications

    def _other_operation(
        self, request: web.Request, email_id: str, operation: str, body: dict[str, Any]
    ) -> web.Response:
        email = _own_email(request, email_id)
        if operation in _OPERATIONS_NEEDING_COMPOSING and email["state"] != "Composing":
            raise _GwsFailure(
                400, 2, f"Operation {operation} is not valid for email in state {email['state']}"
            )
        session = request[_SESSION]
        reference_id = session.take_reference_id()
        changed = email
        if operation == "Save" and isinstance(body.get("email"), dict):
            email.update(_optional_email_fields(body["email"]))
        elif operation in _CREATING_OPERATIONS:
            changed = self._new_email(request, secrets.token_hex(8).upper())
            changed["parentId"] = email_id
        new_state = _STATE_AFTER.get(operation)
        if new_state is not None:
            email["state"] = new_state
            email["capabilities"] = []
        self._publish_emails_later(
            self.settings.notify_delay_seconds,
            session.agent,
            [_state_change(changed, reference_id)],
        )
        answer: dict[str, Any] = {"statusCode": 0}
        if self.settings.reference_id_in_answer:
            answer["referenceId"] = reference_id
        return json_response(answer)

    def _new_email(self, request: web.Request, email_id: str) -> dict[str, Any]:
        """A new outbound email in the workspace of the request's user."""
        email: dict[str, Any] = {
            "id": email_id,
            "state": "Composing",
            "uri": f"{request.url.origin()}/api/v2/me/emails/{email_id}",
            "emailType": "Outbound",
            "capabilities": list(_COMPOSING_CAPABILITIES),
            "userData": {},
        }
        self.emails[email_id] = email
        request[_SESSION].agent.emails[email_id] = email
        return email

    # -- notifications ---------------------------------------------------------

    def _publish_emails(self, agent: Agent, payloads: Sequence[dict[str, Any]]) -> None:
        if payloads:
            self.notifications_published += len(payloads)
            self.bayeux.publish(EMAILS_CHANNEL, payloads, tag=agent.user_id)

    def _publish_emails_later(
        self, delay: float, agent: Agent, payloads: Sequence[dict[str, Any]]
    ) -> None:
        if payloads and not self._closing.is_set():
            self._spawn(self._publish_after(delay, agent, payloads))

    async def _publish_after(
        self, delay: float, agent: Agent, payloads: Sequence[dict[str, Any]]
    ) -> None:
        await self._pause(delay)
        if not self._closing.is_set():
            self._publish_emails(agent, payloads)

    def _publish_activity(self, user_tag: str, kind: str) -> None:
        payload = of_kind(kind, next(self._object_ids))
        self.bayeux.publish(kind_channel(kind), [payload], tag=user_tag)

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds`, or less if the simulator is stopping."""
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closing.wait()

    async def _hang(self, request: web.Request) -> None:
        """Never answer: wait until the client goes or the simulator stops, then drop the line."""
        # Polling the transport covers runners without handler_cancellation.
        while not self._closing.is_set() and not _peer_gone(request):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await self._closing.wait()
        if request.transport is not None:
            request.transport.close()


def _validate_send(body: dict[str, Any], queues: Iterable[str]) -> dict[str, Any]:
    """Check a Send body as GWS does; returns the email fields to store."""
    queue = body.get("queueName")
    if not isinstance(queue, str) or not queue:
        raise _GwsFailure(400, 1, "Required parameter 'queueName' is missing")
    email = body.get("email")
    if not isinstance(email, dict):
        raise _GwsFailure(400, 1, "Required parameter 'email' is missing")
    to = _recipients(email.get("to"))
    save_lar = body.get("saveLAR")
    if save_lar is not None and not isinstance(save_lar, bool) and save_lar not in _BOOL_TEXT:
        raise _GwsFailure(400, 10, "Parameter 'saveLAR' must be true or false")
    sender = email.get("from")
    if sender is None or sender == "":
        raise _GwsFailure(400, 1, "Required parameter 'from' is missing")
    if not isinstance(sender, str):
        raise _GwsFailure(400, 1, "Required parameter 'from' must be a string")
    if queue not in queues:
        raise _GwsFailure(400, 2, f"Queue '{queue}' not found")
    stored = _optional_email_fields(email)
    stored["to"] = list(to)
    stored["from"] = sender
    if "mime" not in stored:
        has_html = "body" in stored or "bodyAsPlainText" not in stored
        stored["mime"] = "text/html" if has_html else "text/plain"
    return stored


_BOOL_TEXT: Final = ("true", "false")


def _addresses(value: object) -> object:
    """An address list as GWS takes it: a list, or one comma-delimited string (the docs
    say "comma delimited" and show lists)."""
    if isinstance(value, str):
        return [a.strip() for a in value.split(",") if a.strip()]
    return value


def _recipients(to: object) -> list[str]:
    """`to` as GWS takes it (see `_addresses`)."""
    to = _addresses(to)
    if to is None or to == []:
        raise _GwsFailure(400, 1, "Required parameter 'to' is missing")
    if not isinstance(to, list) or not all(isinstance(a, str) and a for a in to):
        raise _GwsFailure(400, 1, "Required parameter 'to' must be a non-empty list of strings")
    return list(to)


def _optional_email_fields(email: dict[str, Any]) -> dict[str, Any]:
    stored: dict[str, Any] = {}
    for key in ("subject", "body", "bodyAsPlainText", "mime"):
        value = email.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise _GwsFailure(400, 10, f"Parameter '{key}' must be a string")
        stored[key] = value
    for key in ("to", "cc", "bcc"):
        value = email.get(key)
        if value is None:
            continue
        value = _addresses(value)
        if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
            raise _GwsFailure(400, 10, f"Parameter '{key}' must be a list of strings")
        stored[key] = list(value)
    if isinstance(email.get("from"), str):
        stored["from"] = email["from"]
    return stored


def _state_change(email: dict[str, Any], reference_id: int) -> dict[str, Any]:
    return {
        "messageType": "EmailStateChangeMessage",
        "notificationType": "StatusChange",
        "referenceId": reference_id,
        "email": _snapshot(email),
    }


def _snapshot(email: dict[str, Any]) -> dict[str, Any]:
    # A deep copy, so that a later change of the resource cannot alter a
    # notification still waiting for its delay.
    copy: dict[str, Any] = orjson.loads(orjson.dumps(email))
    return copy


def _carries_token(request: web.Request, session: HttpSession) -> bool:
    return hmac.compare_digest(
        request.headers.get(CSRF_HEADER, "").encode(), session.csrf_token.encode()
    )


def _session_id_of(request: web.Request) -> str | None:
    try:
        return request[_SESSION].session_id
    except KeyError:
        return None


def _user_tag_of(request: web.Request) -> str | None:
    """A Bayeux client's tag: the user of the HTTP session it handshakes in."""
    try:
        return request[_SESSION].agent.user_id
    except KeyError:
        return None


def _tag(agent: Agent | None) -> str | None:
    return None if agent is None else agent.user_id


def _own_email(request: web.Request, email_id: str) -> dict[str, Any]:
    """The email `email_id` of the request's user: 404 if unknown, or another user's."""
    email = request[_SESSION].agent.emails.get(email_id)
    if email is None:
        raise _GwsFailure(404, 6, f"Email '{email_id}' not found")
    return email


def _peer_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _operation_name(body: dict[str, Any]) -> str:
    operation = body.get("operationName")
    if not isinstance(operation, str) or not operation:
        raise _GwsFailure(400, 1, "Required parameter 'operationName' is missing")
    return operation


async def _json_object(request: web.Request, *, empty_ok: bool = False) -> dict[str, Any]:
    return await json_object(request, _invalid_body, empty_ok=empty_ok)


def _invalid_body(why: str) -> Exception:
    return _GwsFailure(400, 10, f"Request body {why}")


def _routing_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """Routing errors (404/405) answer in GWS form, as JSON like everything else."""
    if exc.status == 404:
        return _gws_error(404, 6, f"Resource '{request.path}' not found")
    if exc.status == 405:
        return _gws_error(405, 10, f"Method {request.method} not allowed")
    raise exc


def _gws_error(http_status: int, status_code: int, message: str) -> web.Response:
    return json_response({"statusCode": status_code, "statusMessage": message}, http_status)


async def serve(host: str, port: int, settings: SimulatorSettings) -> None:
    """Run a simulator until cancelled (`gws-notifyd simulate --listen H:P`)."""
    simulator = Simulator(settings)
    base_url = await simulator.start(host, port)
    _log.info(
        "gws simulator listening",
        base_url=base_url,
        notifications=base_url + NOTIFICATIONS_PATH,
        username=settings.username,
        agents=settings.agents,
        activity_per_second=settings.activity_per_second,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await simulator.stop()
        _log.info("gws simulator stopped", base_url=base_url)
