"""Fixtures every test may use: the embedded GWS simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

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
