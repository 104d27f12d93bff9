"""The libraries' log lines (stdlib logging) as the daemon's own: one JSON line, no credentials.

`configure_logging` writes to a real byte stream here, as it writes to stdout in the
daemon; the records come from the stdlib loggers aiohttp and asyncio use.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import structlog
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from daemon.logging import LibraryThrottle, configure_logging, saved_logging

TOKEN = "tok-3f9a8b7c6d5e"
ACCEPT_FAILED = "socket.accept() out of system resource\nsocket: <TransportSocket fd=7>"


@pytest.fixture
def output() -> Iterator[io.TextIOWrapper]:
    """A stream the daemon's logging writes JSON lines to; logging as it was, afterwards."""
    restore = saved_logging()
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    configure_logging(level="info", fmt="json", stream=stream)
    try:
        yield stream
    finally:
        restore()


def lines(stream: io.TextIOWrapper) -> list[dict[str, Any]]:
    stream.flush()
    raw = stream.buffer.getvalue()  # type: ignore[attr-defined]
    assert isinstance(raw, bytes)
    return [orjson.loads(line) for line in raw.splitlines()]


def raised(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as caught:  # any error, as a library would log it
        return caught


def test_a_library_error_is_one_json_line_with_its_traceback_inside(
    output: io.TextIOWrapper,
) -> None:
    logging.getLogger("aiohttp.server").error(
        "Error handling request from %s", "127.0.0.1", exc_info=raised(ValueError("boom"))
    )

    [line] = lines(output)
    assert line["logger"] == "aiohttp.server"
    assert line["level"] == "error"
    assert line["event"] == "Error handling request from 127.0.0.1"
    assert "ValueError: boom" in line["exception"]
    assert "timestamp" in line


def test_an_authorization_value_never_reaches_the_log(output: io.TextIOWrapper) -> None:
    error = raised(ValueError(f"bad header: b'Authorization: Bearer {TOKEN}AAAA'"))
    logging.getLogger("aiohttp.server").error("Authorization: %s", TOKEN, exc_info=error)
    logging.getLogger("asyncio").warning("got Basic %s and bearer %s", TOKEN, TOKEN)
    structlog.get_logger().warning("sink_failed", error=f"Authorization={TOKEN}")

    written = lines(output)
    assert len(written) == 3
    assert TOKEN not in orjson.dumps(written).decode()


def test_a_request_aiohttp_cannot_parse_is_a_warning_without_traceback(
    output: io.TextIOWrapper,
) -> None:
    error = raised(LineTooLong(f"Bearer {TOKEN}" + "A" * 200, "8190", "20000"))
    logging.getLogger("aiohttp.server").error("Error handling request", exc_info=error)

    [line] = lines(output)
    assert line["level"] == "warning"
    assert "exception" not in line
    assert line["error"].startswith("LineTooLong: ")
    assert TOKEN not in line["error"]


def test_accept_failures_for_lack_of_descriptors_are_logged_once_per_interval(
    output: io.TextIOWrapper,
) -> None:
    emfile = raised(OSError(24, "Too many open files"))
    for _ in range(1000):
        logging.getLogger("asyncio").error(ACCEPT_FAILED, exc_info=emfile)
    logging.getLogger("asyncio").error("another problem")

    written = lines(output)
    assert [line["event"] for line in written] == [ACCEPT_FAILED, "another problem"]


def test_a_throttled_line_comes_again_after_the_interval_with_the_count_it_held_back() -> None:
    now = [0.0]
    throttle = LibraryThrottle(interval=10.0, clock=lambda: now[0])

    def record() -> logging.LogRecord:
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, ACCEPT_FAILED, None, None)

    first = record()
    assert throttle.filter(first)
    assert not any(throttle.filter(record()) for _ in range(5))
    now[0] = 10.0
    later = record()
    assert throttle.filter(later)
    assert getattr(first, "suppressed", None) is None
    assert later.suppressed == 5  # type: ignore[attr-defined]


def test_the_daemons_own_lines_are_unchanged(output: io.TextIOWrapper) -> None:
    structlog.get_logger(logger_name="daemon.api").info("send_invalid", field="id")

    [line] = lines(output)
    assert (line["event"], line["logger"], line["field"], line["level"]) == (
        "send_invalid",
        "daemon.api",
        "id",
        "info",
    )


def test_a_bad_http_message_keeps_its_class_in_the_error(output: io.TextIOWrapper) -> None:
    error = raised(BadHttpMessage("Invalid header token", headers=None))
    logging.getLogger("aiohttp.server").error("Error handling request", exc_info=error)

    [line] = lines(output)
    assert line["error"].startswith("BadHttpMessage: ")
