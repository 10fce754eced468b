"""Two runs on one machine, through real local Rays in separate processes, on a box
with fake GPUs (CUDA_VISIBLE_DEVICES=0,1,2,3; no real GPU is needed to advertise them): the second run
takes only what the first left free, so the total claimed never exceeds the box. Before, each local Ray
took os.cpu_count() CPUs and every GPU. The claims are printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.ray import host

REPO = Path(__file__).resolve().parents[2]
FAKE_GPUS = ["0", "1", "2", "3"]

HOLD = """
import json, os, sys, time
import ray
from orchestrator.ray import host
from orchestrator.ray.connect import start_local_ray
start_local_ray(demand=host.Demand(cpus=1, gpus=3, min_gpus=1), study=sys.argv[1])

@ray.remote(num_gpus=1, num_cpus=0)
def devices():
    return os.environ.get("CUDA_VISIBLE_DEVICES")

seen = sorted(set(ray.get([devices.remote() for _ in range(6)])))
print(json.dumps({"cluster": ray.cluster_resources(), "devices": seen}), flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.1)
ray.shutdown()
"""

RUN = """
import json, sys
sys.path.insert(0, sys.argv[4])
import ray.cloudpickle
import standins
ray.cloudpickle.register_pickle_by_value(standins)
from orchestrator.cli.run import run_study
from orchestrator.store.store import Store

name, store, calls, gate = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[5]
plan = standins.make_plan(
    name,
    [("t-" + name, standins.pretrain_config(method="scratch"), standins.finetune_config(epochs=2))],
    salt=name,
)
summary = run_study(
    plan, Store(store), study_text=f"name: {name}\\n", progress=False,
    workloads=standins.workloads(calls, sleep_s=0.2, start_gate=gate),
)
print(json.dumps(summary["counts"]), flush=True)
"""


def _env(tmp_path: Path) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "CUDA_VISIBLE_DEVICES": ",".join(FAKE_GPUS),
        host.STATE_DIR_ENV: str(tmp_path / "local-ray"),
        "HSJP_TEST_LOG_RESOURCES": "1",
    }


def _records_appear(folder: Path, n: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and len(list(folder.glob("ray-*.json"))) < n:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    assert len(list(folder.glob("ray-*.json"))) >= n


@pytest.mark.slow
def test_two_local_rays_split_cpus_and_gpus(tmp_path):
    env, release = _env(tmp_path), tmp_path / "release"
    cmd = [sys.executable, "-c", HOLD]
    first = subprocess.Popen([*cmd, "first", str(release)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        a = json.loads(first.stdout.readline())
        second = subprocess.Popen(
            [*cmd, "second", str(release)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        b = json.loads(second.stdout.readline())
    finally:
        release.touch()
    assert first.wait(60) == 0 and second.wait(60) == 0
    ca, cb = a["cluster"], b["cluster"]
    box_cpus = host.usable_cpus()
    cpus, gpus = ca["CPU"] + cb["CPU"], ca.get("GPU", 0) + cb.get("GPU", 0)
    print(
        f"\nbox: {box_cpus} CPUs, {len(FAKE_GPUS)} GPUs; first Ray: {ca['CPU']:g} CPUs, GPUs {a['devices']}; "
        f"second Ray: {cb['CPU']:g} CPUs, GPUs {b['devices']}; total {cpus:g} CPUs, {gpus:g} GPUs"
    )
    assert a["devices"] == ["0", "1", "2"] and ca["GPU"] == 3  # the first run's demand: 3 GPUs
    assert b["devices"] == ["3"] and cb["GPU"] == 1  # the second takes only what is free
    assert cpus <= box_cpus and gpus <= len(FAKE_GPUS)
    assert "sharing this machine with 1 other hsjp-study run(s)" in second.stderr.read()


@pytest.mark.slow
def test_two_runs_of_different_studies_claim_no_more_than_the_box(tmp_path):
    """Two `run_study` of different studies at once, each in its own process with its own local Ray;
    each stage records the resources of the Ray it runs on. Each stage waits at a gate before its
    first epoch, which the test opens once both runs hold their Rays: the first run's Ray lives while
    the second claims its share."""
    env, folder = _env(tmp_path), tmp_path / "local-ray"
    here = str(REPO / "tests" / "orchestrator")
    gate = tmp_path / "gate"
    procs, calls = [], []
    for name in ("study-a", "study-b"):
        calls.append(tmp_path / f"{name}.calls.jsonl")
        args = [sys.executable, "-c", RUN, name, str(tmp_path / "store"), str(calls[-1]), here, str(gate)]
        procs.append(
            subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
        _records_appear(folder, len(procs), procs[-1])  # the second starts while the first holds its Ray
    gate.touch()
    outs = [p.communicate(timeout=400) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert json.loads(out.strip().splitlines()[-1]) == {"done": 1}
    rows = [json.loads(f.read_text().splitlines()[0]) for f in calls]
    box_cpus = host.usable_cpus()
    cpus = sum(r["cluster"]["CPU"] for r in rows)
    gpus = sum(r["cluster"].get("GPU", 0) for r in rows)
    print(
        f"\nbox: {box_cpus} CPUs, {len(FAKE_GPUS)} GPUs; study-a's Ray {rows[0]['cluster'].get('CPU')} CPUs / "
        f"{rows[0]['cluster'].get('GPU', 0)} GPUs, study-b's {rows[1]['cluster'].get('CPU')} / "
        f"{rows[1]['cluster'].get('GPU', 0)}; total {cpus:g} CPUs, {gpus:g} GPUs"
    )
    assert cpus <= box_cpus and gpus <= len(FAKE_GPUS)
    assert "sharing this machine with 1 other hsjp-study run(s)" in outs[1][1]
