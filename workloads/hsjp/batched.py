"""Training puzzles rendered in batches on the training device (`pretrain.augment_on: device`).

The loader workers then only decode the image, cut the padded S×S person crop (with `data.decode_on:
device` not even that: data/device_decode.py) and make the draws (`dataset.draw_puzzle`: shuffle,
colour, spatial — the same draws as the per-sample path, from the same per-sample RNG). They ship the uint8 crop (a quarter of the bytes of a float input) and the draws; the
device does, for the whole batch at once and in the same order as `dataset.render_sample`:
colour augmentation of the crop → patch shuffle → one bilinear warp (black outside) → the unshuffled
original on the left with concat_original → /255 and ImageNet normalisation.

Colour operations follow `augment.apply_color` in float (0–255 scale) instead of uint8: brightness,
contrast and saturation are torchvision's blends (grayscale weights 0.2989/0.587/0.114, contrast about
the per-image mean grey), hue is an HSV hue rotation, grayscale uses OpenCV's 0.299/0.587/0.114, the blur
is the same separable Gaussian (kernel `blur_kernel_px(S)`, reflect-101 border), solarisation flips
values ≥ 128. Differences to the per-sample path are the per-operation 8-bit rounding there (torchvision
truncates after each blend, OpenCV's hue runs on 8-bit HSV) — the geometry (perm, warp, centres, mask)
is the same draw, so targets are identical. tests/workloads/hsjp/test_batched.py measures the pixel
difference and asserts the tolerance.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from workloads.config import ConfigError, DataConfig, PretrainConfig
from workloads.data.device_decode import BYTES_KEY, decode_and_crop, decodes_on_device
from workloads.data.transforms import normalize_batch, warp_affine_batch
from workloads.hostsync import constant
from workloads.hsjp.augment import SOLARIZE_THRESHOLD, SpatialParams, blur_kernel_px, composite_matrix
from workloads.hsjp.puzzle import padded_size

log = logging.getLogger(__name__)

_TV_GRAY = (0.2989, 0.587, 0.114)  # torchvision rgb_to_grayscale weights (contrast / saturation blends)
_CV_GRAY = (0.299, 0.587, 0.114)  # OpenCV COLOR_RGB2GRAY weights (the grayscale augmentation)


def _gray(x: torch.Tensor, weights: tuple[float, float, float]) -> torch.Tensor:
    """[B, 3, H, W] → [B, 1, H, W] weighted sum of the channels."""
    return (x * constant(weights, x.dtype, x.device).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)


def shift_hue_batch(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] RGB in [0, 255] with the hue turned by shift[b] of a full turn (HSV hexcone model)."""
    r, g, b = x.unbind(dim=1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(
        maxc == r,
        ((g - b) / safe) % 6,
        torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4),
    )
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue))
    h6 = ((hue + shift.view(-1, 1, 1)) % 1.0) * 6  # hue in sixths of a turn
    # back to RGB: V − V·S·clamp(min(k, 4 − k), 0, 1) with V·S = max − min, k = (n + 6·hue) mod 6, n = 5/3/1 = R/G/B
    out = []
    for n in (5, 3, 1):
        k = (n + h6) % 6
        out.append(maxc - delta * torch.clamp(torch.minimum(k, 4 - k), 0, 1))
    return torch.stack(out, dim=1)


