"""The bootstrap's COCO AP equals pycocotools COCOeval: on the full set (1e-12) and on resamples written
out as their own GT + results files with duplicated images under new ids (1e-9); the stored outcome
round-trips; resamples are seeded and paired."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from reports.bootstrap import (
    COLUMNS,
    STAT_NAMES,
    Accumulator,
    bootstrap,
    percentile_interval,
    read_outcome,
    resample_counts,
    resample_indices,
)
from workloads.data.keypoints import OKS_SIGMAS, person_category
from workloads.pose.per_image import extract


def synthetic_eval_set(seed: int = 0, n_images: int = 36) -> tuple[dict, list[dict]]:
    """GT with small / medium / large persons, crowds, persons without keypoints and images without
    persons; results that hit, miss and duplicate persons, false positives, and tied scores (within
    one image and across images) so match order matters."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    ann_id = 1
    for i in range(n_images):
        image_id = 1000 + 7 * i  # not 1..n: ids are remapped in resamples
        images.append({"id": image_id, "width": 640, "height": 480, "file_name": f"{image_id}.jpg"})
        for _ in range(int(rng.integers(0, 5))):
            side = float(rng.choice([20.0, 60.0, 150.0]) * rng.uniform(0.8, 1.2))
            x0, y0 = rng.uniform(0, 400, size=2)
            kpts = np.zeros((17, 3))
            kpts[:, 0], kpts[:, 1] = x0 + rng.uniform(0, side, 17), y0 + rng.uniform(0, side, 17)
            visible = rng.random(17) < (0.0 if rng.random() < 0.1 else 0.8)
            kpts[:, 2] = np.where(visible, 2, 0)
            kpts[~visible, :2] = 0
            crowd = int(rng.random() < 0.08)
            anns.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": 1,
                    "keypoints": kpts.reshape(-1).tolist(),
                    "num_keypoints": int(visible.sum()),
                    "area": side * side,
                    "bbox": [x0, y0, side, side],
                    "iscrowd": crowd,
                }
            )
            ann_id += 1
            if visible.sum() == 0:
                continue
            for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):  # missed, found, found twice
                noisy = kpts.copy()
                noisy[:, :2] += rng.normal(0, side * rng.uniform(0.01, 0.15), size=(17, 2))
                noisy[:, :2] = np.where(visible[:, None], noisy[:, :2], x0 + side / 2)
                noisy[:, 2] = rng.uniform(0.2, 1.0, 17)
                dets.append(_det(image_id, noisy, rng))
        for _ in range(int(rng.integers(0, 3))):  # false positives anywhere
            k = np.zeros((17, 3))
            k[:, :2] = rng.uniform(0, 400, size=2) + rng.uniform(0, rng.choice([30.0, 120.0]), (17, 2))
            k[:, 2] = 0.5
            dets.append(_det(image_id, k, rng))
    gt = {"images": images, "annotations": anns, "categories": [person_category()]}
    return gt, dets


def _det(image_id: int, kpts: np.ndarray, rng: np.random.Generator) -> dict:
    score = float(rng.choice([0.5, 0.75, 0.9]) if rng.random() < 0.3 else round(rng.uniform(0.1, 1), 2))
    return {"image_id": image_id, "category_id": 1, "keypoints": kpts.reshape(-1).tolist(), "score": score}


def run_cocoeval(gt: dict, dets: list[dict]) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets))
        ev = COCOeval(coco_gt, coco_dt, "keypoints")
        ev.params.useSegm = None
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def cocoeval_columns(ev: COCOeval) -> np.ndarray:
    """STAT_NAMES then the AP at each OKS threshold, as COCOeval computes them."""
    precision = ev.eval["precision"][:, :, 0, 0, 0]
    per_oks = [p[p > -1].mean() if (p > -1).any() else -1.0 for p in precision]
    return np.r_[np.asarray(ev.stats, dtype=np.float64), per_oks]


def write_resample(gt: dict, dets: list[dict], image_ids: np.ndarray, idx: np.ndarray) -> tuple[dict, list]:
    """The resample `idx` (sorted positions into `image_ids`) as its own data set: copy k of the
    resample is image k + 1, with its annotations (new ids) and results."""
    anns_of, dets_of = {}, {}
    for a in gt["annotations"]:
        anns_of.setdefault(a["image_id"], []).append(a)
    for d in dets:
        dets_of.setdefault(d["image_id"], []).append(d)
    images_by_id = {im["id"]: im for im in gt["images"]}
    new_images, new_anns, new_dets = [], [], []
    for k, pos in enumerate(idx):
        old = int(image_ids[pos])
        new_images.append({**images_by_id[old], "id": k + 1})
        for a in anns_of.get(old, []):
            new_anns.append({**a, "id": len(new_anns) + 1, "image_id": k + 1})
        new_dets += [{**d, "image_id": k + 1} for d in dets_of.get(old, [])]
    return {**gt, "images": new_images, "annotations": new_anns}, new_dets


@pytest.fixture(scope="module")
def evaluated():
    gt, dets = synthetic_eval_set()
    ev = run_cocoeval(gt, dets)
    return gt, dets, ev, read_outcome(extract(ev).to_bytes())


def test_synthetic_set_exercises_the_hard_cases(evaluated):
    gt, dets, ev, outcome = evaluated
    assert {a["iscrowd"] for a in gt["annotations"]} == {0, 1}
    assert any(a["num_keypoints"] == 0 for a in gt["annotations"])
    assert outcome.ignored.any() and outcome.matched.any() and (~outcome.matched).any()
    acc = Accumulator(outcome)
    assert not acc.singletons  # equal scores inside an image exist
    assert 0.05 < ev.stats[0] < 0.95 and ev.stats[3] > 0 and ev.stats[4] > 0


