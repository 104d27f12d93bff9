"""The log lines a piece of code emits, as structlog hands them over (for in-process tests).

    with captured_logs() as logs:
        ...
    assert [line["event"] for line in logs if line["level"] == "error"] == ["store_failed"]

structlog's configuration is put back as it was on the way out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import structlog


@contextlib.contextmanager
def captured_logs() -> Iterator[list[dict[str, Any]]]:
    captured: list[dict[str, Any]] = []

    def keep(_: object, __: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
        captured.append(dict(event))
        raise structlog.DropEvent

    previous = structlog.get_config()
    structlog.configure(
        processors=[structlog.processors.add_log_level, keep], cache_logger_on_first_use=False
    )
    try:
        yield captured
    finally:
        structlog.configure(**previous)
