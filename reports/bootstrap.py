"""Paired bootstrap over evaluation images: COCO keypoint AP re-accumulated on resampled image sets
from each finetune's stored per-image outcome (`<store>/stages/<id>/per_image.npz`, docs/per-image.md).

`Accumulator` re-does `COCOeval.accumulate` + `summarize` (one category, maxDets 20) for any multiset
of the evaluated images, given as per-image counts. It is exact, not an approximation: for a resample
it builds the detection sequence COCOeval would sort — the images in index order, each copy of an
image adjacent to the others (as when duplicates get new, consecutive ids), the score sort stable —
then the same cumulative sums, interpolated precision and recall-threshold lookup in float64. Equal
scores inside one image stay together per copy (COCOeval sees copy 1's tie, then copy 2's), which
matters when tied detections differ in match status; different images keep their order.
Tested equal to pycocotools on resamples written out as their own GT + results files (1e-9) and on
the full set (1e-12): tests/reports/test_bootstrap.py.

Resamples are drawn once per distinct image set (`resample_counts`, seeded), so every stage evaluated
on the same images sees the same resamples: differences between stages are paired.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
"""COCOeval.summarize's keypoint stats, in its order; then the AP at each OKS threshold (OKS_KEYS)."""
OKS_KEYS: tuple[str, ...] = tuple(f"{t:.2f}" for t in np.linspace(0.5, 0.95, 10))
COLUMNS: tuple[str, ...] = STAT_NAMES + tuple(f"AP@{k}" for k in OKS_KEYS)
N_RESAMPLES = 1000
SEED = 0
UNDEFINED = -1.0  # COCOeval's value when no GT counts (e.g. a resample without any large person)


@dataclass
class Outcome:
    """The arrays of a per_image.npz (see workloads/pose/per_image.py for their meaning)."""

    image_ids: np.ndarray
    det_count: np.ndarray
    scores: np.ndarray
    matched: np.ndarray  # [A, T, D] bool
    ignored: np.ndarray  # [A, T, D] bool
    npig: np.ndarray  # [A, I]
    area_labels: tuple[str, ...]
    iou_thrs: np.ndarray
    rec_thrs: np.ndarray


def read_outcome(data: bytes) -> Outcome:
    """Parse per_image.npz bytes (format version 1); ValueError names what is wrong."""
    try:
        z = np.load(io.BytesIO(data), allow_pickle=False)
        version = int(z["version"])
    except (KeyError, OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"not a per-image outcome file ({type(exc).__name__}: {exc})") from exc
    if version != 1:
        raise ValueError(f"per-image outcome format version {version}, this report reads 1")
    try:
        n = int(z["scores"].shape[0])
        out = Outcome(
            image_ids=z["image_ids"],
            det_count=z["det_count"].astype(np.int64),
            scores=z["scores"].astype(np.float64),
            matched=np.unpackbits(z["matched"], axis=-1, count=n).astype(bool),
            ignored=np.unpackbits(z["ignored"], axis=-1, count=n).astype(bool),
            npig=z["npig"].astype(np.int64),
            area_labels=tuple(str(a) for a in z["area_labels"]),
            iou_thrs=z["iou_thrs"],
            rec_thrs=z["rec_thrs"],
        )
    except (KeyError, OSError, EOFError, ValueError) as exc:
        raise ValueError(f"not a per-image outcome file ({type(exc).__name__}: {exc})") from exc
    if int(out.det_count.sum()) != n or out.npig.shape != (len(out.area_labels), len(out.image_ids)):
        raise ValueError("inconsistent per-image outcome arrays")
    return out


