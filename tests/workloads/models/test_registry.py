"""build_model: both backbones × both uses (pretext N² heatmaps at 224², pose 17 at 256×192); eval_mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workloads.config import BACKBONES, ModelConfig
from workloads.models import HEAD_PREFIXES, MODELS, build_model, eval_mode

SMALL = {
    "hrnet_w32": ModelConfig(width=8, num_blocks=1, num_modules=(1, 1, 1)),
    "simplebaseline_r50": ModelConfig(
        backbone="simplebaseline_r50", resnet_layers=(1, 1, 1, 1), deconv_channels=16
    ),
}


def test_registry_covers_config_backbones():
    assert set(MODELS) == set(BACKBONES)
    assert HEAD_PREFIXES == ("final_layer.",)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize(
    ("out_channels", "hw", "out_hw"),
    [(36, (224, 224), (56, 56)), (17, (256, 192), (64, 48))],  # pretext N=6 / COCO pose
    ids=["pretext", "pose"],
)
def test_forward_shape(backbone, out_channels, hw, out_hw):
    model = build_model(SMALL[backbone], out_channels)
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, *hw))
    assert out.shape == (1, out_channels, *out_hw)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_input_not_divisible_by_32_is_rejected(backbone):
    model = build_model(SMALL[backbone], 17)
    with pytest.raises(ValueError, match=r"250x192.*divisible by 32"):
        model(torch.randn(1, 3, 250, 192))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_generator_makes_init_reproducible(backbone):
    a = build_model(SMALL[backbone], 4, generator=torch.Generator().manual_seed(3))
    b = build_model(SMALL[backbone], 4, generator=torch.Generator().manual_seed(3))
    c = build_model(SMALL[backbone], 4, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.final_layer.weight, b.final_layer.weight)
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError, match="hrnet_w32.*simplebaseline_r50"):
        build_model(ModelConfig(backbone="vit_b16"), 17)


@pytest.mark.parametrize("bad", [0, -3, 2.0])
def test_bad_out_channels(bad):
    with pytest.raises(ValueError, match="out_channels"):
        build_model(SMALL["hrnet_w32"], bad)


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_restores_the_previous_mode_also_after_an_error(training):
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)).train(training)
    with eval_mode(model) as inside:
        assert inside is model and not any(m.training for m in model.modules())
    assert all(m.training == training for m in model.modules())
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        assert not model[1].training
        raise RuntimeError("boom")
    assert all(m.training == training for m in model.modules())
