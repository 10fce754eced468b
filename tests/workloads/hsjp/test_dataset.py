"""Pretext samples on the real COCO samples: exact puzzles, seeded keys, fixed validation shuffles."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from workloads.config import DataConfig, PretrainConfig
from workloads.hsjp.dataset import PuzzleDataset, build_sample, load_instances, read_crop
from workloads.hsjp.puzzle import (
    compose_patches,
    inverse_permutation,
    padded_size,
    shuffled_centers_xy,
    split_patches,
)

CFG = PretrainConfig(n=2, input_size=32, heatmap_size=8)


@pytest.fixture
def persons(coco_mini):
    data = DataConfig(coco_root=str(coco_mini), max_train_instances=6, max_val_instances=4)
    return data, load_instances(data, train=True, seed=0), load_instances(data, train=False, seed=0)


@pytest.mark.realdata
def test_caps_and_all_persons(coco_mini, persons):
    data, train, val = persons
    assert len(train) == 6 and len(val) == 4
    every = load_instances(replace(data, max_train_instances=None), train=True, seed=0)
    assert len(every) >= 80  # all non-crowd persons, keypoints or not (coco-mini: 87 train annotations)
    assert all(abs(p.scale_wh[0] - p.scale_wh[1]) < 1e-9 for p in every)  # square crops (aspect 1)
    again = load_instances(data, train=True, seed=0)
    assert [p.ann_id for p in again] == [p.ann_id for p in train]
    assert [p.ann_id for p in load_instances(data, train=True, seed=1)] != [p.ann_id for p in train]


@pytest.mark.realdata
def test_unaugmented_sample_unshuffles_to_the_crop(persons):
    _, train, _ = persons
    crop = read_crop(train[0], 32)
    sample = build_sample(crop, CFG, np.random.default_rng(0), augment=False)
    unshuffled = compose_patches(split_patches(sample.image, 2)[inverse_permutation(sample.perm)], 2)
    np.testing.assert_array_equal(unshuffled, crop)
    np.testing.assert_allclose(sample.centers_xy, shuffled_centers_xy(sample.perm, 2, 16))
    assert sample.mask.tolist() == [1, 1, 1, 1]


@pytest.mark.realdata
def test_padded_sample_is_resized_to_the_input(persons):
    _, train, _ = persons
    cfg = replace(CFG, n=3)  # 3 does not divide 32: the puzzle is made at 33 px
    side = padded_size(32, 3)
    crop = read_crop(train[1], side)
    sample = build_sample(crop, cfg, np.random.default_rng(0), augment=False)
    assert sample.image.shape == (32, 32, 3)
    np.testing.assert_allclose(
        sample.centers_xy, shuffled_centers_xy(sample.perm, 3, 11) * 32 / 33, atol=1e-5
    )


@pytest.mark.realdata
def test_training_items_are_seeded_by_key(persons):
    _, train, _ = persons
    ds = PuzzleDataset(train, CFG, train=True, seed=0)
    a, b = ds[(0, 2)], ds[(0, 2)]
    assert (
        a["image"].shape == (32, 32, 3)
        and a["image"].dtype == torch.uint8
        and a["centers_xy"].shape == (4, 2)
        and a["mask"].shape == (4,)
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(ds[(1, 2)]["image"], a["image"])  # another epoch, another augmentation
    assert not torch.equal(PuzzleDataset(train, CFG, train=True, seed=1)[(0, 2)]["image"], a["image"])


@pytest.mark.realdata
def test_validation_shuffle_is_fixed_per_instance(persons):
    _, _, val = persons
    ds = PuzzleDataset(val, CFG, train=False, seed=0)
    other_run = PuzzleDataset(val, replace(CFG, seed=5), train=False, seed=5)
    for i in range(len(val)):
        assert torch.equal(ds[i]["centers_xy"], other_run[i]["centers_xy"])
        assert torch.equal(ds[i]["image"], other_run[i]["image"])
    assert ds[0]["mask"].sum() == 4  # no augmentation: every centre inside
    perms = {tuple(ds[i]["centers_xy"].flatten().tolist()) for i in range(len(val))}
    assert len(perms) > 1  # shuffles differ between instances


@pytest.mark.realdata
def test_concat_original_puts_the_crop_left_and_targets_right(persons):
    _, _, val = persons
    cfg = replace(CFG, concat_original=True)
    item = PuzzleDataset(val, cfg, train=False)[0]
    assert item["image"].shape == (32, 64, 3)
    assert torch.equal(item["image"][:, :32], torch.from_numpy(read_crop(val[0], 32)))
    assert (item["centers_xy"][:, 0] >= 32).all() and (item["centers_xy"][:, 0] < 64).all()
    train_item = PuzzleDataset(val, cfg, train=True)[(0, 0)]
    kept = train_item["mask"] > 0
    assert (train_item["centers_xy"][kept, 0] >= 32).all()
