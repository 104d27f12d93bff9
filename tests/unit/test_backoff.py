"""Capped exponential backoff with full jitter and a floor."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from daemon.backoff import Backoff, BackoffPolicy

POLICY = BackoffPolicy(initial=0.5, maximum=30.0, multiplier=2.0, floor=0.1)


def test_delays_stay_within_floor_and_cap() -> None:
    rng = random.Random(1)
    delays = [POLICY.delay(attempt, rng=rng) for attempt in range(1, 200)]
    assert all(POLICY.floor <= d <= POLICY.maximum for d in delays)


def test_delay_of_each_attempt_is_bounded_by_its_exponential_ceiling() -> None:
    rng = random.Random(2)
    for attempt in range(1, 12):
        ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
        draws = [POLICY.delay(attempt, rng=rng) for _ in range(200)]
        assert max(draws) <= ceiling
        # Full jitter: the draws spread over the whole range, not just its top.
        assert min(draws) < ceiling / 2


def test_delays_grow_with_attempts_on_average() -> None:
    rng = random.Random(3)

    def mean(attempt: int) -> float:
        return sum(POLICY.delay(attempt, rng=rng) for _ in range(500)) / 500

    means = [mean(attempt) for attempt in (1, 3, 5, 7)]
    assert means == sorted(means)
    assert means[-1] > 4 * means[0]


def test_capped_delays_average_half_the_cap() -> None:
    rng = random.Random(4)
    draws = [POLICY.delay(50, rng=rng) for _ in range(2000)]
    assert 13.0 < sum(draws) / len(draws) < 17.0
    assert max(draws) > 25.0


def test_no_delay_before_the_first_retry() -> None:
    assert POLICY.delay(0) == 0.0
    assert POLICY.delay(-3) == 0.0


def test_the_floor_holds_when_the_draw_is_tiny() -> None:
    policy = BackoffPolicy(initial=0.001, maximum=30.0, floor=0.25)
    rng = random.Random(5)
    assert all(policy.delay(1, rng=rng) == 0.25 for _ in range(50))


def test_same_seed_gives_the_same_delays() -> None:
    first = Backoff(POLICY, rng=random.Random(42))
    second = Backoff(POLICY, rng=random.Random(42))
    assert [first.next_delay() for _ in range(10)] == [second.next_delay() for _ in range(10)]


def test_backoff_counts_attempts_and_reset_starts_over() -> None:
    backoff = Backoff(POLICY, rng=random.Random(6))
    for _ in range(10):
        backoff.next_delay()
    assert backoff.attempt == 10

    backoff.reset()

    assert backoff.attempt == 0
    first = backoff.next_delay()
    assert backoff.attempt == 1
    assert first <= POLICY.initial


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert POLICY.floor <= POLICY.delay(10**9, rng=random.Random(7)) <= POLICY.maximum


@given(
    initial=st.floats(0.001, 100.0),
    maximum=st.floats(0.1, 3600.0),
    multiplier=st.floats(1.0, 10.0),
    floor=st.floats(0.0, 0.1),
    attempt=st.integers(1, 10_000),
    seed=st.integers(0, 2**32),
)
def test_delay_never_exceeds_the_maximum_nor_falls_below_the_floor(
    initial: float, maximum: float, multiplier: float, floor: float, attempt: int, seed: int
) -> None:
    policy = BackoffPolicy(initial=initial, maximum=maximum, multiplier=multiplier, floor=floor)
    delay = policy.delay(attempt, rng=random.Random(seed))
    assert floor <= delay <= maximum
