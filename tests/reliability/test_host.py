"""Fair claims on a shared machine and no leftovers, without Ray: the usable
CPU count from fake cgroup v1 / v2 trees and affinity, GPUs from CUDA_VISIBLE_DEVICES, the split of a
machine between runs, and the ending of a dead run's orphans, with real (fake-Ray) processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.ray import host
from orchestrator.ray.host import Demand, HostBusy, Record, plan_claim


# ------------------------------------------------------------------------------------------- CPUs
def test_cgroup_v2_quota_is_the_tightest_level(tmp_path):
    root = tmp_path / "cg"
    (root / "user.slice" / "job").mkdir(parents=True)
    (root / "cpu.max").write_text("max 100000\n")
    (root / "user.slice" / "cpu.max").write_text("300000 100000\n")  # 3 CPUs
    (root / "user.slice" / "job" / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs
    text = "0::/user.slice/job\n"
    assert host.cgroup_cpu_quota(text, str(root)) == 1.5
    assert host.usable_cpus(affinity=8, cgroup_text=text, cgroup_root=str(root)) == 1  # floored
    (root / "user.slice" / "job" / "cpu.max").write_text("max 100000\n")
    assert host.usable_cpus(affinity=8, cgroup_text=text, cgroup_root=str(root)) == 3
    assert host.usable_cpus(affinity=2, cgroup_text=text, cgroup_root=str(root)) == 2  # affinity wins


def test_cgroup_v1_quota_and_unlimited(tmp_path):
    root = tmp_path / "cg"
    cpu = root / "cpu,cpuacct" / "docker" / "abc"
    cpu.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("400000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    text = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n"
    assert host.cgroup_cpu_quota(text, str(root)) == 4.0
    assert host.usable_cpus(affinity=16, cgroup_text=text, cgroup_root=str(root)) == 4
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")
    assert host.cgroup_cpu_quota(text, str(root)) is None
    assert host.usable_cpus(affinity=16, cgroup_text=text, cgroup_root=str(root)) == 16


def test_usable_cpus_on_this_machine_never_exceeds_the_affinity_mask():
    n = host.usable_cpus()
    assert 1 <= n <= len(os.sched_getaffinity(0))


# ------------------------------------------------------------------------------------------- GPUs
@pytest.mark.parametrize(
    "value, expected",
    [
        (None, None),
        ("", []),
        ("-1", []),
        ("NoDevFiles", []),
        ("0,1,3", ["0", "1", "3"]),
        ("2, 0", ["2", "0"]),
        ("0,1,-1,2", ["0", "1"]),  # CUDA ends the list at the first invalid entry
        ("GPU-8f3a,MIG-1c2d", ["GPU-8f3a", "MIG-1c2d"]),
    ],
)
def test_cuda_visible_devices(value, expected):
    env = {} if value is None else {"CUDA_VISIBLE_DEVICES": value}
    assert host.visible_gpu_ids(env) == expected


def test_box_gpus_fall_back_to_the_driver_list(tmp_path):
    (tmp_path / "0000:3b:00.0").mkdir()
    (tmp_path / "0000:5e:00.0").mkdir()
    assert host.box_gpu_ids({}, driver_dir=str(tmp_path)) == ["0", "1"]
    assert host.box_gpu_ids({"CUDA_VISIBLE_DEVICES": "1"}, driver_dir=str(tmp_path)) == ["1"]
    assert host.box_gpu_ids({}, driver_dir=str(tmp_path / "none")) == []


# ----------------------------------------------------------------------------------------- claims
def rec(cpus: int, gpus: list[str], pid: int = 1, study: str = "other") -> Record:
    return Record(
        driver_pid=pid, driver_start=0, cpus=cpus, gpu_ids=gpus, study=study, address="127.0.0.1:6379"
    )


def test_a_second_run_takes_only_what_is_free_and_no_more_than_it_can_use():
    box = ["0", "1", "2", "3", "4", "5", "6", "7"]
    first = plan_claim(16, box, [], Demand(cpus=4, gpus=3, min_gpus=1))
    assert first.cpus == 4 and first.gpu_ids == ["0", "1", "2"]
    second = plan_claim(16, box, [rec(first.cpus, first.gpu_ids)], None)  # no demand: all that is free
    assert second.cpus == 12 and second.gpu_ids == ["3", "4", "5", "6", "7"]
    total_cpus, total_gpus = first.cpus + second.cpus, len(first.gpu_ids) + len(second.gpu_ids)
    print(f"claims on a 16-CPU / 8-GPU box: {total_cpus} CPUs, {total_gpus} GPUs (old: 32 CPUs, 16 GPUs)")
    assert total_cpus <= 16 and total_gpus <= 8 and not set(first.gpu_ids) & set(second.gpu_ids)


def test_nothing_free_is_refused_naming_the_holders_and_the_address():
    with pytest.raises(HostBusy) as info:
        plan_claim(2, [], [rec(2, [], pid=4242, study="paper")], Demand(cpus=1))
    msg = str(info.value)
    assert (
        "pid 4242 (study paper: 2 CPUs; Ray at 127.0.0.1:6379)" in msg and "0 CPUs and 0 GPUs are free" in msg
    )
    assert "--address" in msg
    with pytest.raises(HostBusy, match="one stage needs 1 CPUs and 2 GPUs"):
        plan_claim(8, ["0", "1", "2"], [rec(1, ["0", "1"])], Demand(cpus=2, gpus=2, min_gpus=2))


def test_study_demand_from_the_compute_section():
    from orchestrator.spec.inputs import ComputeConfig

    gpu = ComputeConfig(use_gpu=True, workers_per_stage=2, cpus_per_worker=4, gpus_per_worker=1)
    assert host.study_demand(gpu, n_trials=10, max_concurrent=3) == Demand(
        cpus=24, gpus=6, min_cpus=8, min_gpus=2
    )
    cpu = ComputeConfig(cpus_per_worker=1)
    assert host.study_demand(cpu, n_trials=2) == Demand(cpus=2, gpus=0, min_cpus=1, min_gpus=0)


# ------------------------------------------------------------------------------------- processes
def test_proc_start_identifies_a_process_and_a_reused_pid_is_not_the_same():
    start = host.proc_start(os.getpid())
    assert isinstance(start, int) and host.same_process(os.getpid(), start)
    assert not host.same_process(os.getpid(), start + 1)  # what a reused pid looks like
    assert host.proc_start(2**22 + 12345) is None


FAKE_DRIVER = """
import subprocess, sys, time
kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"]) for _ in range(2)]
print(" ".join(str(k.pid) for k in kids), flush=True)
time.sleep(300)
"""


SESSION_DRIVER = """
import subprocess, sys, time
ray_root = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
    "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); print(w.pid, flush=True); "
    "time.sleep(300)", "--session-name=session_fake_123"], stdout=subprocess.PIPE, text=True)
