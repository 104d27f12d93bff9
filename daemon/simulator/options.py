"""`gws-notifyd simulate`'s switches: the command line into `SimulatorSettings`.

By default the simulator is GWS as its docs describe it; each switch departs
from that in one way (or turns on a fault to test against). Two are about
scale rather than GWS's dialect: `--agents N` (users agent-0001 … besides the
configured one) and `--activity RATE` (steady demo traffic).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from daemon.simulator.agents import MAX_GENERATED
from daemon.simulator.gws import SimulatorSettings

DEFAULT_PASSWORD = SimulatorSettings.password  # the simulator's well-known demo credential


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The switches of `simulate` (besides --listen)."""
    parser.add_argument("--username", default=SimulatorSettings.username)
    parser.add_argument(
        "--password-env",
        default="GWS_PASSWORD",
        metavar="VAR",
        help=f"environment variable holding the password "
        f"(default GWS_PASSWORD; {DEFAULT_PASSWORD!r} if unset)",
    )
    parser.add_argument(
        "--agents",
        type=_agent_count,
        default=SimulatorSettings.agents,
        metavar="N",
        help="also users agent-0001 … agent-NNNN (four digits, at most "
        f"{MAX_GENERATED}), with the same password; each has its own emails, sessions "
        "and notifications. POST /control/users adds more",
    )
    parser.add_argument(
        "--activity",
        type=_rate,
        default=SimulatorSettings.activity_per_second,
        metavar="RATE",
        help="publish about RATE call/device/chat notifications a second in total, "
        "each to a random user with a subscribed CometD client (default 0: none; "
        "POST /control/settings activity_per_second changes it)",
    )
    parser.add_argument(
        "--reference-id",
        action="store_true",
        help='answer Sends with {"statusCode":0,"referenceId":N} (the docs show none)',
    )
    parser.add_argument(
        "--notify-delay",
        type=float,
        default=SimulatorSettings.notify_delay_seconds,
        metavar="SECONDS",
    )
    parser.add_argument("--notify-before-answer", action="store_true")
    parser.add_argument("--no-csrf", action="store_true", help="no CSRF token on any POST")
    parser.add_argument(
        "--no-csrf-cometd", action="store_true", help="no CSRF token on CometD POSTs"
    )
    parser.add_argument(
        "--offer-websocket",
        action="store_true",
        help="offer WebSocket in the handshake (every upgrade then fails, as GWS 8.5 has none)",
    )
    parser.add_argument(
        "--sent-emails-leave",
        action="store_true",
        help="a sent email leaves the workspace: GET answers 404",
    )
    parser.add_argument(
        "--error-without-email",
        action="store_true",
        help="Error notifications carry their referenceId and no email",
    )


def settings_from_arguments(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> SimulatorSettings:
    return SimulatorSettings(
        username=args.username,
        password=environ.get(args.password_env) or DEFAULT_PASSWORD,
        reference_id_in_answer=args.reference_id,
        notify_delay_seconds=args.notify_delay,
        notify_before_answer=args.notify_before_answer,
        csrf=not args.no_csrf,
        csrf_cometd=not args.no_csrf_cometd,
        offer_websocket=args.offer_websocket,
        sent_emails_leave=args.sent_emails_leave,
        error_without_email=args.error_without_email,
        agents=args.agents,
        activity_per_second=args.activity,
    )


def _agent_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = -1
    if not 0 <= count <= MAX_GENERATED:
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {MAX_GENERATED}")
    return count


def _rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        rate = -1.0
    # Not NaN nor infinite: the traffic's gaps are 1/rate.
    if not 0 <= rate < float("inf"):
        raise argparse.ArgumentTypeError("expected a non-negative number of notifications a second")
    return rate
