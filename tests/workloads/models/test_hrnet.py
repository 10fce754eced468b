"""HRNet-W32 pose network: official names / counts / shapes, narrow variants, init, input checks."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from workloads.config import ModelConfig
from workloads.models import build_model

NARROW = ModelConfig(width=8, num_blocks=1, num_modules=(1, 1, 1))


@pytest.fixture(scope="module")
def w32():
    return build_model(ModelConfig(), 17)


def test_w32_parameter_and_key_counts_match_official(w32):
    # docs/pose-reference.md §1: 28,536,113 trainable params, 1754 state-dict entries
    assert sum(p.numel() for p in w32.parameters() if p.requires_grad) == 28_536_113
    state = w32.state_dict()
    assert len(state) == 1754
    per_prefix = Counter(k.split(".")[0] for k in state)
    assert per_prefix == {
        "conv1": 1, "bn1": 5, "conv2": 1, "bn2": 5, "layer1": 78, "transition1": 12, "stage2": 108,
        "transition2": 6, "stage3": 744, "transition3": 6, "stage4": 786, "final_layer": 2,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("key", "shape"),
    [
        ("conv1.weight", (64, 3, 3, 3)),
        ("layer1.0.downsample.0.weight", (256, 64, 1, 1)),
        ("transition1.0.0.weight", (32, 256, 3, 3)),
        ("transition1.1.0.0.weight", (64, 256, 3, 3)),
        ("transition2.2.0.0.weight", (128, 64, 3, 3)),
        ("transition3.3.0.0.weight", (256, 128, 3, 3)),
        ("stage2.0.fuse_layers.0.1.0.weight", (32, 64, 1, 1)),
        ("stage3.0.fuse_layers.2.0.0.0.weight", (32, 32, 3, 3)),
        ("stage3.0.fuse_layers.2.0.1.0.weight", (128, 32, 3, 3)),
        ("stage3.3.branches.2.3.conv2.weight", (128, 128, 3, 3)),
        ("stage4.2.fuse_layers.0.3.0.weight", (32, 256, 1, 1)),
        ("stage4.1.fuse_layers.3.0.2.0.weight", (256, 32, 3, 3)),
        ("final_layer.weight", (17, 32, 1, 1)),
        ("final_layer.bias", (17,)),
    ],
)
def test_w32_official_key_shapes(w32, key, shape):
    assert tuple(w32.state_dict()[key].shape) == shape


def test_w32_last_module_is_single_scale(w32):
    # pose_hrnet: stage4's last module has multi_scale_output=False, transitions of kept branches are None
    keys = w32.state_dict().keys()
    assert not any(k.startswith(("stage4.2.fuse_layers.1.", "stage4.2.fuse_layers.3.")) for k in keys)
    assert any(k.startswith("stage4.1.fuse_layers.3.") for k in keys)
    assert not any(k.startswith(("transition2.0.", "transition2.1.", "transition3.2.")) for k in keys)


def test_w32_forward_256x192(w32):
    w32.eval()
    with torch.no_grad():  # ~0.2 s on an idle CPU core
        out = w32(torch.randn(1, 3, 256, 192))
    assert out.shape == (1, 17, 64, 48)
    assert torch.isfinite(out).all()


def test_official_init():
    model = build_model(NARROW, 17)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    weights = torch.cat([m.weight.flatten() for m in convs])
    assert abs(weights.std().item() - 0.001) < 1e-4  # HRNet init_weights: N(0, 0.001)
    assert torch.equal(model.final_layer.bias, torch.zeros(17))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any()
            assert m.momentum == 0.1


def test_narrow_variant_every_parameter_gets_a_gradient():
    model = build_model(NARROW, 4)
    model(torch.randn(1, 3, 64, 64)).square().sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == []


def test_narrow_widths_follow_config():
    state = build_model(ModelConfig(width=16, num_blocks=2, num_modules=(1, 2, 1)), 5).state_dict()
    assert tuple(state["stage4.0.fuse_layers.0.3.0.weight"].shape) == (16, 128, 1, 1)
    assert "stage3.1.branches.2.1.conv1.weight" in state and "stage3.2.branches.0.0.conv1.weight" not in state
    assert "layer1.1.conv3.weight" in state and "layer1.2.conv3.weight" not in state
