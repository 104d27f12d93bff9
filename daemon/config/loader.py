"""The config file into `Settings`: which keys each section has, and their checks.

A missing key takes the default its settings class declares (read from
`GWS_DEFAULTS` and the like, so that each default is written once). Sections
are read in a fixed order (gws, http, store, correlation, sinks, service,
logging), so of several mistakes the same one is always reported. Every
section ends with `Table.finish()`: an unknown key is an error.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from daemon.config.accounts import DEFAULT_ACCOUNT, channels, read_accounts
from daemon.config.buses import nats_fields, redis_fields
from daemon.config.exposure import exposure_warnings
from daemon.config.reader import Table
from daemon.config.routing import route_fields
from daemon.config.settings import (
    CORRELATION_DEFAULTS,
    GWS_DEFAULTS,
    HTTP_DEFAULTS,
    LOGGING_DEFAULTS,
    SERVICE_DEFAULTS,
    SINK_DEFAULTS,
    SINK_TYPES,
    STORE_DEFAULTS,
    AccountSettings,
    CorrelationSettings,
    GwsSettings,
    HttpSettings,
    LoggingSettings,
    Secret,
    ServiceSettings,
    Settings,
    SinkSettings,
    StoreSettings,
)
from daemon.config.values import http_url, listen_address, read_secret_file, resolve, secret
from daemon.errors import ConfigError


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
    root = Table(data, "")
    if not root.has("gws"):
        raise ConfigError("gws", "table is required")
    if not root.has("store"):
        raise ConfigError("store", "table is required (store.path)")
    gws, accounts = _gws(root.table("gws"), base, environ, need_password=need_password)
    http = _http(root.table("http"), base)
    store = _store(root.table("store"), base)
    correlation = _correlation(root.table("correlation"))
    names: set[str] = set()
    sinks = tuple(_sink(table, base, names) for table in root.tables("sinks"))
    service = _service(root.table("service"))
    logging = _logging(root.table("logging"))
    root.finish()
    return Settings(
        gws=gws,
        accounts=accounts,
        http=http,
        store=store,
        correlation=correlation,
        sinks=sinks,
        service=service,
        logging=logging,
        source=source,
        warnings=exposure_warnings(data, base),
    )


# -- [gws] -----------------------------------------------------------------------------


def _gws(
    table: Table, base: Path, environ: Mapping[str, str], *, need_password: bool
) -> tuple[GwsSettings, tuple[AccountSettings, ...]]:
    """What `[gws]` shares, and its accounts (`daemon.config.accounts`)."""
    default = GWS_DEFAULTS
    base_url = http_url(table, "base_url")
    path = table.string("notifications_path", default.notifications_path)
    if not path.startswith("/"):
        raise ConfigError(table.key("notifications_path"), "must start with /")
    ca_file = _ca_file(table, base)
    shared = GwsSettings(
        base_url=base_url,
        username="",
        password=Secret(""),
        notifications_path=path.rstrip("/") or "/",
        channels=channels(table, default.channels),
        start_session=table.boolean("start_session", default.start_session),
        request_timeout_seconds=table.number(
            "request_timeout_seconds", default.request_timeout_seconds, above=True
        ),
        verify_tls=table.boolean("verify_tls", default.verify_tls),
        ca_file=ca_file,
        allow_websocket=table.boolean("allow_websocket", default.allow_websocket),
        wait_at_start=table.boolean("wait_at_start", default.wait_at_start),
        auth_retry_seconds=table.number(
            "auth_retry_seconds", default.auth_retry_seconds, above=True
        ),
        retry_max_seconds=table.number("retry_max_seconds", default.retry_max_seconds, above=True),
        read_back_concurrency=table.integer(
            "read_back_concurrency", default.read_back_concurrency, minimum=1
        ),
        max_batch_bytes=table.integer(
            "max_batch_bytes", default.max_batch_bytes, minimum=64 * 1024
        ),
        batch_window_seconds=table.number("batch_window_seconds", default.batch_window_seconds),
        handshakes_per_second=table.number(
            "handshakes_per_second", default.handshakes_per_second, above=True
        ),
    )
    accounts = read_accounts(table, shared, base, environ, need_password=need_password)
    table.finish()
    if len(accounts) == 1 and accounts[0].name == DEFAULT_ACCOUNT:
        return accounts[0].gws, accounts  # today's form: [gws] is the account
    return shared, accounts


def _ca_file(table: Table, base: Path) -> Path | None:
    ca_file_text = table.optional_string("ca_file")
    ca_file = resolve(ca_file_text, base) if ca_file_text else None
    if ca_file is not None and not ca_file.is_file():
        raise ConfigError(table.key("ca_file"), f"{ca_file} is not a readable file")
    return ca_file


# -- [http], [store], [correlation], [service], [logging] ------------------------------


def _http(table: Table, base: Path) -> HttpSettings:
    default = HTTP_DEFAULTS
    host, port = listen_address(table, "listen", f"{default.host}:{default.port}")
    token_file = table.optional_string("token_file")
    token = read_secret_file(table.key("token_file"), token_file, base) if token_file else None
    settings = HttpSettings(
        host=host,
        port=port,
        token=token,
        max_body_bytes=table.integer("max_body_bytes", default.max_body_bytes, minimum=1024),
        allow_unauthenticated=table.boolean("allow_unauthenticated", default.allow_unauthenticated),
        read_timeout_seconds=table.number(
            "read_timeout_seconds", default.read_timeout_seconds, above=True
        ),
        max_connections=table.integer("max_connections", default.max_connections, minimum=8),
    )
    if token is None and not settings.on_loopback and not settings.allow_unauthenticated:
        # Anyone who can reach the port could send email as the agent.
        raise ConfigError(
            table.key("listen"),
            f"{host} is reachable beyond this host: set token_file, "
            "or allow_unauthenticated = true to accept Sends from anyone who can connect",
        )
    table.finish()
    return settings


def _store(table: Table, base: Path) -> StoreSettings:
    default = STORE_DEFAULTS
    path = resolve(table.string("path"), base)
    if path.exists() and path.is_dir():
        raise ConfigError(table.key("path"), f"{path} is a directory, expected a file path")
    settings = StoreSettings(
        path=path,
        synchronous=table.choice("synchronous", default.synchronous, ("normal", "full")),  # type: ignore[arg-type]
        max_outbox_events=table.integer(
            "max_outbox_events", default.max_outbox_events, minimum=100
        ),
        retention_hours=table.number("retention_hours", default.retention_hours, above=True),
        max_dead_letters=table.integer("max_dead_letters", default.max_dead_letters, minimum=100),
        failure_exit_seconds=table.number(
            "failure_exit_seconds", default.failure_exit_seconds, above=True
        ),
        busy_timeout_seconds=table.number(
            "busy_timeout_seconds", default.busy_timeout_seconds, above=True
        ),
    )
    table.finish()
    return settings


def _correlation(table: Table) -> CorrelationSettings:
    default = CORRELATION_DEFAULTS
    settings = CorrelationSettings(
        send_timeout_seconds=table.number(
            "send_timeout_seconds", default.send_timeout_seconds, above=True
        ),
        read_back_give_up_seconds=table.number(
            "read_back_give_up_seconds", default.read_back_give_up_seconds, above=True
        ),
    )
    table.finish()
    return settings


def _service(table: Table) -> ServiceSettings:
    default = SERVICE_DEFAULTS
    settings = ServiceSettings(
        shutdown_timeout_seconds=table.number(
            "shutdown_timeout_seconds", default.shutdown_timeout_seconds
        ),
    )
    table.finish()
    return settings


def _logging(table: Table) -> LoggingSettings:
    default = LOGGING_DEFAULTS
    settings = LoggingSettings(
        level=table.choice(  # type: ignore[arg-type]
            "level", default.level, ("debug", "info", "warning", "error")
        ),
        format=table.choice(  # type: ignore[arg-type]
            "format", default.format, ("auto", "json", "console")
        ),
    )
    table.finish()
    return settings


# -- [[sinks]] -------------------------------------------------------------------------


def _sink(table: Table, base: Path, names: set[str]) -> SinkSettings:
    default = SINK_DEFAULTS
    name = _sink_name(table, names)
    if not table.has("type"):
        raise ConfigError(table.key("type"), f"is required (one of {', '.join(SINK_TYPES)})")
    kind = table.choice("type", "jsonl", SINK_TYPES)
    fields: dict[str, Any] = {
        "name": name,
        "type": kind,
        "batch_size": table.integer("batch_size", default.batch_size, minimum=1),
        "backoff_max_seconds": table.number(
            "backoff_max_seconds", default.backoff_max_seconds, above=True
        ),
        "give_up_after_seconds": table.number(
            "give_up_after_seconds", default.give_up_after_seconds
        ),
        **route_fields(table),
    }
    if kind == "jsonl":
        fields.update(_jsonl_fields(table, base))
    elif kind == "webhook":
        fields.update(_webhook_fields(table, base))
    elif kind == "redis":
        fields.update(redis_fields(table, base))
    elif kind == "nats":
        fields.update(nats_fields(table, base))
    table.finish()
    return SinkSettings(**fields)


def _sink_name(table: Table, names: set[str]) -> str:
    """The sink's name, unique among the sinks read so far (`names`, updated)."""
    name = table.string("name")
    if name in names:
        raise ConfigError(table.key("name"), f"duplicate sink name {name!r}")
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(table.key("name"), "use letters, digits, - and _ only")
    names.add(name)
    return name


def _jsonl_fields(table: Table, base: Path) -> dict[str, Any]:
    default = SINK_DEFAULTS
    return {
        "path": resolve(table.string("path"), base),
        "fsync": table.boolean("fsync", default.fsync),
    }


def _webhook_fields(table: Table, base: Path) -> dict[str, Any]:
    default = SINK_DEFAULTS
    return {
        "url": http_url(table, "url"),
        "secret": secret(table, base, value_key="secret", file_key="secret_file"),
        "timeout_seconds": table.number("timeout_seconds", default.timeout_seconds, above=True),
        "headers": table.string_table("headers"),
        "verify_tls": table.boolean("verify_tls", default.verify_tls),
        "batch_mode": table.choice("batch_mode", default.batch_mode, ("single", "array")),
    }