class Accumulator:
    """COCOeval's accumulate + summarize of one outcome, for any per-image counts (see module doc)."""

    def __init__(self, outcome: Outcome):
        self.outcome = outcome
        o = outcome
        self.n_images = len(o.image_ids)
        det_image = np.repeat(np.arange(self.n_images), o.det_count)
        order = np.argsort(-o.scores, kind="mergesort")  # COCOeval's sort of the concatenated scores
        img_o, score_o = det_image[order], o.scores[order]
        starts = np.flatnonzero(
            np.r_[True, (img_o[1:] != img_o[:-1]) | (score_o[1:] != score_o[:-1])]
        )  # blocks: equal score within one image (contiguous in `order`)
        self.block_start = starts
        self.block_len = np.diff(np.r_[starts, len(order)])
        self.block_image = img_o[starts] if len(starts) else np.zeros(0, dtype=np.int64)
        self.singletons = bool(np.all(self.block_len == 1))
        valid = ~o.ignored[:, :, order]
        self.tp = o.matched[:, :, order] & valid  # [A, T, D] in sorted order
        self.fp = ~o.matched[:, :, order] & valid
        self.area = {label: a for a, label in enumerate(o.area_labels)}
        self.t50 = int(np.argmin(np.abs(o.iou_thrs - 0.5)))
        self.t75 = int(np.argmin(np.abs(o.iou_thrs - 0.75)))

    def positions(self, counts: np.ndarray) -> np.ndarray:
        """Indices into the sorted detections, in the order COCOeval processes the resample."""
        reps = counts[self.block_image]
        blocks = np.repeat(np.arange(len(self.block_start)), reps)
        if self.singletons:
            return self.block_start[blocks]
        lengths = self.block_len[blocks]
        offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return np.repeat(self.block_start[blocks], lengths) + offsets

    def _area(self, a: int, pos: np.ndarray, npig: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(precision [T, R], recall [T]) of area range `a`, or None when no GT counts (COCOeval: -1)."""
        if npig == 0:
            return None
        rec_thrs = self.outcome.rec_thrs
        n_thr, nd = self.tp.shape[1], len(pos)
        if nd == 0:
            return np.zeros((n_thr, len(rec_thrs))), np.zeros(n_thr)
        tp = np.cumsum(self.tp[a][:, pos], axis=1, dtype=np.float64)
        fp = np.cumsum(self.fp[a][:, pos], axis=1, dtype=np.float64)
        rc = tp / npig
        pr = tp / (fp + tp + np.spacing(1))
        envelope = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]
        q = np.zeros((n_thr, len(rec_thrs)))
        for t in range(n_thr):
            inds = np.searchsorted(rc[t], rec_thrs, side="left")
            ok = inds < nd
            q[t, ok] = envelope[t, inds[ok]]
        return q, rc[:, -1]

    def stats(self, counts: np.ndarray | None = None) -> np.ndarray:
        """COLUMNS for the image multiset `counts` [I] (None: every image once); -1 where undefined."""
        counts = np.ones(self.n_images, dtype=np.int64) if counts is None else counts
        pos = self.positions(counts)
        npig = self.outcome.npig @ counts
        out = np.full(len(COLUMNS), UNDEFINED)
        per_area = {label: self._area(a, pos, int(npig[a])) for label, a in self.area.items()}
        full = per_area.get("all")
        if full is not None:
            q, rec = full
            out[0], out[1], out[2] = q.ravel().mean(), q[self.t50].mean(), q[self.t75].mean()
            out[5], out[6], out[7] = rec.mean(), rec[self.t50], rec[self.t75]
            out[len(STAT_NAMES) :] = q.mean(axis=1)
        for label, ap_i, ar_i in (("medium", 3, 8), ("large", 4, 9)):
            res = per_area.get(label)
            if res is not None:
                out[ap_i], out[ar_i] = res[0].ravel().mean(), res[1].mean()
        return out


def resample_indices(n_images: int, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> Iterator[np.ndarray]:
    """Each resample as sorted image indices (n_images draws with replacement), seeded."""
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        yield np.sort(rng.integers(0, n_images, size=n_images))


def resample_counts(n_images: int, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> Iterator[np.ndarray]:
    """The same resamples as `resample_indices`, as per-image counts."""
    for idx in resample_indices(n_images, n_resamples, seed):
        yield np.bincount(idx, minlength=n_images)


def bootstrap(
    outcomes: dict[str, Outcome], n_resamples: int = N_RESAMPLES, seed: int = SEED
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{key: (full-set COLUMNS [C], resampled COLUMNS [n_resamples, C])}, NaN where undefined (COCOeval's
    -1). Outcomes on the same image ids share their resamples (paired); `image_set_key` says which."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    groups: dict[bytes, list[str]] = {}
    for key, o in outcomes.items():
        groups.setdefault(image_set_key(o), []).append(key)
    for keys in groups.values():
        accs = {k: Accumulator(outcomes[k]) for k in keys}
        n = accs[keys[0]].n_images
        samples = {k: np.empty((n_resamples, len(COLUMNS))) for k in keys}
        for b, counts in enumerate(resample_counts(n, n_resamples, seed)):
            for k, acc in accs.items():
                samples[k][b] = acc.stats(counts)
        for k, acc in accs.items():
            full, resampled = acc.stats(), samples[k]
            full[full == UNDEFINED], resampled[resampled == UNDEFINED] = np.nan, np.nan  # AP is never -1
            out[k] = (full, resampled)
    return out


def image_set_key(outcome: Outcome) -> bytes:
    """Identity of the evaluated image set (stages with equal keys are resampled together)."""
    return np.ascontiguousarray(outcome.image_ids, dtype=np.int64).tobytes()


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """(lo, hi) percentile interval of the finite samples (NaN = undefined, dropped); NaN when fewer
    than half of the resamples are defined."""
    samples = np.asarray(samples, dtype=np.float64)
    ok = samples[np.isfinite(samples)]
    if ok.size < max(1, samples.size // 2):
        return float("nan"), float("nan")
    alpha = 100 * (1 - level) / 2
    lo, hi = np.percentile(ok, [alpha, 100 - alpha])
    return float(lo), float(hi)
