"""Where the GWS password came from is kept, so that a file can be read again at each login."""

from __future__ import annotations

from pathlib import Path

from daemon.config import GwsSettings, settings_from_dict


def gws_of(tmp_path: Path, environ: dict[str, str], **gws: str) -> GwsSettings:
    settings = settings_from_dict(
        {
            "gws": {"base_url": "https://gws.example.com", "username": "agent1", **gws},
            "store": {"path": "state.db"},
        },
        base=tmp_path,
        environ=environ,
    )
    return settings.gws


def test_a_password_file_is_kept_resolved(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-the-file\n")
    gws = gws_of(tmp_path, {}, password_file="pw")
    assert gws.password.reveal() == "from-the-file"
    assert gws.password_file == tmp_path / "pw"


def test_the_systemd_credential_is_kept(tmp_path: Path) -> None:
    (tmp_path / "gws-password").write_text("credential\n")
    gws = gws_of(tmp_path, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert gws.password.reveal() == "credential"
    assert gws.password_file == tmp_path / "gws-password"


def test_a_password_in_the_file_or_the_environment_has_no_file(tmp_path: Path) -> None:
    assert gws_of(tmp_path, {}, password="inline").password_file is None
    from_env = gws_of(tmp_path, {"GWS_PASSWORD": "env"})
    assert from_env.password_file is None
