"""The batched torch targets (built on the training device) equal the per-sample official-rule targets,
and the training path wired to them (dataset `device_targets` + `pose_step`) equals the per-sample path."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from workloads.config import FinetuneConfig, ModelConfig
from workloads.data.coco import PersonInstance, box_to_center_scale
from workloads.data.transforms import network_input
from workloads.engine import make_optimizer
from workloads.models import build_model
from workloads.pose.dataset import PoseTrainDataset
from workloads.pose.targets import make_heatmaps, make_heatmaps_batched
from workloads.pose.train import pose_step

TINY = ModelConfig(width=8, num_blocks=1, num_modules=(1, 1, 1))  # narrow HRNet


def _per_sample(joints, visible, input_hw, heatmap_hw, sigma):
    pairs = [make_heatmaps(j, v, input_hw, heatmap_hw, sigma) for j, v in zip(joints, visible)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


@pytest.mark.parametrize(
    "sigma,input_hw,heatmap_hw",
    [
        (2.0, (256, 192), (64, 48)),
        (1.5, (64, 48), (16, 12)),
        (2.2, (128, 96), (32, 24)),
        (3.0, (96, 96), (24, 24)),
    ],
)
def test_batched_equals_per_sample(sigma, input_hw, heatmap_hw):
    rng = np.random.default_rng(1)
    b, k = 5, 17
    joints = rng.uniform(-0.3, 1.3, (b, k, 2)) * np.array(input_hw[::-1])  # some joints off the crop
    visible = rng.integers(0, 3, (b, k)).astype(np.float32)  # COCO v 0/1/2 → weight 0/1
    ref_hm, ref_wt = _per_sample(joints, visible, input_hw, heatmap_hw, sigma)
    hm, wt = make_heatmaps_batched(
        torch.from_numpy(joints), torch.from_numpy(visible), input_hw, heatmap_hw, sigma
    )
    assert hm.shape == (b, k, *heatmap_hw) and hm.dtype == torch.float32 and wt.dtype == torch.float32
    np.testing.assert_array_equal(wt.numpy(), ref_wt)
    np.testing.assert_allclose(hm.numpy(), ref_hm, rtol=0, atol=1e-6)
    assert (ref_wt == 0).any() and (ref_wt == 1).any() and ref_hm.max() == pytest.approx(1.0)


def test_rounding_boundaries_truncate_as_the_per_sample_rule():
    # x/4 + 0.5 lands exactly on integers and on negatives (int() truncates toward zero), plus the
    # br == 0 quirk (weight 1, empty map) and a patch just off the right edge (weight 0)
    xs = np.array([2.0, 6.0, 9.999999, -2.0, -6.0, -31.0, 54 * 4.0, 53 * 4.0, 191.0, 0.0])
    joints = np.stack([xs, np.full_like(xs, 100.0)], axis=-1)[None]  # [1, 10, 2]
    visible = np.ones((1, len(xs)), np.float32)
    ref_hm, ref_wt = _per_sample(joints, visible, (256, 192), (64, 48), 2.0)
    hm, wt = make_heatmaps_batched(joints, visible, (256, 192), (64, 48), 2.0)
    np.testing.assert_array_equal(wt.numpy(), ref_wt)
    np.testing.assert_allclose(hm.numpy(), ref_hm, rtol=0, atol=1e-6)
    assert ref_wt[0, 5] == 1.0 and ref_hm[0, 5].max() == 0.0 and ref_wt[0, 6] == 0.0


def test_device_argument_and_float32_joints_from_a_loader():
    joints = torch.tensor([[[10.0, 20.0], [100.0, 130.0]]], dtype=torch.float32)
    hm, wt = make_heatmaps_batched(
        joints, torch.tensor([[1.0, 0.0]]), (256, 192), (64, 48), 2.0, device="cpu"
    )
    ref_hm, ref_wt = make_heatmaps(joints[0].numpy(), np.array([1.0, 0.0]), (256, 192), (64, 48), 2.0)
    assert hm.device.type == "cpu"
    np.testing.assert_allclose(hm[0].numpy(), ref_hm, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(wt[0].numpy(), ref_wt)
    with pytest.raises(ValueError, match=r"\[B, K, 2\]"):
        make_heatmaps_batched(joints[0], torch.ones(2), (256, 192), (64, 48), 2.0)


# ---------------------------------------------------------------- the wired-in training path
INPUT_HW, HEATMAP_HW = (64, 64), (16, 16)  # narrow-model sizes (inputs divisible by 32)


def _persons(tmp_path, count: int = 3) -> list[PersonInstance]:
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    path = tmp_path / "people.png"
    cv2.imwrite(str(path), img)
    out = []
    for i in range(count):
        kp = np.zeros((17, 3))
        kp[:, 0], kp[:, 1] = rng.uniform(20, 140, 17), rng.uniform(10, 110, 17)
        kp[:, 2] = rng.integers(0, 3, 17)
        box = np.array([15.0 + 5 * i, 5.0, 120.0, 105.0])
        center, scale = box_to_center_scale(box, INPUT_HW[1] / INPUT_HW[0])
        out.append(
            PersonInstance(
                image_id=1, ann_id=i, image_path=str(path), image_wh=(160, 120), bbox_xywh=box,
                center_xy=center, scale_wh=scale, keypoints=kp, num_keypoints=int((kp[:, 2] > 0).sum()),
                area=float(box[2] * box[3]), score=1.0,
            )
        )  # fmt: skip
    return out


def test_device_target_samples_and_pose_step_equal_the_per_sample_path(tmp_path):
    cfg = FinetuneConfig(model=TINY, input_hw=INPUT_HW, heatmap_hw=HEATMAP_HW, batch_size=3)
    persons = _persons(tmp_path)
    per_sample = PoseTrainDataset(persons, cfg, seed=7)
    joints = PoseTrainDataset(persons, cfg, seed=7, device_targets=True)
    keys = [(2, i) for i in range(len(persons))]  # augmented (rotation / flip / half-body draws)
    a = [torch.stack(t) for t in zip(*(per_sample[k] for k in keys))]
    b = [torch.stack(t) for t in zip(*(joints[k] for k in keys))]
    # uint8 NHWC from the loader, normalised on the device: bit-identical to the worker's normalize_image
    assert b[0].dtype == torch.uint8 and b[0].shape == (3, *INPUT_HW, 3)
    assert torch.equal(a[0], network_input(b[0])) and b[1].shape == (3, 17, 2) and b[2].shape == (3, 17)
    hm, wt = make_heatmaps_batched(b[1], b[2], cfg.input_hw, cfg.heatmap_hw, cfg.sigma)
    assert torch.allclose(hm, a[1], rtol=0, atol=1e-6) and torch.equal(wt, a[2]) and wt.sum() > 10

    losses = []
    for batch in (a, b):  # the same model state and batch through both paths give the same step
        torch.manual_seed(0)
        model = build_model(TINY, 17, generator=torch.Generator().manual_seed(0))
        optimizer = make_optimizer(model, lr=1e-3)
        losses.append(pose_step(model, batch, optimizer, cfg, torch.device("cpu")).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6, abs=0)
