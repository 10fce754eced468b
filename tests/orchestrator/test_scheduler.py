"""The stage scheduler and the run bookkeeping around it, Ray-free, against in-process fakes (ms each):
priority by longest remaining path, launches only of ready stages that fit, found / no-work / skipped /
blocked stages resolved without a trial, another run's lease waited for without holding anything, the
plan-time prediction, the simulation's metrics, and the "what changed" line of an edited study."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import standins  # noqa: E402
from fakes import FakeRunner, VirtualClock, fake_fit  # noqa: E402

from orchestrator.cli.run import run_study  # noqa: E402
from orchestrator.schedule.lease import FileLease  # noqa: E402
from orchestrator.schedule.scheduler import (  # noqa: E402
    Interval,
    StageScheduler,
    describe_changes,
    estimated_hours,
    list_schedule,
    lower_bound,
    remaining_path_hours,
    schedule_metrics,
    stage_request,
    unschedulable,
)
from orchestrator.store.store import Store  # noqa: E402

GPU = standins.tiny_compute(use_gpu=True, gpus_per_worker=1.0, cpus_per_worker=8.0)


def label_fraction_like(n_finetunes: int = 9, salt: str = "lf"):
    """One pretrain feeding `n_finetunes` finetunes, plus one lone scratch finetune."""
    pre = standins.pretrain_config(epochs=40)
    trials = [(f"t{i}", pre, standins.finetune_config(epochs=2 + i)) for i in range(n_finetunes)]
    trials.append(("lone", standins.pretrain_config(method="scratch"), standins.finetune_config(epochs=1)))
    return standins.make_plan("lf", trials, salt=salt, compute=GPU)


def scheduler_for(plan, store: Store, capacity: dict, **kw) -> StageScheduler:
    from orchestrator.schedule.stage import publish

    return StageScheduler(
        plan,
        resolve=store.read_result,
        publish=lambda spec, status, summary: publish(store, plan, spec, status=status, summary=summary),
        capacity=capacity,
        **kw,
    )


# ------------------------------------------------------------------------------------- choosing
def test_longest_remaining_path_goes_first_and_waiting_stages_hold_nothing(tmp_path):
    plan = label_fraction_like()
    store = Store(tmp_path / "store")
    sched = scheduler_for(plan, store, {"GPU": 8.0, "CPU": 64.0}, clock=VirtualClock())
    sched.start()
    pretrain = plan.trials[0].pretrain
    lone = plan.trials[-1].finetune
    # the scratch pretrain has no work (published at once); its finetune and the shared pretrain are ready
    assert {r.spec.stage_id for r in sched.ready()} == {pretrain, lone}
    paths = remaining_path_hours(plan, estimated_hours(plan))
    assert paths[pretrain] > paths[lone]
    assert sched.next_launch() == pretrain  # feeds 9 finetunes: before the lone one
    assert sched.next_launch() == lone
    assert sched.next_launch() is None  # every other stage waits for the pretrain: nothing launched
    waiting = [r for r in sched.stages.values() if r.state == "waiting"]
    assert len(waiting) == 9 and sched.used() == {"CPU": 16.0, "GPU": 2.0}
    # the pretrain ends: its 9 finetunes are ready, 7 fit beside the lone one, the longest first
    store.write_result(pretrain, {"status": "done", "has_weights": True})
    sched.on_complete(pretrain)
    launched = []
    while (sid := sched.next_launch()) is not None:
        launched.append(sid)
    assert len(launched) == 7 and sched.used()["GPU"] == 8.0
    epochs = [plan.stages[s].config.total_epochs for s in launched]
    assert epochs == sorted(epochs, reverse=True)  # longest first (here: more epochs = longer)


def test_a_stage_that_does_not_fit_lets_a_smaller_ready_one_go_first(tmp_path):
    big = standins.tiny_compute(use_gpu=True, gpus_per_worker=1.0, workers_per_stage=4)
    plan = standins.make_plan(
        "fit",
        [("a", standins.pretrain_config(epochs=50), standins.finetune_config())],
        salt="fit",
        compute=big,
    )
    store = Store(tmp_path / "store")
    sched = scheduler_for(plan, store, {"GPU": 4.0, "CPU": 64.0})
    sched.start()
    assert stage_request(plan.compute, plan.stages[plan.trials[0].pretrain].kind).total == {
        "CPU": 4.0,
        "GPU": 4.0,
    }
    assert sched.next_launch() == plan.trials[0].pretrain
    assert sched.free()["GPU"] == 0.0 and sched.next_launch() is None
    assert unschedulable(plan, {"GPU": 2.0, "CPU": 64.0})[0][1] == {"CPU": 4.0, "GPU": 4.0}
    assert unschedulable(plan, {"GPU": 4.0, "CPU": 64.0}) == []


def test_max_running_caps_the_stages_at_once(tmp_path):
    plan = label_fraction_like(4, salt="cap")
    store = Store(tmp_path / "store")
    runner = FakeRunner({"GPU": 8.0, "CPU": 64.0})
    run_study(plan, store, study_text="name: lf\n", progress=False, runner=runner, max_concurrent=2)
    assert runner.max_running == 2


# ------------------------------------------------------------------------------------ the run
def test_run_computes_every_stage_once_publishes_skips_after_collapse_and_reruns_nothing(tmp_path):
    collapse = standins.pretrain_config(n=3)
    plan = standins.make_plan(
        "chain",
        [
            ("ok", standins.pretrain_config(), standins.finetune_config()),
            ("ok2", standins.pretrain_config(), standins.finetune_config(lr=0.01)),
            ("collapse", collapse, standins.finetune_config()),
            ("scratch", standins.pretrain_config(method="scratch"), standins.finetune_config()),
        ],
        salt="chain",
    )
    store = Store(tmp_path / "store")
    calls: list[str] = []
    collapsed_id = plan.trials[2].pretrain
    runner = FakeRunner({"CPU": 2.0}, fit=fake_fit({collapsed_id: {"collapsed": True}}, calls=calls))
    summary = run_study(plan, store, study_text="name: chain\n", progress=False, runner=runner)

    assert summary["counts"] == {"done": 3, "skipped": 1} and summary["failures"] == []
    assert sorted(calls) == sorted(
        {*(t.pretrain for t in plan.trials[:3]), *(t.finetune for t in plan.trials)}
        - {plan.trials[2].finetune}
    )  # each distinct stage once
    assert store.read_result(plan.trials[2].finetune)["reason"] == "pretrain collapsed"
    assert store.read_result(plan.trials[3].pretrain)["work"] is False
    hows = {t["trial_id"]: (t["pretrain_how"], t["finetune_how"]) for t in summary["trials"]}
    assert hows == {
        "ok": ("computed", "computed"),
        "ok2": ("computed", "computed"),
        "collapse": ("computed", "skipped"),
        "scratch": ("no-work", "computed"),
    }
    # every launch came after its parent finished (the virtual clock orders them)
    when = {sid: t for t, sid in runner.launched}
    for t in plan.trials:
        if t.pretrain in when and t.finetune in when:
            assert when[t.finetune] > when[t.pretrain]

    again = run_study(
        plan, store, study_text="name: chain\n", progress=False, runner=FakeRunner({"CPU": 2.0})
    )
    assert again["ran"] == 0 and again["tune"] == "none" and again["counts"] == summary["counts"]


def test_failed_stage_records_its_error_blocks_its_finetunes_and_the_next_run_retries(tmp_path):
    plan = standins.make_plan(
        "fail",
        [
            ("a", standins.pretrain_config(), standins.finetune_config()),
            ("b", standins.pretrain_config(), standins.finetune_config(lr=0.01)),
            ("c", standins.pretrain_config(method="scratch"), standins.finetune_config()),
        ],
        salt="fail",
    )
    store = Store(tmp_path / "store")
    bad = plan.trials[0].pretrain
    first = run_study(
        plan,
        store,
        study_text="name: fail\n",
        progress=False,
        runner=FakeRunner({"CPU": 2.0}, fit=fake_fit(fail={bad})),
    )
    assert first["counts"] == {"failed": 2, "done": 1}
    assert {f["stage_id"] for f in first["failures"]} == {bad}
    assert "injected failure" in store.read_error(bad) and "injected failure" in first["failures"][0]["error"]
    assert store.read_result(plan.trials[0].finetune) is None  # blocked, not published: retried next run
    assert [t["finetune_how"] for t in first["trials"][:2]] == ["blocked", "blocked"]

    second = run_study(
        plan, store, study_text="name: fail\n", progress=False, runner=FakeRunner({"CPU": 2.0})
    )
    assert second["counts"] == {"done": 3} and store.read_error(bad) is None


def test_a_stage_leased_by_another_run_is_waited_for_then_found(tmp_path):
    """Another study's run holds the shared pretrain's lease: this run launches the rest, holds nothing
    for the shared stage, and takes the other run's result when it appears."""
    plan = standins.make_plan(
        "two",
        [
            ("shared", standins.pretrain_config(), standins.finetune_config()),
            ("own", standins.pretrain_config(method="scratch"), standins.finetune_config()),
        ],
        salt="two",
    )
    store = Store(tmp_path / "store")
    shared = plan.trials[0].pretrain
    other = FileLease(store)  # the other run
    assert other.try_acquire(shared)
    calls: list[str] = []

    def other_run_finishes(sched: StageScheduler) -> None:
        if store.read_result(shared) is None:
            store.write_result(shared, {"status": "done", "has_weights": False, "kind": "pretrain"})
            other.release(shared)

    runner = FakeRunner({"CPU": 2.0}, fit=fake_fit(calls=calls), on_idle=other_run_finishes)
    sched_events: list[dict] = []
    from orchestrator.cli import run as execution

    real = execution.StageScheduler

    class Spy(real):  # the lease is the run's file lease, as RayRunner sets it
        def __post_init__(self) -> None:
            super().__post_init__()
            self.lease = FileLease(store)
            self.on_event = sched_events.append

    execution.StageScheduler = Spy
    try:
        summary = run_study(plan, store, study_text="name: two\n", progress=False, runner=runner)
    finally:
        execution.StageScheduler = real
    assert shared not in calls and plan.trials[0].finetune in calls
    assert summary["counts"] == {"done": 2}
    assert summary["trials"][0]["pretrain_how"] == "waited"
    assert any(e["state"] == "elsewhere" and e["stage_id"] == shared for e in sched_events)