def gaussian_blur_batch(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """[B, C, H, W] blurred with a separable `kernel`-px Gaussian of σ = sigma[b] px, reflect-101 border
    (OpenCV getGaussianKernel weights: exp(−(i − (k−1)/2)² / 2σ²), normalised)."""
    b, c, h, w = x.shape
    offsets = torch.arange(kernel, dtype=x.dtype, device=x.device) - (kernel - 1) / 2
    weights = torch.exp(-(offsets**2) / (2 * sigma.to(x.dtype).view(-1, 1) ** 2))  # [B, k]
    weights = (weights / weights.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [B·C, k]
    pad = kernel // 2
    flat = x.reshape(1, b * c, h, w)
    flat = F.conv2d(
        F.pad(flat, (pad, pad, 0, 0), mode="reflect"), weights.view(b * c, 1, 1, kernel), groups=b * c
    )
    flat = F.conv2d(
        F.pad(flat, (0, 0, pad, pad), mode="reflect"), weights.view(b * c, 1, kernel, 1), groups=b * c
    )
    return flat.view(b, c, h, w)


def _masked_blend(x: torch.Tensor, op: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """One jitter slot for the whole batch: brightness / contrast / saturation (op [B] 0 / 1 / 2) as
    factor·x + (1 − factor)·(0 | mean grey | grey), clamped; other ops (−1 none, 3 hue) get factor 1,
    which leaves x exactly as it is. values [B, 4]: the factor per op (ColorParams.to_vector[4:8])."""
    b = x.shape[0]
    op = op.view(b, 1, 1, 1)
    factor = values[:, :3].gather(1, op.clamp(0, 2).long().view(b, 1)).view(b, 1, 1, 1)
    factor = torch.where((op >= 0) & (op <= 2), factor, torch.ones_like(factor))
    grey = _gray(x, _TV_GRAY)
    other = torch.where(op == 1, grey.mean(dim=(1, 2, 3), keepdim=True), grey) * (op != 0).to(x.dtype)
    return (x * factor + other * (1 - factor)).clamp(0, 255)


def color_augment_batch(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] RGB in [0, 255] (float) → augmented, params [B, COLOR_VECTOR_LEN] (ColorParams.to_vector).

    Each sample gets its own jitter order, factors, channel permutation, grayscale, blur σ and
    solarisation. Every operation runs on the whole batch, and a per-sample mask (`torch.where`, or a
    factor of 1) leaves the samples without it untouched — a fixed sequence of ops whatever the draws:
    nothing is decided on the host (no sync), and torch.compile sees one graph. The jitter (at most one
    hue turn and three blends per sample, in the sample's own order) runs as: the blends drawn before the
    hue (three masked slots), one masked hue turn, the blends drawn after it (three slots) — the same
    order per sample, with one hue evaluation instead of one per slot."""
    v = params.detach().to(device=x.device, dtype=x.dtype, non_blocking=True)
    b = x.shape[0]
    ops = v[:, :4].round()  # [B, 4] jitter ops in order, −1 = none
    is_hue = ops == 3
    hue_at = torch.where(is_hue.any(dim=1), is_hue.to(torch.uint8).argmax(dim=1), 4)  # [B], 4 = no hue
    none = torch.full_like(ops[:, 0], -1.0)
    for j in range(3):  # the blends before the hue (all of them without one)
        x = _masked_blend(x, torch.where(hue_at > j, ops[:, j], none), v[:, 4:8])
    x = torch.where((hue_at < 4).view(b, 1, 1, 1), shift_hue_batch(x, v[:, 7]), x)
    for j in range(3):  # the blends after it
        at = hue_at + 1 + j
        op = ops.gather(1, at.clamp(max=3).view(b, 1)).view(b)
        x = _masked_blend(x, torch.where(at <= 3, op, none), v[:, 4:8])
    perm = v[:, 8:11].round().long()  # identity rows copy exactly
    x = x.gather(1, perm.view(b, 3, 1, 1).expand(-1, -1, x.shape[2], x.shape[3]))
    x = torch.where(v[:, 11].view(b, 1, 1, 1) > 0.5, _gray(x, _CV_GRAY).expand_as(x), x)
    sigma = v[:, 12]
    blurred = gaussian_blur_batch(
        x, torch.where(sigma > 0, sigma, torch.ones_like(sigma)), blur_kernel_px(max(x.shape[2:]))
    )
    x = torch.where(sigma.view(b, 1, 1, 1) > 0, blurred, x)
    return torch.where((v[:, 13].view(b, 1, 1, 1) > 0.5) & (x >= SOLARIZE_THRESHOLD), 255 - x, x)


def shuffle_batch(x: torch.Tensor, perm: torch.Tensor, n: int) -> torch.Tensor:
    """[B, C, S, S] → the composites: grid position k of sample b shows its original patch perm[b, k]."""
    b, c, s, _ = x.shape
    p = s // n
    patches = x.view(b, c, n, p, n, p).permute(0, 2, 4, 1, 3, 5).reshape(b, n * n, c, p, p)
    index = perm.to(x.device, non_blocking=True).long().view(b, n * n, 1, 1, 1).expand(-1, -1, c, p, p)
    shuffled = patches.gather(1, index).view(b, n, n, c, p, p)
    return shuffled.permute(0, 3, 1, 4, 2, 5).reshape(b, c, s, s)


def render_batch(
    crops: torch.Tensor, color: torch.Tensor, perm: torch.Tensor, matrices: torch.Tensor, cfg: PretrainConfig
) -> torch.Tensor:
    """Network inputs [B, 3, input, input (·2 with concat_original)] float32 from uint8 crops [B, S, S, 3]
    (on the device) and the draws of `dataset.draw_puzzle` (color [B, 14], perm [B, N²], matrices [B, 2, 3])."""
    side = padded_size(cfg.input_size, cfg.n)
    if crops.dim() != 4 or tuple(crops.shape[1:]) != (side, side, 3):
        raise ValueError(
            f"render_batch: crops must be [B, {side}, {side}, 3] uint8 (padded size for input "
            f"{cfg.input_size}, N={cfg.n}), got {tuple(crops.shape)}"
        )
    return render_crops(crops.permute(0, 3, 1, 2).float(), color, perm, matrices, cfg)


def render_crops(
    x: torch.Tensor, color: torch.Tensor, perm: torch.Tensor, matrices: torch.Tensor, cfg: PretrainConfig
) -> torch.Tensor:
    """`render_batch` on float crops [B, 3, S, S] in 0–255."""
    side = x.shape[-1]
    x = color_augment_batch(x, color)
    size = (cfg.input_size, cfg.input_size)
    out = warp_affine_batch(shuffle_batch(x, perm, cfg.n), matrices, size)
    if cfg.concat_original:
        identity = constant(
            composite_matrix(side, cfg.input_size, SpatialParams()).tolist(), torch.float64, x.device
        )
        original = warp_affine_batch(x, identity.expand(x.shape[0], 2, 3), size)
        out = torch.cat([original, out], dim=3)
    return normalize_batch(out)


def renders_on_device(cfg: PretrainConfig, device: torch.device, data: DataConfig | None = None) -> bool:
    """Whether the training puzzles are rendered on `device`: `augment_on: device`, or `auto` on CUDA or
    when `data.decode_on` puts the decoding (and so the crops) on the device."""
    if cfg.augment_on == "auto" and data is not None and decodes_on_device(data, device):
        return True
    return cfg.augment_on == "device" or (cfg.augment_on == "auto" and device.type == "cuda")


def check_placement(cfg: PretrainConfig, data: DataConfig, device: torch.device) -> None:
    """ConfigError when the decoding is on the device but the puzzles are to be made in the loader."""
    if decodes_on_device(data, device) and not renders_on_device(cfg, device, data):
        raise ConfigError(
            f"data.decode_on = {data.decode_on!r} decodes the images on the {device.type} device, but "
            f"pretrain.augment_on = {cfg.augment_on!r} wants the puzzles made in the loader workers; set "
            "augment_on to device (or auto), or decode_on to loader"
        )


def batch_images(batch: dict, cfg: PretrainConfig, device: torch.device) -> torch.Tensor:
    """The batch's network inputs on `device`: decoded and cropped there from the file bytes
    (`decode_on: device`), rendered there from crops + draws (`augment_on: device`), or the loader's
    ready images. A file that could not be decoded gets a black input and its `batch["mask"]` row is
    zeroed in place, so it adds nothing to the loss."""
    if BYTES_KEY in batch:
        side = padded_size(cfg.input_size, cfg.n)
        crops, ok = decode_and_crop(batch, (side, side), device)
        if not ok.all():
            batch["mask"] = batch["mask"] * ok.view(-1, 1).to(batch["mask"].dtype)
        return render_crops(crops, batch["color"], batch["perm"], batch["matrix"], cfg)
    if "crop" not in batch:  # the loader's uint8 images (normalised in the step: network_input)
        return batch["image"].to(device, non_blocking=True)
    crops = batch["crop"].to(device, non_blocking=True)
    # the colour draws stay a host tensor: which samples get which operation is decided there
    return render_batch(crops, batch["color"], batch["perm"], batch["matrix"], cfg)
