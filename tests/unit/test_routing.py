"""Per-sink routing: the `types` and `accounts` keys, and `Route`, the rule they make."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from daemon.config import Route, settings_from_dict
from daemon.errors import ConfigError

LOG_SINK = {"name": "journal", "type": "log"}


def config(**sink_keys: Any) -> dict[str, Any]:
    return {
        "gws": {"base_url": "https://gws.example.com", "username": "a", "password": "p"},
        "store": {"path": "state.db"},
        "sinks": [{"name": "archive", "type": "log"}, {**LOG_SINK, **sink_keys}],
    }


def config_error(tmp_path: Path, **sink_keys: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        settings_from_dict(config(**sink_keys), base=tmp_path, environ={})
    return caught.value


# -- the keys --------


def test_a_sink_without_the_keys_takes_everything(tmp_path: Path) -> None:
    settings = settings_from_dict(config(), base=tmp_path, environ={})
    sink = settings.sinks[1]
    assert (sink.types, sink.accounts) == ((), ())
    assert Route.of(sink.types, sink.accounts) is None


@pytest.mark.parametrize("kind", ["jsonl", "log", "webhook", "redis", "nats"])
def test_every_sink_type_takes_types_and_accounts(kind: str, tmp_path: Path) -> None:
    required: dict[str, dict[str, Any]] = {
        "jsonl": {"path": "events.jsonl"},
        "log": {},
        "webhook": {"url": "https://crm.example.com/hook"},
        "redis": {"url": "redis://127.0.0.1:6379/0", "stream": "gws:events"},
        "nats": {"url": "nats://127.0.0.1:4222", "stream": "GWS", "subject": "gws.{type}"},
    }
    data = config(type=kind, types=["gws.email.*", "gws.call.state_changed"], accounts=["sales-*"])
    data["sinks"][1].update(required[kind])

    sink = settings_from_dict(data, base=tmp_path, environ={}).sinks[1]

    assert sink.types == ("gws.email.*", "gws.call.state_changed")
    assert sink.accounts == ("sales-*",)


@pytest.mark.parametrize(
    ("keys", "key", "reason"),
    [
        (
            {"types": ["gws.email.*", "email.*"]},
            "sinks[1].types[1]",
            '"email.*" can never match an event type: every type begins with "gws."',
        ),
        ({"types": ["gws"]}, "sinks[1].types[0]", 'every type begins with "gws."'),
        ({"types": ["Gws.*"]}, "sinks[1].types[0]", '"Gws.*" has "G"'),
        ({"types": ["gws.email."]}, "sinks[1].types[0]", "separated by single dots"),
        ({"types": ["gws..*"]}, "sinks[1].types[0]", "separated by single dots"),
        ({"types": ["gws.email.[sr]*"]}, "sinks[1].types[0]", "no [...] classes"),
        ({"types": ["gws.Email.*"]}, "sinks[1].types[0]", '"gws.Email.*" has "E"'),
        ({"types": ["gws.email.\\*"]}, "sinks[1].types[0]", "has"),
        ({"types": []}, "sinks[1].types", "must not be empty"),
        ({"types": [""]}, "sinks[1].types[0]", "expected a non-empty string"),
        ({"types": "gws.*"}, "sinks[1].types", "expected a list of strings"),
        ({"types": [3]}, "sinks[1].types[0]", "expected a non-empty string"),
        ({"accounts": ["sales-[ab]"]}, "sinks[1].accounts[0]", "no [...] classes"),
        ({"accounts": ["sales.*"]}, "sinks[1].accounts[0]", '"sales.*" has "."'),
        ({"accounts": ["x" * 65]}, "sinks[1].accounts[0]", "at most 64 characters"),
        ({"accounts": []}, "sinks[1].accounts", "must not be empty"),
    ],
)
def test_a_bad_pattern_is_refused_with_its_key(
    keys: dict[str, Any], key: str, reason: str, tmp_path: Path
) -> None:
    error = config_error(tmp_path, **keys)
    assert error.key == key
    assert reason in error.reason


@pytest.mark.parametrize(
    "pattern", ["*", "gws.*", "gws.?all.*", "*.state_changed", "gws.notification", "g*"]
)
def test_a_pattern_that_can_match_a_type_is_accepted(pattern: str, tmp_path: Path) -> None:
    settings = settings_from_dict(config(types=[pattern]), base=tmp_path, environ={})
    assert settings.sinks[1].types == (pattern,)


def test_a_changed_route_is_a_changed_sink(tmp_path: Path) -> None:
    before = settings_from_dict(config(types=["gws.email.*"]), base=tmp_path, environ={})
    after = settings_from_dict(config(types=["gws.call.*"]), base=tmp_path, environ={})
    assert before.sinks[0] == after.sinks[0]
    assert before.sinks[1] != after.sinks[1]


# -- the rule --------


def test_a_route_takes_an_event_when_both_its_type_and_account_match() -> None:
    route = Route(types=("gws.email.*", "gws.call.state_changed"), accounts=("sales-*",))

    assert route.takes("gws.email.state_changed", "sales-eu")
    assert route.takes("gws.call.state_changed", "sales-us")
    assert not route.takes("gws.call.state_changed", "support")
    assert not route.takes("gws.chat.state_changed", "sales-eu")
    assert not route.takes("gws.emailx", "sales-eu")


def test_an_empty_side_of_a_route_matches_everything() -> None:
    assert Route(types=("gws.call.*",)).takes("gws.call.state_changed", "anyone")
    assert Route(accounts=("default",)).takes("gws.notification", "default")
    assert not Route(accounts=("default",)).takes("gws.notification", "other")


def test_routes_compare_by_their_patterns_only() -> None:
    first, second = Route(types=("gws.*",)), Route(types=("gws.*",))
    first.takes("gws.email.state_changed", "default")
    assert first == second
    assert hash(first) == hash(second)


TYPES = [
    "gws.email.state_changed",
    "gws.email.send_rejected",
    "gws.call.state_changed",
    "gws.notification",
    "gws.workbin-subscription.state_changed",
    "gws.e",
]
PATTERNS = ["gws.email.*", "gws.?all.*", "*changed", "gws.*.state_changed", "gws.e", "*e*", "?"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_python_and_sqlite_glob_agree_on_every_pattern(pattern: str) -> None:
    db = sqlite3.connect(":memory:")
    try:
        by_sqlite = [t for t in TYPES if db.execute("SELECT ? GLOB ?", (t, pattern)).fetchone()[0]]
    finally:
        db.close()
    assert [t for t in TYPES if Route(types=(pattern,)).takes(t, "default")] == by_sqlite
