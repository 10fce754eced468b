"""A pretrain shared by two trials that run at the same time is computed once (DESIGN.md §2–3):
one trial computes it, the other waits on the stage's lock (holding no training resources) and
then finds its result; both finetunes start from its weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import ray.cloudpickle

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import standins  # noqa: E402

from orchestrator.execution import run_study  # noqa: E402
from orchestrator.ray_backend import start_local_ray  # noqa: E402
from orchestrator.store import Store  # noqa: E402
from workloads.config import to_dict  # noqa: E402

ray.cloudpickle.register_pickle_by_value(standins)


@pytest.fixture(scope="module")
def local_ray():
    start_local_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_two_trials_sharing_a_pretrain_compute_it_once(local_ray, tmp_path):
    pre = standins.pretrain_config(epochs=3)
    plan = standins.make_plan(
        "dedup",
        [("t-a", pre, standins.finetune_config(lr=0.05)), ("t-b", pre, standins.finetune_config(lr=0.02))],
        salt="dedup",
    )
    store, calls = Store(tmp_path / "store"), str(tmp_path / "calls.jsonl")
    pre_id = plan.trials[0].pretrain
    assert plan.trials[1].pretrain == pre_id

    summary = run_study(
        plan,
        store,
        study_text="name: dedup\n",
        max_concurrent=2,
        workloads=standins.workloads(calls, sleep_s=0.5),
    )

    assert summary["counts"] == {"done": 2}
    kinds = sorted(c["kind"] for c in standins.read_calls(calls))
    assert kinds == ["finetune", "finetune", "pretrain"], "the shared pretrain ran more than once"
    assert standins.epochs_in_metrics(store, pre_id) == [0, 1, 2]
    assert sorted(t["pretrain_how"] for t in summary["trials"]) == ["computed", "waited"]
    assert store.exists(store.path("locks", f"{pre_id}.lock"))
    for trial in plan.trials:
        ft = store.read_result(trial.finetune)
        assert ft["status"] == "done" and ft["parent"] == pre_id
        assert ft["metrics"]["load_report"]["loaded_parent"] is True  # started from the pretrain's weights
        assert ft["config"]["init"] == {"method": "hsjp", "pretrain": to_dict(pre)}
