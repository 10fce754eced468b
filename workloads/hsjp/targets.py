"""Targets of the pretext (paper §3.1 eq. 1, §3.3): one unnormalised Gaussian heatmap per original patch,
peaked (value 1) at the patch's shuffled, augmented centre, and the mask M of eq. (2).

Pixel-centre convention (shared with puzzle.py / augment.py / precision.py): continuous xy with pixel
edges on integers in both the input and the heatmap, so input pixel k covers [k, k+1) and heatmap
pixel j covers input [j·s, (j+1)·s) with s = input / heatmap (4 for 224 → 56). A centre at input x lies
at heatmap u = x / s, and heatmap pixel j is evaluated at its centre j + ½. Decoding maps the argmax j
back to input (j + ½)·s (precision.py), so a target decodes to within s/√2 of its true centre and
there is no half-pixel bias.

Eq. (1) is evaluated everywhere (no 3σ window) at heatmap scale with σ_hm = σ / s, σ given in input px.
Heatmaps are built in torch from the centres, so the training loop can make them on the device in one
batched call (a sample carries 2·N² floats instead of N²·56² from the loader).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)


def heatmap_stride(input_size: int, heatmap_size: int) -> float:
    """Input px per heatmap px (paper §3.3: 224 / 56 = 4)."""
    return input_size / heatmap_size


def make_heatmaps(
    centers_xy: torch.Tensor, mask: torch.Tensor, heatmap_hw: tuple[int, int], stride: float, sigma_px: float
) -> torch.Tensor:
    """Gaussian targets of paper eq. (1).

    centers_xy [..., K, 2] input px (xy, continuous); mask [..., K] (1 = in the image, else the channel is
    all zero — it is excluded from the loss anyway); heatmap_hw (H, W); stride input px per heatmap px;
    sigma_px σ in input px. Returns float32 [..., K, H, W] with peak 1 at the centre.
    """
    h, w = heatmap_hw
    centers = centers_xy.to(torch.float32) / stride - 0.5  # [..., K, 2] in heatmap pixel-index units
    sigma = sigma_px / stride
    xs = torch.arange(w, dtype=torch.float32, device=centers.device)
    ys = torch.arange(h, dtype=torch.float32, device=centers.device)
    gx = torch.exp(-((xs - centers[..., 0:1]) ** 2) / (2 * sigma**2))  # [..., K, W]
    gy = torch.exp(-((ys - centers[..., 1:2]) ** 2) / (2 * sigma**2))  # [..., K, H]
    gy = gy * mask.to(gy.dtype)[..., None]
    return gy[..., :, None] * gx[..., None, :]  # [..., K, H, W]


def inside_mask(centers_xy: np.ndarray, width: float, height: float) -> np.ndarray:
    """[K] float32: 1 where the centre lies in the image [0, width) × [0, height), else 0 (paper §3.3, M_i)."""
    c = np.asarray(centers_xy, dtype=np.float64)
    ok = (c[:, 0] >= 0) & (c[:, 0] < width) & (c[:, 1] >= 0) & (c[:, 1] < height)
    return ok.astype(np.float32)
