"""The project's exceptions; callers catch these, never aiohttp's or sqlite3's.

    GwsNotifydError
     ├── ConfigError              a key of the config file is missing or wrong
     ├── GwsError                 GWS REST said no, or could not be asked
     │    ├── GwsRequestError       an answer with HTTP error or non-zero statusCode
     │    ├── GwsUnreachableError   the request never left (refused, DNS, TLS)
     │    └── GwsAnswerLostError    the request left but no answer came back
     ├── CometdError              the Bayeux conversation failed
     │    ├── HandshakeError        the server refused the handshake
     │    └── ServerGoneError       the server advised reconnect "none"
     ├── StoreError               the SQLite store cannot be used
     └── SinkError                a sink could not take an event
          ├── RetryableSinkError    try again later (408, 429, 5xx, connection)
          └── PermanentSinkError    never going to work (other 4xx): dead-letter

Messages name the key, URL or field involved and never carry a secret.
"""

from __future__ import annotations


class GwsNotifydError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(GwsNotifydError):
    """A configuration key is missing, unknown or has a bad value."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class GwsError(GwsNotifydError):
    """Talking to GWS REST failed."""


class GwsRequestError(GwsError):
    """GWS answered, and the answer is an error."""

    def __init__(
        self,
        *,
        operation: str,
        http_status: int,
        status_code: int | None,
        status_message: str | None,
        body: object = None,
    ) -> None:
        detail = f"HTTP {http_status}"
        if status_code is not None:
            detail += f", statusCode {status_code}"
        if status_message:
            detail += f": {status_message}"
        super().__init__(f"{operation} failed ({detail})")
        self.operation = operation
        self.http_status = http_status
        self.status_code = status_code
        self.status_message = status_message
        self.body = body


class GwsUnreachableError(GwsError):
    """The request never reached GWS, so GWS did nothing."""


class GwsAnswerLostError(GwsError):
    """The request was written but its answer never came: GWS may have acted on it."""


class CometdError(GwsNotifydError):
    """The Bayeux conversation failed."""


class HandshakeError(CometdError):
    """The Bayeux server refused the handshake."""


class ServerGoneError(CometdError):
    """The Bayeux server advised not to reconnect."""


class StoreError(GwsNotifydError):
    """The SQLite store cannot be opened or written."""


class SinkError(GwsNotifydError):
    """A sink could not take an event.

    `delivered` counts the events at the head of the batch that the sink did
    take before it failed, so the dispatcher never hands them over twice.
    """

    retryable: bool = True

    def __init__(self, message: str, *, delivered: int = 0) -> None:
        super().__init__(message)
        self.delivered = delivered


class RetryableSinkError(SinkError):
    """Worth trying again later: a timeout, 408, 429, 5xx or a connection error."""

    retryable = True


class PermanentSinkError(SinkError):
    """Retrying will not help (a 4xx other than 408/429): the event is dead-lettered."""

    retryable = False
