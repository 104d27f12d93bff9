"""A Bayeux response body → its meta replies and its data messages.

Owns `Message` and the parsing of every answer, long-polling or WebSocket: the
per-message hot path of the daemon, so it does as little per message as it can
(one NamedTuple, no validation beyond the channel being a string).

It never interprets a payload, and never decides what a meta reply means
(`meta.py` does). An answer is decoded with msgspec into typed Structs: a data
message's `data` is not parsed at all but handed over as its JSON text
(`msgspec.Raw`, a slice of the answer), so the GWS layer reads only the fields
it needs and keeps the rest byte for byte. That took the parse of a GWS-shaped
answer from about 11 to 3.5 µs a message. An answer the typed decoder refuses
(an element that is not an object, a channel that is not a string) takes the
general path, which drops what it cannot use, as before.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, NamedTuple

import msgspec
import orjson

from daemon.cometd.errors import TransportError

# Data messages are everything not on /meta/.
_META = "/meta/"
_GC_PAUSE_BYTES = 1024 * 1024


class Message(NamedTuple):
    """One data message delivered on a subscribed channel.

    `data` is the payload's JSON text (`msgspec.Raw`) as it came, or None when
    the message had none; `payload()` gives its value. (An in-process caller,
    such as a test, may hand over a value instead: consumers take both.)

    (NamedTuples on the per-message path: they are created several times
    faster than frozen dataclasses.)
    """

    channel: str
    data: Any


def payload(data: Any) -> Any:
    """A message's `data` as Python values (JSON text is decoded)."""
    if isinstance(data, msgspec.Raw):
        return orjson.loads(memoryview(data))
    return data


class _Reply(msgspec.Struct):
    """What is read of one Bayeux message: its channel, a data message's payload as
    JSON text, and the fields of a meta reply that the client looks at."""

    channel: str
    data: msgspec.Raw = msgspec.Raw()
    id: Any = None
    clientId: Any = None  # Bayeux's field names
    successful: Any = None
    error: Any = None
    advice: Any = None
    subscription: Any = None
    supportedConnectionTypes: Any = None
    version: Any = None


_META_FIELDS = tuple(f for f in _Reply.__struct_fields__ if f != "data")
_ANSWER = msgspec.json.Decoder(list[_Reply] | _Reply)


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


def parse_answer(body: bytes) -> Answer:
    """An answer's meta replies and data messages (see the module docstring)."""
    _check_text(body)
    try:
        with _collector_paused(len(body)):
            decoded = _ANSWER.decode(body)
    except msgspec.ValidationError:
        return split_replies(parse_body(body))
    except msgspec.DecodeError as exc:
        raise TransportError(f"response is not JSON: {exc}") from None
    meta: list[dict[str, Any]] = []
    data: list[Message] = []
    for reply in decoded if isinstance(decoded, list) else [decoded]:
        channel = reply.channel
        if channel.startswith(_META):
            meta.append(_meta_reply(reply))
        else:
            text = reply.data
            data.append(Message(channel, text if len(text) else None))
    return meta, data


def _check_text(body: bytes) -> None:
    """msgspec does not check the UTF-8 of what it skips (the payloads), and an
    event must never carry bytes that are not text: checked once, here."""
    if body.isascii():
        return
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TransportError(f"response is not JSON: {exc}") from None


@contextlib.contextmanager
def _collector_paused(size: int) -> Iterator[None]:
    """Parsing a large answer allocates many objects and no cycles; the cyclic
    collector, triggered again and again meanwhile, tripled the time."""
    pause = size > _GC_PAUSE_BYTES and gc.isenabled()
    if pause:
        gc.disable()
    try:
        yield
    finally:
        if pause:
            gc.enable()


def _meta_reply(reply: _Reply) -> dict[str, Any]:
    """A meta reply as the dict `meta.py` reads (the fields it has, none of null)."""
    fields = {name: getattr(reply, name) for name in _META_FIELDS}
    return {name: value for name, value in fields.items() if value is not None}


def parse_body(body: bytes) -> list[Any]:
    """The JSON messages of a body; a single object counts as a batch of one (what is
    not an object is left for `split_replies` to drop)."""
    try:
        with _collector_paused(len(body)):
            parsed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise TransportError(f"response is not JSON: {exc}") from None
    if isinstance(parsed, dict):
        parsed = [parsed]
    if not isinstance(parsed, list):
        raise TransportError("response is not a JSON array of messages")
    return parsed
