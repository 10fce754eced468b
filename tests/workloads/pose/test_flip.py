"""Flip test: flip-back on COCO's left/right pairs and the official 1-px shift."""

from __future__ import annotations

import numpy as np
import torch

from workloads.data.keypoints import FLIP_INDEX, FLIP_PAIRS, KEYPOINT_NAMES
from workloads.pose.flip import flip_back, merge_flipped, shift_right


def peaks(points_xy: list[tuple[int, int]], height: int = 16, width: int = 12) -> torch.Tensor:
    """[1, K, H, W] with a single 1 per channel at integer xy."""
    heatmaps = torch.zeros(1, len(points_xy), height, width)
    for k, (x, y) in enumerate(points_xy):
        heatmaps[0, k, y, x] = 1.0
    return heatmaps


def test_flip_back_twice_is_identity():
    heatmaps = torch.rand(2, 17, 16, 12, generator=torch.Generator().manual_seed(0))
    assert torch.equal(flip_back(flip_back(heatmaps)), heatmaps)


def test_flip_back_undoes_mirroring_with_left_right_swapped():
    width = 12
    rng = np.random.default_rng(0)
    joints = [(int(x), int(y)) for x, y in rng.integers(0, [width, 16], size=(17, 2))]
    original = peaks(joints, width=width)
    # What an ideal model sees on the mirrored crop: joint k is where its counterpart was, mirrored.
    mirrored = peaks([(width - 1 - joints[FLIP_INDEX[k]][0], joints[FLIP_INDEX[k]][1]) for k in range(17)])
    assert torch.equal(flip_back(mirrored), original)
    # a mirror without the channel swap would not do (the pairs must be swapped)
    assert not torch.equal(mirrored.flip(3), original)


def test_flip_index_pairs_are_left_right_names():
    for left, right in FLIP_PAIRS:
        assert KEYPOINT_NAMES[left].replace("left", "right") == KEYPOINT_NAMES[right]
        assert FLIP_INDEX[left] == right and FLIP_INDEX[right] == left
    assert FLIP_INDEX[0] == 0  # nose


def test_shift_moves_columns_one_right_keeping_column_zero():
    heatmaps = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    shifted = shift_right(heatmaps)
    assert torch.equal(shifted[..., 1:], heatmaps[..., :-1])
    assert torch.equal(shifted[..., 0], heatmaps[..., 0])
    single = peaks([(3, 2)])
    assert shift_right(single)[0, 0].nonzero().tolist() == [[2, 4]]  # x 3 → 4


def test_merge_averages_with_the_shifted_flip_back():
    gen = torch.Generator().manual_seed(1)
    plain, flipped = torch.rand(2, 17, 8, 6, generator=gen), torch.rand(2, 17, 8, 6, generator=gen)
    assert torch.allclose(
        merge_flipped(plain, flipped, shift=True), 0.5 * (plain + shift_right(flip_back(flipped)))
    )
    assert torch.allclose(merge_flipped(plain, flipped, shift=False), 0.5 * (plain + flip_back(flipped)))
