"""Which event loop the daemon runs on, and that `run()` runs on it."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from daemon import eventloop
from daemon.errors import ConfigError

UVLOOP = importlib.util.find_spec("uvloop") is not None


@pytest.mark.skipif(not UVLOOP, reason="uvloop is not installed here")
@pytest.mark.parametrize("value", [None, "", "auto", "uvloop"])
def test_uvloop_is_chosen_where_installed_unless_asked_otherwise(value: str | None) -> None:
    environ = {} if value is None else {eventloop.ENVIRONMENT: value}

    assert eventloop.chosen(environ) == "uvloop"


def test_asyncio_is_chosen_when_asked_for() -> None:
    assert eventloop.chosen({eventloop.ENVIRONMENT: "asyncio"}) == "asyncio"


def test_without_uvloop_auto_is_asyncio_and_uvloop_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "uvloop" else real(name)
    )

    assert eventloop.chosen({}) == "asyncio"
    with pytest.raises(ConfigError, match="not installed"):
        eventloop.chosen({eventloop.ENVIRONMENT: "uvloop"})


def test_a_bad_choice_names_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        eventloop.chosen({eventloop.ENVIRONMENT: "trio"})

    assert caught.value.key == "$GWS_NOTIFYD_EVENT_LOOP"


@pytest.mark.parametrize("name", ["asyncio", *(["uvloop"] if UVLOOP else [])])
def test_run_runs_on_the_chosen_loop(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(eventloop.ENVIRONMENT, name)

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__.partition(".")[0]

    assert eventloop.run(loop_module()) == name
