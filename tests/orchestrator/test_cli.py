"""`hsjp-study` in-process (`main([...])`): commands listed, plan JSON, exit codes, `error:` without a
traceback and nothing written for user mistakes. Ray is never started: `run` gets a fake executor."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

import orchestrator.cli.main as cli
from orchestrator.cli.main import main
from orchestrator.spec.inputs import data_config
from orchestrator.store.store import Store
from tests.orchestrator.standins import SMALL_STUDY

COMMANDS = ("run", "plan", "status", "report", "make-data", "puzzle", "evaluate")
SMALL = (
    "\nname: tiny" + SMALL_STUDY + "matrix: {pretrain.n: [2, 3]}\ninclude:\n  - {pretrain.method: scratch}\n"
)


@pytest.fixture
def tiny(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(SMALL)
    return path


@pytest.fixture
def fake_execution(monkeypatch):
    """orchestrator.cli.run replaced: run_study records its call and finishes every work stage
    except the ids in `fail`."""
    calls: list[dict] = []
    fail: set[str] = set()

    def run_study(plan, store, *, study_text, address=None, max_concurrent=None):
        calls.append({"plan": plan, "text": study_text, "address": address, "max_concurrent": max_concurrent})
        store.write_study(plan.study, study_text, plan.to_dict())
        for sid, spec in plan.stages.items():
            if spec.work and sid not in fail:
                store.write_result(sid, {"kind": spec.kind, "status": "done", "metrics": {}})
            elif sid in fail:
                store.record_error(sid, "RuntimeError: boom")
        return {"failures": [{"stage_id": s} for s in fail]}

    monkeypatch.setitem(sys.modules, "orchestrator.cli.run", types.SimpleNamespace(run_study=run_study))
    return calls, fail


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert f"    {command} " in out, command


def test_plan_json_parses_and_writes_nothing(tiny, tmp_path, capsys):
    store = tmp_path / "store"
    assert main(["plan", str(tiny), "--json", "--storage", str(store)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["study"] == "tiny" and len(plan["trials"]) == 3 and len(plan["stages"]) == 6
    assert plan["data"]["coco_root"].startswith(str(store / "data" / "synthetic-"))
    assert plan["estimate"]["unit"] == "CPU-worker-hours"
    assert not store.exists()


def test_plan_text_of_the_default_study(capsys):
    assert main(["plan"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("study smoke: 4 trials") and "without sharing" in out


BAD_STUDY = "defaults: {pretrain: {nn: 3}}\ndata: {synthetic: {train: 2}}\n"


@pytest.mark.parametrize("command", ["run", "plan", "status"])
def test_bad_study_exits_2_with_error_and_no_traceback(command, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_STUDY)
    store = tmp_path / "store"
    assert main([command, str(bad), "--storage", str(store)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and "bad.yaml: defaults.pretrain.nn" in captured.err
    assert "did you mean 'n'" in captured.err and "Traceback" not in captured.err + captured.out
    assert not store.exists()


def test_missing_coco_exits_2_before_the_store_exists(tmp_path, capsys):
    study = tmp_path / "coco.yaml"
    study.write_text(f"data: {{coco_root: {tmp_path / 'no-coco'}}}\n")
    store = tmp_path / "store"
    assert main(["run", str(study), "--storage", str(store)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {study}: data.coco_root") and "no-coco" in err and "Traceback" not in err
    assert not store.exists()


def test_verbose_adds_the_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_STUDY)
    assert main(["plan", str(bad), "--verbose"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_run_prepares_data_runs_the_plan_and_exits_0(tiny, tmp_path, fake_execution, capsys):
    calls, _ = fake_execution
    store = tmp_path / "store"
    assert (
        main(["run", str(tiny), "--storage", str(store), "--max-concurrent", "2", "--address", "auto"]) == 0
    )
    (call,) = calls
    plan = call["plan"]
    assert call["text"] == SMALL and call["max_concurrent"] == 2 and call["address"] == "auto"
    assert Path(plan.data.coco_root, "annotations", "person_keypoints_val2017.json").is_file()  # generated
    out = capsys.readouterr().out
    assert str(store / "studies" / "tiny") in out and "hsjp-study report" in out
    assert main(["status", str(tiny), "--storage", str(store)]) == 0
    assert "5 done, 1 no-work" in capsys.readouterr().out


def test_run_exits_1_when_a_stage_failed(tiny, tmp_path, fake_execution, capsys):
    calls, fail = fake_execution
    study = cli.load_study(tiny)
    plan = cli.make_plan(study, data_config(study.data, str(tmp_path / "store")))
    failing = next(sid for sid, s in plan.stages.items() if s.kind == "finetune")
    fail.add(failing)
    assert main(["run", str(tiny), "--storage", str(tmp_path / "store")]) == 1
    assert failing in capsys.readouterr().err
    assert main(["status", str(tiny), "--storage", str(tmp_path / "store"), "--json"]) == 0
    rows = {r["stage_id"]: r for r in json.loads(capsys.readouterr().out)["stages"]}
    assert rows[failing]["state"] == "failed" and rows[failing]["error"] == "RuntimeError: boom"


def test_run_without_a_study_runs_the_embedded_smoke_study(tmp_path, fake_execution, monkeypatch):
    calls, _ = fake_execution
    monkeypatch.setattr(cli, "prepare_data", lambda study, store: data_config(study.data, store.base))
    assert main(["run", "--storage", str(tmp_path / "store")]) == 0
    assert calls[0]["plan"].study == "smoke" and len(calls[0]["plan"].trials) == 4


def test_missing_embedded_study_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "DEFAULT_STUDY", tmp_path / "studies" / "smoke.yaml")
    assert main(["run", "--storage", str(tmp_path / "store")]) == 2
    assert "embedded smoke study" in capsys.readouterr().err and not (tmp_path / "store").exists()


def test_status_and_report_need_an_existing_store(tiny, tmp_path, capsys):
    assert main(["status", str(tiny), "--storage", str(tmp_path / "nowhere")]) == 2
    assert main(["report", "--storage", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("error: no store at") == 2 and not (tmp_path / "nowhere").exists()


def test_report_calls_the_report_builder(tmp_path, monkeypatch, capsys):
    Store(tmp_path / "store")
    seen = {}

    def make_report(storage, out, **options):  # options: progress=True (bootstrap progress on stderr)
        seen.update(storage=storage, out=out)
        return [Path(out) / "table1.md", Path(out) / "index.html"]

    monkeypatch.setitem(sys.modules, "reports.build", types.SimpleNamespace(make_report=make_report))
    assert main(["report", "--storage", str(tmp_path / "store")]) == 0
    assert seen == {"storage": str(tmp_path / "store"), "out": str(tmp_path / "store" / "report")}
    assert "index.html" in capsys.readouterr().out


def test_make_data_writes_a_synthetic_set(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["make-data", "--out", str(out), "--train", "1", "--val", "1", "--seed", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["seed"] == 3 and (out / "annotations" / "person_keypoints_train2017.json").is_file()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["evaluate", "--gt", "/nonexistent/gt.json", "--results", "/nonexistent/res.json"], "gt.json"),
        (["puzzle", "/nonexistent/person.jpg", "--n", "3", "--out", "x.png"], "person.jpg"),
    ],
)
def test_tool_commands_report_missing_files(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and "Traceback" not in err
