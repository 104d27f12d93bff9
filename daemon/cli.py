"""`gws-notifyd`: run · check · demo · simulate · send · status · dead-letters.

Exit codes are in `daemon.exitcodes`; a bad configuration is one line on
stderr naming the key, no traceback. Process-wide tuning (the garbage
collector, the thread switch interval) belongs to `run` alone, so the
in-process demo and the tests run on an untouched interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from daemon import __version__, exitcodes
from daemon.config import Settings, load_settings
from daemon.errors import ConfigError, GwsNotifydError, StoreError
from daemon.logging import configure_logging

if TYPE_CHECKING:
    import aiohttp

    from daemon.store import DeadLetter, Store

# Young collections every 100k allocations (not 700); the older generations
# still get collected every 1M / 10M, so cyclic garbage does not pile up.
GC_THRESHOLDS = (100_000, 10, 10)
# The store's thread needs the GIL a few times per transaction; while the loop
# is busy it waits a whole switch interval each time (5 ms by default), which
# made commits, not parsing, the bottleneck of a burst.
SWITCH_INTERVAL_SECONDS = 0.0005


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = _COMMANDS.get(args.command)
    if command is None:
        return exitcodes.USAGE
    try:
        return command(args)
    except ConfigError as exc:
        print(f"gws-notifyd: config error: {exc}", file=sys.stderr)
        return exitcodes.CONFIG
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED
    except GwsNotifydError as exc:
        print(f"gws-notifyd: {exc}", file=sys.stderr)
        return exitcodes.FAILURE


# -- arguments -------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gws-notifyd",
        description="Correlated, durable outcomes for Genesys Web Services email Sends.",
    )
    parser.add_argument("--version", action="version", version=f"gws-notifyd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _config_argument(commands.add_parser("run", help="run the daemon"))
    _config_argument(commands.add_parser("check", help="validate a config file and exit"))
    _demo_arguments(commands.add_parser("demo", help="simulator + daemon + three sends, then exit"))
    _simulate_arguments(commands.add_parser("simulate", help="run the GWS simulator alone"))
    _send_arguments(commands.add_parser("send", help="send an email through a running daemon"))
    _status_arguments(commands.add_parser("status", help="state of the running daemon"))
    _dead_letters_arguments(
        commands.add_parser("dead-letters", help="inspect, replay or purge dead letters")
    )
    return parser


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", type=Path, required=True)


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="keep the simulator and daemon running after the demo",
    )


def _simulate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="127.0.0.1:8090", metavar="HOST:PORT")
    parser.add_argument("--username", default="agent1")
    parser.add_argument(
        "--password-env",
        default="GWS_PASSWORD",
        metavar="VAR",
        help="environment variable holding the password "
        "(default GWS_PASSWORD; 'agent1-password' if unset)",
    )
    parser.add_argument(
        "--no-reference-id", action="store_true", help='answer Sends with {"statusCode":0} only'
    )
    parser.add_argument("--notify-delay", type=float, default=0.02, metavar="SECONDS")
    parser.add_argument("--notify-before-answer", action="store_true")
    parser.add_argument("--no-csrf", action="store_true")


def _send_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api", default="http://127.0.0.1:9410", help="the daemon's local API")
    parser.add_argument("--token-file", type=Path, help="bearer token for the local API")
    parser.add_argument("--email-id", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--from", dest="sender", required=True)
    parser.add_argument("--to", action="append", required=True)
    parser.add_argument("--subject")
    parser.add_argument("--body")
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait up to this long for the outcome and print it",
    )


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    _config_argument(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _dead_letters_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "show", "replay", "purge"])
    parser.add_argument("ids", nargs="*", type=int, help="dead letter ids (show, replay, purge)")
    _config_argument(parser)
    parser.add_argument("--sink", help="only this sink's dead letters")
    parser.add_argument("--all", action="store_true", help="replay/purge every matching letter")
    parser.add_argument("--limit", type=int, default=100)


def _authorization(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": "Bearer " + token}


# -- run, check, demo, simulate --------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    from daemon.service import Service

    settings = load_settings(args.config)
    configure_logging(level=settings.logging.level, fmt=settings.logging.format)
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    return asyncio.run(Service(settings, on_started=_tune_collector).run())


def _tune_collector() -> None:
    """Once start-up has built its long-lived objects (pending sends among them).

    The notification path allocates millions of short-lived objects per large
    batch; with the default thresholds the collector runs thousands of times
    per batch and rescans everything long-lived. Freeze what start-up built
    and collect young objects less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _check(args: argparse.Namespace) -> int:
    path = args.config
    settings = load_settings(path)
    sinks = ", ".join(f"{s.name} ({s.type})" for s in settings.sinks) or "none"
    print(
        f"{path}: OK — GWS {settings.gws.base_url} as {settings.gws.username}, "
        f"API on {settings.http.host}:{settings.http.port}, store {settings.store.path}, "
        f"sinks: {sinks}"
    )
    if not settings.sinks:
        print("warning: no [[sinks]]: events are kept only until they are pruned", file=sys.stderr)
    return exitcodes.OK


