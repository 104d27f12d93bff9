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

Batches are pipelined (`pipeline_depth`): sent back to back on one connection
of the sink's own and their replies read in the same order, so that the
server works on one batch while the next is being prepared. redis-py's
client waits for each reply before the next command on a connection, and two
connections would not keep the order. Order across a failure: each batch
sent while its predecessor is still unanswered names it, and the script
refuses it (taking none of it) unless the predecessor was taken whole (the
number of the last batch taken whole is kept in a chain key of this sink's
own, `gws-notifyd:chain:<sink>:<random>`, expiring with the dedup window);
a batch handed over once a failure is known is refused here, until
`resume()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Sequence
from typing import Any, NamedTuple

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

# KEYS: the batch's streams. ARGV: window, maxlen, the chain key, the number of
# the batch that must have been taken whole first ('' for none), this batch's
# number, the events' fields as one JSON array of [stream index, id, type,
# account, subject, time], then each event's body. (One argument per event,
# not six: the client packs every argument in Python, which cost more than the
# whole script.) An event's marker is "<stream>:seen:<id>". Returns {appended,
# dropped, index of the failed event (0-based; -1: none), its error}: events
# before it are in; FENCED (index 0) when the named batch was not taken whole.
_APPEND_NEW = """
local window, maxlen, chain = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
if ARGV[4] ~= '' and redis.call('GET', chain) ~= ARGV[4] then
  return {0, 0, 0, 'FENCED'}
end
local events = cjson.decode(ARGV[6])
local appended, dropped = 0, 0
for i, e in ipairs(events) do
  local stream = KEYS[e[1]]
  local fresh = redis.pcall('SET', stream .. ':seen:' .. e[2], '1', 'NX', 'EX', window)
  if type(fresh) == 'table' and fresh.err then
    return {appended, dropped, i - 1, fresh.err}
  end
  if fresh then
    local entry = {'id', e[2], 'type', e[3], 'account', e[4], 'subject', e[5],
                   'time', e[6], 'event', ARGV[6 + i]}
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
redis.call('SET', chain, ARGV[5], 'EX', window)
return {appended, dropped, -1, ''}
"""
FENCED = "FENCED"
# Batches in flight on the connection.
PIPELINE_DEPTH = 4


def classify_reply(message: str) -> bool:
    """True when an error reply may succeed later."""
    return message.upper().startswith(_TRANSIENT_PREFIXES)


class _Sent(NamedTuple):
    """A batch sent: on which connection, in which epoch, and the reads to wait for."""

    connection: Any
    epoch: int
    before: asyncio.Future[None] | None  # done once the previous batch's reply was read
    done: asyncio.Future[None]  # set once this batch's reply was read (or never will be)


class RedisStreamSink(Sink):
    kind = "redis"
    pipeline_depth = PIPELINE_DEPTH

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
        self._chain = f"gws-notifyd:chain:{name}:{secrets.token_hex(8)}"
        self.duplicates_dropped = 0
        self._client = aioredis.Redis.from_url(
            url,
            password=password.reveal() if password is not None else None,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
        )
        self._connection: Any = None
        self._sending = asyncio.Lock()
        # Replies are read in the order the batches were sent: each reader waits
        # for the one before it. `_epoch` changes when the connection is lost (or
        # a reply is left unread): a batch sent before that has no reply to read.
        self._reader_done: asyncio.Future[None] | None = None
        self._epoch = 0
        self._halted = False
        self._sent = 0
        self._unanswered = 0

    def stream_of(self, row: OutboxRow) -> str:
        return self._stream.format(account=row.account, type=row.type)

    def _arguments(self, batch: Sequence[OutboxRow]) -> tuple[list[str], list[Any]]:
        """The script's keys, and its arguments after the chain's three."""
        # Per event, only lookups: the stream name is formatted once per
        # (account, type) and the time once per distinct timestamp (the events
        # of one group of notifications share it): both were a tenth of the
        # daemon's time while it drained a backlog into Redis.
        streams: dict[str, int] = {}  # Lua counts from 1
        index_of: dict[tuple[str, str], int] = {}
        fields = []
        at, shown = None, ""
        for row in batch:
            index = index_of.get((row.account, row.type))
            if index is None:
                stream = self.stream_of(row)
                index = index_of[row.account, row.type] = streams.setdefault(
                    stream, len(streams) + 1
                )
            if row.created_at != at:
                at, shown = row.created_at, iso_time(row.created_at, digits=6) or ""
            fields.append((index, row.event_id, row.type, row.account, row.subject or "", shown))
        args: list[Any] = [orjson.dumps(fields)]
        args.extend(row.body for row in batch)
        return list(streams), args

    async def open(self) -> None:
        await self._connected()

    async def deliver(self, batch: Sequence[OutboxRow]) -> None:
        try:
            keys, args = self._arguments(batch)
            sent = await self._send(keys, args)
            reply = await self._receive(sent)
            _appended, dropped, failed_at, error = reply
            self.duplicates_dropped += int(dropped)
            if int(failed_at) >= 0:
                message = _text(error)
                if message == FENCED:
                    raise self._behind_a_failure()
                raise self._refusal(message, delivered=int(failed_at))
        except SinkError:
            self._halted = True  # batches handed over after this one wait for resume()
            raise

    def resume(self) -> None:
        self._halted = False

    def _behind_a_failure(self) -> RetryableSinkError:
        return RetryableSinkError(f"sink {self.name}: not taken, an earlier batch failed")

    async def _send(self, keys: list[str], args: list[Any]) -> _Sent:
        """Send the script for one batch, behind those sent before it."""
        async with self._sending:
            connection = await self._connected()
            # From here to the send, nothing waits: the batch before this one was
            # either answered already (taken whole, or failed: then `_halted`), or
            # is still unanswered and named, so that the script refuses this one
            # unless that one was taken whole.
            if self._halted:
                raise self._behind_a_failure()
            number = self._sent + 1
            previous = str(self._sent) if self._unanswered else ""
            command = connection.pack_command(
                "EVAL",
                _APPEND_NEW,
                len(keys),
                *keys,
                self._window,
                self._maxlen,
                self._chain,
                previous,
                number,
                *args,
            )
            try:
                await connection.send_packed_command(command, check_health=False)
            except (redis_errors.RedisError, OSError, TimeoutError) as exc:
                await self._lost(connection)
                raise self._unreachable(exc) from None
            self._sent = number
            self._unanswered += 1
            before = self._reader_done
            self._reader_done = asyncio.get_running_loop().create_future()
            return _Sent(connection, self._epoch, before, self._reader_done)

    async def _receive(self, sent: _Sent) -> Any:
        """The reply to `sent`, read after the replies to every batch sent before it."""
        read = False
        try:
            if sent.before is not None:
                await sent.before
            if sent.epoch != self._epoch:
                raise RetryableSinkError(
                    f"sink {self.name}: {self._shown_url}: connection lost with an earlier batch"
                )
            try:
                reply = await sent.connection.read_response()
            except redis_errors.ResponseError as exc:
                read = True
                raise self._refusal(str(exc), delivered=0) from None
            except (redis_errors.RedisError, OSError, TimeoutError) as exc:
                raise self._unreachable(exc) from None
            read = True
            return reply
        finally:
            self._unanswered -= 1
            sent.done.set_result(None)
            if not read and sent.epoch == self._epoch:
                # Its reply, left unread, would be taken for the next batch's.
                await self._lost(sent.connection)

    async def _connected(self) -> Any:
        """The sink's own connection, out of the client's pool (redis-py's
        `send_packed_command` connects it again after a loss)."""
        if self._connection is None:
            try:
                pool: Any = self._client.connection_pool  # its methods are untyped
                self._connection = await pool.get_connection()
            except (redis_errors.RedisError, OSError, TimeoutError) as exc:
                raise self._unreachable(exc) from None
        return self._connection

    async def _lost(self, connection: Any) -> None:
        """Replies still due on `connection` will never be read: fail the batches
        waiting for them, and let the next batch go out on a fresh connection."""
        self._epoch += 1
        if self._connection is connection:
            self._connection = None
        with contextlib.suppress(redis_errors.RedisError, OSError):
            await connection.disconnect(nowait=True)
        await self._client.connection_pool.release(connection)

    def _unreachable(self, exc: BaseException) -> RetryableSinkError:
        return RetryableSinkError(
            f"sink {self.name}: {self._shown_url} unreachable: {type(exc).__name__}: {exc}"
        )

    def _refusal(self, message: str, *, delivered: int) -> SinkError:
        text = f"sink {self.name}: redis refused: {message[:300]}"
        if classify_reply(message):
            return RetryableSinkError(text, delivered=delivered)
        return PermanentSinkError(text, delivered=delivered)

    async def close(self) -> None:
        if self._connection is not None:
            await self._client.connection_pool.release(self._connection)
        await self._client.aclose()


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
