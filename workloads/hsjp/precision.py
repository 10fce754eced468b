"""HSJP precision P (paper §3.5, eqs. 3–5): the share of validation puzzles solved completely.

Patch i is located when its predicted peak p̂_i (argmax of channel i, mapped back to input px with the
pixel-centre convention of targets.py: heatmap pixel j → input (j + ½)·s) lies strictly within ε of its
true centre p_i (eq. 3); a puzzle is solved when all N² patches are (eq. 4); P = T / (T + F) (eq. 5).
No threshold is put on the peak value (the paper names none): a flat channel decodes to its first pixel.
Beside P and the patch accuracy, the evaluation gives the heatmap contrast: the mean over puzzles and
channels of (max − mean) of each predicted heatmap, in units of the target peak (1). It is not in the
paper; the collapse rule (collapse.py) reads it to tell flat heatmaps (a failure to learn) from a hard
puzzle that is being learnt.
The validation puzzles carry no augmentation and a fixed shuffle per instance (dataset.py), so P is
comparable between runs. Evaluation runs on rank 0 only, on the unwrapped model in eval mode.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.utils.data import DataLoader

from workloads.config import RuntimeConfig
from workloads.data.transforms import network_input
from workloads.engine import unwrap, wants_channels_last
from workloads.models import eval_mode

log = logging.getLogger(__name__)


def decode_peaks(heatmaps: torch.Tensor, stride: float) -> torch.Tensor:
    """[B, K, H, W] → [B, K, 2] xy input px of each channel's argmax (pixel centre, (j + ½)·stride)."""
    b, k, h, w = heatmaps.shape
    idx = heatmaps.reshape(b, k, h * w).argmax(dim=-1)  # [B, K]
    xy = torch.stack([idx % w, torch.div(idx, w, rounding_mode="floor")], dim=-1)
    return (xy.to(torch.float32) + 0.5) * stride


def heatmap_contrast(heatmaps: torch.Tensor) -> torch.Tensor:
    """[B, K, H, W] → [B]: the mean over channels of (max − mean) of each heatmap (0 for a flat one)."""
    flat = heatmaps.flatten(2)
    return (flat.amax(dim=-1) - flat.mean(dim=-1)).mean(dim=-1)


def located_patches(pred_xy: torch.Tensor, true_xy: torch.Tensor, eps_px: float) -> torch.Tensor:
    """[B, K] bool: ‖p̂_i − p_i‖₂ < ε (paper eq. 3)."""
    return torch.linalg.vector_norm(pred_xy.float() - true_xy.float(), dim=-1) < eps_px


def solved_puzzles(pred_xy: torch.Tensor, true_xy: torch.Tensor, eps_px: float) -> torch.Tensor:
    """[B] bool: every patch of the puzzle located (paper eq. 4)."""
    return located_patches(pred_xy, true_xy, eps_px).all(dim=-1)


def precision_of(solved: torch.Tensor) -> float:
    """P = T / (T + F) (paper eq. 5) of a [num_puzzles] bool tensor."""
    if solved.numel() == 0:
        raise ValueError("precision_of: no puzzles to score (empty validation set)")
    return int(solved.sum()) / solved.numel()


@torch.no_grad()
def evaluate_precision(
    model: nn.Module,
    loader: DataLoader,
    stride: float,
    eps_px: float,
    device: torch.device,
    runtime: RuntimeConfig,
) -> dict:
    """P over every batch of `loader` (items: image [H, W, 3] uint8 or [3, H, W] normalised, centers_xy
    [K, 2], mask [K]); the images are normalised on `device`.

    Returns {"precision": P, "patch_accuracy": share of located patches, "heatmap_contrast": mean
    (max − mean) of the predicted channels, "puzzles": count}.
    The model is put back in its previous train/eval mode afterwards.
    """
    solved, located = [], []
    contrast = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device, read once
    channels_last = wants_channels_last(runtime, device)
    with eval_mode(unwrap(model)) as net:
        for batch in loader:
            images = network_input(batch["image"].to(device, non_blocking=True), channels_last)
            heatmaps = net(images)  # fp32 whatever runtime.amp trained in: P is a reported number
            contrast += heatmap_contrast(heatmaps.float()).double().sum()
            pred = decode_peaks(heatmaps.float(), stride)
            true = batch["centers_xy"].to(device)
            located.append(located_patches(pred, true, eps_px).cpu())  # eq. 3
            solved.append(solved_puzzles(pred, true, eps_px).cpu())  # eq. 4
    solved_t = torch.cat(solved)
    return {
        "precision": precision_of(solved_t),
        "patch_accuracy": float(torch.cat(located).float().mean()),
        "heatmap_contrast": float(contrast) / solved_t.numel(),
        "puzzles": int(solved_t.numel()),
    }
