"""Checkpoint files, backbone handoff with exact key sets, ImageNet loading."""

from __future__ import annotations

import argparse

import pytest
import torch
import torchvision
from torchvision.models.resnet import Bottleneck, ResNet

from workloads.config import ModelConfig
from workloads.models import build_model, load_backbone, load_imagenet, load_state_file, loading

HRNET = ModelConfig(width=8, num_blocks=1, num_modules=(1, 1, 1))
RESNET = ModelConfig(backbone="simplebaseline_r50", resnet_layers=(1, 1, 1, 1), deconv_channels=8)


def _seeded(cfg: ModelConfig, out_channels: int, seed: int):
    return build_model(cfg, out_channels, generator=torch.Generator().manual_seed(seed))


def test_round_trip_through_a_file(tmp_path):
    source = _seeded(HRNET, 17, 0)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    target = _seeded(HRNET, 17, 1)
    report = load_backbone(target, load_state_file(path))
    assert report.missing == [] and report.unexpected == []
    assert report.skipped == ["final_layer.weight", "final_layer.bias"]
    assert len(report.loaded) == len(source.state_dict()) - 2
    for key, value in target.state_dict().items():
        assert key.startswith("final_layer.") or torch.equal(value, source.state_dict()[key]), key
    assert not torch.equal(target.final_layer.weight, source.final_layer.weight)  # head left at its init
    assert set(report.as_dict()) == {"loaded", "missing", "unexpected", "skipped", "filled"}
    assert report.filled == []  # a current checkpoint has every BatchNorm counter


def test_pretext_head_is_skipped_for_pose():
    pretext = _seeded(HRNET, 36, 0)  # N = 6 → 36 heatmaps
    pose = _seeded(HRNET, 17, 1)
    head_before = pose.final_layer.weight.clone()
    report = load_backbone(pose, pretext.state_dict())
    assert report.skipped == ["final_layer.weight", "final_layer.bias"]
    assert report.missing == [] and report.unexpected == []
    assert torch.equal(pose.final_layer.weight, head_before)
    assert torch.equal(
        pose.stage4[0].branches[3][0].conv2.weight, pretext.stage4[0].branches[3][0].conv2.weight
    )


def test_shape_mismatch_names_key_and_shapes():
    with pytest.raises(ValueError, match=r"'final_layer\.weight'.*\(36, 8, 1, 1\).*\(17, 8, 1, 1\)"):
        load_backbone(_seeded(HRNET, 17, 0), _seeded(HRNET, 36, 0).state_dict(), skip_prefixes=())
    wider = build_model(ModelConfig(width=16, num_blocks=1, num_modules=(1, 1, 1)), 17)
    with pytest.raises(ValueError, match=r"'transition1\.0\.0\.weight'.*\(8, 256, 3, 3\).*\(16, 256, 3, 3\)"):
        load_backbone(wider, _seeded(HRNET, 17, 0).state_dict())


def test_checkpoint_of_another_architecture():
    with pytest.raises(ValueError, match=r"another architecture.*'conv2\.weight'"):
        load_backbone(build_model(RESNET, 17), build_model(HRNET, 17).state_dict())


def test_nestings_are_unwrapped(tmp_path):
    state = _seeded(HRNET, 17, 0).state_dict()
    for i, obj in enumerate(
        [
            {"state_dict": {f"module.{k}": v for k, v in state.items()}},
            {"model": state, "optimizer": {"state": {}}, "epoch": 3},
            {f"_orig_mod.{k}": v for k, v in state.items()},
        ]
    ):
        torch.save(obj, tmp_path / f"{i}.pth")
        loaded = load_state_file(tmp_path / f"{i}.pth")
        assert list(loaded) == list(state)
        assert torch.equal(loaded["conv1.weight"], state["conv1.weight"])


def test_missing_file_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_state_file(tmp_path / "nope.pth")


def test_pickled_objects_are_refused_clearly(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"args": argparse.Namespace(lr=1e-3), "w": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"pickled\.pth.*not a plain state dict"):
        load_state_file(path)


def test_corrupt_and_non_state_dict_files(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="junk.pth"):
        load_state_file(tmp_path / "junk.pth")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth")
    with pytest.raises(ValueError, match=r"meta\.pth: not a state dict.*'epoch'"):
        load_state_file(tmp_path / "meta.pth")


