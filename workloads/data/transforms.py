"""Image I/O and the top-down crop geometry shared by the pretext (paper §3.1) and pose (paper §4.1).

The affine follows HRNet lib/utils/transforms.py: three points (the box centre, a point half a box
width "above" it rotated by the augmentation angle, and a third perpendicular point) are mapped to the
output centre, the top-centre of the output and its perpendicular, so the box of width
`scale_wh[0] * 200` fills the output width. Joints go through the same 2×3 matrix.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from workloads.data.coco import PIXEL_STD, CocoDataError, PersonInstance
from workloads.hostsync import constant

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # HRNet/torchvision ImageNet normalisation (RGB)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _rotate(point_xy: np.ndarray, rot_rad: float) -> np.ndarray:
    sn, cs = np.sin(rot_rad), np.cos(rot_rad)
    return np.array([point_xy[0] * cs - point_xy[1] * sn, point_xy[0] * sn + point_xy[1] * cs])


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """b + (a - b) rotated by 90° (HRNet get_3rd_point)."""
    direct = a - b
    return b + np.array([-direct[1], direct[0]])


def get_affine_transform(
    center_xy, scale_wh, rot_deg: float, output_wh, inv: bool = False, shift_xy=(0.0, 0.0)
) -> np.ndarray:
    """[2, 3] float64 matrix mapping image xy → output xy (or back when inv=True).

    center_xy [2] px; scale_wh [2] in units of PIXEL_STD (only the width sets the zoom, the height
    follows from output_wh); rot_deg counter-clockwise as HRNet; output_wh (W, H) px.
    """
    center = np.asarray(center_xy, dtype=np.float64)
    scale_px = np.asarray(scale_wh, dtype=np.float64) * PIXEL_STD
    shift = np.asarray(shift_xy, dtype=np.float64)
    dst_w, dst_h = float(output_wh[0]), float(output_wh[1])
    src_dir = _rotate(np.array([0.0, -0.5 * scale_px[0]]), np.deg2rad(rot_deg))
    src = np.zeros((3, 2))
    dst = np.zeros((3, 2))
    src[0] = center + scale_px * shift
    src[1] = src[0] + src_dir
    dst[0] = (dst_w * 0.5, dst_h * 0.5)
    dst[1] = dst[0] + np.array([0.0, -0.5 * dst_w])
    src[2] = _third_point(src[0], src[1])
    dst[2] = _third_point(dst[0], dst[1])
    if inv:
        src, dst = dst, src
    # Solve [x y 1] @ M^T = dst exactly (cv2.getAffineTransform in float64).
    src_h = np.concatenate([src, np.ones((3, 1))], axis=1)  # [3, 3]
    return np.linalg.solve(src_h, dst).T  # [2, 3]


def affine_points(points_xy: np.ndarray, mat: np.ndarray) -> np.ndarray:
    """[K, 2] xy → [K, 2] xy under the [2, 3] affine `mat`."""
    points = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    mat = np.asarray(mat, dtype=np.float64)
    return points @ mat[:, :2].T + mat[:, 2]


def warp_crop(image_hwc: np.ndarray, mat: np.ndarray, output_wh) -> np.ndarray:
    """Crop/warp `image_hwc` with `mat` into an (H, W, C) image; bilinear, black outside (HRNet)."""
    return cv2.warpAffine(
        image_hwc,
        np.asarray(mat, dtype=np.float64),
        (int(output_wh[0]), int(output_wh[1])),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def read_image(path: str | os.PathLike) -> np.ndarray:
    """[H, W, 3] uint8 RGB; EXIF orientation ignored as HRNet does; CocoDataError naming the file."""
    path = str(path)
    if not os.path.isfile(path):
        raise CocoDataError(f"image file {path} not found")
    image = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise CocoDataError(f"image file {path} could not be decoded (corrupt or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image_skipping(
    instances: Sequence[PersonInstance],
    index: int,
    skipped: set[str],
    reader: Callable[[str], Any] = read_image,
) -> tuple[int, Any]:
    """(j, image) of the first readable image of instances index, index + 1, ... (wrapping), for training
    sets: one corrupt JPEG among 150k must not end a 240-epoch run. Each unreadable file is warned once,
    with the running count of `skipped` files (the caller's set: per data set and loader process), and
    not tried again. CocoDataError naming the file when no item's image can be read. `reader`: path →
    image (`read_image`), or → the file's bytes (device_decode.read_jpeg_bytes); it raises CocoDataError."""
    count = len(instances)
    for step in range(count):
        j = (index + step) % count
        path = instances[j].image_path
        if path in skipped:
            continue
        try:
            return j, reader(path)
        except CocoDataError as exc:
            skipped.add(path)
            log.warning(
                "%s; skipped, the next person is used instead (%d unreadable image(s) skipped so far "
                "in this loader process)",
                exc,
                len(skipped),
            )
    raise CocoDataError(
        f"no readable image among the {count} items, e.g. {instances[index].image_path} ({len(skipped)} "
        "unreadable files skipped)"
    )


def normalize_image(img_uint8_hwc: np.ndarray) -> torch.Tensor:
    """[H, W, 3] uint8 RGB → [3, H, W] float32 tensor, /255 then ImageNet mean/std (HRNet ToTensor+Normalize)."""
    if img_uint8_hwc.ndim != 3 or img_uint8_hwc.shape[2] != 3:
        raise ValueError(f"normalize_image expects an [H, W, 3] image, got shape {img_uint8_hwc.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(img_uint8_hwc)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return tensor.sub_(mean).div_(std)


def _source_xy(matrices: torch.Tensor, output_wh, device: torch.device) -> torch.Tensor:
    """[B, out_h, out_w, 2] float64 source xy (continuous coordinates) of every output pixel centre under
    the continuous-coordinate affines [B, 2, 3] (source → output). The 2×2 inverse is closed-form, so
    nothing waits for the device; float64, as 640 px images need."""
    out_w, out_h = int(output_wh[0]), int(output_wh[1])
    m = matrices.to(device=device, dtype=torch.float64, non_blocking=True)
    a, bb, c, d = m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1]
    det = a * d - bb * c  # never 0 here: scaled rotations (negative when a pose flip mirrors)
    inv_lin = torch.stack([torch.stack([d, -bb], -1), torch.stack([-c, a], -1)], 1) / det.view(-1, 1, 1)
    inv_off = -(inv_lin @ m[:, :, 2:]).squeeze(-1)  # [B, 2]
    gy, gx = torch.meshgrid(
        torch.arange(out_h, dtype=torch.float64, device=device) + 0.5,
        torch.arange(out_w, dtype=torch.float64, device=device) + 0.5,
        indexing="ij",
    )
    pts = torch.stack([gx, gy], dim=-1).view(1, -1, 2)  # [1, out_h·out_w, 2] output pixel centres
    src = pts @ inv_lin.transpose(1, 2) + inv_off[:, None, :]  # [B, ·, 2]
    return src.view(m.shape[0], out_h, out_w, 2)


def warp_affine_batch(x: torch.Tensor, matrices: torch.Tensor, output_wh) -> torch.Tensor:
    """[B, C, H, W] float warped by continuous-coordinate affines [B, 2, 3] (source xy → output xy, pixel k
    covering [k, k+1)) into [B, C, out_h, out_w]: bilinear, zeros outside — cv2.warpAffine with
    BORDER_CONSTANT 0, batched on x's device."""
    _, _, h, w = x.shape
    src = _source_xy(matrices, output_wh, x.device)
    scale = constant((2.0 / w, 2.0 / h), torch.float64, x.device)
    grid = (src * scale - 1.0).to(x.dtype)  # align_corners=False
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def warp_affine_uint8(x: torch.Tensor, matrices: torch.Tensor, output_wh) -> torch.Tensor:
    """`warp_affine_batch` of a uint8 [B, C, H, W] batch without a float copy of it: the four neighbours of
    every output pixel are gathered as uint8 and blended in float32 (bilinear, zeros outside, the
    weights of grid_sample with align_corners=False: source pixel index = continuous xy − ½). Returns
    float32 [B, C, out_h, out_w] in 0–255. Only the output is float: a batch of 640 px images then costs a
    quarter of the memory (and of the bytes written) of a float32 canvas."""
    b, c, h, w = x.shape
    src = _source_xy(matrices, output_wh, x.device) - 0.5  # [B, oh, ow, 2] pixel-index coordinates
    base = torch.floor(src)
    frac = (src - base).to(torch.float32)
    x0, y0 = base[..., 0].long(), base[..., 1].long()
    flat = x.reshape(b, c, h * w)
    out = None
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).view(b, 1, -1).expand(-1, c, -1)
            wx = frac[..., 0] if dx else 1 - frac[..., 0]
            wy = frac[..., 1] if dy else 1 - frac[..., 1]
            weight = (wx * wy * inside.to(torch.float32)).view(b, 1, -1)
            term = flat.gather(2, index).to(torch.float32) * weight
            out = term if out is None else out + term
    return out.view(b, c, *src.shape[1:3])


