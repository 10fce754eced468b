"""Everything that touches Ray: connecting, the Tuner and its stage `Searcher`, the per-stage trial, the
`TorchTrainer`, the worker context, the Tune callbacks, and the lease table for object stores.

Shape (one Ray Tune trial per *stage*):

    RayRunner.run(plan, store, scheduler) a Tuner whose `StageSearcher` asks the Ray-free
                                          `orchestrator.scheduler.StageScheduler` for the next stage;
                                          it suggests only stages whose parent is finished and whose
                                          resources are free, so nothing waits as a trial
    stage_trial({"stage": id})            the trial: `orchestrator.stages.compute_stage` with `fit_stage`
                                          (or, with --simulate, a placement group holding the stage's
                                          request for its estimated hours × scale)
    fit_stage                             one Ray Train TorchTrainer named after the stage id: the same
                                          (storage, name) resumes a half-done stage (Train V2)
    stage_worker_loop / RayStageContext   inside each Train worker: the workload's StageContext

Trial drivers hold ~nothing (a custom resource, or 1 byte of memory), never a CPU: a whole-CPU driver
deadlocks its own Train workers, and a fractional one makes 8 stages × 8 CPUs not fit a 64-CPU node.
Tune's experiment under `studies/<name>/tune` is restored (`Tuner.restore`) when the study's stages
are the ones it was started with; the store stays the source of truth either way.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow.fs as pafs
import ray
from ray import tune
from ray.tune.search import Searcher

from orchestrator import tb
from orchestrator.failures import last_line
from orchestrator.scheduler import StageScheduler, total_epochs
from orchestrator.stages import StageFailed, compute_stage, publish, staging_path
from orchestrator.store import Store, StoreError
from orchestrator.store_format import TERMINAL_STATES, StageState

log = logging.getLogger(__name__)

TRIAL_RESOURCE = "hsjp_trial_driver"
"""Custom resource for trial drivers: the local Ray started here defines it, so drivers hold no CPU;
a cluster may define it on non-preemptible nodes (`ray start --resources '{"hsjp_trial_driver": 100}'`)
to keep drivers there. Without it a trial reserves 1 byte of Ray's `memory` resource."""
STATE_FILE = "state.pt"
"""Name of the epoch state inside each Ray Train checkpoint directory."""
LEASE_TTL_S = 120.0
"""Object-store leases expire this long after the holder's last heartbeat (a dead driver's lease)."""


# ------------------------------------------------------------------------------------- connecting
def start_local_ray(
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    *,
    demand: Any = None,
    study: str = "",
    claim: bool = True,
    **resources: float,
) -> None:
    """A local Ray for this process (no dashboard, worker logs kept out of the driver's output).

    With `claim` (real runs) its CPUs / GPUs are what this process may use (cgroup / affinity,
    CUDA_VISIBLE_DEVICES), less what other live hsjp-study runs on this machine hold, at most `demand`
    (and `num_cpus` / `num_gpus`); the dead runs' orphaned Ray processes are ended first
    (`orchestrator.host`). Without (`--simulate`: fake GPUs on a fake cluster) it takes exactly
    `num_cpus` / `num_gpus`, claiming nothing of the machine."""
    from orchestrator import host

    # Ray 2.60 turns token authentication on for `ray start` clusters; a local Ray started here needs
    # none. A user's explicit setting wins.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    options = dict(
        address="local",
        resources={TRIAL_RESOURCE: 10_000, **resources},
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    if not claim:
        with _local_node_env():
            ray.init(num_cpus=num_cpus or os.cpu_count(), num_gpus=num_gpus, **options)
        return
    with host.LocalClaim(demand, study=study, num_cpus=num_cpus, num_gpus=num_gpus) as local:
        # the raylet inherits CUDA_VISIBLE_DEVICES = the claimed GPUs, and _local_node_env
        with local.visible_gpus(), _local_node_env():
            context = ray.init(num_cpus=local.claim.cpus, num_gpus=len(local.claim.gpu_ids), **options)
        info = getattr(context, "address_info", None) or {}
        local.register(address=info.get("gcs_address", ""), session_dir=info.get("session_dir", ""))


@contextlib.contextmanager
def _local_node_env():
    """While the local Ray starts (its raylet, and so every worker, inherits the environment): one node
    that nobody drains, so Ray Train's per-stage PreemptionWatcher actor (one more process per stage)
    is off. A user's explicit setting wins. Set only for the start, so that a Ray cluster this process
    joins or starts later (tests) keeps the watcher that drains need."""
    name = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
    before = os.environ.get(name)
    os.environ.setdefault(name, "0")
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)


