"""One GWS agent session over HTTP: auth, cookies, CSRF, and the REST calls we make.

Owns the aiohttp `ClientSession` that REST *and* CometD share, because GWS
ties both to the same Basic auth header and JSESSIONID cookie; the headers
every CometD request needs (`bayeux_headers`: Basic auth and the CSRF token);
and the session's life: `login()` reads the password afresh each time (a
rotated password file needs no restart), `ensure()` tells a live session from
a lost one. While GWS refuses the credentials, no other request is sent: each
would be one more failed login towards the agent's account being locked.
How often to try again is `daemon.gws.login`'s business, not this module's.

Every failure is translated here into the project's GwsError tree:

- `GwsRequestError`     GWS answered with an HTTP error or a non-zero statusCode;
- `GwsUnreachableError` the request never left (refused, DNS, TLS): GWS did nothing;
- `GwsAnswerLostError`  the request left and no answer came (timeout, reset):
                        GWS may have acted on it.
"""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import structlog
from yarl import URL

from daemon.config import GwsSettings, read_secret_file
from daemon.errors import (
    ConfigError,
    GwsAnswerLostError,
    GwsError,
    GwsUnreachableError,
)
from daemon.gws.answers import Answer, failure_of, field, is_refusal, raise_unless_ok
from daemon.metrics import AccountMetrics

__all__ = ["Answer", "GwsSession", "new_connector"]

log = structlog.get_logger(logger_name="daemon.gws.session")

_JSON = "application/json"
# The part of `request_timeout_seconds` that connecting (a pooled connection,
# TCP, TLS) may take.
CONNECT_SHARE = 0.5
# GWS's HTTP session cookie: a new one means a new session, whose contact-center
# session must be started again.
SESSION_COOKIE = "JSESSIONID"
# The requests that log in; the only ones sent while the credentials are refused.
_LOGIN_OPERATIONS = frozenset({"GetMe", "StartContactCenterSession"})


def _ssl_context(settings: GwsSettings) -> ssl.SSLContext | bool:
    if not settings.verify_tls:
        return False
    if settings.ca_file is not None:
        return ssl.create_default_context(cafile=str(settings.ca_file))
    return True


def new_connector(settings: GwsSettings, *, limit: int = 64) -> aiohttp.TCPConnector:
    """The connection pool to GWS (`limit` 0: no limit)."""
    return aiohttp.TCPConnector(ssl=_ssl_context(settings), limit=limit)


