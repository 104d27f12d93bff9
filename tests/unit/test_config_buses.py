"""Config of the bus sinks (redis, nats): their keys, templates and credentials."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from daemon.config import Settings, settings_from_dict
from daemon.errors import ConfigError

REDIS: dict[str, Any] = {
    "name": "bus",
    "type": "redis",
    "url": "redis://127.0.0.1:6379/0",
    "stream": "gws:{account}:events",
}
NATS: dict[str, Any] = {
    "name": "stream",
    "type": "nats",
    "url": "nats://127.0.0.1:4222",
    "subject": "gws.{account}.{type}",
    "stream": "GWS",
}


def build(sink: dict[str, Any], tmp_path: Path) -> Settings:
    data = {
        "gws": {"base_url": "https://gws.example.com", "username": "a", "password": "p"},
        "store": {"path": "state.db"},
        "sinks": [sink],
    }
    return settings_from_dict(data, base=tmp_path, environ={})


def error(sink: dict[str, Any], tmp_path: Path) -> tuple[str, str]:
    with pytest.raises(ConfigError) as caught:
        build(sink, tmp_path)
    return caught.value.key, caught.value.reason


def test_redis_sink_gets_its_defaults(tmp_path: Path) -> None:
    [sink] = build(REDIS, tmp_path).sinks
    assert (sink.type, sink.url, sink.stream) == ("redis", REDIS["url"], REDIS["stream"])
    assert (sink.maxlen, sink.dedup_window_seconds, sink.password) == (1_000_000, 86_400, None)


def test_redis_password_comes_from_its_file(tmp_path: Path) -> None:
    (tmp_path / "redis-password").write_text("s3cret\n")
    [sink] = build({**REDIS, "password_file": "redis-password"}, tmp_path).sinks
    assert sink.password is not None
    assert sink.password.reveal() == "s3cret"


def test_redis_url_must_not_carry_a_password(tmp_path: Path) -> None:
    key, reason = error({**REDIS, "url": "redis://user:pw@127.0.0.1:6379/0"}, tmp_path)
    assert (key, reason) == ("sinks[0].url", "must not carry a password; use password_file")


def test_redis_url_needs_a_redis_scheme(tmp_path: Path) -> None:
    key, reason = error({**REDIS, "url": "http://127.0.0.1:6379"}, tmp_path)
    assert (key, reason) == ("sinks[0].url", "must be a redis:// or rediss:// URL")


def test_a_template_may_use_account_and_type_only(tmp_path: Path) -> None:
    key, reason = error({**REDIS, "stream": "gws:{tenant}"}, tmp_path)
    assert (key, reason) == (
        "sinks[0].stream",
        "unknown placeholder {tenant}; use {account} and {type}",
    )


def test_nats_takes_one_url_or_a_list(tmp_path: Path) -> None:
    [one] = build(NATS, tmp_path).sinks
    [several] = build({**NATS, "url": ["nats://a:4222", "tls://b:4222"]}, tmp_path).sinks
    assert one.servers == ("nats://127.0.0.1:4222",)
    assert several.servers == ("nats://a:4222", "tls://b:4222")


def test_nats_create_stream_needs_subjects(tmp_path: Path) -> None:
    key, reason = error({**NATS, "create_stream": True}, tmp_path)
    assert (key, reason) == ("sinks[0].subjects", "is required with create_stream = true")


def test_nats_takes_one_kind_of_credential(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t0ken\n")
    key, reason = error({**NATS, "token_file": "token", "user": "gws"}, tmp_path)
    assert (key, reason) == (
        "sinks[0].user",
        "set one of token_file, user, creds_file (token is set)",
    )


def test_nats_user_and_password_file(tmp_path: Path) -> None:
    (tmp_path / "nats-password").write_text("pw\n")
    [sink] = build({**NATS, "user": "gws", "password_file": "nats-password"}, tmp_path).sinks
    assert sink.user == "gws"
    assert sink.password is not None
    assert sink.password.reveal() == "pw"


def test_nats_password_needs_a_user(tmp_path: Path) -> None:
    (tmp_path / "nats-password").write_text("pw\n")
    key, reason = error({**NATS, "password_file": "nats-password"}, tmp_path)
    assert (key, reason) == ("sinks[0].password_file", "needs user")
