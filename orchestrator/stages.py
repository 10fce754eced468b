"""Run one stage of a plan exactly once (DESIGN.md §3–5): find it in the store, wait for the trial
already computing it, or compute it with one Ray Train `TorchTrainer`, then publish `result.json`.

Called inside a Ray Tune trial (the trial is the "Train driver"). A stage is computed once even when
several trials want it at the same moment: a lease per stage id (a file lock under `<store>/locks/`
for local / shared-filesystem stores, a TTL lease table actor for object-store roots) with
`result.json` as the source of truth. Waiting holds no GPU: the trial itself reserves ~0 CPU.
The trainer's name is the stage id, so a re-created trainer resumes a half-done stage from its last
registered epoch checkpoint (Ray Train V2, ray.md §3c). `result.json` is written atomically, last.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import filelock
import ray
import ray.train
from ray.train.torch import TorchTrainer

from orchestrator.ray_context import STAGING_FILE, stage_worker_loop, staging_path
from orchestrator.store import Store
from workloads.config import to_dict

log = logging.getLogger(__name__)

WORKLOADS: dict[str, Callable[..., Any] | str] = {
    "pretrain": "workloads.hsjp.train:run_pretrain",
    "finetune": "workloads.pose.train:run_finetune",
}
"""Stage kind → workload (a callable or "module:function", imported when first used)."""

SKIP_REASON = "pretrain collapsed"
LEASE_TTL_S = 120.0
"""Object-store leases expire this long after the holder's last heartbeat (a dead holder's lease)."""

EventFn = Callable[[dict], None]


class StageFailed(RuntimeError):
    """A stage's training raised; its traceback is in the stage's error.txt."""


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


def total_epochs(config: Any) -> int | None:
    return getattr(config, "total_epochs", None) or getattr(config, "epochs", None)


# ------------------------------------------------------------------------------------- stage runner
def run_stage(
    plan: Any,
    stage_id: str,
    store: Store,
    *,
    workloads: dict | None = None,
    run_token: str = "",
    on_event: EventFn | None = None,
) -> dict:
    """Make stage `stage_id` of `plan` finished in `store` and return its result.json.

    Raises StageFailed when its training raised (error.txt holds the traceback; a later run with a
    different `run_token` retries it from its last checkpoint).
    """
    spec = plan.stages[stage_id]
    emit = _emitter(spec, on_event)
    result = store.read_result(stage_id)
    if result is not None:
        emit("found", status=result.get("status"))
        return result
    if not spec.work:
        result = publish(store, plan, spec, status="done", summary={})
        emit("done", status="done", work=False)
        return result
    parent = store.read_result(spec.parent) if spec.parent else None
    if spec.parent and parent is None:
        raise StageFailed(f"stage {stage_id}: its parent {spec.parent} is not finished in {store.uri}")
    if parent is not None and parent.get("status") == "collapsed":
        result = publish(store, plan, spec, status="skipped", summary={"reason": SKIP_REASON})
        emit("skipped", status="skipped", reason=SKIP_REASON)
        return result
    with stage_lease(store, stage_id, on_wait=lambda: emit("waiting")):
        result = store.read_result(stage_id)
        if result is not None:  # computed by the trial we waited for
            emit("found", status=result.get("status"))
            return result
        return _compute(plan, spec, store, parent, workloads, run_token, emit)


def _compute(
    plan: Any,
    spec: Any,
    store: Store,
    parent: dict | None,
    workloads: dict | None,
    run_token: str,
    emit: Callable[..., None],
) -> dict:
    earlier = store.read_error(spec.stage_id)
    if run_token and earlier is not None and earlier.startswith(f"run {run_token}\n"):
        raise StageFailed(
            f"stage {spec.stage_id} already failed in this run; see "
            f"{store.stage_path(spec.stage_id, 'error.txt')}"
        )
    store.write_stage_config(spec.stage_id, stage_record(plan, spec))
    emit("running")
    t0 = time.time()
    try:
        fit_stage(
            plan,
            spec,
            store,
            resolve_workload(spec.kind, workloads),
            parent_has_weights=bool(parent and parent.get("has_weights")),
        )
        summary = store.read_json(staging_path(store, spec.stage_id))
        if summary is None:
            raise RuntimeError(f"training of {spec.stage_id} ended without {STAGING_FILE} from rank 0")
    except Exception as exc:
        store.record_error(spec.stage_id, f"run {run_token}\nstage {spec.stage_id}\n{traceback.format_exc()}")
        emit("failed", error=f"{type(exc).__name__}: {exc}"[:500], wall_seconds=time.time() - t0)
        raise StageFailed(f"stage {spec.stage_id} failed: {type(exc).__name__}: {exc}") from exc
    wall = time.time() - t0
    summary["epochs_trained"] = sorted(
        {
            *summary.get("epochs_trained", []),
            *(r["epoch"] for r in store.read_metrics(spec.stage_id) if "epoch" in r),
        }
    )
    status = "collapsed" if summary.get("collapsed") else "done"
    result = publish(store, plan, spec, status=status, summary=summary, wall_seconds=wall)
    store.clear_error(spec.stage_id)
    store.remove(staging_path(store, spec.stage_id))
    emit(status, status=status, wall_seconds=wall)
    return result


def fit_stage(
    plan: Any, spec: Any, store: Store, workload: Callable[..., Any], parent_has_weights: bool
) -> None:
    """One Ray Train run named after the stage id (same name + storage = automatic resume)."""
    compute = plan.compute
    resources = {"CPU": float(compute.cpus_per_worker)}
    if compute.use_gpu:
        resources["GPU"] = float(compute.gpus_per_worker)
    parent_config = plan.stages[spec.parent].config if spec.parent else None
    trainer = TorchTrainer(
        stage_worker_loop,
        train_loop_config={
            "store": store.uri,
            "stage_id": spec.stage_id,
            "kind": spec.kind,
            "workload": workload,
            "stage_config": spec.config,
            "data": plan.data,
            "parent_id": spec.parent,
            "parent_config": parent_config,
            "parent_has_weights": parent_has_weights,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=compute.workers_per_stage, use_gpu=compute.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=spec.stage_id,
            storage_path=store.uri_of("stages", spec.stage_id, "train"),
            failure_config=ray.train.FailureConfig(max_failures=compute.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=_tune_callbacks(),
        ),
    )
    trainer.fit()


def _tune_callbacks() -> list:
    """Forward each epoch report to Ray Tune when running inside a Tune trial."""
    try:
        from ray.tune.integration.ray_train import TuneReportCallback

        return [TuneReportCallback()]
    except (ImportError, RuntimeError):  # RuntimeError: not in a Tune session
        return []


# ------------------------------------------------------------------------------------ publishing
def stage_record(plan: Any, spec: Any) -> dict:
    """What identifies a stage (config.json; also the head of result.json)."""
    config = to_dict(spec.config)
    if spec.kind == "finetune" and spec.parent:
        parent_cfg = plan.stages[spec.parent].config
        config["init"] = {"method": parent_cfg.method, "pretrain": to_dict(parent_cfg)}
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
    """Write result.json (atomically, last) following the schema in the brief."""
    compute = plan.compute
    hours = wall_seconds / 3600.0 * compute.workers_per_stage
    result = {
        **stage_record(plan, spec),
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
    }
    if "reason" in summary:
        result["reason"] = summary["reason"]
    store.write_result(spec.stage_id, result)
    return store.read_result(spec.stage_id) or result


def _light_provenance(spec: Any) -> dict:
    from workloads.provenance import provenance

    return provenance(to_dict(spec.config))


def _emitter(spec: Any, on_event: EventFn | None) -> Callable[..., None]:
    def emit(state: str, **extra: Any) -> None:
        log.info("stage %s: %s %s", spec.stage_id, state, extra or "")
        if on_event is not None:
            on_event(
                {
                    "event": "stage",
                    "stage_id": spec.stage_id,
                    "kind": spec.kind,
                    "state": state,
                    "epochs": total_epochs(spec.config),
                    "time": time.time(),
                    **extra,
                }
            )

    return emit


# ---------------------------------------------------------------------------------------- leases
@contextlib.contextmanager
def stage_lease(store: Store, stage_id: str, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold the right to compute `stage_id`; blocks (calling `on_wait` once) while another holds it."""
    if store.is_local:
        folder = os.path.join(store.base, "locks")
        os.makedirs(folder, exist_ok=True)
        lock = filelock.FileLock(os.path.join(folder, f"{stage_id}.lock"))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            if on_wait:
                on_wait()
            lock.acquire()  # flock: the OS frees it if the holder dies
        try:
            yield
        finally:
            lock.release()
    else:
        with _actor_lease(stage_id, on_wait):
            yield


