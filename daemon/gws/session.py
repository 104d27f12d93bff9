"""One GWS agent session over HTTP: auth, cookies, CSRF, and the REST calls we make.

Owns the aiohttp `ClientSession` that REST *and* CometD share, because GWS
ties both to the same Basic auth header and JSESSIONID cookie. Every failure
is translated here into the project's GwsError tree:

- `GwsRequestError`     GWS answered with an HTTP error or a non-zero statusCode;
- `GwsUnreachableError` the request never left (refused, DNS, TLS): GWS did nothing;
- `GwsAnswerLostError`  the request left and no answer came (timeout, reset):
                        GWS may have acted on it.
"""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import orjson
import structlog

from daemon.config import GwsSettings
from daemon.errors import (
    GwsAnswerLostError,
    GwsError,
    GwsRequestError,
    GwsUnreachableError,
)
from daemon.metrics import Metrics

log = structlog.get_logger(logger_name="daemon.gws.session")

_JSON = "application/json"
# The part of `request_timeout_seconds` that connecting (a pooled connection,
# TCP, TLS) may take.
CONNECT_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class Answer:
    """A GWS answer as it came: HTTP status, parsed body (if JSON) and raw bytes."""

    http_status: int
    body: Any
    raw: bytes
    content_type: str

    def _integer(self, key: str) -> int | None:
        value = self.body.get(key) if isinstance(self.body, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def status_code(self) -> int | None:
        return self._integer("statusCode")

    @property
    def status_message(self) -> str | None:
        if isinstance(self.body, dict):
            message = self.body.get("statusMessage")
            return message if isinstance(message, str) else None
        return None

    @property
    def reference_id(self) -> int | None:
        return self._integer("referenceId")

    @property
    def ok(self) -> bool:
        return 200 <= self.http_status < 300 and self.status_code in (0, None)


def _ssl_context(settings: GwsSettings) -> ssl.SSLContext | bool:
    if not settings.verify_tls:
        return False
    if settings.ca_file is not None:
        return ssl.create_default_context(cafile=str(settings.ca_file))
    return True


class GwsSession:
    """Call `open()` once, then `login()` (again after every session loss)."""

    def __init__(self, settings: GwsSettings, metrics: Metrics) -> None:
        self.settings = settings
        self._metrics = metrics
        self._http: aiohttp.ClientSession | None = None
        self._csrf: tuple[str, str] | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("GwsSession.open() was not called")
        return self._http

    async def open(self) -> None:
        # unsafe=True: aiohttp's default jar drops cookies of IP-address hosts,
        # and GWS (JSESSIONID) and CometD servers (BAYEUX_BROWSER) need them.
        self._http = aiohttp.ClientSession(
            # A default header rather than aiohttp.BasicAuth (deprecated in
            # aiohttp 3.14); it also reaches the CometD WebSocket upgrade.
            headers={
                "Authorization": basic_authorization(
                    self.settings.username, self.settings.password.reveal()
                )
            },
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            connector=aiohttp.TCPConnector(ssl=_ssl_context(self.settings), limit=64),
            # A connect of its own, shorter than the whole: when it runs out aiohttp
            # says so (ConnectionTimeoutError), and a request that never left is
            # told apart from one whose answer was lost.
            timeout=aiohttp.ClientTimeout(
                total=self.settings.request_timeout_seconds,
                connect=self.settings.request_timeout_seconds * CONNECT_SHARE,
            ),
            json_serialize=lambda obj: orjson.dumps(obj).decode(),
        )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _url(self, path: str) -> str:
        return self.settings.base_url + path

    async def _request(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        body: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Answer:
        started = time.perf_counter()
        result = "error"
        try:
            async with self.http.request(
                method,
                self._url(path),
                data=body,
                headers=self._headers(method, with_body=body is not None),
                params=params,
            ) as response:
                answer = await self._answer(response)
                result = "ok" if answer.ok else "rejected"
                return answer
        except aiohttp.ClientConnectorError as exc:
            result = "unreachable"
            raise GwsUnreachableError(
                f"{operation}: cannot connect to {self.settings.base_url}: {exc.os_error or exc}"
            ) from None
        except aiohttp.ConnectionTimeoutError:
            result = "unreachable"
            raise GwsUnreachableError(
                f"{operation}: cannot connect to {self.settings.base_url}: timed out"
            ) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            result = "lost"
            raise GwsAnswerLostError(
                f"{operation}: no answer from {self.settings.base_url}: {type(exc).__name__}"
            ) from None
        finally:
            self._metrics.gws_requests.labels(operation, result).observe(
                time.perf_counter() - started
            )

    def _headers(self, method: str, *, with_body: bool) -> dict[str, str]:
        headers = {"Accept": _JSON}
        if with_body:
            headers["Content-Type"] = _JSON
        if method != "GET" and self._csrf is not None:
            headers[self._csrf[0]] = self._csrf[1]
        return headers

    async def _answer(self, response: aiohttp.ClientResponse) -> Answer:
        raw = await response.read()
        self._learn_csrf(response.headers)
        parsed: Any = None
        if raw:
            try:
                parsed = orjson.loads(raw)
            except orjson.JSONDecodeError:
                parsed = None
        return Answer(response.status, parsed, raw, response.headers.get("Content-Type", ""))

    def _learn_csrf(self, headers: Mapping[str, str]) -> None:
        name = headers.get("X-CSRF-HEADER")
        token = headers.get("X-CSRF-TOKEN")
        if name and token:
            self._csrf = (name, token)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        body: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Answer:
        answer = await self._request(method, path, operation=operation, body=body, params=params)
        if answer.http_status == 403 and method != "GET" and _is_csrf_refusal(answer):
            # The token lives as long as the HTTP session; a new session (after
            # GWS forgot ours) needs a new one. A 403 means nothing was done.
            log.info("gws_csrf_refresh", operation=operation)
            try:
                await self.refresh_csrf()
            except GwsError as exc:
                # The refusal stands as GWS's answer: nothing was done.
                log.warning("gws_csrf_refresh_failed", operation=operation, error=str(exc))
                return answer
            answer = await self._request(
                method, path, operation=operation, body=body, params=params
            )
        return answer

    async def refresh_csrf(self) -> None:
        answer = await self._request("GET", "/api/v2/me", operation="GetMe")
        _raise_unless_ok(answer, "GetMe")

    async def login(self) -> None:
        """Learn the CSRF token and, if configured, start the contact-center session."""
        await self.refresh_csrf()
        if self.settings.start_session:
            answer = await self._call(
                "POST",
                "/api/v2/me",
                operation="StartContactCenterSession",
                body=orjson.dumps(
                    {"operationName": "StartContactCenterSession", "channels": ["email"]}
                ),
            )
            if answer.status_code == 7:
                log.warning("gws_session_partial", status_message=answer.status_message)
            elif not answer.ok:
                _raise_unless_ok(answer, "StartContactCenterSession")
        log.info(
            "gws_logged_in",
            base_url=self.settings.base_url,
            username=self.settings.username,
            csrf=self._csrf is not None,
        )

    async def email_operation(self, email_id: str, body: bytes, *, operation: str) -> Answer:
        """POST an operation (Send, or anything else passed through) on an email.

        Returns GWS's answer whatever it says; raises only when there is none.
        """
        return await self._call(
            "POST", f"/api/v2/me/emails/{_quote(email_id)}", operation=operation, body=body
        )

    async def list_emails(self) -> dict[str, dict[str, Any]]:
        """Every email of the agent's workspace, by id (one request)."""
        answer = await self._call(
            "GET", "/api/v2/me/emails", operation="ListEmails", params={"fields": "*"}
        )
        emails = _field(answer, "emails", list, "ListEmails")
        return {e["id"]: e for e in emails if isinstance(e, dict) and isinstance(e.get("id"), str)}

    async def get_email(self, email_id: str) -> dict[str, Any] | None:
        """The email resource, or None when GWS does not know it (any more)."""
        answer = await self._call(
            "GET", f"/api/v2/me/emails/{_quote(email_id)}", operation="GetEmail"
        )
        if answer.http_status == 404 or answer.status_code == 6:
            return None
        return _field(answer, "email", dict, "GetEmail")


T = TypeVar("T")


def _field(answer: Answer, key: str, kind: type[T], operation: str) -> T:
    """`answer.body[key]` of the expected kind, from a successful answer."""
    _raise_unless_ok(answer, operation)
    value = answer.body.get(key) if isinstance(answer.body, dict) else None
    if not isinstance(value, kind):
        raise GwsRequestError(
            operation=operation,
            http_status=answer.http_status,
            status_code=None,
            status_message=f"answer has no {key!r} {kind.__name__}",
        )
    return value


def basic_authorization(username: str, password: str) -> str:
    """The value of an HTTP Basic `Authorization` header."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def _quote(segment: str) -> str:
    return quote(segment, safe="")


def _is_csrf_refusal(answer: Answer) -> bool:
    return b"csrf" in answer.raw.lower()


def _raise_unless_ok(answer: Answer, operation: str) -> None:
    if not answer.ok:
        raise GwsRequestError(
            operation=operation,
            http_status=answer.http_status,
            status_code=answer.status_code,
            status_message=answer.status_message,
            body=answer.body,
        )