def pixel_index_to_continuous(matrices: torch.Tensor) -> torch.Tensor:
    """[B, 2, 3] affines in OpenCV's pixel-index convention (what warp_crop takes) → the continuous-coordinate
    ones warp_affine_batch takes: with u = x + ½, b' = b + ½ − A·[½, ½] (inverse of augment.to_pixel_index_matrix)."""
    m = matrices.to(torch.float64).clone()
    m[:, :, 2] = m[:, :, 2] + 0.5 - m[:, :, :2].sum(dim=2) * 0.5
    return m


def normalize_batch(x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 255] → /255, ImageNet mean/std (transforms.normalize_image, batched)."""
    mean = constant(IMAGENET_MEAN, x.dtype, x.device).view(1, 3, 1, 1)
    std = constant(IMAGENET_STD, x.dtype, x.device).view(1, 3, 1, 1)
    return (x / 255.0 - mean) / std


def network_input(images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """The model's float input from a batch as the loaders ship it: uint8 [B, H, W, 3] RGB (NHWC) is
    normalised here, on its device (`normalize_batch`: the numbers of `normalize_image`); a float
    [B, 3, H, W] batch is taken as already normalised. NHWC uint8 permuted to NCHW is channels_last in
    memory, which `.float()` keeps; `channels_last` asks for that layout in every case."""
    if images.dtype == torch.uint8:
        if images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"network_input: uint8 images must be [B, H, W, 3], got {tuple(images.shape)}")
        x = normalize_batch(images.permute(0, 3, 1, 2).float())
        return x if channels_last else x.contiguous()
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def flip_joints(joints_xy: np.ndarray, vis: np.ndarray, width: float, pairs) -> tuple[np.ndarray, np.ndarray]:
    """Mirror joints of an image `width` px wide: x ← width - 1 - x, left/right pairs swapped.

    joints_xy [K, 2] (or [K, >=2]; extra columns are carried), vis [K] or [K, ...]. Returns new arrays.
    Unlike HRNet's fliplr_joints, coordinates of invisible joints are kept (they carry zero weight).
    """
    joints = np.array(joints_xy, dtype=np.float64, copy=True)
    vis = np.array(vis, copy=True)
    joints[:, 0] = width - 1 - joints[:, 0]
    for left, right in pairs:
        joints[[left, right]] = joints[[right, left]]
        vis[[left, right]] = vis[[right, left]]
    return joints, vis
