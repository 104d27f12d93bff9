"""config/prometheus and config/grafana against promtool and a real /metrics.

The alerts and the dashboard name metrics by string; these tests tie every name
and every label they use to the exposition of a running daemon (after one Send,
so that histograms and outcome labels are populated), so a renamed metric fails
here rather than in somebody's on-call night.

promtool comes with Prometheus (Debian: apt-get install --no-install-recommends
prometheus); the tests that need it are skipped without it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.simulator import Simulator
from tests.harness.daemon_process import DaemonProcess, write_config

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "config" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "config" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "config" / "grafana" / "gws-notifyd.json"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian: apt-get install --no-install-recommends prometheus)",
)

# Labels Prometheus adds at scrape time (the daemon never exports them).
TARGET_LABELS = frozenset({"job", "instance"})
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}

METRIC = re.compile(r"\bgws_notifyd_[a-z0-9_]+")
SELECTOR = re.compile(r"\b(gws_notifyd_[a-z0-9_]+)\{([^}]*)\}")
EXACT_MATCHER = re.compile(r'([a-z_]+)\s*=\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


@dataclass(frozen=True)
class Exposition:
    text: str
    # every name a query can use -> the label sets seen on it
    series: dict[str, list[dict[str, str]]]

    @classmethod
    def parse(cls, text: str) -> Exposition:
        series: dict[str, list[dict[str, str]]] = {}
        for family in text_string_to_metric_families(text):
            # A labelled family with no child yet (e.g. read-backs before the
            # first one) has no samples, but its names are already the contract.
            for suffix in SUFFIXES.get(family.type, ("",)):
                series.setdefault(family.name + suffix, [])
            for sample in family.samples:
                series.setdefault(sample.name, []).append(dict(sample.labels))
        return cls(text, series)

    def label_names(self) -> set[str]:
        return {name for labels in self.series.values() for sets in labels for name in sets}


@pytest.fixture
async def exposition(simulator: Simulator, tmp_path: Path) -> AsyncIterator[Exposition]:
    """/metrics of a real daemon that has taken one Send and forwarded its outcome."""
    assert simulator.base_url
    async with DaemonProcess(write_config(tmp_path, gws_url=simulator.base_url)) as daemon:
        status, _ = await daemon.send("E-METRICS")
        assert status == 200
        await daemon.wait_events(tmp_path / "events.jsonl", 1)
        yield Exposition.parse(await daemon.metrics())


def alert_expressions() -> list[str]:
    """The `expr:` of every rule, one line each (plain or `>-` folded YAML scalars)."""
    # PyYAML is not a dependency; this file's two scalar styles are easy to read.
    expressions: list[str] = []
    lines = ALERTS.read_text().splitlines()
    for index, line in enumerate(lines):
        match = re.fullmatch(r"(\s*)expr: (.*)", line)
        if match is None:
            continue
        indent, value = match.groups()
        if value == ">-":
            block = []
            for following in lines[index + 1 :]:
                if not following.startswith(indent + " "):
                    break
                block.append(following.strip())
            value = " ".join(block)
        expressions.append(value)
    return expressions


def dashboard() -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return parsed


def dashboard_panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def dashboard_expressions() -> list[str]:
    return [target["expr"] for panel in dashboard_panels() for target in panel["targets"]]


# -- the alert rules -----------------------------------------------------------------------


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    result = promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    alerts = re.findall(r"^\s+- alert: (\w+)$", ALERTS.read_text(), flags=re.M)
    tests = ALERT_TESTS.read_text()
    assert len(alerts) == 9
    for alert in alerts:
        cases = re.findall(
            rf"alertname: {alert}\n\s+exp_alerts:(.*?)(?=\n\s+- eval_time|\n\s+- name|\Z)",
            tests,
            flags=re.S,
        )
        assert any(case.strip().startswith("[]") for case in cases), f"{alert}: no quiet case"
        assert any("exp_labels" in case for case in cases), f"{alert}: no firing case"


# -- the exposition of a running daemon ------------------------------------------------------


@needs_promtool
async def test_promtool_accepts_the_metrics_of_a_running_daemon(exposition: Exposition) -> None:
    assert "gws_notifyd_send_outcome_latency_seconds_bucket" in exposition.text
    result = promtool("check", "metrics", stdin=exposition.text)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


async def test_alerts_and_dashboard_use_only_exported_metrics_and_labels(
    exposition: Exposition,
) -> None:
    expressions = alert_expressions() + dashboard_expressions()
    assert len(alert_expressions()) == 9
    known_labels = exposition.label_names() | TARGET_LABELS
    used: set[str] = set()
    for expr in expressions:
        names = set(METRIC.findall(expr))
        used |= names
        missing = names - exposition.series.keys()
        assert not missing, f"{expr}: not exported: {sorted(missing)}"
        for name, matchers in SELECTOR.findall(expr):
            for label, value in EXACT_MATCHER.findall(matchers):
                if label in TARGET_LABELS:
                    continue
                values = {labels.get(label) for labels in exposition.series[name]}
                assert value in values, f"{expr}: {name} has no {label}={value!r}: {values}"
        for grouping in GROUPING.findall(expr):
            for label in filter(None, (part.strip() for part in grouping.split(","))):
                assert label in known_labels, f"{expr}: no metric has label {label!r}"
    # The README's contract: every exported family appears somewhere.
    exported = {name for name in exposition.series if not name.endswith("_created")}
    unused = {
        name
        for name in exported - used
        if not name.endswith(("_count", "_sum")) and name != "gws_notifyd_build_info"
    }
    assert not unused, f"exported but neither alerted on nor charted: {sorted(unused)}"


# -- the dashboard ---------------------------------------------------------------------------


def test_the_dashboard_is_an_importable_grafana_dashboard() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 39
    assert board["uid"] == "gws-notifyd"
    [source] = board["__inputs"]
    assert (source["name"], source["pluginId"]) == ("DS_PROMETHEUS", "prometheus")
    panels = board["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            assert 'job=~"$job"' in target["expr"], target["expr"]
    titles = {panel["title"] for panel in panels}
    assert {
        "Send throughput by outcome",
        "Outcomes by correlation result",
        "Send → outcome latency",
        "Backlog per sink",
        "Deliveries per sink by outcome",
        "Dead letters per sink",
        "Connection state",
        "Reconnects and handshakes",
        "Notifications received",
        "Malformed notifications",
        "Pending sends",
        "Failed GWS logins by reason",
        "Credentials refused",
    } <= titles


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses expressions in rule files; Grafana's macros become plain values.
    rules = tmp_path / "dashboard-rules.yml"
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for index, expr in enumerate(dashboard_expressions()):
        promql = expr.replace("$__rate_interval", "5m")
        lines += [f"      - record: dashboard:query_{index}", f"        expr: {json.dumps(promql)}"]
    rules.write_text("\n".join(lines) + "\n")
    result = promtool("check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr
