"""Masked MSE of paper eq. (2): hand computation, masked channels contribute nothing."""

from __future__ import annotations

import pytest
import torch

from workloads.hsjp.loss import masked_mse


def test_equals_hand_computed_equation_2():
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(2, 4, 3, 3, generator=g)  # B=2, N²=4, 3×3 heatmap
    target = torch.rand(2, 4, 3, 3, generator=g)
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    per_sample = []
    for b in range(2):
        s = 0.0
        for i in range(4):
            for x in range(3):
                for y in range(3):
                    s += float(mask[b, i]) * float(target[b, i, y, x] - pred[b, i, y, x]) ** 2
        per_sample.append(s / (4 * 3 * 3))  # 1 / (N² · H · W): eq. (2) with 56 → 3
    expected = sum(per_sample) / 2
    assert abs(float(masked_mse(pred, target, mask)) - expected) < 1e-6


def test_masked_channels_contribute_nothing():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.rand(1, 3, 4, 4, generator=g), torch.rand(1, 3, 4, 4, generator=g)
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    base = masked_mse(pred, target, mask)
    wild = pred.clone()
    wild[0, 1] = 1e3  # a masked channel's prediction may be anything
    assert torch.equal(masked_mse(wild, target, mask), base)
    assert masked_mse(pred, target, torch.ones(1, 3)) > base  # unmasking it adds its error
    assert float(masked_mse(target, target, torch.ones(1, 3))) == 0.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="masked_mse"):
        masked_mse(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4), torch.ones(1, 3))
