"""Ray Tune for a study: `RayRunner.run` fits a Tuner whose `StageSearcher` asks the Ray-free
`StageScheduler` for the next stage (only stages whose parent is finished and whose resources are free,
so nothing waits as a trial); `stage_trial` runs one stage: its attempt begun, its trainer
(`orchestrator.ray.train`) fitted, the result published or the failure recorded (--simulate: a placement
group holding the stage's request for its estimated hours × scale).

Trial drivers hold ~nothing (a custom resource, or 1 byte of memory), never a CPU: a whole-CPU driver
deadlocks its own Train workers, and a fractional one makes 8 stages × 8 CPUs not fit a 64-CPU node.
Tune's experiment under `studies/<name>/tune` is restored (`Tuner.restore`) when the study's stages
are the ones it was started with; the store stays the source of truth either way.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow.fs as pafs
import ray
from ray import tune
from ray.tune.search import Searcher
from ray.util.placement_group import placement_group, remove_placement_group

from orchestrator.plan import stage_request
from orchestrator.ray import host
from orchestrator.ray.connect import (
    check_ray,
    cluster_capacity,
    connect,
    node_ip,
    start_local_ray,
    trial_resources,
)
from orchestrator.ray.lease import ActorLease
from orchestrator.ray.train import stage_trainer
from orchestrator.schedule.failures import last_line
from orchestrator.schedule.lease import FileLease
from orchestrator.schedule.scheduler import StageScheduler, estimated_hours, total_epochs, wall_hours
from orchestrator.schedule.stage import StageFailed, Workload, begin_attempt, publish
from orchestrator.spec.tracking import EXCLUDED, check_available, parse_tracking
from orchestrator.store.format import STUDIES_DIR, TERMINAL_STATES, TUNE_DIR, StageState
from orchestrator.store.store import Store, check_storage_for_cluster

log = logging.getLogger(__name__)


# -------------------------------------------------------------------------------------- the study
class _Active:
    """The run in progress in this driver: what the searcher and callbacks (pickled by Tune with its
    experiment, and unpickled by `Tuner.restore`) reach the live scheduler through."""

    scheduler: StageScheduler | None = None
    progress: Any = None
    """An `orchestrator.cli.progress.Progress` (or None: no progress lines)."""


ACTIVE = _Active()


class StageSearcher(Searcher):
    """Suggests one trial per stage, only when `StageScheduler.next_launch` has one ready and fitting
    (None otherwise: Tune asks again at its next step); FINISHED when every stage is settled."""

    def __init__(self) -> None:
        super().__init__(metric=None, mode=None)

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict[str, Any], **spec: Any
    ) -> bool:
        return True

    # Searcher.FINISHED is a str, which Ray's annotation (dict | None) leaves out
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        sched = ACTIVE.scheduler
        if sched is None:
            return None
        if sched.is_finished():
            return Searcher.FINISHED
        sid = sched.next_launch()
        return None if sid is None else {"stage": sid}

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        return None  # completion is handled by StageCallback, which sees the trial's config and error

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:  # the state lives in the store; nothing to keep here
            f.write("{}")

    def restore(self, checkpoint_path: str) -> None:
        return None


class StageCallback(tune.Callback):
    """Keeps the scheduler in step with Tune's trials, and feeds results to the progress lines.

    Each step it reconciles: a trial Tune runs (a fresh one, or one `Tuner.restore` resumed) whose
    stage the scheduler does not count as running is marked running; a stage the scheduler counts as
    running with no live trial any more has ended (the store says whether it finished)."""

    def __init__(self) -> None:
        self._seen: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._seen = {}

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        sched = ACTIVE.scheduler
        if sched is None:
            return
        live = {
            sid: t
            for t in trials
            if (sid := (t.config or {}).get("stage")) and t.status in ("PENDING", "RUNNING", "PAUSED")
        }
        for sid in live:
            if sid in sched.stages and sched.stages[sid].state != StageState.RUNNING:
                sched.mark_running(sid)
        for sid, run in sched.stages.items():
            if run.state == StageState.RUNNING and sid not in live and sid in self._seen:
                self._done(self._seen[sid], None)
        self._seen.update(live)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        if ACTIVE.progress is not None:
            ACTIVE.progress.on_result(_label(trial), result)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._done(trial, None)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        message = str(trial.get_error() or "trial error")
        if ACTIVE.progress is not None:
            ACTIVE.progress.on_trial_error(_label(trial), message)
        self._done(trial, last_line(message)[:500])

    def _done(self, trial: Any, error: str | None) -> None:
        sid = (trial.config or {}).get("stage")
        if sid is None:
            return
        self._seen.pop(sid, None)
        sched = ACTIVE.scheduler
        if sched is None or sid not in sched.stages or sched.stages[sid].state != StageState.RUNNING:
            return
        last = trial.last_result or {}
        sched.on_complete(
            sid,
            error=error or last.get("error"),
            started_at=last.get("held_from"),
            ended_at=last.get("held_to"),
            decision=None if error else last.get("decision"),
        )


def tracking_callbacks(cfg: Any, study: str) -> list[Any]:
    """Ray Tune's own MLflow / W&B callbacks for the study's trackers (`orchestrator.spec.tracking` parses and
    checks the `tracking:` key; empty when none is configured)."""
    if isinstance(cfg, dict):
        cfg = parse_tracking(cfg, "plan")
    if cfg is None or not cfg.trackers:
        return []
    check_available(cfg)
    callbacks: list[Any] = []
    if cfg.mlflow is not None:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        m = cfg.mlflow
        uri = str(m.get("tracking_uri") or "")
        if uri.startswith("file:") or (uri and "://" not in uri):
            # MLflow ≥ 3.7 refuses its file store unless told; a file tracking_uri asks for exactly that
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        callbacks.append(
            MLflowLoggerCallback(
                tracking_uri=m.get("tracking_uri"),
                experiment_name=m.get("experiment_name") or f"hsjp-{study}",
                tags={"study": study, **(m.get("tags") or {})},
                save_artifact=bool(m.get("save_artifact", False)),
            )
        )
    if cfg.wandb is not None:
        from ray.air.integrations.wandb import WandbLoggerCallback

        w = cfg.wandb
        mode = w.get("mode", "online")
        if mode in ("offline", "disabled"):  # Ray asks for an API key unless W&B's mode says none is needed
            os.environ.setdefault("WANDB_MODE", mode)
        extra = {k: w[k] for k in ("dir", "entity", "tags") if w.get(k) is not None}
        if "dir" in extra:
            os.makedirs(extra["dir"], exist_ok=True)
        callbacks.append(
            WandbLoggerCallback(
                project=w.get("project") or f"hsjp-{study}",
                group=w.get("group") or study,
                api_key_file=w.get("api_key_file"),
                log_config=bool(w.get("log_config", False)),
                excludes=list(EXCLUDED),
                mode=mode,
                **extra,
            )
        )
    return callbacks


def _label(trial: Any) -> str:
    sid = (trial.config or {}).get("stage", trial.trial_id)
    labels = getattr(ACTIVE.progress, "labels", None) or {}
    return str(labels.get(sid, sid))


class RayRunner:
    """The runner of `orchestrator.cli.run.run_study` on Ray: one Ray Tune trial per stage, handed out
    by the scheduler (`StageSearcher`) as stages become ready and fit."""

    def __init__(
        self,
        address: str | None = None,
        *,
        local_gpus: int | None = None,
        local_cpus: float | None = None,
        simulate_scale: float | None = None,
    ):
        self.address, self.local_gpus, self.local_cpus = address, local_gpus, local_cpus
        self.simulate_scale = simulate_scale
        self.setup_seconds = 0.0

    def run(
        self,
        plan: Any,
        store: Store,
        scheduler: StageScheduler,
        *,
        workloads: Mapping[str, Workload] | None,
        restore: bool,
        progress: Any = None,
        run_token: str = "",
    ) -> str:
        """Run the scheduler's stages as Tune trials (`stage_trial`) until every stage is settled; returns
        "restored" or "fresh" (how the Tune experiment started)."""
        t0 = time.time()
        with self._cluster(plan, store, scheduler):
            self.setup_seconds = time.time() - t0
            trial_fn = tune.with_resources(
                tune.with_parameters(
                    stage_trial,
                    plan=plan,
                    store=store,
                    workloads=workloads,
                    run_token=run_token or uuid.uuid4().hex,
                    simulate_scale=self.simulate_scale,
                ),
                trial_resources(cluster_capacity()),
            )
            ACTIVE.scheduler, ACTIVE.progress = scheduler, progress
            os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own tables off: progress.py prints
            try:
                if (
                    restore
                    and self.simulate_scale is None
                    and _fit_restored(plan, store, scheduler, trial_fn)
                ):
                    return "restored"
                store.remove(store.study_path(plan.study, TUNE_DIR))
                _fresh_tuner(plan, store, trial_fn).fit()
                return "fresh"
            finally:
                ACTIVE.scheduler, ACTIVE.progress = None, None

    @contextlib.contextmanager
    def _cluster(self, plan: Any, store: Store, scheduler: StageScheduler) -> Iterator[None]:
        """Within: connected to Ray (or a local Ray started, and shut down after), the store checked
        against the cluster, the scheduler's capacity taken from it, stages leased (file locks on local /
        shared-filesystem stores, the lease actor on object stores)."""
        started = False
        if self.simulate_scale is not None:
            if ray.is_initialized():
                raise RuntimeError("--simulate starts its own local Ray; this process already has one")
            start_local_ray(
                num_cpus=int(math.ceil(self.local_cpus or 1)), num_gpus=self.local_gpus, claim=False
            )
            started = True
        else:
            check_ray()  # Train V1 (RAY_TRAIN_V2_ENABLED=0) or a Ray below the floor: refused
            pending = sum(1 for r in scheduler.stages.values() if r.state not in TERMINAL_STATES)
            demand = host.study_demand(plan.compute, pending, scheduler.max_running)  # a fair share
            started = connect(self.address, demand, plan.study)
        lease = None
        try:
            if self.simulate_scale is None:
                # a node-local store on many hosts: refused (ray.nodes is untyped)
                check_storage_for_cluster(store, ray.nodes())  # type: ignore[no-untyped-call]
            scheduler.capacity = {k: v for k, v in cluster_capacity().items() if k in ("CPU", "GPU")}
            lease = FileLease(store) if store.is_local else ActorLease(holder=f"study:{plan.study}")
            scheduler.lease = lease
            scheduler.begin()
            yield
        finally:
            if lease is not None:
                lease.release_all()
            if started:
                ray.shutdown()


def _fresh_tuner(plan: Any, store: Store, trial_fn: Any) -> tune.Tuner:
    """A new Tune experiment `studies/<name>/tune` whose searcher is the stage scheduler's."""
    tune_path, tune_fs = store.ray_storage(STUDIES_DIR, plan.study)
    return tune.Tuner(
        trial_fn,
        tune_config=tune.TuneConfig(search_alg=StageSearcher(), num_samples=-1, reuse_actors=True),
        run_config=tune.RunConfig(
            name=TUNE_DIR,
            storage_path=tune_path,
            storage_filesystem=tune_fs,
            # retries are the stage's failure policy (orchestrator.schedule.failures, via the scheduler):
            # a dead trial is one failed attempt of its stage, not a Tune retry on top
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[StageCallback(), *tracking_callbacks(getattr(plan, "tracking", None), plan.study)],
            verbose=0,
        ),
    )


