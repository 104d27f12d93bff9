"""systemd notify protocol over a real Unix datagram socket (a path and an abstract name)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.sdnotify import SystemdNotifier


class Systemd:
    """The receiving end of $NOTIFY_SOCKET, as systemd holds it."""

    def __init__(self, address: str, notify_socket: str) -> None:
        self.notify_socket = notify_socket
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(address)
        self.socket.settimeout(5.0)

    def receive(self) -> list[str]:
        return self.socket.recv(4096).decode().split("\n")

    def nothing_waiting(self) -> bool:
        self.socket.setblocking(False)
        try:
            self.socket.recv(4096)
        except BlockingIOError:
            return True
        finally:
            self.socket.settimeout(5.0)
        return False


@pytest.fixture(params=["path", "abstract"])
def systemd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Systemd]:
    if request.param == "path":
        path = str(tmp_path / "notify")
        listener = Systemd(path, path)
    else:
        name = f"gws-notifyd-test-{uuid.uuid4().hex}"
        listener = Systemd("\0" + name, "@" + name)
    yield listener
    listener.socket.close()


@pytest.fixture
def notifiers() -> Iterator[list[SystemdNotifier]]:
    made: list[SystemdNotifier] = []
    yield made
    for notifier in made:
        notifier.close()


def notifier_for(made: list[SystemdNotifier], environ: dict[str, str]) -> SystemdNotifier:
    notifier = SystemdNotifier(environ)
    made.append(notifier)
    return notifier


def test_ready_is_received(systemd: Systemd, notifiers: list[SystemdNotifier]) -> None:
    notifier = notifier_for(notifiers, {"NOTIFY_SOCKET": systemd.notify_socket})
    assert notifier.enabled
    assert notifier.ready()
    assert systemd.receive() == ["READY=1"]


def test_ready_with_status_is_one_datagram(
    systemd: Systemd, notifiers: list[SystemdNotifier]
) -> None:
    notifier = notifier_for(notifiers, {"NOTIFY_SOCKET": systemd.notify_socket})
    assert notifier.ready("subscribed to /v2/me/emails")
    assert systemd.receive() == ["READY=1", "STATUS=subscribed to /v2/me/emails"]
    assert systemd.nothing_waiting()


def test_status_watchdog_and_stopping_are_received_in_order(
    systemd: Systemd, notifiers: list[SystemdNotifier]
) -> None:
    notifier = notifier_for(notifiers, {"NOTIFY_SOCKET": systemd.notify_socket})

    assert notifier.status("3 sends pending")
    assert notifier.watchdog()
    assert notifier.stopping("draining sinks")
    assert notifier.stopping()

    assert systemd.receive() == ["STATUS=3 sends pending"]
    assert systemd.receive() == ["WATCHDOG=1"]
    assert systemd.receive() == ["STOPPING=1", "STATUS=draining sinks"]
    assert systemd.receive() == ["STOPPING=1"]


def test_nobody_listening_is_reported_not_raised(
    tmp_path: Path, notifiers: list[SystemdNotifier]
) -> None:
    notifier = notifier_for(notifiers, {"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.enabled
    assert notifier.ready() is False


def test_closed_notifier_sends_nothing(systemd: Systemd) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": systemd.notify_socket})
    notifier.close()
    assert not notifier.enabled
    assert notifier.ready() is False
    assert systemd.nothing_waiting()


@pytest.mark.parametrize("value", [None, "", "relative/path", "tcp:127.0.0.1:9"])
def test_disabled_without_a_usable_notify_socket(
    value: str | None, notifiers: list[SystemdNotifier]
) -> None:
    environ = {} if value is None else {"NOTIFY_SOCKET": value}
    notifier = notifier_for(notifiers, environ)
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False


@pytest.mark.parametrize(
    ("environ", "seconds"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "2500000", "WATCHDOG_PID": str(os.getpid())}, 2.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_PID": str(os.getpid())}, None),
        ({}, None),
    ],
)
def test_watchdog_seconds_from_the_environment(
    environ: dict[str, str], seconds: float | None, notifiers: list[SystemdNotifier]
) -> None:
    assert notifier_for(notifiers, environ).watchdog_seconds == seconds
