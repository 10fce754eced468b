"""Keypoint heatmap targets: peak position/value, weights, and equality with the official per-joint loop
(benchmarks.reference.reference_targets, the one the throughput benchmark's reference pipeline draws)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.reference import reference_targets
from workloads.pose.targets import make_heatmaps

INPUT_HW, HEATMAP_HW, SIGMA = (256, 192), (64, 48), 2.0  # HRNet config


def test_peak_at_official_rounding_with_value_one():
    joints = np.array([[10.0, 20.0], [17.9, 33.1], [189.0, 253.0], [2.0, 1.0], [97.5, 130.2]])
    hm, wt = make_heatmaps(joints, np.ones(5), INPUT_HW, HEATMAP_HW, SIGMA)
    assert hm.shape == (5, 64, 48) and hm.dtype == np.float32
    for j, (x, y) in enumerate(joints):
        mu = int(x / 4 + 0.5), int(y / 4 + 0.5)  # official μ = int(joint/stride + 0.5)
        yy, xx = np.unravel_index(np.argmax(hm[j]), hm[j].shape)
        assert (xx, yy) == mu
        assert hm[j, yy, xx] == pytest.approx(1.0)
        assert wt[j] == 1.0


def test_invisible_joint_has_zero_weight_and_empty_map():
    joints = np.array([[40.0, 40.0], [80.0, 80.0]])
    hm, wt = make_heatmaps(joints, np.array([0, 2]), INPUT_HW, HEATMAP_HW, SIGMA)  # v=2 → weight 1
    assert wt.tolist() == [0.0, 1.0]
    assert hm[0].max() == 0.0 and hm[1].max() == pytest.approx(1.0)


def test_patch_fully_outside_zero_weight_partial_patch_keeps_weight():
    # heatmap x = int(x/4+0.5); patch ±6 px. μx = 54 → ul 48 ≥ W=48: fully outside → weight 0.
    # μx = 53 → ul 47 < 48: one column inside → weight 1 with a partial Gaussian.
    joints = np.array([[54 * 4.0, 100.0], [53 * 4.0, 100.0], [-7 * 4.0 - 3, 100.0], [100.0, -7 * 4.0]])
    hm, wt = make_heatmaps(joints, np.ones(4), INPUT_HW, HEATMAP_HW, SIGMA)
    assert wt[0] == 0.0 and hm[0].max() == 0.0
    assert wt[1] == 1.0
    assert hm[1, :, 47].max() == pytest.approx(math.exp(-36 / 8))  # 6 px from the peak
    assert hm[1, :, :47].max() == 0.0
    # x = -31: -31/4+0.5 = -7.25 → int() → -7 (toward zero); br = 0 is not < 0, so the official rule
    # keeps weight 1 although the exclusive patch [-13, 0) draws nothing (an official quirk, kept).
    assert wt[2] == 1.0 and hm[2].max() == 0.0
    # y = -28: μy = int(-6.5) = -6; br = 1 ≥ 0 → weight 1
    assert wt[3] == 1.0


@pytest.mark.parametrize(
    "sigma,input_hw,heatmap_hw",
    [
        (2.0, (256, 192), (64, 48)),
        (1.5, (64, 48), (16, 12)),
        (2.2, (128, 96), (32, 24)),
        (3.0, (384, 288), (96, 72)),
    ],
)
def test_equals_official_loop(sigma, input_hw, heatmap_hw):
    rng = np.random.default_rng(0)
    k = 40
    joints = rng.uniform(-0.3, 1.3, (k, 2)) * np.array(input_hw[::-1])
    visible = rng.integers(0, 3, k)
    hm, wt = make_heatmaps(joints, visible, input_hw, heatmap_hw, sigma)
    ref_hm, ref_wt = reference_targets(joints, visible, input_hw, heatmap_hw, sigma)
    np.testing.assert_array_equal(wt, ref_wt)
    np.testing.assert_allclose(hm, ref_hm, rtol=0, atol=1e-6)
    assert (wt == 0).any() and (wt == 1).any()
