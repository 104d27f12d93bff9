"""The shared pace of logins and handshakes: turns at least 1/rate apart, in order."""

from __future__ import annotations

import asyncio
import itertools
import time

from daemon.pacing import Pacer


def _busy(seconds: float) -> None:
    """Hold the event loop (and the thread) as a long piece of work would."""
    time.sleep(seconds)


async def test_turns_are_spaced_by_the_rate_and_given_in_order() -> None:
    pacer = Pacer(rate=50.0)  # 20 ms apart
    given: list[tuple[int, float]] = []

    async def take(n: int) -> None:
        await pacer.turn()
        given.append((n, time.monotonic()))

    await asyncio.gather(*(take(n) for n in range(10)))

    assert [n for n, _ in given] == list(range(10))
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(given)]
    assert min(gaps) >= 0.02 - 0.001


async def test_a_late_event_loop_never_releases_turns_in_a_bunch() -> None:
    pacer = Pacer(rate=100.0)  # 10 ms apart
    given: list[float] = []

    async def take() -> None:
        await pacer.turn()
        given.append(time.monotonic())

    waiting = [asyncio.create_task(take()) for _ in range(5)]
    await asyncio.sleep(0)
    _busy(0.1)  # the loop is blocked for ten intervals: a busy daemon
    await asyncio.gather(*waiting)

    gaps = [b - a for a, b in itertools.pairwise(given)]
    assert min(gaps) >= 0.01 - 0.001


async def test_a_turn_while_the_pace_is_not_reached_costs_nothing() -> None:
    pacer = Pacer(rate=1.0)
    started = time.monotonic()

    await pacer.turn()

    assert time.monotonic() - started < 0.05
