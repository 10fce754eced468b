"""Bounded, explained retries: the decision function, the texts, attempts.json /
error.txt through the Store, `status` showing `retrying 2/3: …` / `failed: …`, and the refusal of
`max_failures: -1` (no Ray)."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from orchestrator.cli.main import main
from orchestrator.cli.status import render_status, study_status
from orchestrator.plan import make_plan
from orchestrator.schedule import failures
from orchestrator.schedule.failures import Attempt, FailurePolicy, decide, status_text, summary_line
from orchestrator.spec.inputs import ComputeConfig, data_config
from orchestrator.spec.study import load_study
from orchestrator.store.store import Store
from workloads.config import ConfigError, from_dict

SMOKE = Path(__file__).resolve().parents[2] / "studies" / "smoke.yaml"
POLICY = FailurePolicy(max_failures=3, backoff_s=10.0, backoff_factor=2.0, backoff_max_s=25.0)


def err(message: str, exc_type: str = "ValueError", node: str | None = "10.0.0.7") -> Attempt:
    return Attempt(exc_type, message, f"{exc_type}: {message}", node=node, traceback="", run_token="r1")


# ------------------------------------------------------------------------------------- decisions
def test_different_errors_retry_with_growing_backoff_until_the_budget_is_spent():
    history, delays = [], []
    for i in range(1, 5):
        history.append(err(f"attempt {i} broke"))
        d = decide(history, POLICY)
        delays.append(d.delay_s)
        if i <= 3:
            assert d.retry and d.reason == "retry" and d.failures == i and d.budget == 3
    assert delays[:3] == [10.0, 20.0, 25.0]  # 10, 20, 40 capped at backoff_max_s
    assert not d.retry and d.reason == "budget" and d.delay_s == 0.0


def test_the_same_error_twice_in_a_row_fails_at_once():
    d = decide([err("COCO mount missing: /data/coco"), err("COCO mount missing: /data/coco")], POLICY)
    assert not d.retry and d.reason == "repeated" and d.failures == 2
    assert d.error == "ValueError: COCO mount missing: /data/coco"


def test_same_message_of_another_type_or_with_other_object_addresses():
    other_type = decide([err("boom"), err("boom", exc_type="RuntimeError")], POLICY)
    assert other_type.retry
    addresses = decide([err("bad <obj at 0x7f3a11c2d0>"), err("bad <obj at 0x7f99aa00b0>")], POLICY)
    assert not addresses.retry and addresses.reason == "repeated"  # addresses do not make it new


def test_not_in_a_row_is_not_a_repeat():
    d = decide([err("a"), err("b"), err("a")], POLICY)
    assert d.retry and d.failures == 3


def test_zero_budget_fails_on_the_first_error():
    d = decide([err("boom")], FailurePolicy(max_failures=0))
    assert not d.retry and d.reason == "budget"


def test_preemptions_neither_count_nor_repeat_but_have_their_own_bound():
    pre = Attempt("PreemptionError", "node drained", "PreemptionError: node drained", run_token="r1")
    history = [err("x"), pre, pre, pre]
    d = decide(history, POLICY)
    assert d.retry and d.reason == "preempted" and d.delay_s == 0.0 and d.failures == 1
    d = decide([*history, err("x")], POLICY)  # the previous *counted* error was also "x"
    assert not d.retry and d.reason == "repeated"
    d = decide([pre] * 3, dataclasses.replace(POLICY, max_preemptions=2))
    assert not d.retry and d.reason == "preemptions"


def test_policy_refuses_an_unlimited_budget_and_needs_history():
    with pytest.raises(ValueError, match="max_failures = -1"):
        FailurePolicy(max_failures=-1)
    with pytest.raises(ValueError):
        decide([], POLICY)


def test_policy_from_the_study_compute_section():
    compute = ComputeConfig(max_failures=5, retry_backoff_s=1, retry_backoff_factor=3, retry_backoff_max_s=7)
    p = FailurePolicy.from_compute(compute)
    assert (p.max_failures, p.delay_s(1), p.delay_s(2), p.delay_s(3)) == (5, 1.0, 3.0, 7.0)


# ------------------------------------------------------------------------------------------- texts
def test_status_and_summary_texts():
    retry = decide([err("boom")], POLICY)
    assert status_text(retry) == "retrying 1/3: ValueError: boom"
    assert summary_line("pretrain-abc", retry) == (
        "stage pretrain-abc failed on 10.0.0.7: ValueError: boom — retry 1/3 in 10 s (compute.max_failures)"
    )
    fail = decide([err("boom"), err("boom")], POLICY)
    assert status_text(fail) == "failed: ValueError: boom"
    line = summary_line("pretrain-abc", fail)
    assert "\n" not in line and line.endswith(
        "failed: the same error twice in a row; its dependants are skipped (error.txt in the stage folder)"
    )
    spent = decide([err(str(i)) for i in range(4)], POLICY)
    assert "retry budget spent (compute.max_failures = 3)" in summary_line("finetune-1", spent)


class _FakeUserError(RuntimeError):
    """Stands for Train's UserExceptionWithTraceback (`_base_exc`)."""

    def __init__(self, base: BaseException):
        super().__init__("wrapped")
        self._base_exc = base


