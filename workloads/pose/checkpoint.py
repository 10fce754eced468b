"""Our inference on a pose checkpoint (`hsjp-study evaluate --checkpoint`): the setup check before GPU-days.

Loads a checkpoint of this project (a stage's `weights.pt`, or an epoch checkpoint's `model`) or of the
official model zoos (`pose_hrnet_w32_256x192.pth`, `pose_resnet_50_256x192.pth.tar`: a plain state
dict, a dict holding `best_state_dict` / `state_dict`, keys possibly `module.`-prefixed) into the
backbone's pose network STRICTLY (every key, every shape; only the BatchNorm `num_batches_tracked`
counters that files saved before PyTorch 0.4.1 lack are filled with 0, as PyTorch's strict load
accepts: workloads.models.loading.fill_batch_counters), runs the evaluation pipeline of the
finetunes (flip test, decoding, rescoring, OKS-NMS: workloads.pose.inference) over the split's
detections or GT boxes, writes `person_keypoints_<split>_results.json` always and `metrics.json` when
the split has keypoint annotations, and prints AP beside the model zoo's published value. If our
pipeline gives the zoo model its published AP, the data, the detections and the evaluation are set up
right. The published values are with the AP-56 person detections on val2017; with GT boxes (no
`--detections`) AP is printed without a comparison, as the zoo publishes no GT-box AP. A split without annotations (test-dev) needs `--detections` and yields the results file only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workloads.config import FinetuneConfig, ModelConfig
from workloads.models.loading import fill_batch_counters, read_weights_file
from workloads.user_errors import CheckpointError, MissingFileError

log = logging.getLogger(__name__)

# Published val2017 AP of the model zoo models at 256×192 with the person detections of AP 56.4
# (HRNet README, "Results on COCO val2017 with detector having human AP of 56.4": pose_hrnet_w32 74.4;
# pose_resnet_50 70.4), the numbers a correct setup reproduces.
MODEL_ZOO = {
    "hrnet_w32": ("pose_hrnet_w32_256x192.pth", 74.4),
    "simplebaseline_r50": ("pose_resnet_50_256x192.pth.tar", 70.4),
}
NESTED_KEYS = ("best_state_dict", "state_dict", "model")  # HRNet checkpoint.pth; ours: epoch checkpoint
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# ImageNet statistics of the normalisation (workloads.data.transforms.normalize_image), RGB order
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class LoadedCheckpoint:
    state: dict[str, torch.Tensor]
    entry: str
    """Where in the file the weights were: `(top level)` or the nested key used."""
    prefix: str
    """The wrapper prefix removed ('' when none)."""


def read_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """The state dict of a checkpoint file in any supported format (CheckpointError naming the file)."""
    path = Path(path)
    obj = read_weights_file(path)
    entry = "(top level)"
    if isinstance(obj, dict) and not _is_state_dict(obj):
        key = next((k for k in NESTED_KEYS if isinstance(obj.get(k), dict) and _is_state_dict(obj[k])), None)
        if key is None:
            raise CheckpointError(
                f"{path}: no state dict found: expected a dict of tensors or one under "
                f"{', '.join(NESTED_KEYS)}; top-level keys {sorted(map(str, obj))[:8]}"
            )
        obj, entry = obj[key], key
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    state, prefix = dict(obj), ""
    for p in WRAPPER_PREFIXES:
        if all(str(k).startswith(p) for k in state):
            state, prefix = {k[len(p) :]: v for k, v in state.items()}, p
    return LoadedCheckpoint(state, entry, prefix)


def _is_state_dict(d: dict[str, Any]) -> bool:
    return bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> list[str]:
    """Every model key present with its shape and no extra key, or CheckpointError naming the first
    mismatched key (model order: missing or other shape; then the first unexpected checkpoint key).
    A pre-0.4.1 checkpoint's absent BatchNorm `num_batches_tracked` counters are filled with 0, as
    PyTorch's strict load does; returns their keys (empty for a newer checkpoint)."""
    state, filled = fill_batch_counters(model, state)
    target = model.state_dict()
    for key, value in target.items():
        if key not in state:
            raise CheckpointError(f"{path}: first mismatched key {key!r}: missing from the checkpoint")
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"{path}: first mismatched key {key!r}: checkpoint shape {tuple(state[key].shape)}, "
                f"model {tuple(value.shape)}"
            )
    extra = [k for k in state if k not in target]
    if extra:
        raise CheckpointError(
            f"{path}: first mismatched key {extra[0]!r}: not in the model ({len(extra)} extra)"
        )
    model.load_state_dict(state, strict=True)
    return filled


class BGRInput(nn.Module):
    """Feed the model BGR where the pipeline gives RGB: the official SimpleBaseline config reads images
    with OpenCV and does not convert them (COLOR_RGB false), so its zoo model was trained on BGR,
    normalised with the RGB-order statistics. Exact: un-normalise, reverse the channels, normalise."""

    mean: torch.Tensor  # buffers (register_buffer)
    std: torch.Tensor

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x * self.std + self.mean
        heatmaps: torch.Tensor = self.model((pixels.flip(1) - self.mean) / self.std)
        return heatmaps


