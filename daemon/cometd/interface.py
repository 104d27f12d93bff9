"""What a caller of the Bayeux client gives and gets: settings, callbacks, states.

Plain values and type aliases, no behaviour: `ClientSettings` (the knobs),
`ConnectionState` and `Subscribed` (what the caller is told), and the shapes
of the callbacks the client takes.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from daemon.backoff import BackoffPolicy


class ConnectionState(enum.Enum):
    DISCONNECTED = "disconnected"
    HANDSHAKING = "handshaking"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Subscribed:
    """Told to the caller after every successful (re)handshake and subscription."""

    client_id: str
    transport: str
    handshakes: int  # successful handshakes so far, this one included
    channels: tuple[str, ...]

    @property
    def rehandshake(self) -> bool:
        return self.handshakes > 1


SubscribedHandler = Callable[[Subscribed], Awaitable[None]]
StateHandler = Callable[[ConnectionState], None]
# Runs before every handshake but the first; returns once one may be tried.
BeforeHandshake = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Knobs of the Bayeux client; the defaults suit GWS and the CometD servers."""

    url: str
    channels: tuple[str, ...]
    allow_websocket: bool = True
    # How long past the server's advised long-poll timeout an answer may take.
    max_network_delay: float = 10.0
    # A server puts its whole queue into one answer (227,500 messages seen).
    max_response_bytes: int = 256 * 1024 * 1024
    # Under a steady stream, at most one connect per this many seconds (see
    # `BayeuxClient._connect_loop`); 0 connects again at once.
    batch_window: float = 0.0
    # Short cap: recovery after a server restart should take well under a
    # second, and one client retrying twice a second, jittered, is no storm.
    backoff: BackoffPolicy = field(
        default_factory=lambda: BackoffPolicy(initial=0.1, maximum=0.5, floor=0.05)
    )
