"""docs/architecture.md says what the code is: its store table is `store.format.LAYOUT`, row for row, and
its package table names every orchestrator module's package."""

from __future__ import annotations

import re
from pathlib import Path

from orchestrator.store.format import LAYOUT

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs/architecture.md").read_text()


def _section(title: str) -> str:
    start = DOC.index(f"## {title}")
    end = DOC.find("\n## ", start + 3)
    return DOC[start : end if end != -1 else None]


def test_the_store_table_is_the_layout_row_for_row():
    rows = re.findall(r"^\| `([^`]+)` \| (.+) \|$", _section("The store"), re.M)
    assert rows == list(LAYOUT)


def test_the_package_table_names_every_orchestrator_package():
    table = _section("The layout")
    packages = {p.name for p in (ROOT / "orchestrator").iterdir() if (p / "__init__.py").exists()}
    named = set(re.findall(r"^\| `orchestrator/(\w+)/` \|", table, re.M))
    assert named == packages
    for package in packages:  # each module of a package is named in its row
        row = next(line for line in table.splitlines() if line.startswith(f"| `orchestrator/{package}/`"))
        for module in (ROOT / "orchestrator" / package).glob("*.py"):
            if module.stem not in ("__init__", "__main__"):
                assert f"`{module.name}`" in row, f"orchestrator/{package}/{module.name} is not in the table"