def _fit_restored(plan: Any, store: Store, scheduler: StageScheduler, trial_fn: Any) -> bool:
    """Go on with the study's last Tune experiment (`Tuner.restore`, errored trials resumed); True when
    that settled every stage. False when there is none to restore, it failed to restore, or stages are
    left (a fresh experiment then runs them)."""
    tune_path, tune_fs = store.ray_storage(STUDIES_DIR, plan.study)
    tune_dir = store.uri_of(STUDIES_DIR, plan.study, TUNE_DIR)
    if not _can_restore(tune_dir, tune_fs):  # Tuner.can_restore takes a URI: a given filesystem starts fresh
        return False
    try:
        log.info("restoring the Tune experiment %s", tune_dir)
        tune.Tuner.restore(
            tune_dir,  # only URI / local stores restore (_can_restore)
            trainable=trial_fn,
            resume_errored=True,
            storage_filesystem=tune_fs,
        ).fit()
    except Exception as exc:  # noqa: BLE001 — any failure to restore falls back to a fresh Tuner
        log.warning(
            "restoring %s failed (%s: %s); starting a fresh Tune experiment",
            tune_dir,
            type(exc).__name__,
            exc,
        )
        return False
    if scheduler.is_finished():
        return True
    log.info("stages left after the restore; continuing in a fresh Tune experiment")
    return False