worker = int(ray_root.stdout.readline())
other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
print(ray_root.pid, worker, other.pid, flush=True)
time.sleep(300)
"""


def test_the_snapshot_keeps_the_ray_sessions_processes_only(tmp_path):
    """The driver's descendants naming the Ray session, and what runs below them (a worker whose
    command line no longer names it); not the driver's other children."""
    driver = subprocess.Popen([sys.executable, "-c", SESSION_DRIVER], stdout=subprocess.PIPE, text=True)
    try:
        ray_root, worker, other = (int(p) for p in driver.stdout.readline().split())
        got = {p["pid"] for p in host.snapshot_processes(driver.pid, "/tmp/ray/session_fake_123")}
        assert got == {ray_root, worker}
        assert {p["pid"] for p in host.snapshot_processes(driver.pid)} == {ray_root, worker, other}
    finally:
        for pid in host.descendants(driver.pid):
            os.kill(pid, signal.SIGKILL)
        driver.kill()
        driver.wait()


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if host.proc_start(pid) is None:
            return True
        time.sleep(0.05)
    return False


def test_a_dead_runs_orphans_are_ended_and_only_those(tmp_path, monkeypatch):
    """A fake driver with two fake Ray processes is SIGKILLed (its children live on, reparented); the
    next start ends exactly the two, by recorded pid + start time; a recorded pid whose start time
    differs (reused) and an unrelated process live on; a live run's record is left alone."""
    monkeypatch.setenv(host.STATE_DIR_ENV, str(tmp_path))
    driver = subprocess.Popen([sys.executable, "-c", FAKE_DRIVER], stdout=subprocess.PIPE, text=True)
    kids = [int(p) for p in driver.stdout.readline().split()]
    reused, unrelated = _sleeper(), _sleeper()
    try:
        procs = host.snapshot_processes(driver.pid)
        assert sorted(p["pid"] for p in procs) == sorted(kids)
        procs.append({"pid": reused.pid, "start": host.proc_start(reused.pid) + 1, "name": "raylet"})
        host.write_record(
            Record(driver.pid, host.proc_start(driver.pid), 1, [], study="dead", processes=procs)
        )
        me = Record(
            os.getpid(),
            host.proc_start(os.getpid()),
            1,
            ["0"],
            study="alive",
            processes=[{"pid": unrelated.pid, "start": host.proc_start(unrelated.pid), "name": "gcs_server"}],
        )
        host.write_record(me)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        assert all(host.proc_start(k) is not None for k in kids)  # orphans: alive without their driver

        lines = []
        with host.LocalClaim(Demand(cpus=1), report=lines.append) as claim:
            pass
        assert claim.orphans_ended == 2
        assert (
            lines[0] == "ended 2 leftover Ray process(es) of an earlier hsjp-study run whose driver had died"
        )
        assert all(_gone(k) for k in kids)
        assert host.proc_start(reused.pid) is not None and host.proc_start(unrelated.pid) is not None
        left = host.read_records()
        assert [r.study for r in left] == ["alive"]  # the dead run's record is removed, the live one kept
        assert claim.claim.others[0].study == "alive" and "sharing this machine with 1 other" in lines[1]
    finally:
        for p in (reused, unrelated, driver):
            p.kill()
            p.wait()
        for k in kids:
            if host.proc_start(k) is not None:
                os.kill(k, signal.SIGKILL)


