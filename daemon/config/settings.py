"""The settings themselves: frozen dataclasses with every default, and `Secret`.

Owns the shape of a valid configuration and every default, written once here:
the loader reads a missing key's default from the instances at the end
(`GWS_DEFAULTS`, ...). Nothing here reads a file or checks a value: `loader`
builds these only from input it has validated.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

SINK_TYPES = ("jsonl", "log", "webhook", "redis", "nats")


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
    # The file `password` was read from (password_file, or the systemd credential):
    # read again at every login, so that a rotated password needs no restart.
    password_file: Path | None = None
    notifications_path: str = "/api/v2/notifications"
    channels: tuple[str, ...] = ("/v2/me/emails",)
    start_session: bool = True
    request_timeout_seconds: float = 10.0
    verify_tls: bool = True
    ca_file: Path | None = None
    # GWS 8.5 does not offer WebSocket for CometD (Dep:CometD); where one does, opt in.
    allow_websocket: bool = False
    wait_at_start: bool = True
    # After GWS refused the password: wait this long, doubling to 15 minutes (a burst
    # of failed logins can lock the agent's account in Configuration Server).
    auth_retry_seconds: float = 60.0
    # Transport-level retries (GWS down, resets, 5xx) grow to this, jittered.
    retry_max_seconds: float = 15.0
    # GETs of single emails in parallel (GWS has a DoS filter).
    read_back_concurrency: int = 4
    # Bound on one CometD answer (servers send their whole queue at once).
    max_batch_bytes: int = 256 * 1024 * 1024
    # Under a steady stream of notifications, gather this long per long-poll.
    batch_window_seconds: float = 0.01
    # Logins and handshakes of all accounts together, at most (no herd after GWS restarts).
    handshakes_per_second: float = 100.0

    @property
    def notifications_url(self) -> str:
        return self.base_url + self.notifications_path


@dataclass(frozen=True, slots=True)
class AccountSettings:
    """One GWS account (agent): its name and its whole GWS settings (the shared
    `[gws]` values with its own credentials, channels and start_session)."""

    name: str
    gws: GwsSettings


@dataclass(frozen=True, slots=True)
class HttpSettings:
    host: str = "127.0.0.1"
    port: int = 9410
    token: Secret | None = None
    max_body_bytes: int = 1024 * 1024
    # Listening beyond loopback without a token must be asked for by name.
    allow_unauthenticated: bool = False
    # A request's headers and body must arrive within this long.
    read_timeout_seconds: float = 30.0
    # Connections served at once; more wait in the kernel's accept queue.
    max_connections: int = 256

    @property
    def on_loopback(self) -> bool:
        return self.host == "localhost" or ipaddress.ip_address(self.host).is_loopback


@dataclass(frozen=True, slots=True)
class StoreSettings:
    path: Path
    synchronous: Literal["normal", "full"] = "normal"
    max_outbox_events: int = 1_000_000
    retention_hours: float = 168.0
    # Dead letters beyond this many are pruned, oldest first (also by retention_hours).
    max_dead_letters: int = 100_000
    # A background task that keeps failing on the store this long exits the daemon (70).
    failure_exit_seconds: float = 60.0
    # How long a write waits for another process's lock (the CLI) before it fails.
    busy_timeout_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class CorrelationSettings:
    send_timeout_seconds: float = 120.0
    # A send whose read-backs keep failing ends (reason "read_back_failed") this
    # long after its deadline.
    read_back_give_up_seconds: float = 3600.0


@dataclass(frozen=True, slots=True)
class SinkSettings:
    name: str
    type: Literal["jsonl", "log", "webhook", "redis", "nats"]
    batch_size: int = 500
    backoff_max_seconds: float = 30.0  # cap of the retry delay
    give_up_after_seconds: float = 0.0  # 0 = retry retryable failures forever
    # Glob patterns of the event types and of the accounts it takes (empty: all);
    # `daemon.config.routing`.
    types: tuple[str, ...] = ()
    accounts: tuple[str, ...] = ()
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
    # redis (url too) and nats: where, and how events are named there
    stream: str | None = None
    maxlen: int = 1_000_000
    dedup_window_seconds: int = 86_400
    servers: tuple[str, ...] = ()
    subject: str | None = None
    create_stream: bool = False
    subjects: tuple[str, ...] = ()
    duplicate_window_seconds: float = 120.0
    # bus credentials
    password: Secret | None = None
    token: Secret | None = None
    user: str | None = None
    creds_file: Path | None = None


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    shutdown_timeout_seconds: float = 20.0


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


@dataclass(frozen=True, slots=True)
class Settings:
    # What `[gws]` says for every account (its username and password are empty
    # when it has [[gws.accounts]]; each account's own are in `accounts`).
    gws: GwsSettings
    store: StoreSettings
    accounts: tuple[AccountSettings, ...] = ()
    http: HttpSettings = field(default_factory=HttpSettings)
    correlation: CorrelationSettings = field(default_factory=CorrelationSettings)
    sinks: tuple[SinkSettings, ...] = ()
    service: ServiceSettings = field(default_factory=ServiceSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    source: Path | None = None
    # What exposes a secret without making the config invalid (`config.exposure`).
    warnings: tuple[str, ...] = ()

    @property
    def single_account_form(self) -> bool:
        """Today's form: `[gws]` names the one agent (the account `default`)."""
        return bool(self.gws.username)

    def account(self, name: str) -> AccountSettings | None:
        return next((a for a in self.accounts if a.name == name), None)


# Every default above as a value, for the loader. The placeholders stand for
# required keys (they have no default, and the loader never reads them here).
GWS_DEFAULTS = GwsSettings(base_url="", username="", password=Secret(""))
HTTP_DEFAULTS = HttpSettings()
STORE_DEFAULTS = StoreSettings(path=Path())
CORRELATION_DEFAULTS = CorrelationSettings()
SINK_DEFAULTS = SinkSettings(name="", type="jsonl")
SERVICE_DEFAULTS = ServiceSettings()
LOGGING_DEFAULTS = LoggingSettings()
