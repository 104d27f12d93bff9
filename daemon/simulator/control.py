"""The simulator's control API: what tests, demos and benchmarks may ask of a running GWS.

Each handler reads one JSON order, calls one public method of the simulator
(`gws.Simulator`, seen here as `Controlled`: what this API may ask of it) and
answers JSON; the endpoints, their bodies and answers are listed in the
docstring of `gws.py`. No authentication: the control API is for loopback
test rigs only. A bad order is answered 400 `{"error": ...}` and changes
nothing; an unknown username 404 `{"error": "no user 'X'"}`.

It never reaches into the simulator's GWS state (sessions, emails, Bayeux
clients) other than through the simulator's own methods.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Protocol, TypeGuard

import orjson
from aiohttp import web

from daemon.simulator.agents import Agent, Agents
from daemon.simulator.bodies import json_object, json_response
from daemon.simulator.samples import EMAILS, KINDS, samples

__all__ = ["MAX_NOTIFY", "add_routes"]

# A /control/notify answer lists every id: keep it a reasonable size.
MAX_NOTIFY: Final = 100_000
# Long enough to look like a real HTML email in size benchmarks (~400 bytes).
_SEQ_BODY: Final = (
    "<html><body><p>Dear customer,</p><p>Thank you for contacting us about your order. "
    "We have reviewed the details you sent and the replacement part has been dispatched "
    "today; you will receive a tracking number by separate email within one working day."
    "</p><p>If anything is still unclear, simply reply to this message and quote your "
    "case number.</p><p>Kind regards,<br/>Customer Care</p></body></html>"
)

_Handler = Callable[[web.Request], Awaitable[web.Response]]


class _Settings(Protocol):
    def to_json(self) -> dict[str, Any]: ...

    def update(self, changes: dict[str, Any]) -> None: ...


class Controlled(Protocol):
    """What the control API asks of the simulator (`gws.Simulator` provides it)."""

    @property
    def settings(self) -> _Settings: ...

    @property
    def agents(self) -> Agents: ...

    def forget_sessions(self, agent: Agent | None = None) -> None: ...

    async def publish(
        self, channel: str, data_items: Sequence[object], *, agent: Agent | None = None
    ) -> int: ...

    def publish_json(
        self, channel: str, data_json: Sequence[bytes], *, agent: Agent | None = None
    ) -> int: ...

    def notify(self, agent: Agent, kind: str, count: int) -> tuple[str, list[str]]: ...

    def stats(self) -> dict[str, Any]: ...

    def reset_handshake_stats(self) -> None: ...


class _Refused(Exception):
    """A control order that cannot be carried out: answered `{"error": message}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def add_routes(app: web.Application, simulator: Controlled) -> None:
    """Serve the control API of `simulator` under /control/."""
    control = _Control(simulator)
    routes: list[tuple[str, str, _Handler]] = [
        ("GET", "/control/settings", control.get_settings),
        ("POST", "/control/settings", control.post_settings),
        ("POST", "/control/users", control.users),
        ("POST", "/control/password", control.password),
        ("POST", "/control/forget", control.forget),
        ("POST", "/control/publish", control.publish),
        ("POST", "/control/samples", control.samples),
        ("POST", "/control/notify", control.notify),
        ("GET", "/control/stats", control.stats),
        ("POST", "/control/stats/reset", control.reset_stats),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, _answering(handler))


def _answering(handler: _Handler) -> _Handler:
    async def answer(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except _Refused as refused:
            return json_response({"error": refused.message}, refused.status)

    return answer


class _Control:
    def __init__(self, simulator: Controlled) -> None:
        self._simulator = simulator

    async def get_settings(self, _request: web.Request) -> web.Response:
        return json_response(self._simulator.settings.to_json())

    async def post_settings(self, request: web.Request) -> web.Response:
        changes = await _order(request)
        try:
            self._simulator.settings.update(changes)
        except ValueError as exc:
            raise _Refused(400, str(exc)) from None
        return json_response(self._simulator.settings.to_json())

    async def users(self, request: web.Request) -> web.Response:
        order = await _order(request)
        username, password = order.get("username"), order.get("password")
        if not isinstance(username, str) or not username or ":" in username:
            raise _Refused(400, "'username' must be a non-empty string without ':'")
        if not isinstance(password, str) or not password:
            raise _Refused(400, "'password' must be a non-empty string")
        _agent, created = self._simulator.agents.put(username, password)
        return json_response({"username": username, "created": created})

    async def password(self, request: web.Request) -> web.Response:
        order = await _order(request)
        password = order.get("password")
        if not isinstance(password, str) or not password:
            raise _Refused(400, "'password' must be a non-empty string")
        agent = self._agent(order) or self._simulator.agents.configured
        # The user is logged out everywhere; the old password is refused from now on.
        self._simulator.agents.set_password(agent, password)
        return json_response({"changed": True})

    async def forget(self, request: web.Request) -> web.Response:
        order = await _order(request, empty_ok=True)
        self._simulator.forget_sessions(self._agent(order))
        return json_response({"forgotten": True})

    async def publish(self, request: web.Request) -> web.Response:
        order = await _order(request)
        agent = self._agent(order)
        channel = order.get("channel", EMAILS)
        if not isinstance(channel, str) or not channel.startswith("/"):
            raise _Refused(400, "'channel' must be a channel name")
        if "data" in order:
            data = order["data"]
            if not isinstance(data, list):
                raise _Refused(400, "'data' must be a list of payloads")
            return json_response(
                {"published": await self._simulator.publish(channel, data, agent=agent)}
            )
        count, start = order.get("count"), order.get("start", 0)
        if not _is_count(count) or not _is_count(start):
            raise _Refused(400, "'count' and 'start' must be non-negative integers")
        payloads = _sequence_payloads_json(str(request.url.origin()), start, count)
        return json_response(
            {"published": self._simulator.publish_json(channel, payloads, agent=agent)}
        )

    async def samples(self, request: web.Request) -> web.Response:
        order = await _order(request)
        agent = self._agent(order)
        names = order.get("samples")
        if names is not None and not (
            isinstance(names, list) and all(isinstance(n, str) for n in names)
        ):
            raise _Refused(400, "'samples' must be a list of sample names")
        try:
            chosen = samples(names)
        except KeyError as exc:
            raise _Refused(400, f"no sample {exc.args[0]!r}") from None
        published = []
        for name, channel, payload in chosen:
            await self._simulator.publish(channel, [payload], agent=agent)
            published.append(
                {
                    "sample": name,
                    "channel": channel,
                    "messageType": payload["messageType"],
                    "notificationType": payload.get("notificationType"),
                }
            )
        return json_response({"published": published})

    async def notify(self, request: web.Request) -> web.Response:
        order = await _order(request)
        agent = self._agent(order) or self._simulator.agents.configured
        kind, count = order.get("kind"), order.get("count", 1)
        if kind not in KINDS:
            raise _Refused(400, f"'kind' must be one of {', '.join(KINDS)}")
        if not _is_count(count) or count > MAX_NOTIFY:
            raise _Refused(400, f"'count' must be an integer from 0 to {MAX_NOTIFY}")
        assert isinstance(kind, str)
        channel, ids = self._simulator.notify(agent, kind, count)
        return json_response({"published": len(ids), "channel": channel, "ids": ids})

    async def stats(self, _request: web.Request) -> web.Response:
        return json_response(self._simulator.stats())

    async def reset_stats(self, _request: web.Request) -> web.Response:
        self._simulator.reset_handshake_stats()
        return json_response({"reset": True})

    def _agent(self, order: dict[str, Any]) -> Agent | None:
        """The user named by the order's optional "username" (None when it names none)."""
        username = order.get("username")
        if username is None:
            return None
        if not isinstance(username, str) or not username:
            raise _Refused(400, "'username' must be a non-empty string")
        agent = self._simulator.agents.get(username)
        if agent is None:
            raise _Refused(404, f"no user {username!r}")
        return agent


def _sequence_payloads_json(origin: str, start: int, count: int) -> list[bytes]:
    """`count` realistic serialised Sent notifications, numbered from `start`.

    Formatting one bytes template per message is several times faster than
    building and serialising a dict each time, which matters for 200k bursts.
    """
    sample = {
        "messageType": "EmailStateChangeMessage",
        "notificationType": "StatusChange",
        "referenceId": "@REF@",
        "email": {
            "id": "@ID@",
            "state": "Sent",
            "uri": f"{origin}/api/v2/me/emails/@ID@",
            "emailType": "Outbound",
            "from": "support@example.com",
            "to": ["customer@example.com"],
            "subject": "Your case @REF@",
            "body": _SEQ_BODY,
            "mime": "text/html",
            "capabilities": [],
            "userData": {},
        },
    }
    template = (
        orjson.dumps(sample)
        .replace(b"%", b"%%")
        .replace(b'"@REF@"', b"%(n)d")
        .replace(b"@REF@", b"%(n)d")
        .replace(b"@ID@", b"SEQ%(n)010d")
    )
    return [template % {b"n": n} for n in range(start, start + count)]


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


async def _order(request: web.Request, *, empty_ok: bool = False) -> dict[str, Any]:
    return await json_object(request, _bad_order, empty_ok=empty_ok)


def _bad_order(why: str) -> Exception:
    return _Refused(400, f"body {why}")
