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
    if settings.type in ("redis", "nats"):
        return _bus_sink(settings)
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


def _bus_sink(settings: SinkSettings) -> Sink:
    # Imported here: each bus client is an optional extra.
    assert settings.stream is not None
    if settings.type == "redis":
        from daemon.sinks.redis_streams import RedisStreamSink

        assert settings.url is not None
        return RedisStreamSink(
            name=settings.name,
            url=settings.url,
            stream=settings.stream,
            password=settings.password,
            maxlen=settings.maxlen,
            dedup_window_seconds=settings.dedup_window_seconds,
            timeout_seconds=settings.timeout_seconds,
        )
    from daemon.sinks.nats_jetstream import NatsJetStreamSink

    assert settings.subject is not None
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
