"""SimpleBaseline-R50: torchvision trunk names, official head, counts, init."""

from __future__ import annotations

import pytest
import torch
import torchvision

from workloads.config import ModelConfig
from workloads.models import build_model


@pytest.fixture(scope="module")
def r50():
    return build_model(ModelConfig(backbone="simplebaseline_r50"), 17)


def test_r50_parameter_count_matches_official(r50):
    # docs/pose-reference.md §2: 33,999,697 (trunk 23,508,032 + deconvs 10,487,296 + final 4,369)
    assert sum(p.numel() for p in r50.parameters()) == 33_999_697
    assert sum(p.numel() for n, p in r50.named_parameters() if n.startswith("deconv_layers.")) == 10_487_296


def test_r50_trunk_keys_equal_torchvision(r50):
    torchvision_keys = set(torchvision.models.resnet50().state_dict()) - {"fc.weight", "fc.bias"}
    ours = r50.state_dict()
    trunk = {k for k in ours if not k.startswith(("deconv_layers.", "final_layer."))}
    assert trunk == torchvision_keys


@pytest.mark.parametrize(
    ("key", "shape"),
    [
        ("deconv_layers.0.weight", (2048, 256, 4, 4)),
        ("deconv_layers.3.weight", (256, 256, 4, 4)),
        ("deconv_layers.6.weight", (256, 256, 4, 4)),
        ("deconv_layers.7.running_var", (256,)),
        ("final_layer.weight", (17, 256, 1, 1)),
        ("final_layer.bias", (17,)),
    ],
)
def test_r50_head_key_shapes(r50, key, shape):
    assert tuple(r50.state_dict()[key].shape) == shape


def test_head_init_and_no_deconv_bias(r50):
    deconvs = [m for m in r50.deconv_layers if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(deconvs) == 3 and all(m.bias is None for m in deconvs)
    assert all((m.kernel_size, m.stride, m.padding) == ((4, 4), (2, 2), (1, 1)) for m in deconvs)
    assert abs(r50.deconv_layers[0].weight.std().item() - 0.001) < 1e-4
    assert abs(r50.final_layer.weight.std().item() - 0.001) < 2e-4
    assert not r50.final_layer.bias.any()


def test_small_variant_shapes():
    model = build_model(
        ModelConfig(backbone="simplebaseline_r50", resnet_layers=(1, 1, 1, 1), deconv_channels=8), 3
    )
    state = model.state_dict()
    assert "layer3.0.downsample.0.weight" in state and "layer3.1.conv1.weight" not in state
    assert tuple(state["deconv_layers.0.weight"].shape) == (2048, 8, 4, 4)
    assert tuple(state["final_layer.weight"].shape) == (3, 8, 1, 1)
