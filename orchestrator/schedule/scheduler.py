"""Stage-level scheduling, Ray-free: which stage of a plan runs next, and what a finished one unblocks.

`StageScheduler` keeps each stage in a `StageState` and records how this run got it (`StageHow`); its
events (`on_event`) carry the new state. A stage is launched only when it is queued *and* its request
fits in what the running stages leave free, so nothing waits holding a GPU. The longest remaining path
(estimated hours plus the longest chain it unblocks) goes first, ties in plan order; a lower one that
fits goes first when the top one does not (backfilling). `orchestrator.ray.tune` drives it from a Tune
`Searcher`, tests from a fake runner; `list_schedule` replays it on the estimates (`plan --gpus G`),
`schedule_metrics` measures a finished schedule (`run --simulate`).
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator.plan import Plan, StageSpec, stage_hours, stage_request
from orchestrator.store.format import (
    SKIP_REASON,
    TERMINAL_STATES,
    StageHow,
    StageKind,
    StageState,
    stage_state,
)

log = logging.getLogger(__name__)

RECHECK_S = 5.0  # s between looks at a stage another run holds (its result.json, then its lease)
_EPS = 1e-9


class Lease(Protocol):
    """The right to compute a stage (one holder across runs and studies sharing a store)."""

    def try_acquire(self, stage_id: str) -> bool: ...

    def release(self, stage_id: str) -> None: ...


class NoLease:
    """A lease that always succeeds (a single run, or tests)."""

    def try_acquire(self, stage_id: str) -> bool:
        return True

    def release(self, stage_id: str) -> None:
        return None


def fits(request: dict[str, float], free: dict[str, float]) -> bool:
    return all(free.get(k, 0.0) + _EPS >= v for k, v in request.items() if v > 0)


def total_epochs(spec: StageSpec) -> int | None:
    """The epochs a stage trains (its config's `total_epochs`); None for an evaluate stage, which trains nothing."""
    return getattr(spec.config, "total_epochs", None)


def children_of(plan: Plan) -> dict[str, list[str]]:
    """Stage id → the ids of the stages that start from it, in plan order."""
    children: dict[str, list[str]] = {}
    for sid, spec in plan.stages.items():
        if spec.parent:
            children.setdefault(spec.parent, []).append(sid)
    return children


def remaining_path_hours(plan: Plan, hours: dict[str, float]) -> dict[str, float]:
    """Stage id → its estimated hours plus the longest chain of stages that wait for it."""
    children = children_of(plan)
    memo: dict[str, float] = {}

    def path(sid: str) -> float:
        if sid not in memo:
            memo[sid] = hours.get(sid, 0.0) + max((path(c) for c in children.get(sid, [])), default=0.0)
        return memo[sid]

    return {sid: path(sid) for sid in plan.stages}


def estimated_hours(plan: Plan) -> dict[str, float]:
    """Stage id → estimated device-hours of the whole stage (all its workers together)."""
    return {sid: stage_hours(spec, plan.data_spec, plan.compute) for sid, spec in plan.stages.items()}


def wall_hours(plan: Plan, hours: dict[str, float]) -> dict[str, float]:
    """Stage id → estimated wall-clock hours: its device-hours spread over the devices it holds."""
    return {
        sid: h / max(1, stage_request(plan.compute, plan.stages[sid].kind).workers)
        for sid, h in hours.items()
    }


@dataclass
class StageRun:
    """What the scheduler knows of one stage in this run."""

    spec: StageSpec
    order: int
    request: dict[str, float]
    priority: float
    state: StageState = StageState.WAITING
    how: StageHow | str = ""  # "" until decided
    ready_at: float | None = None
    started_at: float | None = None
    launched_at: float | None = None  # handed out (started_at: its trial began holding its resources)
    ended_at: float | None = None
    recheck_at: float = 0.0
    waited: bool = False  # another run held its lease at some point ("elsewhere" was said)
    not_before: float = 0.0  # a retry's backoff: not launched before this time
    error: str | None = None
    reason: str | None = None


@dataclass
class StageScheduler:
    """The stage states of one run of a plan; see the module docstring.

    `resolve(stage_id)` → the stage's result.json or None; `publish(spec, status, summary)` writes one
    (for no-work and skipped stages, published without a trial). `capacity`: the cluster's total
    resources; `max_running`: `--max-concurrent`. `judge(stage id, error, the trial's decision or None)`
    → {retry, delay_s, line, error} after a failed attempt (`orchestrator.schedule.failures`); None:
    every failure is final.
    """

    plan: Plan
    resolve: Callable[[str], Mapping[str, Any] | None]
    publish: Callable[[StageSpec, str, dict[str, Any]], Mapping[str, Any]]
    capacity: dict[str, float]
    lease: Lease = field(default_factory=NoLease)
    clock: Callable[[], float] = time.time
    on_event: Callable[[dict[str, Any]], None] | None = None
    max_running: int | None = None
    recheck_s: float = RECHECK_S
    judge: Callable[[str, str | None, dict[str, Any] | None], dict[str, Any]] | None = None
    stages: dict[str, StageRun] = field(default_factory=dict)
    _too_big_warned: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        hours = estimated_hours(self.plan)
        priority = remaining_path_hours(self.plan, wall_hours(self.plan, hours))
        for i, (sid, spec) in enumerate(self.plan.stages.items()):
            self.stages[sid] = StageRun(
                spec, i, stage_request(self.plan.compute, spec.kind, spec.work).total, priority[sid]
            )
        self.children = children_of(self.plan)

    # ------------------------------------------------------------------------------------- start
    def start(self) -> None:
        """Resolve what needs no trial: stages finished in the store, no-work pretrains, and the
        finetunes those unblock (skipped when their pretrain collapsed)."""
        now = self.clock()
        for sid, run in self.stages.items():
            if run.spec.parent is None:
                self._unblock(sid, now)

    def begin(self) -> None:
        """The runner is up (Ray started): stages ready before now count as ready from now on."""
        now = self.clock()
        for run in self.stages.values():
            if run.state == StageState.QUEUED and run.ready_at is not None:
                run.ready_at = max(run.ready_at, now)

    def _unblock(self, sid: str, now: float) -> None:
        """`sid`'s parent is finished (or it has none): decide what `sid` is."""
        run = self.stages[sid]
        result = self.resolve(sid)
        if result is not None:
            self._finish(sid, StageHow.FOUND, result, now)
            return
        parent = self.stages.get(run.spec.parent) if run.spec.parent else None
        if parent is not None and parent.state == StageState.COLLAPSED:
            kind = parent.spec.kind
            reason = SKIP_REASON if kind == StageKind.PRETRAIN else f"{kind} collapsed"
            self._publish_without_trial(run, StageState.SKIPPED, {"reason": reason}, now)
            return
        if parent is not None and parent.state in (StageState.FAILED, StageState.SKIPPED):
            self._block(run, f"its {parent.spec.kind} {parent.spec.stage_id} is {parent.state}")
            return
        if not run.spec.work:
            self._publish_without_trial(run, StageState.NO_WORK, {}, now)
            return
        run.state, run.ready_at = StageState.QUEUED, now
        self._emit(run, StageState.QUEUED)

    def _block(self, run: StageRun, reason: str) -> None:
        run.state, run.how, run.reason = StageState.BLOCKED, StageHow.BLOCKED, reason
        self._emit(run, StageState.BLOCKED, reason=reason)

    def _publish_without_trial(
        self, run: StageRun, state: StageState, summary: dict[str, Any], now: float
    ) -> None:
        """A no-work pretrain or a skipped finetune: the scheduler publishes its result itself."""
        skipped = state == StageState.SKIPPED
        status = StageState.SKIPPED if skipped else StageState.DONE
        self.publish(run.spec, status, summary)
        run.state, run.ended_at = state, now
        run.how = StageHow.SKIPPED if skipped else StageHow.NO_WORK
        run.reason = summary.get("reason")
        self._emit(run, state, status=status, how=run.how, work=False, reason=run.reason)
        self._unblock_children(run.spec.stage_id, now)

    def _finish(self, sid: str, how: StageHow, result: Mapping[str, Any], now: float) -> None:
        """`sid` has a result (found, computed, or computed by another run)."""
        run = self.stages[sid]
        run.state = stage_state(result)
        run.how, run.ended_at = how, now
        if how != StageHow.COMPUTED:  # a computed stage's trial has said so itself
            self._emit(run, run.state, status=result.get("status") or StageState.DONE, how=how)
        self._unblock_children(sid, now)

    def _unblock_children(self, sid: str, now: float) -> None:
        for child in self.children.get(sid, []):
            if self.stages[child].state == StageState.WAITING:
                self._unblock(child, now)

    # ------------------------------------------------------------------------------------ launch
    def used(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for run in self.stages.values():
            if run.state == StageState.RUNNING:
                for k, v in run.request.items():
                    out[k] = out.get(k, 0.0) + v
        return out

    def free(self) -> dict[str, float]:
        used = self.used()
        return {k: v - used.get(k, 0.0) for k, v in self.capacity.items()}

    def next_launch(self) -> str | None:
        """The stage to launch now (its lease taken, marked running), or None."""
        now = self.clock()
        self._recheck_elsewhere(now)
        running = sum(1 for r in self.stages.values() if r.state == StageState.RUNNING)
        if self.max_running is not None and running >= self.max_running:
            return None
        free = self.free()
        for run in sorted(self.ready(), key=lambda r: (-r.priority, r.order)):
            if run.not_before > now:  # a retry in its backoff
                continue
            if not fits(run.request, free):
                if running or fits(run.request, self.capacity):
                    continue
                if run.spec.stage_id not in self._too_big_warned:  # would wait forever: let Ray queue it
                    self._too_big_warned.add(run.spec.stage_id)
                    log.warning(
                        "stage %s needs %s but the cluster has %s: launched anyway (Ray waits for the "
                        "cluster to grow)",
                        run.spec.stage_id,
                        run.request,
                        self.capacity,
                    )
            if not self.lease.try_acquire(run.spec.stage_id):
                run.state, run.recheck_at = StageState.ELSEWHERE, now + self.recheck_s
                if not run.waited:  # said once, not at every re-check
                    run.waited = True
                    self._emit(run, StageState.ELSEWHERE)
                continue
            run.state, run.started_at, run.launched_at = StageState.RUNNING, now, now
            run.how = StageHow.COMPUTED
            self._emit(run, StageState.RUNNING, how=run.how)  # launched: its trial's own line follows
            return run.spec.stage_id
        return None

    def ready(self) -> list[StageRun]:
        """The queued stages (they can start once their resources are free)."""
        return [r for r in self.stages.values() if r.state == StageState.QUEUED]

    def _recheck_elsewhere(self, now: float) -> None:
        for sid, run in self.stages.items():
            if run.state != StageState.ELSEWHERE or now < run.recheck_at:
                continue
            result = self.resolve(sid)
            if result is not None:
                self._finish(sid, StageHow.WAITED, result, now)
            else:  # the other run may have died: try the lease again when it fits
                run.state = StageState.QUEUED

    def mark_running(self, sid: str) -> bool:
        """A stage Ray runs already (a trial restored by `Tuner.restore`): account it as running.
        False when it is finished (or unknown)."""
        run = self.stages.get(sid)
        if run is None or run.state in TERMINAL_STATES or run.state == StageState.RUNNING:
            return False
        self.lease.try_acquire(sid)
        run.state, run.started_at, run.how = StageState.RUNNING, self.clock(), StageHow.COMPUTED
        return True

    # ---------------------------------------------------------------------------------- complete
    def on_complete(
        self,
        sid: str,
        error: str | None = None,
        started_at: float | None = None,
        ended_at: float | None = None,
        decision: dict[str, Any] | None = None,
    ) -> None:
        """A launched stage's trial ended: the store says whether it finished (its result.json). If not,
        `judge` decides (from the trial's own `decision` when it recorded one): retry after a backoff
        (the stage is queued again, launched when that has passed) or failed (its dependants blocked)."""
        run = self.stages[sid]
        now = self.clock()
        self.lease.release(sid)
        if started_at is not None:
            run.started_at = started_at
        run.ended_at = ended_at if ended_at is not None else now
        result = self.resolve(sid)
        if result is not None:
            self._finish(sid, StageHow.COMPUTED, result, run.ended_at)
            return
        run.error = error or "the stage's trial ended without a result"
        verdict = (self.judge(sid, run.error, decision) if self.judge is not None else None) or {}
        if verdict.get("retry"):
            run.state, run.ready_at = StageState.QUEUED, run.ended_at
            run.not_before = run.ended_at + float(verdict.get("delay_s") or 0.0)
            self._emit(run, StageState.RETRYING, error=verdict.get("line") or run.error)
            return
        run.error = verdict.get("error") or run.error
        run.state = StageState.FAILED
        self._emit(run, StageState.FAILED, error=verdict.get("line") or run.error)
        for child in self._descendants(sid):
            if self.stages[child].state == StageState.WAITING:
                self._block(self.stages[child], f"its {run.spec.kind} {sid} failed")

    def _descendants(self, sid: str) -> Iterable[str]:
        for child in self.children.get(sid, []):
            yield child
            yield from self._descendants(child)

    # ------------------------------------------------------------------------------------- state
    def is_finished(self) -> bool:
        return all(r.state in TERMINAL_STATES for r in self.stages.values())

    def failed(self) -> list[str]:
        """The stages that did not finish: failed, or blocked by their pretrain's failure."""
        return [sid for sid, r in self.stages.items() if r.state in (StageState.FAILED, StageState.BLOCKED)]

    def _emit(self, run: StageRun, state: StageState, **extra: Any) -> None:
        log.info("stage %s: %s %s", run.spec.stage_id, state, extra or "")
        if self.on_event is not None:
            self.on_event(
                {
                    "event": "stage",
                    "stage_id": run.spec.stage_id,
                    "kind": run.spec.kind,
                    "state": StageState(state),
                    "epochs": total_epochs(run.spec),
                    "time": self.clock(),
                    **{k: v for k, v in extra.items() if v is not None},
                }
            )


# ------------------------------------------------------------------------------ plan-time estimate
@dataclass(frozen=True)
class Scheduled:
    stage_id: str
    start_h: float
    end_h: float
    gpus: float


def list_schedule(plan: Plan, capacity: dict[str, float]) -> list[Scheduled]:
    """The scheduler's choice replayed on the estimates with a virtual clock (hours): each stage lasts
    its estimated wall-clock hours. Stages that can never fit are left out (`unschedulable`)."""
    clock = [0.0]
    done: dict[str, dict[str, Any]] = {}  # the estimate's own store: results "published" in memory
    sched = StageScheduler(
        plan,
        resolve=done.get,
        publish=lambda spec, status, summary: done.setdefault(spec.stage_id, {"status": status}),
        capacity=dict(capacity),
        clock=lambda: clock[0],
    )
    walls = wall_hours(plan, estimated_hours(plan))
    sched.start()
    events: list[tuple[float, int, str]] = []
    out: list[Scheduled] = []
    seq = 0
    while True:
        while (sid := sched.next_launch()) is not None:
            if not fits(sched.stages[sid].request, capacity):
                sched.stages[sid].state = StageState.FAILED
                continue
            end = clock[0] + walls[sid]
            heapq.heappush(events, (end, seq, sid))
            seq += 1
            out.append(Scheduled(sid, clock[0], end, sched.stages[sid].request.get("GPU", 0.0)))
        if not events:
            break
        clock[0], _, sid = heapq.heappop(events)
        done[sid] = {"status": StageState.DONE}
        sched.on_complete(sid)
    return out


def unschedulable(plan: Plan, capacity: dict[str, float]) -> list[tuple[str, dict[str, float]]]:
    """(stage id, request) of the work stages whose request exceeds `capacity` as a whole."""
    requests = {sid: stage_request(plan.compute, s.kind).total for sid, s in plan.stages.items() if s.work}
    return [(sid, request) for sid, request in requests.items() if not fits(request, capacity)]


def lower_bound(plan: Plan, gpus: float, scale: float = 1.0) -> float:
    """max(longest chain of stage wall times, total GPU-hours / G), × `scale` (hours × scale)."""
    hours = estimated_hours(plan)
    walls = wall_hours(plan, hours)
    chain = max(remaining_path_hours(plan, walls).values(), default=0.0)
    c = plan.compute
    gpu_hours = sum(h * (c.gpus_per_worker if c.use_gpu else 1.0) for h in hours.values())
    return max(chain, gpu_hours / gpus) * scale


# ----------------------------------------------------------------------------------- measurement
@dataclass(frozen=True)
class Interval:
    stage_id: str
    ready: float
    start: float
    end: float
    gpus: float


def schedule_metrics(intervals: list[Interval], gpus: float, t0: float | None = None) -> dict[str, float]:
    """Makespan (first ready → last end) and the share of GPU time that was idle while at least one
    stage was ready and not yet running (`idle_while_ready`, 0..1)."""
    if not intervals:
        return {"makespan": 0.0, "idle_while_ready": 0.0}
    t0 = min(i.ready for i in intervals) if t0 is None else t0
    t1 = max(i.end for i in intervals)
    points = sorted({t0, t1, *(t for i in intervals for t in (i.ready, i.start, i.end))})
    idle = 0.0
    for a, b in zip(points, points[1:]):  # strictly increasing
        mid = (a + b) / 2
        if any(i.ready <= mid < i.start for i in intervals):
            busy = sum(i.gpus for i in intervals if i.start <= mid < i.end)
            idle += max(0.0, gpus - busy) * (b - a)
    makespan = t1 - t0
    return {"makespan": makespan, "idle_while_ready": idle / (gpus * makespan) if makespan > 0 else 0.0}


def intervals_of(sched: StageScheduler) -> list[Interval]:
    """The computed stages of a finished run as intervals (ready → start → end)."""
    out = []
    for sid, run in sched.stages.items():
        ready, start, end = run.ready_at, run.started_at, run.ended_at
        if run.how == StageHow.COMPUTED and ready is not None and start is not None and end is not None:
            out.append(Interval(sid, ready, start, end, run.request.get("GPU", 0.0)))
    return out


# ------------------------------------------------------------------------------------ edited study
def describe_changes(previous: dict[str, Any] | None, plan: Plan, finished: set[str]) -> str:
    """One line on what changed since the last run of this study (its recorded plan.json)."""
    found = sum(1 for sid in plan.stages if sid in finished)
    if not previous:
        return f"first run of study {plan.study}: {len(plan.stages)} stages, {found} found in the store"
    before, now = set(previous.get("stages") or {}), set(plan.stages)
    finetunes = {t.finetune for t in plan.trials}
    old_trials = {t.get("trial_id"): t.get("finetune") for t in previous.get("trials") or []}
    new, removed = len(now - before), sum(ft not in finetunes for ft in old_trials.values())
    kept = " (their results stay in the store)" if removed or before - now else ""
    return (
        f"since the last run of study {plan.study}: {new} new stage{'s' * (new != 1)}, "
        f"{removed} trial{'s' * (removed != 1)} no longer in the study{kept}, {found} found"
    )


def render_prediction(plan: Plan, gpus: int) -> str:
    """`plan --gpus G`: the predicted wall-clock time of the study on G GPUs (the stage scheduler's
    choice replayed on the estimates), beside its lower bound."""
    c = plan.compute
    if not c.use_gpu:
        return f"--gpus {gpus}: study {plan.study} does not train on GPUs (compute.use_gpu is false)"
    capacity = {"GPU": float(gpus), "CPU": float("inf")}
    bad = unschedulable(plan, capacity)
    schedule = list_schedule(plan, capacity)
    makespan = max((s.end_h for s in schedule), default=0.0)
    busy = sum((s.end_h - s.start_h) * s.gpus for s in schedule)
    lines = [
        f"on {gpus} GPU{'s' if gpus != 1 else ''} ({c.workers_per_stage} worker(s) × {c.gpus_per_worker:g} GPU "
        f"per stage): predicted wall-clock {makespan:.4g} h (list scheduling of {len(schedule)} stages on the "
        f"estimates, longest remaining path first); lower bound {lower_bound(plan, gpus):.4g} h; "
        f"GPUs busy {100 * busy / (gpus * makespan) if makespan else 0:.0f} %"
    ]
    if bad:
        lines.append(
            f"  {len(bad)} stage(s) can never run on {gpus} GPUs (each requests {bad[0][1].get('GPU', 0):g}); "
            "left out of the prediction"
        )
    return "\n".join(lines)
