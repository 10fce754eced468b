"""Per-image evaluation outcome of a finetune: what COCOeval needs to re-accumulate AP on any multiset
of the evaluated images (the report's paired bootstrap, `reports.bootstrap`; docs/per-image.md).

After `COCOeval.evaluate()`, `ev.evalImgs` holds, per (category, area range, image), the image's
detections sorted by score (cut at maxDets), their matches and ignore flags at each OKS threshold,
and the GT ignore flags. `extract` keeps exactly that, concatenated over images:

- `image_ids` [I] (COCOeval's sorted `params.imgIds`), `det_count` [I] detections per image,
- `scores` [D] float64, in COCOeval's per-image order (score descending, ties in input order),
- `matched` / `ignored` [A, T, D] bool (dtMatches > 0 / dtIgnore per area range and OKS threshold),
- `npig` [A, I] int32: GT persons that count (not ignored) per area range and image,
- `area_labels`, `iou_thrs`, `rec_thrs`, `max_det`: the evaluation parameters.

An image with neither GT nor detections (evalImgs entry None) has det_count 0 and npig 0, which
contributes to accumulate exactly what None does: nothing. `to_bytes` packs the bool arrays
(np.packbits) into one compressed npz: ~1.5 bits per (area, threshold, detection) plus 8 bytes a score.
Only numpy here (no torch): the bytes travel in the engine's checkpoint and become the stage's
`per_image.npz`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

PER_IMAGE_KEY = "_per_image"
"""Key of the encoded outcome in an evaluation's metrics (the engine keeps `_` keys out of epoch rows)."""
PER_IMAGE_FILE = "per_image.npz"
"""Name of the file in the stage folder (`<store>/stages/<finetune id>/per_image.npz`)."""
FORMAT_VERSION = 1


@dataclass
class PerImageOutcome:
    image_ids: np.ndarray
    det_count: np.ndarray
    scores: np.ndarray
    matched: np.ndarray
    ignored: np.ndarray
    npig: np.ndarray
    area_labels: tuple[str, ...]
    iou_thrs: np.ndarray
    rec_thrs: np.ndarray
    max_det: int

    def to_bytes(self) -> bytes:
        """Compressed npz (bool arrays bit-packed); read back by reports.bootstrap.read_outcome."""
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            version=np.int32(FORMAT_VERSION),
            image_ids=self.image_ids.astype(np.int64),
            det_count=self.det_count.astype(np.int32),
            scores=self.scores.astype(np.float64),
            matched=np.packbits(self.matched, axis=-1),
            ignored=np.packbits(self.ignored, axis=-1),
            npig=self.npig.astype(np.int32),
            area_labels=np.array(self.area_labels),
            iou_thrs=self.iou_thrs.astype(np.float64),
            rec_thrs=self.rec_thrs.astype(np.float64),
            max_det=np.int32(self.max_det),
        )
        return buf.getvalue()


def extract(ev: Any) -> PerImageOutcome:
    """The outcome of a `COCOeval` on which `evaluate()` has run (one category: person keypoints).

    Raises ValueError when the evaluation has several categories or several maxDets (the report's
    bootstrap re-accumulates one category at maxDets[-1], as `evaluate_keypoints` runs it).
    """
    p = ev.params
    cat_ids = p.catIds if p.useCats else [-1]
    if len(cat_ids) != 1 or len(p.maxDets) != 1:
        raise ValueError(
            f"per-image outcome: expected one category and one maxDets (got {len(cat_ids)} categories, "
            f"maxDets {list(p.maxDets)})"
        )
    n_img, n_area, n_thr = len(p.imgIds), len(p.areaRng), len(p.iouThrs)
    if len(ev.evalImgs) != n_area * n_img:
        raise ValueError("per-image outcome: run COCOeval.evaluate() first")
    max_det = int(p.maxDets[-1])
    det_count = np.zeros(n_img, dtype=np.int32)
    npig = np.zeros((n_area, n_img), dtype=np.int32)
    scores: list[np.ndarray] = []
    matched: list[list[np.ndarray]] = [[] for _ in range(n_area)]
    ignored: list[list[np.ndarray]] = [[] for _ in range(n_area)]
    for i in range(n_img):
        first = None
        for a in range(n_area):
            e = ev.evalImgs[a * n_img + i]
            if e is None:
                continue
            s = np.asarray(e["dtScores"][:max_det], dtype=np.float64)
            if first is None:
                first = s
                det_count[i] = len(s)
                scores.append(s)
            elif not np.array_equal(first, s):  # evaluateImg keeps the same detections for every area
                raise ValueError(f"per-image outcome: image {p.imgIds[i]} has different detections per area")
            matched[a].append(np.asarray(e["dtMatches"][:, :max_det]) > 0)
            ignored[a].append(np.asarray(e["dtIgnore"][:, :max_det]).astype(bool))
            npig[a, i] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
    empty = np.zeros((n_thr, 0), dtype=bool)
    return PerImageOutcome(
        image_ids=np.asarray(p.imgIds, dtype=np.int64),
        det_count=det_count,
        scores=np.concatenate(scores) if scores else np.zeros(0),
        matched=np.stack([np.concatenate(m, axis=1) if m else empty for m in matched]),
        ignored=np.stack([np.concatenate(g, axis=1) if g else empty for g in ignored]),
        npig=npig,
        area_labels=tuple(getattr(p, "areaRngLbl", [str(a) for a in p.areaRng])),
        iou_thrs=np.asarray(p.iouThrs, dtype=np.float64),
        rec_thrs=np.asarray(p.recThrs, dtype=np.float64),
        max_det=max_det,
    )
