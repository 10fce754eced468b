"""In-process fakes for the orchestrator's Ray-free bookkeeping (not collected as tests).

`FakeRunner` drives a `StageScheduler` the way `orchestrator.ray.tune.RayRunner` does — launch what
the scheduler hands out, compute it as `stage_trial` does (`begin_attempt`, the fit, `finish` or `failed`), tell the scheduler it
ended — but in this process, on a virtual clock, with a `fake_fit` that writes what rank 0 of a Ray
Train run would (`staging.json`, weights, metrics rows) and no training. A run of a whole plan takes
milliseconds.
"""

from __future__ import annotations

import heapq
import uuid
from collections.abc import Callable
from typing import Any

from orchestrator.schedule.scheduler import StageScheduler
from orchestrator.schedule.stage import StageFailed, begin_attempt
from orchestrator.store.format import STAGING_FILE
from orchestrator.store.store import Store


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_fit(
    outcomes: dict[str, dict] | None = None, fail: set[str] | None = None, calls: list | None = None
):
    """A `fit` that "trains" a stage instantly: `outcomes[stage_id]` is merged into its summary
    (e.g. {"collapsed": True}); a stage in `fail` raises as a training error would."""

    def fit(plan: Any, spec: Any, store: Store, workload: Callable, parent_has_weights: bool) -> None:
        if calls is not None:
            calls.append(spec.stage_id)
        if fail and spec.stage_id in fail:
            raise RuntimeError(f"injected failure in {spec.stage_id}")
        extra = (outcomes or {}).get(spec.stage_id, {})
        store.append_metrics(spec.stage_id, {"epoch": 0, "loss": 1.0, "stage_id": spec.stage_id})
        summary = {
            "metrics": {"AP": 0.5} if spec.kind == "finetune" else {"precision": 0.5},
            "has_weights": not extra.get("collapsed", False),
            "provenance": {"fake": True},
            **extra,
        }
        store.write_json(store.stage_path(spec.stage_id, STAGING_FILE), summary)

    return fit


class FakeRunner:
    """Runs a scheduler's stages in-process. Each launched stage "takes" `durations[stage_id]` (default
    1.0) virtual seconds; several run at once when the scheduler's capacity allows."""

    def __init__(
        self,
        capacity: dict[str, float],
        fit: Callable | None = None,
        durations: dict[str, float] | None = None,
        clock: VirtualClock | None = None,
        on_idle: Callable[[StageScheduler], None] | None = None,
    ):
        self.capacity, self.fit = capacity, fit or fake_fit()
        self.durations, self.clock = durations or {}, clock or VirtualClock()
        self.on_idle = on_idle
        self.launched: list[tuple[float, str]] = []
        self.max_running = 0

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
        scheduler.capacity = dict(self.capacity)
        scheduler.clock = self.clock
        scheduler.begin()
        running: list[tuple[float, str]] = []
        idle_rounds, token = 0, run_token or uuid.uuid4().hex  # one token per run, as RayRunner
        while not scheduler.is_finished():
            while (sid := scheduler.next_launch()) is not None:
                self.launched.append((self.clock.now, sid))
                heapq.heappush(running, (self.clock.now + self.durations.get(sid, 1.0), sid))
            self.max_running = max(self.max_running, len(running))
            if not running:  # nothing to run: stages wait for another run's lease
                idle_rounds += 1
                if idle_rounds > 1000:
                    raise RuntimeError("fake runner: nothing can run and nothing finishes")
                if self.on_idle is not None:
                    self.on_idle(scheduler)
                self.clock.now += scheduler.recheck_s
                continue
            self.clock.now, sid = heapq.heappop(running)
            error, decision = None, None
            try:
                attempt = begin_attempt(plan, sid, store)
                if attempt.done is None:
                    try:
                        workload = (workloads or {}).get(attempt.spec.kind)
                        self.fit(plan, attempt.spec, store, workload, attempt.parent_has_weights)
                    except Exception as exc:
                        raise attempt.failed(exc, run_token=token, node="fake-node") from exc
                    attempt.finish()
            except StageFailed as exc:
                error = str(exc)
                decision = exc.decision.to_dict() if exc.decision is not None else None
            scheduler.on_complete(sid, error=error, decision=decision)
        return "fake"
