"""The store's thread: calls in the order queued, results and errors back to the caller's loop."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Iterator

import pytest

from daemon.store.call_thread import CallThread
from tests.harness.service_runs import DEADLINE


@pytest.fixture
def worker() -> Iterator[CallThread]:
    thread = CallThread("test-calls")
    yield thread
    thread.shutdown()


async def test_calls_run_in_the_order_queued_on_one_thread_of_their_own(
    worker: CallThread,
) -> None:
    ran: list[tuple[int, int]] = []

    def call(n: int) -> int:
        ran.append((n, threading.get_ident()))
        return n * 10

    futures = [worker.submit(functools.partial(call, n)) for n in range(50)]

    assert await asyncio.gather(*futures) == [n * 10 for n in range(50)]
    assert [n for n, _ in ran] == list(range(50))
    assert len({ident for _, ident in ran}) == 1
    assert ran[0][1] != threading.get_ident()


async def test_an_exception_reaches_the_caller_and_the_thread_goes_on(worker: CallThread) -> None:
    def fail() -> None:
        raise ValueError("no such row")

    with pytest.raises(ValueError, match="no such row"):
        await worker.submit(fail)
    assert await worker.submit(lambda: "next") == "next"


async def test_a_call_cancelled_before_it_starts_is_skipped_one_started_runs_to_its_end(
    worker: CallThread,
) -> None:
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    def blocking() -> None:
        started.set()
        release.wait(DEADLINE)
        ran.append("started")

    first = worker.submit(blocking)
    second = worker.submit(lambda: ran.append("queued"))
    assert await asyncio.to_thread(started.wait, DEADLINE)
    first.cancel()
    second.cancel()
    release.set()

    assert await worker.submit(lambda: "after") == "after"
    assert ran == ["started"]


def test_a_result_for_a_closed_loop_is_dropped_and_the_thread_goes_on(worker: CallThread) -> None:
    release = threading.Event()

    async def leave_a_call_running() -> None:
        worker.submit(lambda: release.wait(DEADLINE))

    asyncio.run(leave_a_call_running())  # its loop closes while the call runs
    release.set()

    async def next_call() -> str:
        return await worker.submit(lambda: "served")

    assert asyncio.run(next_call()) == "served"


async def test_shutdown_runs_what_is_queued_then_refuses_new_calls() -> None:
    thread = CallThread("test-shutdown")
    ran: list[int] = []
    futures = [thread.submit(functools.partial(ran.append, n)) for n in range(5)]

    thread.shutdown()

    assert ran == list(range(5))
    await asyncio.gather(*futures)
    with pytest.raises(RuntimeError, match="after shutdown"):
        thread.submit(lambda: None)
