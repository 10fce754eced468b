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
from workloads.data.device_decode import BYTES_KEY, read_jpeg_bytes
from workloads.data.transforms import (
    affine_points,
    get_affine_transform,
    read_image,
    read_image_skipping,
    warp_crop,
)
from workloads.engine import sample_rng
from workloads.hsjp.augment import (
    ColorParams,
    SpatialParams,
    apply_color,
    composite_matrix,
    sample_color,
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
    return warp_crop(image, crop_matrix(instance, side_px), (side_px, side_px))


def crop_matrix(instance: PersonInstance, side_px: int) -> np.ndarray:
    """[2, 3] image px → the instance's square side×side crop (HRNet affine, no rotation)."""
    return get_affine_transform(instance.center_xy, instance.scale_wh, 0.0, (side_px, side_px))


@dataclass
class PuzzleDraw:
    """Everything random about one puzzle, and the geometry that follows from it (no pixels)."""

    perm: np.ndarray
    """[N²] int64: composite position k shows original patch perm[k]."""
    color: ColorParams | None
    """The colour augmentation (None: none — validation)."""
    matrix: np.ndarray
    """[2, 3] float64 continuous-coordinate affine: padded composite (S²) → input (input²)."""
    centers_xy: np.ndarray
    """[N², 2] float32 xy input px (right half with concat_original)."""
    mask: np.ndarray
    """[N²] float32 M_i."""


def draw_puzzle(cfg: PretrainConfig, rng: np.random.Generator, augment: bool) -> PuzzleDraw:
    """The draws of one puzzle in a fixed order — shuffle, colour, spatial — and its targets; pure given `rng`.
    Both renderings (per sample here, batched on the device in batched.py) start from this."""
    n, size = cfg.n, cfg.input_size
    side = padded_size(size, n)
    perm = fisher_yates(n * n, rng)
    color = sample_color(cfg.aug, rng) if augment else None
    params = sample_spatial(cfg.aug, rng) if augment else SpatialParams()
    mat = composite_matrix(side, size, params)
    centers = affine_points(shuffled_centers_xy(perm, n, side // n), mat)
    mask = inside_mask(centers, size, size)
    if cfg.concat_original:
        centers = centers + np.array([size, 0.0])
    return PuzzleDraw(perm, color, mat, centers.astype(np.float32), mask)


def check_crop(crop, cfg: PretrainConfig) -> int:
    """The padded side S, after checking that the [S, S, 3] `crop` has it."""
    side = padded_size(cfg.input_size, cfg.n)
    if tuple(crop.shape[-3:-1]) != (side, side):
        raise ValueError(
            f"puzzle: crops must be {side}×{side} (padded size for input {cfg.input_size}, N={cfg.n}), "
            f"got shape {tuple(crop.shape)}"
        )
    return side


def render_sample(crop: np.ndarray, draw: PuzzleDraw, cfg: PretrainConfig) -> np.ndarray:
    """The network input of `draw` from the [S, S, 3] uint8 crop, per sample with OpenCV:
    colour on the crop, shuffle, one warp to input×input, the original on the left with concat_original."""
    size, side = cfg.input_size, check_crop(crop, cfg)
    if draw.color is not None:
        crop = apply_color(crop, draw.color)
    shuffled = warp_composite(shuffle_image(crop, draw.perm, cfg.n), draw.matrix, size)
    if cfg.concat_original:
        original = warp_composite(crop, composite_matrix(side, size, SpatialParams()), size)
        shuffled = np.concatenate([original, shuffled], axis=1)
    return np.ascontiguousarray(shuffled)


def build_sample(
    crop: np.ndarray, cfg: PretrainConfig, rng: np.random.Generator, augment: bool
) -> PuzzleSample:
    """A puzzle from a [S, S, 3] uint8 crop (S = padded_size(cfg.input_size, cfg.n)); pure given `rng`."""
    draw = draw_puzzle(cfg, rng, augment)
    return PuzzleSample(render_sample(crop, draw, cfg), draw.centers_xy, draw.mask, draw.perm)


class PuzzleDataset(Dataset):
    """Training (`train=True`, key `(epoch, index)` from engine.EpochSampler) or validation puzzles
    (`train=False`, key = index). Items: {"image": [H, W, 3] uint8 RGB (normalised on the training device,
    `transforms.network_input`: a quarter of the bytes of a float input),
    "centers_xy": [N², 2] float32, "mask": [N²] float32}.

    `render_on_device=True` (training only; `augment_on: device`): instead of "image", the item carries
    the draws and the uint8 crop they apply to — "crop" [S, S, 3] uint8, "color" [14] float32
    (ColorParams.to_vector), "perm" [N²] int64, "matrix" [2, 3] float64 — and batched.render_batch makes
    the images on the device. Same key → same draws, centres and mask as the per-sample path.
    `decode_on_device=True` as well (`data.decode_on: device`): no decoding here either — "jpeg" (the
    file's bytes), "path" and "crop_matrix" [2, 3] (image → S×S crop) replace "crop"; collate with
    device_decode.collate_with_bytes."""

    def __init__(
        self,
        instances: list[PersonInstance],
        cfg: PretrainConfig,
        *,
        train: bool,
        seed: int = 0,
        render_on_device: bool = False,
        decode_on_device: bool = False,
    ):
        if not instances:
            raise ValueError(
                f"PuzzleDataset: no person instances ({'train' if train else 'val'} split is empty)"
            )
        if render_on_device and not train:
            raise ValueError(
                "PuzzleDataset: render_on_device is for training puzzles (validation has no augmentation)"
            )
        self.instances, self.cfg, self.train, self.seed = instances, cfg, train, seed
        if decode_on_device and not render_on_device:
            raise ValueError(
                "PuzzleDataset: decode_on_device needs render_on_device (the crop is made on the device)"
            )
        self.render_on_device, self.decode_on_device = render_on_device, decode_on_device
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
        reader = read_jpeg_bytes if self.decode_on_device else read_image
        index, image = read_image_skipping(self.instances, index, self.skipped, reader)
        if self.train:
            rng = sample_rng(self.seed, epoch, index)
        else:
            rng = np.random.default_rng([PRECISION_SEED, index])
        draw = draw_puzzle(self.cfg, rng, augment=self.train)
        item = {"centers_xy": torch.from_numpy(draw.centers_xy), "mask": torch.from_numpy(draw.mask)}
        inst = self.instances[index]
        if self.decode_on_device:
            item.update(
                {
                    BYTES_KEY: image,
                    "path": inst.image_path,
                    "crop_matrix": torch.from_numpy(crop_matrix(inst, self.side)),
                }
            )
        else:
            crop = read_crop(inst, self.side, image)
        if self.render_on_device:
            assert draw.color is not None  # training draws always carry colour params
            if not self.decode_on_device:
                item["crop"] = torch.from_numpy(np.ascontiguousarray(crop))
            item.update(
                color=torch.from_numpy(draw.color.to_vector()),
                perm=torch.from_numpy(draw.perm),
                matrix=torch.from_numpy(draw.matrix),
            )
        else:
            item["image"] = torch.from_numpy(render_sample(crop, draw, self.cfg))  # uint8 HWC
        return item


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
