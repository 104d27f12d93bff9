"""`gws-notifyd`: run · check · demo · simulate · send · status · dead-letters · probe.

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

from daemon import __version__, admin, eventloop, exitcodes
from daemon.config import DEFAULT_ACCOUNT, load_settings, read_secret_file
from daemon.errors import ConfigError, GwsNotifydError
from daemon.logging import configure_logging

if TYPE_CHECKING:
    import aiohttp

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
    _probe_arguments(
        commands.add_parser("probe", help="what your GWS says and sends; never sends an email")
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
    from daemon.simulator.options import add_arguments

    parser.add_argument("--listen", default="127.0.0.1:8090", metavar="HOST:PORT")
    add_arguments(parser)


def _send_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api", default="http://127.0.0.1:9410", help="the daemon's local API")
    parser.add_argument("--token-file", type=Path, help="bearer token for the local API")
    parser.add_argument(
        "--account", help="the GWS account to send as (needed when several are configured)"
    )
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


def _probe_arguments(parser: argparse.ArgumentParser) -> None:
    _config_argument(parser)
    parser.add_argument("--seconds", type=float, default=30.0, help="how long to listen")
    parser.add_argument("--out", type=Path, help="write the JSON report here (else stdout)")
    parser.add_argument("--account", help="the GWS account to probe as (default: the first)")


# -- run, check, demo, simulate --------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    from daemon.service import Service

    settings = load_settings(args.config)
    configure_logging(level=settings.logging.level, fmt=settings.logging.format)
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    return eventloop.run(Service(settings, on_started=_tune_collector).run())


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
    from daemon.sinks.jsonl import unwritable

    path = args.config
    settings = load_settings(path)
    for index, sink in enumerate(settings.sinks):
        # What `run` would find only when it opens the file (78 then too).
        problem = unwritable(sink.path) if sink.type == "jsonl" and sink.path else None
        if problem is not None:
            raise ConfigError(f"sinks[{index}].path", problem)
    sinks = ", ".join(f"{s.name} ({s.type})" for s in settings.sinks) or "none"
    agents = ", ".join(
        a.gws.username if a.name == DEFAULT_ACCOUNT else f"{a.name} ({a.gws.username})"
        for a in settings.accounts
    )
    print(
        f"{path}: OK — GWS {settings.gws.base_url} as {agents}, "
        f"API on {settings.http.host}:{settings.http.port}, store {settings.store.path}, "
        f"sinks: {sinks}"
    )
    for warning in settings.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if not settings.sinks:
        print("warning: no [[sinks]]: events are kept only until they are pruned", file=sys.stderr)
    return exitcodes.OK


def _demo(args: argparse.Namespace) -> int:
    from daemon.demo import run_demo

    configure_logging(level="warning", fmt="console")
    return eventloop.run(run_demo(keep_running=args.keep_running))


def _simulate(args: argparse.Namespace) -> int:
    import os

    from daemon.simulator import serve
    from daemon.simulator.options import settings_from_arguments

    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        print(f"gws-notifyd: --listen: expected HOST:PORT, got {args.listen!r}", file=sys.stderr)
        return exitcodes.USAGE
    configure_logging(level="info")
    settings = settings_from_arguments(args, os.environ)
    try:
        eventloop.run(serve(host.strip("[]"), int(port), settings))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"gws-notifyd: cannot listen on {args.listen}: {exc.strerror}", file=sys.stderr)
        return exitcodes.UNAVAILABLE
    return exitcodes.OK


def _probe(args: argparse.Namespace) -> int:
    from daemon.probe import run_probe

    settings = load_settings(args.config)
    # Warnings on stderr: stdout may be the JSON report.
    configure_logging(level="warning", fmt="console", stream=sys.stderr)
    account = settings.account(args.account) if args.account else settings.accounts[0]
    if account is None:
        names = ", ".join(a.name for a in settings.accounts)
        raise ConfigError("--account", f"no account {args.account!r} (accounts: {names})")
    return run_probe(account.gws, seconds=args.seconds, out=args.out)


# -- send ------------------------------------------------------------------------------


def _send(args: argparse.Namespace) -> int:
    return eventloop.run(_post_send(args))


async def _post_send(args: argparse.Namespace) -> int:
    import aiohttp

    token = (
        read_secret_file("--token-file", str(args.token_file), Path.cwd()).reveal()
        if args.token_file
        else None
    )
    api = args.api.rstrip("/")
    prefix = f"/accounts/{args.account}" if args.account else ""
    try:
        async with aiohttp.ClientSession(headers=admin.authorization(token)) as http:
            async with http.post(
                f"{api}{prefix}/api/v2/me/emails/{args.email_id}", json=_send_body(args)
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


# One handler per subcommand of `_parser`; each returns its exit code.
_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run,
    "check": _check,
    "demo": _demo,
    "simulate": _simulate,
    "send": _send,
    "status": admin.status,
    "dead-letters": admin.dead_letters,
    "probe": _probe,
}
