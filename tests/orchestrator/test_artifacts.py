"""A stage's extra files (StageResult.artifacts: the test-dev results file + zip) land in its folder."""

from __future__ import annotations

import torch

import orchestrator.ray.train as ray_context
from orchestrator.store.format import STAGING_FILE
from orchestrator.store.store import Store
from workloads.config import FinetuneConfig
from workloads.context import StageResult


class _Ctx:
    """RayStageContext without Ray Train: rank 0 of 1 on the CPU."""

    def __init__(self, store, stage_id, parent_id=None, parent_has_weights=False):
        self.rank, self.world_size, self.device, self.resumed_from = 0, 1, torch.device("cpu"), None


def test_artifacts_are_written_into_the_stage_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(ray_context, "RayStageContext", _Ctx)
    store = Store(tmp_path / "store")
    files = {
        "person_keypoints_test-dev2017_x_results.json": b"[]",
        "person_keypoints_test-dev2017_x_results.zip": b"PK",
    }

    def workload(cfg, data, ctx, init=None):
        return StageResult(metrics={"AP": 0.1}, weights=None, artifacts=files)

    sid = "finetune-0123456789abcdef"
    ray_context.stage_worker_loop(
        {"store": store.uri, "stage_id": sid, "kind": "finetune", "workload": workload,
         "stage_config": FinetuneConfig(), "data": None}
    )  # fmt: skip
    for name, data in files.items():
        assert store.read_bytes(store.stage_path(sid, name)) == data
    assert store.read_json(store.stage_path(sid, STAGING_FILE))["metrics"] == {"AP": 0.1}
