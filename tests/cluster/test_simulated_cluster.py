"""A study on a simulated multi-node Ray cluster (docs/cluster.md), all nodes on this machine.

`ray.cluster_utils.Cluster` starts a head node that advertises the trial-driver resource and holds
no CPU (trial drivers land there, as on a non-preemptible head) plus two 1-CPU worker nodes (where
the stages' Ray Train workers land). Shows that a pretrain shared by two trials that train on
different nodes is computed once, and that removing the node under a half-trained stage (a spot
preemption) lets the study finish on the remaining node, the stage resuming from its last
registered epoch checkpoint through Ray Train's FailureConfig, with nothing finished recomputed;
and that a driver joined to the cluster by address, SIGKILLed mid-stage, is recovered by running the
study again.
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
import ray
import ray.cloudpickle
from ray.cluster_utils import Cluster

from orchestrator.cli.run import run_study
from orchestrator.store.store import Store
from tests.orchestrator import standins

ray.cloudpickle.register_pickle_by_value(standins)
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

REPO = Path(__file__).resolve().parents[2]
FINETUNE_EPOCHS = 8


def alive_worker_nodes(c: Cluster) -> dict[str, object]:
    return {n.node_id: n for n in c.worker_nodes}


# -------------------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_shared_pretrain_runs_once_while_trials_train_on_different_nodes(cluster, tmp_path):
    pre = standins.pretrain_config(epochs=2)
    plan = standins.make_plan(
        "cluster-dedup",
        [("t-a", pre, standins.finetune_config(lr=0.05)), ("t-b", pre, standins.finetune_config(lr=0.02))],
        salt="cluster-dedup",
    )
    store = Store(tmp_path / "store")
    calls, nodes = str(tmp_path / "calls.jsonl"), str(tmp_path / "nodes.jsonl")
    assert ray.cluster_resources().get("CPU") == len(cluster.worker_nodes) == 2  # the head holds none

    t0 = time.time()
    summary = run_study(
        plan,
        store,
        study_text="name: cluster-dedup\n",
        workloads=standins.node_tagged_workloads(calls, nodes, 0.5),
    )
    print(f"cluster dedup study: {time.time() - t0:.1f} s")

    assert summary["counts"] == {"done": 2}
    kinds = sorted(c["kind"] for c in standins.read_calls(calls))
    assert kinds == ["finetune", "finetune", "pretrain"], "the shared pretrain ran more than once"
    # one stage for both trials: computed once by this run (no trial waited for it)
    assert [t["pretrain_how"] for t in summary["trials"]] == ["computed", "computed"]
    where = standins.read_calls(nodes)
    workers = alive_worker_nodes(cluster)
    assert all(w["node"] in workers for w in where), "a stage trained off the worker nodes"
    finetune_nodes = [w["node"] for w in where if w["kind"] == "finetune"]
    assert len(set(finetune_nodes)) == 2, f"both finetunes trained on one node: {where}"
    for trial in plan.trials:
        ft = store.read_result(trial.finetune)
        assert ft["metrics"]["load_report"]["loaded_parent"] is True


def _wait_for_epoch(store: Store, stage_id: str, epoch: int, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if any(e >= epoch for e in standins.epochs_in_metrics(store, stage_id)):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{stage_id} did not reach epoch {epoch} within {timeout_s} s")


def driver_plan():
    trial = ("t-d", standins.pretrain_config(epochs=2), standins.finetune_config(epochs=FINETUNE_EPOCHS))
    return standins.make_plan("cluster-driver", [trial], salt="cluster-driver")


def drive(root: str, calls: str, nodes: str, sleep_s: float = 1.0) -> dict:
    """The study driver of the driver-kill test (killed in a subprocess, then re-run in the test,
    unpaced: nothing kills the re-run)."""
    return run_study(
        driver_plan(),
        Store(root),
        study_text="name: cluster-driver\n",
        workloads=standins.node_tagged_workloads(calls, nodes, sleep_s),
    )


@pytest.mark.slow
def test_killed_driver_rerun_against_the_cluster_resumes(cluster, tmp_path):
    """A driver joined to the cluster by address is SIGKILLed mid-finetune; the same study run again
    (here from the test process, also joined to the cluster) keeps the pretrain and resumes."""
    root, calls, nodes = str(tmp_path / "store"), str(tmp_path / "calls.jsonl"), str(tmp_path / "nodes.jsonl")
    store, trial = Store(root), driver_plan().trials[0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, __file__, cluster.address, root, calls, nodes],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 300
        while not any(e >= 2 for e in standins.epochs_in_metrics(store, trial.finetune)):
            if proc.poll() is not None:
                pytest.fail(f"the driver exited early (rc {proc.returncode}):\n{proc.stdout.read()[-3000:]}")
            assert time.time() < deadline, "the finetune did not reach epoch 2 within 300 s"
            time.sleep(0.2)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    standins.wait_workers_gone(calls)  # orphaned Train workers outlive the driver by ~2 s (docs/ray.md §3c)
    before = standins.epochs_in_metrics(store, trial.finetune)
    assert (store.read_result(trial.pretrain) is not None) and not (
        store.read_result(trial.finetune) is not None
    )

    t0 = time.time()
    summary = drive(root, calls, nodes, sleep_s=0.0)
    print(f"driver killed after epochs {before}; re-run took {time.time() - t0:.1f} s")

    assert summary["counts"] == {"done": 1}
    kinds = [c["kind"] for c in standins.read_calls(calls)]
    assert kinds.count("pretrain") == 1 and kinds.count("finetune") == 2, kinds
    after = standins.epochs_in_metrics(store, trial.finetune)
    assert after[: len(before)] == before
    resumed = after[len(before) :]
    assert resumed == list(range(resumed[0], FINETUNE_EPOCHS)), (before, resumed)
    assert 1 <= resumed[0] and resumed[0] >= max(before) - 2, (before, resumed)
    assert store.read_result(trial.finetune)["resumed_from"] == resumed[0] - 1


def _registered_epochs(store: Store, stage_id: str) -> list[int]:
    """Epochs of the checkpoints Ray Train has registered for the stage's Train run (its snapshot)."""
    path = store.stage_path(stage_id, "train", stage_id, "checkpoint_manager_snapshot.json")
    try:
        snap = json.loads(store.read_bytes(path) or b"{}")
    except ValueError:  # caught mid-write
        return []
    return sorted(int(r["metrics"]["epoch"]) for r in snap.get("checkpoint_results") or [])


