"""The reading path of docs/architecture.md holds in the code: the hop table is parsed, and each plain
hop is one direct call in the source (read with `ast`, not run); the Ray hops are where Ray is entered
(`Tuner.fit`, `TorchTrainer.fit`). No module of the orchestrator resolves code from strings."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs/architecture.md").read_text()
MAX_DIRECT_CALLS = 6


def hop_table() -> list[tuple[str, tuple[str, str], tuple[str, str]]]:
    start = DOC.index("## The reading path")
    section = DOC[start : DOC.index("\n## ", start + 3)]
    rows = re.findall(r"^\| ([^|]+) \| `([^`:]+): (\w+)` \| `([^`:]+): (\w+)` \| [^|]+ \|$", section, re.M)
    assert rows, "docs/architecture.md: no hop table under 'The reading path'"
    return [(hop.strip(), (f1, fn1), (f2, fn2)) for hop, f1, fn1, f2, fn2 in rows]


def _function(path: str, name: str) -> ast.FunctionDef:
    tree = ast.parse((ROOT / path).read_text())
    found = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name]
    assert found, f"{path}: no function {name} (docs/architecture.md names it)"
    return found[0]


def _called(fn: ast.FunctionDef) -> set[str]:
    names = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            f = node.func
            names.add(f.id if isinstance(f, ast.Name) else getattr(f, "attr", ""))
    return names


def test_the_path_is_at_most_six_direct_calls_and_connected():
    rows = hop_table()
    plain = [r for r in rows if r[0].isdigit()]
    assert [int(r[0]) for r in plain] == list(range(1, len(plain) + 1))
    assert len(plain) <= MAX_DIRECT_CALLS
    assert rows[0][1] == ("orchestrator/cli/main.py", "cmd_run")
    for before, after in zip(rows, rows[1:]):  # each hop starts where the one before ended
        assert after[1] == before[2], f"the hop from {after[1]} does not start where {before[2]} ends"


@pytest.mark.parametrize("hop, source, target", hop_table(), ids=lambda v: v if isinstance(v, str) else None)
def test_each_hop_is_in_the_code(hop, source, target):
    caller = _function(*source)
    _function(*target)  # the place the hop reaches exists
    if hop.isdigit() and source == ENGINE_LOOP:  # the engine calls the task's step by its field name
        assert "train_step" in _called(caller), f"{source}: does not call task.train_step"
        assert _wired_as_train_step(target), f"{target}: not the task's train_step (task_of)"
    elif hop.isdigit():
        assert target[1] in _called(caller), f"{source}: no direct call of {target[1]}"
    else:  # a hop through Ray: the caller enters it with fit()
        assert "fit" in _called(caller), f"{source}: does not enter {hop} (no .fit())"


ENGINE_LOOP = ("workloads/engine.py", "train_one_epoch")


def _wired_as_train_step(target: tuple[str, str]) -> bool:
    """`task_of` of the target's module hands `target` to the engine as `Task(train_step=...)`."""
    for node in ast.walk(_function(target[0], "task_of")):
        if isinstance(node, ast.keyword) and node.arg == "train_step":
            return target[1] in {n.id for n in ast.walk(node.value) if isinstance(n, ast.Name)}
    return False


def test_no_module_of_the_orchestrator_resolves_code_from_strings():
    for path in (ROOT / "orchestrator").rglob("*.py"):
        text = path.read_text()
        assert "import_module" not in text and "__import__" not in text, path
