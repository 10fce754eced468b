"""Puzzles rendered in batches on the device (augment_on: device) against the per-sample OpenCV path.

Same seed → the same draws, so perm, centres and mask are identical and the images differ only by the
per-sample path's 8-bit rounding (measured on 16 crops at 224 px, N = 6, in grey levels 0–255: one op
alone ≤ 1.7 max; hue on 8-bit HSV ≤ 11 max, p99 4.2; everything on: mean 0.92, p99 4.6, max 15.5).
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from tests.workloads.hsjp.test_augment import NO_COLOUR  # colour augmentation off, spatial on
from workloads.config import DataConfig, PretrainConfig
from workloads.data.transforms import IMAGENET_MEAN, IMAGENET_STD, network_input, warp_affine_batch
from workloads.hsjp.augment import ColorParams, SpatialParams, composite_matrix, warp_composite
from workloads.hsjp.batched import (
    batch_images,
    color_augment_batch,
    gaussian_blur_batch,
    render_batch,
    renders_on_device,
    shift_hue_batch,
    shuffle_batch,
)
from workloads.hsjp.dataset import PuzzleDataset, draw_puzzle, load_instances, render_sample
from workloads.hsjp.puzzle import padded_size, shuffle_image

ONLY = {  # one operation on every sample, no spatial transform
    "brightness": replace(NO_COLOUR, color_jitter_prob=1, contrast=0, saturation=0, hue=0),
    "contrast": replace(NO_COLOUR, color_jitter_prob=1, brightness=0, saturation=0, hue=0),
    "saturation": replace(NO_COLOUR, color_jitter_prob=1, brightness=0, contrast=0, hue=0),
    "grayscale": replace(NO_COLOUR, grayscale_prob=1),
    "blur": replace(NO_COLOUR, blur_prob=1),
    "solarize": replace(NO_COLOUR, solarize_prob=1),
    "distortion": replace(NO_COLOUR, distortion_prob=1),
}


def _smooth_crop(seed: int, side: int) -> np.ndarray:
    """A photo-like (low-frequency) random crop: noise upsampled 8× with bicubic interpolation."""
    small = np.random.default_rng(seed).integers(0, 256, (side // 8 + 1, side // 8 + 1, 3), dtype=np.uint8)
    return cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC)


def _to_grey_levels(images: torch.Tensor) -> np.ndarray:
    """Normalised [B, 3, H, W] → [B, H, W, 3] float64 in 0–255 (undo the ImageNet normalisation)."""
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    return ((images * std + mean) * 255).permute(0, 2, 3, 1).double().numpy()


def _both_paths(cfg: PretrainConfig, crops: list[np.ndarray], seeds) -> tuple[np.ndarray, np.ndarray]:
    """(per-sample images, batched images), both [B, H, W, 3] in grey levels, from the same draws."""
    draws = [draw_puzzle(cfg, np.random.default_rng(s), augment=True) for s in seeds]
    cpu = np.stack([render_sample(c, d, cfg) for c, d in zip(crops, draws, strict=True)]).astype(np.float64)
    dev = render_batch(
        torch.from_numpy(np.stack(crops)),
        torch.from_numpy(np.stack([d.color.to_vector() for d in draws])),
        torch.from_numpy(np.stack([d.perm for d in draws])),
        torch.from_numpy(np.stack([d.matrix for d in draws])),
        cfg,
    )
    return cpu, _to_grey_levels(dev)


@pytest.mark.parametrize("op", sorted(ONLY))
def test_each_colour_operation_matches_the_per_sample_one(op):
    cfg = PretrainConfig(n=4, input_size=64, heatmap_size=16, aug=replace(ONLY[op], spatial_prob=0.0))
    crops = [_smooth_crop(s, 64) for s in range(6)]
    cpu, dev = _both_paths(cfg, crops, range(6))
    diff = np.abs(cpu - dev)
    assert diff.max() <= 2.0, (op, diff.max())  # 8-bit rounding of the per-sample path only
    assert np.abs(cpu - np.stack(crops)).max() > 10 or op == "distortion"  # the op did change the image


def test_hue_rotation_matches_opencv_8bit_hsv_up_to_its_rounding():
    cfg = PretrainConfig(
        n=4,
        input_size=64,
        heatmap_size=16,
        aug=replace(NO_COLOUR, color_jitter_prob=1, brightness=0, contrast=0, saturation=0, spatial_prob=0.0),
    )
    crops = [_smooth_crop(s, 64) for s in range(6)]
    cpu, dev = _both_paths(cfg, crops, range(6))
    diff = np.abs(cpu - dev)
    assert diff.mean() <= 1.0 and np.percentile(diff, 99) <= 6.0 and diff.max() <= 16.0, diff.max()
    red = torch.zeros(1, 3, 1, 1)
    red[0, 0] = 255.0
    green = shift_hue_batch(red, torch.tensor([1 / 3]))  # +120°: red → green
    torch.testing.assert_close(green.flatten(), torch.tensor([0.0, 255.0, 0.0]), atol=1e-3, rtol=0)


@pytest.mark.parametrize(("n", "size", "concat"), [(6, 96, False), (3, 64, True), (5, 64, False)])
def test_full_augmentation_matches_the_per_sample_path(n, size, concat):
    """The paper's augmentation (spatial + every colour op at its probability), padded sides included."""
    cfg = PretrainConfig(n=n, input_size=size, heatmap_size=size // 4, concat_original=concat)
    side = padded_size(size, n)
    crops = [_smooth_crop(s, side) for s in range(12)]
    cpu, dev = _both_paths(cfg, crops, range(12))
    assert cpu.shape == dev.shape == (12, size, size * (2 if concat else 1), 3)
    diff = np.abs(cpu - dev)
    assert diff.mean() <= 1.5 and np.percentile(diff, 99) <= 8.0, (diff.mean(), np.percentile(diff, 99))
    assert np.abs(cpu - cpu[::-1]).mean() > 20  # the samples really differ from each other


def test_shuffle_and_warp_are_the_per_sample_ones():
    n, side = 3, 48
    crop = _smooth_crop(0, side)
    perm = np.array([4, 0, 8, 1, 7, 2, 6, 3, 5])
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float()
    shuffled = shuffle_batch(x, torch.from_numpy(perm)[None], n)
    np.testing.assert_array_equal(shuffled[0].permute(1, 2, 0).numpy(), shuffle_image(crop, perm, n))
    mat = composite_matrix(side, 40, SpatialParams(scale=1.2, rotate_deg=30.0, translate_frac=(0.05, -0.1)))
    warped = warp_affine_batch(x, torch.from_numpy(mat)[None], (40, 40))[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(
        warped, warp_composite(crop, mat, 40), atol=1.0
    )  # cv2: 1/32-px weights, rounded


def test_blur_is_opencvs_gaussian_and_leaves_unblurred_samples_alone():
    x = torch.from_numpy(np.stack([_smooth_crop(s, 32) for s in range(2)])).permute(0, 3, 1, 2).float()
    out = gaussian_blur_batch(x, torch.tensor([1.5, 0.7]), 5)
    for b, sigma in enumerate((1.5, 0.7)):
        ref = cv2.GaussianBlur(
            x[b].permute(1, 2, 0).numpy(), (5, 5), sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101
        )
        np.testing.assert_allclose(out[b].permute(1, 2, 0).numpy(), ref, atol=1e-3)
    colour = np.stack([ColorParams().to_vector(), ColorParams(blur_sigma=1.5).to_vector()])
    mixed = color_augment_batch(x, torch.from_numpy(colour))
    assert torch.equal(mixed[0], x[0]) and not torch.equal(mixed[1], x[1])


def test_colour_vector_round_trips_the_draws():
    params = ColorParams(
        jitter=((2, 1.1), (0, 0.7), (3, -0.05)),
        channel_perm=(2, 0, 1),
        grayscale=True,
        blur_sigma=1.3,
        solarize=True,
    )
    vec = params.to_vector()
    assert list(vec[:4]) == [2, 0, 3, -1]
    np.testing.assert_allclose(vec[4:8], [0.7, 1.0, 1.1, -0.05], rtol=1e-6)
    assert list(vec[8:]) == pytest.approx([2, 0, 1, 1, 1.3, 1])
    assert list(ColorParams().to_vector()) == [-1, -1, -1, -1, 1, 1, 1, 0, 0, 1, 2, 0, 0, 0]


def test_render_batch_names_a_wrong_crop_size():
    cfg = PretrainConfig(n=5, input_size=64, heatmap_size=16)  # padded side 65
    with pytest.raises(ValueError, match=r"crops must be \[B, 65, 65, 3\]"):
        render_batch(
            torch.zeros(2, 64, 64, 3, dtype=torch.uint8),
            torch.zeros(2, 14),
            torch.zeros(2, 25),
            torch.zeros(2, 2, 3),
            cfg,
        )


def test_auto_renders_on_cuda_only():
    cfg = PretrainConfig()
    assert renders_on_device(cfg, torch.device("cuda")) and not renders_on_device(cfg, torch.device("cpu"))
    assert renders_on_device(replace(cfg, augment_on="device"), torch.device("cpu"))
    assert not renders_on_device(replace(cfg, augment_on="loader"), torch.device("cuda"))


@pytest.mark.realdata
def test_dataset_items_on_real_crops_give_the_same_targets_and_images_within_rounding(coco_mini):
    cfg = PretrainConfig(n=6, input_size=96, heatmap_size=24)
    data = DataConfig(coco_root=str(coco_mini), max_train_instances=8)
    persons = load_instances(data, train=True, seed=0)
    per_sample = PuzzleDataset(persons, cfg, train=True, seed=3)
    on_device = PuzzleDataset(persons, cfg, train=True, seed=3, render_on_device=True)
    keys = [(2, i) for i in range(8)]
    a = torch.utils.data.default_collate([per_sample[k] for k in keys])
    b = torch.utils.data.default_collate([on_device[k] for k in keys])
    assert torch.equal(a["centers_xy"], b["centers_xy"]) and torch.equal(a["mask"], b["mask"])
    assert b["crop"].dtype == torch.uint8 and b["crop"].shape == (8, 96, 96, 3) and "image" not in b
    images = batch_images(b, cfg, torch.device("cpu"))
    assert images.shape == network_input(a["image"]).shape == (8, 3, 96, 96)
    diff = np.abs(_to_grey_levels(images) - _to_grey_levels(network_input(a["image"])))
    assert diff.mean() <= 1.5 and np.percentile(diff, 99) <= 8.0, (diff.mean(), np.percentile(diff, 99))
    assert torch.equal(batch_images(a, cfg, torch.device("cpu")), a["image"])  # loader images pass through
    with pytest.raises(ValueError, match="render_on_device is for training"):
        PuzzleDataset(persons, cfg, train=False, render_on_device=True)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (GPU check of augment_on: device)"
)
def test_rendering_on_cuda_equals_rendering_on_the_cpu():
    cfg = PretrainConfig(n=6, input_size=96, heatmap_size=24, concat_original=True)
    side = padded_size(96, 6)
    crops = torch.from_numpy(np.stack([_smooth_crop(s, side) for s in range(8)]))
    draws = [draw_puzzle(cfg, np.random.default_rng(s), augment=True) for s in range(8)]
    color = torch.from_numpy(np.stack([d.color.to_vector() for d in draws]))
    perm = torch.from_numpy(np.stack([d.perm for d in draws]))
    matrix = torch.from_numpy(np.stack([d.matrix for d in draws]))
    on_cpu = render_batch(crops, color, perm, matrix, cfg)
    on_cuda = render_batch(crops.cuda(), color, perm, matrix, cfg)
    assert on_cuda.is_cuda
    torch.testing.assert_close(
        on_cuda.cpu(), on_cpu, atol=2e-3, rtol=0
    )  # float kernels differ in the last bits
