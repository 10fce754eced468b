"""bf16 autocast (the GPU default, `RuntimeConfig(amp="auto")` on CUDA) against fp32, for both workloads'
losses through a narrow model forward and backward on a fixed batch (performance goal P8: check the
bf16 numerics against fp32 before it becomes the default). CPU autocast runs the same bf16 casts.

Measured on this project's CPU (AMD EPYC with avx512_bf16, torch 2.x, 1 thread), batch 4 at 64×64,
final layer N(0, 0.05) so the predictions (std ~0.1-0.3) are of the targets' order as in training:
- relative loss difference |L_bf16 − L_fp32| / L_fp32, seed 0: HRNet pose 3.5e-3, HRNet pretext 1.8e-3,
  SimpleBaseline pose 3.2e-5, SimpleBaseline pretext 1.3e-3; the largest over seeds 0-3 was 3.5e-3.
  Bound asserted: 1e-2 (~3× the largest).
- cosine similarity of the full parameter gradients: 0.90-0.97 over those 16 cases (bf16 backward
  convolutions on a random-init net; the loss itself agrees far better). Bound asserted: > 0.75
  (1 − cos at most 2.5× the measured 0.10).
"""

from __future__ import annotations

import pytest
import torch

from workloads.config import ModelConfig, RuntimeConfig
from workloads.engine import autocast
from workloads.hsjp.loss import masked_mse
from workloads.hsjp.targets import make_heatmaps as make_puzzle_heatmaps
from workloads.models import build_model
from workloads.pose.loss import joints_mse
from workloads.pose.targets import make_heatmaps_batched

MODELS = {
    "hrnet_w32": ModelConfig(width=8, num_blocks=1, num_modules=(1, 1, 1)),
    "simplebaseline_r50": ModelConfig(
        backbone="simplebaseline_r50", resnet_layers=(1, 1, 1, 1), deconv_channels=16
    ),
}
LOSS_RTOL = 1e-2
GRAD_COS_MIN = 0.75
SIDE, HM = 64, 16
CPU = torch.device("cpu")


def _case(backbone: str, task: str, seed: int = 0):
    """(model, images, loss_fn) of one fixed batch."""
    g = torch.Generator().manual_seed(seed)
    channels = 17 if task == "pose" else 9  # pretext: N = 3 → N² channels
    model = build_model(MODELS[backbone], channels, generator=g)
    with torch.no_grad():
        model.final_layer.weight.normal_(0.0, 0.05, generator=g)  # predictions of the targets' order
    model.train()
    images = torch.randn(4, 3, SIDE, SIDE, generator=g)
    if task == "pose":
        joints = torch.rand(4, 17, 2, generator=g) * SIDE
        target, weight = make_heatmaps_batched(
            joints, (torch.rand(4, 17, generator=g) > 0.2).float(), (SIDE, SIDE), (HM, HM), 1.0
        )
        return model, images, lambda pred: joints_mse(pred, target, weight)
    centers = torch.rand(4, channels, 2, generator=g) * SIDE
    mask = (torch.rand(4, channels, generator=g) > 0.2).float()
    target = make_puzzle_heatmaps(centers, mask, (HM, HM), SIDE / HM, 3.0)
    return model, images, lambda pred: masked_mse(pred, target, mask)


def _loss_and_grad(model, images, loss_fn, amp: str):
    model.zero_grad(set_to_none=True)
    with autocast(RuntimeConfig(amp=amp), CPU):
        pred = model(images)
    loss = loss_fn(pred)
    loss.backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return pred.dtype, loss.detach(), grad


@pytest.mark.parametrize("task", ["pose", "pretext"])
@pytest.mark.parametrize("backbone", sorted(MODELS))
def test_bf16_loss_agrees_with_fp32(backbone, task):
    model, images, loss_fn = _case(backbone, task)
    dtype32, loss32, grad32 = _loss_and_grad(model, images, loss_fn, "off")
    dtype16, loss16, grad16 = _loss_and_grad(model, images, loss_fn, "bf16")
    assert dtype32 == torch.float32 and dtype16 == torch.bfloat16  # autocast really ran in bf16
    assert loss16.dtype == torch.float32  # both losses reduce in float32
    assert loss16 != loss32  # ... and it changed the numbers
    rel = float((loss16 - loss32).abs() / loss32)
    assert rel < LOSS_RTOL, f"{backbone} {task}: bf16 loss {loss16:.6g} vs fp32 {loss32:.6g} (rel {rel:.3g})"
    cos = float(torch.nn.functional.cosine_similarity(grad16, grad32, dim=0))
    assert cos > GRAD_COS_MIN, f"{backbone} {task}: gradient cosine {cos:.4f}"