def _can_restore(tune_dir: str, fs: pafs.FileSystem | None) -> bool:
    try:
        return fs is None and bool(tune.Tuner.can_restore(tune_dir))
    except Exception:  # noqa: BLE001
        return False


# ----------------------------------------------------------------------------------------- trials
def stage_trial(
    config: dict[str, Any],
    *,
    plan: Any,
    store: Store,
    workloads: Mapping[str, Workload] | None,
    run_token: str,
    simulate_scale: float | None = None,
) -> None:
    """One Tune trial: compute stage `config["stage"]` (or hold its resources, simulated)."""
    sid = config["stage"]
    spec = plan.stages[sid]
    base = {"event": "stage", "stage_id": sid, "kind": spec.kind}
    if simulate_scale is not None:
        held_from, held_to = hold_resources(plan, spec, simulate_scale)
        summary = {"metrics": {}, "provenance": {"simulated": True}}
        publish(store, plan, spec, status=StageState.DONE, summary=summary)
        tune.report({**base, "state": StageState.DONE, "held_from": held_from, "held_to": held_to})
        return
    t0 = time.time()
    tune.report({**base, "state": StageState.RUNNING, "time": t0, "epochs": total_epochs(spec)})
    try:
        attempt = begin_attempt(plan, sid, store)
        result = attempt.done
        if result is None:
            try:
                stand_in = (workloads or {}).get(spec.kind)  # tests: stand-in workloads
                trainer = stage_trainer(plan, spec, store, stand_in, attempt.parent_has_weights)
                trainer.fit()  # → stage_worker_loop
            except Exception as exc:
                raise attempt.failed(exc, run_token=run_token, node=node_ip()) from exc
            result = attempt.finish()
    except StageFailed as exc:  # recorded (attempts.json, error.txt): a result, not a trial error
        decision = exc.decision.to_dict() if exc.decision is not None else None
        d = decision or {}
        ended = {
            "state": d.get("state", "failed"),
            "error": d.get("error") or str(exc)[:500],
            "decision": decision,
        }
    else:
        ended = {"state": result.get("status") or StageState.DONE}
    now = time.time()
    tune.report({**base, **ended, "held_from": t0, "held_to": now, "wall_seconds": now - t0})


def hold_resources(plan: Any, spec: Any, scale: float) -> tuple[float, float]:
    """--simulate: a placement group with the stage's real bundles (one per Train worker), held for its
    estimated wall-clock hours × `scale` seconds. Returns (held from, held to)."""
    request = stage_request(plan.compute, spec.kind)
    pg = placement_group([dict(request.per_worker) for _ in range(request.workers)], strategy="PACK")
    ray.get(pg.ready())
    held_from = time.time()
    hours = wall_hours(plan, estimated_hours(plan))[spec.stage_id]
    time.sleep(hours * scale)
    held_to = time.time()
    remove_placement_group(pg)
    return held_from, held_to
