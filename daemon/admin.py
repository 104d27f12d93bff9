"""`gws-notifyd status` and `gws-notifyd dead-letters`: the operator's look at a daemon.

`status` asks the running daemon over its local API; `dead-letters` works on the
store itself, whether the daemon runs or not. Neither needs the GWS password.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from daemon import eventloop, exitcodes
from daemon.config import Settings, load_settings
from daemon.errors import StoreError

if TYPE_CHECKING:
    from daemon.store import DeadLetter, Store


def authorization(token: str | None) -> dict[str, str]:
    """The local API's bearer token as a header, if there is one."""
    return {} if token is None else {"Authorization": "Bearer " + token}


def status(args: argparse.Namespace) -> int:
    return eventloop.run(_ask_status(args))


async def _ask_status(args: argparse.Namespace) -> int:
    import aiohttp

    settings = load_settings(args.config, need_password=False)
    host = settings.http.host if settings.http.host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
    api = f"http://{host}:{settings.http.port}"
    token = settings.http.token
    try:
        async with aiohttp.ClientSession(
            headers=authorization(token.reveal() if token is not None else None)
        ) as http:
            async with http.get(f"{api}/v1/status") as response:
                document = await response.json()
            async with http.get(f"{api}/readyz") as response:
                ready = await response.json()
    except aiohttp.ClientError as exc:
        print(f"gws-notifyd: the daemon does not answer at {api}: {exc}", file=sys.stderr)
        return exitcodes.UNAVAILABLE
    document["ready"] = ready
    if args.json:
        print(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
        return exitcodes.OK
    print(_status_table(document))
    return exitcodes.OK


def _status_table(doc: dict[str, Any]) -> str:
    ready = doc["ready"]
    lines = [
        f"gws-notifyd {doc['version']}  up {doc['uptimeSeconds']:.0f} s  "
        f"{'READY' if ready['ready'] else 'NOT READY (' + ', '.join(ready['failed']) + ')'}"
        f"{'  DRAINING' if doc['draining'] else ''}",
        f"pending sends: {doc['pendingSends']}   outbox events: {doc['outboxEvents']}   "
        f"malformed notifications kept: {doc['malformedNotifications']}",
        "",
        f"{'account':<20} {'state':<13} {'subscribed':<10} {'auth':<8} {'pending':>8}  "
        "last notification",
    ]
    for account in doc["accounts"]:
        if not account["configured"]:  # removed from the config; its sends wait for it
            lines.append(
                f"{account['name']:<20} {'(removed)':<13} {'-':<10} {'-':<8} "
                f"{account['pendingSends']:>8}  -"
            )
            continue
        lines.append(
            f"{account['name']:<20} {account['state']:<13} "
            f"{'yes' if account['subscribed'] else 'NO':<10} {account['auth']:<8} "
            f"{account['pendingSends']:>8}  {account['lastNotificationAt'] or '-'}"
        )
    lines += [
        "",
        f"{'sink':<16} {'type':<8} {'backlog':>8} {'delivered':>10} {'retries':>8} "
        f"{'dead':>6}  last error",
    ]
    for sink in doc["sinks"]:
        lines.append(
            f"{sink['name']:<16} {sink['type']:<8} {sink['backlog']:>8} {sink['delivered']:>10} "
            f"{sink['retries']:>8} {sink['deadLetters']:>6}  {sink['lastError'] or '-'}"
        )
    return "\n".join(lines)


# -- dead-letters: on the store itself, whether the daemon runs or not -----------------


def dead_letters(args: argparse.Namespace) -> int:
    store = _open_store(load_settings(args.config, need_password=False))
    if store is None:
        return exitcodes.FAILURE
    try:
        return _DEAD_LETTER_ACTIONS[args.action](store, args)
    finally:
        store.close()


def _open_store(settings: Settings) -> Store | None:
    from daemon.store import Store

    if not settings.store.path.exists():
        print(f"gws-notifyd: no store at {settings.store.path}", file=sys.stderr)
        return None
    try:
        return Store(settings.store.path, synchronous=settings.store.synchronous)
    except StoreError as exc:
        print(f"gws-notifyd: {exc}", file=sys.stderr)
        return None


def _list_letters(store: Store, args: argparse.Namespace) -> int:
    letters = store.list_dead_letters(args.sink, args.limit)
    print(f"{'id':>6} {'sink':<14} {'failed at (UTC)':<20} {'type':<26} {'email':<18} reason")
    for letter in letters:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(letter.failed_at))
        print(
            f"{letter.id:>6} {letter.sink:<14} {when:<20} {letter.type or '-':<26} "
            f"{letter.email_id or '-':<18} {letter.reason}: {letter.detail or ''}"
        )
    print(f"{len(letters)} dead letter(s)")
    return exitcodes.OK


def _show_letters(store: Store, args: argparse.Namespace) -> int:
    if not args.ids:
        print("gws-notifyd: dead-letters show needs an id", file=sys.stderr)
        return exitcodes.USAGE
    for letter_id in args.ids:
        letter = store.get_dead_letter(letter_id)
        if letter is None:
            print(f"gws-notifyd: no dead letter {letter_id}", file=sys.stderr)
            return exitcodes.FAILURE
        print(orjson.dumps(_letter_document(letter), option=orjson.OPT_INDENT_2).decode())
    return exitcodes.OK


def _letter_document(letter: DeadLetter) -> dict[str, Any]:
    try:
        body: Any = orjson.loads(letter.body)
    except orjson.JSONDecodeError:
        body = letter.body.decode("utf-8", "replace")
    return {
        "id": letter.id,
        "sink": letter.sink,
        "eventId": letter.event_id,
        "type": letter.type,
        "emailId": letter.email_id,
        "reason": letter.reason,
        "detail": letter.detail,
        "attempts": letter.attempts,
        "failedAt": letter.failed_at,
        "body": body,
    }


def _replay_letters(store: Store, args: argparse.Namespace) -> int:
    ids = _select(store, args)
    if ids is None:
        return exitcodes.USAGE
    count = store.replay_dead_letters(ids)
    print(f"replayed {count} dead letter(s); the daemon delivers them to their sink")
    return exitcodes.OK


def _purge_letters(store: Store, args: argparse.Namespace) -> int:
    ids = _select(store, args)
    if ids is None:
        return exitcodes.USAGE
    count = store.purge_dead_letters(ids)
    print(f"purged {count} dead letter(s)")
    return exitcodes.OK


def _select(store: Store, args: argparse.Namespace) -> list[int] | None:
    if args.ids:
        return list(args.ids)
    if args.all:
        return [letter.id for letter in store.list_dead_letters(args.sink, 1_000_000)]
    print(
        f"gws-notifyd: dead-letters {args.action} needs ids, or --all (with --sink to narrow)",
        file=sys.stderr,
    )
    return None


_DEAD_LETTER_ACTIONS: dict[str, Callable[[Store, argparse.Namespace], int]] = {
    "list": _list_letters,
    "show": _show_letters,
    "replay": _replay_letters,
    "purge": _purge_letters,
}
