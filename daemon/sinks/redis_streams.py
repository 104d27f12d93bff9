"""Redis Streams sink: each event one stream entry, duplicates dropped at the bus.

Entry fields: `id`, `type`, `account`, `subject`, `time`, `event` (the whole
CloudEvent JSON). The stream name may be a template with `{account}` and
`{type}`. A redelivered event (the same id) within `dedup_window_seconds` is
not appended again: a server-side script takes a whole batch in one round
trip and, per event, sets a marker key with SET NX EX and appends only when
the marker is new — atomic on the server, so no read-modify-write race with
another daemon delivering the same event. (Markers are named after their
stream and are not declared as keys: standalone Redis and Sentinel, not
Redis Cluster.)

Classification (the dispatcher acts on it): the server's reply is the
delivery; a connection error, a timeout, or a LOADING/BUSY/TRYAGAIN/OOM/
READONLY reply is retried with the sink's backoff (a refused AUTH too: the
operator mends the password and nothing was lost meanwhile); a reply that
can never succeed (WRONGTYPE, NOPERM, a script error) dead-letters the event.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from daemon.config import Secret
from daemon.errors import PermanentSinkError, RetryableSinkError, SinkError
from daemon.sends import iso_time
from daemon.sinks.base import Sink
from daemon.sinks.urls import redacted_url
from daemon.store.rows import OutboxRow

try:  # an optional extra: `pip install 'gws-notifyd[redis]'`
    import redis.asyncio as aioredis
    import redis.exceptions as redis_errors
except ImportError:  # pragma: no cover - config check names the install command
    aioredis = None  # type: ignore[assignment]

INSTALL = "pip install 'gws-notifyd[redis]'"
# Replies that say "not now" rather than "never".
_TRANSIENT_PREFIXES = (
    "LOADING",
    "BUSY",
    "TRYAGAIN",
    "OOM",
    "READONLY",
    "MASTERDOWN",
    "CLUSTERDOWN",
)

# KEYS: the batch's streams. ARGV: window, maxlen, the events' fields as one
# JSON array of [stream index, id, type, account, subject, time], then each
# event's body. (One argument per event, not six: the client packs every
# argument in Python, which cost more than the whole script.) An event's
# marker is "<stream>:seen:<id>". Returns {appended, dropped, index of the
# failed event (0-based; -1: none), its error}: events before it are in.
_APPEND_NEW = """
local window, maxlen = tonumber(ARGV[1]), tonumber(ARGV[2])
local events = cjson.decode(ARGV[3])
local appended, dropped = 0, 0
for i, e in ipairs(events) do
  local stream = KEYS[e[1]]
  local fresh = redis.pcall('SET', stream .. ':seen:' .. e[2], '1', 'NX', 'EX', window)
  if type(fresh) == 'table' and fresh.err then
    return {appended, dropped, i - 1, fresh.err}
  end
  if fresh then
    local entry = {'id', e[2], 'type', e[3], 'account', e[4], 'subject', e[5],
                   'time', e[6], 'event', ARGV[3 + i]}
    local added
    if maxlen > 0 then
      added = redis.pcall('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(entry))
    else
      added = redis.pcall('XADD', stream, '*', unpack(entry))
    end
    if type(added) == 'table' and added.err then
      redis.call('DEL', stream .. ':seen:' .. e[2])
      return {appended, dropped, i - 1, added.err}
    end
    appended = appended + 1
  else
    dropped = dropped + 1
  end
end
return {appended, dropped, -1, ''}
"""


def classify_reply(message: str) -> bool:
    """True when an error reply may succeed later."""
    return message.upper().startswith(_TRANSIENT_PREFIXES)


class RedisStreamSink(Sink):
    kind = "redis"

    def __init__(
        self,
        *,
        name: str,
        url: str,
        stream: str,
        password: Secret | None = None,
        maxlen: int = 1_000_000,
        dedup_window_seconds: int = 86_400,
        timeout_seconds: float = 10.0,
    ) -> None:
        if aioredis is None:
            raise SinkError(f"sink {name}: the redis client is not installed ({INSTALL})")
        self.name = name
        self._shown_url = redacted_url(url)
        self._stream = stream
        self._maxlen = maxlen
        self._window = dedup_window_seconds
        self.duplicates_dropped = 0
        self._client = aioredis.Redis.from_url(
            url,
            password=password.reveal() if password is not None else None,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
        )
        self._script = self._client.register_script(_APPEND_NEW)

    def stream_of(self, row: OutboxRow) -> str:
        return self._stream.format(account=row.account, type=row.type)

    async def deliver(self, batch: Sequence[OutboxRow]) -> None:
        streams: dict[str, int] = {}
        fields = []
        for row in batch:
            stream = self.stream_of(row)
            index = streams.setdefault(stream, len(streams) + 1)  # Lua counts from 1
            fields.append(
                (
                    index,
                    row.event_id,
                    row.type,
                    row.account,
                    row.subject or "",
                    iso_time(row.created_at, digits=6),
                )
            )
        keys = list(streams)
        args: list[Any] = [self._window, self._maxlen, orjson.dumps(fields)]
        args.extend(row.body for row in batch)
        try:
            reply = await self._script(keys=keys, args=args)
        except redis_errors.ResponseError as exc:
            raise self._refusal(str(exc), delivered=0) from None
        except (redis_errors.RedisError, OSError, TimeoutError) as exc:
            raise RetryableSinkError(
                f"sink {self.name}: {self._shown_url} unreachable: {type(exc).__name__}: {exc}"
            ) from None
        _appended, dropped, failed_at, error = reply
        self.duplicates_dropped += int(dropped)
        if int(failed_at) >= 0:
            raise self._refusal(_text(error), delivered=int(failed_at))

    def _refusal(self, message: str, *, delivered: int) -> SinkError:
        text = f"sink {self.name}: redis refused: {message[:300]}"
        if classify_reply(message):
            return RetryableSinkError(text, delivered=delivered)
        return PermanentSinkError(text, delivered=delivered)

    async def close(self) -> None:
        await self._client.aclose()


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
