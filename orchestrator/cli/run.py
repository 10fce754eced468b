"""Run a study's plan (Ray-free bookkeeping around the runner): lock the study, say what changed since
its last run, resolve what needs no trial, hand the rest to a runner (`orchestrator.ray.tune.RayRunner`,
or a test's fake), summarise from the store. Idempotent: finished stages are never recomputed (all
finished: Ray does not even start), a half-done stage resumes from its last epoch checkpoint.
`simulate_study` is `hsjp-study run --simulate`: the same scheduler on a local Ray with fake GPUs.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import functools
import io
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import filelock

from orchestrator.cli.progress import Progress
from orchestrator.plan import Plan
from orchestrator.schedule import failures
from orchestrator.schedule.scheduler import (
    StageScheduler,
    describe_changes,
    intervals_of,
    lower_bound,
    schedule_metrics,
    unschedulable,
)
from orchestrator.schedule.stage import StageFailed, publish
from orchestrator.schedule.view import StageView, stage_view
from orchestrator.store.format import (
    LOCKS_DIR,
    PLAN_FILE,
    TRIALS_FILE,
    StageHow,
    StageState,
    StoreError,
    check_study_name,
)
from orchestrator.store.store import Store
from workloads.config import ConfigError

log = logging.getLogger(__name__)

MAIN_METRICS = ("AP", "AP50", "AP75", "APm", "APl", "AR")


class Runner(Protocol):
    """Runs a scheduler's launched stages until every stage is settled; returns how ("fresh", "restored")."""

    def run(
        self,
        plan: Plan,
        store: Store,
        scheduler: StageScheduler,
        *,
        workloads: dict[str, Any] | None,
        restore: bool,
        progress: Progress | None = None,
        run_token: str = "",
    ) -> str: ...


# ---------------------------------------------------------------------------------------- the study
def run_study(
    plan: Any,
    store: Store,
    *,
    study_text: str,
    address: str | None = None,
    max_concurrent: int | None = None,
    progress: bool = True,
    workloads: dict[str, Any] | None = None,
    runner: Runner | None = None,
) -> dict[str, Any]:
    """Run every stage of `plan` not finished in `store`; return the run's summary. `workloads` overrides
    the stage-kind → workload registry (tests). Writes studies/<name>/ study.yaml, plan.json, trials.csv."""
    with study_lock(store, plan.study):  # before anything is written or Ray starts
        t0 = time.time()
        run_token = uuid.uuid4().hex  # this run's attempts (a new run starts with a fresh failure budget)
        tracker = Progress(enabled=progress, t0=t0, labels=stage_labels(plan))
        previous = _previous_plan(store, plan.study)
        results = {sid: store.read_result(sid) for sid in plan.stages}  # every result.json, read once
        sched = StageScheduler(
            plan,
            resolve=results.get,  # start() resolves from what was just read ...
            publish=functools.partial(_publish_without_training, store, plan),
            capacity={},
            on_event=tracker.on_stage_event,
            max_running=max_concurrent,
            judge=functools.partial(judge_failure, store, plan, run_token),
        )
        tracker.note(describe_changes(previous, plan, {sid for sid, r in results.items() if r is not None}))
        store.write_study(plan.study, study_text, plan.to_dict())
        sched.start()
        sched.resolve = store.read_result  # ... later looks read the store afresh (another run may publish)
        mode, setup_s = "none", 0.0
        if not sched.is_finished():
            if runner is None:
                from orchestrator.ray.tune import RayRunner  # Ray is imported only to run

                runner = RayRunner(address=address)
            same = previous is not None and set(previous.get("stages") or {}) == set(plan.stages)
            mode = runner.run(
                plan, store, sched, workloads=workloads, restore=same, progress=tracker, run_token=run_token
            )
            setup_s = getattr(runner, "setup_seconds", 0.0)
        wall = time.time() - t0
        summary = summarize(plan, store, sched)
        summary.update(
            wall_seconds=round(wall, 2),
            phases=tracker.phases(wall, setup_s),
            ran=sum(1 for r in sched.stages.values() if r.how == StageHow.COMPUTED),
            tune=mode,
        )
        write_trials_csv(plan, store, summary)
        tracker.print_summary(summary)
        return summary


def stage_labels(plan: Plan) -> dict[str, str]:
    """Stage id → the label progress lines show: the id and, for a finetune or an evaluate stage, its first
    trial's id."""
    first: dict[str, str] = {}
    sharing = plan.sharing()
    for t in plan.trials:
        first.setdefault(t.finetune, t.trial_id)
        for sid in t.evaluations:
            first.setdefault(sid, t.trial_id)
        first.setdefault(t.pretrain, t.trial_id if len(sharing.get(t.pretrain, [])) == 1 else "")
    return {sid: f"{sid} ({first[sid]})" if first.get(sid) else sid for sid in plan.stages}


def _previous_plan(store: Store, study: str) -> dict[str, Any] | None:
    try:
        return store.read_json(store.study_path(study, PLAN_FILE))
    except StoreError as exc:
        log.warning("%s; treating this as the study's first run", exc)
        return None


