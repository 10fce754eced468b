"""Keypoint heatmap targets and target weights for top-down pose training (paper §4.2).

Reproduces the official HRNet/SimpleBaseline `generate_target` (TARGET_TYPE gaussian) exactly,
vectorised over joints (a separable Gaussian: one row and one column profile per joint, then one
outer product; no per-joint Python loop). Measured on this project's CPU at 256×192 / 64×48 it costs
about as much as the official loop (~0.15-0.3 ms per person, numpy call overhead), a few % of a
training sample; JPEG decoding (~5 ms) is the CPU cost that matters. The rules:

- the joint (input px, `xy`) is mapped to the heatmap by the feature stride input/heatmap and
  rounded as the official code does: μ = int(joint / stride + 0.5) (int() truncates toward zero);
- an unnormalised Gaussian (peak 1) of σ heatmap px is drawn on a (6σ+1)-px square patch centred
  on μ, clipped at the map border;
- the target weight is the joint's visibility (0/1), set to 0 when the whole patch lies outside
  the map (ul ≥ size or br < 0); a joint just outside the crop keeps weight 1 and a partial
  Gaussian (official quirk kept: with br == 0 the weight stays 1 although nothing is drawn, so
  the joint is trained towards an empty map). Nothing is drawn where the weight is 0.

`make_heatmaps_batched` is the same computation for a batch in torch, so the training loop can build
the targets on the GPU from the joints (a sample then carries 17×3 numbers instead of 17×64×48).

Source: `deep-high-resolution-net.pytorch:lib/dataset/JointsDataset.py:generate_target`
(see docs/pose-reference.md §3).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from workloads.hostsync import constant


def make_heatmaps(
    joints_xy: np.ndarray,
    visible: np.ndarray,
    input_hw: tuple[int, int],
    heatmap_hw: tuple[int, int],
    sigma: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian heatmaps and target weights of one person.

    joints_xy: [K, 2] joint positions in input (crop) px, `xy`.
    visible:   [K] visibility; > 0 means labelled (official joints_vis, 0/1).
    input_hw, heatmap_hw: (height, width) of the network input and of the heatmaps.
    sigma: Gaussian σ in heatmap px (HRNet config: 2 at 64×48).
    Returns heatmaps [K, H, W] float32 (peak 1 at μ) and weights [K] float32 (0/1).
    """
    joints_xy = np.asarray(joints_xy, dtype=np.float64).reshape(-1, 2)
    k = joints_xy.shape[0]
    hm_h, hm_w = int(heatmap_hw[0]), int(heatmap_hw[1])
    size_xy = np.array([hm_w, hm_h])
    stride_xy = np.array([input_hw[1], input_hw[0]]) / size_xy  # official feat_stride, [2] xy
    radius = sigma * 3  # official tmp_size: the patch spans ±3σ
    mu = np.trunc(joints_xy / stride_xy + 0.5)  # [K, 2] xy, official int(x + 0.5) (toward zero)
    ul = np.trunc(mu - radius)  # [K, 2] upper-left corner of the patch (inclusive)
    br = np.trunc(mu + radius + 1)  # [K, 2] bottom-right corner (exclusive)
    outside = ((ul >= size_xy) | (br < 0)).any(axis=1)  # the whole patch is off the map
    weights = np.where(outside, 0.0, np.clip(np.asarray(visible, dtype=np.float64).reshape(k), 0.0, 1.0))

    # exp(−(dx² + dy²)/2σ²) = exp(−dx²/2σ²) · exp(−dy²/2σ²): per joint, a column profile times a row
    # profile, each zero outside [ul, br) ∩ the patch (ceil(6σ+1) samples, official np.arange(0, size)).
    size = 2 * radius + 1
    pos = np.arange(max(hm_h, hm_w), dtype=np.float64)  # [L]
    offset = pos - ul[:, :, None]  # [K, 2, L] index into the patch
    inside = (offset >= 0) & (offset < math.ceil(size)) & (pos < br[:, :, None])
    profile = np.exp(-((offset - size // 2) ** 2) / (2 * sigma**2)) * inside  # [K, 2, L]; peak at size // 2
    profile[:, 1] *= (weights > 0.5)[:, None]  # official: a target is drawn only where weight > 0.5
    profile = profile.astype(np.float32)
    heatmaps = np.empty((k, hm_h, hm_w), dtype=np.float32)  # [K, H, W]
    np.multiply(profile[:, 1, :hm_h, None], profile[:, 0, None, :hm_w], out=heatmaps)
    return heatmaps, weights.astype(np.float32)


def make_heatmaps_batched(
    joints_xy: torch.Tensor | np.ndarray,
    visible: torch.Tensor | np.ndarray,
    input_hw: tuple[int, int],
    heatmap_hw: tuple[int, int],
    sigma: float,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`make_heatmaps` for a whole batch in torch, on `device` (the training loop's GPU).

    joints_xy: [B, K, 2] joint positions in input (crop) px, `xy`; visible: [B, K] (> 0 = labelled).
    device: where to compute; None → the device of `joints_xy` (CPU for numpy input).
    Returns heatmaps [B, K, H, W] float32 and weights [B, K] float32, equal to `make_heatmaps` of each
    sample: the rounding, patch bounds and profiles are computed in float64 as there (so μ = int(x/s + 0.5)
    truncates identically at .5 boundaries), and only the outer product is float32.
    """
    joints = torch.as_tensor(joints_xy, device=device).to(torch.float64)  # [B, K, 2] xy
    if joints.dim() != 3 or joints.shape[-1] != 2:
        raise ValueError(f"make_heatmaps_batched: joints_xy must be [B, K, 2] xy, got {tuple(joints.shape)}")
    dev = joints.device
    vis = torch.as_tensor(visible, device=dev).to(torch.float64).reshape(joints.shape[:2])  # [B, K]
    hm_h, hm_w = int(heatmap_hw[0]), int(heatmap_hw[1])
    size_xy = constant((hm_w, hm_h), torch.float64, dev)  # made once per device: no host copy per step
    stride_xy = constant((input_hw[1] / hm_w, input_hw[0] / hm_h), torch.float64, dev)
    radius = sigma * 3  # official tmp_size
    mu = torch.trunc(joints / stride_xy + 0.5)  # [B, K, 2], official int(x + 0.5)
    ul = torch.trunc(mu - radius)
    br = torch.trunc(mu + radius + 1)
    outside = ((ul >= size_xy) | (br < 0)).any(dim=-1)  # [B, K]
    weights = torch.where(outside, torch.zeros_like(vis), vis.clamp(0.0, 1.0))

    size = 2 * radius + 1
    pos = torch.arange(max(hm_h, hm_w), dtype=torch.float64, device=dev)  # [L]
    offset = pos - ul[..., None]  # [B, K, 2, L]
    inside = (offset >= 0) & (offset < math.ceil(size)) & (pos < br[..., None])
    profile = torch.exp(-((offset - size // 2) ** 2) / (2 * sigma**2)) * inside  # [B, K, 2, L]
    profile[:, :, 1] *= (weights > 0.5)[..., None]  # drawn only where weight > 0.5
    profile = profile.to(torch.float32)
    heatmaps = profile[:, :, 1, :hm_h, None] * profile[:, :, 0, None, :hm_w]  # [B, K, H, W]
    return heatmaps, weights.to(torch.float32)
