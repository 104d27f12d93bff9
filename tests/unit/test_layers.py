"""The layers point one way: read every module's imports and hold them to the plan.

    edges        cli, admin, probe, demo, service, app, api,
                 http_server                                   (may import anything)
    application  tracker, correlator, events, notifications,
                 sending, dispatcher, sink_worker, housekeeping
    adapters     gws/ (GWS)       -> bayeux client, foundation
                 cometd (Bayeux)  -> foundation
                 store/           -> foundation
                 sinks/           -> store.rows, foundation
    foundation   errors, exitcodes, backoff, sends, metrics, logging, config, sdnotify
    simulator/   a GWS of its own: imports nothing of the daemon

An adapter never imports the application or an edge, nor an adapter beside it
(the store knows nothing of GWS; a sink nothing of SQL).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "daemon"

FOUNDATION = "foundation"
BAYEUX = "bayeux"
GWS = "gws"
STORE = "store"
STORE_ROWS = "store rows"
SINKS = "sinks"
APPLICATION = "application"
EDGE = "edge"
SIMULATOR = "simulator"

_FOUNDATION_MODULES = {
    "daemon",
    "daemon.errors",
    "daemon.exitcodes",
    "daemon.backoff",
    "daemon.sends",
    "daemon.metrics",
    "daemon.logging",
    "daemon.config",
    "daemon.sdnotify",
    "daemon.pacing",
    "daemon.eventloop",
}
_APPLICATION_MODULES = {
    "daemon.tracker",
    "daemon.correlator",
    "daemon.events",
    "daemon.notifications",
    "daemon.sending",
    "daemon.dispatcher",
    "daemon.sink_worker",
    "daemon.housekeeping",
    "daemon.accounts",
}
_EDGE_MODULES = {
    "daemon.cli",
    "daemon.demo",
    "daemon.service",
    "daemon.app",
    "daemon.api",
    "daemon.http_server",
    "daemon.admin",
    "daemon.probe",
}

_ADAPTERS = {FOUNDATION, BAYEUX, GWS, STORE, STORE_ROWS, SINKS}
ALLOWED: dict[str, set[str]] = {
    FOUNDATION: {FOUNDATION},
    BAYEUX: {FOUNDATION, BAYEUX},
    GWS: {FOUNDATION, BAYEUX, GWS},
    STORE_ROWS: {FOUNDATION, STORE_ROWS},
    STORE: {FOUNDATION, STORE, STORE_ROWS},
    SINKS: {FOUNDATION, STORE_ROWS, SINKS},
    APPLICATION: _ADAPTERS | {APPLICATION},
    EDGE: _ADAPTERS | {APPLICATION, EDGE, SIMULATOR},
    SIMULATOR: {SIMULATOR},
}


def layer_of(module: str) -> str:
    if module in _FOUNDATION_MODULES or module.startswith("daemon.config."):
        return FOUNDATION
    if module == "daemon.__main__" or module in _EDGE_MODULES:
        return EDGE
    if module in _APPLICATION_MODULES:
        return APPLICATION
    if module == "daemon.store.rows":
        return STORE_ROWS
    for prefix, layer in (
        ("daemon.cometd", BAYEUX),
        ("daemon.gws", GWS),
        ("daemon.store", STORE),
        ("daemon.sinks", SINKS),
        ("daemon.simulator", SIMULATOR),
    ):
        if module == prefix or module.startswith(prefix + "."):
            return layer
    raise AssertionError(f"{module} has no layer: add it to tests/unit/test_layers.py")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def daemon_imports(path: Path) -> set[str]:
    """Every `daemon...` module a file imports (at any depth: lazy imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "daemon")
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.split(".")[0] == "daemon"
        ):
            # `from daemon import exitcodes` imports the module daemon.exitcodes.
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if _is_module(candidate) else node.module)
    return found


def _is_module(name: str) -> bool:
    path = PACKAGE.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or path.is_dir()


def violations(imports: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, imported in sorted(imports.items()):
        layer = layer_of(module)
        for target in sorted(imported):
            if layer_of(target) not in ALLOWED[layer]:
                problems.append(f"{module} ({layer}) imports {target} ({layer_of(target)})")
    return problems


def test_every_module_imports_only_its_own_layer_or_below() -> None:
    imports = {module_name(p): daemon_imports(p) for p in PACKAGE.rglob("*.py")}
    assert len(imports) > 20
    assert violations(imports) == []


@pytest.mark.parametrize(
    ("module", "target"),
    [
        ("daemon.gws.session", "daemon.tracker"),
        ("daemon.cometd", "daemon.gws.messages"),
        ("daemon.store.database", "daemon.gws.messages"),
        ("daemon.sinks.jsonl", "daemon.store.database"),
        ("daemon.metrics", "daemon.gws.messages"),
        ("daemon.tracker", "daemon.api"),
        ("daemon.simulator.gws", "daemon.store"),
    ],
)
def test_an_import_against_the_plan_is_reported(module: str, target: str) -> None:
    assert violations({module: {target}}) == [
        f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})"
    ]
