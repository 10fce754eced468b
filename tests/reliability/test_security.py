"""Security checks: no key can name a path outside the store root; the code base parses YAML
with `safe_load` only, runs no shell, and unpickles checkpoints with `torch.load(weights_only=True)` only
(a checkpoint from the internet must not be able to run code)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from orchestrator.cli.main import main
from orchestrator.store.format import StoreError, check_stage_id, check_study_name
from orchestrator.store.store import Store

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("orchestrator", "workloads", "reports", "benchmarks")
SOURCES = sorted(p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py"))

ESCAPES = [
    "evil\n",
    "../x",
    "../../etc/passwd",
    "/etc/passwd",
    "/tmp/x",
    "a/../../b",
    "a/b",
    "..",
    ".hidden",
    "-rf",
    "",
    "x" * 101,
]


@pytest.mark.parametrize("name", ESCAPES)
def test_study_names_that_escape_the_store_are_rejected(name, tmp_path):
    with pytest.raises(StoreError, match="invalid study name"):
        check_study_name(name)
    store = Store(tmp_path / "store")
    with pytest.raises(StoreError):
        store.study_path(name, "plan.json")
    with pytest.raises(StoreError):
        store.write_study(name, "x", {})
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == []


@pytest.mark.parametrize(
    "stage_id",
    [
        "../pretrain-0123abcd",
        "pretrain-0123abcd/../../x",
        "/abs/pretrain-0123abcd",
        "pretrain-0123abcd/x",
        "pretrain-xyz",
        "eval-0123abcd",
        "pretrain-0123abcd\n",
        None,
    ],
)
def test_stage_ids_that_escape_the_store_are_rejected(stage_id, tmp_path):
    with pytest.raises(StoreError, match="invalid stage id"):
        check_stage_id(stage_id)
    store = Store(tmp_path / "store")
    with pytest.raises(StoreError):
        store.write_result(stage_id, {"status": "done"})
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == []


def test_valid_names_pass():
    assert check_study_name("ablation_n-2.v1") == "ablation_n-2.v1"
    assert check_stage_id("finetune-0123456789abcdef") == "finetune-0123456789abcdef"


def test_study_name_escaping_the_store_fails_run_with_exit_2(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text("name: /etc/evil\ndata: {synthetic: {train: 2}}\n")
    assert main(["run", str(study), "--storage", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert f"error: {study}: name = '/etc/evil': invalid study name" in err
    assert not (tmp_path / "store").exists()


# ------------------------------------------------------------------------------------ source scans
def _calls(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_sources_are_found():
    assert len(SOURCES) > 50 and REPO / "orchestrator" / "store" / "store.py" in SOURCES


def test_no_unsafe_yaml_shell_or_pickle_calls():
    banned = {
        "yaml.load",
        "yaml.unsafe_load",
        "yaml.full_load",
        "os.system",
        "os.popen",
        "pickle.load",
        "pickle.loads",
        "eval",
        "exec",
    }
    found = []
    for path in SOURCES:
        for node, name in _calls(path):
            rel = f"{path.relative_to(REPO)}:{node.lineno}"
            if name in banned:
                found.append(f"{rel}: {name}(...)")
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    found.append(f"{rel}: {name}(shell=...)")
                if kw.arg == "Loader":
                    found.append(f"{rel}: {name}(Loader=...)")
    assert not found, "unsafe calls (use yaml.safe_load, subprocess without a shell):\n" + "\n".join(found)


def test_text_scan_agrees():
    """The literal patterns the issue names, as text (catches aliased imports the AST scan misses)."""
    patterns = ("yaml.load(", "yaml.unsafe_load", "shell=True", "os.system")
    hits = [
        f"{p.relative_to(REPO)}: {pat}"
        for p in SOURCES
        for pat in patterns
        if pat in p.read_text(encoding="utf-8")
    ]
    assert not hits, hits


def test_every_torch_load_passes_weights_only_true():
    loads, bad = 0, []
    for path in SOURCES:
        for node, name in _calls(path):
            if name != "torch.load":
                continue
            loads += 1
            flag = next((kw.value for kw in node.keywords if kw.arg == "weights_only"), None)
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    assert loads >= 3  # store, loading, contexts: the scan sees them
    assert not bad, "torch.load without weights_only=True:\n" + "\n".join(bad)


def test_no_bare_torch_load_import():
    """`from torch import load` would hide a torch.load from the scan above."""
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "torch":
                assert "load" not in {a.name for a in node.names}, path
