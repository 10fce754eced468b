"""Faults: a study survives a SIGKILLed driver at several points, a SIGKILLed Ray Train
worker and a truncated epoch checkpoint, and ends with the same numbers as an uninterrupted run.

Through a real local Ray with the deterministic stand-in workloads of tests/orchestrator/standins.py
(an nn.Linear trained full-batch with Adam through the shared engine). Every scenario runs the same
tiny plan (1 trial, pretrain 3 epochs, finetune 4 epochs; only the stage-id salt differs), so the
reference is that plan run once, uninterrupted, in its own store (`reference`, module-scoped). The
stand-in draws no random numbers after its seeded setup and the engine's checkpoints restore model,
optimizer, scheduler and torch RNG state, so a resumed stage reproduces the reference exactly: the
tests compare `metrics` and `epochs_trained` of both result.json files with `==`, not approximately.

The killed drivers run in a subprocess (this file run as a script); the mid-finetune-epoch kill is
covered by tests/orchestrator/test_resume.py and not repeated here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
STANDINS = HERE.parent / "orchestrator"
sys.path.insert(0, str(STANDINS))

import standins  # noqa: E402

PRETRAIN_EPOCHS = 3
FINETUNE_EPOCHS = 4
SLEEP_S = 1.0
PAUSE_S = 10.0  # a start/end pause that holds a kill window open (killed runs only)
WAIT_S = 300.0  # generous: 2 CPUs shared with other Ray test runs


def plan_for(salt: str, max_failures: int = 0):
    trials = [
        (
            "t-faults",
            standins.pretrain_config(epochs=PRETRAIN_EPOCHS),
            standins.finetune_config(epochs=FINETUNE_EPOCHS),
        )
    ]
    compute = standins.tiny_compute(max_failures=max_failures)
    return standins.make_plan("faults", trials, salt=salt, compute=compute)


def drive(
    root: str,
    calls: str,
    salt: str,
    *,
    start_sleep_s: float = 0.0,
    end_sleep_s: float = 0.0,
    pause_kind: str = "finetune",
    max_failures: int = 0,
    sleep_s: float = SLEEP_S,
) -> dict:
    """What the killed drivers, their re-runs and the reference execute. `sleep_s` paces the epochs of
    runs that something kills (the drivers, the worker-kill run); a run that nothing interrupts (the
    reference, the re-runs) needs no pacing and passes 0: the numbers do not depend on it."""
    import ray.cloudpickle

    from orchestrator.cli.run import run_study
    from orchestrator.store.store import Store

    ray.cloudpickle.register_pickle_by_value(standins)
    return run_study(
        plan_for(salt, max_failures),
        Store(root),
        study_text="name: faults\n",
        progress=False,
        workloads=standins.workloads(
            calls_file=calls,
            sleep_s=sleep_s,
            start_sleep_s=start_sleep_s,
            end_sleep_s=end_sleep_s,
            pause_kind=pause_kind,
        ),
    )


# ------------------------------------------------------------------------------------------ helpers
def kinds(calls: str) -> dict[str, int]:
    out = {"pretrain": 0, "finetune": 0}
    for c in standins.read_calls(calls):
        out[c["kind"]] += 1
    return out


def wait_until(cond, what: str, proc: subprocess.Popen | None = None, log_path: Path | None = None):
    deadline = time.time() + WAIT_S
    while time.time() < deadline:
        value = cond()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out = log_path.read_text()[-3000:] if log_path and log_path.exists() else ""
            pytest.fail(f"the study driver exited early (rc {proc.returncode}) waiting for {what}:\n{out}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {WAIT_S} s waiting for {what}")


def snapshot_path(root: str, stage_id: str) -> str:
    return os.path.join(root, "stages", stage_id, "train", stage_id, "checkpoint_manager_snapshot.json")


def read_snapshot(root: str, stage_id: str) -> dict | None:
    try:
        with open(snapshot_path(root, stage_id)) as f:
            return json.load(f)
    except (OSError, ValueError):  # absent, or caught mid-write
        return None


def registered_epochs(root: str, stage_id: str) -> list[int]:
    """Epochs of the checkpoints Ray Train has registered (and kept) for the stage's Train run."""
    snap = read_snapshot(root, stage_id) or {}
    return sorted(int(r["metrics"]["epoch"]) for r in snap.get("checkpoint_results") or [])