def connect(address: str | None, demand: Any = None, study: str = "") -> tuple[bool, float]:
    """(whether this call started/joined Ray, seconds it took). Reuses an initialised Ray."""
    if ray.is_initialized():
        return False, 0.0
    t0 = time.time()
    if address is None:
        start_local_ray(demand=demand, study=study)
    else:  # a real cluster: its auth token (RAY_AUTH_TOKEN / ~/.ray/auth_token) is used as is
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    return True, time.time() - t0


def shutdown() -> None:
    ray.shutdown()


def cluster_capacity() -> dict[str, float]:
    return {k: float(v) for k, v in ray.cluster_resources().items()}


def cluster_nodes() -> list[dict]:
    return ray.nodes()


def trial_resources(cluster: dict[str, float]) -> dict[str, float]:
    """A trial driver's request: the custom resource where the cluster has it, else 1 byte of memory
    (not a CPU fraction, which the stages' whole-CPU requests would not leave room for)."""
    if cluster.get(TRIAL_RESOURCE, 0) >= 1:
        return {"CPU": 0, TRIAL_RESOURCE: 1}
    return {"CPU": 0, "memory": 1}


# ---------------------------------------------------------------------------------------- leases
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


class ActorLease:
    """Stage leases for object-store roots (no file locks there): a named detached `LeaseTable` actor
    created by the driver, outside any placement group (so no trial's placement group owns it and it
    outlives every trial), heartbeated by one driver thread. The holder is the study's name, so a
    re-run of a killed study takes its own leases back at once; another study waits until they are
    released or expire (LEASE_TTL_S after the dead driver's last heartbeat)."""

    def __init__(self, holder: str, ttl_s: float = LEASE_TTL_S):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.holder, self.ttl_s = holder, ttl_s
        self.table = (
            ray.remote(num_cpus=0)(LeaseTable)
            .options(
                name="hsjp-stage-leases",
                namespace="hsjp-study",
                lifetime="detached",
                get_if_exists=True,
                scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None),
            )
            .remote()
        )
        self._held: set[str] = set()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True, name="hsjp-leases")
        self._beat.start()

    def try_acquire(self, stage_id: str) -> bool:
        ok = bool(ray.get(self.table.acquire.remote(stage_id, self.holder, self.ttl_s)))
        if ok:
            self._held.add(stage_id)
        return ok

    def release(self, stage_id: str) -> None:
        if stage_id in self._held:
            self._held.discard(stage_id)
            ray.get(self.table.release.remote(stage_id, self.holder))

    def release_all(self) -> None:
        self._stop.set()
        for stage_id in list(self._held):
            self.release(stage_id)

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            for stage_id in list(self._held):
                try:
                    ray.get(self.table.acquire.remote(stage_id, self.holder, self.ttl_s))
                except Exception as exc:  # noqa: BLE001 — a missed beat is retried at the next one
                    log.warning("lease heartbeat for %s failed: %s", stage_id, exc)


# -------------------------------------------------------------------------------------- the study
class _Active:
    """The run in progress in this driver: what the searcher and callbacks (pickled by Tune with its
    experiment, and unpickled by `Tuner.restore`) reach the live scheduler through."""

    scheduler: StageScheduler | None = None
    progress: Any = None
    """An `orchestrator.progress.Progress` (or None: no progress lines)."""


ACTIVE = _Active()


