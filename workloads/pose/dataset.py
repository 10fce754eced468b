"""Top-down COCO keypoint training set with the official augmentations (paper §4.1-§4.2).

Samples are the persons with keypoints of the training split, selected with HRNet's filter
(`workloads.data.coco.load_persons(with_keypoints=True)`). Augmentations follow the official
`JointsDataset.__getitem__` (HRNet w32_256x192 config; docs/pose-reference.md §3), in its order:

1. half-body (prob `half_body_prob`, needs > `half_body_min_joints` visible joints): upper body
   (joints 0-10) if randn < 0.5 (sic, ≈69 %) and > 2 upper joints visible, else lower body if > 2
   visible, else upper; < 2 selected → skipped; box = the joints' extent, aspect-fixed, ×1.5 / 200;
2. scale s ← s · clip(randn·sf + 1, 1 − sf, 1 + sf);
3. rotation r = clip(randn·rf, −2rf, 2rf) with probability `rotate_prob`, else 0;
4. horizontal flip with p = 0.5: joints x ← W_img − 1 − x with COCO left/right pairs swapped, centre
   x ← W_img − 1 − cx; the image mirror is folded into the crop's affine (one warp, same pixels);
then the HRNet affine crop to `input_hw`, ImageNet mean/std on RGB, and Gaussian targets with
target weights (`workloads.pose.targets`). Every random draw comes from the sample's RNG
`engine.sample_rng(seed, epoch, index)`, so a sample does not depend on loader workers or resumes.

Training subsets (paper §4.4, Fig. 6; `data.max_train_instances` for small runs): see
`select_train_instances`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from workloads.config import DataConfig, FinetuneConfig, PoseAugConfig
from workloads.data.coco import PIXEL_STD, PersonInstance, fit_aspect, load_persons
from workloads.data.device_decode import BYTES_KEY, read_jpeg_skipping
from workloads.data.keypoints import FLIP_PAIRS, LOWER_BODY_IDS, UPPER_BODY_IDS
from workloads.data.transforms import (
    affine_points,
    flip_joints,
    get_affine_transform,
    normalize_image,
    read_image_skipping,
    warp_crop,
)
from workloads.engine import sample_rng
from workloads.pose.targets import make_heatmaps

log = logging.getLogger(__name__)

HALF_BODY_PADDING = 1.5  # official half_body_transform: scale × 1.5 (instead of the box's 1.25)
CAP_SEED = 0  # the `max_train_instances` shuffle: fixed, so every trial of a capped study sees one data set
LABEL_STREAM = 0x1ABE1  # separates the label-subset stream from other uses of cfg.seed


@dataclass(frozen=True)
class AugParams:
    """One sample's augmentation, drawn before any pixel is touched."""

    center_xy: np.ndarray  # [2] crop centre in image px, after half-body (before the flip)
    scale_wh: np.ndarray  # [2] crop size / PIXEL_STD, after half-body and scaling
    rot_deg: float  # counter-clockwise degrees (HRNet convention)
    flip: bool


# ------------------------------------------------------------------------------- augmentation draws
def half_body_box(
    joints_xy: np.ndarray, visible: np.ndarray, aspect_ratio: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray] | None:
    """Official half_body_transform: (center_xy [2], scale_wh [2]) of the upper or lower body, or None.

    joints_xy [17, 2] image px; visible [17] (> 0 = labelled).
    """
    vis = np.asarray(visible) > 0
    upper = [j for j in UPPER_BODY_IDS if vis[j]]
    lower = [j for j in LOWER_BODY_IDS if vis[j]]
    if rng.standard_normal() < 0.5 and len(upper) > 2:  # sic: randn, not rand (official)
        chosen = upper
    else:
        chosen = lower if len(lower) > 2 else upper
    if len(chosen) < 2:
        return None
    pts = np.asarray(joints_xy, dtype=np.float64)[chosen]  # [n, 2]
    center = pts.mean(axis=0)
    w, h = fit_aspect(*(pts.max(axis=0) - pts.min(axis=0)), aspect_ratio)
    return center, np.array([w, h]) / PIXEL_STD * HALF_BODY_PADDING


def sample_augmentation(
    inst: PersonInstance, aug: PoseAugConfig, aspect_ratio: float, rng: np.random.Generator
) -> AugParams:
    """Draw half-body, scale, rotation and flip in the official order from `rng`."""
    center = np.array(inst.center_xy, dtype=np.float64)
    scale = np.array(inst.scale_wh, dtype=np.float64)
    vis = inst.joints_vis
    if vis.sum() > aug.half_body_min_joints and rng.random() < aug.half_body_prob:
        box = half_body_box(inst.keypoints[:, :2], vis, aspect_ratio, rng)
        if box is not None:
            center, scale = box
    sf, rf = aug.scale_factor, aug.rotate_deg
    scale = scale * float(np.clip(rng.standard_normal() * sf + 1, 1 - sf, 1 + sf))
    rot = (
        float(np.clip(rng.standard_normal() * rf, -2 * rf, 2 * rf))
        if rng.random() <= aug.rotate_prob
        else 0.0
    )
    flip = bool(aug.flip and rng.random() <= 0.5)
    return AugParams(center, scale, rot, flip)