class LeaseTable:
    """Leases with expiry: `acquire` succeeds when the key is free, expired, or already the caller's."""

    def __init__(self) -> None:
        self._leases: dict[str, tuple[str, float]] = {}

    def acquire(self, key: str, holder: str, ttl_s: float, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        current = self._leases.get(key)
        if current is not None and current[0] != holder and current[1] > now:
            return False
        self._leases[key] = (holder, now + ttl_s)
        return True

    def release(self, key: str, holder: str) -> None:
        if self._leases.get(key, ("", 0.0))[0] == holder:
            del self._leases[key]


@contextlib.contextmanager
def _actor_lease(stage_id: str, on_wait: Callable[[], None] | None) -> Iterator[None]:
    table = (
        ray.remote(num_cpus=0)(LeaseTable)
        .options(name="hsjp-stage-leases", namespace="hsjp-study", lifetime="detached", get_if_exists=True)
        .remote()
    )
    holder = uuid.uuid4().hex
    waited = False
    while not ray.get(table.acquire.remote(stage_id, holder, LEASE_TTL_S)):
        if not waited and on_wait:
            on_wait()
        waited = True
        time.sleep(2.0)
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(LEASE_TTL_S / 4):
            ray.get(table.acquire.remote(stage_id, holder, LEASE_TTL_S))

    beat = threading.Thread(target=heartbeat, daemon=True, name=f"lease-{stage_id}")
    beat.start()
    try:
        yield
    finally:
        stop.set()
        ray.get(table.release.remote(stage_id, holder))
