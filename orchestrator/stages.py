"""One stage's bookkeeping, Ray-free: compute it (through a `fit` function the runner supplies),
publish `result.json`, record `error.txt`; and the file lease that makes a stage computed once by
the runs sharing a local or shared-filesystem store.

The runner (`orchestrator.ray_backend`: one Ray Tune trial per stage, one Ray Train run inside it;
tests: an in-process fake) calls `compute_stage` once the scheduler (`orchestrator.scheduler`) has
launched the stage: its parent is finished and its lease is held by this run. The trainer's name is
the stage id, so a re-created trainer resumes a half-done stage from its last registered epoch
checkpoint (Ray Train V2). `result.json` is written atomically, last.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import filelock

from orchestrator import disk, failures
from orchestrator.lineage import made_with
from orchestrator.plan import stage_workers
from orchestrator.store import Store
from orchestrator.store_format import StageState
from workloads.config import execution_dict, to_dict

log = logging.getLogger(__name__)

WORKLOADS: dict[str, Callable[..., Any] | str] = {
    "pretrain": "workloads.hsjp.train:run_pretrain",
    "finetune": "workloads.pose.train:run_finetune",
    "evaluate": "workloads.pose.testdev:run_evaluation",
}
"""Stage kind → workload (a callable or "module:function", imported when first used)."""

STAGING_FILE = "staging.json"
"""Rank 0's StageResult summary, published as result.json by the trial (then removed)."""

EventFn = Callable[[dict], None]
FitFn = Callable[..., None]
"""fit(plan, spec, store, workload, parent_has_weights): train the stage; rank 0 writes staging.json."""


FAILED_ON_FILE = "failed_on.json"
"""Written by a Train worker whose workload raised: its rank and node (for error.txt)."""


class StageFailed(RuntimeError):
    """A stage's training raised; its traceback is in the stage's error.txt, `decision` (an
    `orchestrator.failures.Decision`) says whether it is retried."""

    def __init__(self, message: str, decision: Any = None):
        super().__init__(message)
        self.decision = decision


def staging_path(store: Store, stage_id: str) -> str:
    return store.stage_path(stage_id, STAGING_FILE)


def resolve_workload(kind: str, workloads: dict | None = None) -> Callable[..., Any]:
    registry = {**WORKLOADS, **(workloads or {})}
    if kind not in registry:
        raise KeyError(f"no workload for stage kind {kind!r}; known kinds: {', '.join(sorted(registry))}")
    ref = registry[kind]
    if callable(ref):
        return ref
    module, _, name = str(ref).partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"workload {ref!r} for stage kind {kind!r} cannot be imported: {exc}") from exc


# ------------------------------------------------------------------------------------- computing
def compute_stage(
    plan: Any,
    stage_id: str,
    store: Store,
    fit: FitFn,
    *,
    workloads: dict | None = None,
    run_token: str = "",
    emit: EventFn | None = None,
    node: str | None = None,
) -> dict:
    """Train a launched stage and publish its result.json (returned). A stage already finished in the
    store (a trial restored after its stage was published) is returned as it is.

    Raises StageFailed when training raised: the attempt is recorded (`orchestrator.failures`:
    attempts.json, error.txt with the worker's traceback and node) and the exception carries the
    decision (retry after a backoff, or failed); a retry resumes from the last epoch checkpoint. When
    it finishes, its epoch checkpoints are pruned to what a later step can need (`orchestrator.disk`).
    """
    spec = plan.stages[stage_id]
    result = store.read_result(stage_id)
    if result is not None:
        return result
    parent = store.read_result(spec.parent) if spec.parent else None
    if spec.parent and parent is None and plan.stages[spec.parent].work:
        raise StageFailed(f"stage {stage_id}: its parent {spec.parent} is not finished in {store.display}")
    store.write_stage_config(stage_id, stage_record(plan, spec))
    store.remove(store.stage_path(stage_id, FAILED_ON_FILE))
    t0 = time.time()
    try:
        fit(
            plan,
            spec,
            store,
            resolve_workload(spec.kind, workloads),
            parent_has_weights=bool(parent and parent.get("has_weights")),
        )
        summary = store.read_json(staging_path(store, stage_id))
        if summary is None:
            raise RuntimeError(f"training of {stage_id} ended without {STAGING_FILE} from rank 0")
    except Exception as exc:
        on_path = store.stage_path(stage_id, FAILED_ON_FILE)  # corrupt: the failure is still recorded
        where = store.read_json_or_warn(on_path, "the failing worker's node is not named")
        on_node = where.get("node") if isinstance(where, dict) else None
        attempt = failures.attempt_from_exception(exc, node=on_node or node, run_token=run_token)
        decision = failures.record_failure(
            store, stage_id, attempt, failures.FailurePolicy.from_compute(plan.compute), study=plan.study
        )
        if emit is not None:
            emit({"state": decision.state, "error": decision.error, "wall_seconds": time.time() - t0})
        raise StageFailed(f"stage {stage_id} {failures.status_text(decision)}", decision) from exc
    wall = time.time() - t0
    summary["epochs_trained"] = sorted(
        {
            *summary.get("epochs_trained", []),
            *(r["epoch"] for r in store.read_metrics(stage_id) if "epoch" in r),
        }
    )
    status = StageState.COLLAPSED if summary.get("collapsed") else StageState.DONE
    result = publish(store, plan, spec, status=status, summary=summary, wall_seconds=wall)
    store.clear_error(stage_id)
    failures.clear_attempts(store, stage_id)
    store.remove(staging_path(store, stage_id))
    report = disk.prune_stage(
        store, stage_id, keep_last=bool(getattr(plan.compute, "keep_last_checkpoint", False))
    )
    if report.removed:
        log.info("%s", report.line())
    return result


