"""Where things are, and the one error type of the benchmarks.

Importing this module puts the repository root on sys.path, so that `python
bench/x.py` (which puts only bench/ there) can import `daemon` and `tests.harness`.
Every bench module that imports either imports this one first (ruff sorts local
modules such as this one before the first-party `daemon` and `tests`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parent.parent
BENCH_DIR: Final = ROOT / "bench"
RESULTS_DIR: Final = BENCH_DIR / "results"
PYTHON: Final = sys.executable
HOST: Final = "127.0.0.1"
EMAILS_CHANNEL: Final = "/v2/me/emails"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


class BenchError(RuntimeError):
    """A benchmark could not run (a peer or the daemon failed, a deadline passed)."""
