"""Illustration of one puzzle, like the paper's Fig. 1 (split, shuffle, target heatmaps) and Fig. 2
(a spatially augmented composite and its moved targets).

Panels: (a) the square crop split into N×N patches, indices row-major; (b) the shuffled composite,
each patch labelled with its ORIGINAL index; (c) the composite with the maximum over the N² target
channels overlaid; (d) a spatially augmented composite with its targets (patches whose centre left
the image, M_i = 0, have no peak). The crop is the largest centred square of the image. Rendering
uses matplotlib's Agg canvas directly (no pyplot global state).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from workloads.config import HEATMAP_STRIDE, HSJPAugConfig, PretrainConfig
from workloads.data.coco import PIXEL_STD
from workloads.data.transforms import get_affine_transform, read_image, warp_crop
from workloads.hsjp.augment import SpatialParams, composite_matrix, warp_composite
from workloads.hsjp.dataset import PuzzleSample, build_sample
from workloads.hsjp.puzzle import grid_centers_xy, padded_size
from workloads.hsjp.targets import heatmap_stride, make_heatmaps

log = logging.getLogger(__name__)


def square_crop(image: np.ndarray, side_px: int) -> np.ndarray:
    """The largest centred square of an [H, W, 3] image, resized to side_px² (HRNet affine)."""
    h, w = image.shape[:2]
    size = min(h, w) / PIXEL_STD
    mat = get_affine_transform((w / 2.0, h / 2.0), (size, size), 0.0, (side_px, side_px))
    return warp_crop(image, mat, (side_px, side_px))


def _target_max(sample: PuzzleSample, cfg: PretrainConfig) -> np.ndarray:
    """[hm, hm] max over the N² target channels."""
    hm = make_heatmaps(
        torch.from_numpy(sample.centers_xy),
        torch.from_numpy(sample.mask),
        (cfg.heatmap_size, cfg.heatmap_size),
        heatmap_stride(cfg.input_size, cfg.heatmap_size),
        cfg.sigma,
    )
    return hm.amax(dim=0).numpy()


def _label(ax, centers_xy: np.ndarray, labels, fontsize: float) -> None:
    for (x, y), text in zip(centers_xy, labels):
        ax.text(x, y, str(text), color="yellow", ha="center", va="center", fontsize=fontsize, weight="bold")


def write_puzzle_figure(
    image_path: str | os.PathLike, n: int, out_path: str | os.PathLike, seed: int = 0, input_size: int = 224
) -> Path:
    """Write a PNG of one N×N puzzle of `image_path` (panels in the module docstring); returns its path."""
    cfg = PretrainConfig(
        n=n, input_size=input_size, heatmap_size=max(1, input_size // HEATMAP_STRIDE)
    )  # checks n
    side = padded_size(input_size, n)
    crop = square_crop(read_image(image_path), side)
    rng = np.random.default_rng(seed)
    plain = build_sample(crop, cfg, rng, augment=False)
    spatial_only = dataclasses.replace(
        cfg,
        aug=HSJPAugConfig(
            color_jitter_prob=0.0, distortion_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0
        ),
    )
    augmented = build_sample(crop, spatial_only, rng, augment=True)
    original = warp_composite(crop, composite_matrix(side, input_size, SpatialParams()), input_size)

    fig = Figure(figsize=(16, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    extent = (0, input_size, input_size, 0)
    fontsize = max(5.0, 40.0 / n)
    grid = grid_centers_xy(n, side / n) * input_size / side
    axes[0].imshow(original, extent=extent)
    _label(axes[0], grid, range(n * n), fontsize)
    axes[0].set_title(f"(a) crop split into {n}×{n}")
    axes[1].imshow(plain.image, extent=extent)
    _label(axes[1], plain.centers_xy, range(n * n), fontsize)
    axes[1].set_title("(b) shuffled (original indices)")
    for ax, sample, title in (
        (axes[2], plain, "(c) targets (max of N² channels)"),
        (axes[3], augmented, "(d) spatially augmented + targets"),
    ):
        ax.imshow(sample.image, extent=extent)
        ax.imshow(_target_max(sample, cfg), extent=extent, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
        ax.set_title(title)
    for ax in axes[:3]:  # patch borders (k·P·input/S = k·input/N)
        for k in range(1, n):
            ax.axhline(k * input_size / n, color="white", linewidth=0.5, alpha=0.6)
            ax.axvline(k * input_size / n, color="white", linewidth=0.5, alpha=0.6)
    for ax in axes:
        ax.set_xlim(0, input_size)
        ax.set_ylim(input_size, 0)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    log.info("wrote puzzle figure %s (N=%d, seed %d)", out, n, seed)
    return out
