"""A Bayeux (CometD) client on a caller's aiohttp session. No GWS knowledge.

Why not aiocometd: it cannot run on Python >= 3.10, cannot use the caller's
HTTP session (GWS authenticates CometD with the REST session's Basic auth and
JSESSIONID cookie) and does not say when it re-handshook, which is when the
daemon must reconcile. See the README, "Why not aiocometd".

    client.py            `BayeuxClient`: handshake → subscribe → connect, until closed;
                         what each failure leads to
    interface.py         what a caller gives and gets: settings, callbacks, states
    advice.py            the server's advice (timeout, interval, reconnect) as it stands
    meta.py              the /meta/ requests, and what their replies and refusals mean
    messages.py          a response body → meta replies + data `Message`s
    waiting.py           a pause, and work, that close() cuts short
    errors.py            the package's errors, under daemon.errors.CometdError
                         (SessionRefusedError: an HTTP 401/403 under Bayeux)
    transports/
        base.py          `Transport`: exchange messages for replies and data
        long_polling.py  one HTTP POST per exchange, its answer bounded in size
        websocket.py     one WebSocket, replies matched by id, data as it comes

What the package owns:
- the handshake / subscribe / connect cycle, with the server's advice
  (timeout, interval, reconnect none/retry/handshake) honoured;
- long-polling, and WebSocket when the server offers it and the caller allows it,
  behind one small `Transport` interface;
- re-handshake and resubscribe after "unknown client" (401/402), an HTTP
  401/403 or a server restart, with capped, jittered backoff so that a
  restarted server never sees a handshake storm; before each re-handshake the
  caller's `before_handshake` hook runs (GWS: make sure the HTTP session lives);
- the caller's headers (a CSRF token) on every request, the WebSocket upgrade
  included, through a `headers` hook asked afresh each time;
- WebSocket given up for good after two failures (upgrade or session);
- handing each server response to the caller as ONE batch, in order.

It never interprets message payloads, and never blocks on what the caller does
with a batch beyond awaiting the callback (that await is the backpressure). Of
the daemon it imports only `daemon.errors` and `daemon.backoff`.
"""

from daemon.cometd.client import BayeuxClient
from daemon.cometd.errors import OversizedResponseError, SessionRefusedError, TransportError
from daemon.cometd.interface import (
    BeforeHandshake,
    ClientSettings,
    ConnectionState,
    StateHandler,
    Subscribed,
    SubscribedHandler,
)
from daemon.cometd.messages import BatchHandler, Message, payload
from daemon.cometd.messages import parse_body as _parse_body
from daemon.cometd.meta import is_unknown_client as _is_unknown_client
from daemon.cometd.transports import (
    LONG_POLLING,
    WEBSOCKET,
    HeaderSource,
    LongPollingTransport,
    Transport,
    WebSocketTransport,
)

__all__ = [
    "LONG_POLLING",
    "WEBSOCKET",
    "BatchHandler",
    "BayeuxClient",
    "BeforeHandshake",
    "ClientSettings",
    "ConnectionState",
    "HeaderSource",
    "LongPollingTransport",
    "Message",
    "OversizedResponseError",
    "SessionRefusedError",
    "StateHandler",
    "Subscribed",
    "SubscribedHandler",
    "Transport",
    "TransportError",
    "WebSocketTransport",
    "_is_unknown_client",
    "_parse_body",
    "payload",
]
