"""JointsMSE with target weights equals the official definition and ignores zero-weight joints."""

from __future__ import annotations

import pytest
import torch

from workloads.pose.loss import joints_mse


def test_equals_hand_computation():
    g = torch.Generator().manual_seed(0)
    pred, gt = torch.rand(2, 3, 4, 5, generator=g), torch.rand(2, 3, 4, 5, generator=g)
    w = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    # official: per joint 0.5 * MSE_mean(pred_j * w_j, gt_j * w_j) over batch × pixels, / K
    per_joint = []
    for j in range(3):
        pj = pred[:, j].reshape(2, -1) * w[:, j : j + 1]
        gj = gt[:, j].reshape(2, -1) * w[:, j : j + 1]
        per_joint.append(0.5 * ((pj - gj) ** 2).mean())
    expected = sum(per_joint) / 3
    assert joints_mse(pred, gt, w).item() == pytest.approx(expected.item(), rel=1e-6)
    # the [B, K, 1] weight form (as the pose targets carry it) gives the same loss
    assert joints_mse(pred, gt, w.unsqueeze(-1)).item() == pytest.approx(expected.item(), rel=1e-6)


def test_zero_weight_joints_do_not_count():
    pred, gt = torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3)
    pred[0, 1] = 100.0  # a huge error on joint 1 only
    assert joints_mse(pred, gt, torch.tensor([[1.0, 0.0]])).item() == 0.0
    assert joints_mse(pred, gt, torch.tensor([[1.0, 1.0]])).item() == pytest.approx(0.5 * 100**2 / 2)
    # the gradient of an ignored joint is zero
    p = pred.clone().requires_grad_(True)
    joints_mse(p, gt, torch.tensor([[1.0, 0.0]])).backward()
    assert p.grad.abs().sum().item() == 0.0


def test_bf16_prediction_gives_float32_loss():
    pred = torch.rand(1, 2, 3, 3).bfloat16()
    loss = joints_mse(pred, torch.zeros(1, 2, 3, 3), torch.ones(1, 2))
    assert loss.dtype == torch.float32


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="shape"):
        joints_mse(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 4, 3), torch.ones(1, 2))
