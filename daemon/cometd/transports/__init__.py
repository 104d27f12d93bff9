"""The ways Bayeux messages travel, behind one small interface.

    base.py          `Transport` (exchange, close) and the connection type names
    long_polling.py  `LongPollingTransport`: one HTTP POST per exchange
    websocket.py     `WebSocketTransport`: one socket, replies matched by id

The client handshakes over long-polling always, and moves to WebSocket when
the server offers it and the settings allow it.
"""

from daemon.cometd.transports.base import LONG_POLLING, WEBSOCKET, HeaderSource, Transport
from daemon.cometd.transports.long_polling import LongPollingTransport
from daemon.cometd.transports.websocket import WebSocketTransport

__all__ = [
    "LONG_POLLING",
    "WEBSOCKET",
    "HeaderSource",
    "LongPollingTransport",
    "Transport",
    "WebSocketTransport",
]
