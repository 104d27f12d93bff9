"""The /meta/ channels: the requests the client sends, and what their replies mean.

Pure functions over dicts: building each meta request (the key order is the
order on the wire), finding the reply to it, and turning a refusal into the
error the client acts on (`*_refusal`: returned, for the caller to raise once
it has handed over what came with the refusal).

It never sends anything, never keeps state, and never reads a data message.
"""

from __future__ import annotations

from typing import Any

from daemon.cometd.errors import TransportError, UnknownClientError
from daemon.errors import CometdError, HandshakeError, ServerGoneError

HANDSHAKE = "/meta/handshake"
SUBSCRIBE = "/meta/subscribe"
CONNECT = "/meta/connect"
DISCONNECT = "/meta/disconnect"


def handshake_request(message_id: str, connection_types: list[str]) -> dict[str, Any]:
    return {
        "channel": HANDSHAKE,
        "version": "1.0",
        "minimumVersion": "1.0",
        "supportedConnectionTypes": connection_types,
        "advice": {"timeout": 60000, "interval": 0},
        "id": message_id,
    }


def subscribe_request(message_id: str, client_id: str, channel: str) -> dict[str, Any]:
    return {
        "channel": SUBSCRIBE,
        "clientId": client_id,
        "subscription": channel,
        "id": message_id,
    }


def connect_request(
    message_id: str, client_id: str, connection_type: str, *, first: bool
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "channel": CONNECT,
        "clientId": client_id,
        "connectionType": connection_type,
        "id": message_id,
    }
    if first:
        # Without this the server holds the first connect for its whole
        # long-poll timeout and start-up stalls (both Node servers do).
        message["advice"] = {"timeout": 0}
    return message


def disconnect_request(message_id: str, client_id: str) -> dict[str, Any]:
    return {"channel": DISCONNECT, "clientId": client_id, "id": message_id}


def reply_for(meta: list[dict[str, Any]], channel: str) -> dict[str, Any]:
    """The first reply on `channel`; without one the answer is useless."""
    for reply in meta:
        if reply.get("channel") == channel:
            return reply
    raise TransportError(f"no {channel} reply in the answer")


def handshake_refusal(reply: dict[str, Any], reconnect: object) -> CometdError | None:
    """What an unsuccessful handshake reply means; None if it succeeded."""
    if reply.get("successful") and isinstance(reply.get("clientId"), str):
        return None
    if reconnect == "none":
        return ServerGoneError(f"handshake refused: {reply.get('error')}")
    return HandshakeError(f"handshake refused: {reply.get('error', 'no reason given')}")


def subscribe_refusal(
    requests: list[dict[str, Any]], meta: list[dict[str, Any]]
) -> CometdError | None:
    """The error of the first subscription refused or unanswered; None if all succeeded."""
    replies = {str(m.get("id")): m for m in meta if m.get("channel") == SUBSCRIBE}
    for subscribe in requests:
        # Matched by id: an "unknown client" reply need not name the subscription.
        answer = replies.get(str(subscribe["id"])) or _reply_naming(meta, subscribe["subscription"])
        if answer is None or not answer.get("successful"):
            error = answer.get("error") if answer else "no answer"
            if is_unknown_client(error):
                return UnknownClientError(str(error))
            return HandshakeError(f"subscribe to {subscribe['subscription']} refused: {error}")
    return None


def connect_refusal(reply: dict[str, Any], reconnect: object) -> CometdError:
    """What an unsuccessful connect reply means, under the advice now in force."""
    error = reply.get("error")
    if reconnect == "none":
        return ServerGoneError(f"server advised reconnect none: {error}")
    if reconnect == "handshake" or is_unknown_client(error):
        return UnknownClientError(str(error))
    return TransportError(f"connect refused: {error}")


def is_unknown_client(error: object) -> bool:
    # Bayeux errors are "code:args:message": CometD says "402::session_unknown"
    # or "402::Unknown client", faye "401:<clientId>:Unknown client".
    return isinstance(error, str) and error.split(":", 1)[0] in ("401", "402")


def _reply_naming(meta: list[dict[str, Any]], channel: str) -> dict[str, Any] | None:
    return next(
        (
            m
            for m in meta
            if m.get("channel") == SUBSCRIBE
            and _subscription_matches(m.get("subscription"), channel)
        ),
        None,
    )


def _subscription_matches(subscription: object, channel: str) -> bool:
    if isinstance(subscription, list):
        return channel in subscription
    return subscription == channel
