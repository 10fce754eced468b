"""OKS between instances and OKS-NMS (official HRNet oks_iou / oks_nms)."""

from __future__ import annotations

import numpy as np

from workloads.data.keypoints import OKS_SIGMAS
from workloads.pose.nms import oks_nms
from workloads.pose.oks import keypoint_similarity, oks_one_to_many


def person(offset_xy=(0.0, 0.0), seed: int = 0) -> np.ndarray:
    """[17, 3] keypoints (x, y, score 0.9) of a ~100x200 px person."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform([100.0, 100.0], [200.0, 300.0], size=(17, 2)) + np.asarray(offset_xy)
    return np.concatenate([xy, np.full((17, 1), 0.9)], axis=1)


def test_oks_identical_is_one_and_decreases_with_distance():
    base = person()
    shifts = [0.0, 2.0, 5.0, 10.0, 20.0, 40.0]
    others = np.stack([base + np.array([d, 0.0, 0.0]) for d in shifts])
    oks = oks_one_to_many(base, others, 20000.0, np.full(len(shifts), 20000.0))
    assert np.isclose(oks[0], 1.0)
    assert np.all(np.diff(oks) < 0) and oks[-1] < 0.5


def test_oks_matches_the_coco_formula():
    base = person()
    other = base + np.array([3.0, 4.0, 0.0])  # d = 5 px on every joint
    area_a, area_b = 10000.0, 30000.0
    expected = np.mean(np.exp(-25.0 / (2 * OKS_SIGMAS) ** 2 / ((area_a + area_b) / 2) / 2))
    assert np.isclose(oks_one_to_many(base, other[None], area_a, np.array([area_b]))[0], expected)
    assert np.isclose(keypoint_similarity(np.zeros(17), 5000.0).mean(), 1.0)


def test_vis_threshold_counts_only_confident_joints():
    base = person()
    other = base.copy()
    other[:8, :2] += 500.0  # far off ...
    other[:8, 2] = 0.1  # ... but below the threshold: ignored
    oks = oks_one_to_many(base, other[None], 20000.0, np.array([20000.0]), vis_thre=0.2)
    assert np.isclose(oks[0], 1.0)
    assert oks_one_to_many(base, other[None], 20000.0, np.array([20000.0]))[0] < 0.6


def test_nms_drops_near_duplicate_and_keeps_distinct_person():
    a = person()
    near_dup = a + np.array([1.0, -1.0, 0.0])
    distinct = person(offset_xy=(250.0, 0.0), seed=1)
    kpts = np.stack([near_dup, distinct, a])
    scores = np.array([0.8, 0.5, 0.9])
    keep = oks_nms(kpts, scores, np.full(3, 20000.0), threshold=0.9)
    assert keep == [2, 1]  # best first; the duplicate of the best is gone
    assert oks_nms(kpts, scores, np.full(3, 20000.0), threshold=1.0) == [2, 0, 1]  # nothing has OKS > 1
    assert oks_nms(np.zeros((0, 17, 3)), np.zeros(0), np.zeros(0), 0.9) == []


def _official_order_nms(kpts: np.ndarray, scores: np.ndarray, areas: np.ndarray, thr: float) -> list[int]:
    """The official greedy loop restated (HRNet oks_nms): `scores.argsort()[::-1]`, keep oks <= thr."""
    order = np.asarray(scores, dtype=np.float64).argsort()[::-1]
    keep = []
    while order.size > 0:
        i = int(order[0])
        keep.append(i)
        oks = oks_one_to_many(kpts[i], kpts[order[1:]], areas[i], areas[order[1:]], OKS_SIGMAS, None)
        order = order[1:][oks <= thr]
    return keep


def test_tied_scores_follow_the_official_argsort_reversed():
    far = np.stack([person(offset_xy=(400.0 * i, 0.0), seed=i) for i in range(4)])
    areas = np.full(4, 20000.0)
    # all distinct persons are kept; ties come in argsort()[::-1] order: last index first
    assert oks_nms(far, np.array([0.5, 0.9, 0.5, 0.9]), areas, 0.9) == [3, 1, 2, 0]
    assert oks_nms(far, np.ones(4), areas, 0.9) == [3, 2, 1, 0]


def test_tied_scores_keep_the_official_sets_on_overlapping_people():
    rng = np.random.default_rng(0)
    same = 0
    for trial in range(200):
        n = int(rng.integers(3, 12))
        base = person(seed=trial)
        kpts = np.stack([base + np.r_[rng.normal(0, 6, size=2), 0.0] for _ in range(n)])
        scores = np.full(n, 0.7)  # every score tied
        areas = rng.uniform(8000, 30000, size=n)
        got = oks_nms(kpts, scores, areas, 0.5)
        assert got == _official_order_nms(kpts, scores, areas, 0.5)
        stable = np.argsort(-scores, kind="stable")  # what a stable descending sort would visit first
        same += got[0] == int(stable[0])
    assert same == 0  # a stable sort would start from index 0, the official order from the last