def judge_failure(
    store: Store,
    plan: Plan,
    run_token: str,
    stage_id: str,
    error: str | None,
    decision: dict[str, Any] | None,
) -> dict[str, Any]:
    """The scheduler's `judge`: the decision the stage's trial recorded, or (the trial itself died: a node
    lost, an infrastructure error) one recorded here from Tune's error under the same budget; with its
    one-line summary (`line`), which the run prints."""
    if decision is None:
        attempt = failures.Attempt(
            exc_type="TrialError",
            message=(error or "")[:500],
            last_line=failures.last_line(error) or "trial error",
            traceback=error or "",
            run_token=run_token,
        )
        made = failures.record_failure(
            store, stage_id, attempt, failures.FailurePolicy.from_compute(plan.compute), study=plan.study
        )
        decision = made.to_dict()
        line = failures.summary_line(stage_id, made)
    else:
        keys = ("retry", "delay_s", "failures", "budget", "reason", "error", "node")
        line = failures.summary_line(stage_id, failures.Decision(**{k: decision[k] for k in keys}))
    return {**decision, "line": line}


def _publish_without_training(
    store: Store, plan: Plan, spec: Any, status: str, summary: dict[str, Any], simulated: bool = False
) -> dict[str, Any]:
    """What the scheduler publishes itself: no-work pretrains and skipped finetunes."""
    if simulated:
        summary = {**summary, "provenance": {"simulated": True}}
    return publish(store, plan, spec, status=status, summary=summary)


class StudyBusy(StoreError):
    """Another `hsjp-study run` of the same study holds its lock (the CLI exits 2)."""


@contextlib.contextmanager
def study_lock(store: Store, name: str) -> Iterator[None]:
    """Hold `<store>/locks/study-<name>.lock` for the whole run, failing fast when another process holds it
    (two runs of one study would overwrite `studies/<name>/tune/`; stages are leased one by one, so
    different studies may run side by side). Object stores have no file locks: not detected there."""
    if not store.is_local:
        yield
        return
    path = os.path.join(store.base, LOCKS_DIR, f"study-{check_study_name(name)}.lock")
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


# ----------------------------------------------------------------------------------- --simulate
@dataclass(frozen=True)
class Simulation:
    gpus: int
    cpus: float | None = None
    """Logical CPUs of the fake cluster (default: enough that GPUs, not CPUs, bound the stages)."""
    time_scale: float | None = None
    """Seconds per estimated hour (default: so that the lower bound is `target_s`)."""
    target_s: float = 120.0

    def cpus_for(self, plan: Plan) -> float:
        if self.cpus is not None:
            return self.cpus
        c = plan.compute
        per_gpu = c.cpus_per_worker / c.gpus_per_worker if c.use_gpu else c.cpus_per_worker
        return max(1.0, self.gpus * per_gpu)


def check_simulation(plan: Plan, sim: Simulation) -> None:
    """Refuse a simulation that cannot run: no GPUs, a bad time scale, a stage that cannot fit."""
    if sim.gpus < 1:
        raise ConfigError(f"--gpus {sim.gpus}: the simulated cluster needs at least 1 GPU")
    if sim.time_scale is not None and not sim.time_scale > 0:
        raise ConfigError(f"--time-scale {sim.time_scale}: must be > 0 (seconds per estimated hour)")
    if sim.cpus is not None and not sim.cpus > 0:
        raise ConfigError(f"--cpus {sim.cpus}: must be > 0")
    if not plan.compute.use_gpu:
        raise ConfigError(f"study {plan.study}: compute.use_gpu is false; --simulate schedules GPU stages")
    capacity = {"GPU": float(sim.gpus), "CPU": sim.cpus_for(plan)}
    bad = unschedulable(plan, capacity)
    if bad:
        sid, request = bad[0]
        raise ConfigError(
            f"stage {sid} requests {_fmt_request(request)} per run (compute: {plan.compute.workers_per_stage} "
            f"worker(s) × {plan.compute.gpus_per_worker:g} GPU, {plan.compute.cpus_per_worker:g} CPU) but the "
            f"simulated cluster has {_fmt_request(capacity)}: it can never run"
            + (f" ({len(bad)} stages like it)" if len(bad) > 1 else "")
        )