def test_full_set_equals_cocoeval(evaluated):
    _, _, ev, outcome = evaluated
    ours = Accumulator(outcome).stats()
    np.testing.assert_allclose(ours, cocoeval_columns(ev), rtol=0, atol=1e-12)


@pytest.mark.parametrize("b", [0, 1, 2, 3, 4])
def test_resample_equals_cocoeval_on_written_out_resample(evaluated, b):
    gt, dets, _, outcome = evaluated
    idx = list(resample_indices(len(outcome.image_ids), n_resamples=b + 1, seed=11))[b]
    assert len(set(idx.tolist())) < len(idx)  # has duplicated images
    counts = np.bincount(idx, minlength=len(outcome.image_ids))
    ours = Accumulator(outcome).stats(counts)
    theirs = cocoeval_columns(run_cocoeval(*write_resample(gt, dets, outcome.image_ids, idx)))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)
    assert not np.allclose(ours[:1], Accumulator(outcome).stats()[:1])  # the resample changed the AP


def test_ties_inside_an_image_follow_cocoeval_copy_order():
    """Two tied detections of one image, one a match and one not: a duplicated image interleaves
    them per copy (COCOeval), which differs from counting each detection twice."""
    gt, dets = synthetic_eval_set(seed=3, n_images=4)
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] != gt["images"][0]["id"]]
    image = gt["images"][0]["id"]
    k = np.zeros((17, 3))
    k[:, 0], k[:, 1], k[:, 2] = np.linspace(100, 200, 17), np.linspace(100, 250, 17), 2
    gt["annotations"].append(
        {
            "id": 999,
            "image_id": image,
            "category_id": 1,
            "keypoints": k.reshape(-1).tolist(),
            "num_keypoints": 17,
            "area": 15000.0,
            "bbox": [100, 100, 100, 150],
            "iscrowd": 0,
        }
    )
    far = k.copy()
    far[:, :2] += 300
    dets = [d for d in dets if d["image_id"] != image] + [
        {"image_id": image, "category_id": 1, "keypoints": k.reshape(-1).tolist(), "score": 0.99},
        {"image_id": image, "category_id": 1, "keypoints": far.reshape(-1).tolist(), "score": 0.99},
    ]
    outcome = read_outcome(extract(run_cocoeval(gt, dets)).to_bytes())
    idx = np.array([0, 0, 1, 2])
    ours = Accumulator(outcome).stats(np.bincount(idx, minlength=4))
    theirs = cocoeval_columns(run_cocoeval(*write_resample(gt, dets, outcome.image_ids, idx)))
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)


def test_outcome_round_trips_and_is_compact(evaluated):
    _, _, ev, outcome = evaluated
    original = extract(ev)
    data = original.to_bytes()
    back = read_outcome(data)
    assert np.array_equal(back.matched, original.matched) and np.array_equal(back.ignored, original.ignored)
    assert np.array_equal(back.scores, original.scores) and back.area_labels == ("all", "medium", "large")
    assert np.array_equal(back.image_ids, original.image_ids) and np.array_equal(back.npig, original.npig)
    assert len(data) < 64 + 8 * outcome.scores.size + outcome.matched.size  # bits packed, compressed
    with pytest.raises(ValueError, match="not a per-image outcome"):
        read_outcome(b"not an npz")


def test_resamples_are_seeded_and_paired(evaluated):
    _, _, _, outcome = evaluated
    a = [c.copy() for c in resample_counts(10, 3, seed=5)]
    b = list(resample_counts(10, 3, seed=5))
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and all(x.sum() == 10 for x in a)
    assert not np.array_equal(a[0], next(resample_counts(10, 1, seed=6)))
    res = bootstrap({"x": outcome, "y": outcome}, n_resamples=50, seed=1)
    np.testing.assert_array_equal(res["x"][1], res["y"][1])  # same images → same resamples
    full, samples = res["x"]
    assert samples.shape == (50, len(COLUMNS))
    lo, hi = percentile_interval(samples[:, STAT_NAMES.index("AP")])
    assert lo < full[0] < hi and hi - lo > 0.01


def test_percentile_interval_drops_undefined():
    x = np.r_[np.linspace(0, 1, 101), [np.nan] * 10]
    assert percentile_interval(x) == pytest.approx((0.025, 0.975))
    assert np.isnan(percentile_interval(np.r_[[np.nan] * 6, [1.0] * 4])[0])


def test_matches_evaluate_keypoints_on_the_real_samples(coco_mini, tmp_path):
    """The workload's evaluation path: a perturbed GT-as-results set of the COCO samples."""
    gt_path = coco_mini / "annotations/person_keypoints_val2017.json"
    gt = json.loads(gt_path.read_text())
    rng = np.random.default_rng(0)
    dets = []
    for a in gt["annotations"]:
        if a["num_keypoints"] == 0:
            continue
        k = np.asarray(a["keypoints"], dtype=np.float64).reshape(17, 3)
        k[:, :2] += rng.normal(0, 0.05 * np.sqrt(a["area"]) * 4 * OKS_SIGMAS[:, None], size=(17, 2))
        k[:, 2] = 1
        dets.append(
            {
                "image_id": a["image_id"],
                "category_id": 1,
                "keypoints": k.reshape(-1).tolist(),
                "score": float(rng.uniform()),
            }
        )
    ev = run_cocoeval(gt, dets)
    ours = Accumulator(read_outcome(extract(ev).to_bytes())).stats()
    np.testing.assert_allclose(ours, cocoeval_columns(ev), rtol=0, atol=1e-12)