def _demo(args: argparse.Namespace) -> int:
    from daemon.demo import run_demo

    configure_logging(level="warning", fmt="console")
    return asyncio.run(run_demo(keep_running=args.keep_running))


def _simulate(args: argparse.Namespace) -> int:
    import os

    from daemon.simulator import SimulatorSettings, serve

    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        print(f"gws-notifyd: --listen: expected HOST:PORT, got {args.listen!r}", file=sys.stderr)
        return exitcodes.USAGE
    configure_logging(level="info")
    settings = SimulatorSettings(
        username=args.username,
        password=os.environ.get(args.password_env) or "agent1-password",
        reference_id_in_answer=not args.no_reference_id,
        notify_delay_seconds=args.notify_delay,
        notify_before_answer=args.notify_before_answer,
        csrf=not args.no_csrf,
    )
    try:
        asyncio.run(serve(host.strip("[]"), int(port), settings))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"gws-notifyd: cannot listen on {args.listen}: {exc.strerror}", file=sys.stderr)
        return exitcodes.UNAVAILABLE
    return exitcodes.OK


# -- send, status ----------------------------------------------------------------------


def _send(args: argparse.Namespace) -> int:
    return asyncio.run(_post_send(args))


async def _post_send(args: argparse.Namespace) -> int:
    import aiohttp

    token = args.token_file.read_text().strip() if args.token_file else None
    api = args.api.rstrip("/")
    try:
        async with aiohttp.ClientSession(headers=_authorization(token)) as http:
            async with http.post(
                f"{api}/api/v2/me/emails/{args.email_id}", json=_send_body(args)
            ) as response:
                answer = await response.json(content_type=None)
            print(orjson.dumps({"httpStatus": response.status, **answer}).decode())
            send_id = answer.get("sendId") if isinstance(answer, dict) else None
            if response.status >= 300 or not send_id or args.wait <= 0:
                return exitcodes.OK if response.status < 300 else exitcodes.FAILURE
            return await _wait_for_outcome(http, api, send_id, args.wait)
    except aiohttp.ClientError as exc:
        print(f"gws-notifyd: cannot reach {api}: {exc}", file=sys.stderr)
        return exitcodes.UNAVAILABLE


def _send_body(args: argparse.Namespace) -> dict[str, Any]:
    email: dict[str, Any] = {"from": args.sender, "to": args.to}
    if args.subject:
        email["subject"] = args.subject
    if args.body:
        email["body"] = args.body
    return {"operationName": "Send", "queueName": args.queue, "email": email}


async def _wait_for_outcome(
    http: aiohttp.ClientSession, api: str, send_id: str, wait: float
) -> int:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        async with http.get(f"{api}/v1/sends/{send_id}") as response:
            record = await response.json()
        if not record.get("pending"):
            print(orjson.dumps(record).decode())
            return exitcodes.OK
        await asyncio.sleep(0.2)
    print(f"gws-notifyd: send {send_id} still pending after {wait:g} s", file=sys.stderr)
    return exitcodes.FAILURE


def _status(args: argparse.Namespace) -> int:
    return asyncio.run(_ask_status(args))


async def _ask_status(args: argparse.Namespace) -> int:
    import aiohttp

    settings = load_settings(args.config, need_password=False)
    host = settings.http.host if settings.http.host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
    api = f"http://{host}:{settings.http.port}"
    token = settings.http.token
    try:
        async with aiohttp.ClientSession(
            headers=_authorization(token.reveal() if token is not None else None)
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
    cometd = doc["cometd"]
    ready = doc["ready"]
    lines = [
        f"gws-notifyd {doc['version']}  up {doc['uptimeSeconds']:.0f} s  "
        f"{'READY' if ready['ready'] else 'NOT READY (' + ', '.join(ready['failed']) + ')'}"
        f"{'  DRAINING' if doc['draining'] else ''}",
        f"CometD: {cometd['state']}, {'subscribed' if cometd['subscribed'] else 'not subscribed'}"
        f" ({cometd['transport'] or 'no transport'})",
        f"pending sends: {doc['pendingSends']}   outbox events: {doc['outboxEvents']}   "
        f"malformed notifications kept: {doc['malformedNotifications']}",
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


def _dead_letters(args: argparse.Namespace) -> int:
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

# One handler per subcommand of `_parser`; each returns its exit code.
_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run,
    "check": _check,
    "demo": _demo,
    "simulate": _simulate,
    "send": _send,
    "status": _status,
    "dead-letters": _dead_letters,
}
