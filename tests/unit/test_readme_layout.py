"""The README's layout table names every module of the daemon: the tree is the architecture."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def layout_rows() -> list[str]:
    text = (REPO / "README.md").read_text()
    return [line for line in text.splitlines() if line.startswith("| `daemon/")]


def test_every_daemon_module_has_its_place_in_the_readme_layout_table() -> None:
    rows = layout_rows()
    assert rows, "README has no layout table"
    missing = []
    for path in sorted((REPO / "daemon").rglob("*.py")):
        relative = path.relative_to(REPO)
        parts = relative.parts
        if path.name in ("__init__.py", "__main__.py") or "simulator" in parts:
            continue
        if len(parts) == 2:  # daemon/x.py: its own row
            named = any(f"`{relative}`" in row for row in rows)
        else:  # a package's module: named in the package's row
            package = f"`{parts[0]}/{parts[1]}/`"
            named = any(
                package in row and (f"`{path.name}`" in row or f"`{path.stem}`" in row)
                for row in rows
            )
        if not named:
            missing.append(str(relative))
    assert missing == []