class _FakeWorkerGroupError(RuntimeError):
    """Stands for ray.train.WorkerGroupError: text with the workers' tracebacks, worker_failures."""

    def __init__(self, text: str, failures: dict):
        super().__init__("Training failed due to worker errors:\n" + text)
        self.worker_failures = failures


def test_attempt_from_a_train_error_takes_the_workers_error_and_traceback():
    worker_tb = (
        '[Rank 0]\nTraceback (most recent call last):\n  File "train.py", line 3, in loop\n'
        "    raise FileNotFoundError('/data/coco/train2017 not found')\n"
        "FileNotFoundError: /data/coco/train2017 not found"
    )
    exc = _FakeWorkerGroupError(
        worker_tb,
        {1: KeyError("other"), 0: _FakeUserError(FileNotFoundError("/data/coco/train2017 not found"))},
    )
    a = failures.attempt_from_exception(exc, node="10.0.0.9", run_token="r1")
    assert a.exc_type == "FileNotFoundError" and a.message == "/data/coco/train2017 not found"
    assert a.last_line == "FileNotFoundError: /data/coco/train2017 not found"
    assert "line 3, in loop" in a.traceback and a.node == "10.0.0.9"


def test_attempt_from_a_plain_exception_formats_its_traceback():
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError as exc:
        a = failures.attempt_from_exception(exc)
    assert a.exc_type == "ZeroDivisionError" and a.last_line == "ZeroDivisionError: division by zero"
    assert "Traceback (most recent call last)" in a.traceback and "test_failures.py" in a.traceback


# ------------------------------------------------------------------------------ store and status
@pytest.fixture
def setup(tmp_path):
    store = Store(tmp_path / "store")
    study = load_study(SMOKE)
    plan = make_plan(study, data_config(study.data, store.base))
    return store, plan, plan.trials[0].pretrain


def test_record_failure_writes_history_and_error_txt_and_status_shows_it(setup):
    store, plan, sid = setup
    tb = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: boom'
    first = Attempt("ValueError", "boom", "ValueError: boom", node="10.0.0.7", traceback=tb, run_token="r1")
    d = failures.record_failure(store, sid, first, POLICY)
    assert d.retry
    text = store.read_error(sid)
    assert text.startswith("run r1\nstage " + sid + "\nattempt 1 ") and "node: 10.0.0.7" in text
    assert text.rstrip().endswith("ValueError: boom") and 'File "x.py", line 1' in text
    rows = {r["stage_id"]: r for r in study_status(plan, store)}
    assert rows[sid]["state"] == "retrying" and rows[sid]["detail"] == "retrying 1/3: ValueError: boom"
    assert "— retrying 1/3: ValueError: boom" in render_status(list(rows.values()), plan)

    d = failures.record_failure(store, sid, dataclasses.replace(first, time=first.time + 1), POLICY)
    assert not d.retry and d.reason == "repeated"
    assert len(failures.history(store, sid, "r1")) == 2
    rows = {r["stage_id"]: r for r in study_status(plan, store)}
    assert rows[sid]["state"] == "failed" and rows[sid]["detail"] == "failed: ValueError: boom"
    assert rows[sid]["error"] == "ValueError: boom"


