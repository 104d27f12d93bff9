"""Sinks: where events go. One module per kind; `build_sink` picks by config."""

from __future__ import annotations

from collections.abc import Callable

from daemon.config import SinkSettings
from daemon.sinks.base import Sink
from daemon.sinks.jsonl import JsonLinesSink
from daemon.sinks.log import LogSink
from daemon.sinks.webhook import WebhookSink

__all__ = ["Sink", "build_sink"]


def build_sink(settings: SinkSettings) -> Sink:
    return _BUILDERS[settings.type](settings)


def _jsonl(settings: SinkSettings) -> Sink:
    assert settings.path is not None
    return JsonLinesSink(name=settings.name, path=settings.path, fsync=settings.fsync)


def _log(settings: SinkSettings) -> Sink:
    return LogSink(name=settings.name)


def _webhook(settings: SinkSettings) -> Sink:
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


# The bus sinks are imported when configured: each client is an optional extra.


def _redis(settings: SinkSettings) -> Sink:
    from daemon.sinks.redis_streams import RedisStreamSink

    assert settings.url is not None
    assert settings.stream is not None
    return RedisStreamSink(
        name=settings.name,
        url=settings.url,
        stream=settings.stream,
        password=settings.password,
        maxlen=settings.maxlen,
        dedup_window_seconds=settings.dedup_window_seconds,
        timeout_seconds=settings.timeout_seconds,
    )


def _nats(settings: SinkSettings) -> Sink:
    from daemon.sinks.nats_jetstream import NatsJetStreamSink

    assert settings.subject is not None
    assert settings.stream is not None
    return NatsJetStreamSink(
        name=settings.name,
        servers=settings.servers,
        subject=settings.subject,
        stream=settings.stream,
        create_stream=settings.create_stream,
        subjects=settings.subjects,
        duplicate_window_seconds=settings.duplicate_window_seconds,
        token=settings.token,
        user=settings.user,
        password=settings.password,
        creds_file=settings.creds_file,
        timeout_seconds=settings.timeout_seconds,
    )


_BUILDERS: dict[str, Callable[[SinkSettings], Sink]] = {
    "jsonl": _jsonl,
    "log": _log,
    "webhook": _webhook,
    "redis": _redis,
    "nats": _nats,
}
