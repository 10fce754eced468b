"""Top-down training samples: image/joint/heatmap consistency under the official augmentations,
flip semantics, and the label-fraction / cap subsets."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from workloads.config import DataConfig, FinetuneConfig, PoseAugConfig
from workloads.data.coco import PersonInstance, box_to_center_scale
from workloads.data.keypoints import FLIP_PAIRS
from workloads.data.transforms import flip_joints, get_affine_transform, warp_crop
from workloads.pose.dataset import (
    AugParams,
    PoseTrainDataset,
    crop_geometry,
    half_body_box,
    label_subset,
    make_sample,
    select_train_instances,
)

INPUT_HW, HEATMAP_HW = (128, 96), (32, 24)
L_WRIST, R_WRIST = 9, 10
IMG_W, IMG_H = 240, 320


def _instance(tmp_path, right_wrist_labelled: bool = True) -> PersonInstance:
    """A 240×320 black image with a red dot on the left wrist and a green dot on the right wrist;
    all 17 joints labelled (spread over the body box) so half-body can trigger."""
    rng = np.random.default_rng(1)
    kp = np.zeros((17, 3))
    kp[:, 0] = rng.uniform(70, 170, 17)
    kp[:, 1] = np.linspace(60, 260, 17)
    kp[:, 2] = 2
    kp[L_WRIST, :2] = (80, 150)
    kp[R_WRIST, :2] = (165, 170)
    if not right_wrist_labelled:
        kp[R_WRIST] = 0
    img = np.zeros((IMG_H, IMG_W, 3), np.uint8)  # RGB
    cv2.circle(img, (80, 150), 7, (255, 0, 0), -1)
    cv2.circle(img, (165, 170), 7, (0, 255, 0), -1)
    path = tmp_path / "person.png"
    cv2.imwrite(str(path), img[:, :, ::-1])  # cv2 writes BGR
    box = np.array([60.0, 50.0, 120.0, 220.0])
    center, scale = box_to_center_scale(box, INPUT_HW[1] / INPUT_HW[0])
    return PersonInstance(
        image_id=1,
        ann_id=1,
        image_path=str(path),
        image_wh=(IMG_W, IMG_H),
        bbox_xywh=box,
        center_xy=center,
        scale_wh=scale,
        keypoints=kp,
        num_keypoints=int((kp[:, 2] > 0).sum()),
        area=float(box[2] * box[3]),
        score=1.0,
    )


def _cfg(**aug) -> FinetuneConfig:
    return FinetuneConfig(input_hw=INPUT_HW, heatmap_hw=HEATMAP_HW, sigma=2.0, aug=PoseAugConfig(**aug))


def _dot_centroid(image, channel: int):
    """Centroid (x, y) in crop px of the pixels that are bright in `channel` and dark in the other."""
    other = 1 - channel
    image = np.asarray(image)
    mask = (image[channel] > 0.0) & (image[other] < -1.0)  # normalised: 255 → ≈ +2.2, 0 → ≈ −2.0
    if mask.sum() < 4:
        return None
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def _peak_xy(heatmap) -> np.ndarray:
    heatmap = np.asarray(heatmap)
    y, x = np.unravel_index(int(heatmap.argmax()), heatmap.shape)
    return np.array([x, y]) * 4.0  # heatmap px → input px (stride 4)


def _check_dots(image, target, weight, flipped: bool) -> int:
    """Red (physical left wrist) lands on channel 9's peak, or 10's when flipped; green the other."""
    checked = 0
    for channel, joint in ((0, L_WRIST), (1, R_WRIST)):
        label = joint if not flipped else (R_WRIST if joint == L_WRIST else L_WRIST)
        dot = _dot_centroid(image, channel)
        if dot is None or not (6 < dot[0] < INPUT_HW[1] - 6 and 6 < dot[1] < INPUT_HW[0] - 6):
            continue  # augmented out of (or to the edge of) the crop
        assert weight[label] == 1.0
        assert np.abs(_peak_xy(target[label]) - dot).max() <= 3.5, (label, _peak_xy(target[label]), dot)
        checked += 1
    return checked


def test_no_augmentation_joints_land_on_heatmap_peaks(tmp_path):
    inst = _instance(tmp_path)
    ds = PoseTrainDataset([inst], _cfg(), seed=0, augment=False)
    image, target, weight = ds[(0, 0)]
    assert image.shape == (3, *INPUT_HW) and target.shape == (17, *HEATMAP_HW) and weight.shape == (17,)
    assert _check_dots(image, target, weight, flipped=False) == 2
    assert float(target.max()) == pytest.approx(1.0)


def test_rotation_and_flip_keep_image_and_targets_aligned(tmp_path):
    inst = _instance(tmp_path)
    cfg = _cfg()
    for rot in (0.0, 30.0, -70.0):
        for flip in (False, True):
            params = AugParams(inst.center_xy, inst.scale_wh * 1.1, rot, flip)
            image, target, weight = make_sample(
                cv2.imread(inst.image_path)[:, :, ::-1].copy(), inst, params, cfg
            )
            assert _check_dots(image, target, weight, flipped=flip) == 2


def test_random_augmentations_keep_alignment(tmp_path):
    inst = _instance(tmp_path)
    ds = PoseTrainDataset([inst], _cfg(half_body_prob=0.5), seed=3)
    flips, checked = set(), 0
    for epoch in range(24):
        params = ds.sample_params((epoch, 0))
        flips.add(params.flip)
        image, target, weight = ds[(epoch, 0)]
        checked += _check_dots(image, target, weight, flipped=params.flip)
    assert flips == {False, True} and checked >= 20


def test_flip_swaps_left_and_right_labels(tmp_path):
    inst = _instance(tmp_path, right_wrist_labelled=False)
    params = AugParams(inst.center_xy, inst.scale_wh, 0.0, True)
    image, target, weight = make_sample(cv2.imread(inst.image_path)[:, :, ::-1].copy(), inst, params, _cfg())
    assert weight[L_WRIST] == 0.0 and target[L_WRIST].max() == 0.0  # was the unlabelled right wrist
    assert weight[R_WRIST] == 1.0  # the labelled left wrist, mirrored
    assert np.abs(_peak_xy(target[R_WRIST]) - _dot_centroid(image, 0)).max() <= 3.5


def test_flip_then_unflip_is_identity():
    rng = np.random.default_rng(0)
    joints, vis = rng.uniform(0, 300, (17, 2)), rng.integers(0, 2, 17)
    once = flip_joints(joints, vis, 640, FLIP_PAIRS)
    twice = flip_joints(*once, 640, FLIP_PAIRS)
    np.testing.assert_allclose(twice[0], joints)
    np.testing.assert_array_equal(twice[1], vis)
    assert not np.allclose(once[0], joints)


def test_folded_flip_equals_official_flip_then_warp():
    """Warping the original with the folded matrix = mirroring the image, then the official warp."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    params = AugParams(np.array([30.0, 24.0]), np.array([0.2, 0.26]), 25.0, True)
    image_mat, _, _ = crop_geometry(params, np.zeros((17, 2)), np.ones(17), 70, (32, 24))
    official = warp_crop(
        np.ascontiguousarray(image[:, ::-1]),
        get_affine_transform(np.array([70 - 1 - 30.0, 24.0]), params.scale_wh, 25.0, (24, 32)),
        (24, 32),
    )
    ours = warp_crop(image, image_mat, (24, 32))
    assert np.abs(ours.astype(int) - official.astype(int)).max() <= 1


