"""structlog set-up: one JSON object per line on stdout, a console view on a TTY.

Keys: timestamp, level, event, logger, plus context (account, reference_id,
email_id, send_id, sink, state ...); `account` is bound once per task that
works for one GWS account (its listener, a Send for it). A last processor
blanks any key that looks like a secret, as a net under the rule that
secrets are never logged.

The libraries' loggers (stdlib `logging`: aiohttp.*, asyncio, ...) go through
the same processors, so they too make one JSON line each, a traceback inside
it (`exception`). What the peer of a connection controls never fills the log:
the value of an Authorization header is masked wherever it shows (aiohttp
quotes the start of a header it refuses); a malformed request is one warning
without traceback; and a library line that repeats (an accept failing for
lack of descriptors, a flood of bad requests) is let through once per
`LIBRARY_REPEAT_SECONDS`, the next one saying how many were `suppressed`.
"""

from __future__ import annotations

import logging as stdlib_logging
import re
import sys
import time
from collections.abc import Callable, MutableMapping, Sequence
from typing import Any, BinaryIO, TextIO

import orjson
import structlog

from daemon.sends import iso_time

_SECRET_KEYS = frozenset(
    {"password", "secret", "token", "authorization", "cookie", "api_key", "credentials"}
)
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in event:
        if key.lower() in _SECRET_KEYS:
            event[key] = "********"
    return event


# An Authorization value: after its scheme, or after the header's name.
_CREDENTIALS = (
    (re.compile(r"(?i)\b(bearer|basic|digest|negotiate)\s+[^\s'\"\\,;]+"), r"\1 ********"),
    (re.compile(r"(?i)\b(authorization['\"]?\s*[:=]\s*['\"]?)[^\s'\"\\,;]+"), r"\1********"),
)
_TEXT_KEYS = ("event", "exception", "error")
# A library line that repeats is logged once per this long.
LIBRARY_REPEAT_SECONDS = 10.0


def scrub(text: str) -> str:
    """`text` with the value of any Authorization header masked."""
    for pattern, replacement in _CREDENTIALS:
        # Searched first: sub() with a template costs several µs even when
        # nothing matches, and this runs on every log line.
        if pattern.search(text):
            text = pattern.sub(replacement, text)
    return text


