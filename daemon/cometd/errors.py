"""The Bayeux client's own errors, under `daemon.errors.CometdError`.

    CometdError                    (daemon.errors)
     ├── HandshakeError              (daemon.errors) the server refused the handshake
     ├── ServerGoneError             (daemon.errors) the server advised reconnect "none"
     ├── TransportError              the request failed below Bayeux (connection,
     │    │                          HTTP status, bad body)
     │    └── OversizedResponseError   an answer over the bound: its messages are lost
     └── UnknownClientError          the server no longer knows our clientId

The client retries all of them but ServerGoneError; UnknownClientError never
leaves the client (it handshakes again). Errors of aiohttp and orjson are
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
