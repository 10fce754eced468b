"""Run a study's plan on Ray (DESIGN.md §3 and §5): Ray Tune schedules the trials, each trial runs
its pretrain stage then its finetune stage (`orchestrator.stages`), the store keeps the results.

`run_study` is idempotent: finished stages are never recomputed (their result.json is read before
any trainer starts; a study whose trials are all finished does not even start Ray), a half-done
stage resumes from its last epoch checkpoint, a killed driver is recovered by running it again
(`Tuner.restore` when the previous Tune experiment can be restored, else a fresh Tuner: both are
correct because stage results live in the store). Tune trials reserve ~no resources themselves
(ray.md §2: a whole-CPU trial deadlocks its own Train workers); GPUs go to stages.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import io
import logging
import math
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import filelock
import ray
from ray import tune

from orchestrator import host, tracking
from orchestrator import progress as progress_mod
from orchestrator.progress import Progress, TuneProgressCallback
from orchestrator.stages import StageFailed, run_stage
from orchestrator.store import Store, StoreError, check_study_name

log = logging.getLogger(__name__)

TRIAL_RESOURCE = "hsjp_trial_driver"
"""Custom resource for trial drivers: the local Ray started here defines it, so drivers hold no CPU;
a cluster may define it on non-preemptible nodes (`ray start --resources '{"hsjp_trial_driver": 100}'`)
to keep drivers there (ray.md §2). Without it a trial reserves 0.01 CPU."""
MAIN_METRICS = ("AP", "AP50", "AP75", "APm", "APl", "AR")


# --------------------------------------------------------------------------------------------- Ray
def start_local_ray(
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    demand: host.Demand | None = None,
    study: str = "",
) -> None:
    """A local Ray for this process (no dashboard, worker logs kept out of the driver's output).

    Its CPUs / GPUs are what this process may use (cgroup / affinity, CUDA_VISIBLE_DEVICES), less what
    other live hsjp-study runs on this machine hold, at most `demand` (and `num_cpus` / `num_gpus`);
    the dead runs' orphaned Ray processes are ended first (orchestrator.host)."""
    # Ray 2.60 turns token authentication on for `ray start` clusters (ray.md §3a); a local Ray
    # started here needs none. A user's explicit setting wins.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # One node that nobody drains: Ray Train's per-stage PreemptionWatcher actor (one more process
    # per stage) has nothing to watch. Workers inherit this environment; on a cluster it stays on.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    # issue 18: the machine's share (host.LocalClaim holds the machine's lock until our record is written)
    with host.LocalClaim(demand, study=study, num_cpus=num_cpus, num_gpus=num_gpus) as claim:
        with claim.visible_gpus():  # the raylet inherits CUDA_VISIBLE_DEVICES = the claimed GPUs
            context = ray.init(
                address="local",
                num_cpus=claim.claim.cpus,
                num_gpus=len(claim.claim.gpu_ids),
                resources={TRIAL_RESOURCE: 10_000},
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        info = getattr(context, "address_info", None) or {}
        claim.register(address=info.get("gcs_address", ""), session_dir=info.get("session_dir", ""))


def _connect(address: str | None, demand: host.Demand | None = None, study: str = "") -> tuple[bool, float]:
    """(whether this call started/joined Ray, seconds it took). Reuses an initialised Ray."""
    if ray.is_initialized():
        return False, 0.0
    t0 = time.time()
    if address is None:
        start_local_ray(demand=demand, study=study)
    else:  # a real cluster: its auth token (RAY_AUTH_TOKEN / ~/.ray/auth_token) is used as is
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    return True, time.time() - t0


def trial_resources(cluster: dict[str, float]) -> dict[str, float]:
    if cluster.get(TRIAL_RESOURCE, 0) >= 1:
        return {"CPU": 0, TRIAL_RESOURCE: 1}
    return {"CPU": 0.01}


def max_trials(compute: Any, cluster: dict[str, float], n_trials: int, override: int | None = None) -> int:
    """Concurrent trials: the stages that fit on the cluster at once (GPUs / GPUs per stage, or CPUs),
    unless the study (`compute.max_concurrent_trials`) or the caller says otherwise."""
    n = override or compute.max_concurrent_trials
    if not n:
        driver_cpu = 0.0 if cluster.get(TRIAL_RESOURCE, 0) >= 1 else 0.01
        cpu_need = compute.workers_per_stage * compute.cpus_per_worker + driver_cpu
        n = int(math.floor(cluster.get("CPU", 0.0) / cpu_need + 1e-9))
        gpu_need = compute.workers_per_stage * compute.gpus_per_worker
        if compute.use_gpu:  # GPUs bound it, and the stages' CPUs too
            n = min(n, int(math.floor(cluster.get("GPU", 0.0) / gpu_need + 1e-9)))
        if n < 1:
            log.warning(
                "the cluster (%s CPUs, %s GPUs) cannot hold one stage (%s CPUs%s): stages wait "
                "until it grows",
                cluster.get("CPU", 0),
                cluster.get("GPU", 0),
                cpu_need,
                f", {gpu_need} GPUs" if compute.use_gpu else "",
            )
            n = 1
    return max(1, min(int(n), max(1, n_trials)))


SHARED_STORAGE_ENV = "HSJP_SHARED_STORAGE"
"""Set to 1 to declare a local --storage path a filesystem shared by every node (skips the check)."""
SHARED_FS_TYPES = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "beegfs", "ceph", "glusterfs", "fuse.glusterfs"}
)
"""Filesystem types (/proc/mounts) taken as shared between hosts."""