class GwsSession:
    """Call `open()` once, then `login()` (again after every session loss)."""

    def __init__(self, settings: GwsSettings, metrics: AccountMetrics) -> None:
        self.settings = settings
        self._metrics = metrics
        self._http: aiohttp.ClientSession | None = None
        self._csrf: tuple[str, str] | None = None
        self._authorization = basic_authorization(settings.username, settings.password.reveal())
        self._session_cookie: str | None = None  # JSESSIONID at the last login
        self.credentials_refused = False
        self._on_refused: Callable[[], None] | None = None

    def on_refused(self, callback: Callable[[], None]) -> None:
        """Call `callback` when a request (not a login) is answered 401: whoever keeps
        the session should check it now, not at the end of a long-poll."""
        self._on_refused = callback

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("GwsSession.open() was not called")
        return self._http

    def open(self, connector: aiohttp.BaseConnector | None = None) -> None:
        """Make the HTTP session (in a running event loop). `connector`: shared by
        every account (not closed with this session); without one it has its own."""
        # unsafe=True: aiohttp's default jar drops cookies of IP-address hosts,
        # and GWS (JSESSIONID) and CometD servers (BAYEUX_BROWSER) need them.
        self._http = aiohttp.ClientSession(
            # No default Authorization header: the password may change between
            # logins, so every request (CometD's too) gets it from `_authorization`.
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            connector=connector or new_connector(self.settings),
            connector_owner=connector is None,
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
        if self.credentials_refused and operation not in _LOGIN_OPERATIONS:
            raise GwsUnreachableError(
                f"{operation}: not sent: GWS refused the credentials of gws.username "
                f"{self.settings.username!r}; waiting to log in again"
            )
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
                if answer.http_status == 401 and operation not in _LOGIN_OPERATIONS:
                    self._refused_meanwhile()
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

    def _refused_meanwhile(self) -> None:
        # Each further request with these credentials would be one more failed
        # login: none leaves until the session keeper has logged in again.
        self.credentials_refused = True
        log.warning("gws_credentials_refused", detail="a request was answered 401")
        if self._on_refused is not None:
            self._on_refused()

    def _headers(self, method: str, *, with_body: bool) -> dict[str, str]:
        # The CSRF token goes with every POST, as on CometD.
        headers = (
            self.bayeux_headers() if method != "GET" else {"Authorization": self._authorization}
        )
        headers["Accept"] = _JSON
        if with_body:
            headers["Content-Type"] = _JSON
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
        raise_unless_ok(answer, "GetMe")

    # -- the session's life ------------------------------------------------------------

    def bayeux_headers(self) -> dict[str, str]:
        """What every CometD request carries besides the cookies: Basic auth, the CSRF token."""
        headers = {"Authorization": self._authorization}
        if self._csrf is not None:
            headers[self._csrf[0]] = self._csrf[1]
        return headers

    @property
    def csrf_header_name(self) -> str | None:
        """The CSRF header GWS named (X-CSRF-HEADER), once learned."""
        return self._csrf[0] if self._csrf is not None else None

    def cookie_names(self) -> list[str]:
        """The names (never the values) of the cookies GWS set for this session."""
        return sorted(self.http.cookie_jar.filter_cookies(URL(self._url("/"))).keys())

    def _session_id(self) -> str | None:
        cookie = self.http.cookie_jar.filter_cookies(URL(self._url("/"))).get(SESSION_COOKIE)
        return cookie.value if cookie is not None else None

    def _take_password(self) -> None:
        """The password as its source holds it now (a file is read again)."""
        path = self.settings.password_file
        if path is None:
            return
        try:
            password = read_secret_file("gws.password_file", str(path), path.parent)
        except ConfigError as exc:
            # Mid-rotation, say: the password last read stays in use.
            log.warning("gws_password_unreadable", error=str(exc))
            return
        self._authorization = basic_authorization(self.settings.username, password.reveal())

    async def login(self) -> Answer | None:
        """Log in afresh: the password read again, GET /api/v2/me (cookie, CSRF token),
        then StartContactCenterSession if configured (its answer is returned).

        Raises GwsRequestError (see `is_refusal`), GwsUnreachableError, GwsAnswerLostError.
        """
        await self._get_me()
        return await self._start_contact_center()

    async def ensure(self) -> bool:
        """Make sure the HTTP session lives: GET /api/v2/me with the password as it is now.

        The same session (cookie) as at the last login: True, nothing more to do.
        A new or no session cookie, or credentials refused until now: the
        contact-center session is started again (a login), and False. Raises as
        `login()` does.
        """
        before = None if self.credentials_refused else self._session_cookie
        await self._get_me()
        if before is not None and self._session_id() == before:
            return True
        await self._start_contact_center()
        return False

    async def _get_me(self) -> None:
        """The login GET, with the password as it is now: refused credentials (or not)
        are remembered."""
        self._take_password()
        answer = await self._request("GET", "/api/v2/me", operation="GetMe")
        failure = failure_of(answer, "GetMe")
        if failure is not None:
            # Only a refusal changes what is known of the credentials: GWS
            # unreachable or failing says nothing about them.
            self.credentials_refused = self.credentials_refused or is_refusal(failure)
            raise failure
        self.credentials_refused = False

    async def _start_contact_center(self) -> Answer | None:
        answer: Answer | None = None
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
                failure = failure_of(answer, "StartContactCenterSession")
                assert failure is not None
                self.credentials_refused = is_refusal(failure)
                raise failure
        self._session_cookie = self._session_id()
        log.info(
            "gws_logged_in",
            base_url=self.settings.base_url,
            username=self.settings.username,
            csrf=self._csrf is not None,
            session_cookie=self._session_cookie is not None,
        )
        return answer

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
        emails = field(answer, "emails", list, "ListEmails")
        return {e["id"]: e for e in emails if isinstance(e, dict) and isinstance(e.get("id"), str)}

    async def get_email(self, email_id: str) -> dict[str, Any] | None:
        """The email resource, or None when GWS does not know it (any more)."""
        answer = await self._call(
            "GET", f"/api/v2/me/emails/{_quote(email_id)}", operation="GetEmail"
        )
        if answer.http_status == 404 or answer.status_code == 6:
            return None
        return field(answer, "email", dict, "GetEmail")


def basic_authorization(username: str, password: str) -> str:
    """The value of an HTTP Basic `Authorization` header."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def _quote(segment: str) -> str:
    """`segment` as one URL path segment: `/`, `?`, `#` and the rest escaped.

    A dot segment cannot be escaped (`%2E%2E` is `..` to URL normalisation,
    ours and every server's): it would move the request up the path, so it is
    never sent. The API accepts only GWS-shaped ids; this holds whatever the caller.
    """
    if segment in ("", ".", ".."):
        raise GwsUnreachableError(f"not sent: email id {segment!r} is not a URL path segment")
    return quote(segment, safe="")


def _is_csrf_refusal(answer: Answer) -> bool:
    return b"csrf" in answer.raw.lower()
