"""Values that are more than their TOML type: URLs, listen addresses, paths, secrets.

Each reads one key of a `Table` and raises `ConfigError` naming it. A secret is
read from its file here and leaves only inside a `Secret`; no message carries
its value.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

from daemon.config.reader import Table
from daemon.config.settings import Secret
from daemon.errors import ConfigError


def http_url(table: Table, name: str) -> str:
    """A required http(s) URL with a host, without its trailing slash."""
    value = table.string(name)
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


def listen_address(table: Table, name: str, default: str) -> tuple[str, int]:
    """`HOST:PORT` where HOST is an IP address (IPv6 in brackets or not) or localhost."""
    text = table.string(name, default)
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(table.key(name), f"expected HOST:PORT, got {text!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ConfigError(
                table.key(name), f"host must be an IP address or localhost, got {host!r}"
            ) from None
    return host, int(port_text)


def resolve(path_text: str, base: Path) -> Path:
    """A path from the config: `~` expanded, relative ones taken from `base`."""
    path = Path(path_text).expanduser()
    return path if path.is_absolute() else Path(os.path.normpath(base / path))


def read_secret_file(key: str, path_text: str, base: Path) -> Secret:
    path = resolve(path_text, base)
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


def secret(table: Table, base: Path, *, value_key: str, file_key: str) -> Secret | None:
    """The secret from `value_key` or `file_key` (never both), or None if neither is set."""
    value = table.optional_string(value_key)
    file_value = table.optional_string(file_key)
    if value is not None and file_value is not None:
        raise ConfigError(table.key(file_key), f"set either {value_key} or {file_key}, not both")
    if value is not None:
        return Secret(value)
    if file_value is not None:
        return read_secret_file(table.key(file_key), file_value, base)
    return None
