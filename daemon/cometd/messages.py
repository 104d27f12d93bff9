"""A Bayeux response body → its meta replies and its data messages.

Owns `Message` and the parsing of every answer, long-polling or WebSocket: the
per-message hot path of the daemon, so it does as little per message as it can
(one NamedTuple, no validation beyond the channel being a string).

It never interprets a payload (`data` is handed over as orjson made it), and
never decides what a meta reply means (`meta.py` does).
"""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import orjson

from daemon.cometd.errors import TransportError

# Data messages are everything not on /meta/.
_META = "/meta/"
_GC_PAUSE_BYTES = 1024 * 1024


class Message(NamedTuple):
    """One data message delivered on a subscribed channel.

    (NamedTuples on the per-message path: they are created several times
    faster than frozen dataclasses.)
    """

    channel: str
    data: Any


BatchHandler = Callable[[list[Message]], Awaitable[None]]
# An answer, split: (meta replies, data messages), each in the order they came.
Answer = tuple[list[dict[str, Any]], list[Message]]


def split_replies(replies: list[Any]) -> Answer:
    """Meta replies apart from data messages; anything not an object, or without a
    channel, is dropped (one pass over the answer: this is the per-message path)."""
    meta: list[dict[str, Any]] = []
    data: list[Message] = []
    for reply in replies:
        if not isinstance(reply, dict):
            continue
        channel = reply.get("channel")
        if not isinstance(channel, str):
            continue
        if channel.startswith(_META):
            meta.append(reply)
        else:
            data.append(Message(channel, reply.get("data")))
    return meta, data


def parse_body(body: bytes) -> list[Any]:
    """The JSON messages of a body; a single object counts as a batch of one (what is
    not an object is left for `split_replies` to drop)."""
    # Parsing a large answer allocates millions of objects and no cycles; the
    # cyclic collector, triggered again and again meanwhile, tripled the time.
    pause_gc = len(body) > _GC_PAUSE_BYTES and gc.isenabled()
    if pause_gc:
        gc.disable()
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise TransportError(f"response is not JSON: {exc}") from None
    finally:
        if pause_gc:
            gc.enable()
    if isinstance(parsed, dict):
        parsed = [parsed]
    if not isinstance(parsed, list):
        raise TransportError("response is not a JSON array of messages")
    return parsed
