"""Config: TOML in, typed settings out; every error names the key and the reason."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest

from daemon.config import (
    CorrelationSettings,
    HttpSettings,
    LoggingSettings,
    Secret,
    ServiceSettings,
    Settings,
    load_settings,
    settings_from_dict,
)
from daemon.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

MINIMAL_TOML = """
[gws]
base_url = "https://gws.example.com"
username = "agent1"
password = "hunter2"

[store]
path = "state.db"
"""


def minimal() -> dict[str, Any]:
    return {
        "gws": {
            "base_url": "https://gws.example.com",
            "username": "agent1",
            "password": "hunter2",
        },
        "store": {"path": "state.db"},
    }


def build(data: dict[str, Any], tmp_path: Path, environ: dict[str, str] | None = None) -> Settings:
    return settings_from_dict(data, base=tmp_path, environ=environ or {})


def config_error(
    data: dict[str, Any], tmp_path: Path, environ: dict[str, str] | None = None
) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        build(data, tmp_path, environ)
    return caught.value


def with_value(section: str, key: str, value: Any) -> dict[str, Any]:
    data = minimal()
    data.setdefault(section, {})[key] = value
    return data


def with_sinks(*sinks: dict[str, Any]) -> dict[str, Any]:
    data = minimal()
    data["sinks"] = [copy.deepcopy(s) for s in sinks]
    return data


JSONL = {"name": "archive", "type": "jsonl", "path": "events.jsonl"}
WEBHOOK = {"name": "crm", "type": "webhook", "url": "https://crm.example.com/hooks/gws"}


# -- defaults --------


def test_a_minimal_file_gets_every_default(tmp_path: Path) -> None:
    config = tmp_path / "gws-notifyd.toml"
    config.write_text(MINIMAL_TOML)

    settings = load_settings(config, environ={})

    assert settings.gws.base_url == "https://gws.example.com"
    assert settings.gws.username == "agent1"
    assert settings.gws.password.reveal() == "hunter2"
    assert settings.gws.notifications_path == "/api/v2/notifications"
    assert settings.gws.notifications_url == "https://gws.example.com/api/v2/notifications"
    assert settings.gws.channels == ("/v2/me/emails",)
    assert settings.gws.start_session is True
    assert settings.gws.request_timeout_seconds == 10.0
    assert settings.gws.verify_tls is True
    assert settings.gws.ca_file is None
    assert settings.gws.allow_websocket is False
    assert settings.gws.wait_at_start is True
    assert settings.gws.auth_retry_seconds == 60.0
    assert settings.gws.retry_max_seconds == 15.0
    assert settings.gws.read_back_concurrency == 4
    assert settings.http == HttpSettings()
    assert settings.http.allow_unauthenticated is False
    assert settings.http.read_timeout_seconds == 30.0
    assert settings.http.max_connections == 256
    assert (settings.http.host, settings.http.port) == ("127.0.0.1", 9410)
    assert settings.http.token is None
    assert settings.store.path == tmp_path.resolve() / "state.db"
    assert settings.store.synchronous == "normal"
    assert settings.store.max_outbox_events == 1_000_000
    assert settings.store.retention_hours == 168.0
    assert settings.store.max_dead_letters == 100_000
    assert settings.store.failure_exit_seconds == 60.0
    assert settings.correlation == CorrelationSettings(120.0, 3600.0)
    assert settings.sinks == ()
    assert settings.service == ServiceSettings(20.0)
    assert settings.logging == LoggingSettings("info", "auto")
    assert settings.source == config


def test_sink_defaults_per_type(tmp_path: Path) -> None:
    settings = build(with_sinks(JSONL, WEBHOOK, {"name": "journal", "type": "log"}), tmp_path)

    jsonl, webhook, log = settings.sinks
    assert (jsonl.name, jsonl.type, jsonl.path) == ("archive", "jsonl", tmp_path / "events.jsonl")
    assert (jsonl.batch_size, jsonl.backoff_max_seconds, jsonl.give_up_after_seconds) == (
        500,
        30.0,
        0.0,
    )
    assert jsonl.fsync is False
    assert webhook.url == "https://crm.example.com/hooks/gws"
    assert webhook.secret is None
    assert webhook.timeout_seconds == 10.0
    assert webhook.headers == ()
    assert webhook.verify_tls is True
    assert webhook.batch_mode == "single"
    assert (log.name, log.type, log.path, log.url) == ("journal", "log", None, None)


def test_base_url_loses_its_trailing_slash(tmp_path: Path) -> None:
    settings = build(with_value("gws", "base_url", "https://gws.example.com:8443/"), tmp_path)
    assert settings.gws.base_url == "https://gws.example.com:8443"


def test_listen_accepts_ipv6_in_brackets_and_localhost(tmp_path: Path) -> None:
    ipv6 = build(with_value("http", "listen", "[::1]:9000"), tmp_path)
    local = build(with_value("http", "listen", "localhost:9001"), tmp_path)
    assert (ipv6.http.host, ipv6.http.port) == ("::1", 9000)
    assert (local.http.host, local.http.port) == ("localhost", 9001)


def test_webhook_headers_become_sorted_pairs(tmp_path: Path) -> None:
    sink = {**WEBHOOK, "headers": {"X-Tenant": "acme", "A-First": "1"}}
    settings = build(with_sinks(sink), tmp_path)
    assert settings.sinks[0].headers == (("A-First", "1"), ("X-Tenant", "acme"))


def test_the_annotated_example_config_loads(tmp_path: Path) -> None:
    settings = load_settings(REPO / "config" / "gws-notifyd.toml", environ={"GWS_PASSWORD": "x"})
    assert [s.name for s in settings.sinks] == ["archive", "crm"]


# -- unknown keys --------


def test_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    data = minimal()
    data["metrics"] = {"port": 9000}
    error = config_error(data, tmp_path)
    assert (error.key, error.reason) == ("metrics", "unknown key")


@pytest.mark.parametrize("section", ["gws", "http", "store", "correlation", "service", "logging"])
def test_unknown_key_in_a_table_is_named_with_its_table(section: str, tmp_path: Path) -> None:
    error = config_error(with_value(section, "colour", "blue"), tmp_path)
    assert (error.key, error.reason) == (f"{section}.colour", "unknown key")
    assert str(error) == f"{section}.colour: unknown key"


def test_unknown_key_in_a_sink_is_named_with_its_index(tmp_path: Path) -> None:
    error = config_error(with_sinks(JSONL, {**WEBHOOK, "retries": 3}), tmp_path)
    assert (error.key, error.reason) == ("sinks[1].retries", "unknown key")


def test_a_key_of_another_sink_type_is_unknown(tmp_path: Path) -> None:
    error = config_error(with_sinks({**JSONL, "url": "https://x.example.com"}), tmp_path)
    assert (error.key, error.reason) == ("sinks[0].url", "unknown key")


# -- wrong types --------


@pytest.mark.parametrize(
    ("section", "key", "value", "reason"),
    [
        ("gws", "request_timeout_seconds", "10", "expected a number, got a string"),
        ("gws", "request_timeout_seconds", True, "expected a number, got a boolean"),
        ("gws", "start_session", 1, "expected true or false, got an integer"),
        ("gws", "start_session", "yes", "expected true or false, got a string"),
        ("gws", "username", 7, "expected a string, got an integer"),
        ("gws", "channels", "/v2/me/emails", "expected a list of strings, got a string"),
        ("http", "max_body_bytes", True, "expected an integer, got a boolean"),
        ("http", "max_body_bytes", 2048.5, "expected an integer, got a number"),
        ("http", "max_body_bytes", "2048", "expected an integer, got a string"),
        ("store", "path", ["a"], "expected a string, got a list"),
        ("correlation", "send_timeout_seconds", {"s": 1}, "expected a number, got a table"),
    ],
)
def test_wrong_type_names_key_and_expected_type(
    section: str, key: str, value: Any, reason: str, tmp_path: Path
) -> None:
    error = config_error(with_value(section, key, value), tmp_path)
    assert (error.key, error.reason) == (f"{section}.{key}", reason)


def test_a_table_given_as_a_scalar_is_named(tmp_path: Path) -> None:
    data = minimal()
    data["http"] = 9410
    error = config_error(data, tmp_path)
    assert (error.key, error.reason) == ("http", "expected a table, got an integer")


def test_a_non_string_channel_is_named_with_its_index(tmp_path: Path) -> None:
    error = config_error(with_value("gws", "channels", ["/v2/me/emails", 3]), tmp_path)
    assert error.key == "gws.channels[1]"


def test_a_meta_channel_is_not_subscribable(tmp_path: Path) -> None:
    error = config_error(with_value("gws", "channels", ["/meta/connect"]), tmp_path)
    assert error.key == "gws.channels[0]"
    assert "not a subscribable Bayeux channel" in error.reason


def test_sink_number_given_as_string_is_named(tmp_path: Path) -> None:
    error = config_error(with_sinks({**JSONL, "batch_size": "10"}), tmp_path)
    assert (error.key, error.reason) == ("sinks[0].batch_size", "expected an integer, got a string")


@pytest.mark.parametrize("sinks", [{"name": "archive"}, [JSONL, "archive"]])
def test_sinks_must_be_an_array_of_tables(sinks: Any, tmp_path: Path) -> None:
    data = minimal()
    data["sinks"] = sinks
    error = config_error(data, tmp_path)
    assert (error.key, error.reason) == ("sinks", "expected an array of tables ([[sinks]])")


@pytest.mark.parametrize(
    ("section", "key", "value", "reason"),
    [
        ("gws", "request_timeout_seconds", 0, "must be greater than 0, got 0"),
        ("correlation", "send_timeout_seconds", -1, "must be greater than 0, got -1"),
        ("service", "shutdown_timeout_seconds", -0.5, "must be at least 0, got -0.5"),
        ("http", "max_body_bytes", 10, "must be at least 1024, got 10"),
        ("store", "max_outbox_events", 5, "must be at least 100, got 5"),
    ],
)
def test_out_of_range_numbers_are_named(
    section: str, key: str, value: Any, reason: str, tmp_path: Path
) -> None:
    error = config_error(with_value(section, key, value), tmp_path)
    assert (error.key, error.reason) == (f"{section}.{key}", reason)


def test_nan_is_not_a_valid_timeout(tmp_path: Path) -> None:
    error = config_error(with_value("correlation", "send_timeout_seconds", math.nan), tmp_path)
    assert error.key == "correlation.send_timeout_seconds"


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("store", "synchronous", "off"),
        ("logging", "level", "trace"),
        ("logging", "format", "xml"),
    ],
)
def test_a_value_outside_its_choices_lists_the_choices(
    section: str, key: str, value: str, tmp_path: Path
) -> None:
    error = config_error(with_value(section, key, value), tmp_path)
    assert error.key == f"{section}.{key}"
    assert error.reason.startswith("must be one of ")
    assert repr(value) in error.reason


# -- URLs --------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://gws.example.com", "must be an http:// or https:// URL with a host"),
        ("gws.example.com", "must be an http:// or https:// URL with a host"),
        ("https://", "must be an http:// or https:// URL with a host"),
        ("https:///api", "must be an http:// or https:// URL with a host"),
        ("https://gws.example.com/?tenant=1", "must not have a query or fragment"),
        ("https://gws.example.com/#top", "must not have a query or fragment"),
        ("https://gws.example.com:99999", "has an invalid port"),
        ("", "must not be empty"),
    ],
)
def test_bad_base_url_is_named_with_the_reason(url: str, reason: str, tmp_path: Path) -> None:
    error = config_error(with_value("gws", "base_url", url), tmp_path)
    assert (error.key, error.reason) == ("gws.base_url", reason)


@pytest.mark.parametrize(
    "url", ["https://agent1:hunter2@gws.example.com", "https://agent1@gws.example.com"]
)
def test_credentials_in_a_url_are_refused_without_echoing_them(url: str, tmp_path: Path) -> None:
    error = config_error(with_value("gws", "base_url", url), tmp_path)
    assert error.key == "gws.base_url"
    assert "must not carry credentials" in error.reason
    assert "hunter2" not in str(error)


@pytest.mark.parametrize("url", ["http://[::1", "http://[not-an-ip]/"])
def test_malformed_ipv6_url_is_a_config_error(url: str, tmp_path: Path) -> None:
    error = config_error(with_value("gws", "base_url", url), tmp_path)
    assert error.key == "gws.base_url"


def test_bad_sink_url_is_named_with_its_index(tmp_path: Path) -> None:
    error = config_error(with_sinks(JSONL, {**WEBHOOK, "url": "ftp://crm.example.com"}), tmp_path)
    assert (error.key, error.reason) == (
        "sinks[1].url",
        "must be an http:// or https:// URL with a host",
    )


# -- listen --------


@pytest.mark.parametrize(
    "listen", ["9410", "127.0.0.1", ":9410", "127.0.0.1:70000", "127.0.0.1:http", "127.0.0.1:"]
)
def test_listen_must_be_host_and_port(listen: str, tmp_path: Path) -> None:
    error = config_error(with_value("http", "listen", listen), tmp_path)
    assert error.key == "http.listen"
    assert error.reason == f"expected HOST:PORT, got {listen!r}"


def test_listen_host_must_be_an_address_not_a_name(tmp_path: Path) -> None:
    error = config_error(with_value("http", "listen", "example.com:9410"), tmp_path)
    assert error.key == "http.listen"
    assert "host must be an IP address or localhost" in error.reason


@pytest.mark.parametrize("listen", ["0.0.0.0:9410", "[::]:9410", "192.0.2.7:9410"])
def test_listen_beyond_loopback_without_a_token_is_refused(listen: str, tmp_path: Path) -> None:
    error = config_error(with_value("http", "listen", listen), tmp_path)
    assert error.key == "http.listen"
    assert "is reachable beyond this host: set token_file" in error.reason


def test_listen_beyond_loopback_with_a_token_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("s3cret-token\n")
    data = with_value("http", "listen", "0.0.0.0:9410")
    data["http"]["token_file"] = "token"
    settings = build(data, tmp_path)
    assert (settings.http.host, settings.http.on_loopback) == ("0.0.0.0", False)


def test_listen_beyond_loopback_unauthenticated_only_when_asked_by_name(tmp_path: Path) -> None:
    data = with_value("http", "listen", "0.0.0.0:9410")
    data["http"]["allow_unauthenticated"] = True
    settings = build(data, tmp_path)
    assert settings.http.allow_unauthenticated
    assert settings.http.token is None


# -- password --------


def without_password() -> dict[str, Any]:
    data = minimal()
    del data["gws"]["password"]
    return data


def test_missing_password_names_every_way_to_give_one(tmp_path: Path) -> None:
    error = config_error(without_password(), tmp_path)
    assert error.key == "gws.password"
    for way in ("password_file", "$GWS_PASSWORD", "gws-password"):
        assert way in error.reason


def test_tools_that_need_no_password_get_an_empty_one(tmp_path: Path) -> None:
    settings = settings_from_dict(
        without_password(), base=tmp_path, environ={}, need_password=False
    )
    assert settings.gws.password.reveal() == ""


def test_a_given_password_is_kept_when_none_is_needed(tmp_path: Path) -> None:
    settings = settings_from_dict(minimal(), base=tmp_path, environ={}, need_password=False)
    assert settings.gws.password.reveal() == "hunter2"


def test_password_from_password_file_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "gws-password").write_text("from-file\n")
    data = without_password()
    data["gws"]["password_file"] = "gws-password"
    assert build(data, tmp_path).gws.password.reveal() == "from-file"


def test_password_file_uses_its_first_line(tmp_path: Path) -> None:
    (tmp_path / "gws-password").write_text("first\nsecond\n")
    data = without_password()
    data["gws"]["password_file"] = "gws-password"
    assert build(data, tmp_path).gws.password.reveal() == "first"


def test_password_from_environment(tmp_path: Path) -> None:
    settings = build(without_password(), tmp_path, {"GWS_PASSWORD": "from-env"})
    assert settings.gws.password.reveal() == "from-env"


def test_password_from_systemd_credentials_directory(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "gws-password").write_text("from-systemd\n")
    settings = build(without_password(), tmp_path, {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert settings.gws.password.reveal() == "from-systemd"


def test_password_in_file_wins_over_environment(tmp_path: Path) -> None:
    settings = build(minimal(), tmp_path, {"GWS_PASSWORD": "from-env"})
    assert settings.gws.password.reveal() == "hunter2"


def test_environment_wins_over_credentials_directory(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "gws-password").write_text("from-systemd")
    environ = {"GWS_PASSWORD": "from-env", "CREDENTIALS_DIRECTORY": str(credentials)}
    assert build(without_password(), tmp_path, environ).gws.password.reveal() == "from-env"


def test_empty_credential_file_is_named(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "gws-password").write_text("\n")
    error = config_error(without_password(), tmp_path, {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert error.key == "$CREDENTIALS_DIRECTORY/gws-password"
    assert error.reason.endswith("is empty")


def test_password_and_password_file_together_are_refused(tmp_path: Path) -> None:
    (tmp_path / "gws-password").write_text("from-file")
    error = config_error(with_value("gws", "password_file", "gws-password"), tmp_path)
    assert error.key == "gws.password_file"
    assert error.reason == "set either password or password_file, not both"


def test_unreadable_password_file_is_named_without_a_secret(tmp_path: Path) -> None:
    data = without_password()
    data["gws"]["password_file"] = "missing-password"
    error = config_error(data, tmp_path)
    assert error.key == "gws.password_file"
    assert error.reason.startswith(f"cannot read {tmp_path / 'missing-password'}")


def test_empty_password_is_refused(tmp_path: Path) -> None:
    error = config_error(with_value("gws", "password", "  "), tmp_path)
    assert (error.key, error.reason) == ("gws.password", "must not be empty")


def test_webhook_secret_file_and_secret_together_are_refused(tmp_path: Path) -> None:
    (tmp_path / "hook-secret").write_text("s")
    sink = {**WEBHOOK, "secret": "s", "secret_file": "hook-secret"}
    error = config_error(with_sinks(sink), tmp_path)
    assert error.key == "sinks[0].secret_file"


def test_webhook_secret_from_file(tmp_path: Path) -> None:
    (tmp_path / "hook-secret").write_text("shh\n")
    settings = build(with_sinks({**WEBHOOK, "secret_file": "hook-secret"}), tmp_path)
    secret = settings.sinks[0].secret
    assert secret is not None
    assert secret.reveal() == "shh"


def test_http_token_from_token_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("tok\n")
    settings = build(with_value("http", "token_file", "token"), tmp_path)
    assert settings.http.token == Secret("tok")


def test_unreadable_token_file_is_named(tmp_path: Path) -> None:
    error = config_error(with_value("http", "token_file", "nope"), tmp_path)
    assert error.key == "http.token_file"
    assert error.reason.startswith("cannot read")


def test_missing_ca_file_is_named(tmp_path: Path) -> None:
    error = config_error(with_value("gws", "ca_file", "ca.pem"), tmp_path)
    assert error.key == "gws.ca_file"


# -- secrets never show --------


def test_secret_never_shows_its_value() -> None:
    secret = Secret("hunter2")
    assert "hunter2" not in repr(secret)
    assert "hunter2" not in str(secret)
    assert "hunter2" not in f"{secret}"
    assert secret.reveal() == "hunter2"


def test_settings_repr_shows_no_secret(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("api-token-value")
    data = with_sinks({**WEBHOOK, "secret": "hook-secret-value"})
    data["http"] = {"token_file": "token"}
    settings = build(data, tmp_path)
    text = repr(settings)
    for value in ("hunter2", "hook-secret-value", "api-token-value"):
        assert value not in text


def test_secrets_compare_by_value() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"


# -- files, TOML, required tables --------


def test_unreadable_config_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert caught.value.key == str(path)
    assert caught.value.reason.startswith("cannot read config file")


def test_config_path_that_cannot_be_read_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "conf.d"
    path.mkdir()
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert caught.value.key == str(path)
    assert caught.value.reason.startswith("cannot read config file")


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[gws\nbase_url = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert caught.value.key == str(path)
    assert caught.value.reason.startswith("invalid TOML")


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(MINIMAL_TOML.encode() + b"\n# caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert caught.value.reason == "config file is not UTF-8"


def test_of_several_mistakes_the_first_in_reading_order_is_reported(tmp_path: Path) -> None:
    data = minimal()
    data["gws"]["channels"] = ["/meta/connect"]
    data["http"] = {"listen": "nowhere"}
    data["store"]["max_outbox_events"] = 1
    data["correlation"] = {"send_timeout_seconds": 0}
    data["sinks"] = [{**JSONL, "batch_size": 0}]
    data["service"] = {"shutdown_timeout_seconds": -1}
    data["logging"] = {"level": "loud"}
    data["colour"] = "blue"
    mend_in_turn = [
        ("gws.channels[0]", ("gws", "channels")),
        ("http.listen", ("http",)),
        ("store.max_outbox_events", ("store", "max_outbox_events")),
        ("correlation.send_timeout_seconds", ("correlation",)),
        ("sinks[0].batch_size", ("sinks",)),
        ("service.shutdown_timeout_seconds", ("service",)),
        ("logging.level", ("logging",)),
        ("colour", ("colour",)),
    ]
    for key, (*parents, last) in mend_in_turn:
        assert config_error(data, tmp_path).key == key
        table = data
        for parent in parents:
            table = table[parent]
        del table[last]
    assert build(data, tmp_path).sinks == ()


@pytest.mark.parametrize("table", ["gws", "store"])
def test_required_tables_are_named(table: str, tmp_path: Path) -> None:
    data = minimal()
    del data[table]
    error = config_error(data, tmp_path)
    assert error.key == table
    assert error.reason.startswith("table is required")


@pytest.mark.parametrize("key", ["base_url", "username"])
def test_required_gws_keys_are_named(key: str, tmp_path: Path) -> None:
    data = minimal()
    del data["gws"][key]
    error = config_error(data, tmp_path)
    assert (error.key, error.reason) == (f"gws.{key}", "is required")


def test_store_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state.db").mkdir()
    error = config_error(minimal(), tmp_path)
    assert error.key == "store.path"
    assert "is a directory" in error.reason


# -- sinks --------


def test_duplicate_sink_names_are_refused_at_the_second(tmp_path: Path) -> None:
    error = config_error(with_sinks(JSONL, {**WEBHOOK, "name": "archive"}), tmp_path)
    assert (error.key, error.reason) == ("sinks[1].name", "duplicate sink name 'archive'")


def test_unknown_sink_type_lists_the_known_ones(tmp_path: Path) -> None:
    error = config_error(with_sinks({"name": "queue", "type": "kafka"}), tmp_path)
    assert error.key == "sinks[0].type"
    assert error.reason == "must be one of jsonl, log, webhook, redis, nats; got 'kafka'"


def test_missing_sink_type_is_named(tmp_path: Path) -> None:
    error = config_error(with_sinks({"name": "queue"}), tmp_path)
    assert error.key == "sinks[0].type"
    assert error.reason.startswith("is required")


def test_missing_sink_name_is_named(tmp_path: Path) -> None:
    error = config_error(with_sinks({"type": "log"}), tmp_path)
    assert (error.key, error.reason) == ("sinks[0].name", "is required")


def test_sink_name_with_odd_characters_is_refused(tmp_path: Path) -> None:
    error = config_error(with_sinks({"name": "my sink", "type": "log"}), tmp_path)
    assert error.key == "sinks[0].name"


@pytest.mark.parametrize(
    ("sink", "key"),
    [
        ({"name": "archive", "type": "jsonl"}, "sinks[0].path"),
        ({"name": "crm", "type": "webhook"}, "sinks[0].url"),
    ],
)
def test_missing_per_type_key_is_named(sink: dict[str, Any], key: str, tmp_path: Path) -> None:
    error = config_error(with_sinks(sink), tmp_path)
    assert (error.key, error.reason) == (key, "is required")


def test_non_string_header_value_is_named(tmp_path: Path) -> None:
    error = config_error(with_sinks({**WEBHOOK, "headers": {"X-Count": 3}}), tmp_path)
    assert error.key == "sinks[0].headers.X-Count"


def test_sink_batch_size_must_be_positive(tmp_path: Path) -> None:
    error = config_error(with_sinks({**JSONL, "batch_size": 0}), tmp_path)
    assert (error.key, error.reason) == ("sinks[0].batch_size", "must be at least 1, got 0")