@pytest.mark.slow
def test_losing_the_node_under_a_stage_resumes_it_on_another_node(cluster, tmp_path):
    """Runs last: it removes one of the fixture's worker nodes."""
    plan = standins.make_plan(
        "cluster-preempt",
        [
            (
                "t-p",
                standins.pretrain_config(epochs=2),
                standins.finetune_config(epochs=FINETUNE_EPOCHS),
            )
        ],
        salt="cluster-preempt",
        # the lost node fails the attempt; the stage's failure policy retries it after 1 s
        compute=standins.tiny_compute(max_failures=2, retry_backoff_s=1.0),
    )
    trial = plan.trials[0]
    store = Store(tmp_path / "store")
    calls, nodes = str(tmp_path / "calls.jsonl"), str(tmp_path / "nodes.jsonl")
    outcome: dict = {}

    def drive() -> None:
        try:
            outcome["summary"] = run_study(
                plan,
                store,
                study_text="name: cluster-preempt\n",
                workloads=standins.node_tagged_workloads(calls, nodes, 1.0),
            )
        except BaseException as exc:  # noqa: BLE001 — reported by the test thread
            outcome["error"] = exc

    t0 = time.time()
    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    _wait_for_epoch(store, trial.finetune, 1, timeout_s=300)
    # and for Ray Train to have registered an epoch checkpoint (it lags the reports: a node lost before
    # any registration restarts the stage from epoch 0, which is not what this test is about)
    deadline = time.time() + 120
    while not _registered_epochs(store, trial.finetune) and time.time() < deadline:
        time.sleep(0.2)
    assert _registered_epochs(store, trial.finetune), "no epoch checkpoint registered in 120 s"
    victim = next(w["node"] for w in reversed(standins.read_calls(nodes)) if w["kind"] == "finetune")
    t_kill = time.time()
    cluster.remove_node(alive_worker_nodes(cluster)[victim])
    before = standins.epochs_in_metrics(store, trial.finetune)
    driver.join(timeout=600)
    print(
        f"preempted at {t_kill - t0:.1f} s after epochs {before}; study done "
        f"{time.time() - t_kill:.1f} s later"
    )
    assert not driver.is_alive(), "the study did not finish within 600 s after the node loss"
    assert "error" not in outcome, outcome.get("error")

    summary = outcome["summary"]
    assert summary["counts"] == {"done": 1}
    kinds = [c["kind"] for c in standins.read_calls(calls)]
    assert kinds.count("pretrain") == 1, "the finished pretrain was recomputed"
    assert kinds.count("finetune") == 2, kinds  # the killed attempt + one restart
    where = [w["node"] for w in standins.read_calls(nodes) if w["kind"] == "finetune"]
    assert where[0] == victim and where[1] != victim and where[1] in alive_worker_nodes(cluster)
    after = standins.epochs_in_metrics(store, trial.finetune)
    assert after[: len(before)] == before
    resumed = after[len(before) :]
    assert resumed == list(range(resumed[0], FINETUNE_EPOCHS)), (before, resumed)
    assert 1 <= resumed[0] and resumed[0] >= max(before) - 2, (before, resumed)  # not from epoch 0
    result = store.read_result(trial.finetune)
    assert result["resumed_from"] == resumed[0] - 1
    assert result["epochs_trained"] == list(range(FINETUNE_EPOCHS))
    assert standins.epochs_in_metrics(store, trial.pretrain) == [0, 1]


if __name__ == "__main__":  # the driver that test_killed_driver_rerun_against_the_cluster_resumes kills
    ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)
    drive(*sys.argv[2:5])