def pose_config(backbone: str) -> FinetuneConfig:
    """The evaluation settings of the finetunes for `backbone` (256×192, flip test, official thresholds)."""
    return FinetuneConfig(model=ModelConfig(backbone=backbone))


def evaluate_checkpoint(
    checkpoint: str | Path,
    backbone: str,
    coco_root: str | Path,
    out_dir: str | Path,
    *,
    split: str = "val2017",
    detections: str | Path | None = None,
    channel_order: str = "rgb",
    device: str | None = None,
    max_images: int | None = None,
    alg: str | None = None,
) -> dict[str, Any]:
    """Run the whole check; returns {"results_file", "zip_file" (a split without annotations, or None),
    "metrics_file" (or None), "metrics" (or None), "persons", "images", "checkpoint": {entry, prefix},
    "zoo": (file, AP)}. The results file has the evaluation server's name,
    `person_keypoints_<split>_<alg>_results.json` (`alg`: by default the backbone and the checkpoint's
    file name), and for a split without annotations (test-dev2017) its zip, which is what is submitted."""
    from workloads.data.coco import annotation_path, load_detections, load_persons
    from workloads.models import build_model
    from workloads.pose import evaluate as pose_evaluate
    from workloads.pose import inference
    from workloads.pose.testdev import alg_name, image_info_path, load_test_detections, submission_files

    if backbone not in MODEL_ZOO:
        raise CheckpointError(f"--backbone {backbone!r}: unknown; allowed: {', '.join(MODEL_ZOO)}")
    if channel_order not in ("rgb", "bgr"):
        raise CheckpointError(f"--channel-order {channel_order!r}: allowed rgb, bgr")
    cfg = pose_config(backbone)
    alg = alg if alg is not None else alg_name(backbone.replace("_", ""), Path(checkpoint).name.split(".")[0])
    try:
        files = submission_files([], split, alg)  # the name checked before anything runs
    except ValueError as err:
        raise CheckpointError(f"--alg: {err}") from None
    root = Path(coco_root)
    annotated = annotation_path(root, split).is_file()
    if not annotated and not image_info_path(root, split).is_file():
        raise MissingFileError(
            f"split {split!r}: neither {annotation_path(root, split)} nor {image_info_path(root, split)} found"
        )
    if not annotated and detections is None:
        raise CheckpointError(
            f"split {split!r} has no keypoint annotations ({image_info_path(root, split).name} only): "
            "give --detections (HRNet's COCO_test-dev2017_detections_AP_H_609_person.json)"
        )
    loaded = read_checkpoint(checkpoint)
    model = build_model(cfg.model, 17)
    filled = load_strict(model, loaded.state, checkpoint)
    net: nn.Module = BGRInput(model) if channel_order == "bgr" else model
    aspect = cfg.input_hw[1] / cfg.input_hw[0]
    if not annotated:
        assert detections is not None  # a split without annotations needs them (checked above)
        instances, _ = load_test_detections(
            detections, root, split, aspect_ratio=aspect, image_thre=cfg.image_thre
        )
    elif detections is not None:
        instances = load_detections(detections, root, split, aspect_ratio=aspect, image_thre=cfg.image_thre)
    else:
        instances = load_persons(root, split, with_keypoints=True, aspect_ratio=aspect)
    if max_images is not None:
        keep = sorted({i.image_id for i in instances})[:max_images]
        instances = [i for i in instances if i.image_id in set(keep)]
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = net.to(dev)
    results = inference.predict(net, instances, cfg, dev)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = submission_files(results, split, alg)  # {results json: bytes, its zip: bytes}
    results_name, zip_name = list(files)
    (out / results_name).write_bytes(files[results_name])
    if not annotated:  # what the evaluation server takes
        (out / zip_name).write_bytes(files[zip_name])
    summary = {
        "results_file": str(out / results_name),
        "zip_file": None if annotated else str(out / zip_name),
        "metrics_file": None,
        "metrics": None,
        "persons": len(instances),
        "images": len({i.image_id for i in instances}),
        "checkpoint": {
            "file": str(checkpoint),
            "entry": loaded.entry,
            "prefix": loaded.prefix,
            "counters_filled": len(filled),
        },
        "channel_order": channel_order,
        "boxes": "GT boxes" if annotated and detections is None else f"detections {detections}",
        "gt_boxes": annotated and detections is None,
        "split": split,
        "zoo": MODEL_ZOO[backbone],
    }
    if annotated:
        gt = annotation_path(root, split)
        if max_images is not None:
            from workloads.pose.train import write_gt_subset

            gt = write_gt_subset(gt, {i.image_id for i in instances}, out / "gt_subset.json")
        metrics = pose_evaluate.evaluate_keypoints(gt, results)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        summary.update(metrics_file=str(out / "metrics.json"), metrics=metrics)
    return summary
