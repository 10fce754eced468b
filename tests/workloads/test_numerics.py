"""Numerics: training precision is a recorded setting, evaluation is always fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from workloads.config import FinetuneConfig, ModelConfig, PretrainConfig, RuntimeConfig
from workloads.data.coco import PersonInstance
from workloads.hsjp.precision import evaluate_precision
from workloads.models import build_model
from workloads.numerics import numerics_record
from workloads.pose.inference import predict

TINY = ModelConfig(width=4, num_blocks=1, num_modules=(1, 1, 1))


def test_the_default_is_the_official_fp32_numerics():
    assert RuntimeConfig().amp == "off"
    assert PretrainConfig().runtime.amp == "off" and FinetuneConfig().runtime.amp == "off"
    rec = numerics_record(RuntimeConfig(), "cpu")
    assert rec == {"train": "fp32", "eval": "fp32", "amp": "off", "tf32_conv": None, "tf32_matmul": None}
    assert numerics_record(RuntimeConfig(amp="bf16"), "cpu")["train"] == "bf16"
    assert numerics_record(RuntimeConfig(amp="auto"), "cpu")["train"] == "fp32"  # auto: bf16 on CUDA only
    if torch.cuda.is_available():
        cuda = numerics_record(RuntimeConfig(amp="auto"), "cuda")
        assert cuda["train"] == "bf16" and cuda["tf32_conv"] is torch.backends.cudnn.allow_tf32


def _instances(tmp_path) -> list[PersonInstance]:
    import cv2

    rng = np.random.default_rng(0)
    path = tmp_path / "a.jpg"
    cv2.imwrite(str(path), rng.integers(0, 255, (80, 60, 3), dtype=np.uint8))
    return [
        PersonInstance(
            image_id=1, ann_id=None, image_path=str(path), image_wh=(60, 80),
            bbox_xywh=np.array([5.0, 5.0, 40.0, 60.0]), center_xy=np.array([25.0, 35.0]),
            scale_wh=np.array([0.25, 0.33]), keypoints=np.zeros((17, 3)), num_keypoints=0, area=2400.0,
            score=0.9,
        )
    ]  # fmt: skip


def test_pose_evaluation_is_fp32_whatever_the_training_precision(tmp_path):
    model = build_model(TINY, 17, generator=torch.Generator().manual_seed(0))
    insts = _instances(tmp_path)
    outs = {}
    for amp in ("off", "bf16"):
        cfg = FinetuneConfig(
            model=TINY, input_hw=(64, 64), heatmap_hw=(16, 16), runtime=RuntimeConfig(amp=amp)
        )
        outs[amp] = predict(model, insts, cfg, "cpu", workers=1)
    assert outs["off"] == outs["bf16"]  # bit-identical: no bf16 autocast at evaluation


def test_hsjp_precision_is_fp32_whatever_the_training_precision():
    model = build_model(TINY, 4, generator=torch.Generator().manual_seed(0))
    calls = []
    model.register_forward_hook(lambda m, i, o: calls.append((torch.is_autocast_enabled("cpu"), o.dtype)))
    items = [{"image": torch.randn(3, 32, 32), "centers_xy": torch.rand(4, 2) * 32, "mask": torch.ones(4)}]
    loader = DataLoader(items, batch_size=1)
    evaluate_precision(model, loader, 4.0, 8.0, torch.device("cpu"), RuntimeConfig(amp="bf16"))
    assert calls == [(False, torch.float32)]


@pytest.mark.parametrize("backbone", ["hrnet_w32", "simplebaseline_r50"])
def test_recipe_by_backbone(backbone):
    """Each backbone's official finetune recipe (HRNet w32_256x192 / SimpleBaseline 256x192_d256x3)."""
    cfg = FinetuneConfig(model=ModelConfig(backbone=backbone))
    expected = {
        "hrnet_w32": (0.35, 45.0, 0.3, 210, (170, 200)),
        "simplebaseline_r50": (0.30, 40.0, 0.0, 140, (90, 120)),
    }[backbone]
    got = (cfg.aug.scale_factor, cfg.aug.rotate_deg, cfg.aug.half_body_prob, cfg.total_epochs, cfg.lr_steps)
    assert got == expected
    assert cfg.batch_size == 32 and PretrainConfig().batch_size == 64  # per GPU (official: 4 x 32, 4 x 64)
    from workloads.config import PoseAugConfig, from_dict

    given = FinetuneConfig(model=ModelConfig(backbone=backbone), aug=PoseAugConfig(scale_factor=0.25))
    assert (given.aug.scale_factor, given.aug.rotate_deg) == (0.25, expected[1])  # a given value wins
    plain = from_dict(FinetuneConfig, {"model": {"backbone": backbone}})
    assert plain == cfg


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (bf16 autocast is a CUDA default)"
)
def test_cuda_evaluation_is_fp32_even_when_training_would_autocast(tmp_path):
    model = build_model(TINY, 17, generator=torch.Generator().manual_seed(0)).cuda()
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    insts = _instances(tmp_path)
    outs = {}
    for amp in ("off", "auto"):  # auto = bf16 autocast for training on CUDA
        cfg = FinetuneConfig(
            model=TINY, input_hw=(64, 64), heatmap_hw=(16, 16), runtime=RuntimeConfig(amp=amp)
        )
        outs[amp] = predict(model, insts, cfg, "cuda", workers=1)
    assert set(seen) == {torch.float32}
    a, b = (np.array([r["keypoints"] for r in outs[k]]) for k in ("off", "auto"))
    assert np.allclose(a, b, atol=1e-4)  # the same fp32 pass (up to cuDNN algorithm choice)
