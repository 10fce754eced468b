"""Pose backbones (paper §4.1): registry, named stages for freezing, and weight loading.

`MODELS` maps each `ModelConfig.backbone` string to its builder; `build_model` is the one entry
point. Both networks output heatmaps at input/4 with any channel count (N² for the HSJP pretext,
17 for COCO keypoints); `HEAD_PREFIXES` names the task head replaced between the two.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from workloads.config import ModelConfig
from workloads.models.freezing import GroupedBackbone, block_group_names, block_group_of, freeze_block_groups
from workloads.models.hrnet import PoseHRNet
from workloads.models.loading import (
    HEAD_PREFIXES,
    LoadReport,
    load_backbone,
    load_imagenet,
    load_state_file,
)
from workloads.models.simplebaseline import PoseResNet

__all__ = [
    "HEAD_PREFIXES",
    "MODELS",
    "LoadReport",
    "PoseHRNet",
    "PoseResNet",
    "GroupedBackbone",
    "build_model",
    "eval_mode",
    "freeze_block_groups",
    "load_backbone",
    "load_imagenet",
    "load_state_file",
    "block_group_names",
    "block_group_of",
]


def build_hrnet(cfg: ModelConfig, out_channels: int, generator: torch.Generator | None = None) -> PoseHRNet:
    return PoseHRNet(out_channels, cfg.width, cfg.num_blocks, tuple(cfg.num_modules), generator)


def build_simplebaseline(
    cfg: ModelConfig, out_channels: int, generator: torch.Generator | None = None
) -> PoseResNet:
    return PoseResNet(out_channels, tuple(cfg.resnet_layers), cfg.deconv_channels, generator)


MODELS: dict[str, Callable[..., GroupedBackbone]] = {
    "hrnet_w32": build_hrnet,
    "simplebaseline_r50": build_simplebaseline,
}


def build_model(
    cfg: ModelConfig, out_channels: int, *, generator: torch.Generator | None = None
) -> nn.Module:
    """The backbone `cfg.backbone` with a `out_channels`-channel 1×1 head, official init.

    `generator` seeds the N(0, 0.001) init; None uses torch's global RNG.
    """
    if cfg.backbone not in MODELS:
        raise ValueError(f"model.backbone={cfg.backbone!r} is unknown; valid: {', '.join(sorted(MODELS))}")
    if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 1:
        raise ValueError(f"out_channels={out_channels!r} must be a positive int")
    return MODELS[cfg.backbone](cfg, out_channels, generator)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode inside the block, put back in its previous train/eval mode afterwards (also
    when the block raises), so an evaluation in the middle of training leaves it as it found it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