def test_store_uri_keeps_its_query_and_takes_a_given_filesystem(tmp_path):
    import pyarrow.fs as pafs

    store = Store(tmp_path / "s")
    assert store.uri_of("stages", "x") == f"{store.base}/stages/x"
    q = object.__new__(Store)
    q.uri, q.query, q.filesystem, q.base = (
        "s3://b/store",
        "endpoint_override=127.0.0.1:9&region=us-east-1",
        None,
        "b/store",
    )
    assert q.uri_of("stages", "x") == "s3://b/store/stages/x?endpoint_override=127.0.0.1:9&region=us-east-1"
    assert q.ray_storage("studies") == (
        "s3://b/store/studies?endpoint_override=127.0.0.1:9&region=us-east-1",
        None,
    )
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    given = Store("inner", filesystem=fs)
    assert given.ray_storage("stages") == ("inner/stages", fs)
    given.write_json(given.path("x.json"), {"a": 1})
    assert json.loads((tmp_path / "inner" / "x.json").read_text()) == {"a": 1}


# ----------------------------------------------------------------------------------- estimates
def test_prediction_and_lower_bound_on_a_hand_checked_plan():
    plan = label_fraction_like(3, salt="pred")
    hours = estimated_hours(plan)
    pre = plan.trials[0].pretrain
    fts = [t.finetune for t in plan.trials[:3]]
    lone = plan.trials[-1].finetune
    # 1 GPU: everything in a row
    one = list_schedule(plan, {"GPU": 1.0, "CPU": 64.0})
    assert max(s.end_h for s in one) == pytest.approx(sum(hours.values()))
    # 4 GPUs: the pretrain and the lone finetune at once, then the 3 finetunes at once
    four = {s.stage_id: s for s in list_schedule(plan, {"GPU": 4.0, "CPU": 64.0})}
    assert four[pre].start_h == 0.0 and four[lone].start_h == 0.0
    assert all(four[f].start_h == pytest.approx(hours[pre]) for f in fts)
    makespan = max(s.end_h for s in four.values())
    assert makespan == pytest.approx(hours[pre] + max(hours[f] for f in fts))
    assert lower_bound(plan, 4) == pytest.approx(makespan)  # the chain is the bound here
    assert lower_bound(plan, 1) == pytest.approx(sum(hours.values()))  # total GPU-hours / 1
    assert lower_bound(plan, 1, scale=10.0) == pytest.approx(10 * sum(hours.values()))