def _imagenet_like_resnet50() -> dict[str, torch.Tensor]:
    """torchvision resnet50's exact names and shapes (built on meta: no download, no init cost)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision.models.resnet50().state_dict().items()}
    return {k: torch.full(shape, float(i)) for i, (k, shape) in enumerate(shapes.items())}


def test_torchvision_resnet50_into_simplebaseline(tmp_path, monkeypatch):
    imagenet = _imagenet_like_resnet50()
    path = tmp_path / "resnet50-0676ba61.pth"
    path.touch()  # the 100 MB file round trip is covered by the small tests; skip its I/O here
    monkeypatch.setattr(loading, "load_state_file", lambda p: imagenet if p == path else None)
    model = build_model(ModelConfig(backbone="simplebaseline_r50", deconv_channels=8), 17)
    report = load_imagenet(model, path, "simplebaseline_r50")
    assert report.unexpected == ["fc.weight", "fc.bias"] and report.skipped == []
    head = {k for k in model.state_dict() if k.startswith(("deconv_layers.", "final_layer."))}
    assert set(report.missing) == head and len(head) == 3 + 3 * 5 + 2
    assert len(report.loaded) == len(imagenet) - 2
    assert torch.equal(model.layer4[2].conv3.weight, imagenet["layer4.2.conv3.weight"])
    assert torch.equal(model.bn1.running_var, imagenet["bn1.running_var"])


def test_small_resnet_imagenet_style_load():
    trunk = ResNet(Bottleneck, [1, 1, 1, 1]).state_dict()
    report = load_backbone(build_model(RESNET, 17), trunk, skip_prefixes=())
    assert report.unexpected == ["fc.weight", "fc.bias"]
    assert all(k.startswith(("deconv_layers.", "final_layer.")) for k in report.missing)


def test_hrnet_imagenet_style_file(tmp_path):
    model = _seeded(HRNET, 17, 0)
    backbone = {
        k: v for k, v in _seeded(HRNET, 17, 1).state_dict().items() if not k.startswith("final_layer.")
    }
    cls_only = {
        "incre_modules.0.0.conv1.weight": torch.zeros(32, 8, 1, 1),
        "downsamp_modules.0.0.weight": torch.zeros(64, 32, 3, 3),
        "final_layer.0.weight": torch.zeros(2048, 1024, 1, 1),  # cls_hrnet head: collides with pose name
        "final_layer.1.running_mean": torch.zeros(2048),
        "classifier.weight": torch.zeros(1000, 2048),
        "classifier.bias": torch.zeros(1000),
        "stage4.0.fuse_layers.1.0.0.weight": torch.zeros(16, 8, 1, 1),  # multi-scale output of cls_hrnet
        "stage4.0.fuse_layers.3.2.0.0.weight": torch.zeros(64, 32, 3, 3),
    }
    path = tmp_path / "hrnet_w32-36af842e.pth"
    torch.save({**backbone, **cls_only}, path)
    head_before = model.final_layer.weight.clone()
    report = load_imagenet(model, path, "hrnet_w32")
    assert sorted(report.skipped) == sorted(cls_only)
    assert report.missing == [] and report.unexpected == []
    assert sorted(report.loaded) == sorted(backbone)
    assert torch.equal(model.final_layer.weight, head_before)
    assert torch.equal(
        model.stage4[0].fuse_layers[0][3][0].weight, backbone["stage4.0.fuse_layers.0.3.0.weight"]
    )


@pytest.mark.parametrize(
    ("backbone", "hint"),
    [
        ("hrnet_w32", r"hrnet_w32-36af842e\.pth.*HRNet-Image-Classification"),
        ("simplebaseline_r50", r"resnet50-0676ba61\.pth.*resnet50-19c8e357\.pth"),
    ],
)
def test_missing_imagenet_file_says_where_weights_are(tmp_path, backbone, hint):
    with pytest.raises(FileNotFoundError, match=rf"absent\.pth.*{hint}"):
        load_imagenet(build_model(HRNET, 17), tmp_path / "absent.pth", backbone)


def test_imagenet_unknown_backbone(tmp_path):
    with pytest.raises(ValueError, match="vgg16.*hrnet_w32"):
        load_imagenet(build_model(HRNET, 17), tmp_path / "x.pth", "vgg16")


# ------------------------------------------------ checkpoints saved before PyTorch 0.4.1 (no BN counters)
COUNTER = "num_batches_tracked"


def _pre_041(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` as PyTorch before 0.4.1 saved it: no BatchNorm counters, no `_metadata` (a plain dict)."""
    return {k: v for k, v in state.items() if not k.endswith(COUNTER)}