def identity_params(inst: PersonInstance) -> AugParams:
    """No augmentation: the instance's own box."""
    return AugParams(
        np.array(inst.center_xy, dtype=np.float64), np.array(inst.scale_wh, dtype=np.float64), 0.0, False
    )


# ----------------------------------------------------------------------------------- geometry
def crop_geometry(
    params: AugParams, joints_xy: np.ndarray, visible: np.ndarray, image_width: int, input_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop matrices and joints of one sample.

    Returns (image_mat [2, 3]: original image px → crop px, flip included; joints_crop [17, 2] xy crop px;
    visible [17], left/right swapped when flipped).
    """
    output_wh = (input_hw[1], input_hw[0])
    center = params.center_xy.copy()
    joints, vis = np.asarray(joints_xy, dtype=np.float64), np.asarray(visible)
    mirror = np.eye(3)
    if params.flip:
        joints, vis = flip_joints(joints, vis, image_width, FLIP_PAIRS)
        center[0] = image_width - 1 - center[0]
        mirror = np.array([[-1.0, 0.0, image_width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    mat = get_affine_transform(
        center, params.scale_wh, params.rot_deg, output_wh
    )  # [2, 3] flipped image → crop
    image_mat = mat @ mirror  # [2, 3]: the mirror first, then the crop (official: flip image, then warp)
    return image_mat, affine_points(joints, mat), vis


def make_sample(
    image_rgb: np.ndarray, inst: PersonInstance, params: AugParams, cfg: FinetuneConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image [3, H, W] normalised, heatmaps [17, h, w], weights [17]) of one person under `params`."""
    image_mat, joints, vis = crop_geometry(
        params, inst.keypoints[:, :2], inst.joints_vis, image_rgb.shape[1], cfg.input_hw
    )
    crop = warp_crop(image_rgb, image_mat, (cfg.input_hw[1], cfg.input_hw[0]))  # [H, W, 3] uint8
    heatmaps, weights = make_heatmaps(joints, vis, cfg.input_hw, cfg.heatmap_hw, cfg.sigma)
    return normalize_image(crop), torch.from_numpy(heatmaps), torch.from_numpy(weights)


def make_sample_joints(
    image_rgb: np.ndarray, inst: PersonInstance, params: AugParams, cfg: FinetuneConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`make_sample` without the heatmaps and the normalisation: (image [H, W, 3] uint8 RGB, joints [17, 2]
    float64 xy crop px, visible [17] float32). The training step normalises the batch on the device
    (`transforms.network_input`: the numbers of `normalize_image`, a quarter of the bytes through the
    loader queues and the host→device copy) and makes the same targets there (`targets.make_heatmaps_batched`)."""
    image_mat, joints, vis = crop_geometry(
        params, inst.keypoints[:, :2], inst.joints_vis, image_rgb.shape[1], cfg.input_hw
    )
    crop = warp_crop(image_rgb, image_mat, (cfg.input_hw[1], cfg.input_hw[0]))  # [H, W, 3] uint8
    return (
        torch.from_numpy(np.ascontiguousarray(crop)),
        torch.from_numpy(joints),
        torch.from_numpy(np.asarray(vis, dtype=np.float32)),
    )


# ----------------------------------------------------------------------------------- the data set
class PoseTrainDataset(Dataset):
    """Training samples keyed by `(epoch, index)` (engine.make_loader); all randomness from sample_rng.

    Items are (image [3, H, W] normalised, heatmaps [17, h, w], weights [17]), or with `device_targets`
    (image [H, W, 3] uint8, joints [17, 2] xy crop px, visible [17]) for the training step to normalise and
    build the same targets on its device, or with
    `decode_on_device` as well (`data.decode_on: device`) a dict {"jpeg": the file's bytes, "path",
    "crop_matrix" [2, 3] image → crop (flip included), "joints", "visible"} for the step to decode and crop
    on its device (collate with device_decode.collate_with_bytes).
    """

    def __init__(
        self,
        instances: list[PersonInstance],
        cfg: FinetuneConfig,
        seed: int,
        augment: bool = True,
        device_targets: bool = False,
        decode_on_device: bool = False,
    ):
        if not instances:
            raise ValueError(
                "PoseTrainDataset: no training instances (check data.train_split and the filters)"
            )
        self.instances, self.cfg, self.seed, self.augment = list(instances), cfg, seed, augment
        if decode_on_device and not device_targets:
            raise ValueError(
                "PoseTrainDataset: decode_on_device needs device_targets (both are made on the device)"
            )
        self.device_targets, self.decode_on_device = device_targets, decode_on_device
        self.aspect_ratio = cfg.input_hw[1] / cfg.input_hw[0]  # W / H (HRNet: 192 / 256)
        self._threads_limited = False
        self.skipped: set[str] = set()
        """Unreadable image files met so far (in this process); their persons are replaced by the next."""

    def __len__(self) -> int:
        return len(self.instances)

    def sample_params(self, key: tuple[int, int]) -> AugParams:
        epoch, index = key
        inst = self.instances[index]
        if not self.augment:
            return identity_params(inst)
        return sample_augmentation(inst, self.cfg.aug, self.aspect_ratio, sample_rng(self.seed, epoch, index))

    def __getitem__(self, key: tuple[int, int]):
        if not self._threads_limited and get_worker_info() is not None:
            cv2.setNumThreads(1)  # one decode/warp thread per loader worker (workers already run in parallel)
            self._threads_limited = True
        if self.decode_on_device:
            index, data = read_jpeg_skipping(self.instances, key[1], self.skipped)
            inst = self.instances[index]
            # the flip mirrors about the annotated image width (the image itself is decoded on the device)
            image_mat, joints, vis = crop_geometry(
                self.sample_params((key[0], index)),
                inst.keypoints[:, :2],
                inst.joints_vis,
                inst.image_wh[0],
                self.cfg.input_hw,
            )
            return {
                BYTES_KEY: data,
                "path": inst.image_path,
                "crop_matrix": torch.from_numpy(image_mat),
                "joints": torch.from_numpy(joints),
                "visible": torch.from_numpy(np.asarray(vis, dtype=np.float32)),
            }
        index, image = read_image_skipping(self.instances, key[1], self.skipped)
        build = make_sample_joints if self.device_targets else make_sample
        return build(image, self.instances[index], self.sample_params((key[0], index)), self.cfg)


# ----------------------------------------------------------------------------------- subsets
def label_subset(num_instances: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of round(fraction · n) instances (at least 1).

    Paper §4.4 / Fig. 6 finetunes on "a randomly selected subset of the data set" for label shares
    0.1-0.9. Sampling person instances (not images) gives exactly the requested share of labelled
    persons, whatever the number of persons per image. The same (n, fraction, seed) always gives the
    same subset; subsets of different fractions are drawn independently of each other (a larger
    fraction need not contain a smaller one), as separate random draws in the paper would be.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction {fraction!r} must be in (0, 1]")
    if fraction >= 1.0:
        return np.arange(num_instances)
    count = min(num_instances, max(1, round(fraction * num_instances)))
    rng = np.random.default_rng([seed, LABEL_STREAM])
    return np.sort(rng.permutation(num_instances)[:count])


def cap_subset(num_instances: int, max_instances: int | None) -> np.ndarray:
    """Sorted indices of the first `max_instances` after a shuffle with the fixed CAP_SEED (all if None)."""
    if max_instances is None or max_instances >= num_instances:
        return np.arange(num_instances)
    rng = np.random.default_rng([CAP_SEED, num_instances])
    return np.sort(rng.permutation(num_instances)[:max_instances])


def select_train_instances(
    instances: list[PersonInstance], cfg: FinetuneConfig, data: DataConfig
) -> list[PersonInstance]:
    """The training persons of a stage: `data.max_train_instances` cap first, then the label fraction.

    The cap defines the data set under study (for small runs; a fixed shuffle, the same for every
    trial and seed); the label fraction is then a share of that set, so Fig. 6's x-axis keeps its
    meaning in a capped smoke study. Without a cap the fraction is of all persons, as in the paper.
    """
    capped = [instances[i] for i in cap_subset(len(instances), data.max_train_instances)]
    chosen = [capped[i] for i in label_subset(len(capped), cfg.label_fraction, cfg.seed)]
    log.info(
        "training persons: %d of %d (cap %s, label fraction %g, seed %d)",
        len(chosen),
        len(instances),
        data.max_train_instances,
        cfg.label_fraction,
        cfg.seed,
    )
    return chosen


def load_train_instances(cfg: FinetuneConfig, data: DataConfig) -> tuple[list[PersonInstance], int]:
    """(selected training persons, number of persons before selection) of `data.train_split`."""
    aspect_ratio = cfg.input_hw[1] / cfg.input_hw[0]
    persons = load_persons(data.coco_root, data.train_split, with_keypoints=True, aspect_ratio=aspect_ratio)
    return select_train_instances(persons, cfg, data), len(persons)
