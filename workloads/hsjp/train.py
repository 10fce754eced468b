"""The HSJP pretext stage (paper §3): build the N²-channel network, train it on shuffled person crops with
the masked MSE of eq. (2) under Adam + MultiStepLR (§3.4), select the epoch with the best HSJP
precision P (§3.5), and hand its weights downstream.

The epoch loop, resume, checkpointing, evaluation cadence, best-model selection and collapse detection
are the shared engine's (`engine.run_epochs`, the within-epoch loop `engine.train_one_epoch`); this module
hands it an `engine.Task` (`task_of`): the batch preparation, the train step and `evaluate`.
Epochs are 0-based (`best_epoch` 9 is the 10th epoch). A run collapses (`collapsed: True`, its
finetunes skipped) as the paper's Table 2 lr 2e-3 run did, when it failed to learn the puzzle at every
evaluation after `cfg.collapse_warmup_epochs` (hsjp/collapse.py: patch accuracy at chance with flat
heatmaps or a loss not falling; ended early after `collapse_patience` such evaluations), or when its
loss goes NaN/Inf or past `cfg.collapse_loss`; `metrics["reason"]` says which.
A divergence before the first evaluation leaves no weights to hand on (`weights=None`). Within an epoch a non-finite running
loss is checked only at the few progress reports (a sync), and ends the epoch early.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sized
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset

from workloads.config import DataConfig, PretrainConfig, to_dict
from workloads.context import StageContext, StageResult
from workloads.data.device_decode import collate_with_bytes, decodes_on_device
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
    wants_channels_last,
)
from workloads.hsjp.batched import batch_images, check_placement, renders_on_device
from workloads.hsjp.collapse import SIGNALS, CollapseRule, PretextCollapse
from workloads.hsjp.dataset import PuzzleDataset, load_instances
from workloads.hsjp.loss import masked_mse
from workloads.hsjp.precision import evaluate_precision
from workloads.hsjp.targets import heatmap_stride, make_heatmaps
from workloads.models import build_model
from workloads.numerics import numerics_record
from workloads.provenance import provenance

log = logging.getLogger(__name__)


@dataclass
class PretextRun:
    """The parts of one pretext run that its batch preparation and its step share (`task_of` makes the
    engine's Task of them)."""

    cfg: PretrainConfig
    ctx: StageContext
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loader: DataLoader[Any]
    sampler: EpochSampler
    heatmap_hw: tuple[int, int]
    stride: float
    forward_loss: Callable[..., Any]
    """`make_forward_loss`, compiled when the runtime says so (engine.compile_step)."""


def heatmap_hw_of(cfg: PretrainConfig) -> tuple[int, int]:
    """(H, W) of the targets: heatmap_size², twice as wide with concat_original."""
    return cfg.heatmap_size, cfg.heatmap_size * (2 if cfg.concat_original else 1)


def prepare_batch(batch: dict[str, Any], run: PretextRun) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, target heatmaps [B, K, H, W], mask [B, K]) on the device from a loader batch: the images
    rendered there with augment_on: device (decoded too with decode_on: device), or the loader's uint8
    images as they are (normalised in the step); the targets of paper eq. (1) made there."""
    cfg, device = run.cfg, run.ctx.device
    images = batch_images(
        batch, cfg, device
    )  # before the mask: a file the device cannot decode zeroes its row
    centers = batch["centers_xy"].to(device, non_blocking=True)  # [B, K, 2] xy input px
    mask = batch["mask"].to(device, non_blocking=True)  # [B, K]
    return images, make_heatmaps(centers, mask, run.heatmap_hw, run.stride, cfg.sigma), mask


def make_forward_loss(
    cfg: PretrainConfig, device: torch.device, heatmap_hw: tuple[int, int]
) -> Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """fn(model, images, target, mask) → the masked MSE of paper eq. (2) (float32), the input normalised /
    laid out on the device, the forward under the configured autocast. What `engine.compile_step` compiles."""
    channels_last = wants_channels_last(cfg.runtime, device)

    def forward_loss(
        model: nn.Module, images: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        pred = forward_heatmaps(model, images, cfg.runtime, device, channels_last)
        check_heatmap_output(pred, heatmap_hw, "pretrain.heatmap_size", cfg.heatmap_size)
        return masked_mse(pred, target, mask)  # paper eq. (2), float32

    return forward_loss


def pretext_step(run: PretextRun, tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """One Adam step on prepared (images, targets, mask) (`prepare_batch`); returns the loss, still on
    the device."""
    return backward_step(run.optimizer, run.forward_loss(run.model, *tensors))


def task_of(run: PretextRun, lr_schedule: Any, evaluate: Callable[[], dict[str, Any]]) -> Task:
    """The pretext as the engine runs it: `prepare_batch` (eq. 1 targets) and `pretext_step` (eq. 2)."""
    return Task(
        run.model,
        run.optimizer,
        lr_schedule,
        run.loader,
        run.sampler,
        prepare=functools.partial(prepare_batch, run=run),
        train_step=functools.partial(pretext_step, run),
        evaluate=evaluate,
    )


def combine_precision(
    local: dict[str, Any], patches: int, world_size: int, device: torch.device
) -> dict[str, Any]:
    """P, patch accuracy, heatmap contrast and puzzle count over every rank's share (`evaluate_precision`
    of each) — the solved / located counts and the contrast sums added, so each is over all validation
    puzzles, as on one rank."""
    if world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return local
    n = float(local["puzzles"])
    counts = torch.tensor(
        [
            round(local["precision"] * n),
            round(local["patch_accuracy"] * n * patches),
            local.get("heatmap_contrast", 0.0) * n,
            n,
        ],
        dtype=torch.float64,
        device=device,
    )
    dist.all_reduce(counts)
    solved, located, contrast, total = (float(v) for v in counts.cpu())
    if total == 0:
        raise ValueError("pretext evaluation: no validation puzzles on any rank (empty validation set)")
    return {
        "precision": solved / total,
        "patch_accuracy": located / (total * patches),
        "heatmap_contrast": contrast / total,
        "puzzles": int(total),
    }


def run_pretrain(cfg: PretrainConfig, data: DataConfig, ctx: StageContext) -> StageResult:
    """Train the HSJP pretext (see the module docstring); the result's weights are the best-P model."""
    if cfg.method != "hsjp":
        raise ValueError(
            f"run_pretrain: pretrain.method = {cfg.method!r} has no work to run; only 'hsjp' trains"
        )
    device = ctx.device
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.n * cfg.n, generator=torch.Generator().manual_seed(cfg.seed))
    model = place_model(model, cfg.runtime, ctx)
    check_placement(cfg, data, device)
    decode_here = decodes_on_device(data, device)
    train_set = PuzzleDataset(
        load_instances(data, train=True, seed=cfg.seed),
        cfg,
        train=True,
        seed=cfg.seed,
        render_on_device=renders_on_device(cfg, device, data),
        decode_on_device=decode_here,
    )
    log.info(
        "pretext training data: decoded on the %s, puzzles made on the %s",
        "device" if decode_here else "loader",
        "device" if train_set.render_on_device else "loader",
    )
    loader, sampler = make_loader(
        train_set,
        cfg.batch_size,
        ctx,
        cfg.seed,
        data.loader_workers,
        collate_fn=collate_with_bytes if decode_here else None,
    )
    optimizer = make_optimizer(model, cfg.lr)
    lr_schedule = make_lr_schedule(optimizer, cfg.milestones, cfg.lr_factor)
    stride = heatmap_stride(cfg.input_size, cfg.heatmap_size)
    hw = heatmap_hw_of(cfg)
    forward_loss = compile_step(make_forward_loss(cfg, device, hw), cfg.runtime, device)
    run = PretextRun(cfg, ctx, model, optimizer, loader, sampler, hw, stride, forward_loss)
    val_loader: list[DataLoader[Any]] = []  # built on first use (every rank: its share)

    def evaluate() -> dict[str, Any]:  # every rank scores its share of the puzzles; the counts are summed
        if not val_loader:
            val_set = PuzzleDataset(load_instances(data, train=False, seed=cfg.seed), cfg, train=False)
            share = Subset(val_set, range(ctx.rank, len(val_set), ctx.world_size))  # no padding: exact P
            val_loader.append(
                DataLoader(
                    share,
                    batch_size=cfg.batch_size,
                    shuffle=False,
                    num_workers=data.loader_workers,
                    pin_memory=device.type == "cuda",
                )
            )
        local = (
            evaluate_precision(model, val_loader[0], stride, cfg.eps, device, cfg.runtime)
            if len(cast(Sized, val_loader[0].dataset))  # a Subset: torch's Dataset declares no __len__
            else {"precision": 0.0, "patch_accuracy": 0.0, "heatmap_contrast": 0.0, "puzzles": 0}
        )
        result = combine_precision(local, cfg.n * cfg.n, ctx.world_size, device)
        return result if ctx.rank == 0 else {}

    spec = LoopSpec(
        epochs=cfg.epochs,
        eval_every=cfg.eval_every,
        select_key="precision",
        collapse_loss=cfg.collapse_loss,
        config=to_dict(cfg),
        collapse_check=PretextCollapse(CollapseRule.of(cfg), ctx.rank, ctx.world_size, device),
        history_keys=SIGNALS,
    )
    out = run_epochs(ctx, task_of(run, lr_schedule, evaluate), spec)
    metrics = {
        "precision": out.best_value,
        "best_epoch": out.best_epoch,
        "precision_history": {str(h["epoch"]): h["precision"] for h in out.history if "precision" in h},
        "patch_accuracy": out.best_eval.get("patch_accuracy"),
        "heatmap_contrast": out.best_eval.get("heatmap_contrast"),
        "val_puzzles": out.best_eval.get("puzzles"),
        **loss_summary(out.history),
    }
    if out.collapsed:
        metrics["reason"] = out.collapse_reason
    return StageResult(
        metrics=metrics,
        weights=out.best_model,
        collapsed=out.collapsed,
        collapsed_epoch=out.collapsed_epoch,
        epochs_trained=list(out.trained),
        provenance={
            **provenance({"pretrain": to_dict(cfg), "data": to_dict(data)}, device, ctx.world_size),
            "numerics": numerics_record(cfg.runtime, device),
        },
    )
