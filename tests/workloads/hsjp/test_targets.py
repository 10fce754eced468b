"""Gaussian targets (eq. 1) peak on the shuffled (and augmented) centres; the mask M marks centres in the image."""

from __future__ import annotations

import numpy as np
import torch

from workloads.config import HSJPAugConfig
from workloads.data.transforms import affine_points
from workloads.hsjp.augment import SpatialParams, composite_matrix, sample_spatial
from workloads.hsjp.precision import decode_peaks
from workloads.hsjp.puzzle import fisher_yates, padded_size, shuffled_centers_xy
from workloads.hsjp.targets import heatmap_stride, inside_mask, make_heatmaps


def _targets(centers: np.ndarray, mask: np.ndarray, input_size: int, hm: int, sigma: float) -> torch.Tensor:
    return make_heatmaps(
        torch.from_numpy(centers), torch.from_numpy(mask), (hm, hm), heatmap_stride(input_size, hm), sigma
    )


def test_each_channel_peaks_on_its_patch_centre_without_augmentation():
    n, size, hm = 3, 36, 9  # patch 12: centres 6, 18, 30 px sit on heatmap pixel centres (j + ½)·4
    perm = fisher_yates(n * n, np.random.default_rng(0))
    centers = shuffled_centers_xy(perm, n, size // n)
    heat = _targets(centers, np.ones(n * n, np.float32), size, hm, sigma=2.0)
    assert heat.shape == (n * n, hm, hm)
    assert torch.allclose(heat.amax(dim=(1, 2)), torch.ones(n * n), atol=1e-6)  # unnormalised, peak 1
    # so the peak is exactly 1 and decoding is exact
    decoded = decode_peaks(heat[None], heatmap_stride(size, hm))[0].numpy()
    np.testing.assert_allclose(decoded, centers, atol=1e-5)


def test_gaussian_value_matches_equation_1():
    heat = _targets(np.array([[10.0, 6.0]]), np.ones(1, np.float32), 32, 8, sigma=3.0)[0]
    # heatmap pixel (row 2, col 1) has its centre at input ((1 + ½)·4, (2 + ½)·4) = (6, 10)
    expected = np.exp(-((6 - 10.0) ** 2 + (10 - 6.0) ** 2) / (2 * 3.0**2))
    assert abs(float(heat[2, 1]) - expected) < 1e-6


def test_peaks_follow_a_random_augmentation_within_quantisation():
    rng = np.random.default_rng(11)
    size, hm = 64, 16
    stride = heatmap_stride(size, hm)
    for n in (2, 3, 5):  # 5 does not divide 64: the composite is made at the padded side
        side = padded_size(size, n)
        for _ in range(5):
            perm = fisher_yates(n * n, rng)
            mat = composite_matrix(side, size, sample_spatial(HSJPAugConfig(), rng))
            centers = affine_points(shuffled_centers_xy(perm, n, side // n), mat)
            mask = inside_mask(centers, size, size)
            heat = _targets(centers, mask, size, hm, sigma=1.5)
            decoded = decode_peaks(heat[None], stride)[0].numpy()
            inside = mask > 0
            # a centre inside the image decodes to its heatmap pixel's centre: ≤ stride/√2 away
            err = np.linalg.norm(decoded[inside] - centers[inside], axis=1)
            assert err.max() <= stride / np.sqrt(2) + 1e-6
            assert torch.all(heat[torch.from_numpy(~inside)] == 0)  # masked channels carry no target


def test_mask_is_zero_exactly_for_centres_outside_the_image():
    centers = np.array([[0.0, 0.0], [63.99, 10.0], [64.0, 10.0], [-0.01, 5.0], [30.0, 64.0], [30.0, 63.5]])
    np.testing.assert_array_equal(inside_mask(centers, 64, 64), [1, 1, 0, 0, 0, 1])


def test_augmented_centres_leave_the_image_and_get_masked():
    # a 35 % zoom-in moves the outer patch centres of a 6×6 grid (at 1/12 of the side) off the image
    size, n = 48, 6
    mat = composite_matrix(size, size, SpatialParams(scale=1.35, rotate_deg=0.0, translate_frac=(0.1, 0.0)))
    centers = affine_points(shuffled_centers_xy(np.arange(n * n), n, size // n), mat)
    mask = inside_mask(centers, size, size)
    outside = (centers[:, 0] < 0) | (centers[:, 0] >= size) | (centers[:, 1] < 0) | (centers[:, 1] >= size)
    assert outside.any() and not outside.all()
    np.testing.assert_array_equal(mask == 0, outside)


def test_batched_targets_equal_per_sample_targets():
    rng = np.random.default_rng(2)
    centers = rng.uniform(0, 32, size=(3, 4, 2))
    mask = (rng.random((3, 4)) > 0.3).astype(np.float32)
    batch = make_heatmaps(torch.from_numpy(centers), torch.from_numpy(mask), (8, 8), 4.0, 2.0)
    for b in range(3):
        single = _targets(centers[b], mask[b], 32, 8, 2.0)
        assert torch.allclose(batch[b], single)
