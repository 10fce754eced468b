"""What a study costs the head node's memory, per kind of Ray process, while it runs.

    python -m benchmarks.head_memory [STUDY.yaml] [--storage DIR]     # default: the smoke study

Runs `hsjp-study run` in a subprocess and samples every second, for each process of that run (the
driver and everything under it), its proportional set size (PSS, from /proc/<pid>/smaps_rollup: shared
library pages split between the processes that map them, so the figures add up), grouped by what the
process is (`ray::ImplicitFunc` = a stage's Tune trial driver, `ray::TrainController`, its helper actors,
`ray::RayTrainWorker` = a training worker, GCS, raylet, ...). It prints the peak PSS of each kind, how
many ran at once, and the two figures docs/cluster.md sizes the head with: the base (driver + GCS +
raylet + Ray's other per-node processes) and the memory per running stage on the driver's node (trial
driver + Train controller + its helper actors; training workers run on the GPU nodes).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.ray.host import descendants

REPO = Path(__file__).resolve().parent.parent
STAGE_HEAD = (
    "ray::ImplicitFunc",
    "ray::TrainController",
    "ray::DatasetManager",
    "ray::SynchronizationActor",
    "ray::PlacementGroupCleaner",
    "ray::AutoscalingCoordinator",
    "ray::_StatsActor",
)
WORKER = ("ray::RayTrainWorker",)


def _pss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def _kind(pid: int, driver: int) -> str:
    if pid == driver:
        return "study driver"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"
    if cmd.startswith("ray::"):
        return cmd.split()[0].split(".")[0]
    name = os.path.basename(cmd.split()[0]) if cmd else "?"
    for known in ("gcs_server", "raylet", "dashboard", "log_monitor", "monitor", "runtime_env", "agent"):
        if known in cmd:
            return known
    return name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", nargs="?", default=str(REPO / "studies" / "smoke.yaml"))
    ap.add_argument("--storage", default="/tmp/hsjp-head-memory")
    args = ap.parse_args()
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli.main", "run", args.study, "--storage", args.storage],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    peak: dict[str, float] = {}
    count: dict[str, int] = {}
    stage_head_peak = base_peak = 0.0
    t0 = time.time()
    while proc.poll() is None:
        by_kind: dict[str, list[float]] = {}
        for pid in [proc.pid, *descendants(proc.pid)]:
            by_kind.setdefault(_kind(pid, proc.pid), []).append(_pss_mb(pid))
        for kind, values in by_kind.items():
            peak[kind] = max(peak.get(kind, 0.0), max(values))
            count[kind] = max(count.get(kind, 0), len(values))
        running = len(by_kind.get("ray::ImplicitFunc", []))
        head = sum(sum(v) for k, v in by_kind.items() if k in STAGE_HEAD)
        if running:
            stage_head_peak = max(stage_head_peak, head / running)
        base = sum(sum(v) for k, v in by_kind.items() if k not in STAGE_HEAD and k not in WORKER)
        base_peak = max(base_peak, base)
        time.sleep(1.0)
    print(f"{args.study}: run {time.time() - t0:.0f} s, exit {proc.returncode}")
    print(f"{'process':<32} {'peak PSS MB':>11} {'at once':>8}")
    for kind in sorted(peak, key=lambda k: -peak[k]):
        print(f"{kind:<32} {peak[kind]:>11.0f} {count[kind]:>8}")
    print(f"base (driver, GCS, raylet, Ray's per-node processes): {base_peak:.0f} MB")
    print(
        f"per running stage on the driver's node (trial driver + Train controller + helpers): "
        f"{stage_head_peak:.0f} MB; per training worker: {peak.get('ray::RayTrainWorker', 0.0):.0f} MB"
    )


if __name__ == "__main__":
    main()
