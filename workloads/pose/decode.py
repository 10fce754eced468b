"""Heatmaps → keypoint coordinates in the image (paper §4.1, official HRNet post-processing).

HRNet lib/core/inference.py: `get_max_preds` takes the arg-max of each heatmap (x = idx % W,
y = idx // W, zeroed where the peak ≤ 0) and `get_final_preds` (TEST.POST_PROCESS) moves it a
quarter pixel towards the higher neighbour on each axis when the peak is not on the border
(1 < x < W-1 and 1 < y < H-1), then maps heatmap xy to image xy with the inverse of the crop's affine
built for the heatmap size (transform_preds, rotation 0). The score of a joint is its peak value.
Decoding runs in torch on the heatmaps' device; the affine runs in numpy per instance.
"""

from __future__ import annotations

import numpy as np
import torch

from workloads.data.transforms import affine_points, get_affine_transform


def get_max_preds(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer arg-max of [B, K, H, W] heatmaps → (xy [B, K, 2] float heatmap px, maxvals [B, K])."""
    if heatmaps.ndim != 4:
        raise ValueError(f"get_max_preds expects [B, K, H, W] heatmaps, got shape {tuple(heatmaps.shape)}")
    width = heatmaps.shape[3]
    flat = heatmaps.flatten(2)  # [B, K, H*W]
    idx = flat.argmax(dim=2)  # [B, K]; the first maximum on ties, as np.argmax
    maxvals = flat.gather(2, idx.unsqueeze(-1)).squeeze(-1)
    coords = torch.stack([idx % width, torch.div(idx, width, rounding_mode="floor")], dim=-1).float()
    return coords * (maxvals > 0).unsqueeze(-1).float(), maxvals


def refine_quarter_offset(heatmaps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Move integer xy [B, K, 2] by 0.25 · sign of the neighbour difference on each axis (HRNet).

    Applied only where 1 < x < W-1 and 1 < y < H-1 (the official bounds, on floor(x + 0.5)).
    """
    height, width = heatmaps.shape[2:]
    px = torch.floor(coords[..., 0] + 0.5).long()  # [B, K]
    py = torch.floor(coords[..., 1] + 0.5).long()
    inner = (px > 1) & (px < width - 1) & (py > 1) & (py < height - 1)
    flat = heatmaps.float().flatten(2)  # [B, K, H*W]

    def at(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        index = y.clamp(0, height - 1) * width + x.clamp(0, width - 1)
        return flat.gather(2, index.unsqueeze(-1)).squeeze(-1)

    dx = torch.sign(at(px + 1, py) - at(px - 1, py))
    dy = torch.sign(at(px, py + 1) - at(px, py - 1))
    offset = 0.25 * torch.stack([dx, dy], dim=-1) * inner.unsqueeze(-1).float()
    return coords + offset


def decode_heatmaps(heatmaps: torch.Tensor, refine: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """[B, K, H, W] → (xy [B, K, 2] heatmap px, maxvals [B, K]) as float64 numpy on the CPU."""
    heatmaps = heatmaps.float()
    coords, maxvals = get_max_preds(heatmaps)
    if refine:
        coords = refine_quarter_offset(heatmaps, coords)
    return coords.cpu().double().numpy(), maxvals.cpu().double().numpy()


def heatmap_to_image(coords_xy: np.ndarray, center_xy, scale_wh, heatmap_wh) -> np.ndarray:
    """[K, 2] heatmap xy → [K, 2] image xy through the inverse crop affine (HRNet transform_preds)."""
    inverse = get_affine_transform(center_xy, scale_wh, 0.0, heatmap_wh, inv=True)
    return affine_points(coords_xy, inverse)
