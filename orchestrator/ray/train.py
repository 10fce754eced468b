"""Ray Train for one stage: the `TorchTrainer` named after the stage id (the same name and storage resume
a half-done stage, Train V2), and inside each of its workers the workload's `StageContext`.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import socket
import tempfile
import time
from typing import Any

import pyarrow.fs as pafs
import ray.train
import ray.train.torch
import torch
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from orchestrator.plan import Plan, StageSpec, stage_request
from orchestrator.ray.connect import node_ip
from orchestrator.schedule.stage import Workload
from orchestrator.store import tb
from orchestrator.store.checkpoints import checkpoint_dirs, first_loadable_state, load_state
from orchestrator.store.format import (
    FAILED_ON_FILE,
    STAGES_DIR,
    STAGING_FILE,
    STATE_FILE,
    TRAIN_DIR,
    StageKind,
    finite_or_none,
)
from orchestrator.store.store import Store
from workloads.config import to_dict
from workloads.context import StageResult
from workloads.engine import DDP_KWARGS
from workloads.hsjp.train import run_pretrain
from workloads.pose.testdev import run_evaluation
from workloads.pose.train import run_finetune
from workloads.provenance import provenance

log = logging.getLogger(__name__)


def stage_trainer(
    plan: Plan, spec: StageSpec, store: Store, stand_in: Workload | None, parent_has_weights: bool
) -> TorchTrainer:
    """The stage's Ray Train run, named after the stage id (same name + storage = automatic resume)."""
    request = stage_request(plan.compute, spec.kind)
    parent_config = plan.stages[spec.parent].config if spec.parent else None
    path, fs = store.ray_storage(STAGES_DIR, spec.stage_id, TRAIN_DIR)
    return TorchTrainer(
        stage_worker_loop,
        train_loop_config={
            "store": store,
            "stage_id": spec.stage_id,
            "kind": spec.kind,
            "workload": stand_in,
            "stage_config": spec.config,
            "data": plan.data,
            "parent_id": spec.parent,
            "parent_config": parent_config,
            "parent_has_weights": parent_has_weights,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=request.workers, use_gpu=plan.compute.use_gpu, resources_per_worker=request.per_worker
        ),
        run_config=ray.train.RunConfig(
            name=spec.stage_id,
            storage_path=path,
            storage_filesystem=fs,
            # a lost worker / node, or a drained one (Train's default -1 would retry that unbounded and
            # unrecorded), ends this fit: the stage's failure policy decides the retry, which resumes
            # from the last registered checkpoint (preemptions bounded by PREEMPTION_BUDGET)
            failure_config=ray.train.FailureConfig(  # type: ignore[call-arg]  # Ray's stub lacks the kwarg
                max_failures=0, max_preemption_failures=0
            ),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=_train_callbacks(),
        ),
    )


def _train_callbacks() -> list[Any]:
    """Forward each epoch report to Ray Tune (the trial's progress lines)."""
    try:
        return [TuneReportCallback()]  # type: ignore[no-untyped-call]  # untyped in Ray
    except RuntimeError:  # not in a Tune session
        return []


class RayStageContext:
    """`workloads.context.StageContext` for one Ray Train worker of one stage: rank / world size /
    device from `ray.train`; epoch checkpoints registered with Ray Train so a re-created trainer of the
    same name resumes the stage; metrics appended to the store's `metrics.jsonl`."""

    def __init__(
        self, store: Store, stage_id: str, parent_id: str | None = None, parent_has_weights: bool = False
    ):
        train_ctx = ray.train.get_context()
        self.rank: int = train_ctx.get_world_rank()
        self.world_size: int = train_ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.store = store
        self.stage_id = stage_id
        self._parent_id = parent_id if parent_has_weights else None
        self._parent: dict[str, Any] | None = None
        self.resumed_from: int | None = None
        """Epoch of the checkpoint this attempt resumed from (None: started fresh)."""
        self.last_report: dict[str, Any] = {}

    def resume_state(self) -> dict[str, Any] | None:
        """The state of the newest readable epoch checkpoint of this stage's Train run: Ray's latest, else
        (a truncated upload, a node lost mid-write) the earlier `checkpoint_*` folders of the same run
        newest first, each failure warned; none readable: from scratch (retraining a few epochs is cheaper
        than a stage that can never resume)."""
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
        found = first_loadable_state(checkpoint_dirs([latest, *earlier], latest), lambda d: load_state(fs, d))
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

    def parent_weights(self) -> dict[str, Any] | None:
        if self._parent_id is None:
            return None
        if self._parent is None:
            self._parent = self.store.load_weights(self._parent_id)
        return self._parent

    def save_epoch(self, state: dict[str, Any], metrics: dict[str, Any]) -> None:
        """Rank 0 writes `state.pt`; every rank reports (Ray Train's report is a barrier)."""
        row = {
            **_plain(metrics),
            "stage_id": self.stage_id,
            "time": time.time(),
            "world_size": self.world_size,
        }
        if self.resumed_from is not None:
            row["resumed_from"] = self.resumed_from
        if self.rank == 0:  # progress only: a resume follows Ray's registered checkpoints, not this row.
            # Written before the checkpoint is reported: a checkpoint registered while the row is still
            # unwritten (the upload thread wins the race, then the driver is killed) would leave that
            # epoch without a row for good; this way a kill can only leave a row whose epoch is trained
            # again (metrics.jsonl then holds it twice, as for any re-trained epoch).
            self.store.append_metrics(self.stage_id, row)
            tb.log_epoch(self.store, self.stage_id, row)  # <store>/stages/<id>/tb/ (orchestrator.store.tb)
        checkpoint, upload = None, None
        if self.rank == 0:  # `state` is host memory already (engine.host_copy): written in the background
            checkpoint = ray.train.Checkpoint.from_directory(tempfile.mkdtemp(prefix="hsjp-ckpt-"))
            upload = functools.partial(_write_state, ray.train.get_context().get_storage(), state)
        # Ray Train runs `upload` in its background upload thread (ASYNC): the serialisation and the write
        # of state.pt to the store leave the training step; the checkpoint is registered (and a resume can
        # see it) only once the write is complete, so a crash mid-write leaves no registered half file
        ray.train.report(
            {k: v for k, v in row.items() if isinstance(v, (bool, int, float, str)) or v is None},  # scalars
            checkpoint=checkpoint,
            checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
            delete_local_checkpoint_after_upload=True,
            checkpoint_upload_fn=upload,
        )

    def report(self, metrics: dict[str, Any]) -> None:
        """Within-epoch progress. Not forwarded through Ray Train: its report is a barrier that every
        rank must reach equally often, which a workload's free-form progress calls do not promise."""
        self.last_report = _plain(metrics)
        log.debug("stage %s rank %d: %s", self.stage_id, self.rank, self.last_report)

    def prepare_model(self, model: Any) -> Any:
        if self.world_size > 1:
            return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=dict(DDP_KWARGS))
        return model.to(self.device)