@pytest.mark.parametrize("cfg", [HRNET, RESNET], ids=["hrnet_w8", "simplebaseline_small"])
def test_pre_041_checkpoint_loads_with_counters_at_zero(tmp_path, cfg):
    source = _seeded(cfg, 17, 0)
    old = _pre_041(source.state_dict())
    path = tmp_path / "pose.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in old.items()}}, path)
    target = _seeded(cfg, 17, 1)
    counters = [k for k in target.state_dict() if k.endswith(COUNTER)]
    for k in counters:
        target.get_buffer(k).fill_(3)  # so that the test sees the load set them
    report = load_backbone(target, load_state_file(path))
    assert report.missing == [] and report.unexpected == []
    assert sorted(report.filled) == sorted(counters) and len(counters) > 10
    assert not set(report.filled) & set(report.loaded)  # filled counters were not in the file
    assert all(int(target.get_buffer(k)) == 0 for k in counters)  # what PyTorch's strict load gives
    for key, value in old.items():
        assert key.startswith("final_layer.") or torch.equal(target.state_dict()[key], value), key


def test_a_missing_weight_is_still_reported_beside_filled_counters():
    old = _pre_041(_seeded(RESNET, 17, 0).state_dict())
    del old["layer1.0.conv2.weight"]
    del old["layer2.0.bn1.running_mean"]  # a BN without its statistics: its counter is not filled either
    report = load_backbone(_seeded(RESNET, 17, 1), old)
    assert report.missing == ["layer1.0.conv2.weight", "layer2.0.bn1.running_mean", f"layer2.0.bn1.{COUNTER}"]
    assert f"layer2.0.bn1.{COUNTER}" not in report.filled and f"layer1.0.bn2.{COUNTER}" in report.filled


def _imagenet_init(tmp_path, monkeypatch, state, name="resnet50-19c8e357.pth"):
    from workloads.config import FinetuneConfig, PretrainConfig
    from workloads.pose.train import initialise

    path = tmp_path / name
    path.touch()  # as in test_torchvision_resnet50_into_simplebaseline: no 100 MB round trip
    monkeypatch.setattr(loading, "load_state_file", lambda p: state if p == path else None)
    model_cfg = ModelConfig(backbone="simplebaseline_r50", deconv_channels=8)
    model = build_model(model_cfg, 17)
    init = PretrainConfig(method="imagenet", checkpoint=str(path), model=model_cfg)
    return model, initialise(model, FinetuneConfig(model=model_cfg), init, ctx=None)


def test_imagenet_init_from_the_pre_041_torchvision_resnet50(tmp_path, monkeypatch):
    """SimpleBaseline's resnet50-19c8e357.pth has no BN counters: no backbone tensor may be left at init."""
    old = _pre_041(_imagenet_like_resnet50())
    model, report = _imagenet_init(tmp_path, monkeypatch, old)
    assert len(report["filled"]) == 53  # every BatchNorm of ResNet-50: bn1, 3 per bottleneck, 4 downsample
    assert all(k.startswith(("deconv_layers.", "final_layer.")) for k in report["missing"])
    assert report["unexpected"] == ["fc.weight", "fc.bias"]
    assert torch.equal(model.layer4[2].bn3.running_var, old["layer4.2.bn3.running_var"])
    assert int(model.layer4[2].bn3.num_batches_tracked) == 0


def test_imagenet_init_still_refuses_a_missing_backbone_weight(tmp_path, monkeypatch):
    old = _pre_041(_imagenet_like_resnet50())
    del old["layer3.1.conv1.weight"]
    with pytest.raises(ValueError, match=r"1 backbone tensor\(s\).*random init.*'layer3\.1\.conv1\.weight'"):
        _imagenet_init(tmp_path, monkeypatch, old)
