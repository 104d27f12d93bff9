"""config/prometheus and config/grafana against promtool and a real /metrics.

The alerts and the dashboard name metrics by string; these tests tie every name
and every label they use to the exposition of a running daemon (after one Send,
so that histograms and outcome labels are populated), so a renamed metric fails
here rather than in somebody's on-call night. What one GWS account does carries
an `account` label (which metrics do is read from `daemon.metrics`): the
dashboard selects them by its `account` variable and the alerts over them fire
per account.

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
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from daemon.metrics import Metrics
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
# A metric name and the selector braces after it, if any.
SELECTED = re.compile(r"\b(gws_notifyd_[a-z0-9_]+)(\{[^}]*\})?")
ACCOUNT_VARIABLE = 'account=~"$account"'
# What leaves labels out of its result: an aggregation (unless `by` keeps them or
# `without` spares them), vector matching (`on` keeps only what it names), and the
# functions whose result has no labels at all.
AGGREGATION = re.compile(
    r"\b(?:sum|min|max|avg|group|count|count_values|stddev|stdvar|topk|bottomk|quantile"
    r"|limitk|limit_ratio)\s*(?=[(]|by\b|without\b)"
)
CLAUSE = re.compile(r"\s*(by|without)\s*\(([^)]*)\)")
MATCHING = re.compile(r"\b(on|ignoring)\s*\(([^)]*)\)")
LABEL_DROPPING_FUNCTIONS = re.compile(r"\b(?:absent|absent_over_time|scalar)\s*\(")


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


def alert_rules() -> dict[str, dict[str, str]]:
    """Every alert by name: its `expr` and annotations, one line each (plain, quoted
    or `>-` folded YAML scalars)."""
    # PyYAML is not a dependency; this file's three scalar styles are easy to read.
    rules: dict[str, dict[str, str]] = {}
    rule: dict[str, str] = {}
    lines = ALERTS.read_text().splitlines()
    for index, line in enumerate(lines):
        match = re.fullmatch(r"(\s*)(?:- )?(alert|expr|summary|description|runbook): (.*)", line)
        if match is None:
            continue
        indent, key, value = match.groups()
        if value == ">-":
            block = []
            for following in lines[index + 1 :]:
                if not following.startswith(indent + " "):
                    break
                block.append(following.strip())
            value = " ".join(block)
        elif value.startswith('"'):
            value = value.removeprefix('"').removesuffix('"')
        if key == "alert":
            rule = rules[value] = {}
        else:
            rule[key] = value
    return rules


def alert_expressions() -> list[str]:
    """The `expr:` of every rule, one line each."""
    return [rule["expr"] for rule in alert_rules().values()]


def account_metrics() -> set[str]:
    """The names a query can use of every metric that carries the `account` label."""
    metrics = Metrics()
    metrics.account("a")
    names: set[str] = set()
    for metric in vars(metrics).values():
        # Read from the metric, not from samples: a labelled metric has no sample
        # before its first event (notifications_received_total, say).
        if isinstance(metric, MetricWrapperBase) and "account" in metric._labelnames:
            for family in metric.describe():
                names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


def labels_left_out(expr: str) -> list[str]:
    """Where `expr` leaves the `account` label out of its result."""
    found: list[str] = []
    for aggregation in AGGREGATION.finditer(expr):
        rest = expr[aggregation.end() :]
        clause = CLAUSE.match(rest)
        if clause is None and rest.startswith("("):
            clause = CLAUSE.match(rest, closing_parenthesis(rest) + 1)
        kind, labels = clause.groups() if clause else ("by", "")
        named = {label.strip() for label in labels.split(",")}
        if ("account" in named) != (kind == "by"):
            found.append(f"{aggregation.group().strip()} {kind} ({labels})")
    for matching in MATCHING.finditer(expr):
        kind, labels = matching.groups()
        named = {label.strip() for label in labels.split(",")}
        if ("account" in named) != (kind == "on"):
            found.append(matching.group())
    found += [function.group() for function in LABEL_DROPPING_FUNCTIONS.finditer(expr)]
    return found


def closing_parenthesis(text: str) -> int:
    """The index of the parenthesis that closes the one `text` starts with."""
    depth = 0
    for index, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return index
    raise AssertionError(f"unbalanced parentheses: {text}")


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


def test_every_alert_over_an_account_metric_fires_per_account() -> None:
    per_account = account_metrics()
    assert {"gws_notifyd_cometd_subscribed", "gws_notifyd_sends_total"} <= per_account
    alerted = set()
    for name, rule in alert_rules().items():
        if not set(METRIC.findall(rule["expr"])) & per_account:
            continue
        alerted.add(name)
        assert not labels_left_out(rule["expr"]), f"{name} loses the account label"
        text = rule["summary"] + rule["description"]
        assert "{{ $labels.account }}" in text, f"{name}: the annotations do not name it"
    assert {"GwsNotifydNotSubscribed", "GwsNotifydCredentialsRefused"} <= alerted


def test_the_account_label_check_sees_what_drops_it() -> None:
    kept = [
        "gws_notifyd_cometd_subscribed == 0",
        "sum by (job, instance, account) (increase(gws_notifyd_sends_total[5m])) > 0",
        "sum(increase(gws_notifyd_sends_total[5m])) without (outcome) > 0",
        "gws_notifyd_pending_sends > on (job, instance, account) gws_notifyd_ready",
    ]
    dropped = [
        "min(gws_notifyd_cometd_subscribed) == 0",
        "sum by (job, instance) (increase(gws_notifyd_sends_total[5m])) > 0",
        "max(gws_notifyd_pending_sends) by (instance) > 10",
        "sum without (account) (gws_notifyd_pending_sends) > 10",
        "gws_notifyd_pending_sends > on (job, instance) gws_notifyd_ready",
        "absent(gws_notifyd_cometd_subscribed)",
    ]
    assert [expr for expr in kept if labels_left_out(expr)] == []
    assert [expr for expr in dropped if not labels_left_out(expr)] == []


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
        "Accounts not subscribed",
    } <= titles


def test_the_dashboard_selects_accounts_by_an_account_variable() -> None:
    variables = {variable["name"]: variable for variable in dashboard()["templating"]["list"]}
    account = variables["account"]
    query = (
        'label_values(gws_notifyd_cometd_subscribed{job=~"$job", instance=~"$instance"}, account)'
    )
    assert (account["query"]["query"], account["definition"]) == (query, query)
    assert (account["multi"], account["includeAll"]) == (True, True)
    assert account["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def test_every_dashboard_query_of_an_account_metric_filters_on_the_account_variable() -> None:
    per_account = account_metrics()
    for expr in dashboard_expressions():
        for name, selector in SELECTED.findall(expr):
            if name in per_account:
                assert ACCOUNT_VARIABLE in selector, f"{expr}: {name} ignores $account"


def test_the_dashboard_lists_the_accounts_not_subscribed() -> None:
    [panel] = [panel for panel in dashboard_panels() if panel["title"] == "Accounts not subscribed"]
    [target] = panel["targets"]
    assert re.fullmatch(r"gws_notifyd_cometd_subscribed\{[^}]*\} == 0", target["expr"])
    assert (target["instant"], target["format"]) == (True, "table")


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
