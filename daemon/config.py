"""TOML configuration into typed, validated settings.

Owns: reading the file, every default, and every check. Any problem is a
`ConfigError` naming the key (`sinks[1].url`) and the reason; nothing else in
the daemon re-validates. Secrets (GWS password, webhook secret, API token) are
read here and kept in `Secret` objects whose repr never shows the value.
"""

from __future__ import annotations

import ipaddress
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

from daemon.errors import ConfigError

T = TypeVar("T")

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


class _Table:
    """One TOML table being read: typed getters, and unknown keys reported at the end."""

    def __init__(self, data: Mapping[str, Any], prefix: str) -> None:
        self._data = data
        self._prefix = prefix
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self._prefix}.{name}" if self._prefix else name

    def has(self, name: str) -> bool:
        return name in self._data

    def _get(self, name: str, kind: type[T] | tuple[type, ...], kind_name: str) -> T | None:
        self._seen.add(name)
        if name not in self._data:
            return None
        value = self._data[name]
        # bool is an int in Python; TOML keeps them apart and so do we.
        if isinstance(value, bool) and kind is not bool:
            raise ConfigError(self.key(name), f"expected {kind_name}, got a boolean")
        if not isinstance(value, kind):
            raise ConfigError(self.key(name), f"expected {kind_name}, got {_toml_type(value)}")
        return value  # type: ignore[return-value]

    def string(self, name: str, default: str | None = None, *, required: bool = False) -> str:
        value = self._get(name, str, "a string")
        if value is None:
            if required or default is None:
                raise ConfigError(self.key(name), "is required")
            return default
        if not value.strip():
            raise ConfigError(self.key(name), "must not be empty")
        return value

    def optional_string(self, name: str) -> str | None:
        value = self._get(name, str, "a string")
        if value is not None and not value.strip():
            raise ConfigError(self.key(name), "must not be empty")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self._get(name, bool, "true or false")
        return default if value is None else value

    def number(
        self, name: str, default: float, *, minimum: float = 0.0, above: bool = False
    ) -> float:
        value = cast("float | None", self._get(name, (int, float), "a number"))
        if value is None:
            return default
        number = float(value)
        if not math.isfinite(number):
            raise ConfigError(self.key(name), "must be a finite number")
        if (above and number <= minimum) or number < minimum:
            relation = "greater than" if above else "at least"
            raise ConfigError(self.key(name), f"must be {relation} {minimum:g}, got {number:g}")
        return number

    def integer(self, name: str, default: int, *, minimum: int = 0) -> int:
        value = self._get(name, int, "an integer")
        if value is None:
            return default
        if value < minimum:
            raise ConfigError(self.key(name), f"must be at least {minimum}, got {value}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self._get(name, str, "a string")
        if value is None:
            return default
        if value not in choices:
            raise ConfigError(self.key(name), f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def string_list(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(name, list, "a list of strings")
        if value is None:
            return default
        if not value:
            raise ConfigError(self.key(name), "must not be empty")
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise ConfigError(f"{self.key(name)}[{index}]", "expected a non-empty string")
        return tuple(value)

    def table(self, name: str) -> _Table:
        value = self._get(name, dict, "a table")
        return _Table(value or {}, self.key(name))

    def string_table(self, name: str) -> tuple[tuple[str, str], ...]:
        table = self._get(name, dict, "a table of strings")
        if table is None:
            return ()
        for key, value in table.items():
            if not isinstance(value, str):
                raise ConfigError(f"{self.key(name)}.{key}", "expected a string")
        return tuple(sorted(table.items()))

    def finish(self) -> None:
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            raise ConfigError(self.key(unknown[0]), "unknown key")


def _toml_type(value: object) -> str:
    names = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "a table"}
    return names.get(type(value), type(value).__name__)


def _http_url(table: _Table, name: str, *, required: bool) -> str | None:
    value = table.string(name) if required else table.optional_string(name)
    if value is None:
        return None
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        raise ConfigError(table.key(name), f"is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(table.key(name), "must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        # Credentials in a URL end up in logs and error messages.
        raise ConfigError(table.key(name), "must not carry credentials; use the password keys")
    if parts.query or parts.fragment:
        raise ConfigError(table.key(name), "must not have a query or fragment")
    try:
        _ = parts.port
    except ValueError:
        raise ConfigError(table.key(name), "has an invalid port") from None
    return value.rstrip("/")


def _read_secret_file(key: str, path_text: str, base: Path) -> Secret:
    path = _resolve(path_text, base)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from None
    # The first line: a trailing newline (or a comment line after) is not part of it.
    lines = text.splitlines()
    value = lines[0] if lines else ""
    if not value:
        raise ConfigError(key, f"{path} is empty")
    return Secret(value)


def _resolve(path_text: str, base: Path) -> Path:
    path = Path(path_text).expanduser()
    return path if path.is_absolute() else Path(os.path.normpath(base / path))


def _secret(
    table: _Table, base: Path, *, value_key: str, file_key: str
) -> tuple[Secret | None, str]:
    """The secret from `value_key` or `file_key` (never both); second item: where from."""
    value = table.optional_string(value_key)
    file_value = table.optional_string(file_key)
    if value is not None and file_value is not None:
        raise ConfigError(table.key(file_key), f"set either {value_key} or {file_key}, not both")
    if value is not None:
        return Secret(value), table.key(value_key)
    if file_value is not None:
        return _read_secret_file(table.key(file_key), file_value, base), table.key(file_key)
    return None, ""


def _gws(
    table: _Table, base: Path, environ: Mapping[str, str], *, need_password: bool
) -> GwsSettings:
    base_url = _http_url(table, "base_url", required=True)
    assert base_url is not None
    username = table.string("username", required=True)
    password, _ = _secret(table, base, value_key="password", file_key="password_file")
    if password is None and environ.get("GWS_PASSWORD"):
        password = Secret(environ["GWS_PASSWORD"])
    if password is None and environ.get("CREDENTIALS_DIRECTORY"):
        candidate = Path(environ["CREDENTIALS_DIRECTORY"]) / "gws-password"
        if candidate.exists():
            password = _read_secret_file(
                "$CREDENTIALS_DIRECTORY/gws-password", str(candidate), base
            )
    if password is None and not need_password:
        password = Secret("")
    if password is None:
        raise ConfigError(
            table.key("password"),
            "no password: set password or password_file, or $GWS_PASSWORD, "
            "or provide the systemd credential gws-password",
        )
    path = table.string("notifications_path", "/api/v2/notifications")
    if not path.startswith("/"):
        raise ConfigError(table.key("notifications_path"), "must start with /")
    channels = table.string_list("channels", ("/v2/me/emails",))
    for index, channel in enumerate(channels):
        if not channel.startswith("/") or channel.startswith("/meta/"):
            raise ConfigError(
                f"{table.key('channels')}[{index}]",
                f"{channel!r} is not a subscribable Bayeux channel",
            )
    ca_file_text = table.optional_string("ca_file")
    ca_file = _resolve(ca_file_text, base) if ca_file_text else None
    if ca_file is not None and not ca_file.is_file():
        raise ConfigError(table.key("ca_file"), f"{ca_file} is not a readable file")
    settings = GwsSettings(
        base_url=base_url,
        username=username,
        password=password,
        notifications_path=path.rstrip("/") or "/",
        channels=channels,
        start_session=table.boolean("start_session", True),
        request_timeout_seconds=table.number("request_timeout_seconds", 10.0, above=True),
        verify_tls=table.boolean("verify_tls", True),
        ca_file=ca_file,
        allow_websocket=table.boolean("allow_websocket", True),
        wait_at_start=table.boolean("wait_at_start", True),
        max_batch_bytes=table.integer("max_batch_bytes", 256 * 1024 * 1024, minimum=64 * 1024),
        batch_window_seconds=table.number("batch_window_seconds", 0.005),
    )
    table.finish()
    return settings


def _listen(table: _Table) -> tuple[str, int]:
    text = table.string("listen", "127.0.0.1:9410")
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(table.key("listen"), f"expected HOST:PORT, got {text!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ConfigError(
                table.key("listen"), f"host must be an IP address or localhost, got {host!r}"
            ) from None
    return host, int(port_text)


def _http(table: _Table, base: Path) -> HttpSettings:
    host, port = _listen(table)
    token_file = table.optional_string("token_file")
    token = _read_secret_file(table.key("token_file"), token_file, base) if token_file else None
    settings = HttpSettings(
        host=host,
        port=port,
        token=token,
        max_body_bytes=table.integer("max_body_bytes", 1024 * 1024, minimum=1024),
    )
    table.finish()
    return settings


def _store(table: _Table, base: Path) -> StoreSettings:
    path = _resolve(table.string("path", required=True), base)
    if path.exists() and path.is_dir():
        raise ConfigError(table.key("path"), f"{path} is a directory, expected a file path")
    settings = StoreSettings(
        path=path,
        synchronous=table.choice("synchronous", "normal", ("normal", "full")),  # type: ignore[arg-type]
        max_outbox_events=table.integer("max_outbox_events", 1_000_000, minimum=100),
        retention_hours=table.number("retention_hours", 168.0, above=True),
    )
    table.finish()
    return settings


def _sink(table: _Table, base: Path, names: set[str]) -> SinkSettings:
    name = table.string("name", required=True)
    if name in names:
        raise ConfigError(table.key("name"), f"duplicate sink name {name!r}")
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(table.key("name"), "use letters, digits, - and _ only")
    names.add(name)
    if not table.has("type"):
        raise ConfigError(table.key("type"), f"is required (one of {', '.join(SINK_TYPES)})")
    kind = table.choice("type", "jsonl", SINK_TYPES)
    common: dict[str, Any] = {
        "name": name,
        "type": kind,
        "batch_size": table.integer("batch_size", 500, minimum=1),
        "backoff_max_seconds": table.number("backoff_max_seconds", 30.0, above=True),
        "give_up_after_seconds": table.number("give_up_after_seconds", 0.0),
    }
    if kind == "jsonl":
        common["path"] = _resolve(table.string("path", required=True), base)
        common["fsync"] = table.boolean("fsync", False)
    elif kind == "webhook":
        common["url"] = _http_url(table, "url", required=True)
        common["secret"], _ = _secret(table, base, value_key="secret", file_key="secret_file")
        common["timeout_seconds"] = table.number("timeout_seconds", 10.0, above=True)
        common["headers"] = table.string_table("headers")
        common["verify_tls"] = table.boolean("verify_tls", True)
        common["batch_mode"] = table.choice("batch_mode", "single", ("single", "array"))
    table.finish()
    return SinkSettings(**common)


def load_settings(
    path: Path, environ: Mapping[str, str] | None = None, *, need_password: bool = True
) -> Settings:
    """Read and validate the config file; raise ConfigError naming the key.

    `need_password=False` is for tools that only read the store or ask the
    running daemon (status, dead-letters): they must work without the secret.
    """
    environ = os.environ if environ is None else environ
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read config file: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(str(path), "config file is not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"invalid TOML: {exc}") from None
    return settings_from_dict(
        data,
        base=path.resolve().parent,
        environ=environ,
        source=path,
        need_password=need_password,
    )


def settings_from_dict(
    data: Mapping[str, Any],
    *,
    base: Path,
    environ: Mapping[str, str],
    source: Path | None = None,
    need_password: bool = True,
) -> Settings:
    root = _Table(data, "")
    if not root.has("gws"):
        raise ConfigError("gws", "table is required")
    if not root.has("store"):
        raise ConfigError("store", "table is required (store.path)")
    gws = _gws(root.table("gws"), base, environ, need_password=need_password)
    http = _http(root.table("http"), base)
    store = _store(root.table("store"), base)

    correlation_table = root.table("correlation")
    correlation = CorrelationSettings(
        send_timeout_seconds=correlation_table.number("send_timeout_seconds", 120.0, above=True),
    )
    correlation_table.finish()

    sinks_raw = data.get("sinks", [])
    root._seen.add("sinks")
    if not isinstance(sinks_raw, list) or not all(isinstance(s, dict) for s in sinks_raw):
        raise ConfigError("sinks", "expected an array of tables ([[sinks]])")
    names: set[str] = set()
    sinks = tuple(
        _sink(_Table(raw, f"sinks[{index}]"), base, names) for index, raw in enumerate(sinks_raw)
    )

    service_table = root.table("service")
    service = ServiceSettings(
        shutdown_timeout_seconds=service_table.number("shutdown_timeout_seconds", 20.0),
    )
    service_table.finish()

    logging_table = root.table("logging")
    logging = LoggingSettings(
        level=logging_table.choice(  # type: ignore[arg-type]
            "level", "info", ("debug", "info", "warning", "error")
        ),
        format=logging_table.choice(  # type: ignore[arg-type]
            "format", "auto", ("auto", "json", "console")
        ),
    )
    logging_table.finish()
    root.finish()
    return Settings(
        gws=gws,
        http=http,
        store=store,
        correlation=correlation,
        sinks=sinks,
        service=service,
        logging=logging,
        source=source,
    )
