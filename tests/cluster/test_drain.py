"""A graceful node drain on a simulated multi-node Ray cluster, all on this machine.

A spot node announces its end through Ray's drain API: the GCS `DrainNode` call with reason
`DRAIN_NODE_REASON_PREEMPTION` and a deadline (what `ray drain-node` and the autoscaler send). Ray
Train V2's `PreemptionWatcher` sees the drain, the controller lets the workers run to the deadline
(every epoch is checkpointed meanwhile), then ends the attempt with a `PreemptionError`, which
`fit_stage` leaves to the stage's failure policy (`max_preemption_failures=0`): recorded in
attempts.json as a preemption, not counted, restarted at once; the restart runs on the other worker
node from the last registered epoch checkpoint. At the deadline the test removes the drained node,
as the cloud provider would.

The study is the deterministic stand-in plan of tests/orchestrator/standins.py, run once undisturbed
on the same cluster (its own store) as the reference: the drained run must end with the same
`metrics` and `epochs_trained` (`==`) and the same finetune weights (`torch.equal`), and the drain
must not count against `compute.max_failures` (0 here, so a miscounted drain fails the stage).
"""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest
import ray
import ray.cloudpickle
from ray.cluster_utils import Cluster

from orchestrator.cli.run import run_study
from orchestrator.schedule import failures
from orchestrator.store.store import Store
from tests.orchestrator import standins

ray.cloudpickle.register_pickle_by_value(standins)
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

FINETUNE_EPOCHS = 8
SLEEP_S = 1.0
DRAIN_AT_EPOCH = 1
"""The drain is announced once the finetune has recorded this epoch."""
DEADLINE_S = 4.5
"""The drain's deadline, seconds after the announcement (a spot notice is ~30 s to 2 min); not a
whole number of the stand-in's 1 s epochs, so it falls inside an epoch, as a real one does."""
WAIT_S = 300.0  # generous: 2 CPUs shared with other engineers' test runs
CLUSTER_ENV = {
    # Ray Train's watcher is on by default; a local Ray started earlier in this process may have set
    # it to 0 (orchestrator.ray.tune.start_local_ray): this cluster's nodes inherit it from here.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1",
    "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "1",  # default 5 s: notice the drain within the deadline
    # the controller registers one reported checkpoint per poll (default every 2 s): with the stand-in's
    # 1 s epochs the registered checkpoint would fall behind the metrics rows
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
}
"""The environment this module's cluster starts with (tests/cluster/conftest.py), besides BASE_ENV."""


def plan_for(salt: str):
    # a from-scratch finetune: its pretrain is no work (published without a trainer), so the two runs
    # spend their time in the stage that is drained
    trial = (
        "t-drain",
        standins.pretrain_config(method="scratch"),
        standins.finetune_config(epochs=FINETUNE_EPOCHS),
    )
    # max_failures 0: a drain counted as a failure would fail the stage
    return standins.make_plan("drain", [trial], salt=salt, compute=standins.tiny_compute(max_failures=0))


def drive(store: Store, salt: str, calls: str, nodes: str) -> dict:
    return run_study(
        plan_for(salt),
        store,
        study_text="name: drain\n",
        progress=False,
        workloads=standins.node_tagged_workloads(calls, nodes, SLEEP_S),
    )


def drain(c: Cluster, node_id: str, deadline_s: float) -> int:
    """Announce the end of `node_id` as a spot provider does: Ray's GCS DrainNode with reason
    PREEMPTION and a deadline (the call `ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION
    --deadline-remaining-seconds` makes). Returns the deadline (ms since the epoch)."""
    from ray.core.generated import autoscaler_pb2

    deadline_ms = int(time.time() * 1000) + int(deadline_s * 1000)
    accepted, why = ray._raylet.GcsClient(address=c.gcs_address).drain_node(
        node_id,  # hex: the GCS decodes it with FromHex
        autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
        "spot instance reclaimed (test)",
        deadline_ms,
    )
    assert accepted, f"the drain of {node_id} was refused: {why}"
    return deadline_ms