def mount_fs_type(path: str, mounts_text: str | None = None) -> str | None:
    """Filesystem type of the mount holding `path` (longest mount-point prefix in /proc/mounts);
    None when unknown (no /proc/mounts)."""
    if mounts_text is None:
        try:
            with open("/proc/mounts") as f:
                mounts_text = f.read()
        except OSError:
            return None
    path = os.path.realpath(path)
    best, fs_type = "", None
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, fs_type = point, fields[2]
    return fs_type


def check_storage_for_cluster(
    store: Store, nodes: list[dict], *, shared: bool | None = None, mounts_text: str | None = None
) -> None:
    """Refuse a node-local store on a cluster that spans several hosts (ray.md §6: every node reads
    and writes the store directly; a path on one host's disk breaks checkpoints, results and resume).

    `nodes` is `ray.nodes()`. A URI store, a single host (however many Ray nodes run on it), a path on
    a shared filesystem type (SHARED_FS_TYPES) or `shared` / $HSJP_SHARED_STORAGE=1 pass; anything else
    raises StoreError naming the path and the hosts.
    """
    if not store.is_local:
        return
    hosts = sorted({str(n.get("NodeManagerAddress") or n.get("NodeID")) for n in nodes if n.get("Alive")})
    if len(hosts) <= 1:
        return
    if shared is None:
        shared = os.environ.get(SHARED_STORAGE_ENV, "").strip().lower() in ("1", "true", "yes")
    fs_type = mount_fs_type(store.base, mounts_text)
    if shared or fs_type in SHARED_FS_TYPES:
        return
    shown = ", ".join(hosts[:4]) + (", ..." if len(hosts) > 4 else "")
    raise StoreError(
        f"--storage {store.base} is a local path ({fs_type or 'unknown'} filesystem) but the Ray cluster "
        f"spans {len(hosts)} hosts ({shown}): every node must read and write the same store. Give a "
        f"bucket URI (s3://..., gs://...) or a shared filesystem mounted at the same path on every node; "
        f"if {store.base} is such a mount, set {SHARED_STORAGE_ENV}=1"
    )


# ------------------------------------------------------------------------------------------ trials
def study_trial(config: dict, *, plan: Any, store_uri: str, workloads: dict | None, run_token: str) -> None:
    """One Tune trial: its pretrain stage, then its finetune stage (each found, awaited or computed)."""
    store = Store(store_uri)
    trial = next(t for t in plan.trials if t.trial_id == config["trial"])

    def report(event: dict) -> None:
        tune.report({**event, "trial": trial.trial_id})

    run_stage(plan, trial.pretrain, store, workloads=workloads, run_token=run_token, on_event=report)
    result = run_stage(plan, trial.finetune, store, workloads=workloads, run_token=run_token, on_event=report)
    tune.report({"event": "trial", "trial": trial.trial_id, "state": result.get("status")})


def trial_order(plan: Any, trial_ids: list[str]) -> list[str]:
    """Trials round-robin over their pretrains, so concurrent trials rarely wait for the same stage."""
    groups: dict[str, collections.deque] = {}
    by_id = {t.trial_id: t for t in plan.trials}
    for tid in trial_ids:
        groups.setdefault(by_id[tid].pretrain, collections.deque()).append(tid)
    order = []
    while groups:
        for key in list(groups):
            order.append(groups[key].popleft())
            if not groups[key]:
                del groups[key]
    return order


def trial_finished(store: Store, trial: Any) -> bool:
    return store.read_result(trial.finetune) is not None


