"""TOML configuration into typed, validated settings.

Owns: reading the file, every default, and every check. Any problem is a
`ConfigError` naming the key (`sinks[1].url`) and the reason; nothing else in
the daemon re-validates. Secrets (GWS password, webhook secret, API token) are
read here and kept in `Secret` objects whose repr never shows the value.

    settings  the frozen settings dataclasses, their defaults, `Secret`
    reader    `Table`: one TOML table read with types; unknown keys are errors
    values    URLs, listen addresses, paths and secret files
    loader    `load_settings`, `settings_from_dict` and one builder per section
    accounts  the GWS accounts: today's single one, or [[gws.accounts]]
    routing   a sink's `types` and `accounts` patterns, and the `Route` they make
    buses     the keys of the redis and nats sinks
    exposure  what exposes a secret: one in clear, a secret file others can read

Import from `daemon.config`, not from the modules inside it.
"""

from __future__ import annotations

from daemon.config.accounts import DEFAULT_ACCOUNT
from daemon.config.loader import load_settings, settings_from_dict
from daemon.config.routing import Route
from daemon.config.settings import (
    SINK_TYPES,
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
from daemon.config.values import read_secret_file

__all__ = [
    "DEFAULT_ACCOUNT",
    "SINK_TYPES",
    "AccountSettings",
    "CorrelationSettings",
    "GwsSettings",
    "HttpSettings",
    "LoggingSettings",
    "Route",
    "Secret",
    "ServiceSettings",
    "Settings",
    "SinkSettings",
    "StoreSettings",
    "load_settings",
    "read_secret_file",
    "settings_from_dict",
]
