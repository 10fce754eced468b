"""The stage scheduler on fake GPUs: `--simulate` runs of the shipped studies, with memory sampled.

    python -m benchmarks.scheduler                          # paper on 8 and 32 GPUs, label_fraction on 8
    python -m benchmarks.scheduler --runs studies/freeze.yaml:3 --time-scale 20

For each STUDY:G it prints the `run --simulate` line (makespan, lower bound, ratio, GPU idle while a
stage was ready) and the plan's list-scheduling prediction, then what the node's memory did while
stages waited: the resident memory of this driver and every process under it (the local Ray: GCS,
raylet, trial actors, ...) sampled every 0.5 s beside the scheduler's counts of running and waiting
(blocked or ready) stages, and the least-squares slope of that memory over the waiting count among
samples with the same running count — the memory one waiting stage costs (nothing waits as a
process, so this is noise around 0).
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

from orchestrator.ray.host import descendants
from orchestrator.store.format import StageState

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RUNS = ("studies/paper.yaml:8", "studies/paper.yaml:32", "studies/label_fraction.yaml:8")


def tree_rss_mb(root: int) -> float:
    """Resident memory (MB) of `root` and all its descendants, from /proc."""
    total = 0
    for pid in [root, *descendants(root)]:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
        except OSError:
            continue
    return total / 1024.0


def sample(stop: threading.Event, rows: list[tuple[float, int, int, float]]) -> None:
    from orchestrator.ray.tune import ACTIVE

    while not stop.wait(0.5):
        sched = ACTIVE.scheduler
        if sched is None:
            continue
        states = [r.state for r in sched.stages.values()]
        running = states.count(StageState.RUNNING)
        waiting = sum(states.count(s) for s in (StageState.WAITING, StageState.QUEUED, StageState.ELSEWHERE))
        rows.append((time.time(), running, waiting, tree_rss_mb(os.getpid())))


def slope_per_waiting(rows: list[tuple[float, int, int, float]]) -> tuple[float | None, int]:
    """Pooled least-squares slope of memory over the waiting count, within equal running counts."""
    num = den = 0.0
    groups: dict[int, list[tuple[int, float]]] = {}
    for _, running, waiting, mb in rows:
        groups.setdefault(running, []).append((waiting, mb))
    for pts in groups.values():
        if len({w for w, _ in pts}) < 2:
            continue
        mw = sum(w for w, _ in pts) / len(pts)
        mm = sum(m for _, m in pts) / len(pts)
        num += sum((w - mw) * (m - mm) for w, m in pts)
        den += sum((w - mw) ** 2 for w, _ in pts)
    return (num / den if den else None), len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), metavar="STUDY:G")
    ap.add_argument(
        "--time-scale", type=float, help="seconds per estimated hour (default: lower bound 120 s)"
    )
    ap.add_argument("--target-s", type=float, default=120.0, help="lower bound in seconds when no time scale")
    args = ap.parse_args()

    from orchestrator.cli.run import Simulation, simulate_study
    from orchestrator.plan import make_plan
    from orchestrator.schedule.scheduler import list_schedule
    from orchestrator.spec.inputs import data_config
    from orchestrator.spec.study import load_study

    for spec in args.runs:
        path, _, g = spec.rpartition(":")
        gpus = int(g)
        study = load_study(REPO / path if not os.path.isabs(path) else path, dry_run=True)
        plan = make_plan(study, data_config(study.data, "/tmp/hsjp-benchmark"))
        rows: list[tuple[float, int, int, float]] = []
        stop = threading.Event()
        thread = threading.Thread(target=sample, args=(stop, rows), daemon=True)
        thread.start()
        t0 = time.time()
        out = simulate_study(plan, Simulation(gpus=gpus, time_scale=args.time_scale, target_s=args.target_s))
        stop.set()
        thread.join()
        predicted = max(s.end_h for s in list_schedule(plan, {"GPU": float(gpus), "CPU": float("inf")}))
        slope, n = slope_per_waiting(rows)
        peak_wait = max((w for _, _, w, _ in rows), default=0)
        print(
            f"{path} on {gpus} GPUs ({out['stages']} stages, time scale {out['time_scale']:.3g} s/h, "
            f"wall {time.time() - t0:.0f} s):"
        )
        print(f"  {out['line']}")
        print(
            f"  predicted by list scheduling on the estimates: {predicted * out['time_scale']:.1f} s "
            f"(simulated / predicted {out['makespan'] / (predicted * out['time_scale']):.3f})"
        )
        if rows:
            mbs = [m for *_, m in rows]
            print(
                f"  node memory (driver + its Ray): {min(mbs):.0f}-{max(mbs):.0f} MB over {n} samples; "
                f"up to {peak_wait} stages waiting at once; memory per waiting stage "
                + (f"{slope:+.1f} MB (slope)" if slope is not None else "n/a (waiting count never varied)")
            )
        lat = out.get("launch_latency_s") or []
        if lat:
            lat = sorted(lat)
            print(
                f"  from the scheduler's launch to the stage holding its resources (Tune trial + actor + "
                f"placement group): median {lat[len(lat) // 2]:.2f} s, max {lat[-1]:.2f} s over {len(lat)} stages"
            )
        if out["failed"]:
            print(f"  FAILED stages: {out['failed']}")


if __name__ == "__main__":
    main()
