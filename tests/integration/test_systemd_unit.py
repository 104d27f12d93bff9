"""systemd/gws-notifyd.service: `systemd-analyze verify` is clean, the sandbox rates <= 1.5.

`verify` checks that ExecStart= is an executable file. The shipped unit names
/usr/bin/gws-notifyd (where a distribution package puts it), which a checkout does
not have; so the unit is verified as a copy whose ExecStart= executable is the
one of this venv, every other line unchanged. The shipped file itself is also
verified: its only permitted complaint is that missing executable.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import GwsSettings, HttpSettings, ServiceSettings, load_settings
from daemon.http_server import connection_limits

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "gws-notifyd.service"
SHIPPED_EXECUTABLE = "/usr/bin/gws-notifyd"
MAX_EXPOSURE = 1.5

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze not installed (Debian: apt-get install systemd)",
)


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False
    )


def venv_executable() -> Path:
    # The console script pip installed next to this interpreter.
    executable = Path(sys.executable).parent / "gws-notifyd"
    assert executable.is_file(), f"{executable} missing: pip install -e . into the venv"
    return executable


@pytest.fixture
def testable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart= pointing at this venv's gws-notifyd; nothing else differs."""
    text = UNIT.read_text()
    shipped = f"ExecStart={SHIPPED_EXECUTABLE} "
    assert text.count(shipped) == 1, f"expected exactly one {shipped!r} line"
    copy = tmp_path / UNIT.name  # verify derives the unit's name from the file name
    copy.write_text(text.replace(shipped, f"ExecStart={venv_executable()} "))
    return copy


@needs_systemd_analyze
def test_verify_is_clean(testable_unit: Path) -> None:
    result = analyze("verify", str(testable_unit))
    assert result.stderr == ""
    assert result.stdout == ""
    assert result.returncode == 0


@needs_systemd_analyze
def test_verify_of_the_shipped_file_complains_only_of_a_missing_executable() -> None:
    result = analyze("verify", str(UNIT))
    if Path(SHIPPED_EXECUTABLE).is_file():
        assert (result.returncode, result.stderr) == (0, "")
    else:
        assert result.stderr.splitlines() == [
            f"gws-notifyd.service: Command {SHIPPED_EXECUTABLE} is not executable: "
            "No such file or directory"
        ]


@needs_systemd_analyze
def test_security_exposure_is_at_most_1_5(testable_unit: Path) -> None:
    result = analyze("security", "--offline=true", "--no-pager", str(testable_unit))
    assert result.returncode == 0, result.stderr
    match = re.search(
        r"Overall exposure level for gws-notifyd\.service: (\d+(?:\.\d+)?)", result.stdout
    )
    assert match, result.stdout
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, result.stdout


def directives() -> dict[str, list[str]]:
    """KEY -> values, in order, of the unit's non-comment lines (all sections)."""
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "min": 60.0, "": 1.0}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|min|)", value)
    assert match, f"unsupported time span {value!r}"
    return float(match.group(1)) * units[match.group(2)]


def test_stop_timeout_outlasts_the_default_drain() -> None:
    # SIGTERM: Sends in flight get request_timeout + 1 s, CometD disconnect up to
    # 5 s, and sinks whatever is left of shutdown_timeout_seconds (service.py).
    [stop] = directives()["TimeoutStopSec"]
    request = GwsSettings.__dataclass_fields__["request_timeout_seconds"].default
    drain = ServiceSettings().shutdown_timeout_seconds
    assert isinstance(request, float)
    assert seconds(stop) > max(drain, request + 1 + 5) + 10


def test_the_credential_is_the_one_the_daemon_reads(tmp_path: Path) -> None:
    [credential] = directives()["LoadCredential"]
    name, _, source = credential.partition(":")
    assert source == "/etc/gws-notifyd/gws-password"
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / name).write_text("from-systemd\n")
    config = tmp_path / "gws-notifyd.toml"
    config.write_text(
        '[gws]\nbase_url = "https://gws.example.com"\nusername = "agent1"\n'
        f'[store]\npath = "{tmp_path / "state.db"}"\n'
    )
    settings = load_settings(config, {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert settings.gws.password.reveal() == "from-systemd"


def test_the_unit_speaks_the_notify_protocol_the_daemon_implements() -> None:
    found = directives()
    assert found["Type"] == ["notify"]
    assert found["NotifyAccess"] == ["main"]
    assert found["WatchdogSec"] == ["30"]
    # sd_notify needs AF_UNIX; GWS, sinks and the local API need AF_INET/AF_INET6.
    assert found["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]


def test_the_descriptor_limit_leaves_room_for_every_api_connection() -> None:
    [limit] = directives()["LimitNOFILE"]
    configured = HttpSettings().max_connections
    # The default cap is kept whole: no api_connections_lowered at start.
    assert connection_limits(configured, int(limit)).connections == configured
    # The daemon cannot raise the limit itself: setrlimit is among the denied calls.
    assert "~@privileged @resources" in directives()["SystemCallFilter"]
