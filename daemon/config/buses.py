"""The keys of the bus sinks: `type = "redis"` (Redis Streams) and `type = "nats"` (JetStream).

Their client libraries are optional extras; a sink whose library is missing
is a config error that names the install command, so `check` finds it
before `run` does.
"""

from __future__ import annotations

import importlib
import string
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from daemon.config.reader import Table
from daemon.config.settings import SINK_DEFAULTS
from daemon.config.values import resolve, secret
from daemon.errors import ConfigError

# Which library each bus sink needs, and how to get it.
CLIENTS = {
    "redis": ("redis", "pip install 'gws-notifyd[redis]'"),
    "nats": ("nats", "pip install 'gws-notifyd[nats]'"),
}
TEMPLATE_FIELDS = frozenset({"account", "type"})


def require_client(table: Table, kind: str) -> None:
    module, install = CLIENTS[kind]
    try:
        importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            table.key("type"), f"{kind} sinks need the {module} client: {install}"
        ) from None


def template(table: Table, name: str) -> str:
    """A stream or subject name, with `{account}` and `{type}` allowed in it."""
    value = table.string(name)
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(value) if field is not None}
    except ValueError as exc:
        raise ConfigError(table.key(name), f"is not a valid template ({exc})") from None
    unknown = fields - TEMPLATE_FIELDS
    if unknown:
        raise ConfigError(
            table.key(name),
            f"unknown placeholder {{{sorted(unknown)[0]}}}; use {{account}} and {{type}}",
        )
    return value


def _bus_url(key: str, value: str, schemes: tuple[str, ...]) -> str:
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError as exc:
        raise ConfigError(key, f"is not a valid URL ({exc})") from None
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(key, f"must be a {' or '.join(s + '://' for s in schemes)} URL")
    if parts.password:
        # A password in a URL ends up in logs and error messages.
        raise ConfigError(key, "must not carry a password; use password_file")
    return value


def redis_fields(table: Table, base: Path) -> dict[str, Any]:
    default = SINK_DEFAULTS
    require_client(table, "redis")
    return {
        "url": _bus_url(table.key("url"), table.string("url"), ("redis", "rediss")),
        "password": secret(table, base, value_key="password", file_key="password_file"),
        "stream": template(table, "stream"),
        "maxlen": table.integer("maxlen", default.maxlen),
        "dedup_window_seconds": table.integer(
            "dedup_window_seconds", default.dedup_window_seconds, minimum=1
        ),
        "timeout_seconds": table.number("timeout_seconds", default.timeout_seconds, above=True),
    }


def _nats_servers(table: Table) -> tuple[str, ...]:
    urls = table.string_list("url", ()) if table.is_list("url") else (table.string("url"),)
    if not urls:
        raise ConfigError(table.key("url"), "needs at least one server")
    return tuple(
        _bus_url(f"{table.key('url')}[{i}]", url, ("nats", "tls")) for i, url in enumerate(urls)
    )


def _nats_credentials(table: Table, base: Path) -> dict[str, Any]:
    token = secret(table, base, value_key="token", file_key="token_file")
    user = table.optional_string("user")
    password = secret(table, base, value_key="password", file_key="password_file")
    creds = table.optional_string("creds_file")
    given = [
        name for name, value in (("token", token), ("user", user), ("creds_file", creds)) if value
    ]
    if len(given) > 1:
        raise ConfigError(
            table.key(given[1]), f"set one of token_file, user, creds_file ({given[0]} is set)"
        )
    if password is not None and user is None:
        raise ConfigError(table.key("password_file"), "needs user")
    return {
        "token": token,
        "user": user,
        "password": password,
        "creds_file": resolve(creds, base) if creds else None,
    }


def nats_fields(table: Table, base: Path) -> dict[str, Any]:
    default = SINK_DEFAULTS
    require_client(table, "nats")
    create = table.boolean("create_stream", default.create_stream)
    subjects = table.string_list("subjects", ())
    if create and not subjects:
        raise ConfigError(table.key("subjects"), "is required with create_stream = true")
    return {
        "servers": _nats_servers(table),
        "subject": template(table, "subject"),
        "stream": table.string("stream"),
        "create_stream": create,
        "subjects": subjects,
        "duplicate_window_seconds": table.number(
            "duplicate_window_seconds", default.duplicate_window_seconds, above=True
        ),
        "timeout_seconds": table.number("timeout_seconds", default.timeout_seconds, above=True),
        **_nats_credentials(table, base),
    }