def start_driver(tmp_path: Path, root: str, calls: str, salt: str, **opts) -> tuple[subprocess.Popen, Path]:
    log_path = tmp_path / "driver.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(STANDINS), str(HERE), os.environ.get("PYTHONPATH", "")]),
        # The killed drivers keep their own local-Ray records (orchestrator.ray.host): this module's
        # in-process Ray holds the machine's CPUs, which a second run would otherwise not be given.
        # Each driver ends the orphans its SIGKILLed predecessor left.
        "HSJP_LOCAL_STATE": os.path.join(os.environ["HSJP_LOCAL_STATE"], "killed-drivers"),
    }
    args = [sys.executable, __file__, root, calls, salt, json.dumps(opts)]
    with open(log_path, "w") as log:  # a file, not a pipe: a full pipe would block the driver
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    return proc, log_path


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def assert_same_as_reference(store, plan, reference: dict) -> None:
    trial = plan.trials[0]
    for kind, stage_id in (("pretrain", trial.pretrain), ("finetune", trial.finetune)):
        result = store.read_result(stage_id)
        assert result is not None and result["status"] == "done", (kind, result)
        assert result["metrics"] == reference[kind]["metrics"], (kind, result["metrics"])
        assert result["epochs_trained"] == reference[kind]["epochs_trained"], kind
        assert store.read_error(stage_id) is None, kind
    ref_weights = reference["finetune_weights"]
    weights = store.load_weights(trial.finetune)
    assert weights.keys() == ref_weights.keys()
    for key, value in weights.items():
        assert value.equal(ref_weights[key]), key


