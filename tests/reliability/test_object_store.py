"""The smoke study on an S3-protocol object store (moto on loopback): `hsjp-study run` is SIGKILLed
(with its whole local Ray) in the middle of a stage, run again, and ends with the same results as an
uninterrupted run on a local store (`smoke_reference`): the same metrics and epochs for every trial,
the killed stage resumed from its last epoch checkpoint on the bucket, nothing finished recomputed.

The data set is the smoke study's synthetic one, generated into a local folder (a URI store cannot
hold it) and named by `data.coco_root`, so stage ids differ from the reference's; trials are matched
by their ids, which come from the same matrix.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from orchestrator.store.store import Store
from tests.conftest import SMOKE_TEST_SCALE, smoke_study_for_tests

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 600.0


def _study_on_local_data(tmp_path: Path) -> Path:
    """The smoke study at the reference's test scale (tests/conftest.py `smoke_study_for_tests`) with its
    synthetic set written to a folder first (same generator, same counts, same seed)."""
    from workloads.data.synthetic import DETECTION_FILE, generate

    scale = SMOKE_TEST_SCALE
    seed = yaml.safe_load((REPO / "studies" / "smoke.yaml").read_text())["data"]["synthetic"]["seed"]
    data_dir = tmp_path / "data"
    generate(
        str(data_dir), n_train=scale["data.synthetic.train"], n_val=scale["data.synthetic.val"], seed=seed
    )
    path = smoke_study_for_tests(
        tmp_path, coco_root=str(data_dir), detection_file=str(data_dir / DETECTION_FILE)
    )
    return path.rename(tmp_path / "smoke-s3.yaml")


def _run_cli(study: Path, uri: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with open(log, "w") as f:  # a file, not a pipe: a full pipe would block the driver
        return subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli.main", "run", str(study), "--storage", uri],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: the kill takes its local Ray with it
        )


def _timeless(metrics: dict) -> dict:
    """Metrics without wall-clock timings (`eval_seconds`, ...): everything else must be equal."""
    return {k: v for k, v in metrics.items() if "seconds" not in k}


def _epochs(store: Store, sid: str) -> list[int]:
    return [int(r["epoch"]) for r in store.read_metrics(sid) if "epoch" in r]


def _settled_epochs(store: Store, sid: str, quiet_s: float = 6.0) -> list[int]:
    """`sid`'s epoch rows once nothing has written one for `quiet_s`: the Train workers are Ray's
    processes, not the driver's, so a SIGKILLed driver's workers live on for a few seconds (docs/ray.md
    §3c) and may record the epoch in flight, or two of the test-scale study's short ones."""
    rows, since = _epochs(store, sid), time.time()
    while time.time() - since < quiet_s:
        time.sleep(0.5)
        now = _epochs(store, sid)
        if now != rows:
            rows, since = now, time.time()
    return rows


@pytest.mark.slow
def test_smoke_study_on_an_object_store_killed_mid_stage_resumes_equal_to_uninterrupted(
    s3_server, smoke_reference, tmp_path
):
    from orchestrator.plan import make_plan
    from orchestrator.spec.inputs import data_config
    from orchestrator.spec.study import load_study

    study_path = _study_on_local_data(tmp_path)
    uri = s3_server.uri(f"smoke-{time.time_ns()}")
    study = load_study(study_path)
    store = Store(uri)
    plan = make_plan(study, data_config(study.data, store.base))
    work = [sid for sid, s in plan.stages.items() if s.work and s.kind == "pretrain"]

    # kill once a pretrain has 2 epochs recorded (so a checkpoint is registered) and is not finished
    proc = _run_cli(study_path, uri, tmp_path / "killed.log")
    deadline, victim = time.time() + WAIT_S, None
    while victim is None:
        if proc.poll() is not None:
            pytest.fail(
                f"the run ended before the kill (rc {proc.returncode}):\n"
                f"{(tmp_path / 'killed.log').read_text()[-3000:]}"
            )
        if time.time() > deadline:
            pytest.fail("no pretrain reached its second epoch in time")
        for sid in work:
            if len(_epochs(store, sid)) >= 2 and store.read_result(sid) is None:
                victim = sid
                break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = _settled_epochs(store, victim)
    finished = {
        sid: store.read_bytes(store.stage_path(sid, "result.json"))
        for sid in plan.stages
        if store.read_result(sid) is not None
    }
    assert store.read_result(victim) is None

    rerun = _run_cli(study_path, uri, tmp_path / "rerun.log")
    assert rerun.wait(timeout=WAIT_S) == 0, (tmp_path / "rerun.log").read_text()[-3000:]

    resumed = store.read_result(victim)
    assert resumed["status"] == "done"
    # `killed_at` holds every epoch recorded, the orphaned workers' included: the resume starts after the
    # last one whose checkpoint was registered (at most the last row + 1); later would be progress from
    # nowhere, and a checkpoint ahead of its metrics rows. (Read at the kill itself, the rows were one or
    # two epochs behind the resume on a loaded 2-core box.)
    assert resumed["resumed_from"] is not None and resumed["resumed_from"] <= killed_at[-1] + 1
    ref_plan, ref_store = smoke_reference.plan, smoke_reference.store
    ref_trials = {t.trial_id: t for t in ref_plan.trials}
    assert sorted(ref_trials) == sorted(t.trial_id for t in plan.trials)
    for t in plan.trials:
        ref = ref_trials[t.trial_id]
        for sid, ref_sid in ((t.pretrain, ref.pretrain), (t.finetune, ref.finetune)):
            got, want = store.read_result(sid), ref_store.read_result(ref_sid)
            assert got["status"] == want["status"], (t.trial_id, sid)
            assert _timeless(got["metrics"]) == _timeless(want["metrics"]), (t.trial_id, sid)
            assert got["epochs_trained"] == want["epochs_trained"], (t.trial_id, sid)
    # the resumed stage's epochs: those before the kill, then one attempt to the end
    epochs = _epochs(store, victim)
    total = plan.stages[victim].config.epochs
    assert sorted(set(epochs)) == list(range(total)) and epochs[: len(killed_at)] == killed_at
    # what had finished before the kill was not recomputed (result.json byte-identical)
    for sid, data in finished.items():
        assert store.read_bytes(store.stage_path(sid, "result.json")) == data, sid
    assert "already in the store" in (tmp_path / "rerun.log").read_text() or not finished
