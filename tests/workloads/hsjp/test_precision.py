"""HSJP precision P (eqs. 3–5): perfect predictions give 1; one patch off by ≥ ε fails its puzzle."""

from __future__ import annotations

import numpy as np
import torch

from workloads.hsjp.precision import decode_peaks, precision_of, solved_puzzles
from workloads.hsjp.puzzle import fisher_yates, shuffled_centers_xy
from workloads.hsjp.targets import make_heatmaps


def _puzzles(num: int, n: int, size: int) -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy(
        np.stack([shuffled_centers_xy(fisher_yates(n * n, rng), n, size // n) for _ in range(num)])
    ).float()  # [num, N², 2]


def test_predictions_at_true_centres_give_p_1():
    true = _puzzles(5, 3, 48)
    heat = make_heatmaps(true, torch.ones(5, 9), (12, 12), 4.0, 2.0)  # the targets as predictions
    pred = decode_peaks(heat, 4.0)
    assert precision_of(solved_puzzles(pred, true, eps_px=8.0)) == 1.0


def test_one_patch_beyond_eps_fails_exactly_one_puzzle():
    num, eps = 7, 8.0
    true = _puzzles(num, 3, 48)
    pred = true.clone()
    pred[2, 4, 0] += eps  # ‖p̂ − p‖ = ε is not < ε (eq. 3 is strict)
    assert abs(precision_of(solved_puzzles(pred, true, eps)) - (1 - 1 / num)) < 1e-9
    pred[2, 4, 0] = true[2, 4, 0] + eps * 0.99  # just inside: solved again
    assert precision_of(solved_puzzles(pred, true, eps)) == 1.0
    pred[5, 0] += torch.tensor([6.0, 6.0])  # 8.49 px diagonal off another puzzle
    assert abs(precision_of(solved_puzzles(pred, true, eps)) - (1 - 1 / num)) < 1e-9


def test_decode_maps_argmax_to_pixel_centres():
    heat = torch.zeros(1, 2, 5, 6)
    heat[0, 0, 3, 1] = 1.0
    heat[0, 1, 0, 5] = 2.0
    np.testing.assert_allclose(decode_peaks(heat, 4.0)[0].numpy(), [[6.0, 14.0], [22.0, 2.0]])
