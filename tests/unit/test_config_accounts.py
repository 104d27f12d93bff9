"""Config: one GWS account (today's form, named `default`) or several [[gws.accounts]]."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from daemon.config import Settings, settings_from_dict
from daemon.errors import ConfigError


def several(*accounts: dict[str, Any], **gws: Any) -> dict[str, Any]:
    return {
        "gws": {"base_url": "https://gws.example.com", **gws, "accounts": list(accounts)},
        "store": {"path": "state.db"},
    }


def account(name: str, **keys: Any) -> dict[str, Any]:
    return {"name": name, "username": f"user-{name}", "password": f"pw-{name}", **keys}


def build(data: dict[str, Any], tmp_path: Path, environ: dict[str, str] | None = None) -> Settings:
    return settings_from_dict(data, base=tmp_path, environ=environ or {})


def error(data: dict[str, Any], tmp_path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        build(data, tmp_path)
    return caught.value


def test_the_single_account_form_is_the_account_named_default(tmp_path: Path) -> None:
    settings = build(
        {
            "gws": {"base_url": "https://g.example", "username": "agent1", "password": "pw"},
            "store": {"path": "state.db"},
        },
        tmp_path,
    )

    [only] = settings.accounts
    assert only.name == "default"
    assert only.gws.username == "agent1"
    assert only.gws.password.reveal() == "pw"
    assert settings.gws == only.gws


def test_each_account_has_its_own_credentials_and_shares_the_rest(tmp_path: Path) -> None:
    (tmp_path / "b.password").write_text("from-file\n")
    settings = build(
        several(
            account("sales-1", channels=["/v2/me/emails", "/v2/me/calls"]),
            {"name": "b_2", "username": "agent2", "password_file": "b.password"},
            request_timeout_seconds=3,
            channels=["/v2/me/emails", "/v2/me/chats"],
            start_session=False,
        ),
        tmp_path,
    )

    first, second = settings.accounts
    assert (first.name, first.gws.username, first.gws.password.reveal()) == (
        "sales-1",
        "user-sales-1",
        "pw-sales-1",
    )
    assert first.gws.channels == ("/v2/me/emails", "/v2/me/calls")
    assert second.gws.password.reveal() == "from-file"
    assert second.gws.password_file == tmp_path / "b.password"
    # What an account does not say, [gws] says for it.
    assert second.gws.channels == ("/v2/me/emails", "/v2/me/chats")
    assert first.gws.start_session is second.gws.start_session is False
    assert first.gws.request_timeout_seconds == second.gws.request_timeout_seconds == 3
    assert settings.account("b_2") is second
    assert settings.account("nobody") is None


def test_an_accounts_systemd_credential_is_named_after_it(tmp_path: Path) -> None:
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "north").write_text("credential\n")
    data = several({"name": "north", "username": "agent9"})

    settings = build(data, tmp_path, {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})

    assert settings.accounts[0].gws.password.reveal() == "credential"


@pytest.mark.parametrize(
    ("data", "key", "words"),
    [
        (several(account("a"), account("a")), "gws.accounts[1].name", "duplicate"),
        (several(account("Sales")), "gws.accounts[0].name", "lower case"),
        (several(account("x" * 65)), "gws.accounts[0].name", "1 to 64"),
        (several(account("a b")), "gws.accounts[0].name", "a-z"),
        (several(account("a"), username="agent1"), "gws.username", "[[gws.accounts]]"),
        (several(account("a"), password="pw"), "gws.password", "[[gws.accounts]]"),
        (several(), "gws.accounts", "at least one"),
        (several({"name": "a", "username": "u"}), "gws.accounts[0].password", "no password"),
        (several({"name": "a", "password": "p"}), "gws.accounts[0].username", ""),
        (several(account("a", colour="red")), "gws.accounts[0].colour", "unknown key"),
        (several(account("a", channels=["/meta/x"])), "gws.accounts[0].channels[0]", "Bayeux"),
    ],
)
def test_a_bad_account_is_a_config_error_naming_the_key(
    tmp_path: Path, data: dict[str, Any], key: str, words: str
) -> None:
    caught = error(data, tmp_path)

    assert caught.key == key
    assert words in caught.reason


def test_tools_that_need_no_password_read_accounts_without_one(tmp_path: Path) -> None:
    data = several({"name": "a", "username": "u", "password_file": "/root/not-readable"})

    settings = settings_from_dict(data, base=tmp_path, environ={}, need_password=False)

    assert settings.accounts[0].gws.password.reveal() == ""
