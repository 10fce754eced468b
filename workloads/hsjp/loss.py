"""The masked MSE of the pretext, paper §3.3 eq. (2).

Per sample: Σ_i Σ_x Σ_y M_i·(G^i_xy − H^i_xy)² / (N²·56²), then the mean over the batch. A channel whose
patch centre left the image (M_i = 0) contributes nothing to the numerator, but the denominator stays
N²·56² exactly as eq. (2) writes it (it is not renormalised by the number of kept channels). With
`concat_original` the heatmap is 56×112; the denominator is then N²·H·W, the count of terms summed.
"""

from __future__ import annotations

import torch


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """pred, target [B, K, H, W]; mask [B, K] (0/1). Returns the scalar eq. (2), in float32."""
    if pred.shape != target.shape or mask.shape != pred.shape[:2]:
        raise ValueError(
            f"masked_mse: pred {tuple(pred.shape)}, target {tuple(target.shape)} and mask "
            f"{tuple(mask.shape)} must be [B, K, H, W], [B, K, H, W], [B, K]"
        )
    b, k, h, w = pred.shape
    err = (pred.float() - target.float()) ** 2  # [B, K, H, W]
    per_sample = (err.sum(dim=(2, 3)) * mask.float()).sum(dim=1) / (k * h * w)  # [B]
    return per_sample.mean()
