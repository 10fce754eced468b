"""StageContext on Ray Train V2 (DESIGN.md §3, "The seam"): the code that runs inside Train workers.

`stage_worker_loop` is the `train_loop_per_worker` of every working stage. It builds a
`RayStageContext` (rank / world size / device from `ray.train`; epoch checkpoints registered with
Ray Train so a re-created trainer of the same name resumes the stage; metrics appended to the
store's `metrics.jsonl`), calls the workload, and on rank 0 writes the output weights and a
staging file with the StageResult summary. The driver side (`orchestrator.stages`) publishes
`result.json` from that staging file. This is the only module that calls `ray.train` inside workers.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import ray.train
import ray.train.torch
import torch
from torch import nn

from orchestrator.store import Store
from workloads.config import to_dict
from workloads.context import StageResult
from workloads.provenance import provenance

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
"""Name of the epoch state inside each Ray Train checkpoint directory."""
STAGING_FILE = "staging.json"
"""Rank 0's StageResult summary, published as result.json by the driver (then removed)."""


def staging_path(store: Store, stage_id: str) -> str:
    return store.stage_path(stage_id, STAGING_FILE)


class RayStageContext:
    """`workloads.context.StageContext` for one Ray Train worker of one stage."""

    def __init__(
        self, store: Store, stage_id: str, parent_id: str | None = None, parent_has_weights: bool = False
    ):
        train_ctx = ray.train.get_context()
        self.rank: int = train_ctx.get_world_rank()
        self.world_size: int = train_ctx.get_world_size()
        self.device: torch.device = ray.train.torch.get_device()
        self.store = store
        self.stage_id = stage_id
        self._parent_id = parent_id if parent_has_weights else None
        self._parent: dict | None = None
        self.resumed_from: int | None = None
        """Epoch of the checkpoint this attempt resumed from (None: started fresh)."""
        self.last_report: dict = {}

    def resume_state(self) -> dict | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            path = os.path.join(folder, STATE_FILE)
            if not os.path.exists(path):
                raise FileNotFoundError(
                    f"{checkpoint.path}: Ray Train checkpoint of stage {self.stage_id} has no {STATE_FILE}"
                )
            state = torch.load(path, map_location="cpu", weights_only=True)
        self.resumed_from = int(state["epoch"]) if "epoch" in state else None
        log.info("stage %s: resuming from the checkpoint of epoch %s", self.stage_id, self.resumed_from)
        return state

    def parent_weights(self) -> dict | None:
        if self._parent_id is None:
            return None
        if self._parent is None:
            self._parent = self.store.load_weights(self._parent_id)
        return self._parent

    def save_epoch(self, state: dict, metrics: dict) -> None:
        """Rank 0 writes `state.pt`; every rank reports (Ray Train's report is a barrier)."""
        row = {
            **_plain(metrics),
            "stage_id": self.stage_id,
            "time": time.time(),
            "world_size": self.world_size,
        }
        if self.resumed_from is not None:
            row["resumed_from"] = self.resumed_from
        with tempfile.TemporaryDirectory(prefix="hsjp-ckpt-") as folder:
            checkpoint = None
            if self.rank == 0:
                torch.save(state, os.path.join(folder, STATE_FILE))
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(progress_metrics(row), checkpoint=checkpoint)
        if self.rank == 0:  # after the report: the epoch's checkpoint is persisted by now
            self.store.append_metrics(self.stage_id, row)

    def report(self, metrics: dict) -> None:
        """Within-epoch progress. Not forwarded through Ray Train: its report is a barrier that every
        rank must reach equally often, which a workload's free-form progress calls do not promise."""
        self.last_report = _plain(metrics)
        log.debug("stage %s rank %d: %s", self.stage_id, self.rank, self.last_report)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        if self.world_size > 1:
            return ray.train.torch.prepare_model(model)
        return model.to(self.device)


def progress_metrics(row: dict) -> dict:
    """The scalar part of a metrics row (what travels to Ray Train / Tune: no nested values)."""
    return {k: v for k, v in row.items() if isinstance(v, (bool, int, float, str)) or v is None}


def _plain(metrics: dict) -> dict:
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        out[str(key)] = value
    return out


def stage_worker_loop(config: dict) -> None:
    """`train_loop_per_worker` of a working stage. `config` (built by `orchestrator.stages`):
    store (URI), stage_id, kind, workload (callable), stage_config, data, parent_id,
    parent_config (finetune: the parent's PretrainConfig), parent_has_weights."""
    store = Store(config["store"])
    ctx = RayStageContext(
        store, config["stage_id"], config.get("parent_id"), config.get("parent_has_weights", False)
    )
    workload: Callable[..., StageResult] = config["workload"]
    if config["kind"] == "finetune":
        result = workload(config["stage_config"], config["data"], ctx, init=config.get("parent_config"))
    else:
        result = workload(config["stage_config"], config["data"], ctx)
    if not isinstance(result, StageResult):
        raise TypeError(
            f"stage {config['stage_id']}: workload {getattr(workload, '__name__', workload)} "
            f"returned {type(result).__name__}, expected workloads.context.StageResult"
        )
    if ctx.rank != 0:
        return
    if result.weights is not None:
        store.save_weights(config["stage_id"], result.weights)
    summary = result.summary()
    summary["metrics"] = _finite_or_none(summary["metrics"])
    summary["has_weights"] = result.weights is not None
    summary["resumed_from"] = ctx.resumed_from
    summary["provenance"] = {
        **provenance(to_dict(config["stage_config"]), ctx.device, ctx.world_size),
        **(result.provenance or {}),
    }
    store.write_json(staging_path(store, config["stage_id"]), summary)


def _finite_or_none(value: Any) -> Any:
    """NaN / Inf → None so result.json stays strict JSON (a collapsed loss is NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value