def test_schedule_metrics_makespan_and_gpu_idle_while_a_stage_was_ready():
    # 2 GPUs; stage a runs 0-10; b is ready at 0 but starts at 2 (2 s of 1 idle GPU while ready)
    iv = [Interval("a", 0.0, 0.0, 10.0, 1.0), Interval("b", 0.0, 2.0, 10.0, 1.0)]
    m = schedule_metrics(iv, gpus=2)
    assert m["makespan"] == 10.0 and m["idle_while_ready"] == pytest.approx(2.0 / 20.0)
    # nothing ready while GPUs idle: 0
    iv = [Interval("a", 0.0, 0.0, 10.0, 1.0), Interval("c", 10.0, 10.0, 12.0, 1.0)]
    assert schedule_metrics(iv, gpus=2)["idle_while_ready"] == 0.0


def test_what_changed_line_of_an_edited_study(tmp_path):
    trials = [(f"n{n}", standins.pretrain_config(n=n), standins.finetune_config()) for n in (2, 3, 4)]
    before = standins.make_plan("edit", trials, salt="edit")
    after = standins.make_plan(
        "edit", [*trials[:2], ("n5", standins.pretrain_config(n=5), standins.finetune_config())], salt="edit"
    )
    finished = {before.trials[0].pretrain, before.trials[0].finetune}
    line = describe_changes(before.to_dict(), after, finished)
    assert line == (
        "since the last run of study edit: 2 new stages, 1 trial no longer in the study "
        "(their results stay in the store), 2 found"
    )
    assert describe_changes(None, after, set()).startswith("first run of study edit: 6 stages")


