"""The `gws-notifyd` command as users run it: exit codes, error lines, the demo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.harness.daemon_process import config_document, run_cli, to_toml

EX_CONFIG = 78


gws_notifyd = run_cli


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gws-notifyd.toml"
    path.write_text(text)
    return path


def good_config(tmp_path: Path) -> str:
    return to_toml(config_document(tmp_path, gws_url="http://127.0.0.1:1"))


async def test_check_accepts_a_good_config(tmp_path: Path) -> None:
    code, out, err = await gws_notifyd(
        "check",
        "--config",
        str(write(tmp_path, good_config(tmp_path))),
        env={"GWS_PASSWORD": "pw"},
    )
    assert code == 0, err
    assert "OK" in out


@pytest.mark.parametrize(
    ("mutate", "key", "reason"),
    [
        (lambda t: t + "\n[extra]\nkey = 1\n", "extra", "unknown key"),
        (lambda t: t.replace('"http://127.0.0.1:1"', '"ftp://gws"'), "gws.base_url", "http"),
        (
            lambda t: t.replace("request_timeout_seconds = 5", 'request_timeout_seconds = "5"'),
            "gws.request_timeout_seconds",
            "expected a number",
        ),
        (lambda t: t.replace('type = "jsonl"', 'type = "kafka"'), "sinks[0].type", "one of"),
        (lambda t: t + "\n[gws\n", "gws-notifyd.toml", "invalid TOML"),
    ],
)
async def test_a_bad_config_stops_check_and_run_with_78_and_one_line_naming_the_key(
    tmp_path: Path, mutate: object, key: str, reason: str
) -> None:
    path = write(tmp_path, mutate(good_config(tmp_path)))  # type: ignore[operator]
    for command in ("check", "run"):
        code, _out, err = await gws_notifyd(
            command, "--config", str(path), env={"GWS_PASSWORD": "pw"}
        )
        assert code == EX_CONFIG
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert key in lines[0]
        assert reason in lines[0]
        assert "Traceback" not in err


async def test_check_refuses_a_sink_pattern_that_can_never_match_an_event_type(
    tmp_path: Path,
) -> None:
    sinks: list[dict[str, Any]] = [
        {"name": "archive", "type": "jsonl", "path": str(tmp_path / "events.jsonl")},
        {"name": "calls", "type": "log", "types": ["gws.call.*", "call.*"]},
    ]
    document = config_document(tmp_path, gws_url="http://127.0.0.1:1", sinks=sinks)
    path = write(tmp_path, to_toml(document))

    code, _out, err = await gws_notifyd("check", "--config", str(path), env={"GWS_PASSWORD": "pw"})

    assert code == EX_CONFIG
    assert err.strip() == (
        'gws-notifyd: config error: sinks[1].types[1]: "call.*" can never match an event '
        'type: every type begins with "gws."'
    )


async def test_a_missing_password_is_a_config_error_that_shows_no_secret(tmp_path: Path) -> None:
    path = write(tmp_path, good_config(tmp_path))
    env = dict.fromkeys(("GWS_PASSWORD", "CREDENTIALS_DIRECTORY"), "")
    code, _, err = await gws_notifyd("check", "--config", str(path), env=env)
    assert code == EX_CONFIG
    assert err.startswith("gws-notifyd: config error: gws.password: no password")


async def test_an_unreadable_config_file_is_named(tmp_path: Path) -> None:
    code, _, err = await gws_notifyd("check", "--config", str(tmp_path / "absent.toml"))
    assert code == EX_CONFIG
    assert "absent.toml" in err
    assert "cannot read" in err


async def test_the_demo_shows_three_correlated_outcomes_and_exits_0() -> None:
    code, out, err = await gws_notifyd("demo")
    assert code == 0, out + err
    assert "send_rejected" in out
    assert "state_changed (Error)" in out
    assert out.count("state_changed") == 2
    assert "Sent" in out
    assert "/metrics" in out
