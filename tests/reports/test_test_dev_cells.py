"""Table 1's test-dev2017 cells read the finetunes' evaluate stages (results file, then the server's
stats placed beside it) and carry no interval: the bootstrap is over val2017's per-image outcomes."""

from __future__ import annotations

import json
import math

import pytest

from reports.collect import collect
from reports.intervals import NO_TEST_DEV_INTERVAL, Bootstraps, add_intervals
from reports.tables import load_reported, table1
from tests.reports.conftest import DATA, StoreBuilder
from tests.reports.test_intervals import B, evaluated

REPORTED = load_reported()
ROW = ("HRNet", "scratch")
EVAL_ID = "evaluate-00112233445566778899"
RESULTS = "person_keypoints_test-dev2017_hrnetw32-scratch-0a1b2c3d_results.json"


def write_evaluation(b: StoreBuilder, finetune: str, *, finished: bool = True) -> None:
    """An evaluate stage of `finetune` on test-dev2017 as orchestrator.schedule.stage writes it (planned only
    when not `finished`)."""
    ft_cfg = b.stages[finetune]["config"]
    cfg = {"finetune": {k: v for k, v in ft_cfg.items() if k != "init"}, "split": "test-dev2017",
           "detection_file": "/d/td.json", "alg": "hrnetw32-scratch-0a1b2c3d", "init": ft_cfg["init"]}  # fmt: skip
    b.stages[EVAL_ID] = {
        "stage_id": EVAL_ID,
        "kind": "evaluate",
        "config": cfg,
        "parent": finetune,
        "work": True,
    }
    if not finished:
        return
    record = {"stage_id": EVAL_ID, "kind": "evaluate", "config": cfg, "data": DATA, "parent": finetune,
              "work": True}  # fmt: skip
    b.store.write_stage_config(EVAL_ID, record)
    info = {"results_file": RESULTS, "zip_file": RESULTS.replace(".json", ".zip"),
            "stats_file": RESULTS.replace(".json", ".stats.json"), "results": 40}  # fmt: skip
    b.store.write_result(EVAL_ID, {**record, "status": "done", "metrics": {"test_splits": {"test-dev2017": info}},
                                   "wall_seconds": 36.0, "device_hours": 0.01, "gpu_hours": 0.01})  # fmt: skip


def make_store(tmp_path, *, finished: bool = True) -> tuple[StoreBuilder, str]:
    b = StoreBuilder(tmp_path / "store")
    finetune = b.finetune(b.pretrain("scratch"))
    evaluated(b, finetune, 0.08, 1)  # a val2017 per-image outcome: the val cell gets an interval
    write_evaluation(b, finetune, finished=finished)
    b.write_plans()
    plan = b.store.read_json(b.store.study_path("s", "plan.json"))
    plan["stages"][EVAL_ID] = b.stages[EVAL_ID]  # the evaluate stage is in its study's plan
    b.store.write_study("s", "name: s\n", plan)
    return b, finetune


def table(b: StoreBuilder):
    stages = collect(b.store.uri)
    return add_intervals(table1(stages, REPORTED), stages, Bootstraps(b.store.uri, n_resamples=B))


def test_a_test_dev_cell_reads_the_evaluate_stage_and_has_no_interval(tmp_path):
    b, finetune = make_store(tmp_path)
    t1 = table(b).set_index(["approach", "pretraining", "split"])
    pending = t1.loc[(*ROW, "test-dev2017")]
    assert pending["ap_measured"] == f"submit stages/{EVAL_ID}/" + RESULTS.replace(".json", ".zip")
    assert EVAL_ID in pending["stages"].split() and finetune in pending["stages"].split()

    stats = b.store.stage_path(EVAL_ID, RESULTS.replace(".json", ".stats.json"))
    b.store.write_bytes(stats, json.dumps({"AP": 0.721, "AP50": 0.9}).encode())
    frame = table(b)
    t1 = frame.set_index(["approach", "pretraining", "split"])
    val, test_dev = t1.loc[(*ROW, "val2017")], t1.loc[(*ROW, "test-dev2017")]
    assert val["ap_lo"] < val["ap"] < val["ap_hi"] and "[" in val["ap_measured"]  # val2017: bootstrap
    assert test_dev["ap"] == pytest.approx(72.1) and test_dev["ap_measured"] == "72.10"  # no val interval
    assert math.isnan(test_dev["ap_lo"]) and math.isnan(test_dev["ap_hi"])
    assert test_dev["ap_ci"] == NO_TEST_DEV_INTERVAL
    notes = " ".join(frame.attrs["notes"])
    assert "A test-dev cell has no interval" in notes and "evaluate stage" in notes


def test_a_planned_evaluate_stage_says_so_in_the_cell(tmp_path):
    b, _ = make_store(tmp_path, finished=False)
    stages = collect(b.store.uri)
    row = stages.set_index("stage_id").loc[EVAL_ID]
    assert row["kind"] == "evaluate" and row["status"] == "queued" and row["method"] == "scratch"
    t1 = table1(stages, REPORTED).set_index(["approach", "pretraining", "split"])
    assert t1.loc[(*ROW, "test-dev2017"), "ap_measured"] == f"test-dev evaluate stage {EVAL_ID} queued"


def test_the_report_builds_with_an_evaluate_stage_and_gives_it_a_page(tmp_path):
    from reports.build import make_report

    b, finetune = make_store(tmp_path)
    make_report(b.store.uri, tmp_path / "report", n_resamples=B)
    page = (tmp_path / "report" / "stages" / f"{EVAL_ID}.html").read_text()
    assert "evaluate" in page and finetune in page
