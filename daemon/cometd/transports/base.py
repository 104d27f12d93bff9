"""What every transport is: send Bayeux messages, get their replies and the data.

Owns the `Transport` interface and the names of the connection types, as the
handshake offers them. A transport carries messages and reports failures as
`TransportError` (or `UnknownClientError` when the HTTP session itself is
gone); it never decides what a reply means, and never retries.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from daemon.cometd.messages import Answer

LONG_POLLING = "long-polling"
WEBSOCKET = "websocket"


class Transport(ABC):
    """Carries Bayeux messages; returns meta replies and the data that came with them."""

    name: str

    @abstractmethod
    async def exchange(self, messages: list[dict[str, Any]], *, timeout: float) -> Answer:
        """Send `messages`; return (meta replies for them, data messages received)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the transport holds."""
