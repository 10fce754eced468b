"""Two local Rays on one machine (orchestrator.ray.host): prints what each claims and which GPUs a task of
each sees, and the total against the machine. On a GPU machine (no CUDA_VISIBLE_DEVICES) the GPUs are
the NVIDIA driver's; elsewhere give fake ones: `CUDA_VISIBLE_DEVICES=0,1,2,3`.

    python -m benchmarks.shared_box_check [--gpus-each K]

A task of each Ray reports its CUDA_VISIBLE_DEVICES and, when torch sees CUDA, the device names, so on
real hardware it shows that the two runs train on different GPUs. Exits 1 when the total exceeds the
machine or two runs were handed the same GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOLD = """
import json, os, sys, time
import ray
from orchestrator.ray import host
from orchestrator.ray.tune import start_local_ray
k = int(sys.argv[3])
start_local_ray(demand=host.Demand(cpus=1, gpus=k, min_gpus=min(1, k)), study=sys.argv[1])

@ray.remote(num_gpus=1 if k else 0, num_cpus=0)
def seen():
    import torch
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return os.environ.get("CUDA_VISIBLE_DEVICES"), names

res = ray.cluster_resources()
out = {"cpus": res.get("CPU", 0), "gpus": res.get("GPU", 0), "task": ray.get(seen.remote())}
print(json.dumps(out), flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.1)
ray.shutdown()
"""


def main() -> int:
    try:  # the two runs are local Rays; the GPU machines of the device check have no Ray
        import ray  # noqa: F401
    except ImportError as err:
        print(f"SKIPPED: not run: this check starts two local Rays and Ray is not importable here ({err})")
        return 0
    from orchestrator.ray import host

    box_gpus = host.box_gpu_ids()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus-each", type=int, default=max(1, len(box_gpus) // 2) if box_gpus else 0)
    args = parser.parse_args()
    box_cpus = host.usable_cpus()
    print(
        f"machine: {box_cpus} usable CPUs, GPUs {box_gpus or 'none'}; each run asks for {args.gpus_each} GPUs"
    )
    with tempfile.TemporaryDirectory(prefix="hsjp-shared-box-") as tmp:
        release = Path(tmp) / "release"
        env = {**os.environ, host.STATE_DIR_ENV: str(Path(tmp) / "local-ray")}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
        )
        results, procs = [], []
        try:
            for name in ("first", "second"):
                t0 = time.time()
                proc = subprocess.Popen(
                    [sys.executable, "-c", HOLD, name, str(release), str(args.gpus_each)],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                procs.append(proc)
                line = proc.stdout.readline()
                if not line:
                    err = proc.stderr.read()
                    busy = next(
                        (ln for ln in err.splitlines() if ln.startswith("orchestrator.ray.host.HostBusy")), ""
                    )
                    if name == "second" and busy and len(box_gpus) < 2 * args.gpus_each:
                        print(f"second run: refused, as it must be (too few GPUs left for it): {busy}")
                        break
                    print(f"{name} run: failed:\n{err[-2000:]}")
                    return 1
                results.append(json.loads(line))
                r = results[-1]
                print(
                    f"{name} run: {r['cpus']:g} CPUs, {r['gpus']:g} GPUs; its task sees "
                    f"CUDA_VISIBLE_DEVICES={r['task'][0]} {r['task'][1]} (started in {time.time() - t0:.1f} s)"
                )
        finally:
            release.touch()
            for p in procs:
                p.wait(60)
    cpus = sum(r["cpus"] for r in results)
    gpus = sum(r["gpus"] for r in results)
    ids = [r["task"][0] for r in results if args.gpus_each]
    print(f"total: {cpus:g} CPUs of {box_cpus}, {gpus:g} GPUs of {len(box_gpus)}")
    ok = cpus <= box_cpus and gpus <= len(box_gpus) and len(set(ids)) == len(ids)
    print("OK: the two runs together claim no more than the machine" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