def _scrub(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in _TEXT_KEYS:
        value = event.get(key)
        if isinstance(value, str):
            event[key] = scrub(value)
    return event


def _name_logger(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # Modules bind `logger_name` (`logger` is taken by structlog's own API).
    name = event.pop("logger_name", None)
    if name is not None:
        event["logger"] = name
    return event


def _orjson_dumps(event: Any, **_: Any) -> bytes:
    return orjson.dumps(event, default=str)


# Set by configure_logging when lines are JSON: the hot path's batches of
# per-event info lines are then rendered with orjson and written in one call,
# instead of going one by one through structlog's processor chain (which
# costs more than correlating the event itself).
_batch_stream: BinaryIO | None = None
_batch_level = 20


def log_batch(logger_name: str, event: str, rows: Sequence[dict[str, Any]]) -> None:
    """One info line per row, as structlog would print them, in one write."""
    if not rows or _batch_level > 20:
        return
    stream = _batch_stream
    if stream is None:
        logger = structlog.get_logger(logger_name=logger_name)
        for row in rows:
            logger.info(event, **row)
        return
    head = {
        **structlog.contextvars.get_contextvars(),
        "event": event,
        "level": "info",
        "timestamp": iso_time(time.time(), digits=6),
        "logger": logger_name,
    }
    stream.write(b"".join(orjson.dumps(row | head) + b"\n" for row in rows))
    stream.flush()


class LibraryThrottle(stdlib_logging.Filter):
    """One record per (logger, message) every `interval` seconds; the next says how many fell."""

    def __init__(
        self,
        interval: float = LIBRARY_REPEAT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._interval = interval
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._dropped: dict[tuple[str, str], int] = {}

    def filter(self, record: stdlib_logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return False
        self._last[key] = now
        dropped = self._dropped.pop(key, 0)
        if dropped:
            record.suppressed = dropped
        return True


def _bad_request_is_a_warning(record: stdlib_logging.LogRecord) -> bool:
    """A request aiohttp could not parse is the peer's fault: a warning, no traceback."""
    from aiohttp.http_exceptions import HttpProcessingError  # loaded by then, if it ever logs

    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, HttpProcessingError):
        record.levelno, record.levelname = stdlib_logging.WARNING, "WARNING"
        record.exc_info, record.exc_text = None, None
        record.error = f"{type(error).__name__}: {error}"[:300]
    return True


class _LineHandler(stdlib_logging.Handler):
    """Writes each formatted record as one line of bytes (beside structlog's BytesLogger)."""

    def __init__(self, stream: BinaryIO) -> None:
        super().__init__()
        self._stream = stream

    def emit(self, record: stdlib_logging.LogRecord) -> None:
        try:
            line = self.format(record).encode("utf-8", "replace")
            self._stream.write(line + b"\n")
            self._stream.flush()
        except Exception:  # a log line must never raise: logging's own fallback
            self.handleError(record)


_library_handler: stdlib_logging.Handler | None = None


def _route_libraries(renderer: Any, stream: TextIO, *, json: bool, level: int) -> None:
    """Every stdlib logger through structlog's processors, onto the same stream."""
    global _library_handler
    root = stdlib_logging.getLogger()
    if _library_handler is not None:
        root.removeHandler(_library_handler)
    handler: stdlib_logging.Handler = (
        _LineHandler(stream.buffer) if json else stdlib_logging.StreamHandler(stream)
    )
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.stdlib.add_logger_name,
                structlog.stdlib.ExtraAdder(allow=["error", "suppressed"]),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _scrub,
                _redact,
                renderer,
            ],
        )
    )
    handler.addFilter(_bad_request_is_a_warning)
    handler.addFilter(LibraryThrottle())
    root.addHandler(handler)
    # The libraries' debug lines are about the libraries; the daemon's own go to `level`.
    root.setLevel(max(level, stdlib_logging.INFO))
    _library_handler = handler


def saved_logging() -> Callable[[], None]:
    """A function that puts the process's logging back as it is now (tests change it)."""
    config = structlog.get_config()
    batch = (_batch_stream, _batch_level)
    root = stdlib_logging.getLogger()
    handlers, level, library = list(root.handlers), root.level, _library_handler

    def restore() -> None:
        global _batch_stream, _batch_level, _library_handler
        structlog.configure(**config)
        _batch_stream, _batch_level = batch
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
        _library_handler = library

    return restore


def _json_text(event: Any, **_: Any) -> str:
    return orjson.dumps(event, default=str).decode()


def configure_logging(
    *, level: str = "info", fmt: str = "auto", stream: TextIO | None = None
) -> None:
    """Configure structlog for the whole process (the CLI calls this once)."""
    stream = stream or sys.stdout
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    processors: list[Any] = [
        # The account a task works for (bound once where its work starts).
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _name_logger,
        structlog.processors.format_exc_info,
        _scrub,
        _redact,
    ]
    global _batch_stream, _batch_level
    _batch_level = _LEVELS.get(level, 20)
    _batch_stream = None
    factory: Any
    if use_console:
        console = structlog.dev.ConsoleRenderer(colors=stream.isatty())
        processors.append(console)
        factory = structlog.PrintLoggerFactory(stream)
        _route_libraries(console, stream, json=False, level=_batch_level)
    else:
        # orjson renders bytes; BytesLogger writes them without a decode.
        processors.append(structlog.processors.JSONRenderer(serializer=_orjson_dumps))
        factory = structlog.BytesLoggerFactory(stream.buffer)
        _batch_stream = stream.buffer
        _route_libraries(
            structlog.processors.JSONRenderer(serializer=_json_text),
            stream,
            json=True,
            level=_batch_level,
        )
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_batch_level),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # aiohttp's own access log would print a line per request; we log what matters.
    stdlib_logging.getLogger("aiohttp.access").setLevel(stdlib_logging.WARNING)