def test_a_driver_that_shut_its_ray_down_claims_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(host.STATE_DIR_ENV, str(tmp_path))
    start = host.proc_start(os.getpid())
    stopped = Record(
        os.getpid(), start, 2, ["0"], processes=[{"pid": 2**22 + 7, "start": 1, "name": "gcs_server"}]
    )
    assert stopped.driver_alive() and not stopped.ray_alive() and not stopped.claims()
    host.write_record(stopped)
    with host.LocalClaim(Demand(cpus=1), report=lambda line: None) as claim:
        assert claim.claim.others == [] and claim.orphans_ended == 0


def test_claims_under_the_lock_and_the_visible_gpus(tmp_path, monkeypatch):
    monkeypatch.setenv(host.STATE_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    me = os.getpid()
    other = Record(
        me,
        host.proc_start(me),
        1,
        ["0", "1"],
        study="first",
        processes=[{"pid": me, "start": host.proc_start(me), "name": "gcs_server"}],
    )
    host.write_record(other)
    with host.LocalClaim(Demand(cpus=1, gpus=4), study="second", report=lambda line: None) as claim:
        assert claim.claim.gpu_ids == ["2", "3"] and claim.claim.cpus == 1
        with claim.visible_gpus():
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
        record = claim.register(address="127.0.0.1:1", session_dir="/tmp/ray/session_x")
        claim.stop()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    saved = {r.study: r for r in host.read_records()}
    assert saved["second"].gpu_ids == ["2", "3"] and saved["second"].address == "127.0.0.1:1"
    assert Path(record.path).exists()


def test_run_on_a_fully_claimed_machine_exits_2_before_ray_starts(tmp_path, monkeypatch, capsys):
    import ray

    from orchestrator.cli.main import main

    monkeypatch.setenv(host.STATE_DIR_ENV, str(tmp_path / "local-ray"))
    me, start = os.getpid(), host.proc_start(os.getpid())
    holder = Record(
        me,
        start,
        host.usable_cpus(),
        [],
        study="paper",
        address="127.0.0.1:6379",
        processes=[{"pid": me, "start": start, "name": "gcs_server"}],
    )
    host.write_record(holder)
    study = tmp_path / "s.yaml"
    study.write_text(
        "data: {synthetic: {train: 2, val: 1, seed: 0}, loader_workers: 0}\n"
        "defaults:\n  model: {backbone: hrnet_w32, width: 8, num_blocks: 1, num_modules: [1, 1, 1]}\n"
        "  pretrain: {input_size: 64, heatmap_size: 16, epochs: 1}\n"
        "  finetune: {input_hw: [128, 96], heatmap_hw: [32, 24], epochs: 1}\n"
    )
    assert main(["run", str(study), "--storage", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: not enough free on this machine for a local Ray: of its ")
        and err.count("\n") == 1
        and "Traceback" not in err
    )
    assert f"pid {me} (study paper: {host.usable_cpus()} CPUs; Ray at 127.0.0.1:6379)" in err
    assert not ray.is_initialized()