# ---------------------------------------------------------------------------------------- the study
def run_study(
    plan: Any,
    store: Store,
    *,
    study_text: str,
    address: str | None = None,
    max_concurrent: int | None = None,
    progress: bool = True,
    workloads: dict | None = None,
) -> dict:
    """Run every trial of `plan` that is not finished in `store`; return the run's summary.

    `workloads` overrides the stage-kind → workload registry of `orchestrator.stages` (tests).
    Writes `studies/<name>/study.yaml`, `plan.json` and, at the end, `results.csv`.
    """
    with study_lock(store, plan.study):  # before anything is written or Ray starts
        return _run_study_locked(plan, store, study_text, address, max_concurrent, progress, workloads)


class StudyBusy(StoreError):
    """Another `hsjp-study run` of the same study holds its lock (the CLI exits 2)."""


@contextlib.contextmanager
def study_lock(store: Store, name: str) -> Iterator[None]:
    """Hold `<store>/locks/study-<name>.lock` (local stores) for the whole run; fail fast when another
    process holds it: two runs of one study would share and overwrite `studies/<name>/tune/`. Stages
    are leased one by one (stages.stage_lease), so different studies may still run side by side.
    Object stores have no file locks; there a second run is not detected."""
    if not store.is_local:
        yield
        return
    path = os.path.join(store.base, "locks", f"study-{check_study_name(name)}.lock")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lock = filelock.FileLock(path)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise StudyBusy(
            f"study {name} is already being run by another `hsjp-study run` (lock file {path}); "
            "wait for it or stop it"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _run_study_locked(
    plan: Any,
    store: Store,
    study_text: str,
    address: str | None,
    max_concurrent: int | None,
    progress: bool,
    workloads: dict | None,
) -> dict:
    t0 = time.time()
    tracker = Progress(enabled=progress, t0=t0)
    store.write_study(plan.study, study_text, plan.to_dict())
    pending = [t.trial_id for t in plan.trials if not trial_finished(store, t)]
    started, ray_s, errors, mode = False, 0.0, {}, "none"
    try:
        if pending:
            demand = host.study_demand(plan.compute, len(pending), max_concurrent)  # issue 18: fair share
            started, ray_s = _connect(address, demand, plan.study)
            errors, mode = _run_tune(plan, store, pending, tracker, workloads, max_concurrent)
    finally:
        if started:
            ray.shutdown()
    wall = time.time() - t0
    summary = summarize(plan, store, errors, tracker)
    summary.update(
        wall_seconds=round(wall, 2), phases=tracker.phases(wall, ray_s), ran=len(pending), tune=mode
    )
    write_results_csv(plan, store, summary)
    tracker.print_summary(summary)
    return summary


def _run_tune(
    plan: Any,
    store: Store,
    pending: list[str],
    tracker: Progress,
    workloads: dict | None,
    max_concurrent: int | None,
) -> tuple[dict[str, str], str]:
    """Run the pending trials; returns (trial id → Tune error, "restored" | "fresh")."""
    cluster = ray.cluster_resources()
    check_storage_for_cluster(store, ray.nodes())  # a node-local store on a multi-host cluster: refuse
    concurrency = max_trials(plan.compute, cluster, len(pending), max_concurrent)
    trainable = tune.with_resources(
        tune.with_parameters(
            study_trial, plan=plan, store_uri=store.uri, workloads=workloads, run_token=uuid.uuid4().hex
        ),
        trial_resources(cluster),
    )
    record_path = store.study_path(plan.study, "tune_trials.json")
    record, earlier = store.read_json(record_path) or {}, {}
    progress_mod.ACTIVE = tracker
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own tables off: progress.py prints
    try:
        if record.get("max_concurrent") == concurrency and _same_trials(plan, pending, record.get("trials")):
            restored = _restore(plan, store, pending, trainable)
            if restored is not None and not restored[1]:
                return restored[0], "restored"
            if restored is not None:
                log.info("%d trials not finished after the restore; running them afresh", len(restored[1]))
                earlier, pending = restored
        store.remove(store.study_path(plan.study, "tune"))
        finetunes = {t.trial_id: t.finetune for t in plan.trials if t.trial_id in pending}
        store.write_json(record_path, {"trials": finetunes, "max_concurrent": concurrency})
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(trial_order(plan, pending))},
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=store.uri_of("studies", plan.study),
                failure_config=tune.FailureConfig(max_failures=plan.compute.max_failures),
                callbacks=[TuneProgressCallback(), *tracking.tune_callbacks(plan.tracking, plan.study)],
                verbose=0,
            ),
        )
        return {**earlier, **_grid_errors(tuner.fit())}, "fresh"
    finally:
        progress_mod.ACTIVE = None


