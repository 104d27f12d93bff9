"""Logging in again after start-up: never fast after a refusal, at once after SIGHUP.

The pure policy (the delays, the reasons) and the keeper itself against the
simulator, whose agent's password changes under it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from daemon.config import GwsSettings, Secret
from daemon.errors import GwsAnswerLostError, GwsRequestError, GwsUnreachableError
from daemon.gws.login import (
    AUTH_JITTER,
    AUTH_RETRY_MAX_SECONDS,
    SessionKeeper,
    auth_retry_delay,
    failure_reason,
    transport_retry_policy,
)
from daemon.gws.session import GwsSession
from daemon.metrics import AccountMetrics, Metrics
from daemon.simulator import Simulator
from tests.harness.waiting import wait_until

FAILURES = "gws_notifyd_gws_login_failures_total"


def test_after_a_refusal_the_wait_starts_at_auth_retry_and_doubles_to_15_minutes() -> None:
    rng = random.Random(7)
    for refusals, step in [(1, 60), (2, 120), (3, 240), (4, 480), (5, 900), (9, 900)]:
        for _ in range(50):
            delay = auth_retry_delay(refusals, 60.0, rng=rng)
            assert step <= delay <= step * AUTH_JITTER
    assert AUTH_RETRY_MAX_SECONDS == 900


def test_the_waits_are_jittered() -> None:
    rng = random.Random(7)
    assert len({auth_retry_delay(3, 60.0, rng=rng) for _ in range(20)}) == 20


def test_an_auth_retry_above_the_cap_is_still_waited_in_full() -> None:
    assert auth_retry_delay(1, 3600.0, rng=random.Random(1)) >= 3600.0


def test_transport_retries_start_fast_and_grow_to_retry_max_seconds() -> None:
    policy = transport_retry_policy(15.0)
    rng = random.Random(5)
    assert all(0.05 <= policy.delay(1, rng=rng) <= 0.1 for _ in range(50))
    assert all(policy.delay(n, rng=rng) <= 15.0 for n in range(1, 40))
    assert all(policy.delay(n, rng=rng) <= 0.5 for n in range(1, 8) for _ in range(20))
    assert max(policy.delay(24, rng=rng) for _ in range(200)) > 14.0


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            GwsRequestError(
                operation="GetMe", http_status=401, status_code=20, status_message=None
            ),
            "refused",
        ),
        (
            GwsRequestError(operation="GetMe", http_status=503, status_code=4, status_message=None),
            "error",
        ),
        (GwsUnreachableError("down"), "unreachable"),
        (GwsAnswerLostError("reset"), "unreachable"),
    ],
)
def test_a_failed_login_is_refused_unreachable_or_an_error(error: Exception, reason: str) -> None:
    assert failure_reason(error) == reason  # type: ignore[arg-type]


@pytest.fixture
async def keeper_with(
    gws_settings: GwsSettings, account_metrics: AccountMetrics, metrics: Metrics
) -> AsyncIterator[Callable[..., asyncio.Future[tuple[GwsSession, SessionKeeper]]]]:
    sessions: list[GwsSession] = []

    async def make(**changes: object) -> tuple[GwsSession, SessionKeeper]:
        settings = dataclasses.replace(gws_settings, **changes)  # type: ignore[arg-type]
        session = GwsSession(settings, account_metrics)
        session.open()
        sessions.append(session)
        await session.login()
        return session, SessionKeeper(
            session=session, settings=settings, metrics=account_metrics, rng=random.Random(3)
        )

    yield make  # type: ignore[misc]
    for session in sessions:
        await session.close()


async def test_a_live_session_needs_no_new_login(
    keeper_with: Callable[..., asyncio.Future[tuple[GwsSession, SessionKeeper]]],
) -> None:
    _, keeper = await keeper_with()
    assert await keeper.ensure() is False


async def test_a_lost_session_is_a_new_login(
    keeper_with: Callable[..., asyncio.Future[tuple[GwsSession, SessionKeeper]]],
    simulator: Simulator,
) -> None:
    _, keeper = await keeper_with()
    simulator.forget_sessions()
    assert await keeper.ensure() is True


async def test_a_refused_password_is_retried_slowly_and_at_once_after_retry_now(
    keeper_with: Callable[..., asyncio.Future[tuple[GwsSession, SessionKeeper]]],
    simulator: Simulator,
    metric_value: Callable[..., float],
    tmp_path: Path,
) -> None:
    password_file = tmp_path / "gws-password"
    password_file.write_text(simulator.settings.password)
    _, keeper = await keeper_with(
        auth_retry_seconds=0.2,
        password=Secret(simulator.settings.password),
        password_file=password_file,
    )
    simulator.settings.password = "rotated-on-the-server"
    ensuring = asyncio.create_task(keeper.ensure())

    await wait_until(lambda: len(simulator.refused_times) >= 3, timeout=5, what="3 refusals")
    assert keeper.credentials_refused
    assert metric_value("gws_notifyd_gws_credentials_refused") == 1
    gaps = [b - a for a, b in itertools.pairwise(simulator.refused_times[:3])]
    assert gaps[0] >= 0.2
    assert gaps[1] >= 0.4  # doubled

    password_file.write_text("rotated-on-the-server\n")
    woken_at = time.monotonic()
    keeper.retry_now()
    await asyncio.wait_for(ensuring, 2)
    assert time.monotonic() - woken_at < 0.5  # the wait after the 3rd refusal is 0.8 s or more
    assert metric_value("gws_notifyd_gws_credentials_refused") == 0
    assert metric_value(FAILURES, reason="refused") >= 3
    assert metric_value(FAILURES, reason="unreachable") == 0


async def test_an_unreachable_gws_is_retried_fast_and_counted_so(
    keeper_with: Callable[..., asyncio.Future[tuple[GwsSession, SessionKeeper]]],
    simulator: Simulator,
    metric_value: Callable[..., float],
) -> None:
    assert simulator.base_url
    _, keeper = await keeper_with(retry_max_seconds=0.2)
    port = int(simulator.base_url.rsplit(":", 1)[1])
    await simulator.stop()
    ensuring = asyncio.create_task(keeper.ensure())
    await wait_until(
        lambda: metric_value(FAILURES, reason="unreachable") >= 3, timeout=5, what="3 failures"
    )
    assert not keeper.credentials_refused
    await simulator.start("127.0.0.1", port)
    await asyncio.wait_for(ensuring, 5)
