"""The event loop: uvloop where it is installed, asyncio's own otherwise.

uvloop (libuv under asyncio's API) does the loop's own work (sockets, timers,
callbacks) in C. Measured here (README "Performance") it changes little: the
time goes to Python work per notification and per Send, not to the loop. So
it is an option (`pip install 'gws-notifyd[uvloop]'`), not a dependency.
`GWS_NOTIFYD_EVENT_LOOP` chooses: `uvloop` (an error if it is not installed),
`asyncio`, or unset / `auto` (uvloop if importable). Every command that runs
the daemon's code goes through `run()`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

from daemon.errors import ConfigError

ENVIRONMENT = "GWS_NOTIFYD_EVENT_LOOP"
CHOICES = ("auto", "uvloop", "asyncio")
T = TypeVar("T")


def chosen(environ: Mapping[str, str] | None = None) -> str:
    """`uvloop` or `asyncio`: what `run()` will use (raises ConfigError for a bad choice)."""
    value = (os.environ if environ is None else environ).get(ENVIRONMENT, "auto") or "auto"
    if value not in CHOICES:
        raise ConfigError(f"${ENVIRONMENT}", f"{value!r}: expected one of {', '.join(CHOICES)}")
    installed = importlib.util.find_spec("uvloop") is not None
    if value == "uvloop" and not installed:
        raise ConfigError(f"${ENVIRONMENT}", "uvloop is not installed: pip install uvloop")
    if value == "asyncio" or not installed:
        return "asyncio"
    return "uvloop"


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the chosen loop."""
    with asyncio.Runner(loop_factory=loop_factory(chosen())) as runner:
        return runner.run(main)