def test_half_body_picks_a_body_half_box():
    joints = np.stack([np.full(17, 100.0), np.arange(17) * 10.0], axis=1)
    vis = np.ones(17)
    centers = set()
    for seed in range(20):
        center, scale = half_body_box(joints, vis, 0.75, np.random.default_rng(seed))
        assert scale[0] / scale[1] == pytest.approx(0.75)
        centers.add(round(float(center[1]), 3))
    assert centers == {50.0, 135.0}  # upper (joints 0-10, y 0..100) or lower (11-16, y 110..160)
    assert half_body_box(joints, np.eye(17)[0], 0.75, np.random.default_rng(0)) is None  # < 2 joints


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.9, 1.0])
def test_label_fraction_gives_requested_share_deterministically(fraction):
    n = 1234
    sub = label_subset(n, fraction, seed=7)
    assert len(sub) == max(1, round(fraction * n)) and len(np.unique(sub)) == len(sub)
    assert sub.min() >= 0 and sub.max() < n
    np.testing.assert_array_equal(sub, label_subset(n, fraction, seed=7))
    if fraction < 1.0:
        assert not np.array_equal(sub, label_subset(n, fraction, seed=8))


def test_label_fraction_of_tiny_set_keeps_one():
    assert len(label_subset(3, 0.1, seed=0)) == 1


def test_cap_then_fraction_selects_instances(tmp_path):
    inst = _instance(tmp_path)
    many = [inst] * 50
    chosen = select_train_instances(
        many, FinetuneConfig(label_fraction=0.5), DataConfig(max_train_instances=20)
    )
    assert len(chosen) == 10
    assert len(select_train_instances(many, FinetuneConfig(label_fraction=0.3), DataConfig())) == 15
