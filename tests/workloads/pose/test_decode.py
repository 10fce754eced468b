"""Heatmap decoding: arg-max, the official quarter-pixel offset, and the inverse crop affine."""

from __future__ import annotations

import numpy as np
import torch

from workloads.data.coco import PIXEL_STD, box_to_center_scale
from workloads.data.transforms import affine_points, get_affine_transform
from workloads.pose.decode import decode_heatmaps, get_max_preds, heatmap_to_image

HM_H, HM_W = 64, 48  # HRNet 256x192 input → 64x48 heatmaps
# Bound asserted: the quarter offset leaves at most 0.25 heatmap px of error per axis when the
# arg-max is the nearest pixel (|true - argmax| ≤ 0.5 and the step goes towards the true location).
QUARTER_BOUND = 0.25 + 1e-6


def gaussians(
    centers_xy: np.ndarray, height: int = HM_H, width: int = HM_W, sigma: float = 2.0
) -> torch.Tensor:
    """[B, K, H, W] unnormalised Gaussians (peak 1 at the sub-pixel centre) from centers [B, K, 2] xy."""
    ys, xs = np.mgrid[0:height, 0:width]
    cx = centers_xy[..., 0][..., None, None]
    cy = centers_xy[..., 1][..., None, None]
    return torch.from_numpy(np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))).float()


def test_argmax_finds_integer_peak_and_zeroes_nonpositive_maps():
    heatmaps = torch.zeros(1, 3, 8, 6)
    heatmaps[0, 0, 5, 2] = 0.9  # y=5, x=2
    heatmaps[0, 1] = -1.0
    heatmaps[0, 1, 3, 4] = -0.5  # peak ≤ 0 → coords zeroed (official pred_mask)
    heatmaps[0, 2, 1, 1] = heatmaps[0, 2, 6, 5] = 0.7  # tie → first in raster order, as np.argmax
    coords, maxvals = get_max_preds(heatmaps)
    assert coords[0, 0].tolist() == [2.0, 5.0]
    assert coords[0, 1].tolist() == [0.0, 0.0]
    assert coords[0, 2].tolist() == [1.0, 1.0]
    assert torch.allclose(maxvals[0], torch.tensor([0.9, -0.5, 0.7]))


def test_quarter_offset_recovers_subpixel_gaussian_within_official_bound():
    rng = np.random.default_rng(0)
    centers = rng.uniform([3.0, 3.0], [HM_W - 4.0, HM_H - 4.0], size=(4, 17, 2))  # interior only
    coords, maxvals = decode_heatmaps(gaussians(centers))
    err = np.abs(coords - centers)
    assert err.max() <= QUARTER_BOUND
    # without the offset the mean error of uniform sub-pixel positions is ~0.25; with it ~0.125
    plain, _ = decode_heatmaps(gaussians(centers), refine=False)
    assert err.mean() < 0.16 < np.abs(plain - centers).mean()
    assert np.all(maxvals > 0.8)


def test_no_offset_on_the_border_as_official():
    # x rounds to 1 / y to 63: outside 1 < p < size-1, so neither axis moves (one joint-level test)
    centers = np.array([[[1.3, 30.2], [20.4, 62.6], [2.3, 30.2]]])
    coords, _ = decode_heatmaps(gaussians(centers))
    assert coords[0, 0].tolist() == [1.0, 30.0] and coords[0, 1].tolist() == [20.0, 63.0]
    assert coords[0, 2].tolist() == [2.25, 30.25]  # just inside: both axes refined


def test_round_trip_image_to_heatmap_and_back_through_the_inverse_affine():
    rng = np.random.default_rng(1)
    box = np.array([100.0, 50.0, 120.0, 260.0])  # x, y, w, h image px
    center, scale = box_to_center_scale(box, aspect_ratio=HM_W / HM_H, padding=1.25)
    joints_img = rng.uniform(box[:2] + 10, box[:2] + box[2:] - 10, size=(17, 2))
    to_heatmap = get_affine_transform(center, scale, 0.0, (HM_W, HM_H))
    joints_hm = affine_points(joints_img, to_heatmap)  # [17, 2] heatmap px
    coords, _ = decode_heatmaps(gaussians(joints_hm[None]))
    back = heatmap_to_image(coords[0], center, scale, (HM_W, HM_H))
    px_per_cell = scale[0] * PIXEL_STD / HM_W  # zoom of the crop affine (isotropic)
    assert np.abs(back - joints_img).max() <= QUARTER_BOUND * px_per_cell
    # the inverse affine is exact: undoing heatmap coords returns the image joints
    assert np.allclose(heatmap_to_image(joints_hm, center, scale, (HM_W, HM_H)), joints_img, atol=1e-9)