# ---------------------------------------------------------------------------------------- leases
class FileLease:
    """Stage leases as file locks under `<store>/locks/` (local and shared-filesystem stores), held by
    the driver from launch to completion; the OS frees a dead holder's lock."""

    def __init__(self, store: Store):
        self.folder = os.path.join(store.base, "locks")
        os.makedirs(self.folder, exist_ok=True)
        self._held: dict[str, filelock.BaseFileLock] = {}

    def try_acquire(self, stage_id: str) -> bool:
        if stage_id in self._held:
            return True
        lock = filelock.FileLock(os.path.join(self.folder, f"{stage_id}.lock"), thread_local=False)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            return False
        self._held[stage_id] = lock
        return True

    def release(self, stage_id: str) -> None:
        lock = self._held.pop(stage_id, None)
        if lock is not None:
            lock.release()

    def release_all(self) -> None:
        for stage_id in list(self._held):
            self.release(stage_id)


# ------------------------------------------------------------------------------------ publishing
def stage_record(plan: Any, spec: Any) -> dict:
    """What identifies a stage (config.json; also the head of result.json)."""
    config = to_dict(spec.config)
    if spec.kind == "finetune" and spec.parent:
        parent_cfg = plan.stages[spec.parent].config
        config["init"] = {"method": parent_cfg.method, "pretrain": to_dict(parent_cfg)}
    if spec.kind == "evaluate" and spec.parent:  # its finetune's record (the report classifies by it)
        config["init"] = stage_record(plan, plan.stages[spec.parent])["config"].get("init")
    return {
        "stage_id": spec.stage_id,
        "kind": spec.kind,
        "config": config,
        "data": to_dict(plan.data),
        "parent": spec.parent,
        "work": bool(spec.work),
    }


def publish(
    store: Store, plan: Any, spec: Any, *, status: str, summary: dict, wall_seconds: float = 0.0
) -> dict:
    """Write the stage's config.json (its `StageRecord`; a stage published without a trial has none
    yet: `store_format.SCHEMA_VERSION` 2) and then result.json (`ResultRecord`, atomically, last)."""
    compute = plan.compute
    record = stage_record(plan, spec)
    store.write_stage_config(spec.stage_id, record)
    hours = wall_seconds / 3600.0 * stage_workers(spec, compute)
    result = {
        **record,
        "status": status,
        "metrics": summary.get("metrics", {}),
        "collapsed": bool(summary.get("collapsed", False)),
        "collapsed_epoch": summary.get("collapsed_epoch"),
        "epochs_trained": summary.get("epochs_trained", []),
        "has_weights": bool(summary.get("has_weights", False)),
        "resumed_from": summary.get("resumed_from"),
        "wall_seconds": wall_seconds,
        "device_hours": hours,
        "gpu_hours": hours * compute.gpus_per_worker if compute.use_gpu else 0.0,
        "provenance": summary.get("provenance") or _light_provenance(spec),
        "workload_versions": made_with(spec, store.read_result(spec.parent) if spec.parent else None),
        "execution": {
            **execution_dict(spec.config),
            **execution_dict(plan.data, "data."),
        },
    }
    if "reason" in summary:
        result["reason"] = summary["reason"]
    store.write_result(spec.stage_id, result)
    return store.read_result(spec.stage_id) or result


def _light_provenance(spec: Any) -> dict:
    from workloads.provenance import provenance

    return provenance(to_dict(spec.config))
