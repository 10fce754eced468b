"""Time of the COCO keypoint evaluation a finetune runs on rank 0 after its predictions
(`evaluate_keypoints(..., per_image=True)`: COCOeval, the error analysis, the per-image outcome), on a
COCO-format folder's val2017 with results made from its ground truth (every labelled person, keypoints
moved a few pixels, seeded), scaled linearly in boxes to val2017's 104,125 detections.

The device check adds this to the predict time that `benchmarks.throughput` measures, for the
"val2017-sized evaluation <= 2 min" target. It needs pycocotools; without it it prints one SKIPPED line
that says so. Run as `python -m benchmarks.eval_time --coco-root DIR [--json FILE]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.throughput import VAL2017_BOXES, write_json

JITTER_PX = 2.0  # keypoints moved by up to this many pixels: AP < 1, so COCOeval's matching does work


def results_from_gt(gt: dict, seed: int = 0) -> list[dict]:
    """One keypoint result per labelled, non-crowd person of `gt` (a COCO keypoint annotation dict)."""
    rng = np.random.default_rng(seed)
    out = []
    for ann in gt["annotations"]:
        if ann.get("iscrowd", 0) or ann.get("num_keypoints", 0) <= 0:
            continue
        kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
        kp[:, :2] += rng.uniform(-JITTER_PX, JITTER_PX, size=kp[:, :2].shape)
        kp[:, 2] = 1.0
        out.append({"image_id": ann["image_id"], "category_id": 1, "keypoints": kp.ravel().tolist(),
                    "score": float(rng.uniform(0.5, 1.0))})  # fmt: skip
    return out


def measure(coco_root: str) -> dict:
    from workloads.data.coco import annotation_path
    from workloads.pose.evaluate import evaluate_keypoints

    gt_path = annotation_path(coco_root, "val2017")
    results = results_from_gt(json.loads(Path(gt_path).read_text()))
    if not results:
        raise SystemExit(f"{gt_path}: no labelled person to make results from")
    start = time.perf_counter()
    metrics = evaluate_keypoints(gt_path, results, per_image=True)
    seconds = time.perf_counter() - start
    return {"results": len(results), "seconds": seconds, "AP": metrics["AP"],
            "val2017_seconds_est": seconds * VAL2017_BOXES / len(results)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.eval_time", description=__doc__.split("\n\n")[0])
    p.add_argument("--coco-root", help="a COCO-format folder (default: a small generated synthetic set)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    try:
        from workloads.pose.cocoapi import coco_api

        coco_api()
    except ImportError as err:  # the message of the cause is the short one (what is missing, and why)
        print(f"SKIPPED: not run: pycocotools is not importable here ({err.__cause__ or err})")
        return 0
    with tempfile.TemporaryDirectory(prefix="hsjp-eval-time-") as tmp:
        root = args.coco_root
        if not root:
            from workloads.data import synthetic

            root = synthetic.generate(Path(tmp) / "data", n_train=1, n_val=64, seed=0)["root"]
        report = measure(root)
    write_json(report, args.json)
    print(f"COCO keypoint evaluation (COCOeval + error analysis + per-image outcome): {report['results']} "
          f"results in {report['seconds']:.2f} s (AP {report['AP']:.3f}) -> val2017's {VAL2017_BOXES:,} "
          f"boxes ~{report['val2017_seconds_est']:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
