"""What in a valid config exposes a secret: a secret in clear, a secret file others can read.

Neither stops the daemon (a warning, not a `ConfigError`): `load_settings` puts
them in `Settings.warnings`, `gws-notifyd check` prints them and `run` logs
them at start. Each names the key and, for a file, its path and mode; never
the secret.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from daemon.config.values import resolve

# Keys whose value is a secret, beside the key naming a file that holds it.
SECRET_VALUES = {"password": "password_file", "secret": "secret_file", "token": "token_file"}
SECRET_FILES = ("password_file", "secret_file", "token_file", "creds_file")


def _tables(data: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for name in ("gws", "http"):
        table = data.get(name)
        if isinstance(table, Mapping):
            yield name, table
    sinks = data.get("sinks")
    if isinstance(sinks, list):
        for index, table in enumerate(sinks):
            if isinstance(table, Mapping):
                yield f"sinks[{index}]", table


def _file_warning(key: str, path: Path) -> str | None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None  # reading it is the loader's business, and it has read it
    if not mode & 0o077:
        return None
    return (
        f"{key}: {path} is open to group or others (mode {mode:04o}); "
        "make it readable by the daemon's user only (chmod 600)"
    )


def exposure_warnings(data: Mapping[str, Any], base: Path) -> tuple[str, ...]:
    """One line per secret in clear and per secret file others may read, in config order."""
    warnings: list[str] = []
    for prefix, table in _tables(data):
        for name, file_key in SECRET_VALUES.items():
            if isinstance(table.get(name), str):
                warnings.append(
                    f"{prefix}.{name}: a secret in clear in the config file; "
                    f"put it in a file named by {file_key} (0600), or a systemd credential"
                )
        for name in SECRET_FILES:
            value = table.get(name)
            if isinstance(value, str):
                warning = _file_warning(f"{prefix}.{name}", resolve(value, base))
                if warning is not None:
                    warnings.append(warning)
    return tuple(warnings)
