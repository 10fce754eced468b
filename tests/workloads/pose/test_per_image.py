"""A finetune hands back its best evaluation's per-image outcome (per_image.npz), also across a resume,
and the report's re-accumulation of it gives the stage's AP; epoch metric rows stay free of it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reports.bootstrap import STAT_NAMES, Accumulator, read_outcome
from tests.workloads.pose.test_train import TINY, _cfg, _Preempted, _StopAfter
from workloads.config import DataConfig
from workloads.context import LocalContext
from workloads.pose.evaluate import evaluate_keypoints
from workloads.pose.per_image import PER_IMAGE_FILE, PER_IMAGE_KEY
from workloads.pose.train import run_finetune


def _assert_matches(result) -> None:
    assert PER_IMAGE_KEY not in result.metrics
    stats = Accumulator(read_outcome(result.artifacts[PER_IMAGE_FILE])).stats()
    for i, name in enumerate(STAT_NAMES):
        assert stats[i] == pytest.approx(result.metrics[name], abs=1e-12), name


@pytest.mark.realdata
def test_finetune_stores_the_best_epochs_outcome_through_a_resume(tmp_path, coco_mini):
    cfg = _cfg(epochs=2, eval_every=1)
    data = DataConfig(coco_root=str(coco_mini), max_train_instances=4, max_val_instances=6, loader_workers=0)
    with pytest.raises(_Preempted):
        run_finetune(cfg, data, _StopAfter(tmp_path, stop=0))
    resumed = run_finetune(cfg, data, LocalContext(tmp_path))
    assert resumed.epochs_trained == [1]
    _assert_matches(resumed)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("AP" in r and PER_IMAGE_KEY not in r for r in rows)
    assert resumed.metrics["best_epoch"] in (0, 1) and TINY.width == 8


def test_evaluate_keypoints_returns_the_outcome_only_when_asked(coco_mini):
    gt = coco_mini / "annotations/person_keypoints_val2017.json"
    anns = json.loads(gt.read_text())["annotations"]
    results = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 0.5 + i / 1000}
        for i, a in enumerate(anns)
        if a["num_keypoints"] > 0 and not a["iscrowd"]
    ]
    assert PER_IMAGE_KEY not in evaluate_keypoints(gt, results, errors=False)
    metrics = evaluate_keypoints(gt, results, errors=False, per_image=True)
    outcome = read_outcome(metrics[PER_IMAGE_KEY])
    assert len(outcome.image_ids) == len(json.loads(gt.read_text())["images"])
    assert np.isclose(Accumulator(outcome).stats()[0], metrics["AP"], rtol=0, atol=1e-12)
