"""`hsjp-study evaluate --checkpoint`: the command side of workloads/pose/checkpoint.py (no torch import
until the command runs, so `--help` stays fast)."""

from __future__ import annotations

import argparse
from typing import Any

# the same table as workloads.pose.checkpoint.MODEL_ZOO (kept torch-free for the parser)
BACKBONES = ("hrnet_w32", "simplebaseline_r50")


def format_summary(summary: dict[str, Any], backbone: str) -> str:
    """The lines the command prints: where the files are, AP beside the model zoo's value."""
    ck = summary["checkpoint"]
    lines = [
        f"checkpoint {ck['file']}: weights from {ck['entry']}"
        + (f", prefix {ck['prefix']!r} removed" if ck["prefix"] else "")
        + f"; loaded strictly into {backbone}"
        + (
            f" ({ck['counters_filled']} BatchNorm num_batches_tracked counters absent, a pre-0.4.1 "
            "save: set to 0 as PyTorch's strict load does)"
            if ck.get("counters_filled")
            else ""
        )
        + f"; input {summary['channel_order'].upper()}",
        f"{summary['persons']} persons ({summary['boxes']}) on {summary['images']} images "
        f"-> {summary['results_file']}",
    ]
    zoo_file, zoo_ap = summary["zoo"]
    ap = 100 * summary["metrics"]["AP"] if summary["metrics"] is not None else 0.0
    if summary["metrics"] is None:
        lines.append(
            f"no keypoint annotations for this split: submit {summary['zip_file']} to the evaluation server"
        )
    elif summary.get("gt_boxes"):
        lines.append(
            f"AP {ap:.1f} with GT boxes  -> {summary['metrics_file']}\n"
            f"no comparison with the model zoo: its {zoo_file} value ({zoo_ap:.1f}) is with the AP-56 "
            "person detections and it publishes no GT-box AP (GT boxes score higher); give --detections "
            "COCO_val2017_detections_AP_H_56_person.json to compare"
        )
    elif summary.get("split", "val2017") != "val2017":
        lines.append(
            f"AP {ap:.1f} with {summary['boxes']}  -> {summary['metrics_file']}\n"
            f"no comparison with the model zoo: its {zoo_file} value ({zoo_ap:.1f}) is on val2017"
        )
    else:
        lines.append(
            f"AP {ap:.1f}  (model zoo {zoo_file}: {zoo_ap:.1f} on val2017, 256x192, AP-56 detections; "
            f"difference {ap - zoo_ap:+.1f})  -> {summary['metrics_file']}"
        )
    if backbone == "simplebaseline_r50" and summary["channel_order"] == "rgb":
        lines.append(
            "note: the official SimpleBaseline zoo model was trained on BGR input; evaluate it with "
            "--channel-order bgr (this project trains both backbones on RGB)"
        )
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `--checkpoint` options of `hsjp-study evaluate` (registered by orchestrator.cli.main)."""
    g = p.add_argument_group("checkpoint evaluation (the setup check)")
    g.add_argument("--checkpoint", help="pose checkpoint: ours (weights.pt) or the official model zoo's")
    g.add_argument("--backbone", choices=BACKBONES, help="the checkpoint's network")
    g.add_argument("--coco-root", help="COCO 2017 folder (annotations/, val2017/, test2017/)")
    g.add_argument("--split", default="val2017", help="split to evaluate (default val2017; test-dev2017)")
    g.add_argument("--detections", help="person detections (HRNet's COCO_val2017_detections_AP_H_56_person.json); "
                   "default: the split's GT boxes")  # fmt: skip
    g.add_argument("--channel-order", choices=("rgb", "bgr"), default="rgb",
                   help="input colour order (default rgb; the official SimpleBaseline zoo model: bgr)")  # fmt: skip
    g.add_argument("--device", help="torch device (default: cuda when available)")
    g.add_argument("--max-images", type=int, help="only the first K images of the split (a quick check)")
    g.add_argument("--alg", help="<alg> of the server's file name person_keypoints_<split>_<alg>_results.json "
                   "(letters, digits, '-'; default: backbone and checkpoint file name)")  # fmt: skip


def run_from_args(args: argparse.Namespace) -> int:
    from workloads.pose.checkpoint import evaluate_checkpoint
    from workloads.user_errors import CheckpointError

    missing = [f"--{n.replace('_', '-')}" for n in ("backbone", "coco_root", "out") if not getattr(args, n)]
    if missing:
        raise CheckpointError(f"evaluate --checkpoint needs {', '.join(missing)}")
    summary = evaluate_checkpoint(
        args.checkpoint,
        args.backbone,
        args.coco_root,
        args.out,
        split=args.split,
        detections=args.detections,
        channel_order=args.channel_order,
        device=args.device,
        max_images=args.max_images,
        alg=args.alg,
    )
    print(format_summary(summary, args.backbone))
    return 0
