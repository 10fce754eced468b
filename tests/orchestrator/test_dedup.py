"""Each stage computed once, also across studies: two `run`s of different studies on one store, joined
to one Ray cluster, both need the same pretrain. The first computes it; the second sees its lease held,
launches nothing for it (no trial, no GPU, no process), runs its other stages meanwhile, and takes the
first run's result when it appears — on a local store (file leases) and on an S3-protocol object
store (the driver-owned lease actor; one driver given the bucket as a `pyarrow.fs` filesystem, the
other as a URI), through real Ray Tune / Ray Train runs of the stand-ins.

The two drivers are subprocesses (this file run as a script) joined to the Ray this module starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import standins  # noqa: E402

from orchestrator.store.store import Store  # noqa: E402

SALT = "two-studies"
WAIT_S = 300.0


def plans():
    """Study A: the shared pretrain → finetune a. Study B: the same pretrain → finetune b, and a scratch
    finetune of its own (what B runs while it waits)."""
    shared = standins.pretrain_config(epochs=4)
    a = standins.make_plan("study-a", [("a", shared, standins.finetune_config(lr=0.05))], salt=SALT)
    b = standins.make_plan(
        "study-b",
        [
            ("b", shared, standins.finetune_config(lr=0.02)),
            ("b-scratch", standins.pretrain_config(method="scratch"), standins.finetune_config(epochs=1)),
        ],
        salt=SALT,
    )
    return a, b


def drive(address: str, root: str, which: str, calls: str, out: str) -> None:
    """One study's driver: joins the cluster at `address`, runs its plan, writes its summary to `out`."""
    import ray.cloudpickle

    from orchestrator.cli.run import run_study

    ray.cloudpickle.register_pickle_by_value(standins)
    plan = dict(zip("ab", plans()))[which]
    if root.startswith("given-fs:"):  # a pyarrow filesystem given in the Python API, not a URI
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(root.removeprefix("given-fs:"))
        store = Store(path, filesystem=fs)
    else:
        store = Store(root)
    summary = run_study(
        plan,
        store,
        study_text=f"name: {plan.study}\n",
        address=address,
        workloads=standins.workloads(calls, sleep_s=0.5, start_sleep_s=12.0, pause_kind="pretrain"),
    )
    with open(out, "w") as f:
        json.dump(summary, f, default=str)


@pytest.fixture(scope="module")
def cluster_address():
    import ray

    from orchestrator.ray.connect import start_local_ray

    start_local_ray(num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _start(address: str, root: str, which: str, tmp_path: Path) -> tuple[subprocess.Popen, Path, Path]:
    log, out = tmp_path / f"driver-{which}.log", tmp_path / f"summary-{which}.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, __file__, address, root, which, str(tmp_path / "calls.jsonl"), str(out)]
    with open(log, "w") as f:
        proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, env=env)
    return proc, log, out


def _wait(cond, what: str, procs: list[subprocess.Popen], logs: list[Path]) -> None:
    deadline = time.time() + WAIT_S
    while time.time() < deadline:
        if cond():
            return
        for proc, log in zip(procs, logs):
            if proc.poll() not in (None, 0):
                pytest.fail(
                    f"a driver failed (rc {proc.returncode}) waiting for {what}:\n{log.read_text()[-3000:]}"
                )
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_studies_needing_one_pretrain_train_it_once(where, request, cluster_address, tmp_path):
    if where == "s3":
        root = request.getfixturevalue("s3_server").uri(f"dedup-{time.time_ns()}")
    else:
        root = str(tmp_path / "store")
    a, b = plans()
    shared = a.trials[0].pretrain
    assert b.trials[0].pretrain == shared and a.trials[0].finetune != b.trials[0].finetune
    store = Store(root)

    # on S3, A gets the bucket as a `pyarrow.fs` filesystem object (Store(path, filesystem=...)), B as a URI
    proc_a, log_a, out_a = _start(
        cluster_address, f"given-fs:{root}" if where == "s3" else root, "a", tmp_path
    )
    # B starts once A holds the shared stage (A has written its config.json: it is computing it)
    _wait(
        lambda: store.exists(store.stage_path(shared, "config.json")),
        "A to start the pretrain",
        [proc_a],
        [log_a],
    )
    proc_b, log_b, out_b = _start(cluster_address, root, "b", tmp_path)
    _wait(
        lambda: proc_a.poll() is not None and proc_b.poll() is not None,
        "both runs to end",
        [proc_a, proc_b],
        [log_a, log_b],
    )
    assert (proc_a.returncode, proc_b.returncode) == (0, 0), log_b.read_text()[-3000:]

    calls = standins.read_calls(str(tmp_path / "calls.jsonl"))
    assert sorted(c["kind"] for c in calls) == ["finetune", "finetune", "finetune", "pretrain"]
    summary_a, summary_b = json.loads(out_a.read_text()), json.loads(out_b.read_text())
    assert summary_a["counts"] == {"done": 1} and summary_b["counts"] == {"done": 2}
    how_b = {t["trial_id"]: t["pretrain_how"] for t in summary_b["trials"]}
    assert how_b["b"] == "waited" and summary_a["trials"][0]["pretrain_how"] == "computed"
    text_b = log_b.read_text()
    lines_b = [ln for ln in text_b.splitlines() if shared in ln]
    assert any("elsewhere: another run is computing it" in ln for ln in lines_b), text_b
    assert any("computed by another run" in ln for ln in lines_b), text_b
    assert not any(
        "  running" in ln or "  epoch " in ln for ln in lines_b
    )  # B ran no trial (held no GPU) for it
    # B's own scratch finetune ran while B waited, not after: one finetune began before the pretrain's
    # last epoch (the other two start from its weights)
    pretrain_end = max(r["time"] for r in store.read_metrics(shared))
    assert len([c for c in calls if c["kind"] == "finetune" and c["time"] < pretrain_end]) == 1
    for plan in (a, b):
        for t in plan.trials:
            assert store.read_result(t.finetune)["status"] == "done"
    assert store.read_result(b.trials[0].finetune)["metrics"]["load_report"]["loaded_parent"] is True


if __name__ == "__main__":  # a study driver
    drive(*sys.argv[1:6])
