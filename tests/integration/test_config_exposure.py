"""What `check` and `run` say of a config that exposes a secret or names an unwritable jsonl file.

`gws-notifyd check` and `run` as subprocesses, real files with real modes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from daemon.config import settings_from_dict
from daemon.simulator import Simulator
from tests.harness.daemon_process import (
    DaemonProcess,
    config_document,
    run_cli,
    to_toml,
    write_config,
)

EX_CONFIG = 78


def write(tmp_path: Path, document: dict[str, Any]) -> Path:
    path = tmp_path / "gws-notifyd.toml"
    path.write_text(to_toml(document))
    return path


def document(
    tmp_path: Path, *, sinks: list[dict[str, Any]] | None = None, **sections: dict[str, Any]
) -> dict[str, Any]:
    return config_document(tmp_path, gws_url="http://127.0.0.1:1", sinks=sinks, **sections)


def secret_file(tmp_path: Path, name: str, mode: int) -> Path:
    path = tmp_path / name
    path.write_text("s3cr3t\n")
    path.chmod(mode)
    return path


# -- warnings: from loading the config -----------------------------------------------------


def test_a_clean_config_has_no_warnings(tmp_path: Path) -> None:
    token = secret_file(tmp_path, "api-token", 0o600)
    settings = settings_from_dict(
        document(tmp_path, http={"token_file": str(token)}),
        base=tmp_path,
        environ={"GWS_PASSWORD": "pw"},
    )

    assert settings.warnings == ()


def test_a_password_in_clear_in_the_config_is_a_warning(tmp_path: Path) -> None:
    settings = settings_from_dict(
        document(tmp_path, gws={"password": "in-clear"}), base=tmp_path, environ={}
    )

    [warning] = settings.warnings
    assert warning.startswith("gws.password: ")
    assert "in-clear" not in warning


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_secret_file_others_can_read_is_a_warning_naming_key_path_and_mode(
    tmp_path: Path, mode: int
) -> None:
    token = secret_file(tmp_path, "api-token", mode)
    hook = secret_file(tmp_path, "hook-secret", mode)
    password = secret_file(tmp_path, "gws-password", mode)
    sink = {
        "name": "crm",
        "type": "webhook",
        "url": "https://crm.example",
        "secret_file": str(hook),
    }
    settings = settings_from_dict(
        document(
            tmp_path,
            gws={"password_file": str(password)},
            http={"token_file": str(token)},
            sinks=[sink],
        ),
        base=tmp_path,
        environ={},
    )

    keys = [warning.split(":", 1)[0] for warning in settings.warnings]
    assert keys == ["gws.password_file", "http.token_file", "sinks[0].secret_file"]
    assert str(token) in settings.warnings[1]
    assert f"{mode:04o}" in settings.warnings[1]
    assert "s3cr3t" not in " ".join(settings.warnings)


# -- check and run ----------------------------------------------------------------------------


async def test_check_prints_each_warning_on_stderr_and_exits_0(tmp_path: Path) -> None:
    token = secret_file(tmp_path, "api-token", 0o644)
    config = write(
        tmp_path, document(tmp_path, gws={"password": "in-clear"}, http={"token_file": str(token)})
    )

    code, out, err = await run_cli("check", "--config", str(config))

    assert code == 0, err
    assert "OK" in out
    lines = err.splitlines()
    assert any(line.startswith("warning: gws.password: ") for line in lines), err
    assert any(line.startswith("warning: http.token_file: ") for line in lines), err
    assert "in-clear" not in out + err


@pytest.mark.parametrize(
    "where",
    [
        lambda tmp: tmp / "a-file" / "events.jsonl",  # under a regular file
        lambda tmp: tmp / "a-dir",  # a directory
    ],
)
async def test_check_finds_a_jsonl_path_the_sink_cannot_write_and_exits_78(
    tmp_path: Path, where: Any
) -> None:
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-dir").mkdir()
    path: Path = where(tmp_path)
    config = write(
        tmp_path,
        document(tmp_path, sinks=[{"name": "archive", "type": "jsonl", "path": str(path)}]),
    )

    code, _, err = await run_cli("check", "--config", str(config), env={"GWS_PASSWORD": "pw"})
    run_code, _, _ = await run_cli("run", "--config", str(config), env={"GWS_PASSWORD": "pw"})

    assert (code, run_code) == (EX_CONFIG, EX_CONFIG)
    assert err.startswith("gws-notifyd: config error: sinks[0].path: "), err
    assert len(err.splitlines()) == 1


async def test_check_creates_nothing_for_a_jsonl_path_it_could_create(tmp_path: Path) -> None:
    path = tmp_path / "not" / "yet" / "events.jsonl"
    config = write(
        tmp_path,
        document(tmp_path, sinks=[{"name": "archive", "type": "jsonl", "path": str(path)}]),
    )

    code, _, err = await run_cli("check", "--config", str(config), env={"GWS_PASSWORD": "pw"})

    assert code == 0, err
    assert not (tmp_path / "not").exists()


async def test_run_logs_each_warning_at_start(simulator: Simulator, tmp_path: Path) -> None:
    assert simulator.base_url
    config = write_config(tmp_path, gws_url=simulator.base_url, gws={"password": "agent1-password"})
    async with DaemonProcess(config, password=None) as daemon:
        line = await daemon.wait_log(lambda e: e.get("event") == "config_warning")

    assert line["level"] == "warning"
    assert line["detail"].startswith("gws.password: ")
    assert "agent1-password" not in b"".join(daemon.raw_stdout).decode()