def test_an_edited_study_starts_a_fresh_tune_experiment_and_runs_only_its_stages(tmp_path):
    """Tuner.restore is asked for only when the study's stages are the ones its last run had: a restored
    experiment cannot drop a removed trial (Tune would run it) nor add a new one."""
    trials = [(f"n{n}", standins.pretrain_config(n=n), standins.finetune_config()) for n in (2, 3, 4)]
    full = standins.make_plan("edit", trials, salt="edit-run")
    fewer = standins.make_plan("edit", trials[:2], salt="edit-run")
    store = Store(tmp_path / "store")

    class Recorder(FakeRunner):
        restores: list[bool] = []

        def run(self, plan, store, scheduler, *, workloads, restore, progress=None, run_token=""):
            Recorder.restores.append(restore)
            return super().run(
                plan, store, scheduler, workloads=workloads, restore=restore, run_token=run_token
            )

    bad = full.trials[0].finetune
    run_study(
        full,
        store,
        study_text="name: edit\n",
        progress=False,
        runner=Recorder({"CPU": 2.0}, fit=fake_fit(fail={bad})),
    )
    calls: list[str] = []
    run_study(
        fewer,
        store,
        study_text="name: edit\n",
        progress=False,
        runner=Recorder({"CPU": 2.0}, fit=fake_fit(fail={bad}, calls=calls)),
    )
    assert Recorder.restores == [False, False]  # first run; then the stages changed (n=4 removed)
    assert calls == [bad]  # only the unfinished stage of the edited study; n=4's stages stay in the store
    assert store.read_result(full.trials[2].finetune) is not None
    summary = run_study(
        fewer, store, study_text="name: edit\n", progress=False, runner=Recorder({"CPU": 2.0})
    )
    assert Recorder.restores == [False, False, True]  # unchanged since the last run: restore it
    assert summary["counts"] == {"done": 2}


