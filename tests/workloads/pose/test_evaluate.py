"""COCO keypoint evaluation: perfect results score 1, a known OKS perturbation moves the per-OKS APs as
COCOeval says, and bad inputs fail clearly."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from workloads.data.keypoints import OKS_SIGMAS, person_category
from workloads.pose.evaluate import OKS_KEYS, STAT_NAMES, evaluate_file, evaluate_keypoints, format_table

GT_NAME = "annotations/person_keypoints_val2017.json"


def gt_as_results(gt_path) -> list[dict]:
    """Every annotation that COCOeval scores (keypoints, not crowd) given back as a result, score 1."""
    gt = json.loads(gt_path.read_text())
    return [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for a in gt["annotations"]
        if a["num_keypoints"] > 0 and not a["iscrowd"]
    ]


def shifted_to_oks(gt_path, oks: float) -> list[dict]:
    """GT results with every keypoint moved along x so that each instance has exactly this OKS."""
    gt = json.loads(gt_path.read_text())
    out = []
    for a in gt["annotations"]:
        if a["num_keypoints"] == 0 or a["iscrowd"]:
            continue
        kpts = np.asarray(a["keypoints"], dtype=np.float64).reshape(17, 3)
        # COCOeval: ks = exp(-d² / (2σ)² / (area + eps) / 2) → every ks = oks ⇒ OKS = oks
        kpts[:, 0] += np.sqrt(-np.log(oks) * 2 * (a["area"] + np.spacing(1)) * (2 * OKS_SIGMAS) ** 2)
        out.append(
            {
                "image_id": a["image_id"],
                "category_id": 1,
                "keypoints": kpts.reshape(-1).tolist(),
                "score": 1.0,
            }
        )
    return out


def assert_perfect(metrics: dict) -> None:
    for name in STAT_NAMES:
        assert metrics[name] == pytest.approx(1.0), name
    assert list(metrics["ap_per_oks"]) == list(OKS_KEYS)
    assert all(v == pytest.approx(1.0) for v in metrics["ap_per_oks"].values())
    assert metrics["errors"]["overall"]["good"] == pytest.approx(1.0)


@pytest.mark.realdata
def test_ground_truth_scores_one_on_coco_mini(coco_mini):
    gt = coco_mini / GT_NAME
    assert_perfect(evaluate_keypoints(gt, gt_as_results(gt)))


@pytest.mark.realdata
def test_ground_truth_scores_one_on_coco_dets(coco_dets):
    gt = coco_dets / GT_NAME
    assert_perfect(evaluate_keypoints(gt, gt_as_results(gt)))


@pytest.mark.realdata
def test_known_oks_perturbation_cuts_ap_above_that_oks(coco_mini):
    gt = coco_mini / GT_NAME
    metrics = evaluate_keypoints(gt, shifted_to_oks(gt, 0.72), errors=False)
    for key, ap in metrics["ap_per_oks"].items():
        assert ap == pytest.approx(1.0 if float(key) <= 0.72 else 0.0), key  # matched iff OKS ≥ threshold
    assert metrics["AP"] == pytest.approx(0.5)  # mean over 10 thresholds, 5 of them passed
    assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(0.0)
    assert "errors" not in metrics


def tiny_gt(tmp_path):
    ann = {
        "id": 1, "image_id": 5, "category_id": 1, "iscrowd": 0, "area": 5000.0, "bbox": [10, 10, 50, 100],
        "num_keypoints": 17, "keypoints": [v for k in range(17) for v in (20 + 2 * k, 20 + 5 * k, 2)],
    }  # fmt: skip
    gt = {
        "images": [{"id": 5, "file_name": "5.jpg", "width": 100, "height": 200}],
        "annotations": [ann],
        "categories": [person_category()],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    return path


def test_empty_results_give_zeros_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        metrics = evaluate_keypoints(tiny_gt(tmp_path), [])
    assert "no keypoint results" in caplog.text
    assert all(metrics[n] == 0.0 for n in STAT_NAMES)
    assert set(metrics["ap_per_oks"]) == set(OKS_KEYS) and not any(metrics["ap_per_oks"].values())
    assert metrics["errors"]["counts"]["matched_detections"] == 0


def test_results_for_unknown_images_are_a_clear_error(tmp_path):
    gt = tiny_gt(tmp_path)
    bad = gt_as_results(gt) + [{"image_id": 999, "category_id": 1, "keypoints": [0.0] * 51, "score": 0.5}]
    with pytest.raises(ValueError, match=r"not in the ground truth .*\[999\]"):
        evaluate_keypoints(gt, bad)
    with pytest.raises(ValueError, match="51"):
        evaluate_keypoints(gt, [{"image_id": 5, "category_id": 1, "keypoints": [0.0] * 34, "score": 1.0}])
    with pytest.raises(ValueError, match="lacks"):
        evaluate_keypoints(gt, [{"image_id": 5, "keypoints": [0.0] * 51}])


def test_evaluate_file_writes_metrics_and_table(tmp_path):
    gt = tiny_gt(tmp_path)
    results = tmp_path / "results.json"
    results.write_text(json.dumps(gt_as_results(gt)))
    metrics = evaluate_file(gt, results, out_dir=tmp_path / "out")
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == metrics
    assert metrics["AP"] == pytest.approx(1.0)
    table = format_table(metrics)
    assert "AP50" in table and "0.95" in table and "left_wrist" in table and "100.0" in table
    with pytest.raises(FileNotFoundError, match="missing.json"):
        evaluate_file(gt, tmp_path / "missing.json")