def test_a_drain_is_a_preemption_to_the_failure_policy():
    """What `trainer.fit()` raises for a drained node (Ray's own exception classes, no Ray started):
    Train's PreemptionError (the drain was seen), or a WorkerGroupError whose worker died with its
    drained node (`RayActorError.preempted`, the drain not seen in time). Both are preemptions:
    restarted at once and not counted; a worker lost without a drain is counted."""
    from ray.exceptions import ActorDiedError, RayActorError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError
    from ray.train.v2.api.exceptions import PreemptionError, WorkerGroupError
    from ray.train.v2.api.preemption import PreemptionInfo

    policy = failures.FailurePolicy(max_failures=0)
    seen = PreemptionError(PreemptionInfo(deadline_ms=1, preempted_node_to_ranks={"ab12": [0]}), True)
    attempt = failures.attempt_from_exception(seen, node="10.0.0.1", run_token="r")
    assert attempt.preempted and attempt.exc_type == "PreemptionError" and attempt.node == "ab12"
    decision = failures.decide([attempt], policy)
    assert decision.retry and decision.reason == "preempted" and decision.delay_s == 0.0
    assert "node preempted; restarting" in failures.summary_line("s", decision)
    assert failures.status_text(decision).startswith("retrying after a preemption: ")
    assert "PreemptionError: Training was interrupted by node preemption" in failures.status_text(decision)

    def lost(preempted: bool) -> WorkerGroupError:
        died = RayActorError(actor_id="a1", error_msg="The actor died.", preempted=preempted)
        return WorkerGroupError("rank 0 died", {0: WorkerHealthCheckFailedError("health check", died)})

    unseen = failures.attempt_from_exception(lost(True), run_token="r")
    assert unseen.preempted and unseen.drained
    assert failures.decide([attempt, unseen], policy).reason == "preempted"
    assert failures.Attempt.from_dict(unseen.to_dict()).preempted  # attempts.json keeps it
    plain = failures.attempt_from_exception(lost(False), run_token="r")
    assert not plain.preempted
    assert failures.decide([attempt, unseen, plain], policy).reason == "budget"
    assert not failures.attempt_from_exception(ActorDiedError(), run_token="r").preempted


def test_the_local_rays_watcher_setting_does_not_outlive_its_start(monkeypatch):
    """start_local_ray turns Ray Train's PreemptionWatcher off for the local Ray it starts (its raylet,
    and so every worker, inherits the setting) without leaving it in this process's environment,
    where a cluster started later (these tests) would inherit it too; a user's own setting stays."""
    from orchestrator.ray.connect import _local_node_env

    name = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
    monkeypatch.delenv(name, raising=False)
    with _local_node_env():
        assert os.environ[name] == "0"
    assert name not in os.environ
    monkeypatch.setenv(name, "1")
    with _local_node_env():
        assert os.environ[name] == "1"
    assert os.environ[name] == "1"


def node_states() -> dict[str, bool]:
    return {n["NodeID"]: bool(n["Alive"]) for n in ray.nodes()}


def draining() -> dict[str, int]:
    return ray._private.state.state.get_draining_nodes() or {}