def assert_contiguous_resume(epochs: list[int], before: list[int], total: int) -> None:
    """metrics.jsonl = the epochs before the kill, then one attempt that ends at the last epoch."""
    assert epochs[: len(before)] == before, (before, epochs)
    tail = epochs[len(before) :]
    if tail:
        assert tail == list(range(tail[0], total)), (before, tail)
    assert sorted(set(epochs)) == list(range(total)), epochs


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for every in-process run of this module (run_study reuses an initialised Ray and
    leaves it running), so the reference, the re-runs and the worker-kill study skip Ray's start-up.
    The killed drivers start their own Ray in their subprocess."""
    import ray

    from orchestrator.ray.tune import start_local_ray

    started = not ray.is_initialized()
    if started:
        start_local_ray()
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def reference(local_ray, tmp_path_factory) -> dict:
    """The plan run once without faults (its own store): what every scenario must reproduce."""
    from orchestrator.store.store import Store

    base = tmp_path_factory.mktemp("faults-reference")
    root, calls = str(base / "store"), str(base / "calls.jsonl")
    summary = drive(root, calls, "reference", sleep_s=0.0)
    assert summary["counts"] == {"done": 1}, summary
    store, trial = Store(root), plan_for("reference").trials[0]
    assert kinds(calls) == {"pretrain": 1, "finetune": 1}
    return {
        "pretrain": store.read_result(trial.pretrain),
        "finetune": store.read_result(trial.finetune),
        "finetune_weights": store.load_weights(trial.finetune),
    }


# ---------------------------------------------------------------------------------- driver SIGKILL
KILL_POINTS = {
    # between the stages: the pretrain is published, the finetune has no epoch yet (the finetune
    # pauses PAUSE_S before its first epoch, so the window is wide even on a loaded machine)
    # (the kill "during a pretrain epoch" is in test_driver_killed_mid_pretrain_with_truncated_checkpoint)
    "between-stages": (
        {"start_sleep_s": PAUSE_S},
        lambda store, t: store.read_result(t.pretrain) is not None,
    ),
    # at the end of the finetune: its last epoch is checkpointed and recorded, the workload pauses
    # PAUSE_S before returning, so no staging.json / result.json yet
    "end-of-finetune": (
        {"end_sleep_s": PAUSE_S},
        lambda store, t: FINETUNE_EPOCHS - 1 in standins.epochs_in_metrics(store, t.finetune),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_driver_killed_then_rerun_recomputes_nothing_finished(point, reference, tmp_path):
    from orchestrator.store.store import Store

    salt = f"faults-{point}"
    root, calls = str(tmp_path / "store"), str(tmp_path / "calls.jsonl")
    store, plan = Store(root), plan_for(salt)
    trial = plan.trials[0]
    opts, reached = KILL_POINTS[point]

    proc, log_path = start_driver(tmp_path, root, calls, salt, **opts)
    try:
        wait_until(lambda: reached(store, trial), f"kill point {point}", proc, log_path)
    finally:
        kill(proc)
    standins.wait_workers_gone(calls)

    done_before = {
        "pretrain": store.read_result(trial.pretrain) is not None,
        "finetune": store.read_result(trial.finetune) is not None,
    }
    calls_before = kinds(calls)
    pre_before = standins.epochs_in_metrics(store, trial.pretrain)
    ft_before = standins.epochs_in_metrics(store, trial.finetune)
    expected_done = {
        "between-stages": {"pretrain": True, "finetune": False},
        "end-of-finetune": {"pretrain": True, "finetune": False},
    }[point]
    assert done_before == expected_done, (point, done_before)
    if point == "between-stages":
        assert ft_before == []
    if point == "end-of-finetune":
        assert ft_before[-1] == FINETUNE_EPOCHS - 1

    summary = drive(root, calls, salt, sleep_s=0.0)  # the re-run: no pauses

    assert summary["counts"] == {"done": 1}, summary
    calls_after = kinds(calls)
    for kind, was_done in done_before.items():
        if was_done:  # a finished stage is never called again
            assert calls_after[kind] == calls_before[kind], (kind, calls_before, calls_after)
        else:  # an unfinished one runs exactly once more
            assert calls_after[kind] == calls_before[kind] + 1, (kind, calls_before, calls_after)
    assert_contiguous_resume(standins.epochs_in_metrics(store, trial.pretrain), pre_before, PRETRAIN_EPOCHS)
    assert_contiguous_resume(standins.epochs_in_metrics(store, trial.finetune), ft_before, FINETUNE_EPOCHS)
    assert_same_as_reference(store, plan, reference)


# ---------------------------------------------------------------------------------- worker SIGKILL
@pytest.mark.slow
def test_killed_train_worker_restarts_from_its_checkpoint(reference, tmp_path):
    """With compute.max_failures >= 1, Ray Train restarts a stage's worker group after a worker dies
    and the workload resumes from the last registered checkpoint, within the same driver run."""
    from orchestrator.store.store import Store

    salt = "faults-worker"
    root, calls = str(tmp_path / "store"), str(tmp_path / "calls.jsonl")
    store, plan = Store(root), plan_for(salt, max_failures=1)
    trial = plan.trials[0]
    killed: dict = {}
    stop = threading.Event()

    def killer() -> None:  # a thread: run_study blocks the test's main thread
        deadline = time.time() + WAIT_S
        while not stop.is_set() and time.time() < deadline:
            ft_calls = [c for c in standins.read_calls(calls) if c["kind"] == "finetune"]
            epochs = standins.epochs_in_metrics(store, trial.finetune)
            # a checkpoint registered and epoch >= 1 recorded: the restart must not begin at epoch 0
            if ft_calls and max(epochs, default=-1) >= 1 and registered_epochs(root, trial.finetune):
                killed["pid"], killed["epochs"] = ft_calls[0]["pid"], epochs
                killed["registered"] = registered_epochs(root, trial.finetune)
                os.kill(ft_calls[0]["pid"], signal.SIGKILL)
                return
            time.sleep(0.2)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        summary = drive(root, calls, salt, max_failures=1)
    finally:
        stop.set()
        thread.join()

    assert "pid" in killed, "the finetune never reached a killable point"
    assert summary["counts"] == {"done": 1}, summary
    calls_list = standins.read_calls(calls)
    ft_pids = [c["pid"] for c in calls_list if c["kind"] == "finetune"]
    assert [c["kind"] for c in calls_list].count("pretrain") == 1
    assert len(ft_pids) == 2 and ft_pids[0] == killed["pid"] and ft_pids[1] != killed["pid"], ft_pids
    rows = [r for r in store.read_metrics(trial.finetune) if "epoch" in r]
    second = [r for r in rows if r.get("resumed_from") is not None]
    assert second, rows
    first_epoch = int(second[0]["epoch"])
    assert first_epoch >= 1, "the restarted workers began at epoch 0"
    assert first_epoch - 1 >= min(killed["registered"]), (killed, first_epoch)
    assert [int(r["epoch"]) for r in second] == list(range(first_epoch, FINETUNE_EPOCHS))
    result = store.read_result(trial.finetune)
    assert result["resumed_from"] == first_epoch - 1
    assert_same_as_reference(store, plan, reference)


# --------------------------------------------------- driver SIGKILL mid-pretrain + truncated checkpoint
@pytest.mark.slow
def test_driver_killed_mid_pretrain_with_truncated_checkpoint(reference, tmp_path):
    """The driver dies during a pretrain epoch (epochs recorded, no pretrain result) and a writer that
    died mid-`state.pt` left the latest registered checkpoint unreadable: the re-run resumes the
    pretrain from the checkpoint before it (RayStageContext.resume_state falls back, warning), runs the
    finetune once and still reproduces the reference. (Kill point "during a pretrain epoch" and the
    truncated checkpoint share one study to keep the file's run time down.)"""
    from orchestrator.store.store import Store

    salt = "faults-truncated"
    root, calls = str(tmp_path / "store"), str(tmp_path / "calls.jsonl")
    store, plan = Store(root), plan_for(salt)
    trial = plan.trials[0]

    # the pretrain pauses after its last epoch, so it cannot finish while Train registers a second
    # checkpoint (registration lags the epoch by a second or two, docs/ray.md §3b)
    proc, log_path = start_driver(tmp_path, root, calls, salt, end_sleep_s=PAUSE_S, pause_kind="pretrain")
    try:  # two registered pretrain checkpoints: a latest to truncate and one to fall back to
        wait_until(
            lambda: len(registered_epochs(root, trial.pretrain)) >= 2, "two checkpoints", proc, log_path
        )
    finally:
        kill(proc)
    standins.wait_workers_gone(calls)
    wait_until(_stable(lambda: read_snapshot(root, trial.pretrain)), "a settled checkpoint snapshot")
    assert store.read_result(trial.pretrain) is None
    assert kinds(calls) == {"pretrain": 1, "finetune": 0}
    assert max(standins.epochs_in_metrics(store, trial.pretrain)) >= 1

    snap = read_snapshot(root, trial.pretrain)
    latest = snap["latest_checkpoint_result"]
    latest_epoch = int(latest["metrics"]["epoch"])
    assert latest_epoch - 1 in registered_epochs(root, trial.pretrain), snap
    run_dir = os.path.dirname(snapshot_path(root, trial.pretrain))
    state = os.path.join(run_dir, latest["checkpoint_dir_name"], "state.pt")
    with open(state, "r+b") as f:  # what a writer killed halfway leaves behind
        f.truncate(os.path.getsize(state) // 2)
    before = standins.epochs_in_metrics(store, trial.pretrain)

    summary = drive(root, calls, salt, sleep_s=0.0)  # the re-run

    assert summary["counts"] == {"done": 1}, summary
    assert kinds(calls) == {"pretrain": 2, "finetune": 1}
    result = store.read_result(trial.pretrain)
    assert result["resumed_from"] == latest_epoch - 1  # one earlier than the truncated latest
    rows = [r for r in store.read_metrics(trial.pretrain) if "epoch" in r]
    resumed = [int(r["epoch"]) for r in rows if r.get("resumed_from") is not None]
    assert resumed == list(range(latest_epoch, PRETRAIN_EPOCHS)), (before, resumed)
    assert standins.epochs_in_metrics(store, trial.finetune) == list(range(FINETUNE_EPOCHS))
    assert_same_as_reference(store, plan, reference)


def _stable(read, settle_s: float = 2.0):
    """A condition that holds once `read()` returned the same value for `settle_s`."""
    seen = {"value": object(), "since": time.time()}

    def cond() -> bool:
        value = read()
        if value != seen["value"]:
            seen["value"], seen["since"] = value, time.time()
            return False
        return time.time() - seen["since"] >= settle_s

    return cond


if __name__ == "__main__":  # the study driver that the tests kill
    drive(sys.argv[1], sys.argv[2], sys.argv[3], **json.loads(sys.argv[4]))
