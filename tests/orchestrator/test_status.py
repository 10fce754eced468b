"""Status of a study's stages, read from a store built through `Store` methods (no Ray)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from orchestrator.cli.status import format_duration, render_status, status_totals, study_status
from orchestrator.plan import make_plan
from orchestrator.spec.inputs import data_config
from orchestrator.spec.study import load_study
from orchestrator.store.store import Store

SMOKE = Path(__file__).resolve().parents[2] / "studies" / "smoke.yaml"


@pytest.fixture
def setup(tmp_path):
    store = Store(tmp_path / "store")
    study = load_study(SMOKE)
    plan = make_plan(study, data_config(study.data, store.base))
    # gpu accounting: 2 workers × 2 GPUs per stage (GPU-hours count GPUs, device-hours workers)
    plan = dataclasses.replace(
        plan,
        compute=dataclasses.replace(plan.compute, use_gpu=True, gpus_per_worker=2.0, workers_per_stage=2),
    )
    ids = {t.trial_id.split("-")[0]: t for t in plan.trials}  # t000 n2, t001 n3, t002 scratch, t003 n3+freeze
    return store, plan, ids


def epoch_row(epoch: int, seconds: float = 10.0, **extra) -> dict:
    return {"epoch": epoch, "epochs": 2, "loss": 0.1, "lr": 1e-3, "seconds": seconds, **extra}


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["stage_id"]: r for r in rows}


def test_each_state_is_classified(setup):
    store, plan, t = setup
    n2, n3 = t["t000"].pretrain, t["t001"].pretrain
    store.append_metrics(n2, epoch_row(0, precision=0.5))
    store.append_metrics(n2, epoch_row(1, precision=0.8))
    store.write_result(
        n2,
        {
            "kind": "pretrain",
            "status": "done",
            "collapsed": False,
            "metrics": {"precision": 0.8},
            "gpu_hours": 0.25,
            "device_hours": 0.5,
        },
    )
    store.record_error(
        t["t000"].finetune, "Traceback (most recent call last):\n  ...\nRuntimeError: out of memory\n"
    )
    store.append_metrics(n3, epoch_row(0, seconds=30.0, precision=0.4))
    before = files_under(Path(store.base))

    rows = by_id(study_status(plan, store))

    assert files_under(Path(store.base)) == before  # status only reads
    assert list(rows) == list(plan.stages)
    assert rows[n2]["state"] == "done" and rows[n2]["value"] == 0.8 and rows[n2]["gpu_hours"] == 0.25
    assert rows[n2]["epoch"] == 2 and rows[n2]["eta_s"] is None
    failed = rows[t["t000"].finetune]
    assert failed["state"] == "failed" and failed["error"] == "RuntimeError: out of memory"
    running, epochs = rows[n3], plan.stages[n3].config.epochs
    assert running["state"] == "running" and running["epoch"] == 1 and running["epochs"] == epochs
    assert running["eta_s"] == pytest.approx(30.0 * (epochs - 1)) and running["value"] == 0.4
    assert running["device_hours"] == pytest.approx(30.0 * 2 / 3600)  # 2 workers
    assert running["gpu_hours"] == pytest.approx(30.0 * 2 * 2.0 / 3600)  # 2 GPUs per worker
    assert running["updated_s_ago"] is not None and running["updated_s_ago"] < 60
    assert sorted(running["trials"]) == ["t001-n3", "t003-n3-freeze2"]
    for trial in ("t001", "t003"):  # their pretrain is still running
        assert rows[t[trial].finetune]["state"] == "waiting"
    assert rows[t["t002"].pretrain]["state"] == "no-work"  # scratch: nothing to compute
    assert rows[t["t002"].finetune]["state"] == "queued"  # ready: its pretrain has no work


def test_collapsed_and_skipped_results(setup):
    store, plan, t = setup
    n3 = t["t001"].pretrain
    store.write_result(
        n3,
        {
            "kind": "pretrain",
            "status": "done",
            "collapsed": True,
            "collapsed_epoch": 0,
            "metrics": {"precision": 0.0},
        },
    )
    store.write_result(t["t001"].finetune, {"kind": "finetune", "status": "skipped", "metrics": {}})
    rows = by_id(study_status(plan, store))
    assert rows[n3]["state"] == "collapsed"
    assert rows[t["t001"].finetune]["state"] == "skipped"
    assert rows[t["t003"].finetune]["state"] == "waiting"  # a collapsed pretrain hands over nothing


def test_a_finetune_whose_pretrain_failed_is_blocked(setup):
    store, plan, t = setup
    n3 = t["t001"].pretrain
    store.record_error(n3, "Traceback (most recent call last):\n  ...\nRuntimeError: NaN loss\n")
    rows = by_id(study_status(plan, store))
    assert rows[n3]["state"] == "failed"
    for trial in ("t001", "t003"):  # both finetunes start from the failed N=3 pretrain
        assert rows[t[trial].finetune]["state"] == "blocked"
    assert rows[t["t000"].finetune]["state"] == "waiting"  # its pretrain has not run
    assert f"— its pretrain {n3} failed" in render_status(list(rows.values()), plan)


def test_summary_and_render(setup):
    store, plan, t = setup
    rows = study_status(plan, store)
    s = status_totals(rows, plan)
    assert not s["complete"] and s["counts"]["queued"] == 3 and s["counts"]["waiting"] == 3
    assert s["estimated_hours_left"] > 0
    for sid, spec in plan.stages.items():
        if spec.work:
            store.write_result(
                sid,
                {
                    "kind": spec.kind,
                    "status": "done",
                    "metrics": {"AP": 0.5, "precision": 0.9},
                    "gpu_hours": 0.01,
                },
            )
    rows = study_status(plan, store)
    s = status_totals(rows, plan)
    assert s["complete"] and s["counts"]["done"] == 6 and s["gpu_hours"] == pytest.approx(0.06)
    assert s["estimated_hours_left"] == 0
    text = render_status(rows, plan)
    assert all(sid in text for sid in plan.stages)
    assert "6 done, 1 no-work" in text and "AP 0.500" in text and "precision 0.900" in text


def test_format_duration():
    assert [format_duration(x) for x in (None, 5, 75, 7322)] == ["-", "5s", "1m15s", "2h02m"]