def test_a_new_run_starts_with_a_fresh_budget_and_success_clears(setup):
    store, _, sid = setup
    failures.record_failure(store, sid, err("boom"), POLICY)
    assert failures.history(store, sid, "r2") == []
    d = failures.record_failure(store, sid, dataclasses.replace(err("boom"), run_token="r2"), POLICY)
    assert d.retry and d.failures == 1  # not a repeat: the earlier run's attempt does not count
    failures.clear_attempts(store, sid)
    assert failures.read_attempts(store, sid) is None and failures.stage_failure_status(store, sid) is None


def test_a_corrupt_attempts_file_does_not_break_status(setup):
    store, plan, sid = setup
    store.write_bytes(failures.attempts_path(store, sid), b"{not json")
    assert failures.read_attempts(store, sid) is None
    assert {r["stage_id"]: r for r in study_status(plan, store)}[sid]["state"] == "queued"


# ---------------------------------------------------------------------------------- validation
def test_unlimited_budget_is_refused_naming_the_budget_and_backoff():
    with pytest.raises(ConfigError) as info:
        from_dict(ComputeConfig, {"max_failures": -1}, "s.yaml: compute")  # checked when made
    msg = str(info.value)
    for part in ("s.yaml: compute.max_failures = -1", "retry_backoff_s = 10", "retry_backoff_factor = 2"):
        assert part in msg
    assert "retry_backoff_max_s = 300" in msg and "same error comes twice in a row" in msg


def test_unlimited_budget_through_the_cli_exits_2_with_one_line(tmp_path, capsys):
    study = tmp_path / "s.yaml"
    study.write_text(SMOKE.read_text().replace("max_failures: 1", "max_failures: -1"))
    assert "max_failures: -1" in study.read_text()
    store = tmp_path / "store"
    assert main(["run", str(study), "--storage", str(store)]) == 2
    err_text = capsys.readouterr().err
    assert err_text.count("\n") == 1 and err_text.startswith(f"error: {study}: compute.max_failures = -1")
    assert "Traceback" not in err_text and not store.exists()


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("retry_backoff_s", -1.0, "waits must be ≥ 0 seconds"),
        ("retry_backoff_factor", 0.5, "compute.retry_backoff_factor = 0.5: must be ≥ 1"),
        ("trial_limit", 0, "compute.trial_limit = 0: must be ≥ 1"),
    ],
)
def test_bad_retry_settings_are_refused(field, value, expected):
    with pytest.raises(ConfigError, match=expected):
        ComputeConfig(**{field: value})  # a config checks itself when made


# ------------------------------------------------------------------------------------------ loop
class StageGaveUp(RuntimeError):
    """A stage failed for good (budget spent, or the same error twice); `decision` says why."""

    def __init__(self, stage_id: str, decision: failures.Decision):
        super().__init__(f"stage {stage_id} {failures.status_text(decision)}")
        self.stage_id, self.decision = stage_id, decision


T = TypeVar("T")


def run_with_retries(  # the retry loop the scheduler runs, as one function (tests)
    run_once: Callable[[], T],
    store: Store,
    stage_id: str,
    policy: failures.FailurePolicy,
    *,
    run_token: str,
    node: Callable[[], str | None] | None = None,
    report: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    study: str = "",
) -> T:
    """Call `run_once` (one attempt of a stage) until it returns, under `policy`: each failure is
    recorded (attempts.json, error.txt), reported as one line, and either retried after its backoff
    or ends in StageGaveUp. On success this run's attempts are cleared. `node` names where the failed
    attempt ran, when the caller can tell."""
    report = report or (lambda line: print(line, file=sys.stderr, flush=True))
    while True:
        try:
            result = run_once()
        except Exception as exc:  # noqa: BLE001 — every failure of the stage is the policy's to judge
            attempt = failures.attempt_from_exception(exc, node=node() if node else None, run_token=run_token)
            decision = failures.record_failure(store, stage_id, attempt, policy, study=study)
            report(failures.summary_line(stage_id, decision))
            if not decision.retry:
                raise StageGaveUp(stage_id, decision) from exc
            sleep(decision.delay_s)
            continue
        failures.clear_attempts(store, stage_id)
        return result


