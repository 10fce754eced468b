"""Time the report's paired bootstrap (reports/bootstrap.py) on a synthetic evaluation outcome of
COCO val2017's size: 5,000 images, ~50k detections, 3 area ranges × 10 OKS thresholds.

    python -m benchmarks.bootstrap [--images 5000] [--detections 50000] [--resamples 1000] [--stages 1]

Prints the set-up time, seconds for all resamples of one stage (target ≤ 60 s on one core) and per
resample. Pins numpy to one thread (OMP / OpenBLAS / MKL) before importing it, so the figure is one
core's. The outcome is random but shaped like a real one: ~10 detections per image with scores in
[0, 1] (some tied), match rates falling with the OKS threshold, ~5 % ignored.
"""

from __future__ import annotations

import argparse
import os
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from reports.bootstrap import N_RESAMPLES, Accumulator, Outcome, bootstrap  # noqa: E402


def synthetic_outcome(n_images: int, n_dets: int, seed: int = 0) -> Outcome:
    """A random outcome with the shape and the statistics of a real evaluation (see module doc)."""
    rng = np.random.default_rng(seed)
    det_count = rng.multinomial(n_dets, np.full(n_images, 1 / n_images)).astype(np.int64)
    det_count = np.minimum(det_count, 20)  # COCOeval's maxDets
    d = int(det_count.sum())
    scores = np.round(rng.random(d), 4)  # 4 decimals: ties inside and across images
    starts = np.r_[0, np.cumsum(det_count)[:-1]]
    for s, n in zip(starts, det_count):  # per image: descending, as COCOeval stores them
        scores[s : s + n] = np.sort(scores[s : s + n])[::-1]
    thr = np.linspace(0.5, 0.95, 10)
    hit = rng.random(d)
    matched = np.stack([(hit[None, :] < (0.9 - 0.8 * (thr[:, None] - 0.5))) for _ in range(3)])
    ignored = rng.random((3, 10, d)) < 0.05
    npig = np.stack([rng.poisson(lam, n_images) for lam in (6.0, 3.0, 3.0)]).astype(np.int64)
    return Outcome(
        image_ids=np.arange(1, n_images + 1) * 3,
        det_count=det_count,
        scores=scores,
        matched=matched,
        ignored=ignored,
        npig=npig,
        area_labels=("all", "medium", "large"),
        iou_thrs=thr,
        rec_thrs=np.linspace(0.0, 1.00, 101),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--detections", type=int, default=50_000)
    p.add_argument("--resamples", type=int, default=N_RESAMPLES)
    p.add_argument("--stages", type=int, default=1, help="stages on the same images (paired)")
    args = p.parse_args(argv)
    outcome = synthetic_outcome(args.images, args.detections)
    t0 = time.perf_counter()
    acc = Accumulator(outcome)
    setup = time.perf_counter() - t0
    full = acc.stats()
    stages = {f"stage{i}": outcome for i in range(args.stages)}
    t0 = time.perf_counter()
    result = bootstrap(stages, n_resamples=args.resamples, seed=0)
    seconds = time.perf_counter() - t0
    samples = result["stage0"][1][:, 0]
    lo, hi = np.percentile(samples, [2.5, 97.5])
    print(
        f"outcome: {args.images} images, {len(outcome.scores)} detections, "
        f"{outcome.matched.shape[0]} areas x {outcome.matched.shape[1]} OKS thresholds; "
        f"tied-score blocks of >1 detection in one image: {int((acc.block_len > 1).sum())}"
    )
    print(f"set-up (sort, blocks): {setup:.3f} s; full-set AP {100 * full[0]:.2f}")
    print(
        f"bootstrap: {args.resamples} resamples x {args.stages} stage(s) in {seconds:.1f} s "
        f"({1000 * seconds / args.resamples / args.stages:.1f} ms per resample per stage, one core); "
        f"AP 95% interval [{100 * lo:.2f}, {100 * hi:.2f}]"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
