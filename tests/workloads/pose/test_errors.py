"""Ronchi–Perona keypoint error labels (coco-analyze definitions) on a tiny synthetic 2-person image."""

from __future__ import annotations

import json

import numpy as np
import pytest

from workloads.data.keypoints import FLIP_INDEX, KEYPOINT_NAMES, OKS_SIGMAS, person_category
from workloads.pose.errors import ERROR_TYPES, candidate_rows, classify_keypoints
from workloads.pose.evaluate import evaluate_keypoints

L_WRIST, R_WRIST = KEYPOINT_NAMES.index("left_wrist"), KEYPOINT_NAMES.index("right_wrist")
# [17, 2] xy of a ~100x210 px person (left joints at larger x); wrists 70 px apart
TEMPLATE = np.array(
    [[50, 20], [55, 15], [45, 15], [60, 18], [40, 18], [70, 50], [30, 50], [80, 90], [20, 90],
     [85, 130], [15, 130], [62, 130], [38, 130], [64, 170], [36, 170], [65, 205], [35, 205]],
    dtype=np.float64,
)  # fmt: skip
AREA = 100.0 * 210.0
OFFSET_B = np.array([150.0, 0.0])  # person B stands 150 px to the right of A


def write_gt(path) -> tuple[np.ndarray, np.ndarray]:
    """One image, persons A (id 1) and B (id 2) with all 17 keypoints visible; returns their xy."""
    a_xy, b_xy = TEMPLATE + 100.0, TEMPLATE + 100.0 + OFFSET_B
    anns = []
    for ann_id, xy in ((1, a_xy), (2, b_xy)):
        kpts = np.concatenate([xy, np.full((17, 1), 2.0)], axis=1)
        x0, y0 = xy.min(0)
        anns.append({
            "id": ann_id, "image_id": 7, "category_id": 1, "iscrowd": 0, "area": AREA,
            "bbox": [float(x0), float(y0), 100.0, 210.0], "num_keypoints": 17,
            "keypoints": kpts.reshape(-1).tolist(),
        })  # fmt: skip
    gt = {
        "images": [{"id": 7, "file_name": "000000000007.jpg", "width": 640, "height": 480}],
        "annotations": anns,
        "categories": [person_category()],
    }
    path.write_text(json.dumps(gt))
    return a_xy, b_xy


def result(xy: np.ndarray, score: float) -> dict:
    kpts = np.concatenate([xy, np.ones((17, 1))], axis=1)
    return {"image_id": 7, "category_id": 1, "keypoints": kpts.reshape(-1).tolist(), "score": score}


def ks_distance(ks: float, k: int) -> float:
    """Distance at which keypoint k of a person of area AREA has similarity ks (COCO formula)."""
    return float(np.sqrt(-np.log(ks) * 2 * AREA * (2 * OKS_SIGMAS[k]) ** 2))


def person_a_variant(a_xy: np.ndarray, b_xy: np.ndarray, case: str) -> np.ndarray:
    xy = a_xy.copy()
    if case == "inversion":  # A's wrists exchanged
        xy[[L_WRIST, R_WRIST]] = a_xy[[R_WRIST, L_WRIST]]
    elif case == "swap":  # A's left wrist taken from B
        xy[L_WRIST] = b_xy[L_WRIST]
    elif case == "jitter":  # ks 0.7 on the left wrist
        xy[L_WRIST, 0] += ks_distance(0.7, L_WRIST)
    elif case == "miss":  # far from every wrist of the image
        xy[L_WRIST, 1] += 80.0
    return xy


# expected label counts on A's left and right wrist per case; every other keypoint is good
EXPECTED = {
    "good": ("good", "good"),
    "inversion": ("inversion", "inversion"),
    "swap": ("swap", "good"),
    "jitter": ("jitter", "good"),
    "miss": ("miss", "good"),
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_error_labels_end_to_end(tmp_path, case):
    gt_path = tmp_path / "gt.json"
    a_xy, b_xy = write_gt(gt_path)
    results = [result(person_a_variant(a_xy, b_xy, case), 0.9), result(b_xy, 0.8)]
    errors = evaluate_keypoints(gt_path, results, errors=True)["errors"]
    counts = errors["counts"]
    assert counts["matched_detections"] == 2 and counts["annotated_keypoints"] == 34
    assert sum(counts[t] for t in ERROR_TYPES) == 34  # labels are exhaustive and exclusive
    left, right = EXPECTED[case]
    expected = {t: 0 for t in ERROR_TYPES}
    expected[left] += 1
    expected[right] += 1
    expected["good"] += 32  # A's other 15 keypoints + all 17 of B
    assert {t: counts[t] for t in ERROR_TYPES} == expected
    assert errors["per_keypoint"]["left_wrist"][left] == pytest.approx(0.5 if left != "good" else 1.0)
    assert errors["overall"]["good"] == pytest.approx(expected["good"] / 34)
    assert sum(errors["overall"].values()) == pytest.approx(1.0)


def test_classify_thresholds_and_unannotated(tmp_path):
    a_xy, b_xy = write_gt(tmp_path / "gt.json")
    anns = [
        {
            "id": i,
            "area": AREA,
            "keypoints": np.concatenate([xy, np.full((17, 1), 2.0)], 1).reshape(-1).tolist(),
        }
        for i, xy in ((1, a_xy), (2, b_xy))
    ]
    xy, vis, areas = candidate_rows(anns[0], anns)
    assert xy.shape == (4, 17, 2) and np.array_equal(xy[2], a_xy[FLIP_INDEX])  # row N = A inverted
    dt = a_xy.copy()
    dt[0, 0] += ks_distance(0.86, 0)  # nose just above the good threshold
    dt[1, 0] += ks_distance(0.84, 1)  # left eye just below → jitter
    dt[2, 0] -= ks_distance(0.49, 2)  # right eye below 0.5, away from the left eye → miss
    labels = classify_keypoints(dt, xy, vis, areas)
    assert [ERROR_TYPES[i] for i in labels[:3]] == ["good", "jitter", "miss"]
    vis[0, 5] = 0  # left shoulder not annotated on the matched GT → no label
    assert classify_keypoints(dt, xy, vis, areas)[5] == -1
