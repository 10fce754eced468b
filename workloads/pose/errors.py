"""Keypoint localisation error breakdown of Ronchi & Perona (ICCV'17) — paper §5 error analysis (Fig. 4).

Definitions as in coco-analyze (matteorr/coco-analyze, pycocotools/cocoanalyze.py:_find_kpt_errors and
analysisAPI/localizationErrors.py), re-implemented here:

1. Detections are matched to ground truth by COCOeval's own greedy matching (score order, top 20
   detections per image) at OKS 0.1 (`oksLocThrs`), in coco-analyze's 'all' area range
   [32², 1e5²] — it *excludes small* persons, unlike pycocotools' 'all'; `min_area` keeps that
   default and can be set to 0. The range only steers the matching (COCOeval prefers GTs inside it);
   as in coco-analyze, a detection matched to an ignored GT (e.g. a small one) is still analysed,
   and one matched to a GT without keypoints is skipped.
2. For a matched pair, the candidates are 2N rows built from all N annotations of the image: row 0 the
   matched GT, rows 1..N-1 the other people, rows N..2N-1 their left/right-inverted copies (row N =
   the matched GT inverted). ks_k = exp(-d² / (2 · area_row · (2σ_k)²)) with each row's own `area`;
   entries whose candidate keypoint is not annotated (v = 0) do not count.
3. For each keypoint annotated on the matched GT, with best = max ks over rows and arg = its row
   (first on ties): good best > .85 and arg 0; jitter .5 ≤ best ≤ .85 and arg 0; inversion
   best ≥ .5 and arg N; swap best ≥ .5 and arg ∉ {0, N}; miss best < .5. coco-analyze writes jitter
   as best < .85, which leaves best == .85 unlabelled; here that tie is jitter, so the five labels are
   exhaustive and mutually exclusive (their counts sum to the GT's num_keypoints).

Shares: overall = label count / annotated keypoints of all matched GTs (coco-analyze's overall pie);
per keypoint = label count / annotated instances of that keypoint, all five labels (coco-analyze's
per-keypoint pies leave `good` out and renormalise the four errors; the counts here allow both).
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import TYPE_CHECKING

import numpy as np

from workloads.data.keypoints import FLIP_INDEX, KEYPOINT_NAMES, OKS_SIGMAS
from workloads.pose.cocoapi import coco_api
from workloads.pose.oks import keypoint_similarity

if TYPE_CHECKING:  # pycocotools is imported when an analysis runs (workloads/pose/cocoapi.py)
    from pycocotools.coco import COCO

log = logging.getLogger(__name__)

ERROR_TYPES: tuple[str, ...] = ("good", "jitter", "inversion", "swap", "miss")
JITTER_KS = (0.5, 0.85)  # coco-analyze Params.jitterKsThrs
MATCH_OKS = 0.1  # coco-analyze Params.oksLocThrs
MAX_DETS = 20  # coco-analyze Params.maxDets (= COCOeval keypoints)
MIN_AREA = 32.0**2  # coco-analyze 'all' area range [32², 1e5²]
MAX_AREA = 1e5**2


def classify_keypoints(
    dt_xy: np.ndarray,
    candidates_xy: np.ndarray,
    candidates_vis: np.ndarray,
    candidate_areas: np.ndarray,
    sigmas: np.ndarray = OKS_SIGMAS,
) -> np.ndarray:
    """Label each keypoint of one matched detection: [K] int index into ERROR_TYPES, -1 = not annotated.

    dt_xy [K, 2]; candidates_xy [2N, K, 2] (row 0 the matched GT, row N its inverted copy, see the
    module docstring); candidates_vis [2N, K] COCO v; candidate_areas [2N] px².
    """
    rows = candidates_xy.shape[0]
    if rows % 2 or rows == 0:
        raise ValueError(f"classify_keypoints expects 2N candidate rows, got {rows}")
    n = rows // 2
    dist_sq = ((candidates_xy - np.asarray(dt_xy)[None, :, :2]) ** 2).sum(-1)  # [2N, K]
    ks = keypoint_similarity(dist_sq, np.asarray(candidate_areas, dtype=np.float64)[:, None], sigmas)
    ks = np.where(candidates_vis > 0, ks, -1.0)
    best = np.maximum(ks.max(axis=0), 0.0)  # [K]
    arg = ks.argmax(axis=0)  # [K], first row on ties (the matched GT before its inverted copy)
    low, high = JITTER_KS
    # first matching condition wins: miss, inversion, swap, good, else jitter (indices of ERROR_TYPES)
    labels = np.select([best < low, arg == n, arg != 0, best > high], [4, 2, 3, 0], default=1)
    return np.where(candidates_vis[0] > 0, labels, -1)


def candidate_rows(
    matched: dict, image_anns: list[dict], flip_index: np.ndarray = FLIP_INDEX
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xy [2N, K, 2], vis [2N, K], areas [2N]) from COCO annotation dicts; `matched` first."""
    others = [a for a in image_anns if a["id"] != matched["id"]]
    anns = [matched, *others]
    kpts = np.array([a["keypoints"] for a in anns], dtype=np.float64).reshape(len(anns), -1, 3)  # [N, K, 3]
    inverted = kpts[:, flip_index]
    both = np.concatenate([kpts, inverted])  # [2N, K, 3]
    areas = np.array([float(a["area"]) for a in anns] * 2)
    return both[:, :, :2], both[:, :, 2], areas


