"""Training augmentations of the pretext (paper §3.2): a spatial affine of the shuffled composite that
moves the patch centres with it, and SimCLR/BYOL-style colour augmentations.

Spatial (paper §3.2, Fig. 2): scale s, rotation θ and translation t drawn UNIFORMLY from the paper's
ranges ([−35 %, 35 %], [−45°, 45°], [−10 %, 10 %] of the input side, per axis; the paper gives ranges,
not distributions), applied about the image centre c: p' = s·R(θ)·(p − c) + c + t, θ > 0 turning
the image counter-clockwise on screen (cv2 / HRNet). The composite is made at the padded side S
(puzzle.py) and mapped to input×input by the same single warp, so the S→input resize costs no
extra resampling. Matrices here are in continuous coordinates (pixel k covers [k, k+1)); cv2 samples
at integer pixel centres, so `to_pixel_index_matrix` converts before warping.

Colour (paper §3.2 "colour adjustments (hue, contrast, brightness, saturation), colour distortion,
optional grayscale conversion, gaussian blur, and solarisation", refs [6, 16, 17]): applied in
SimCLR/BYOL order — jitter (the four adjustments in random order, BYOL strengths), colour distortion
(a random channel permutation), grayscale, Gaussian blur (kernel ≈ 10 % of the side, odd: 23 px at
224 as BYOL), solarisation (threshold 128 of 255, BYOL's 0.5). Brightness / contrast / saturation are
torchvision.transforms.v2's uint8 blends (`blend_uint8`: the same torch operations, so bit-identical,
without importing torchvision, whose package import costs ~2 s of CPU per stage process); hue and blur
use cv2 equivalents, which are 20–70× faster on CPU (measured: TF.adjust_hue 9 ms, TF.gaussian_blur
23×23 31 ms per 228² crop on one thread). They are applied to the person crop
BEFORE it is shuffled (dataset.py): all but the blur act per pixel, so this equals augmenting the
composite, keeps the `concat_original` halves identically coloured, and keeps warp borders black
(0 before normalisation, as HRNet). Every random draw comes from the sample's numpy Generator.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from workloads.config import HSJPAugConfig
from workloads.data.transforms import warp_crop

log = logging.getLogger(__name__)

SOLARIZE_THRESHOLD = 128  # BYOL [17]: solarise pixels >= 0.5 of the range


@dataclass(frozen=True)
class SpatialParams:
    scale: float = 1.0
    """Zoom factor s (1 ± aug.scale)."""
    rotate_deg: float = 0.0
    """Rotation θ in degrees, counter-clockwise on screen."""
    translate_frac: tuple[float, float] = (0.0, 0.0)
    """Shift t as a fraction of the input side, xy."""


def sample_spatial(aug: HSJPAugConfig, rng: np.random.Generator) -> SpatialParams:
    """Uniform draws within the configured ranges; the identity with probability 1 − spatial_prob."""
    if rng.random() >= aug.spatial_prob:
        return SpatialParams()
    scale = 1.0 + rng.uniform(-aug.scale, aug.scale)
    rot = rng.uniform(-aug.rotate_deg, aug.rotate_deg)
    tx, ty = rng.uniform(-aug.translate, aug.translate, size=2)
    return SpatialParams(float(scale), float(rot), (float(tx), float(ty)))


def composite_matrix(src_size: int, out_size: int, params: SpatialParams) -> np.ndarray:
    """[2, 3] continuous-coordinate affine: composite (src_size², the padded side S) → input (out_size²).

    First the resize by out/src, then s·R(θ) about the output centre, then the translation.
    """
    zoom = out_size / src_size
    theta = math.radians(params.rotate_deg)
    cos, sin = math.cos(theta), math.sin(theta)
    # y points down, so this matrix turns the picture counter-clockwise on screen for θ > 0 (cv2 convention)
    lin = params.scale * np.array([[cos, sin], [-sin, cos]]) * zoom
    centre = np.array([out_size / 2.0, out_size / 2.0])
    shift = np.asarray(params.translate_frac, dtype=np.float64) * out_size
    offset = centre + shift - lin @ (np.array([src_size / 2.0, src_size / 2.0]))
    return np.concatenate([lin, offset[:, None]], axis=1)


def to_pixel_index_matrix(mat: np.ndarray) -> np.ndarray:
    """Continuous-coordinate affine → the matrix cv2 expects (pixel centres on integers).

    With u = x + ½: x_out = A·(x_in + ½) + b − ½, i.e. b' = b + A·[½, ½] − ½.
    """
    mat = np.asarray(mat, dtype=np.float64)
    out = mat.copy()
    out[:, 2] = mat[:, 2] + mat[:, :2] @ np.array([0.5, 0.5]) - 0.5
    return out


def warp_composite(composite_hwc: np.ndarray, mat: np.ndarray, out_size: int) -> np.ndarray:
    """Warp the [S, S, 3] composite with the continuous-coordinate `mat` into [out, out, 3] (black outside).
    The identity (S = out, no augmentation) is an exact copy."""
    if composite_hwc.shape[:2] == (out_size, out_size) and np.allclose(mat, np.eye(2, 3), atol=1e-12):
        return composite_hwc.copy()
    return warp_crop(composite_hwc, to_pixel_index_matrix(mat), (out_size, out_size))


def blur_kernel_px(side_px: int) -> int:
    """Odd Gaussian-blur kernel of about 10 % of the image side (BYOL [17]: 23 px at 224), at least 3."""
    k = max(3, int(round(0.1 * side_px)))
    return k if k % 2 else k + 1


@dataclass(frozen=True)
class ColorParams:
    """The colour draws of one sample, made once by `sample_color` and applied either per sample on the
    CPU (`apply_color`) or batched on the training device (batched.color_augment_batch) — the same
    draws, so both paths make the same augmentation up to 8-bit rounding."""

    jitter: tuple[tuple[int, float], ...] = ()
    """(op, value) in the order applied: op 0 brightness / 1 contrast / 2 saturation factor, 3 hue shift."""
    channel_perm: tuple[int, int, int] | None = None
    """Colour distortion: output channel c is input channel channel_perm[c]."""
    grayscale: bool = False
    blur_sigma: float = 0.0
    """Gaussian blur σ in px; 0 = no blur."""
    solarize: bool = False

    def to_vector(self) -> np.ndarray:
        """[COLOR_VECTOR_LEN] float32, the form a DataLoader collates (see COLOR_VECTOR_LEN)."""
        vec = np.zeros(COLOR_VECTOR_LEN, dtype=np.float32)
        vec[:4] = -1
        vec[4:8] = (1.0, 1.0, 1.0, 0.0)
        for slot, (op, value) in enumerate(self.jitter):
            vec[slot] = op
            vec[4 + op] = value
        vec[8:11] = self.channel_perm if self.channel_perm is not None else (0, 1, 2)
        vec[11], vec[12], vec[13] = float(self.grayscale), self.blur_sigma, float(self.solarize)
        return vec


COLOR_VECTOR_LEN = 14
"""ColorParams.to_vector layout: [0:4] jitter ops in order (-1 = none), [4:8] value per op (brightness,
contrast, saturation factors, hue shift), [8:11] channel permutation, [11] grayscale, [12] blur σ,
[13] solarise."""


def sample_color(aug: HSJPAugConfig, rng: np.random.Generator) -> ColorParams:
    """All colour draws of one sample, in a fixed order (see the module docstring for strengths)."""
    jitter: list[tuple[int, float]] = []
    if rng.random() < aug.color_jitter_prob:
        # brightness, contrast, saturation, hue in a random order (torchvision ColorJitter semantics)
        for op in rng.permutation(4):
            if op == 3:
                if aug.hue > 0:
                    jitter.append((3, float(rng.uniform(-aug.hue, aug.hue))))
                continue
            strength = (aug.brightness, aug.contrast, aug.saturation)[op]
            if strength > 0:
                jitter.append((int(op), float(rng.uniform(max(0.0, 1 - strength), 1 + strength))))
    perm = None
    if rng.random() < aug.distortion_prob:
        perm = tuple(int(c) for c in rng.permutation(3))
    gray = bool(rng.random() < aug.grayscale_prob)
    sigma = float(rng.uniform(*aug.blur_sigma)) if rng.random() < aug.blur_prob else 0.0
    solarize = bool(rng.random() < aug.solarize_prob)
    return ColorParams(tuple(jitter), perm, gray, sigma, solarize)  # type: ignore[arg-type]


def apply_color(image_hwc: np.ndarray, params: ColorParams) -> np.ndarray:
    """[H, W, 3] uint8 RGB → [H, W, 3] uint8 with the drawn colour augmentation, per sample on the CPU."""
    img = image_hwc
    for op, value in params.jitter:
        if op == 3:
            img = shift_hue(img, value)
            continue
        img = blend_uint8(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1), op, value)
        img = img.permute(1, 2, 0).numpy()
    if params.channel_perm is not None:
        img = img[:, :, list(params.channel_perm)]
    if params.grayscale:
        img = np.repeat(cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
    if params.blur_sigma > 0:
        sigma, k = params.blur_sigma, blur_kernel_px(max(img.shape[:2]))
        # cv2 instead of TF.gaussian_blur: the same separable kernel and reflect border, ~20× faster on CPU
        img = cv2.GaussianBlur(
            np.ascontiguousarray(img), (k, k), sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101
        )
    if params.solarize:
        img = np.where(img >= SOLARIZE_THRESHOLD, 255 - img, img).astype(np.uint8)
    return np.ascontiguousarray(img)


def blend_uint8(image_chw: torch.Tensor, op: int, factor: float) -> torch.Tensor:
    """Brightness (op 0), contrast (1) or saturation (2) of a [3, H, W] uint8 image, as torchvision.transforms.v2's
    adjust_* do on uint8: factor·image + (1 − factor)·(0 | mean floored grey | floored grey) in float32,
    clamped to [0, 255] and truncated to uint8; grey = 0.2989 R + 0.587 G + 0.114 B."""
    if op == 0:
        other = torch.zeros_like(image_chw)
    else:
        r, g, b = image_chw.unbind(dim=-3)
        grey = r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3).floor_()
        other = grey.mean(dim=(-3, -2, -1), keepdim=True) if op == 1 else grey
    return image_chw.mul(factor).add_(other, alpha=1.0 - factor).clamp_(0, 255).to(torch.uint8)


def shift_hue(image_hwc: np.ndarray, hue_factor: float) -> np.ndarray:
    """Rotate the hue by hue_factor of a full turn (TF.adjust_hue semantics, [-0.5, 0.5]) on 8-bit HSV;
    cv2's HSV_FULL round trip is ~70× faster than TF.adjust_hue on CPU, at 1/256-turn hue resolution."""
    hsv = cv2.cvtColor(np.ascontiguousarray(image_hwc), cv2.COLOR_RGB2HSV_FULL)
    hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int16) + int(round(hue_factor * 256))) % 256
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
