"""`gws-notifyd simulate`: the docs' GWS by default, each switch one departure from it."""

from __future__ import annotations

import argparse

import pytest

from daemon.simulator import SimulatorSettings
from daemon.simulator.options import DEFAULT_PASSWORD, add_arguments, settings_from_arguments


def settings_for(*argv: str, environ: dict[str, str] | None = None) -> SimulatorSettings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return settings_from_arguments(parser.parse_args(argv), environ or {})


def test_by_default_it_is_gws_as_documented() -> None:
    settings = settings_for()
    assert settings.reference_id_in_answer is False
    assert settings.csrf is True
    assert settings.csrf_cometd is True
    assert settings.offer_websocket is False
    assert settings.sent_emails_leave is False
    assert settings.error_without_email is False
    assert settings.password == DEFAULT_PASSWORD
    assert settings.agents == 0
    assert settings.activity_per_second == 0.0


def test_each_switch_departs_in_its_one_way() -> None:
    settings = settings_for(
        "--reference-id",
        "--no-csrf-cometd",
        "--offer-websocket",
        "--sent-emails-leave",
        "--error-without-email",
        "--agents",
        "1000",
        "--activity",
        "12.5",
        "--password-env",
        "SIM_PW",
        environ={"SIM_PW": "from-the-environment"},
    )
    assert settings.reference_id_in_answer is True
    assert settings.csrf is True
    assert settings.csrf_cometd is False
    assert settings.offer_websocket is True
    assert settings.sent_emails_leave is True
    assert settings.error_without_email is True
    assert settings.agents == 1000
    assert settings.activity_per_second == 12.5
    assert settings.password == "from-the-environment"


@pytest.mark.parametrize(
    "argv",
    [
        ("--agents", "-1"),
        ("--agents", "10000"),
        ("--agents", "many"),
        ("--activity", "-0.5"),
        ("--activity", "nan"),
        ("--activity", "inf"),
        ("--activity", "fast"),
    ],
)
def test_a_count_of_agents_or_a_rate_out_of_range_is_a_usage_error(
    argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        settings_for(*argv)

    assert exited.value.code == 2
    assert argv[0] in capsys.readouterr().err