def test_an_always_failing_stage_stops_after_two_identical_errors(setup):
    """The always-failing stand-in under the loop: 2 attempts, one backoff, error.txt, two lines
    printed (the traceback's last line in each), status `failed: …`; no real waiting."""
    store, plan, sid = setup
    calls, waits, lines = [], [], []

    def always_fails():
        calls.append(1)
        raise RuntimeError("stand-in stage: deterministic bug")

    with pytest.raises(StageGaveUp) as info:
        run_with_retries(
            always_fails,
            store,
            sid,
            POLICY,
            run_token="r9",
            node=lambda: "10.0.0.3",
            report=lines.append,
            sleep=waits.append,
        )
    assert len(calls) == 2 and waits == [10.0] and info.value.decision.reason == "repeated"
    assert lines[0].endswith(
        "RuntimeError: stand-in stage: deterministic bug — retry 1/3 in 10 s (compute.max_failures)"
    )
    assert "failed: the same error twice in a row" in lines[1] and "RuntimeError: stand-in stage" in lines[1]
    text = store.read_error(sid)
    assert "node: 10.0.0.3" in text and "Traceback (most recent call last)" in text and "always_fails" in text
    assert text.rstrip().splitlines()[-1] == "RuntimeError: stand-in stage: deterministic bug"
    row = {r["stage_id"]: r for r in study_status(plan, store)}[sid]
    assert (
        row["state"] == "failed"
        and row["detail"] == "failed: RuntimeError: stand-in stage: deterministic bug"
    )


def test_a_flaky_stage_is_retried_and_its_attempts_cleared(setup):
    store, _, sid = setup
    outcomes = iter([OSError("mount went away"), None])
    waits = []

    def flaky():
        exc = next(outcomes)
        if exc:
            raise exc
        return "ok"

    assert (
        run_with_retries(flaky, store, sid, POLICY, run_token="r1", report=lambda _: None, sleep=waits.append)
        == "ok"
    )
    assert waits == [10.0] and failures.read_attempts(store, sid) is None


def test_the_budget_bounds_different_errors(setup):
    store, _, sid = setup
    n = iter(range(100))

    def new_error_each_time():
        raise ValueError(f"error {next(n)}")

    with pytest.raises(StageGaveUp) as info:
        run_with_retries(
            new_error_each_time,
            store,
            sid,
            POLICY,
            run_token="r1",
            report=lambda _: None,
            sleep=lambda s: None,
        )
    assert info.value.decision.reason == "budget" and len(failures.history(store, sid, "r1")) == 4


def test_a_retry_whose_run_ended_shows_as_stopped(setup):
    """attempts.json says `retrying`, but the study's run lock is free: the run was stopped (Ctrl-C,
    SIGKILL) during the backoff, so status says so instead of `retrying` forever."""
    import filelock

    store, plan, sid = setup
    failures.record_failure(store, sid, err("boom"), POLICY, study="smoke")
    lock_path = Path(store.base) / "locks" / "study-smoke.lock"
    lock_path.parent.mkdir(parents=True)
    with filelock.FileLock(str(lock_path)):  # a run of the study is active
        assert failures.run_active(store, "smoke") is True
        row = {r["stage_id"]: r for r in study_status(plan, store)}[sid]
        assert row["state"] == "retrying" and row["detail"] == "retrying 1/3: ValueError: boom"
    assert failures.run_active(store, "smoke") is False
    row = {r["stage_id"]: r for r in study_status(plan, store)}[sid]
    assert (
        row["state"] == "failed"
        and row["detail"] == "stopped while retrying 1/3: ValueError: boom (its run ended)"
    )
    assert failures.run_active(store, "../x") is None
