"""The pose finetune stage (paper §4): initialise, train top-down COCO keypoints, evaluate, select by AP.

Initialisation (paper §4.2-§4.4; `init` is the parent pretrain's config):
- None / `scratch` → the official random init of `build_model` (N(0, 0.001) convs, BN 1/0);
- `imagenet` → the official ImageNet file `init.checkpoint` (`load_imagenet`);
- `hsjp` → the parent stage's best-P weights (`ctx.parent_weights()`) into the backbone; the
  N²-channel `final_layer` is skipped and a fresh 17-channel head keeps its official init.
A load that leaves any backbone tensor at its init (or, for HSJP, brings keys the model lacks) is an
error; the LoadReport is logged and kept as `metrics["load_report"]`.
`freeze: k` freezes block groups 0..k (weights and BN statistics, paper Fig. 5) before the optimiser is
built, so Adam only sees the trainable parameters. `label_fraction` and `data.max_train_instances`
select the training persons (`dataset.select_train_instances`).

The epoch loop, exact resume, checkpoints, eval cadence, best-AP selection and collapse detection
are the shared engine's (`engine.run_epochs`, select_key "AP"; the within-epoch loop
`engine.train_one_epoch`); this module hands it an `engine.Task` (`task_of`): the batch preparation, the train step
and the evaluation (`inference.predict` of each rank's share of the val images, gathered to rank 0
for `evaluate_keypoints`).

Model selection as the official code: the per-epoch evaluations use `selection_boxes` (default the GT
boxes of the val persons with keypoints, HRNet's GT-box mode with score 1, as TEST.USE_GT_BBOX: true
during training); after the last epoch the selected weights are evaluated once with `final_boxes`
(`data.detection_file` unless `cfg.use_gt_boxes` or no file is given) on rank 0 (`final_evaluation`).
That evaluation is the stage's reported AP (`metrics["AP"]`, `eval_boxes`), its per-image outcome and
results; the selection's AP is kept as `select_AP` (`select_boxes`, `ap_history`). It runs after the
engine's loop from the checkpointed best model, so a stage resumed after its last epoch repeats it
exactly. Epochs are 0-based.
"""

from __future__ import annotations

import functools
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from workloads.config import DataConfig, FinetuneConfig, ModelConfig, PretrainConfig, to_dict
from workloads.context import StageContext, StageResult
from workloads.data.coco import PersonInstance, annotation_path, load_detections, load_persons
from workloads.data.device_decode import collate_with_bytes, decode_and_crop, decodes_on_device
from workloads.data.keypoints import NUM_KEYPOINTS
from workloads.data.transforms import normalize_batch
from workloads.engine import (
    EpochSampler,
    LoopSpec,
    Task,
    backward_step,
    check_heatmap_output,
    compile_step,
    forward_heatmaps,
    loss_summary,
    make_loader,
    make_lr_schedule,
    make_optimizer,
    place_model,
    run_epochs,
    unwrap,
    wants_channels_last,
)
from workloads.models import block_group_of, build_model, freeze_block_groups, load_backbone, load_imagenet
from workloads.numerics import numerics_record
from workloads.pose import evaluate as pose_evaluate
from workloads.pose import inference
from workloads.pose.dataset import PoseTrainDataset, load_train_instances
from workloads.pose.loss import joints_mse
from workloads.pose.per_image import PER_IMAGE_FILE, PER_IMAGE_KEY
from workloads.pose.targets import make_heatmaps_batched
from workloads.provenance import provenance

log = logging.getLogger(__name__)

EVAL_BATCH = 64  # inference batch (official TEST.BATCH_SIZE_PER_GPU 32, ×2 with the flip in one pass)
# Architecture fields that must agree between a pretrain and its finetune, per backbone
# (deconv_layers are part of what an HSJP SimpleBaseline hands over: only final_layer is replaced).
ARCH_FIELDS = {
    "hrnet_w32": ("backbone", "width", "num_blocks", "num_modules"),
    "simplebaseline_r50": ("backbone", "resnet_layers", "deconv_channels"),
}


