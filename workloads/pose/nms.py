"""OKS-based non-maximum suppression of person predictions (paper §4.1, official HRNet test pipeline).

Greedy in score order per image: keep the best instance, drop every remaining one whose OKS with it
is above the threshold (HRNet lib/nms/nms.py:oks_nms, TEST.OKS_THRE 0.9). OKS over all 17 joints
with the mean area of the pair, area = prod(scale · 200) (the padded, aspect-fixed box).
"""

from __future__ import annotations

import numpy as np

from workloads.data.keypoints import OKS_SIGMAS
from workloads.pose.oks import oks_one_to_many


def oks_nms(
    keypoints: np.ndarray,
    scores: np.ndarray,
    areas: np.ndarray,
    threshold: float,
    sigmas: np.ndarray = OKS_SIGMAS,
    vis_thre: float | None = None,
) -> list[int]:
    """Indices of the instances kept, in descending score order.

    keypoints [N, K, 3] (x, y, score) image px; scores [N]; areas [N] px². An instance is dropped
    when its OKS with an already kept one is > threshold (HRNet keeps `oks <= thresh`). Tied scores are
    visited in the official order, `scores.argsort()[::-1]` on float64 (NumPy's default sort, reversed:
    on the NumPy versions tested, ties come last index first), not in a stable descending order:
    with many equal scores the kept set depends on it.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    areas = np.asarray(areas, dtype=np.float64)
    if len(keypoints) == 0:
        return []
    order = np.argsort(scores)[::-1]  # HRNet lib/nms/nms.py oks_nms: order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size > 0:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        oks = oks_one_to_many(keypoints[best], keypoints[rest], areas[best], areas[rest], sigmas, vis_thre)
        order = rest[oks <= threshold]
    return keep
