"""`predict`: crops, flip test in the same pass, decoding back to the image, rescoring, OKS-NMS; and a
real-data run with a narrow random HRNet over the HRNet detection boxes, scored by COCOeval."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from workloads.config import FinetuneConfig, ModelConfig
from workloads.data.coco import PersonInstance, box_to_center_scale, load_detections
from workloads.models import build_model
from workloads.pose.evaluate import OKS_KEYS, STAT_NAMES, evaluate_keypoints
from workloads.pose.inference import predict

INPUT_HW = (64, 48)  # tiny crops → 16x12 heatmaps


class DotFinder(nn.Module):
    """Heatmaps = 4x4 average of the red channel, the same map for all 17 joints.

    Mirror-equivariant when the width is a multiple of 4, so the flip test without the shift must
    reproduce the plain result exactly.
    """

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x[:, :1], 4).repeat(1, 17, 1, 1) + self.dummy


def dot_image(path, dot_xy, size_wh=(200, 160)) -> None:
    image = np.zeros((size_wh[1], size_wh[0], 3), dtype=np.uint8)
    x, y = dot_xy
    image[y - 5 : y + 5, x - 5 : x + 5] = 255  # a 10x10 px white square centred on dot_xy
    cv2.imwrite(str(path), image)


def instance(path, image_id: int, box, score: float) -> PersonInstance:
    box = np.asarray(box, dtype=np.float64)
    center, scale = box_to_center_scale(box, INPUT_HW[1] / INPUT_HW[0], 1.25)
    return PersonInstance(
        image_id=image_id, ann_id=None, image_path=str(path), image_wh=(200, 160), bbox_xywh=box,
        center_xy=center, scale_wh=scale, keypoints=np.zeros((17, 3)), num_keypoints=0,
        area=float(box[2] * box[3]), score=score,
    )  # fmt: skip


def test_predict_maps_peaks_back_rescores_and_suppresses_duplicates(tmp_path):
    dot = (90, 70)
    dot_image(tmp_path / "a.jpg", dot)
    dot_image(tmp_path / "b.jpg", dot)
    box = [60, 40, 48, 64]
    insts = [
        instance(tmp_path / "a.jpg", 1, box, 0.6),
        instance(tmp_path / "a.jpg", 1, box, 0.9),  # same person, better box score: kept
        instance(tmp_path / "b.jpg", 2, [70, 30, 48, 64], 0.5),
    ]
    model = DotFinder().train()
    cfg = FinetuneConfig(input_hw=INPUT_HW, heatmap_hw=(16, 12), flip_test=False)
    results = predict(model, insts, cfg, "cpu", batch_size=2)
    assert model.training  # mode restored
    assert sorted(r["image_id"] for r in results) == [1, 2]
    for r in results:
        kpts = np.asarray(r["keypoints"]).reshape(17, 3)
        cell_px = insts[0].scale_wh[0] * 200 / 12  # image px per heatmap cell
        assert np.abs(kpts[:, :2] - np.array(dot)).max() <= 1.0 * cell_px
        white = (1 - 0.485) / 0.229  # normalised red of white: the largest possible 4x4 average
        assert np.all(kpts[:, 2] > 0.2) and np.all(kpts[:, 2] <= white + 1e-4)
        box_score = 0.9 if r["image_id"] == 1 else 0.5
        assert r["score"] == pytest.approx(kpts[:, 2].mean() * box_score)  # all joints > in_vis_thre
        assert r["category_id"] == 1 and len(r["keypoints"]) == 51


def test_flip_test_in_the_same_pass_matches_plain_for_a_mirror_equivariant_model(tmp_path):
    dot_image(tmp_path / "a.jpg", (90, 70))
    insts = [instance(tmp_path / "a.jpg", 1, [60, 40, 48, 64], 1.0)]
    plain = predict(DotFinder(), insts, FinetuneConfig(input_hw=INPUT_HW, flip_test=False), "cpu")
    flipped = predict(
        DotFinder(), insts, FinetuneConfig(input_hw=INPUT_HW, flip_test=True, shift_heatmap=False), "cpu"
    )
    assert np.allclose(plain[0]["keypoints"], flipped[0]["keypoints"], atol=1e-5)
    shifted = predict(DotFinder(), insts, FinetuneConfig(input_hw=INPUT_HW, flip_test=True), "cpu")
    assert not np.allclose(plain[0]["keypoints"], shifted[0]["keypoints"], atol=1e-5)


@pytest.mark.realdata
def test_narrow_random_model_over_detections_end_to_end(coco_dets):
    # 64x64: the smallest HRNet input (÷32) keeps this CPU test at a few seconds; flip test on
    cfg = FinetuneConfig(
        model=ModelConfig(width=8, num_blocks=1, num_modules=(1, 1, 1)),
        input_hw=(64, 64),
        heatmap_hw=(16, 16),
    )
    instances = load_detections(
        coco_dets / "person_detection_results/COCO_val2017_detections_AP_H_56_person.json",
        coco_dets,
        "val2017",
        aspect_ratio=1.0,
    )
    model = build_model(cfg.model, 17, generator=torch.Generator().manual_seed(0))
    results = predict(model, instances, cfg, torch.device("cpu"), batch_size=64)
    assert 0 < len(results) <= len(instances)
    metrics = evaluate_keypoints(coco_dets / "annotations/person_keypoints_val2017.json", results)
    for name in STAT_NAMES:
        assert 0.0 <= metrics[name] <= 1.0, name
    assert set(metrics["ap_per_oks"]) == set(OKS_KEYS)
    assert all(0.0 <= v <= 1.0 for v in metrics["ap_per_oks"].values())
    # a random model scores every person 0 (no joint above IN_VIS_THRE): OKS-NMS visits the tied
    # scores in the official argsort()[::-1] order, and the shares sum to 1 over matched detections
    matched = metrics["errors"]["counts"]["matched_detections"]
    assert sum(metrics["errors"]["overall"].values()) == pytest.approx(1.0 if matched else 0.0)
