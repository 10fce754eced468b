"""What one pose evaluation costs on GT boxes vs detection boxes, and what model selection costs a run.

    python -m benchmarks.eval_cost [--images 16] [--repeats 3] [--width 8] [--threads 1]

Times the finetune's real evaluation (`pose.train.evaluate_model`: `inference.predict` with the flip
test, rescoring and OKS-NMS, then `evaluate_keypoints`: COCOeval, error breakdown, per-image outcome)
on CPU, on a synthetic COCO-format val set (`data.synthetic`, 640×480 images), once with the val
persons' GT boxes and once with the set's detection file. It prints the measured boxes/s of each and,
from them, the time of one evaluation of val2017 (6,352 GT persons with keypoints vs 104,125 detections,
HRNet's logs: orchestrator.plan) and the evaluation total of a 210-epoch HRNet finetune at eval_every 10
(21 evaluations + 1 final) under the two model-selection rules: every evaluation on the detections
(before), or GT boxes per epoch and the detections once for the selected weights (the official one).
Each kind is timed twice, on its first image's boxes (`data.max_val_instances`) and on all of them, and
the projection is the line fixed + per-box × boxes through the two (each time the fastest of
`--repeats` runs: on a shared machine the others' load only ever adds time) (the fixed part: loading the
annotations, folding the BatchNorms and checking the folded model, starting the decode threads).
The default model is a narrow HRNet (width 8: the stem and layer1 are W32's, the branches a quarter),
so that the run takes under a minute on one core; `--width 32` times the paper's model. COCOeval grows a little faster than the box count on
crowded images, so the detection figures are a lower bound. The same ratio holds on a GPU,
where the forward pass is faster but both sides shrink alike; the plan's GPU figure is printed beside.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import tempfile
import time
from pathlib import Path

import torch

from orchestrator.plan import COCO_VAL_DETECTIONS, COCO_VAL_KEYPOINT_PERSONS, EVAL_SPEEDUP
from orchestrator.spec.inputs import GPU_THROUGHPUT
from workloads.config import DataConfig, FinetuneConfig, ModelConfig
from workloads.data import synthetic
from workloads.data.keypoints import NUM_KEYPOINTS
from workloads.models import build_model
from workloads.pose import inference
from workloads.pose.train import evaluate_model, load_val_instances

EPOCHS, EVAL_EVERY = 210, 10  # HRNet's official schedule (END_EPOCH 210) at finetune.eval_every 10
IMAGE_WH = (640, 480)  # COCO val2017's most common image size


def timed_evaluation(model, cfg: FinetuneConfig, data: DataConfig, boxes: str, device) -> dict:
    """One `evaluate_model` on `boxes`: {boxes, seconds, predict_seconds, boxes_per_s, AP}."""
    val = load_val_instances(cfg, data, boxes)
    spent = {"predict": 0.0}
    predict = inference.predict

    def timed_predict(*args, **kw):  # the call evaluate_model makes, timed on its own
        t0 = time.perf_counter()
        try:
            return predict(*args, **kw)
        finally:
            spent["predict"] += time.perf_counter() - t0

    inference.predict = timed_predict
    try:
        t0 = time.perf_counter()
        metrics = evaluate_model(model, val, cfg, data, device)
        seconds = time.perf_counter() - t0
    finally:
        inference.predict = predict
    n = len(val.instances)
    return {
        "boxes": n,
        "seconds": seconds,
        "predict_seconds": spent["predict"],
        "boxes_per_s": n / seconds,
        "AP": metrics["AP"],
    }


def fastest(repeats: int, *args) -> dict:
    """`timed_evaluation(*args)` with the least time of `repeats` runs (at least 1)."""
    return min((timed_evaluation(*args) for _ in range(max(1, repeats))), key=lambda r: r["seconds"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=16, help="synthetic val images (1-3 persons each)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each timing; the fastest counts")
    ap.add_argument("--width", type=int, default=8, help="HRNet width (32 = W32, the paper's model)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (0 = torch's default; 1 is steadiest on a shared machine)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    cfg = FinetuneConfig(model=ModelConfig(width=args.width))  # 256×192, flip test, official post-processing
    model = build_model(cfg.model, NUM_KEYPOINTS, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory(prefix="hsjp-eval-cost-") as tmp:
        summary = synthetic.generate(Path(tmp), n_train=1, n_val=args.images, seed=0, image_size=IMAGE_WH)
        data = DataConfig(coco_root=tmp, detection_file=summary["detection_file"], loader_workers=2)
        timed_evaluation(model, cfg, DataConfig(coco_root=tmp, max_val_instances=4), "gt", device)  # warm-up
        runs, fits = {}, {}
        for boxes in ("gt", "detections"):
            cap = 3  # the first image's boxes (whole images are kept: at least its first 3)
            first = dataclasses.replace(data, max_val_instances=cap)
            full = fastest(args.repeats, model, cfg, data, boxes, device)
            part = fastest(args.repeats, model, cfg, first, boxes, device)
            runs[boxes] = full
            per_box = max(full["seconds"] - part["seconds"], 1e-9) / max(full["boxes"] - part["boxes"], 1)
            fits[boxes] = (max(part["seconds"] - per_box * part["boxes"], 0.0), per_box, part)
    print(
        f"pose evaluation on CPU ({torch.get_num_threads()} threads), HRNet width {args.width}, "
        f"{cfg.input_hw[0]}×{cfg.input_hw[1]}, flip test, {args.images} synthetic {IMAGE_WH[0]}×{IMAGE_WH[1]} images"
    )
    print(f"{'boxes':<11} {'count':>6} {'seconds':>8} {'predict s':>9} {'boxes/s':>8}   fit: fixed s + s/box")
    for boxes, r in runs.items():
        fixed, per_box, part = fits[boxes]
        print(
            f"{boxes:<11} {r['boxes']:>6} {r['seconds']:>8.2f} {r['predict_seconds']:>9.2f} {r['boxes_per_s']:>8.2f}"
            f"   {fixed:.2f} + {per_box:.4f} (also {part['boxes']} boxes in {part['seconds']:.2f} s)"
        )
    gt_s = fits["gt"][0] + fits["gt"][1] * COCO_VAL_KEYPOINT_PERSONS
    det_s = fits["detections"][0] + fits["detections"][1] * COCO_VAL_DETECTIONS
    evals = EPOCHS // EVAL_EVERY + (1 if EPOCHS % EVAL_EVERY else 0)
    before = evals * det_s
    after = evals * gt_s + det_s
    print("\nprojected on CPU (the fit), one evaluation of val2017:")
    print(f"  GT boxes   {COCO_VAL_KEYPOINT_PERSONS:>7,} persons    {gt_s / 3600:8.2f} h")
    print(
        f"  detections {COCO_VAL_DETECTIONS:>7,} boxes      {det_s / 3600:8.2f} h   ({det_s / gt_s:.1f}× the GT one)"
    )
    print(f"a {EPOCHS}-epoch run at eval_every {EVAL_EVERY} ({evals} evaluations):")
    print(f"  every evaluation on detections          {before / 3600:8.2f} h")
    print(f"  GT boxes per epoch + detections once     {after / 3600:8.2f} h   ({before / after:.1f}× less)")
    gpu_box_s = GPU_THROUGHPUT["hrnet_w32"] * EVAL_SPEEDUP / (2 if cfg.flip_test else 1)
    print(
        f"plan's GPU cost model (fp32 H100 target {GPU_THROUGHPUT['hrnet_w32']:g} train img/s, forward "
        f"{EVAL_SPEEDUP:g}× that, 2 passes per box: {gpu_box_s:g} boxes/s, model only):\n"
        f"  {before / det_s * COCO_VAL_DETECTIONS / gpu_box_s / 3600:.2f} h before vs "
        f"{(evals * COCO_VAL_KEYPOINT_PERSONS + COCO_VAL_DETECTIONS) / gpu_box_s / 3600:.2f} h now per run"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
