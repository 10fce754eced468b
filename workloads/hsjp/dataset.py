"""Pretext samples over COCO person instances (paper §3.1–3.2, §3.5).

One sample: the person box → a square crop (aspect 1, ×1.25 padding: `load_persons(aspect_ratio=1)`,
HRNet's affine warp) at the padded side S = N·ceil(input/N) (puzzle.py), a Fisher–Yates shuffle,
[train] colour augmentation of the crop, the shuffled composite, [train] the spatial affine, both
mapped to input×input in one warp; the targets are the N² patch centres moved by the same affine and
the mask M. Heatmaps are made later from the centres (targets.make_heatmaps, batched on the device).

`concat_original` (paper §5.3, Fig. 7): the unshuffled crop is put on the LEFT and the shuffled
composite on the RIGHT (reading order: the reference, then the puzzle), giving an input×2·input
image; only the right half is spatially augmented, so the targets (and M) live in the right half and
the heatmap covers both halves. Colour augmentation is shared by both halves.

Randomness: training samples draw everything from `engine.sample_rng(seed, epoch, index)`; validation
samples (no augmentation, paper §3.5) draw only their shuffle from `default_rng([PRECISION_SEED, index])`,
a constant independent of the run's seed, so every run is scored on the same puzzles.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from workloads.config import DataConfig, PretrainConfig
from workloads.data.coco import PersonInstance, load_persons
from workloads.data.transforms import (
    affine_points,
    get_affine_transform,
    normalize_image,
    read_image,
    read_image_skipping,
    warp_crop,
)
from workloads.engine import sample_rng
from workloads.hsjp.augment import (
    SpatialParams,
    color_augment,
    composite_matrix,
    sample_spatial,
    warp_composite,
)
from workloads.hsjp.puzzle import fisher_yates, padded_size, shuffle_image, shuffled_centers_xy
from workloads.hsjp.targets import inside_mask

log = logging.getLogger(__name__)

PRECISION_SEED = 35_000  # fixed seed of the validation shuffles (any constant; never the run's seed)
CROP_ASPECT = 1.0  # square person crops (paper §3.1: 224×224)


@dataclass
class PuzzleSample:
    image: np.ndarray
    """[input, input (·2 with concat_original), 3] uint8 RGB network input."""
    centers_xy: np.ndarray
    """[N², 2] float32 xy input px: row i = where original patch i's centre ended up (paper p_i)."""
    mask: np.ndarray
    """[N²] float32 M_i: 1 when that centre lies inside the (shuffled) image."""
    perm: np.ndarray
    """[N²] int64: composite position k shows original patch perm[k]."""


def read_crop(instance: PersonInstance, side_px: int, image: np.ndarray | None = None) -> np.ndarray:
    """[side, side, 3] uint8: the instance's box crop (HRNet affine, no rotation); `image` = its
    already decoded image, else it is read."""
    image = read_image(instance.image_path) if image is None else image
    mat = get_affine_transform(instance.center_xy, instance.scale_wh, 0.0, (side_px, side_px))
    return warp_crop(image, mat, (side_px, side_px))


def build_sample(
    crop: np.ndarray, cfg: PretrainConfig, rng: np.random.Generator, augment: bool
) -> PuzzleSample:
    """A puzzle from a [S, S, 3] uint8 crop (S = padded_size(cfg.input_size, cfg.n)); pure given `rng`."""
    n, size = cfg.n, cfg.input_size
    side = padded_size(size, n)
    if crop.shape[:2] != (side, side):
        raise ValueError(
            f"build_sample: crop must be {side}×{side} (padded size for input {size}, N={n}), "
            f"got {crop.shape}"
        )
    perm = fisher_yates(n * n, rng)
    if augment:
        crop = color_augment(crop, cfg.aug, rng)
    params = sample_spatial(cfg.aug, rng) if augment else SpatialParams()
    mat = composite_matrix(side, size, params)
    shuffled = warp_composite(shuffle_image(crop, perm, n), mat, size)
    centers = affine_points(shuffled_centers_xy(perm, n, side // n), mat)
    mask = inside_mask(centers, size, size)
    if cfg.concat_original:
        original = warp_composite(crop, composite_matrix(side, size, SpatialParams()), size)
        shuffled = np.concatenate([original, shuffled], axis=1)
        centers = centers + np.array([size, 0.0])
    return PuzzleSample(np.ascontiguousarray(shuffled), centers.astype(np.float32), mask, perm)


class PuzzleDataset(Dataset):
    """Training (`train=True`, key `(epoch, index)` from engine.EpochSampler) or validation puzzles
    (`train=False`, key = index). Items: {"image": [3, H, W] float (ImageNet-normalised),
    "centers_xy": [N², 2] float32, "mask": [N²] float32}."""

    def __init__(self, instances: list[PersonInstance], cfg: PretrainConfig, *, train: bool, seed: int = 0):
        if not instances:
            raise ValueError(
                f"PuzzleDataset: no person instances ({'train' if train else 'val'} split is empty)"
            )
        self.instances, self.cfg, self.train, self.seed = instances, cfg, train, seed
        self.side = padded_size(cfg.input_size, cfg.n)
        self.skipped: set[str] = set()
        """Unreadable image files met so far (in this process); their persons are replaced by the next."""

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, torch.Tensor]:
        if self.train:
            epoch, index = key
        else:
            epoch, index = 0, key[1] if isinstance(key, tuple) else key
        # a corrupt image: the next person stands in (warned and counted), with its own randomness
        index, image = read_image_skipping(self.instances, index, self.skipped)
        if self.train:
            rng = sample_rng(self.seed, epoch, index)
        else:
            rng = np.random.default_rng([PRECISION_SEED, index])
        crop = read_crop(self.instances[index], self.side, image)
        sample = build_sample(crop, self.cfg, rng, augment=self.train)
        return {
            "image": normalize_image(sample.image),
            "centers_xy": torch.from_numpy(sample.centers_xy),
            "mask": torch.from_numpy(sample.mask),
        }


def load_instances(data: DataConfig, *, train: bool, seed: int) -> list[PersonInstance]:
    """All non-crowd persons of the split (no keypoint labels needed), capped as `data` says:
    train — the first max_train_instances after a `seed`-shuffle; val — the first max_val_instances by id."""
    split = data.train_split if train else data.val_split
    persons = load_persons(data.coco_root, split, with_keypoints=False, aspect_ratio=CROP_ASPECT)
    cap = data.max_train_instances if train else data.max_val_instances
    if cap is not None and cap < len(persons):
        if train:
            keep = np.sort(np.random.default_rng(seed).permutation(len(persons))[:cap])
            persons = [persons[i] for i in keep]
        else:
            persons = persons[:cap]
    log.info(
        "pretext %s: %d person instances from %s/%s",
        "train" if train else "val",
        len(persons),
        data.coco_root,
        split,
    )
    return persons