class StageSearcher(Searcher):
    """Suggests one trial per stage, only when `StageScheduler.next_launch` has one ready and fitting
    (None otherwise: Tune asks again at its next step); FINISHED when every stage is settled."""

    def __init__(self) -> None:
        super().__init__(metric=None, mode=None)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict | str | None:
        sched = ACTIVE.scheduler
        if sched is None:
            return None
        if sched.is_finished():
            return Searcher.FINISHED
        sid = sched.next_launch()
        return None if sid is None else {"stage": sid}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
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

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        sched = ACTIVE.scheduler
        if sched is None:
            return
        live = {}
        for trial in trials:
            sid = (trial.config or {}).get("stage")
            if sid and trial.status in ("PENDING", "RUNNING", "PAUSED"):
                live[sid] = trial
        for sid in live:
            run = sched.stages.get(sid)
            if run is not None and run.state != StageState.RUNNING:
                sched.mark_running(sid)
        for sid, run in sched.stages.items():
            if run.state == StageState.RUNNING and sid not in live and sid in self._seen:
                self._done(self._seen[sid], None)
        self._seen.update({sid: t for sid, t in live.items()})

    def __init__(self) -> None:
        self._seen: dict[str, Any] = {}

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self._seen = {}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if ACTIVE.progress is not None:
            ACTIVE.progress.on_result(_label(trial), result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._done(trial, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        message = str(trial.get_error() or "trial error")
        if ACTIVE.progress is not None:
            ACTIVE.progress.on_trial_error(_label(trial), message)
        self._done(trial, last_line(message)[:500])

    def _done(self, trial: Any, error: str | None) -> None:
        sid = (trial.config or {}).get("stage")
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


def tracking_callbacks(cfg: Any, study: str) -> list:
    """Ray Tune's own MLflow / W&B callbacks for the study's trackers (`orchestrator.tracking` parses and
    checks the `tracking:` key; empty when none is configured)."""
    from orchestrator.tracking import EXCLUDED, check_available, parse_tracking

    if isinstance(cfg, dict):
        cfg = parse_tracking(cfg, "plan")
    if cfg is None or not cfg.trackers:
        return []
    check_available(cfg)
    callbacks: list = []
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
    return labels.get(sid, sid)


class RayRunner:
    """The runner of `orchestrator.execution.run_study` on Ray: one Ray Tune trial per stage, handed out
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
        workloads: dict | None,
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
                store.remove(store.study_path(plan.study, "tune"))
                _fresh_tuner(plan, store, trial_fn).fit()
                return "fresh"
            finally:
                ACTIVE.scheduler, ACTIVE.progress = None, None

    @contextlib.contextmanager
    def _cluster(self, plan: Any, store: Store, scheduler: StageScheduler) -> Iterator[None]:
        """Within: connected to Ray (or a local Ray started, and shut down after), the store checked
        against the cluster, the scheduler's capacity taken from it, stages leased (file locks on local /
        shared-filesystem stores, the lease actor on object stores)."""
        from orchestrator.execution import check_storage_for_cluster
        from orchestrator.stages import FileLease

        started = False
        if self.simulate_scale is not None:
            if ray.is_initialized():
                raise RuntimeError("--simulate starts its own local Ray; this process already has one")
            start_local_ray(
                num_cpus=int(math.ceil(self.local_cpus or 1)), num_gpus=self.local_gpus, claim=False
            )
            started = True
        else:
            from orchestrator import host
            from orchestrator.ray_guard import check_ray

            check_ray()  # Train V1 (RAY_TRAIN_V2_ENABLED=0) or a Ray below the floor: refused
            pending = sum(1 for r in scheduler.stages.values() if r.state not in TERMINAL_STATES)
            demand = host.study_demand(plan.compute, pending, scheduler.max_running)  # a fair share
            started, _ = connect(self.address, demand, plan.study)
        lease = None
        try:
            if self.simulate_scale is None:
                check_storage_for_cluster(store, cluster_nodes())  # a node-local store on many hosts: refuse
            scheduler.capacity = {k: v for k, v in cluster_capacity().items() if k in ("CPU", "GPU")}
            lease = FileLease(store) if store.is_local else ActorLease(holder=f"study:{plan.study}")
            scheduler.lease = lease
            scheduler.begin()
            yield
        finally:
            if lease is not None:
                lease.release_all()
            if started:
                shutdown()


def _fresh_tuner(plan: Any, store: Store, trial_fn: Any) -> tune.Tuner:
    """A new Tune experiment `studies/<name>/tune` whose searcher is the stage scheduler's."""
    tune_path, tune_fs = store.ray_storage("studies", plan.study)
    return tune.Tuner(
        trial_fn,
        tune_config=tune.TuneConfig(search_alg=StageSearcher(), num_samples=-1, reuse_actors=True),
        run_config=tune.RunConfig(
            name="tune",
            storage_path=tune_path,
            storage_filesystem=tune_fs,
            # retries are the stage's failure policy (orchestrator.failures, via the scheduler):
            # a dead trial is one failed attempt of its stage, not a Tune retry on top
            failure_config=tune.FailureConfig(max_failures=0),
            callbacks=[
                StageCallback(),
                *tracking_callbacks(getattr(plan, "tracking", None), plan.study),
            ],
            verbose=0,
        ),
    )


def _fit_restored(plan: Any, store: Store, scheduler: StageScheduler, trial_fn: Any) -> bool:
    """Go on with the study's last Tune experiment (`Tuner.restore`, errored trials resumed); True when
    that settled every stage. False when there is none to restore, it failed to restore, or stages are
    left (a fresh experiment then runs them)."""
    tune_path, tune_fs = store.ray_storage("studies", plan.study)
    tune_dir = store.uri_of("studies", plan.study, "tune")
    if not _can_restore(tune_dir, tune_fs):
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
        if fs is not None:
            return False  # Tuner.can_restore takes a URI; a given filesystem starts fresh (still correct)
        return bool(tune.Tuner.can_restore(tune_dir))
    except Exception:  # noqa: BLE001
        return False


# ----------------------------------------------------------------------------------------- trials
def stage_trial(
    config: dict,
    *,
    plan: Any,
    store: Store,
    workloads: dict | None,
    run_token: str,
    simulate_scale: float | None = None,
) -> None:
    """One Tune trial: compute stage `config["stage"]` (or hold its resources, simulated)."""
    sid = config["stage"]
    spec = plan.stages[sid]
    base = {"event": "stage", "stage_id": sid, "kind": spec.kind}
    if simulate_scale is not None:
        held_from, held_to = hold_resources(plan, spec, simulate_scale)
        publish(
            store,
            plan,
            spec,
            status=StageState.DONE,
            summary={"metrics": {}, "provenance": {"simulated": True}},
        )
        tune.report({**base, "state": StageState.DONE, "held_from": held_from, "held_to": held_to})
        return
    t0 = time.time()
    tune.report({**base, "state": StageState.RUNNING, "time": t0, "epochs": total_epochs(spec)})
    try:
        result = compute_stage(
            plan, sid, store, fit_stage, workloads=workloads, run_token=run_token, node=_node_ip()
        )
    except StageFailed as exc:  # recorded (attempts.json, error.txt): a result, not a trial error
        decision = exc.decision.to_dict() if exc.decision is not None else None
        tune.report(
            {
                **base,
                "state": (decision or {}).get("state", "failed"),
                "error": (decision or {}).get("error") or str(exc)[:500],
                "decision": decision,
                "held_from": t0,
                "held_to": time.time(),
                "wall_seconds": time.time() - t0,
            }
        )
        return
    tune.report(
        {
            **base,
            "state": result.get("status") or StageState.DONE,
            "held_from": t0,
            "held_to": time.time(),
            "wall_seconds": time.time() - t0,
        }
    )


def _node_ip() -> str | None:
    try:
        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 — a label only
        return None


def hold_resources(plan: Any, spec: Any, scale: float) -> tuple[float, float]:
    """--simulate: a placement group with the stage's real bundles (one per Train worker), held for its
    estimated wall-clock hours × `scale` seconds. Returns (held from, held to)."""
    from ray.util.placement_group import placement_group, remove_placement_group

    from orchestrator.scheduler import estimated_hours, wall_hours

    c = plan.compute
    bundle = {"CPU": float(c.cpus_per_worker)}
    if c.use_gpu:
        bundle["GPU"] = float(c.gpus_per_worker)
    from orchestrator.plan import stage_workers

    pg = placement_group([dict(bundle) for _ in range(stage_workers(spec, c))], strategy="PACK")
    ray.get(pg.ready())
    held_from = time.time()
    hours = wall_hours(plan, estimated_hours(plan))[spec.stage_id]
    time.sleep(hours * scale)
    held_to = time.time()
    remove_placement_group(pg)
    return held_from, held_to


# ------------------------------------------------------------------------------------- Ray Train
def fit_stage(
    plan: Any, spec: Any, store: Store, workload: Callable[..., Any], parent_has_weights: bool
) -> None:
    """One Ray Train run named after the stage id (same name + storage = automatic resume)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from orchestrator.plan import stage_workers

    compute = plan.compute
    resources = {"CPU": float(compute.cpus_per_worker)}
    if compute.use_gpu:
        resources["GPU"] = float(compute.gpus_per_worker)
    parent_config = plan.stages[spec.parent].config if spec.parent else None
    path, fs = store.ray_storage("stages", spec.stage_id, "train")
    trainer = TorchTrainer(
        stage_worker_loop,
        train_loop_config={
            "store": store,
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
            num_workers=stage_workers(spec, compute), use_gpu=compute.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=spec.stage_id,
            storage_path=path,
            storage_filesystem=fs,
            # a worker / node lost ends this fit; the stage's failure policy (budget, backoff, the same
            # error twice) decides the retry, which resumes from the last registered checkpoint. So
            # does a drained node (Train's PreemptionError; its default -1 retries it here, unbounded
            # and unrecorded): the policy records it, restarts at once, bounds it by PREEMPTION_BUDGET
            failure_config=ray.train.FailureConfig(max_failures=0, max_preemption_failures=0),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=_train_callbacks(),
        ),
    )
    trainer.fit()


def _train_callbacks() -> list:
    """Forward each epoch report to Ray Tune (the trial's progress lines)."""
    try:
        from ray.tune.integration.ray_train import TuneReportCallback

        return [TuneReportCallback()]
    except (ImportError, RuntimeError):  # RuntimeError: not in a Tune session
        return []


# ---------------------------------------------------------------------------------- worker context
class RayStageContext:
    """`workloads.context.StageContext` for one Ray Train worker of one stage: rank / world size /
    device from `ray.train`; epoch checkpoints registered with Ray Train so a re-created trainer of the
    same name resumes the stage; metrics appended to the store's `metrics.jsonl`."""

    def __init__(
        self, store: Store, stage_id: str, parent_id: str | None = None, parent_has_weights: bool = False
    ):
        import ray.train
        import ray.train.torch

        train_ctx = ray.train.get_context()
        self.rank: int = train_ctx.get_world_rank()
        self.world_size: int = train_ctx.get_world_size()
        self.device = ray.train.torch.get_device()
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
        import ray.train

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
        import ray.train

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
            tb.log_epoch(self.store, self.stage_id, row)  # <store>/stages/<id>/tb/ (orchestrator.tb)
        checkpoint, upload = None, None
        if self.rank == 0:  # `state` is host memory already (engine.host_copy): written in the background
            checkpoint = ray.train.Checkpoint.from_directory(tempfile.mkdtemp(prefix="hsjp-ckpt-"))
            upload = functools.partial(_write_state, ray.train.get_context().get_storage(), state)
        # Ray Train runs `upload` in its background upload thread (ASYNC): the serialisation and the write
        # of state.pt to the store leave the training step; the checkpoint is registered (and a resume can
        # see it) only once the write is complete, so a crash mid-write leaves no registered half file
        ray.train.report(
            progress_metrics(row),
            checkpoint=checkpoint,
            checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC,
            delete_local_checkpoint_after_upload=True,
            checkpoint_upload_fn=upload,
        )

    def report(self, metrics: dict) -> None:
        """Within-epoch progress. Not forwarded through Ray Train: its report is a barrier that every
        rank must reach equally often, which a workload's free-form progress calls do not promise."""
        self.last_report = _plain(metrics)
        log.debug("stage %s rank %d: %s", self.stage_id, self.rank, self.last_report)

    def prepare_model(self, model: Any) -> Any:
        import ray.train.torch

        from workloads.engine import DDP_KWARGS

        if self.world_size > 1:
            return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=dict(DDP_KWARGS))
        return model.to(self.device)


def _write_state(storage: Any, state: dict, local: Any, checkpoint_dir_name: str) -> Any:
    """Ray Train's `checkpoint_upload_fn` (run in its upload thread): `state.pt` serialised straight into
    the Train run's checkpoint folder on the store (`StorageContext`, a Ray Train DeveloperAPI, names
    it as Ray's own uploader would); `local` is the empty placeholder folder Ray then deletes."""
    import ray.train
    import torch

    dest = storage.build_checkpoint_path_from_name(checkpoint_dir_name)
    fs = storage.storage_filesystem
    buf = io.BytesIO()
    torch.save(state, buf)
    fs.create_dir(dest, recursive=True)
    with fs.open_output_stream(f"{dest}/{STATE_FILE}") as f:
        f.write(buf.getbuffer())
    return ray.train.Checkpoint(dest, filesystem=fs)


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
    import torch

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
    import torch

    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        out[str(key)] = value
    return out


def stage_worker_loop(config: dict) -> None:
    """`train_loop_per_worker` of a working stage. `config` (built by `fit_stage`): store, stage_id,
    kind, workload (callable), stage_config, data, parent_id, parent_config (finetune: the parent's
    PretrainConfig), parent_has_weights."""
    from workloads.config import to_dict
    from workloads.context import StageResult
    from workloads.provenance import provenance

    store = config["store"]
    if not isinstance(store, Store):
        store = Store(store)
    ctx = RayStageContext(
        store, config["stage_id"], config.get("parent_id"), config.get("parent_has_weights", False)
    )
    workload: Callable[..., StageResult] = config["workload"]
    try:
        if config["kind"] == "finetune":
            result = workload(config["stage_config"], config["data"], ctx, init=config.get("parent_config"))
        else:
            result = workload(config["stage_config"], config["data"], ctx)
    except Exception:
        from orchestrator.stages import FAILED_ON_FILE

        with contextlib.suppress(Exception):  # where it failed, for error.txt (best effort)
            store.write_json(
                store.stage_path(config["stage_id"], FAILED_ON_FILE),
                {"rank": ctx.rank, "node": f"{_node_ip()} ({socket.gethostname()})"},
            )
        raise
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


__all__ = ["ActorLease", "LeaseTable", "RayRunner", "RayStageContext", "StoreError", "start_local_ray"]
