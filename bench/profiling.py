"""`--profile`: py-spy on the daemon, and the top frames of what it recorded."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
from basics import PYTHON, RESULTS_DIR, ROOT
from report import note

Profiler = tuple[subprocess.Popen[bytes], Path]
_STORE_THREAD = "daemon/store/call_thread.py"  # where the store's threads run their calls
# py-spy --nonblocking cannot always tell a waiting thread: leaves that are waits. The
# store's threads wait in `CallThread._run` (its own lines are a loop around the calls);
# on uvloop the event loop waits in C, so the leaf is `Runner.run` (uvloop's own C work,
# 3-4 % of the daemon's CPU by `perf`, is dropped with it).
_IDLE_LEAVES = (
    "EpollSelector.select ",
    "_worker (concurrent/futures/thread.py",
    f"CallThread._run ({_STORE_THREAD}",
    "Runner.run (asyncio/runners.py",
)


def start_profiler(pid: int | None, name: str) -> Profiler | None:
    """py-spy on a process (None: no profile), folded stacks to bench/results/<name>.folded."""
    if pid is None:
        return None
    spy = shutil.which("py-spy") or str(Path(PYTHON).parent / "py-spy")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.folded"
    path.unlink(missing_ok=True)
    command = [spy, "record", "--pid", str(pid), "--rate", "250", "--nonblocking"]
    command += ["--format", "raw", "--output", str(path)]
    try:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError as exc:
        note(f"py-spy not started: {exc}")
        return None
    return process, path


def stop_profiler(profiler: Profiler | None) -> dict[str, Any] | None:
    """Stop py-spy (SIGINT makes it write) and summarise the folded stacks."""
    if profiler is None:
        return None
    process, path = profiler
    process.send_signal(signal.SIGINT)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    if not path.exists():
        return {"error": "py-spy wrote nothing (ptrace not permitted?)"}
    return summarise(path)


def summarise(path: Path) -> dict[str, Any]:
    """The top frames and modules of a folded-stacks file (`.venv/bin/python
    bench/profiling.py FILE.folded` prints them for one recorded before)."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    modules: dict[str, int] = {}
    total = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if frames[-1].startswith(_IDLE_LEAVES):
            idle += count
            continue
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        module = _module_of(frames)
        modules[module] = modules.get(module, 0) + count

    def top(table: dict[str, int], n: int) -> list[dict[str, Any]]:
        ranked = sorted(table.items(), key=lambda kv: -kv[1])[:n]
        return [{"frame": f, "percent": round(100 * c / max(1, total), 1)} for f, c in ranked]

    return {
        "folded_stacks": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
        "samples": total,
        "idle_samples": idle,
        "note": "percent of the non-idle samples (all threads); idle = a thread waiting "
        "in epoll (asyncio's loop; uvloop's, with its own C work) or on the store's queue",
        "top_self": top(own, 20),
        "top_inclusive": top(inclusive, 40),
        "by_module": top(modules, 25),
    }


def _module_of(frames: list[str]) -> str:
    """Whose work a stack is: the store's threads as one; on the event loop, the
    daemon's module nearest the leaf, with "-> <library>" when the leaf is in a
    library (aiohttp's requests, nats' parsing); else the leaf's library."""
    if frames[0].startswith("Thread._bootstrap"):
        in_store = any(_STORE_THREAD in f for f in frames)
        return "the store's threads" if in_store else f"thread {frames[-1]}"
    files = [_file_of(f) for f in frames]
    own = [i for i, name in enumerate(files) if name.startswith("daemon/")]
    if not own:
        return f"(no daemon frame) {files[-1].split('/')[0]}"
    leaf = files[-1]
    below = "" if leaf.startswith("daemon/") else f" -> {leaf.split('/')[0]}"
    return files[own[-1]] + below


def _file_of(frame: str) -> str:
    """ "name (path:line)" -> path (site-packages paths are relative already)."""
    inside = frame.rpartition(" (")[2]
    return inside.rpartition(":")[0]


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(orjson.dumps(summarise(Path(name)), option=orjson.OPT_INDENT_2).decode())
