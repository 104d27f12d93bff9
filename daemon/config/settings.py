"""The settings themselves: frozen dataclasses with every default, and `Secret`.

Owns the shape of a valid configuration. Nothing here reads a file or checks
a value: `loader` builds these only from input it has validated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

SINK_TYPES = ("jsonl", "log", "webhook")


class Secret:
    """A string that must never be printed; `reveal()` is the only way out."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class GwsSettings:
    base_url: str
    username: str
    password: Secret
    notifications_path: str = "/api/v2/notifications"
    channels: tuple[str, ...] = ("/v2/me/emails",)
    start_session: bool = True
    request_timeout_seconds: float = 10.0
    verify_tls: bool = True
    ca_file: Path | None = None
    allow_websocket: bool = True
    wait_at_start: bool = True
    # Bound on one CometD answer (servers send their whole queue at once).
    max_batch_bytes: int = 256 * 1024 * 1024
    # Under a steady stream of notifications, gather this long per long-poll.
    batch_window_seconds: float = 0.005

    @property
    def notifications_url(self) -> str:
        return self.base_url + self.notifications_path


@dataclass(frozen=True, slots=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 9410
    token: Secret | None = None
    max_body_bytes: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class StoreSettings:
    path: Path
    synchronous: Literal["normal", "full"] = "normal"
    max_outbox_events: int = 1_000_000
    retention_hours: float = 168.0


@dataclass(frozen=True, slots=True)
class CorrelationSettings:
    send_timeout_seconds: float = 120.0


@dataclass(frozen=True, slots=True)
class SinkSettings:
    name: str
    type: Literal["jsonl", "log", "webhook"]
    batch_size: int = 500
    backoff_max_seconds: float = 30.0  # cap of the retry delay
    give_up_after_seconds: float = 0.0  # 0 = retry retryable failures forever
    # jsonl
    path: Path | None = None
    fsync: bool = False
    # webhook
    url: str | None = None
    secret: Secret | None = None
    timeout_seconds: float = 10.0
    headers: tuple[tuple[str, str], ...] = ()
    verify_tls: bool = True
    batch_mode: Literal["single", "array"] = "single"


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    shutdown_timeout_seconds: float = 20.0


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


@dataclass(frozen=True, slots=True)
class Settings:
    gws: GwsSettings
    store: StoreSettings
    http: HttpSettings = field(default_factory=HttpSettings)
    correlation: CorrelationSettings = field(default_factory=CorrelationSettings)
    sinks: tuple[SinkSettings, ...] = ()
    service: ServiceSettings = field(default_factory=ServiceSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    source: Path | None = None