# ------------------------------------------------------------------------------------ initialisation
def init_method(init: PretrainConfig | None) -> str:
    return "scratch" if init is None else init.method


def check_same_backbone(pretrain: ModelConfig, finetune: ModelConfig, method: str) -> None:
    """ValueError naming every architecture field where the pretrain and the finetune differ."""
    fields = ARCH_FIELDS[finetune.backbone] if method == "hsjp" else ("backbone",)
    diff = [
        f"{f}: pretrain {getattr(pretrain, f)!r} vs finetune {getattr(finetune, f)!r}"
        for f in fields
        if getattr(pretrain, f) != getattr(finetune, f)
    ]
    if diff:
        raise ValueError(
            f"init method {method!r}: pretrain.model and finetune.model differ ({'; '.join(diff)}); "
            "the finetune must use the backbone that was pretrained"
        )


def initialise(
    model: nn.Module, cfg: FinetuneConfig, init: PretrainConfig | None, ctx: StageContext
) -> dict[str, Any] | None:
    """Load the initial weights named by `init` into `model`; returns the LoadReport as a dict (None = scratch)."""
    method = init_method(init)
    if method == "scratch" or init is None:  # None is scratch (init_method)
        log.info("init: scratch (official random init)")
        return None
    check_same_backbone(init.model, cfg.model, method)
    if method == "imagenet":
        # PretrainConfig's checks give method imagenet a checkpoint path
        report = load_imagenet(model, cast(str, init.checkpoint), cfg.model.backbone)
    elif method == "hsjp":
        weights = ctx.parent_weights()
        if weights is None:
            raise ValueError(
                "init method 'hsjp': the context has no parent weights (the pretrain stage's best-P "
                "state dict); run the pretrain first or use method 'scratch'"
            )
        report = load_backbone(model, weights)
        if report.unexpected or report.missing:  # same architecture: the key sets must match exactly
            raise ValueError(
                f"init method 'hsjp': the pretrain weights do not match the pose model outside the head: "
                f"{len(report.missing)} missing, e.g. {report.missing[:5]}; {len(report.unexpected)} "
                f"unexpected, e.g. {report.unexpected[:5]}"
            )
    else:
        raise ValueError(f"init method {method!r} is unknown; valid: scratch, imagenet, hsjp")
    left = [k for k in report.missing if block_group_of(model, k) is not None]
    if left:  # ImageNet: the head / deconvolutions may stay at init, no backbone tensor may
        raise ValueError(
            f"init method {method!r}: {len(left)} backbone tensor(s) were not in the checkpoint and "
            f"would stay at their random init, e.g. {left[:5]}"
        )
    log.info(
        "init %s: loaded %d, missing %d %s, unexpected %d, skipped %d %s",
        method,
        len(report.loaded),
        len(report.missing),
        report.missing[:3],
        len(report.unexpected),
        len(report.skipped),
        report.skipped[:3],
    )
    return report.as_dict()


# ---------------------------------------------------------------------------------------- training
@dataclass
class FinetuneRun:
    """The parts of one finetune run that the engine's Task is made of (`task_of`)."""

    cfg: FinetuneConfig
    ctx: StageContext
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loader: DataLoader[Any]
    sampler: EpochSampler
    forward_loss: Callable[..., Any]
    """`make_forward_loss`, compiled when the runtime says so (engine.compile_step)."""


def uses_device_targets(device: torch.device) -> bool:
    """Build the heatmaps on the training device from the batch's joints (CUDA), or per sample in the
    loader workers (CPU, where both give the same targets and the workers run beside the step)."""
    return device.type == "cuda"


def batch_size_of(batch: Any) -> int:
    """Samples in a training batch: a (images, …) tuple or a decode-on-device dict."""
    return len(batch["path"]) if isinstance(batch, dict) else int(batch[0].shape[0])