def _write_state(storage: Any, state: dict[str, Any], local: Any, checkpoint_dir_name: str) -> Any:
    """Ray Train's `checkpoint_upload_fn` (run in its upload thread): `state.pt` serialised straight into
    the Train run's checkpoint folder on the store (`StorageContext`, a Ray Train DeveloperAPI, names
    it as Ray's own uploader would); `local` is the empty placeholder folder Ray then deletes."""
    dest = storage.build_checkpoint_path_from_name(checkpoint_dir_name)
    fs = storage.storage_filesystem
    buf = io.BytesIO()
    torch.save(state, buf)
    fs.create_dir(dest, recursive=True)
    with fs.open_output_stream(f"{dest}/{STATE_FILE}") as f:
        f.write(buf.getbuffer())
    return ray.train.Checkpoint(dest, filesystem=fs)


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        str(k): v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v for k, v in metrics.items()
    }


def stage_worker_loop(config: dict[str, Any]) -> None:
    """`train_loop_per_worker` of a working stage; `config` is `stage_trainer`'s `train_loop_config`."""
    sid, kind, cfg, data = config["stage_id"], config["kind"], config["stage_config"], config["data"]
    init = config.get("parent_config")
    store = config["store"]
    if not isinstance(store, Store):
        store = Store(store)
    ctx = RayStageContext(store, sid, config.get("parent_id"), config.get("parent_has_weights", False))
    stand_in: Workload | None = config.get("workload")  # tests: a stand-in for the stage's workload
    try:
        if stand_in is not None and kind == StageKind.FINETUNE:
            result = stand_in(cfg, data, ctx, init=init)
        elif stand_in is not None:
            result = stand_in(cfg, data, ctx)
        elif kind == StageKind.PRETRAIN:
            result = run_pretrain(cfg, data, ctx)
        elif kind == StageKind.FINETUNE:
            result = run_finetune(cfg, data, ctx, init=init)
        else:
            result = run_evaluation(cfg, data, ctx)
    except Exception:
        with contextlib.suppress(Exception):  # where it failed, for error.txt (best effort)
            store.write_json(
                store.stage_path(sid, FAILED_ON_FILE),
                {"rank": ctx.rank, "node": f"{node_ip()} ({socket.gethostname()})"},
            )
        raise
    if not isinstance(result, StageResult):
        raise TypeError(
            f"stage {sid}: workload {getattr(stand_in, '__name__', kind)} "
            f"returned {type(result).__name__}, expected workloads.context.StageResult"
        )
    if ctx.rank != 0:
        return
    if result.weights is not None:
        store.save_weights(sid, result.weights)
    for name, data in result.artifacts.items():  # e.g. the test-dev results file + zip (pose/testdev.py)
        store.write_bytes(store.stage_path(sid, name), data)
    summary = result.summary()
    summary["metrics"] = finite_or_none(summary["metrics"])
    summary["has_weights"] = result.weights is not None
    summary["resumed_from"] = ctx.resumed_from
    summary["provenance"] = {
        **provenance(to_dict(cfg), ctx.device, ctx.world_size),
        **(result.provenance or {}),
    }
    store.write_json(store.stage_path(sid, STAGING_FILE), summary)
