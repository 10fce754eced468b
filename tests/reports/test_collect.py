"""collect(): the store format → one tidy row per stage, with status and classification."""

from __future__ import annotations

import math

import pytest

from reports.collect import collect


@pytest.fixture
def stages(builder):
    b = builder
    sc = b.pretrain("scratch")
    b.ids = {"scratch": b.finetune(sc, ap=0.6, epochs=None)}  # epochs None → the official schedule
    pt = b.pretrain(n=4, lr=3e-4, epochs=7, concat=True, seed=3, precision=0.8, gpu_hours=2.0)
    b.ids["hsjp"] = b.finetune(pt, ap=0.7, freeze=2, label_fraction=0.5, seed=5, study="other")
    b.ids["collapsed"] = b.pretrain(lr=2e-3, status="collapsed")[0]
    b.ids["skipped"] = b.finetune(
        (b.ids["collapsed"], b.stages[b.ids["collapsed"]]["config"]), status="skipped"
    )
    b.ids["running"] = b.pretrain(epochs=3, status="running")[0]
    b.ids["pending"] = b.finetune((b.ids["running"], b.stages[b.ids["running"]]["config"]), status="pending")
    b.ids["failed"] = b.pretrain(epochs=9, status="failed")[0]
    b.write_plans()
    return collect(b.store.uri).set_index("stage_id"), b.ids


def test_status_of_every_kind_of_stage(stages):
    frame, ids = stages
    assert frame.loc[ids["scratch"], "status"] == "done"
    assert frame.loc[ids["collapsed"], "status"] == "collapsed"
    assert frame.loc[ids["skipped"], "status"] == "skipped"
    assert frame.loc[ids["skipped"], "reason"] == "pretrain collapsed"
    assert frame.loc[ids["running"], "status"] == "running"  # metrics.jsonl, no result.json
    assert frame.loc[ids["pending"], "status"] == "waiting"  # only in plan.json; its pretrain runs
    assert frame.loc[ids["pending"], "pt_status"] == "running"
    assert frame.loc[ids["pending"], "reason"] == "pretrain running"
    assert frame.loc[ids["failed"], "status"] == "failed"  # error.txt, no result.json
    assert "CUDA out of memory" in frame.loc[ids["failed"], "reason"]


def test_finetune_classified_from_its_init_config(stages):
    frame, ids = stages
    row = frame.loc[ids["hsjp"]]
    assert (row["method"], row["n"], row["lr"], row["pt_epochs"], row["concat_original"], row["pt_seed"]) == (
        "hsjp",
        4,
        3e-4,
        7,
        True,
        3,
    )
    assert (row["freeze"], row["label_fraction"], row["ft_epochs"], row["ft_seed"]) == (2, 0.5, 2, 5)
    assert row["precision"] == pytest.approx(0.8) and row["pt_gpu_hours"] == pytest.approx(2.0)
    assert row["AP"] == pytest.approx(0.7) and row["ap_per_oks"]["0.50"] == pytest.approx(0.9)
    assert row["studies"] == "other" and row["trials"] == "other/t0"


def test_scratch_has_no_pretext_settings_and_official_epochs(stages):
    frame, ids = stages
    row = frame.loc[ids["scratch"]]
    assert row["method"] == "scratch"
    assert row["n"] is None and row["pt_epochs"] is None and math.isnan(row["lr"])
    assert row["ft_epochs"] == 210  # HRNet w32_256x192 schedule when the config says null


def test_missing_store_is_empty(tmp_path):
    assert collect(tmp_path / "nothing").empty


def test_uri_root_reads_the_same_as_a_path(stages, builder):
    frame, _ = stages
    by_uri = collect(f"file://{builder.store.uri}").set_index("stage_id")
    assert list(by_uri.index) == list(frame.index) and list(by_uri["status"]) == list(frame["status"])


def test_tables_read_the_detection_ap_and_keep_the_selection_ap_beside_it(stages):
    frame, ids = stages
    row = frame.loc[ids["hsjp"]]
    assert row["AP"] == pytest.approx(0.7) and row["eval_boxes"] == "detections"
    assert row["select_AP"] == pytest.approx(0.73) and row["select_boxes"] == "gt"
    assert math.isnan(frame.loc[ids["skipped"], "select_AP"])  # no result metrics


def test_the_ap_curve_title_names_the_boxes_it_was_evaluated_on():
    import pandas as pd

    from reports.curves import ap_title

    gt = pd.DataFrame({"epoch": [0, 1], "AP": [None, 0.5], "eval_boxes": [None, "gt"]})
    assert ap_title([gt]) == "AP (%), GT boxes"
    assert ap_title([gt, gt.assign(eval_boxes="detections")]) == "AP (%), detection boxes / GT boxes"
    assert ap_title([pd.DataFrame({"epoch": [0]})]) == "AP (%)"  # rows from before eval_boxes was recorded
