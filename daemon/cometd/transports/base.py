"""What every transport is: send Bayeux messages, get their replies and the data.

Owns the `Transport` interface and the names of the connection types, as the
handshake offers them. A transport carries messages and reports failures as
`TransportError` (`SessionRefusedError` when the HTTP session under it was
refused); it never decides what a reply means, and never retries.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

from daemon.cometd.messages import Answer

LONG_POLLING = "long-polling"
WEBSOCKET = "websocket"

# The caller's headers for every Bayeux request (e.g. a CSRF token), asked
# afresh each time: they change when the caller's HTTP session does.
HeaderSource = Callable[[], Mapping[str, str]]


def no_headers() -> Mapping[str, str]:
    return {}


class Transport(ABC):
    """Carries Bayeux messages; returns meta replies and the data that came with them."""

    name: str

    @abstractmethod
    async def exchange(self, messages: list[dict[str, Any]], *, timeout: float) -> Answer:
        """Send `messages`; return (meta replies for them, data messages received)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the transport holds."""
