"""StageContext on Ray Train V2 (DESIGN.md §3, "The seam"): the code that runs inside Train workers.

`stage_worker_loop` is the `train_loop_per_worker` of every working stage. It builds a
`RayStageContext` (rank / world size / device from `ray.train`; epoch checkpoints registered with
Ray Train so a re-created trainer of the same name resumes the stage; metrics appended to the
store's `metrics.jsonl`), calls the workload, and on rank 0 writes the output weights and a
staging file with the StageResult summary. The driver side (`orchestrator.stages`) publishes
`result.json` from that staging file. This is the only module that calls `ray.train` inside workers.
"""

from __future__ import annotations

import io
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pyarrow.fs as pafs
import ray.train
import ray.train.torch
import torch
from torch import nn

from orchestrator import tb
from orchestrator.store import Store
from workloads.config import to_dict
from workloads.context import StageResult
from workloads.engine import DDP_KWARGS
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
        """The state of the newest readable epoch checkpoint of this stage's Train run.

        Ray Train hands back its latest checkpoint. If that one's `state.pt` cannot be loaded (a
        truncated upload, a node lost mid-write), the earlier `checkpoint_*` folders of the same Train
        run (`<store>/stages/<id>/train/<id>/`, names sort by time) are tried newest first, each failure
        logged as a warning naming the file; with none readable the stage starts from scratch (also
        warned). Retraining a few epochs is cheaper than a stage that can never resume.
        """
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        fs, latest = checkpoint.filesystem, checkpoint.path.rstrip("/")
        run_dir = latest.rsplit("/", 1)[0]
        try:
            infos = fs.get_file_info(pafs.FileSelector(run_dir, recursive=False))
            earlier = [i.path for i in infos if i.type == pafs.FileType.Directory]
        except OSError as exc:
            log.warning(
                "stage %s: cannot list %s (%s); only the latest checkpoint is tried",
                self.stage_id,
                run_dir,
                exc,
            )
            earlier = []
        found = first_loadable_state(
            checkpoint_dirs([latest, *earlier], latest), lambda d: _load_state(fs, d)
        )
        if found is None:
            log.warning(
                "stage %s: no readable %s in %s; starting the stage from scratch",
                self.stage_id,
                STATE_FILE,
                run_dir,
            )
            return None
        folder, state = found
        self.resumed_from = int(state["epoch"]) if "epoch" in state else None
        log.info("stage %s: resuming from %s (epoch %s)", self.stage_id, folder, self.resumed_from)
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
        checkpoint = None
        if self.rank == 0:  # `state` is host memory already (engine.host_copy): serialise it locally
            folder = tempfile.mkdtemp(prefix="hsjp-ckpt-")
            torch.save(state, os.path.join(folder, STATE_FILE))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        # the upload to the storage runs in Ray Train's background thread; the checkpoint is registered
        # (and a resume can see it) only once it is complete; the local folder is deleted after the upload
        ray.train.report(
            progress_metrics(row),
            checkpoint=checkpoint,
            checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
            delete_local_checkpoint_after_upload=True,
        )
        if self.rank == 0:  # progress only: a resume follows Ray's registered checkpoints, not this row
            self.store.append_metrics(self.stage_id, row)
            tb.log_epoch(self.store, self.stage_id, row)  # <store>/stages/<id>/tb/ (orchestrator.tb)

    def report(self, metrics: dict) -> None:
        """Within-epoch progress. Not forwarded through Ray Train: its report is a barrier that every
        rank must reach equally often, which a workload's free-form progress calls do not promise."""
        self.last_report = _plain(metrics)
        log.debug("stage %s rank %d: %s", self.stage_id, self.rank, self.last_report)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        if self.world_size > 1:
            return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=dict(DDP_KWARGS))
        return model.to(self.device)


def checkpoint_dirs(dirs: list[str], latest: str) -> list[str]:
    """The Train run's `checkpoint_*` folders not newer than `latest`, newest first (Ray names them
    `checkpoint_<timestamp>`, so name order is time order); `latest` is always the first."""
    latest = latest.rstrip("/")
    name = latest.rsplit("/", 1)[-1]
    older = {
        d.rstrip("/")
        for d in dirs
        if d.rstrip("/").rsplit("/", 1)[-1].startswith("checkpoint_")
        and d.rstrip("/").rsplit("/", 1)[-1] < name
    }
    return [latest, *sorted(older, key=lambda d: d.rsplit("/", 1)[-1], reverse=True)]


def first_loadable_state(dirs: list[str], load: Callable[[str], dict]) -> tuple[str, dict] | None:
    """(folder, state) of the first folder in `dirs` whose state `load` can read, or None. Each folder
    that fails is logged as a warning naming its state file; the next one is tried."""
    for folder in dirs:
        try:
            state = load(folder)
        except Exception as exc:  # truncated / missing / not a state dict: try the previous checkpoint
            log.warning(
                "%s/%s is unreadable (%s: %s); falling back to the previous checkpoint",
                folder,
                STATE_FILE,
                type(exc).__name__,
                str(exc)[:200],
            )
            continue
        if not isinstance(state, dict):
            log.warning(
                "%s/%s holds %s, not a state dict; falling back to the previous checkpoint",
                folder,
                STATE_FILE,
                type(state).__name__,
            )
            continue
        return folder, state
    return None


def _load_state(fs: pafs.FileSystem, folder: str) -> dict:
    """`<folder>/state.pt` through the checkpoint's filesystem (local or object store)."""
    path = f"{folder}/{STATE_FILE}"
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{path} not found")
    with fs.open_input_stream(path) as f:
        data = f.read()
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


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
    for name, data in result.artifacts.items():  # e.g. the test-dev results file + zip (pose/testdev.py)
        store.write_bytes(store.stage_path(config["stage_id"], name), data)
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
