"""Sinks: where events go. One module per kind; `build_sink` picks by config."""

from __future__ import annotations

from daemon.config import SinkSettings
from daemon.sinks.base import Sink
from daemon.sinks.jsonl import JsonLinesSink
from daemon.sinks.log import LogSink
from daemon.sinks.webhook import WebhookSink

__all__ = ["Sink", "build_sink"]


def build_sink(settings: SinkSettings) -> Sink:
    if settings.type == "jsonl":
        assert settings.path is not None
        return JsonLinesSink(name=settings.name, path=settings.path, fsync=settings.fsync)
    if settings.type == "log":
        return LogSink(name=settings.name)
    assert settings.url is not None
    return WebhookSink(
        name=settings.name,
        url=settings.url,
        secret=settings.secret,
        timeout_seconds=settings.timeout_seconds,
        headers=settings.headers,
        verify_tls=settings.verify_tls,
        batch_mode=settings.batch_mode,
    )
