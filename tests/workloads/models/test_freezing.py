"""Named block groups 0..4 (paper Fig. 5) and freezing that survives `.train()`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workloads.config import BACKBONES, ModelConfig
from workloads.models import block_group_names, block_group_of, build_model, freeze_block_groups

SMALL = {
    "hrnet_w32": ModelConfig(width=8, num_blocks=1, num_modules=(1, 1, 1)),
    "simplebaseline_r50": ModelConfig(
        backbone="simplebaseline_r50", resnet_layers=(1, 1, 1, 1), deconv_channels=8
    ),
}
HEADS = ("final_layer.", "deconv_layers.")


class Wrapper(nn.Module):
    """Stands in for DDP: the model under `.module`."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_parameter_in_exactly_one_block_group(backbone):
    model = build_model(SMALL[backbone], 4)
    stages = block_group_names(model)
    assert sorted(stages) == [0, 1, 2, 3, 4] and all(stages.values())
    flat = [n for names in stages.values() for n in names]
    assert len(flat) == len(set(flat))
    backbone_params = {n for n, _ in model.named_parameters() if not n.startswith(HEADS)}
    assert set(flat) == backbone_params
    assert all(block_group_of(model, n) is None for n, _ in model.named_parameters() if n.startswith(HEADS))


@pytest.mark.parametrize(
    ("backbone", "name", "stage"),
    [
        ("hrnet_w32", "bn2.weight", 0),
        ("hrnet_w32", "layer1.0.conv1.weight", 1),
        ("hrnet_w32", "transition1.1.0.0.weight", 2),
        ("hrnet_w32", "stage2.0.branches.1.0.conv1.weight", 2),
        ("hrnet_w32", "transition2.2.0.0.weight", 3),
        ("hrnet_w32", "transition3.3.0.1.bias", 4),
        ("hrnet_w32", "stage4.0.fuse_layers.0.3.0.weight", 4),
        ("simplebaseline_r50", "bn1.weight", 0),
        ("simplebaseline_r50", "layer2.0.downsample.0.weight", 2),
        ("simplebaseline_r50", "layer4.0.conv3.weight", 4),
        ("simplebaseline_r50", "deconv_layers.0.weight", None),
    ],
)
def test_block_group_mapping(backbone, name, stage):
    assert block_group_of(build_model(SMALL[backbone], 4), name) == stage


def _as_if_pretrained(model: nn.Module) -> None:
    """Running stats = one batch's stats, so frozen (eval-mode) BatchNorms see realistic statistics."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.momentum = 1.0
    with torch.no_grad():
        model.train()(torch.randn(2, 3, 64, 64))
    for m in bns:
        m.momentum = 0.1


def _bn_stats(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}


@pytest.mark.parametrize("backbone", BACKBONES)
def test_frozen_params_and_bn_stats_unchanged_after_a_step(backbone):
    model = build_model(SMALL[backbone], 4, generator=torch.Generator().manual_seed(0))
    _as_if_pretrained(model)
    frozen = freeze_block_groups(Wrapper(model), 2)
    assert set(frozen) == {n for s in (0, 1, 2) for n in block_group_names(model)[s]}
    model.train()  # must not wake the frozen BatchNorms
    bn_frozen = [
        m
        for n, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d) and block_group_of(model, n + ".weight") in (0, 1, 2)
    ]
    assert bn_frozen and not any(m.training for m in bn_frozen)
    params_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    stats_before = _bn_stats(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(torch.randn(2, 3, 64, 64)).square().mean().backward()
    opt.step()
    for name, p in model.named_parameters():
        stage = block_group_of(model, name)
        if name in frozen:
            assert torch.equal(p, params_before[name]), name
        elif name.endswith("weight") and stage is not None:
            assert not torch.equal(p, params_before[name]), name
    for key, value in _bn_stats(model).items():
        stage = block_group_of(model, key)
        if stage is not None and stage <= 2:
            assert torch.equal(value, stats_before[key]), key
        elif stage is not None:
            assert not torch.equal(value, stats_before[key]), key


def test_freeze_survives_train_through_a_wrapper_and_eval():
    model = build_model(SMALL["hrnet_w32"], 4)
    wrapped = Wrapper(model)
    freeze_block_groups(wrapped, 0)
    wrapped.eval()
    wrapped.train()
    assert not model.bn1.training and not model.bn2.training
    assert model.layer1[0].bn1.training and model.training
    assert not model.conv1.weight.requires_grad and model.layer1[0].conv1.weight.requires_grad


def test_freeze_all_four_leaves_only_head_trainable():
    model = build_model(SMALL["simplebaseline_r50"], 4)
    freeze_block_groups(model, 4)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"deconv_layers", "final_layer"}


@pytest.mark.parametrize("k", [-1, 5, True, 2.0])
def test_freeze_out_of_range(k):
    with pytest.raises(ValueError, match=rf"k={k!r}.*0\.\.4"):
        freeze_block_groups(build_model(SMALL["hrnet_w32"], 4), k)


def test_not_a_built_model():
    with pytest.raises(TypeError, match="build_model"):
        freeze_block_groups(nn.Linear(2, 2), 0)
