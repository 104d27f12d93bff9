"""`CallThread`: one thread that runs calls in the order they were queued, each
result handed back to the event loop of the caller.

What `loop.run_in_executor` on a one-worker `ThreadPoolExecutor` does, for a
third of the CPU: that hand-over costs 60-80 us a call on this project's 2-core
machine (a concurrent future, its lock and condition, and the future chained to
an asyncio one), this one ~20 us (a `SimpleQueue` and one
`call_soon_threadsafe`). The store's thread takes a call per commit, per Send
and per read, so the difference is paid thousands of times a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

R = TypeVar("R")

_Item = tuple[Callable[[], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


class CallThread:
    """A thread of its own; `submit` from any event loop, calls run one at a time."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._closed = False
        # A daemon thread: a process that exits without `shutdown()` must not
        # hang on it. What it was writing then is as after a kill -9, which
        # the store survives (a transaction is whole or absent).
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, call: Callable[[], R]) -> asyncio.Future[R]:
        """Queue `call` now; the future gives its result or its exception.

        A call whose future is cancelled before the thread reaches it is
        skipped (as the executor's would be); once started it runs to its end.
        """
        if self._closed:
            raise RuntimeError(f"{self._thread.name}: cannot run calls after shutdown")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.put((call, future, loop))
        return future

    def shutdown(self) -> None:
        """Run what is queued, then stop the thread and wait for it."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            _run_one(*item)
            del item  # a result is not kept alive until the next call


def _run_one(
    call: Callable[[], Any], future: asyncio.Future[Any], loop: asyncio.AbstractEventLoop
) -> None:
    if future.cancelled():
        return
    settle: Callable[[asyncio.Future[Any], Any], None]
    try:
        outcome = call()
        settle = _succeed
    except BaseException as exc:  # the caller's to handle, as with an executor
        outcome = exc
        settle = _fail
    with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
        loop.call_soon_threadsafe(settle, future, outcome)


def _succeed(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