def match_detections(
    coco_gt: COCO, coco_dt: COCO, oks_thr: float = MATCH_OKS, min_area: float = MIN_AREA
) -> list[tuple[int, int]]:
    """(dt id, gt id) pairs of COCOeval's greedy matching at one OKS threshold (maxDets 20)."""
    ev = coco_api("the error analysis")[1](coco_gt, coco_dt, "keypoints")
    ev.params.iouThrs = np.array([oks_thr])
    ev.params.areaRng = [[min_area, MAX_AREA]]
    ev.params.areaRngLbl = ["all"]
    ev.params.maxDets = [MAX_DETS]
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
    pairs = []
    for e in ev.evalImgs:
        if e is None:
            continue
        for dind, dt_id in enumerate(e["dtIds"]):
            gt_id = int(e["dtMatches"][0][dind])
            if gt_id != 0:
                pairs.append((int(dt_id), gt_id))
    return pairs


def analyze_errors(
    coco_gt: COCO, coco_dt: COCO, sigmas: np.ndarray = OKS_SIGMAS, min_area: float = MIN_AREA
) -> dict:
    """Ronchi–Perona breakdown: {"overall": {type: share}, "per_keypoint": {name: {...}}, "counts": {...}}."""
    num_kpts = len(sigmas)
    counts = np.zeros((num_kpts, len(ERROR_TYPES)), dtype=np.int64)  # [K, 5]
    matched = 0
    for dt_id, gt_id in match_detections(coco_gt, coco_dt, MATCH_OKS, min_area):
        gt = coco_gt.anns[gt_id]
        if gt.get("num_keypoints", 0) == 0:
            continue  # coco-analyze: no keypoints, nothing to analyse
        image_anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=gt["image_id"]))
        xy, vis, areas = candidate_rows(gt, image_anns)
        dt_xy = np.asarray(coco_dt.anns[dt_id]["keypoints"], dtype=np.float64).reshape(-1, 3)[:, :2]
        labels = classify_keypoints(dt_xy, xy, vis, areas, sigmas)
        annotated = labels >= 0
        np.add.at(counts, (np.nonzero(annotated)[0], labels[annotated]), 1)
        matched += 1
    return summarize_counts(counts, matched)


def summarize_counts(counts: np.ndarray, matched: int) -> dict:
    """Shares from label counts [K, 5]; all zeros when nothing was annotated."""
    total = int(counts.sum())
    overall = {t: (float(counts[:, j].sum()) / total if total else 0.0) for j, t in enumerate(ERROR_TYPES)}
    per_keypoint = {}
    for k, name in enumerate(KEYPOINT_NAMES[: counts.shape[0]]):
        n = int(counts[k].sum())
        per_keypoint[name] = {t: (float(counts[k, j]) / n if n else 0.0) for j, t in enumerate(ERROR_TYPES)}
    return {
        "overall": overall,
        "per_keypoint": per_keypoint,
        "counts": {
            "matched_detections": int(matched),
            "annotated_keypoints": total,
            **{t: int(counts[:, j].sum()) for j, t in enumerate(ERROR_TYPES)},
        },
    }