def simulate_study(plan: Plan, sim: Simulation, *, progress: bool = False) -> dict[str, Any]:
    """The plan's scheduler on a local Ray with `sim.gpus` fake GPUs, each stage holding its request for
    its estimated wall-clock hours × the time scale (no real store written); the measured schedule and
    the line `run --simulate` prints."""
    check_simulation(plan, sim)
    scale = sim.time_scale or sim.target_s / max(lower_bound(plan, sim.gpus), 1e-9)
    from orchestrator.ray.tune import RayRunner

    with tempfile.TemporaryDirectory(prefix="hsjp-simulate-") as tmp:
        store = Store(tmp)
        tracker = Progress(enabled=progress, labels=stage_labels(plan))
        sched = StageScheduler(
            plan,
            resolve=store.read_result,
            publish=functools.partial(_publish_without_training, store, plan, simulated=True),
            capacity={},
            on_event=tracker.on_stage_event,
        )
        sched.start()
        runner = RayRunner(local_gpus=sim.gpus, local_cpus=sim.cpus_for(plan), simulate_scale=scale)
        runner.run(plan, store, sched, workloads=None, restore=False, progress=tracker)
        metrics = schedule_metrics(intervals_of(sched), sim.gpus)
    computed = [r for r in sched.stages.values() if r.how == StageHow.COMPUTED]
    bound = lower_bound(plan, sim.gpus, scale)
    ratio = metrics["makespan"] / bound if bound > 0 else float("nan")
    line = (
        f"simulated makespan {metrics['makespan']:.1f} s, lower bound {bound:.1f} s, ratio {ratio:.2f}, "
        f"GPU idle while a stage was ready {100 * metrics['idle_while_ready']:.1f} %"
    )
    return {
        **metrics,
        "lower_bound": bound,
        "ratio": ratio,
        "time_scale": scale,
        "gpus": sim.gpus,
        "cpus": sim.cpus_for(plan),
        "stages": len(computed),
        "launch_latency_s": [
            r.started_at - r.launched_at
            for r in computed
            if r.started_at is not None and r.launched_at is not None
        ],
        "failed": sched.failed(),
        "line": line,
    }


def _fmt_request(request: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(request.items()) if v) or "nothing"


# ------------------------------------------------------------------------------------------ summary
def summarize(plan: Plan, store: Store, scheduler: StageScheduler | None = None) -> dict[str, Any]:
    """Per-trial status from the store (`orchestrator.schedule.view`), failures and counts; how this run got
    each stage (`StageHow`) from the scheduler."""
    trials, failures = [], []
    stages = scheduler.stages if scheduler is not None else {}
    views: dict[str, StageView] = {}

    def view(sid: str) -> StageView:
        if sid not in views:
            spec = plan.stages[sid]
            parent = view(spec.parent).state if spec.parent else None
            views[sid] = stage_view(store, sid, work=spec.work, parent_state=parent)
        return views[sid]

    def error_of(v: StageView) -> str | None:
        run = stages.get(v.stage_id)
        if v.result is None and v.state in (StageState.FAILED, StageState.RETRYING):
            return v.reason or (run.error if run is not None else None) or v.state
        return run.error if v.result is None and run is not None and run.error else None

    for t in plan.trials:
        pre, ft = view(t.pretrain), view(t.finetune)
        row: dict[str, Any] = {
            "trial_id": t.trial_id,
            "params": dict(t.params),
            "pretrain": t.pretrain,
            "finetune": t.finetune,
            "pretrain_status": (pre.result or {}).get("status"),
            "finetune_status": (ft.result or {}).get("status"),
        }
        for key, v in (("pretrain_how", pre), ("finetune_how", ft)):
            run = stages.get(v.stage_id)
            row[key] = run.how if run is not None and run.how else (StageHow.FOUND if v.result else "")
        row["precision"] = ((pre.result or {}).get("metrics") or {}).get("precision")
        row.update({k: ((ft.result or {}).get("metrics") or {}).get(k) for k in MAIN_METRICS})
        if ft.result is not None:
            row["status"] = ft.result["status"]
        else:
            failed = next(((v.stage_id, e) for v in (pre, ft) if (e := error_of(v))), None)
            unfinished = stages[t.finetune].state if t.finetune in stages else StageState.QUEUED
            row["status"] = StageState.FAILED if failed else unfinished  # waiting / queued / blocked ...
            if failed:
                row["error"] = failed[1]
                failures.append({"trial_id": t.trial_id, "stage_id": failed[0], "error": failed[1]})
        row["evaluations"] = {}  # the finetune's evaluate stages (test splits): state, and why one failed
        for sid in t.evaluations:
            v, run = view(sid), stages.get(sid)
            row["evaluations"][sid] = (v.result or {}).get("status") or (
                run.state if run else StageState.QUEUED
            )
            if error := error_of(v):
                failures.append({"trial_id": t.trial_id, "stage_id": sid, "error": error})
        trials.append(row)
    counts = dict(collections.Counter(r["status"] for r in trials))
    return {"study": plan.study, "trials": trials, "counts": counts, "failures": failures}


def write_trials_csv(plan: Any, store: Store, summary: dict[str, Any]) -> str:
    """studies/<name>/trials.csv: one row per trial (id, params, stage ids, status, main metrics)."""
    param_keys = sorted({k for t in summary["trials"] for k in t["params"]})
    fields = ["trial_id", *param_keys, "pretrain", "finetune", "status", "pretrain_status", "finetune_status"]
    fields += ["precision", *MAIN_METRICS, "error"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for t in summary["trials"]:
        writer.writerow({**{k: t["params"].get(k) for k in param_keys}, **t})
    path = store.study_path(plan.study, TRIALS_FILE)
    store.write_bytes(path, buf.getvalue().encode())
    return path


__all__ = ["run_study", "simulate_study", "summarize", "write_trials_csv", "StageFailed", "Simulation"]
