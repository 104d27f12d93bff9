"""What each account keeps in memory is bounded for all accounts together."""

from __future__ import annotations

from daemon.accounts import RECENT_SENDS_IN_ALL, RECENT_SENDS_PER_ACCOUNT, recent_capacity


def test_recently_resolved_sends_are_shared_out_among_the_accounts() -> None:
    assert recent_capacity(1) == RECENT_SENDS_IN_ALL == 10_000
    assert recent_capacity(10) == 1_000
    # Many accounts: each keeps a floor, so the total grows only with the config.
    assert recent_capacity(1_000) == RECENT_SENDS_PER_ACCOUNT == 100
    assert all(recent_capacity(n) * n <= max(RECENT_SENDS_IN_ALL, 100 * n) for n in range(1, 2000))
