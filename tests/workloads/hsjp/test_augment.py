"""Spatial affine of the composite moves pixels and patch centres alike; colour augmentations are seeded."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from workloads.config import HSJPAugConfig
from workloads.data.transforms import affine_points
from workloads.hsjp.augment import (
    SpatialParams,
    apply_color,
    blend_uint8,
    blur_kernel_px,
    composite_matrix,
    sample_color,
    sample_spatial,
    shift_hue,
    warp_composite,
)
from workloads.hsjp.puzzle import grid_centers_xy, padded_size

NO_COLOUR = HSJPAugConfig(
    color_jitter_prob=0.0, distortion_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0
)


def _labelled_composite(n: int, patch: int) -> np.ndarray:
    """Patch k filled with the value 10·(k+1) (channel 0), so a pixel tells which patch it came from."""
    values = (10 * (np.arange(n * n) + 1)).reshape(n, n).astype(np.uint8)
    image = np.kron(values, np.ones((patch, patch), np.uint8))
    return np.repeat(image[:, :, None], 3, axis=2)


@pytest.mark.parametrize("input_size,n", [(64, 2), (64, 3), (48, 4)])
def test_warped_pixels_at_moved_centres_belong_to_their_patch(input_size, n):
    side = padded_size(input_size, n)
    composite = _labelled_composite(n, side // n)
    rng = np.random.default_rng(5)
    checked = 0
    for _ in range(6):
        mat = composite_matrix(side, input_size, sample_spatial(HSJPAugConfig(), rng))
        warped = warp_composite(composite, mat, input_size)
        centers = affine_points(grid_centers_xy(n, side // n), mat)  # cell k shows patch k here
        for k, (x, y) in enumerate(centers):
            if 1 <= x < input_size - 1 and 1 <= y < input_size - 1:
                # continuous xy → the pixel containing it: floor; the patch is ≥ 8 px so no blending there
                assert warped[int(y), int(x), 0] == 10 * (k + 1)
                checked += 1
    assert checked > 10


def test_identity_without_padding_is_an_exact_copy():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mat = composite_matrix(32, 32, SpatialParams())
    np.testing.assert_allclose(mat, np.eye(2, 3), atol=1e-12)
    np.testing.assert_array_equal(warp_composite(image, mat, 32), image)


def test_padded_composite_is_resized_to_the_input():
    # N = 3 on 32 px: the puzzle is made at 33 px and mapped back by 32/33
    mat = composite_matrix(33, 32, SpatialParams())
    np.testing.assert_allclose(
        affine_points(np.array([[0.0, 0.0], [33.0, 33.0], [5.5, 16.5]]), mat),
        [[0.0, 0.0], [32.0, 32.0], [5.5 * 32 / 33, 16.0]],
        atol=1e-9,
    )


def test_rotation_turns_counter_clockwise_on_screen():
    mat = composite_matrix(40, 40, SpatialParams(rotate_deg=90.0))
    # the right-middle point goes to the top-middle (y points down)
    np.testing.assert_allclose(affine_points(np.array([[40.0, 20.0]]), mat), [[20.0, 0.0]], atol=1e-9)


def test_spatial_draws_stay_in_the_configured_ranges():
    aug, rng = HSJPAugConfig(), np.random.default_rng(1)
    draws = [sample_spatial(aug, rng) for _ in range(400)]
    scales = np.array([d.scale for d in draws])
    rots = np.array([d.rotate_deg for d in draws])
    shifts = np.array([d.translate_frac for d in draws])
    assert 0.65 <= scales.min() < 0.7 and 1.3 < scales.max() <= 1.35  # paper §3.2: ±35 %
    assert -45 <= rots.min() < -40 and 40 < rots.max() <= 45  # ±45°
    assert np.abs(shifts).max() <= 0.1 and np.abs(shifts).max() > 0.09  # ±10 %
    off = HSJPAugConfig(spatial_prob=0.0)
    assert all(sample_spatial(off, rng) == SpatialParams() for _ in range(20))


def _crop(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)


def color_augment(image_hwc: np.ndarray, aug: HSJPAugConfig, rng: np.random.Generator) -> np.ndarray:
    """The CPU colour path as the pretext dataset runs it: draw the parameters, then apply them."""
    return apply_color(image_hwc, sample_color(aug, rng))


def test_colour_augmentation_is_deterministic_by_seed_and_changes_the_image():
    img = _crop()
    a = color_augment(img, HSJPAugConfig(), np.random.default_rng(3))
    b = color_augment(img, HSJPAugConfig(), np.random.default_rng(3))
    assert a.dtype == np.uint8 and a.shape == img.shape
    np.testing.assert_array_equal(a, b)
    outs = [color_augment(img, HSJPAugConfig(), np.random.default_rng(s)) for s in range(6)]
    assert sum(not np.array_equal(o, img) for o in outs) >= 4
    np.testing.assert_array_equal(color_augment(img, NO_COLOUR, np.random.default_rng(0)), img)


def test_each_colour_operation_does_what_it_says():
    img = _crop(1)
    gray = color_augment(img, replace(NO_COLOUR, grayscale_prob=1.0), np.random.default_rng(0))
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    sol = color_augment(img, replace(NO_COLOUR, solarize_prob=1.0), np.random.default_rng(0))
    np.testing.assert_array_equal(sol, np.where(img >= 128, 255 - img, img))
    perm = color_augment(img, replace(NO_COLOUR, distortion_prob=1.0), np.random.default_rng(4))
    sources = [next(d for d in range(3) if np.array_equal(perm[..., c], img[..., d])) for c in range(3)]
    assert sorted(sources) == [0, 1, 2] and sources != [0, 1, 2]  # channels permuted, not changed
    blur = color_augment(img, replace(NO_COLOUR, blur_prob=1.0), np.random.default_rng(0))
    assert blur.std() < img.std()  # blurring noise lowers its variance
    assert blur_kernel_px(224) == 23 and blur_kernel_px(24) == 3  # BYOL: 23 px at 224
    bright = color_augment(
        img,
        replace(NO_COLOUR, color_jitter_prob=1.0, contrast=0.0, saturation=0.0, hue=0.0),
        np.random.default_rng(0),
    )
    ratio = bright.astype(float).sum() / img.astype(float).sum()
    assert 0.6 <= ratio <= 1.4 and ratio != 1.0  # brightness ×U(0.6, 1.4) (clipping aside)


def test_hue_shift_turns_the_colour_wheel():
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    green = shift_hue(red, 1 / 3)  # +120°
    assert green[0, 0, 1] > 240 and green[0, 0, 0] < 10 and green[0, 0, 2] < 10
    img = _crop(2)
    assert np.abs(shift_hue(img, 0.0).astype(int) - img).mean() < 3  # 8-bit HSV round trip is near-exact


@pytest.mark.parametrize("factor", [0.0, 0.6, 0.93, 1.0, 1.37])
def test_uint8_blends_are_bit_identical_to_torchvision(factor):
    import torchvision.transforms.v2.functional as TF

    img = torch.from_numpy(_crop(5)).permute(2, 0, 1)
    for op, fn in enumerate((TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)):
        assert torch.equal(blend_uint8(img, op, factor), fn(img, factor)), (op, factor)
