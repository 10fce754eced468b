"""The reading path of docs/architecture.md holds in the code: each plain hop of run → plan →
scheduler → stage → engine → model step is one direct call (read from the source, not run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (file, function, the function it calls directly): docs/architecture.md, "The reading path"
HOPS = [
    ("orchestrator/cli/main.py", "cmd_run", "make_plan"),  # run → plan
    ("orchestrator/cli/main.py", "cmd_run", "run_study"),  # plan → scheduler
    ("orchestrator/cli/run.py", "run_study", "StageScheduler"),
    ("workloads/hsjp/train.py", "run_pretrain", "run_epochs"),  # stage → engine
    ("workloads/pose/train.py", "run_finetune", "run_epochs"),
    ("workloads/engine.py", "run_epochs", "train_one_epoch"),
    ("workloads/engine.py", "train_one_epoch", "train_step"),  # engine → model step
    ("workloads/hsjp/train.py", "pretext_step", "forward_loss"),
    ("workloads/pose/train.py", "pose_step", "forward_loss"),
]


def _calls(path: str, function: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text())
    found = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function]
    assert found, f"{path}: no function {function} (docs/architecture.md names it)"
    names = set()
    for node in ast.walk(found[0]):
        if isinstance(node, ast.Call):
            f = node.func
            names.add(f.id if isinstance(f, ast.Name) else getattr(f, "attr", ""))
    return names


@pytest.mark.parametrize("path, function, callee", HOPS)
def test_each_hop_is_one_direct_call(path, function, callee):
    assert callee in _calls(path, function), f"{path}: {function} no longer calls {callee} directly"


def test_the_architecture_page_names_every_place_of_the_path():
    text = (ROOT / "docs/architecture.md").read_text()
    for _, function, callee in HOPS:
        assert f"`{function}`" in text or f"{function}`" in text, function
        assert callee in text, callee
