"""One stage's bookkeeping, Ray-free: an attempt at computing it (begun, failed or finished by the runner
around its trainer, `orchestrator.ray.tune.stage_trial`, or a fake in tests), publishing result.json
(atomically, last), recording error.txt. The trainer is named by the stage id, so a re-created trainer
resumes from its last epoch checkpoint (Ray Train V2).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.plan import stage_request
from orchestrator.schedule import failures
from orchestrator.schedule.lineage import made_with
from orchestrator.store import disk
from orchestrator.store.format import FAILED_ON_FILE, STAGING_FILE, StageKind, StageState
from orchestrator.store.store import Store
from workloads.config import PretrainConfig, execution_dict, to_dict

if TYPE_CHECKING:
    from orchestrator.plan import Plan, StageSpec

log = logging.getLogger(__name__)

Workload = Callable[..., Any]
"""A stage kind's entry point: (config, data, ctx[, init=parent config]) → `workloads.context.StageResult`."""


class StageFailed(RuntimeError):
    """A stage's training raised; its traceback is in the stage's error.txt, `decision` (an
    `orchestrator.schedule.failures.Decision`) says whether it is retried."""

    def __init__(self, message: str, decision: failures.Decision | None = None):
        super().__init__(message)
        self.decision = decision


# ------------------------------------------------------------------------------------- computing
@dataclass
class StageAttempt:
    """One attempt at computing a launched stage (`begin_attempt`, then `finish` or `failed`)."""

    plan: Plan
    spec: StageSpec
    store: Store
    done: Mapping[str, Any] | None  # its result when finished (a trial restored after it was published)
    parent_has_weights: bool = False
    started: float = 0.0

    def failed(self, exc: BaseException, *, run_token: str = "", node: str | None = None) -> StageFailed:
        """Record the failed attempt (`failures.record_failure`); the StageFailed returned carries the
        decision. A retry resumes from the last epoch checkpoint."""
        store, stage_id = self.store, self.spec.stage_id
        on_path = store.stage_path(stage_id, FAILED_ON_FILE)  # corrupt: the failure is still recorded
        where = store.read_json_or_warn(on_path, "the failing worker's node is not named")
        on_node = where.get("node") if isinstance(where, dict) else None
        attempt = failures.attempt_from_exception(exc, node=on_node or node, run_token=run_token)
        decision = failures.record_failure(
            store,
            stage_id,
            attempt,
            failures.FailurePolicy.from_compute(self.plan.compute),
            study=self.plan.study,
        )
        return StageFailed(f"stage {stage_id} {failures.status_text(decision)}", decision)

    def finish(self) -> dict[str, Any]:
        """Publish result.json (returned) from rank 0's staging.json, clear the failure record, prune the
        epoch checkpoints (`disk.prune_stage`). StageFailed (recorded) when rank 0 wrote no summary."""
        store, plan, stage_id = self.store, self.plan, self.spec.stage_id
        summary = store.read_json(store.stage_path(stage_id, STAGING_FILE))
        if summary is None:
            missing = RuntimeError(f"training of {stage_id} ended without {STAGING_FILE} from rank 0")
            raise self.failed(missing) from missing
        epochs = {r["epoch"] for r in store.read_metrics(stage_id) if "epoch" in r}
        summary["epochs_trained"] = sorted(epochs.union(summary.get("epochs_trained", [])))
        status = StageState.COLLAPSED if summary.get("collapsed") else StageState.DONE
        wall = time.time() - self.started
        result = publish(store, plan, self.spec, status=status, summary=summary, wall_seconds=wall)
        store.clear_error(stage_id)
        failures.clear_attempts(store, stage_id)
        store.remove(store.stage_path(stage_id, STAGING_FILE))
        report = disk.prune_stage(store, stage_id, keep_last=plan.compute.keep_last_checkpoint)
        if report.removed:
            log.info("%s", report.line())
        return result


def begin_attempt(plan: Plan, stage_id: str, store: Store) -> StageAttempt:
    """Start computing a launched stage: its config.json written, an old failing node forgotten. A stage
    already finished in the store comes back with `done` set. Raises StageFailed when its parent has
    work and is not finished."""
    spec = plan.stages[stage_id]
    result = store.read_result(stage_id)
    if result is not None:
        return StageAttempt(plan, spec, store, done=result)
    parent = store.read_result(spec.parent) if spec.parent else None
    if spec.parent and parent is None and plan.stages[spec.parent].work:
        raise StageFailed(f"stage {stage_id}: its parent {spec.parent} is not finished in {store.display}")
    store.write_stage_config(stage_id, stage_record(plan, spec))
    store.remove(store.stage_path(stage_id, FAILED_ON_FILE))
    has_weights = bool(parent and parent.get("has_weights"))
    return StageAttempt(plan, spec, store, done=None, parent_has_weights=has_weights, started=time.time())


# ------------------------------------------------------------------------------------ publishing
def stage_record(plan: Plan, spec: StageSpec) -> dict[str, Any]:
    """What identifies a stage (config.json; also the head of result.json)."""
    config = to_dict(spec.config)
    if spec.kind == StageKind.FINETUNE and spec.parent:
        parent_cfg = plan.stages[spec.parent].config
        assert isinstance(parent_cfg, PretrainConfig), f"{spec.parent} is not a pretrain stage"
        config["init"] = {"method": parent_cfg.method, "pretrain": to_dict(parent_cfg)}
    if spec.kind == StageKind.EVALUATE and spec.parent:  # its finetune's record (the report classifies by it)
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
    store: Store,
    plan: Plan,
    spec: StageSpec,
    *,
    status: str,
    summary: dict[str, Any],
    wall_seconds: float = 0.0,
) -> dict[str, Any]:
    """Write the stage's config.json (a stage published without a trial has none yet), then result.json."""
    record = stage_record(plan, spec)
    store.write_stage_config(spec.stage_id, record)
    request = stage_request(plan.compute, spec.kind)
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
        "device_hours": wall_seconds / 3600.0 * request.workers,
        "gpu_hours": wall_seconds / 3600.0 * request.total.get("GPU", 0.0),
        "provenance": summary.get("provenance") or _light_provenance(spec),
        "workload_versions": made_with(spec, store.read_result(spec.parent) if spec.parent else None),
        "execution": {**execution_dict(spec.config), **execution_dict(plan.data, "data.")},
    }
    if "reason" in summary:
        result["reason"] = summary["reason"]
    store.write_result(spec.stage_id, result)
    return dict(store.read_result(spec.stage_id) or result)


def _light_provenance(spec: StageSpec) -> dict[str, Any]:
    from workloads.provenance import provenance

    return provenance(to_dict(spec.config))