def prepare_batch(batch: Any, cfg: FinetuneConfig, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The step's tensors on `device` from a loader batch: (images, heatmaps [B, 17, h, w], weights [B, 17]).

    images: uint8 [B, H, W, 3] as the loader ships them (normalised in the step, `network_input`), float
    [B, 3, H, W] normalised, or decoded and cropped here (`decode_on: device`). A batch of joints
    ([B, 17, 2] xy crop px + visible [B, 17], `PoseTrainDataset(device_targets=True)`) gets its
    heatmaps made here, on `device` — the same targets as the per-sample path. Host → device copies are
    of pinned loader memory, non-blocking; nothing here reads a device value on the host (except the
    decode_on: device path: the decoder itself is host-driven)."""
    if isinstance(batch, dict):  # decode_on: device — decode, crop and normalise here
        crops, ok = decode_and_crop(batch, (cfg.input_hw[1], cfg.input_hw[0]), device)
        images = normalize_batch(crops)
        targets = batch["joints"].to(device, non_blocking=True)
        weights = (batch["visible"] * ok.view(-1, 1).to(batch["visible"].dtype)).to(device, non_blocking=True)
    else:
        images, targets, weights = (t.to(device, non_blocking=True) for t in batch)
    if targets.dim() == 3:  # joints: the same targets as the per-sample path, batched on the device
        targets, weights = make_heatmaps_batched(targets, weights, cfg.input_hw, cfg.heatmap_hw, cfg.sigma)
    return images, targets, weights


def make_forward_loss(
    cfg: FinetuneConfig, device: torch.device
) -> Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """fn(model, images, heatmaps, weights) → the official JointsMSE loss (float32): the input normalised
    on the device, the forward under the configured autocast. What `engine.compile_step` compiles."""
    channels_last = wants_channels_last(cfg.runtime, device)

    def forward_loss(
        model: nn.Module, images: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        pred = forward_heatmaps(model, images, cfg.runtime, device, channels_last)
        check_heatmap_output(pred, targets.shape[-2:], "finetune.heatmap_hw", list(cfg.heatmap_hw))
        return joints_mse(pred, targets, weights)  # official JointsMSE with target weights, float32

    return forward_loss


def pose_step(
    model: nn.Module,
    batch: Any,
    optimizer: torch.optim.Optimizer,
    cfg: FinetuneConfig,
    device: torch.device,
    forward_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    prepared: bool = False,
) -> torch.Tensor:
    """One Adam step on a loader batch (`prepare_batch`; `prepared=True`: its result already) — (images,
    heatmaps, weights) or (images, joints, visible) — with `forward_loss` (`make_forward_loss`, maybe
    compiled); returns the loss, still on the device."""
    images, targets, weights = batch if prepared else prepare_batch(batch, cfg, device)
    forward_loss = forward_loss or make_forward_loss(cfg, device)
    return backward_step(optimizer, forward_loss(model, images, targets, weights))


def task_of(run: FinetuneRun, lr_schedule: Any, evaluate: Callable[[], dict[str, Any]]) -> Task:
    """The finetune as the engine runs it: `prepare_batch` (heatmap targets on the device) and
    `pose_step` (JointsMSE, one Adam step)."""
    cfg, device = run.cfg, run.ctx.device
    return Task(
        run.model,
        run.optimizer,
        lr_schedule,
        run.loader,
        run.sampler,
        prepare=functools.partial(prepare_batch, cfg=cfg, device=device),
        train_step=functools.partial(
            pose_step,
            run.model,
            optimizer=run.optimizer,
            cfg=cfg,
            device=device,
            forward_loss=run.forward_loss,
            prepared=True,
        ),
        evaluate=evaluate,
    )


# -------------------------------------------------------------------------------------- evaluation
@dataclass
class ValSet:
    """What one evaluation predicts and scores."""

    instances: list[PersonInstance]
    boxes: str  # "detections" | "gt"
    image_ids: set[int] | None  # images to score when `data.max_val_instances` dropped some; None = all


def selection_boxes(cfg: FinetuneConfig, data: DataConfig) -> str:
    """The boxes of the per-epoch evaluations: `cfg.select_boxes`, GT when there is no detection file."""
    return "detections" if data.detection_file and cfg.select_boxes == "detections" else "gt"


def final_boxes(cfg: FinetuneConfig, data: DataConfig) -> str:
    """The boxes of the reported evaluation: the detection file unless `cfg.use_gt_boxes` or none is given."""
    return "detections" if data.detection_file and not cfg.use_gt_boxes else "gt"


def load_val_instances(cfg: FinetuneConfig, data: DataConfig, boxes: str | None = None) -> ValSet:
    """The val persons to predict with `boxes` ("detections" / "gt"; None = `final_boxes`), capped at
    `data.max_val_instances`."""
    aspect_ratio = cfg.input_hw[1] / cfg.input_hw[0]
    boxes = final_boxes(cfg, data) if boxes is None else boxes
    if boxes not in ("detections", "gt"):
        raise ValueError(f"load_val_instances: boxes = {boxes!r}; valid: 'detections', 'gt'")
    if boxes == "detections":
        if not data.detection_file:
            raise ValueError(
                "load_val_instances: boxes 'detections' needs data.detection_file; none is given"
            )
        instances = load_detections(
            data.detection_file,
            data.coco_root,
            data.val_split,
            aspect_ratio=aspect_ratio,
            image_thre=cfg.image_thre,
        )
        boxes = "detections"
    else:
        instances = load_persons(
            data.coco_root, data.val_split, with_keypoints=True, aspect_ratio=aspect_ratio
        )
        boxes = "gt"
    capped = cap_val_instances(instances, data.max_val_instances)
    image_ids = {inst.image_id for inst in capped} if len(capped) < len(instances) else None
    return ValSet(capped, boxes, image_ids)


def cap_val_instances(instances: list[PersonInstance], max_instances: int | None) -> list[PersonInstance]:
    """Whole images in image-id order while they fit in `max_instances` (at least the first image's
    first `max_instances` persons). Keeping whole images keeps OKS-NMS and the per-image AP exact."""
    if max_instances is None or len(instances) <= max_instances:
        return list(instances)
    by_image: dict[int, list[PersonInstance]] = {}
    for inst in instances:
        by_image.setdefault(inst.image_id, []).append(inst)
    chosen: list[PersonInstance] = []
    for image_id in sorted(by_image):
        group = by_image[image_id]
        if len(chosen) + len(group) > max_instances:
            break
        chosen.extend(group)
    return chosen or by_image[min(by_image)][:max_instances]


def write_gt_subset(gt_json: Path, image_ids: set[int], out_path: Path) -> Path:
    """The ground truth restricted to `image_ids` (a capped evaluation scores only the images it predicted)."""
    gt = json.loads(Path(gt_json).read_text())
    gt["images"] = [img for img in gt["images"] if img["id"] in image_ids]
    gt["annotations"] = [ann for ann in gt["annotations"] if ann["image_id"] in image_ids]
    out_path.write_text(json.dumps(gt))
    return out_path


def shard_by_image(instances: list[PersonInstance], rank: int, world_size: int) -> list[int]:
    """Indices of the instances this rank predicts: whole images (OKS-NMS and the rescoring are per image,
    so a shard's results are final), dealt out largest first to the rank with the fewest boxes so far —
    the same split on every rank, and shares within one image's boxes of each other."""
    if world_size <= 1:
        return list(range(len(instances)))
    by_image: dict[int, list[int]] = {}
    for i, inst in enumerate(instances):
        by_image.setdefault(int(inst.image_id), []).append(i)
    load = [0] * world_size
    mine: list[int] = []
    for image_id in sorted(by_image, key=lambda k: (-len(by_image[k]), k)):
        target = min(range(world_size), key=lambda r: (load[r], r))
        load[target] += len(by_image[image_id])
        if target == rank:
            mine.extend(by_image[image_id])
    return sorted(mine)


def gather_results(results: list[dict[str, Any]], rank: int, world_size: int) -> list[dict[str, Any]] | None:
    """Every rank's results on rank 0 (None on the others); the list itself without DDP."""
    if world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return results
    parts: list[Any] | None = [None] * world_size if rank == 0 else None
    dist.gather_object(results, parts, dst=0)
    if rank != 0:
        return None
    return [r for part in parts or [] for r in part or []]


def evaluate_model(
    model: nn.Module,
    val: ValSet,
    cfg: FinetuneConfig,
    data: DataConfig,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    per_image: bool = True,
) -> dict[str, Any]:
    """AP..., ap_per_oks, errors (and with `per_image` the per-image outcome) of `model` on the val
    persons against the val annotations.

    Sharded over `world_size` ranks (`shard_by_image`): every rank predicts its images, the results are
    gathered to rank 0, which runs COCOeval and returns the metrics; the other ranks return {}."""
    t0 = time.perf_counter()
    mine = shard_by_image(val.instances, rank, world_size)
    results = (
        inference.predict(
            unwrap(model),
            [val.instances[i] for i in mine],
            cfg,
            device,
            batch_size=EVAL_BATCH,
            workers=max(1, data.loader_workers),
        )
        if mine
        else []
    )
    gathered = gather_results(results, rank, world_size)
    if gathered is None:
        return {}
    gt_json = annotation_path(data.coco_root, data.val_split)
    with tempfile.TemporaryDirectory(prefix="hsjp-eval-") as tmp:
        if val.image_ids is not None:
            gt_json = write_gt_subset(gt_json, val.image_ids, Path(tmp) / "gt.json")
        metrics = pose_evaluate.evaluate_keypoints(gt_json, gathered, per_image=per_image)
    metrics.update(
        eval_boxes=val.boxes,
        eval_instances=len(val.instances),
        eval_images=len({inst.image_id for inst in val.instances}),
        eval_ranks=world_size,
        eval_seconds=time.perf_counter() - t0,
    )
    log.info(
        "eval (%s boxes, %d persons): AP %.4f in %.1f s",
        val.boxes,
        len(val.instances),
        metrics["AP"],
        metrics["eval_seconds"],
    )
    return metrics


def final_evaluation(
    model: nn.Module,
    best_state: dict[str, torch.Tensor] | None,
    cfg: FinetuneConfig,
    data: DataConfig,
    device: torch.device,
) -> dict[str, Any]:
    """The reported evaluation: the selected weights `best_state` (loaded into `model`) on the
    `final_boxes` (the detection file), once, on this rank alone (rank 0: it holds the best model).
    Depends only on the checkpointed best model, so a resume repeats it exactly."""
    if best_state is None:
        raise ValueError("final_evaluation: no selected weights (no evaluation chose a best epoch)")
    unwrap(model).load_state_dict(best_state)
    return evaluate_model(model, load_val_instances(cfg, data, final_boxes(cfg, data)), cfg, data, device)


def selection_metrics(best_eval: dict[str, Any]) -> dict[str, Any]:
    """What the result keeps of the best per-epoch (selection) evaluation, beside the reported one."""
    return {
        "select_AP": best_eval.get("AP"),
        "select_boxes": best_eval.get("eval_boxes"),
        "select_instances": best_eval.get("eval_instances"),
        "select_eval_seconds": best_eval.get("eval_seconds"),
    }


# ----------------------------------------------------------------------------------------- the stage
def build_finetune_model(
    cfg: FinetuneConfig, init: PretrainConfig | None, ctx: StageContext
) -> tuple[nn.Module, dict[str, Any] | None, list[str]]:
    """(model with initial weights and frozen block groups, load report, frozen parameter names), not yet wrapped."""
    model = build_model(cfg.model, NUM_KEYPOINTS, generator=torch.Generator().manual_seed(cfg.seed))
    report = initialise(model, cfg, init, ctx)
    frozen = freeze_block_groups(model, cfg.freeze) if cfg.freeze is not None else []
    return model, report, frozen


def run_finetune(
    cfg: FinetuneConfig, data: DataConfig, ctx: StageContext, init: PretrainConfig | None = None
) -> StageResult:
    """Finetune on COCO keypoints (see the module docstring); the result's weights are the best-AP model."""
    device = ctx.device
    torch.manual_seed(cfg.seed)
    model, report, frozen = build_finetune_model(cfg, init, ctx)
    model = place_model(model, cfg.runtime, ctx)
    train_persons, total_persons = load_train_instances(cfg, data)
    decode_here = decodes_on_device(data, device)
    loader, sampler = make_loader(
        PoseTrainDataset(
            train_persons,
            cfg,
            seed=cfg.seed,
            device_targets=decode_here or uses_device_targets(device),
            decode_on_device=decode_here,
        ),
        cfg.batch_size,
        ctx,
        cfg.seed,
        data.loader_workers,
        collate_fn=collate_with_bytes if decode_here else None,
    )
    optimizer = make_optimizer(model, cfg.lr)  # trainable parameters only
    lr_schedule = make_lr_schedule(optimizer, cfg.milestones, cfg.lr_factor)
    run = FinetuneRun(
        cfg,
        ctx,
        model,
        optimizer,
        loader,
        sampler,
        compile_step(make_forward_loss(cfg, device), cfg.runtime, device),
    )
    val: list[ValSet] = []  # built on first use (every rank: each predicts its share)
    select_boxes = selection_boxes(cfg, data)
    separate_final = final_boxes(cfg, data) != select_boxes  # else the selection evaluation is the final one

    def evaluate() -> dict[str, Any]:  # every rank predicts its share; rank 0 scores (the others return {})
        if not val:
            val.append(load_val_instances(cfg, data, select_boxes))
        return evaluate_model(
            model, val[0], cfg, data, device, ctx.rank, ctx.world_size, per_image=not separate_final
        )

    stage_config = {"finetune": to_dict(cfg), "data": to_dict(data), "init": to_dict(init) if init else None}
    spec = LoopSpec(
        epochs=cfg.total_epochs,
        eval_every=cfg.eval_every,
        select_key="AP",
        collapse_loss=cfg.collapse_loss,
        config=stage_config,
    )
    out = run_epochs(ctx, task_of(run, lr_schedule, evaluate), spec)
    best_eval = dict(out.best_eval)
    best_eval.pop(PER_IMAGE_KEY, None)
    metrics: dict[str, Any] = {}
    if out.collapsed:
        if best_eval:
            metrics["before_collapse"] = best_eval
    elif ctx.rank == 0 and best_eval:
        final = (
            final_evaluation(model, out.best_model, cfg, data, device) if separate_final else out.best_eval
        )
        metrics.update(dict(final), **selection_metrics(best_eval))
    per_image = metrics.pop(PER_IMAGE_KEY, None)  # the reported evaluation's
    artifacts: dict[str, bytes] = {}
    if per_image is not None and not out.collapsed:
        artifacts[PER_IMAGE_FILE] = per_image  # the report's bootstrap over images (reports/bootstrap.py)
    metrics.update(
        {
            "best_epoch": out.best_epoch,
            "ap_history": {str(h["epoch"]): h["AP"] for h in out.history if "AP" in h},  # selection AP
            "load_report": report,
            "init_method": init_method(init),
            "frozen_stages": list(range(cfg.freeze + 1)) if cfg.freeze is not None else [],
            "frozen_parameters": len(frozen),
            "train_instances": len(train_persons),
            "train_persons_total": total_persons,
            "label_fraction": cfg.label_fraction,
            **loss_summary(out.history),
        }
    )
    prov = provenance(stage_config, device, ctx.world_size)
    prov["numerics"] = numerics_record(cfg.runtime, device)
    prov["init"] = {
        "method": init_method(init),
        **({k: len(v) for k, v in report.items()} if report is not None else {}),
    }
    return StageResult(
        metrics=metrics,
        weights=None if out.collapsed else out.best_model,
        collapsed=out.collapsed,
        collapsed_epoch=out.collapsed_epoch,
        epochs_trained=list(out.trained),
        provenance=prov,
        artifacts=artifacts,
    )
