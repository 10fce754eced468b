"""Flip test: bring the heatmaps of the mirrored crop back to the original frame (paper §4.1).

Official HRNet (lib/utils/transforms.py:flip_back, lib/core/function.py:validate): mirror the
heatmap width, swap the COCO left/right channels, and with TEST.SHIFT_HEATMAP move the result one
column to the right (`out[..., 1:] = out[..., :-1]`, column 0 keeps its value). The shift makes up for
the mirror axis of the input (x' = W_in - 1 - x) not mapping onto the heatmap's own mirror axis at
stride 4; without it AP drops by ~2 points (reported to the official HRNet repository, its GitHub
issue number 22).
"""

from __future__ import annotations

import numpy as np
import torch

from workloads.data.keypoints import FLIP_INDEX


def flip_back(heatmaps: torch.Tensor, flip_index=FLIP_INDEX) -> torch.Tensor:
    """[B, K, H, W] heatmaps of horizontally flipped crops → the original frame (no shift).

    `flip_index[k]` is joint k's left/right counterpart (COCO FLIP_PAIRS; nose to itself).
    """
    index = torch.tensor(np.asarray(flip_index), dtype=torch.long, device=heatmaps.device)
    return heatmaps.flip(3).index_select(1, index)


def shift_right(heatmaps: torch.Tensor) -> torch.Tensor:
    """[B, K, H, W] → copy moved one column right; column 0 keeps its value (HRNet SHIFT_HEATMAP)."""
    shifted = heatmaps.clone()
    shifted[..., 1:] = heatmaps[..., :-1]
    return shifted


def merge_flipped(heatmaps: torch.Tensor, flipped: torch.Tensor, shift: bool = True) -> torch.Tensor:
    """0.5 · (heatmaps + flip_back(flipped)), the flipped part shifted first when `shift` (official)."""
    back = flip_back(flipped)
    if shift:
        back = shift_right(back)
    return 0.5 * (heatmaps + back)