# ------------------------------------------------------------------------------------ failures
def _retry_plan(salt: str, **compute):
    c = standins.tiny_compute(**{"max_failures": 3, "retry_backoff_s": 7.0, **compute})
    return standins.make_plan(
        "retry",
        [
            ("bad", standins.pretrain_config(), standins.finetune_config()),
            ("good", standins.pretrain_config(method="scratch"), standins.finetune_config()),
        ],
        salt=salt,
        compute=c,
    )


def test_the_same_error_twice_stops_a_stage_its_dependants_skip_and_the_rest_finishes(tmp_path):
    from orchestrator.schedule.failures import read_attempts

    plan = _retry_plan("always")
    store = Store(tmp_path / "store")
    bad = plan.trials[0].pretrain
    calls: list[str] = []
    runner = FakeRunner({"CPU": 2.0}, fit=fake_fit(fail={bad}, calls=calls))
    summary = run_study(plan, store, study_text="name: retry\n", progress=False, runner=runner)

    assert calls.count(bad) == 2  # attempt, one retry after the backoff, then "the same error twice"
    retry_at = [t for t, sid in runner.launched if sid == bad]
    assert retry_at[1] - retry_at[0] >= 7.0  # the backoff (virtual seconds)
    assert summary["counts"] == {"failed": 1, "done": 1}
    data = read_attempts(store, bad)
    assert data["decision"]["reason"] == "repeated" and len(data["attempts"]) == 2
    text = store.read_error(bad)
    assert text.strip().splitlines()[-1] == f"RuntimeError: injected failure in {bad}" and "fake-node" in text
    assert store.read_result(plan.trials[0].finetune) is None  # not run, not published


def test_a_transient_failure_is_retried_in_the_same_run_and_its_attempts_cleared(tmp_path):
    from orchestrator.schedule.failures import read_attempts

    plan = _retry_plan("transient")
    store = Store(tmp_path / "store")
    bad = plan.trials[0].pretrain
    fail = {bad}
    inner = fake_fit()

    def fit_failing_once(plan, spec, store, workload, parent_has_weights):
        if spec.stage_id in fail:
            fail.discard(spec.stage_id)
            raise OSError("node lost its COCO mount")
        inner(plan, spec, store, workload, parent_has_weights)

    summary = run_study(
        plan,
        store,
        study_text="name: retry\n",
        progress=False,
        runner=FakeRunner({"CPU": 2.0}, fit=fit_failing_once),
    )
    assert summary["counts"] == {"done": 2} and summary["failures"] == []
    assert read_attempts(store, bad) is None and store.read_error(bad) is None


def test_a_spent_budget_fails_the_stage_and_the_status_says_why(tmp_path):
    from orchestrator.cli.status import study_status

    plan = _retry_plan("budget", max_failures=1)
    store = Store(tmp_path / "store")
    bad = plan.trials[0].pretrain
    n = [0]
    inner = fake_fit()

    def fit_new_error_each_time(plan, spec, store, workload, parent_has_weights):
        if spec.stage_id == bad:
            n[0] += 1
            raise RuntimeError(f"flaky #{n[0]}")
        inner(plan, spec, store, workload, parent_has_weights)

    run_study(
        plan,
        store,
        study_text="name: retry\n",
        progress=False,
        runner=FakeRunner({"CPU": 2.0}, fit=fit_new_error_each_time),
    )
    assert n[0] == 2  # the attempt and the one retry the budget allows
    row = next(r for r in study_status(plan, store) if r["stage_id"] == bad)
    assert row["state"] == "failed" and row["detail"] == "failed: RuntimeError: flaky #2"
