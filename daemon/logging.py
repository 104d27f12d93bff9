"""structlog set-up: one JSON object per line on stdout, a console view on a TTY.

Keys: timestamp, level, event, logger, plus context (reference_id, email_id,
send_id, sink, state ...). A last processor blanks any key that looks like a
secret, as a net under the rule that secrets are never logged.
"""

from __future__ import annotations

import logging as stdlib_logging
import sys
import time
from collections.abc import MutableMapping, Sequence
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
        "event": event,
        "level": "info",
        "timestamp": iso_time(time.time(), digits=6),
        "logger": logger_name,
    }
    stream.write(b"".join(orjson.dumps(row | head) + b"\n" for row in rows))
    stream.flush()


def configure_logging(
    *, level: str = "info", fmt: str = "auto", stream: TextIO | None = None
) -> None:
    """Configure structlog for the whole process (the CLI calls this once)."""
    stream = stream or sys.stdout
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _name_logger,
        structlog.processors.format_exc_info,
        _redact,
    ]
    global _batch_stream, _batch_level
    _batch_level = _LEVELS.get(level, 20)
    _batch_stream = None
    factory: Any
    if use_console:
        processors.append(structlog.dev.ConsoleRenderer(colors=stream.isatty()))
        factory = structlog.PrintLoggerFactory(stream)
    else:
        # orjson renders bytes; BytesLogger writes them without a decode.
        processors.append(structlog.processors.JSONRenderer(serializer=_orjson_dumps))
        factory = structlog.BytesLoggerFactory(stream.buffer)
        _batch_stream = stream.buffer
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, 20)),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    # aiohttp's own access log would print a line per request; we log what matters.
    stdlib_logging.getLogger("aiohttp.access").setLevel(stdlib_logging.WARNING)