# -------------------------------------------------------------------------------------- test
@pytest.mark.slow
def test_drained_node_under_a_stage_resumes_elsewhere_with_identical_results(cluster, tmp_path):
    # the reference: the same plan (another salt: other stage ids), undisturbed, on this cluster
    ref_store = Store(tmp_path / "reference")
    t0 = time.time()
    ref = drive(ref_store, "drain-reference", str(tmp_path / "ref-calls.jsonl"), str(tmp_path / "ref.jsonl"))
    t_ref = time.time() - t0
    assert ref["counts"] == {"done": 1}, ref
    ref_trial = plan_for("drain-reference").trials[0]

    plan = plan_for("drain-drained")
    trial = plan.trials[0]
    store = Store(tmp_path / "store")
    calls, nodes = str(tmp_path / "calls.jsonl"), str(tmp_path / "nodes.jsonl")
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = drive(store, "drain-drained", calls, nodes)
        except BaseException as exc:  # noqa: BLE001 — reported by the test thread
            outcome["error"] = exc

    t0 = time.time()
    driver = threading.Thread(target=run, daemon=True)
    driver.start()
    deadline = time.time() + WAIT_S
    while DRAIN_AT_EPOCH not in standins.epochs_in_metrics(store, trial.finetune):
        assert driver.is_alive(), f"the study ended before the drain: {outcome}"
        assert time.time() < deadline, f"the finetune did not reach epoch {DRAIN_AT_EPOCH} in {WAIT_S} s"
        time.sleep(0.1)
    victim = next(w["node"] for w in reversed(standins.read_calls(nodes)) if w["kind"] == "finetune")
    t_drain = time.time()
    deadline_ms = drain(cluster, victim, DEADLINE_S)
    at_drain = standins.epochs_in_metrics(store, trial.finetune)
    assert victim in draining(), "the GCS does not report the node as draining"

    # until the deadline the stage keeps training on the drained node; then the provider takes it
    seen_attempts: list[dict] = []
    removed_at = None
    while driver.is_alive() and time.time() < t_drain + WAIT_S:
        data = failures.read_attempts(store, trial.finetune)
        if data and data not in seen_attempts:
            seen_attempts.append(data)
        if removed_at is None and time.time() * 1000 >= deadline_ms:
            victim_node = next((n for n in cluster.worker_nodes if n.node_id == victim), None)
            if victim_node is not None and node_states().get(victim):
                cluster.remove_node(victim_node)
            removed_at = time.time()
        time.sleep(0.1)
    driver.join(timeout=5)
    t_done = time.time()
    assert not driver.is_alive(), f"the study did not finish within {WAIT_S} s of the drain"
    assert "error" not in outcome, outcome.get("error")

    where = [w for w in standins.read_calls(nodes) if w["kind"] == "finetune"]
    # metrics.jsonl: the drained attempt's epochs, then the restart's (rows that carry `resumed_from`)
    rows = [r for r in store.read_metrics(trial.finetune) if "epoch" in r]
    split = next((i for i, r in enumerate(rows) if r.get("resumed_from") is not None), len(rows))
    drained_epochs = [int(r["epoch"]) for r in rows[:split]]
    restart_epochs = [int(r["epoch"]) for r in rows[split:]]
    resumed_from = rows[split]["resumed_from"] if split < len(rows) else None
    attempts = [
        (a["exc_type"], (a["node"] or "")[:8], d["decision"]["reason"], d["decision"]["status"][:60])
        for d in seen_attempts
        for a in d["attempts"]
    ]
    print(
        f"\nreference run {t_ref:.1f} s. Drained run: drain announced {t_drain - t0:.1f} s in, after "
        f"finetune epochs {at_drain}, deadline {DEADLINE_S} s; the drained attempt recorded epochs "
        f"{drained_epochs}; node {victim[:8]} removed {removed_at - t_drain:.1f} s after the "
        f"announcement; finetune attempts (node, s after the announcement) "
        f"{[(w['node'][:8], round(w['time'] - t_drain, 1)) for w in where]}; the restart resumed from "
        f"epoch {resumed_from}'s checkpoint and trained {restart_epochs}; "
        f"attempts recorded {attempts}; study done {t_done - t_drain:.1f} s after the announcement "
        f"({t_done - t0:.1f} s in all)"
    )

    summary = outcome["summary"]
    assert summary["counts"] == {"done": 1}, summary
    kinds = [c["kind"] for c in standins.read_calls(calls)]
    assert kinds == ["finetune", "finetune"], kinds  # the drained attempt + one restart
    assert where[0]["node"] == victim and where[1]["node"] != victim, where
    assert where[1]["node"] in node_states() and node_states()[where[1]["node"]], where
    # the drained attempt trained on through the notice (checkpointing every epoch); the restart
    # resumed from its checkpoints, re-training at most the last epoch it had recorded (whose
    # checkpoint may still have been uploading when the node went) besides the one in progress
    assert drained_epochs == list(range(len(drained_epochs))) and drained_epochs[-1] >= max(at_drain)
    assert resumed_from is not None and resumed_from >= drained_epochs[-1] - 1, (drained_epochs, rows)
    assert restart_epochs == list(range(resumed_from + 1, FINETUNE_EPOCHS)), (resumed_from, restart_epochs)
    assert store.read_result(trial.finetune)["resumed_from"] == resumed_from
    # the drain reached the stage's failure policy as one preemption: recorded, restarted at once, not
    # counted against max_failures (0); cleared once the stage finished
    assert seen_attempts, "no attempts.json was written for the drained attempt"
    recorded = seen_attempts[-1]
    assert [a["exc_type"] for a in recorded["attempts"]] == ["PreemptionError"], recorded
    assert recorded["attempts"][0]["node"] == victim, recorded
    decision = recorded["decision"]
    assert decision["retry"] and decision["reason"] == "preempted" and decision["delay_s"] == 0.0
    assert decision["failures"] == 0 and decision["budget"] == 0, decision
    assert failures.read_attempts(store, trial.finetune) is None

    # the same results as the undisturbed reference, exactly
    got, want = store.read_result(trial.finetune), ref_store.read_result(ref_trial.finetune)
    assert got["status"] == want["status"] == "done"
    assert got["metrics"] == want["metrics"], (got["metrics"], want["metrics"])
    assert got["epochs_trained"] == want["epochs_trained"] == list(range(FINETUNE_EPOCHS))
    assert want["resumed_from"] is None and got["resumed_from"] is not None
    assert store.read_error(trial.finetune) is None
    weights, ref_weights = store.load_weights(trial.finetune), ref_store.load_weights(ref_trial.finetune)
    assert weights.keys() == ref_weights.keys()
    for key, value in weights.items():
        assert value.equal(ref_weights[key]), key
