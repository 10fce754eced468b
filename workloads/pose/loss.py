"""JointsMSE loss with target weights (paper §4.2; official `JointsMSELoss(use_target_weight=True)`).

Official definition: for each joint j, 0.5 · MSE_mean(pred_j · w_j, gt_j · w_j) over batch × pixels,
summed over joints and divided by K. That equals 0.5 · mean over (batch, joint, pixel) of
(w_bj · (pred − gt))², which is what is computed here in one pass (in float32, also under bf16
autocast). Source: `deep-high-resolution-net.pytorch:lib/core/loss.py` (docs/pose-reference.md §3).
"""

from __future__ import annotations

import torch

JOINTS_MSE_FACTOR = 0.5  # official JointsMSELoss: 0.5 · MSE per joint (lib/core/loss.py)


def joints_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """0.5 · mean((w · (pred − target))²).

    pred, target: [B, K, H, W] heatmaps; weight: [B, K] (or [B, K, 1]) target weights (0 = ignored joint).
    Returns a float32 scalar.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"joints_mse: prediction shape {tuple(pred.shape)} != target shape "
            f"{tuple(target.shape)} (expected [B, K, H, W] for both)"
        )
    b, k = pred.shape[:2]
    w = weight.reshape(b, k, 1, 1).float()
    diff = (pred.float() - target.float()) * w
    return JOINTS_MSE_FACTOR * diff.pow(2).mean()
