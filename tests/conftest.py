"""Fixtures every test may use: the embedded GWS simulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from daemon import eventloop
from daemon.simulator import Simulator, SimulatorSettings


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    """The GWS simulator on a free loopback port (short long-polls, quick notifications)."""
    sim = Simulator(SimulatorSettings(long_poll_timeout_ms=5000, notify_delay_seconds=0.01))
    await sim.start("127.0.0.1", 0)
    try:
        yield sim
    finally:
        await sim.stop()


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every test on the loop the daemon would choose (`$GWS_NOTIFYD_EVENT_LOOP`):
    `tests/run` runs the suite on uvloop and again on asyncio's own loop."""
    name = eventloop.chosen()
    return {name: eventloop.loop_factory(name) or asyncio.new_event_loop}
