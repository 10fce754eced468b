"""Resume after the driver is SIGKILLed mid-stage (docs/design.md §5), through a real local Ray.

A study driver runs in a subprocess (this file run as a script) and is killed once the finetune's
metrics show epoch ≥ 2. Running the study again must not recompute the finished pretrain and must
continue the finetune from its last registered epoch checkpoint (Train V2 may lose the last 1–2
checkpoint intervals, docs/ray.md §3c), not from epoch 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import standins  # noqa: E402

FINETUNE_EPOCHS = 6


def resume_plan():
    trials = [
        ("t-resume", standins.pretrain_config(epochs=2), standins.finetune_config(epochs=FINETUNE_EPOCHS))
    ]
    return standins.make_plan("resume", trials, salt="resume")


def drive(root: str, calls: str, sleep_s: float = 1.0) -> dict:
    """What both the killed driver and the re-run execute (the re-run unpaced: nothing kills it)."""
    import ray.cloudpickle

    from orchestrator.cli.run import run_study
    from orchestrator.store.store import Store

    ray.cloudpickle.register_pickle_by_value(standins)
    return run_study(
        resume_plan(),
        Store(root),
        study_text="name: resume\n",
        progress=True,
        workloads=standins.workloads(calls_file=calls, sleep_s=sleep_s),
    )


def _wait_for_epoch(store, stage_id: str, epoch: int, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if any(e >= epoch for e in standins.epochs_in_metrics(store, stage_id)):
            return
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the study driver exited early (rc {proc.returncode}):\n{out[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"{stage_id} did not reach epoch {epoch} within {timeout_s} s")


@pytest.mark.slow
def test_killed_driver_resumes_the_stage_and_keeps_finished_ones(tmp_path):
    from orchestrator.store.store import Store

    root, calls = str(tmp_path / "store"), str(tmp_path / "calls.jsonl")
    store = Store(root)
    plan = resume_plan()
    trial = plan.trials[0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, __file__, root, calls],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        _wait_for_epoch(store, trial.finetune, 2, proc, timeout_s=300)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    standins.wait_workers_gone(calls)  # orphaned Train workers outlive the driver by ~2 s (docs/ray.md §3c)
    assert store.read_result(trial.pretrain) is not None and store.read_result(trial.finetune) is None
    before = standins.epochs_in_metrics(store, trial.finetune)

    summary = drive(root, calls, sleep_s=0.0)

    assert summary["counts"] == {"done": 1}
    assert summary["tune"] == "restored"  # Tuner.restore of the killed experiment
    kinds = [c["kind"] for c in standins.read_calls(calls)]
    assert kinds.count("pretrain") == 1, "the finished pretrain was recomputed"
    assert kinds.count("finetune") == 2
    assert standins.epochs_in_metrics(store, trial.pretrain) == [0, 1]
    after = standins.epochs_in_metrics(store, trial.finetune)
    assert after[: len(before)] == before
    resumed = after[len(before) :]
    assert resumed == list(range(resumed[0], FINETUNE_EPOCHS)), resumed
    # resumed from a checkpoint (not epoch 0), losing at most the last ~2 intervals before the kill
    assert 1 <= resumed[0] and resumed[0] >= max(before) - 2, (before, resumed)
    result = store.read_result(trial.finetune)
    assert result["resumed_from"] == resumed[0] - 1
    assert result["epochs_trained"] == list(range(FINETUNE_EPOCHS))
    assert store.read_error(trial.finetune) is None


if __name__ == "__main__":  # the study driver that the test kills
    drive(sys.argv[1], sys.argv[2])
