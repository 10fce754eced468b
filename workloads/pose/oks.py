"""Object keypoint similarity (OKS) between person instances (paper §4.1: COCO keypoint metric).

COCO's per-keypoint similarity is ks_k = exp(-d_k² / (2 · area · (2σ_k)²)) with the COCO sigmas
(pycocotools COCOeval.computeOks: `vars = (sigmas * 2)**2`, `e = d² / vars / (area + eps) / 2`).
OKS is the mean of ks over the keypoints that count. Used by OKS-NMS (`nms.py`, HRNet
lib/nms/nms.py:oks_iou) and the Ronchi–Perona error analysis (`errors.py`).
"""

from __future__ import annotations

import numpy as np

from workloads.data.keypoints import OKS_SIGMAS

_EPS = np.spacing(1)  # pycocotools / HRNet add np.spacing(1) to the area


def keypoint_similarity(
    dist_sq: np.ndarray, area: np.ndarray | float, sigmas: np.ndarray = OKS_SIGMAS
) -> np.ndarray:
    """ks = exp(-d² / (2 · area · (2σ)²)); `dist_sq` [..., K] px², `area` broadcastable to [..., 1]."""
    variances = (2.0 * np.asarray(sigmas, dtype=np.float64)) ** 2  # [K]
    area = np.asarray(area, dtype=np.float64)
    return np.exp(-np.asarray(dist_sq, dtype=np.float64) / variances / (area + _EPS) / 2.0)


def oks_one_to_many(
    kpts: np.ndarray,
    others: np.ndarray,
    area: float,
    other_areas: np.ndarray,
    sigmas: np.ndarray = OKS_SIGMAS,
    vis_thre: float | None = None,
) -> np.ndarray:
    """OKS of one instance against N others, with the mean area of each pair (HRNet oks_iou).

    kpts [K, 3] (x, y, score) or [K, 2]; others [N, K, 3] or [N, K, 2]; areas in px². With `vis_thre`,
    only keypoints whose score exceeds it in both instances count (HRNet passes None for COCO: all K).
    Returns [N] in [0, 1]; 0 for a pair with no counted keypoint.
    """
    kpts = np.asarray(kpts, dtype=np.float64)
    others = np.asarray(others, dtype=np.float64).reshape(-1, *kpts.shape)
    dist_sq = ((others[:, :, :2] - kpts[None, :, :2]) ** 2).sum(-1)  # [N, K]
    mean_area = (area + np.asarray(other_areas, dtype=np.float64)) / 2.0  # [N]
    ks = keypoint_similarity(dist_sq, mean_area[:, None], sigmas)  # [N, K]
    if vis_thre is None:
        return ks.mean(axis=1)
    counted = (kpts[None, :, 2] > vis_thre) & (others[:, :, 2] > vis_thre)  # [N, K]
    n = counted.sum(axis=1)
    return np.where(n > 0, (ks * counted).sum(axis=1) / np.maximum(n, 1), 0.0)
