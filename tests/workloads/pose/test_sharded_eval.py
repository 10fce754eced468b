"""Evaluation sharded across ranks: whole images per rank, every box once, and the gathered results
score exactly as one rank's; the gather itself through a real two-process gloo group."""

from __future__ import annotations

import collections

import pytest
import torch

from tests.workloads.gloo import run_on_ranks
from workloads.config import DataConfig, FinetuneConfig, ModelConfig
from workloads.data.coco import annotation_path
from workloads.models import build_model
from workloads.pose import inference
from workloads.pose.evaluate import evaluate_keypoints
from workloads.pose.train import evaluate_model, gather_results, load_val_instances, shard_by_image

TINY = ModelConfig(width=8, num_blocks=1, num_modules=(1, 1, 1))


@pytest.mark.realdata
def test_shards_hold_whole_images_and_together_score_as_one_rank(coco_dets):
    det_file = str(coco_dets / "person_detection_results" / "COCO_val2017_detections_AP_H_56_person.json")
    data = DataConfig(coco_root=str(coco_dets), detection_file=det_file, loader_workers=1)
    cfg = FinetuneConfig(model=TINY, input_hw=(64, 64), heatmap_hw=(16, 16))
    val = load_val_instances(cfg, data)
    model = build_model(TINY, 17, generator=torch.Generator().manual_seed(0))
    shards = [shard_by_image(val.instances, r, 3) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(len(val.instances)))  # every box once
    images = [{val.instances[i].image_id for i in s} for s in shards]
    assert all(a.isdisjoint(b) for k, a in enumerate(images) for b in images[k + 1 :])  # whole images
    sizes = [len(s) for s in shards]
    biggest = max(collections.Counter(inst.image_id for inst in val.instances).values())
    assert max(sizes) - min(sizes) <= biggest
    single = evaluate_model(model, val, cfg, data, torch.device("cpu"))
    parts = [inference.predict(model, [val.instances[i] for i in s], cfg, "cpu") for s in shards]
    merged = evaluate_keypoints(
        annotation_path(data.coco_root, data.val_split), [r for p in parts for r in p]
    )
    assert merged["AP"] == single["AP"] and merged["ap_per_oks"] == single["ap_per_oks"]
    assert single["eval_ranks"] == 1


def _gather_worker(rank: int) -> list[dict] | None:
    return gather_results([{"image_id": rank, "score": float(rank)}] * (rank + 1), rank, 2)


def test_results_are_gathered_to_rank_0_over_a_real_process_group():
    result = run_on_ranks(_gather_worker)
    assert result[1] is None
    assert sorted(r["image_id"] for r in result[0]) == [0, 1, 1]
