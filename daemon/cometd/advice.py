"""The server's advice (timeout, interval, reconnect) as it stands.

Every meta reply may carry an `advice` object; each one updates what was
advised before, field by field, and lasts until the next one says otherwise.

Plain arithmetic over the last advice: it never waits, and never decides what
the client does with it.
"""

from __future__ import annotations

from typing import Any

# Bayeux's defaults, until the server says otherwise.
_DEFAULT_TIMEOUT_MS = 30000


class Advice:
    """What the server advised last, field by field."""

    __slots__ = ("_fields",)

    def __init__(self) -> None:
        self._fields: dict[str, Any] = {
            "timeout": _DEFAULT_TIMEOUT_MS,
            "interval": 0,
            "reconnect": "retry",
        }

    def take(self, reply: dict[str, Any]) -> None:
        """Update with the `advice` of `reply`, if it has one."""
        advice = reply.get("advice")
        if isinstance(advice, dict):
            self._fields.update(advice)

    @property
    def reconnect(self) -> object:
        """ "retry", "handshake" or "none" (or whatever the server said)."""
        return self._fields.get("reconnect")

    def interval(self) -> float:
        """Seconds to wait after a connect before sending the next one."""
        interval = self._fields.get("interval", 0)
        return float(interval) / 1000.0 if isinstance(interval, int | float) else 0.0

    def connect_timeout(self, max_network_delay: float) -> float:
        """Seconds a connect may take: the server's long-poll hold plus the network's."""
        timeout = self._fields.get("timeout", _DEFAULT_TIMEOUT_MS)
        seconds = float(timeout) / 1000.0 if isinstance(timeout, int | float) else 30.0
        return seconds + max_network_delay