def _restore(plan: Any, store: Store, pending: list[str], trainable: Any) -> tuple[dict, list[str]] | None:
    """Continue the study's previous Tune experiment: (errors, trials still unfinished without an error),
    or None when it cannot be restored (then a fresh Tuner runs; the store makes that correct)."""
    tune_dir = store.uri_of("studies", plan.study, "tune")
    try:
        if not tune.Tuner.can_restore(tune_dir):
            return None
        log.info("restoring the Tune experiment %s", tune_dir)
        errors = _grid_errors(tune.Tuner.restore(tune_dir, trainable=trainable, resume_errored=True).fit())
    except Exception as exc:  # noqa: BLE001 — any failure to restore falls back to a fresh Tuner
        log.warning(
            "restoring %s failed (%s: %s); starting a fresh Tune experiment",
            tune_dir,
            type(exc).__name__,
            exc,
        )
        return None
    left = [
        t.trial_id
        for t in plan.trials
        if t.trial_id in pending and t.trial_id not in errors and not trial_finished(store, t)
    ]
    return errors, left


def _same_trials(plan: Any, pending: list[str], recorded: Any) -> bool:
    """Whether the recorded Tune experiment ran these trials with the same stages (its param space
    cannot change on restore; a trial id whose stages changed must not count as already run)."""
    if not isinstance(recorded, dict):
        return False
    by_id = {t.trial_id: t for t in plan.trials}
    return all(recorded.get(tid) == by_id[tid].finetune for tid in pending)


def _grid_errors(grid: Any) -> dict[str, str]:
    errors = {}
    for res in grid:
        if res.error is not None:
            errors[str(res.config.get("trial"))] = _last_line(str(res.error))
    return errors


# ------------------------------------------------------------------------------------------ summary
def summarize(plan: Any, store: Store, tune_errors: dict[str, str], tracker: Progress | None = None) -> dict:
    """Per-trial status from the store (the source of truth), with failures and counts."""
    trials, failures = [], []
    for t in plan.trials:
        pre, ft = store.read_result(t.pretrain), store.read_result(t.finetune)
        row: dict[str, Any] = {
            "trial_id": t.trial_id,
            "params": dict(t.params),
            "pretrain": t.pretrain,
            "finetune": t.finetune,
            "pretrain_status": (pre or {}).get("status"),
            "finetune_status": (ft or {}).get("status"),
        }
        how = tracker.outcomes.get(t.trial_id, {}) if tracker else {}
        row["pretrain_how"] = how.get(t.pretrain, "found" if pre is not None else "")
        row["finetune_how"] = how.get(t.finetune, "found" if ft is not None else "")
        row["precision"] = ((pre or {}).get("metrics") or {}).get("precision")
        row.update({k: ((ft or {}).get("metrics") or {}).get(k) for k in MAIN_METRICS})
        if ft is not None:
            row["status"] = ft["status"]
        else:
            stage = next((s for s in (t.pretrain, t.finetune) if store.read_error(s) is not None), None)
            error = _last_line(store.read_error(stage)) if stage else tune_errors.get(t.trial_id)
            row["status"] = "failed" if error else "incomplete"
            if error:
                row["error"] = error
                failures.append({"trial_id": t.trial_id, "stage_id": stage, "error": error})
        trials.append(row)
    counts = dict(collections.Counter(r["status"] for r in trials))
    return {"study": plan.study, "trials": trials, "counts": counts, "failures": failures}


def write_results_csv(plan: Any, store: Store, summary: dict) -> str:
    """studies/<name>/results.csv: one row per trial (id, params, stage ids, status, main metrics)."""
    param_keys = sorted({k for t in summary["trials"] for k in t["params"]})
    fields = [
        "trial_id",
        *param_keys,
        "pretrain",
        "finetune",
        "status",
        "pretrain_status",
        "finetune_status",
        "precision",
        *MAIN_METRICS,
        "error",
    ]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for t in summary["trials"]:
        writer.writerow({**{k: t["params"].get(k) for k in param_keys}, **t})
    path = store.study_path(plan.study, "results.csv")
    store.write_bytes(path, buf.getvalue().encode())
    return path


def _last_line(text: str | None) -> str:
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else ""


__all__ = ["run_study", "start_local_ray", "summarize", "write_results_csv", "StageFailed"]
