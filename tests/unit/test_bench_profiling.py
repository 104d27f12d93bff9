"""bench/profiling.py's summary of py-spy's folded stacks: what counts as idle, and
whose work each busy stack is (the README's "What limits the misses" quotes it)."""

from __future__ import annotations

import sys
from pathlib import Path

# bench/ is not a package: its scripts import their siblings by name. Appended, so
# that none of its names shadows a module the other tests import.
sys.path.append(str(Path(__file__).resolve().parents[2] / "bench"))

import profiling

_STORE = (
    "Thread._bootstrap (threading.py:1002);Thread.run (threading.py:982);"
    "CallThread._run (daemon/store/call_thread.py:60);_run_one (daemon/store/call_thread.py:71)"
)
_LOOP = "_run_module_as_main (<frozen runpy>:198);Runner.run (asyncio/runners.py:118)"


def _folded(tmp_path: Path, stacks: dict[str, int]) -> Path:
    path = tmp_path / "run.folded"
    path.write_text("".join(f"{stack} {count}\n" for stack, count in stacks.items()))
    return path


def _by_module(summary: dict[str, object]) -> dict[str, float]:
    rows = summary["by_module"]
    assert isinstance(rows, list)
    return {row["frame"]: row["percent"] for row in rows}


def test_waits_of_the_store_threads_and_of_uvloop_are_idle(tmp_path: Path) -> None:
    summary = profiling.summarise(
        _folded(
            tmp_path,
            {
                # The store's thread waiting for work, and uvloop waiting in C.
                "Thread._bootstrap (threading.py:1002);"
                "CallThread._run (daemon/store/call_thread.py:59)": 30,
                _LOOP: 50,
                _STORE + ";Store.commit_outcomes (daemon/store/database.py:300)": 15,
                _LOOP + ";Tracker._process (daemon/tracker.py:273)": 5,
            },
        )
    )

    assert (summary["samples"], summary["idle_samples"]) == (20, 80)
    assert _by_module(summary) == {"the store's threads": 75.0, "daemon/tracker.py": 25.0}


def test_a_stack_is_the_work_of_the_daemon_module_nearest_its_leaf(tmp_path: Path) -> None:
    summary = profiling.summarise(
        _folded(
            tmp_path,
            {
                _LOOP + ";Tracker._process (daemon/tracker.py:273);"
                "EventFactory.state_changed (daemon/events.py:188)": 6,
                _LOOP + ";LongPollingTransport.exchange "
                "(daemon/cometd/transports/long_polling.py:50);"
                "ClientSession._request (aiohttp/client.py:900)": 3,
                _LOOP + ";ResponseHandler.data_received (aiohttp/client_proto.py:359)": 1,
            },
        )
    )

    assert _by_module(summary) == {
        "daemon/events.py": 60.0,
        "daemon/cometd/transports/long_polling.py -> aiohttp": 30.0,
        "(no daemon frame) aiohttp": 10.0,
    }
