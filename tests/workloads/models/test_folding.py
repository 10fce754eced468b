"""BatchNorm folding for inference: every conv → BN pair of both backbones is merged, the folded model
computes the same heatmaps, and the original is left as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workloads.config import ModelConfig
from workloads.models import build_model
from workloads.models.folding import conv_bn_pairs, fold_batchnorm

BACKBONES = {
    "hrnet_w32": ModelConfig(width=8, num_blocks=1, num_modules=(1, 1, 1)),
    "simplebaseline_r50": ModelConfig(
        backbone="simplebaseline_r50", resnet_layers=(1, 1, 1, 1), deconv_channels=16
    ),
}


def _trained_statistics(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine parameters (the init's 0 / 1 would hide a wrong fold)."""
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_batchnorm_is_folded_and_the_output_is_unchanged(backbone):
    model = _trained_statistics(
        build_model(BACKBONES[backbone], 17, generator=torch.Generator().manual_seed(0))
    )
    model.train()
    x = torch.rand(2, 3, 64, 64)
    bns = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    folded, count = fold_batchnorm(model, x[:1])
    assert count == bns == len(conv_bn_pairs(model, x[:1])) and count > 10
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert model.training and any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # untouched
    model.eval()
    with torch.no_grad():
        ref, out = model(x), folded(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_a_conv_output_read_by_more_than_its_batchnorm_is_refused():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # y is read twice: folding would change the sum

    model = _trained_statistics(Skip())
    with pytest.raises(ValueError, match="folded model differs"):
        fold_batchnorm(model, torch.rand(1, 3, 8, 8))
