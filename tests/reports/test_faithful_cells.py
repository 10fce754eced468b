"""Report cells that need care: test-dev AP from the server's stats, bf16 marks, the BN-batch note,
P-collapse shown as the paper shows it, and the link to the paper-silent choices."""

from __future__ import annotations

import json

import pytest

from reports.build import make_report
from reports.collect import collect
from reports.tables import load_reported, table1, table2
from tests.reports.conftest import StoreBuilder

REPORTED = load_reported()
RESULTS = "person_keypoints_test-dev2017_hrnetw32-imagenet-0123abcd_results.json"


def _patch(store, sid, *, provenance=None, metrics=None):
    result = store.read_result(sid)
    if provenance is not None:
        result["provenance"] = provenance
    if metrics is not None:
        result["metrics"] = {**result["metrics"], **metrics}
    store.write_result(sid, result)


@pytest.fixture
def store(tmp_path) -> StoreBuilder:
    b = StoreBuilder(tmp_path / "store")
    b.ids = {}
    imagenet, scratch = b.pretrain("imagenet"), b.pretrain("scratch")
    b.ids["imagenet"] = b.finetune(imagenet, ap=0.70)
    b.ids["scratch"] = b.finetune(scratch, ap=0.60)
    hsjp = b.pretrain(precision=0.3)
    b.ids["hsjp"] = b.finetune(hsjp, ap=0.72)
    b.ids["collapsed_pt"], _ = collapsed = b.pretrain(lr=2e-3, status="collapsed")
    b.finetune(collapsed, status="skipped")
    b.write_plans()
    gpu4 = {"device": {"type": "cuda", "world_size": 4}, "numerics": {"train": "fp32", "eval": "fp32"}}
    for key in ("imagenet", "scratch"):
        _patch(b.store, b.ids[key], provenance=gpu4)
    test_dev = {"test-dev2017": {"results_file": RESULTS, "zip_file": RESULTS.replace(".json", ".zip"),
                                 "stats_file": RESULTS.replace(".json", ".stats.json")}}  # fmt: skip
    _patch(b.store, b.ids["imagenet"], metrics={"test_splits": test_dev})
    _patch(
        b.store,
        b.ids["scratch"],
        metrics={"test_splits": {"test-dev2017": {"results_file": "x_results.json"}}},
    )
    # the HSJP finetune ran on one GPU in bf16
    _patch(b.store, b.ids["hsjp"], provenance={"device": {"type": "cuda", "world_size": 1},
                                               "numerics": {"train": "bf16", "eval": "fp32"}})  # fmt: skip
    result = b.store.read_result(b.ids["collapsed_pt"])  # it failed to learn after the warm-up
    result["metrics"] = {"precision": 0.0, "reason": "collapsed: failed to learn the puzzle (P = 0)"}
    b.store.write_result(b.ids["collapsed_pt"], result)
    return b


def test_test_dev_cells_from_the_server_stats_or_the_file_to_submit(store):
    sid = store.ids["imagenet"]
    stats = store.store.stage_path(sid, RESULTS.replace(".json", ".stats.json"))
    t1 = table1(collect(store.store.uri), REPORTED).set_index(["approach", "pretraining", "split"])
    assert t1.loc[
        ("HRNet", "imagenet", "test-dev2017"), "ap_measured"
    ] == f"submit stages/{sid}/" + RESULTS.replace(".json", ".zip")
    assert t1.loc[("HRNet", "scratch", "test-dev2017"), "ap_measured"].startswith("submit stages/")
    store.store.write_bytes(stats, json.dumps({"AP": 0.735, "AP50": 0.91}).encode())
    t1 = table1(collect(store.store.uri), REPORTED).set_index(["approach", "pretraining", "split"])
    row = t1.loc[("HRNet", "imagenet", "test-dev2017")]
    assert row["ap"] == pytest.approx(73.5) and row["ap_paper"] == 73.5 and row["ap_measured"] == "73.50"
    store.store.write_bytes(stats, b'{"AP": 73.5}')  # percent instead of a fraction: not trusted
    t1 = table1(collect(store.store.uri), REPORTED).set_index(["approach", "pretraining", "split"])
    assert t1.loc[("HRNet", "imagenet", "test-dev2017"), "ap_measured"].startswith("stats file unreadable")


def test_bf16_cells_are_marked_and_batch_differences_noted(store):
    stages = collect(store.store.uri)
    hsjp = stages.set_index("stage_id").loc[store.ids["hsjp"]]
    assert hsjp["train_precision"] == "bf16" and hsjp["bf16"] and hsjp["world_size"] == 1
    t1 = table1(stages, REPORTED).set_index(["approach", "pretraining", "split"])
    assert t1.loc[("HRNet", "hsjp_n6", "val2017"), "ap_measured"] == "72.00 [bf16]"
    assert "trained in bf16" in t1.loc[("HRNet", "hsjp_n6", "val2017"), "settings"]
    assert t1.loc[("HRNet", "imagenet", "val2017"), "ap_measured"] == "70.00"
    notes = " ".join(t1.attrs["notes"])
    assert "finetune batch: 32 per GPU × 1 GPU(s) = 32 (BatchNorm over 32 samples)" in notes
    assert "the paper: 32 per GPU × 4 GPUs = 128 (BatchNorm over 32 per GPU)" in notes


def test_a_p_collapsed_pretrain_shows_as_the_paper(store):
    t2 = table2(collect(store.store.uri), REPORTED)
    row = t2[(t2["part"] == "a") & (t2["setting"] == "lr 2e-3")].iloc[0]
    assert row["precision_measured"] == "collapsed (P = 0.000)" and row["ap_measured"] == "not available"


def test_the_report_links_the_paper_silent_choices(store, tmp_path):
    make_report(store.store.uri, tmp_path / "report")
    index = (tmp_path / "report" / "index.html").read_text()
    assert "href='paper-silent-choices.md'" in index
    assert (tmp_path / "report" / "paper-silent-choices.md").read_text().startswith("# ")
    assert "1 finetune(s) and 0 pretrain(s) trained in bf16" in index
