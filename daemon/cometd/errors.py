"""The Bayeux client's own errors, under `daemon.errors.CometdError`.

    CometdError                    (daemon.errors)
     ├── HandshakeError              (daemon.errors) the server refused the handshake
     ├── ServerGoneError             (daemon.errors) the server advised reconnect "none"
     ├── TransportError              the request failed below Bayeux (connection,
     │    │                          HTTP status, bad body)
     │    ├── OversizedResponseError   an answer over the bound: its messages are lost
     │    └── SessionRefusedError      HTTP 401/403: the HTTP session (or its
     │                                 credentials, or its CSRF token) was refused
     └── UnknownClientError          the server no longer knows our clientId

The client retries all of them but ServerGoneError; UnknownClientError and
SessionRefusedError never leave the client (it handshakes again, after the
caller's `before_handshake` has mended the HTTP session). Errors of aiohttp and orjson are
translated into these where they happen and never escape the package.
"""

from __future__ import annotations

from daemon.errors import CometdError


class UnknownClientError(CometdError):
    """The server no longer knows our clientId: handshake again."""


class TransportError(CometdError):
    """The request failed below Bayeux (connection, HTTP status, bad body)."""


class OversizedResponseError(TransportError):
    """A response was larger than the configured bound; its messages are lost."""


class SessionRefusedError(TransportError):
    """HTTP 401/403 on a Bayeux request: the HTTP session under Bayeux was refused.

    Not Bayeux's "unknown client" (that comes inside a 200): the caller's HTTP
    session, its credentials or its CSRF token need mending before a handshake.
    """
