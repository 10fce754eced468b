"""Device simulation: the bare GPU machine's absences (no Ray, pycocotools, torchcodec, network or CUDA)
hold in a child Python, every workload and benchmark module still imports, and the device check run
there reaches every row of its summary with a reason instead of a traceback."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from benchmarks import device_sim
from benchmarks.summary import load_steps

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import socket, sys
for name in ("ray", "pycocotools", "torchcodec", "pycocotools.coco"):
    try:
        __import__(name)
        print("imported", name)
    except ModuleNotFoundError as err:
        assert "device_sim" in str(err), err
        print("absent", name)
try:
    socket.create_connection(("192.0.2.1", 443), timeout=2)  # TEST-NET-1: never a real host
    print("network reached")
except OSError as err:
    print("network refused" if "device_sim" in str(err) else f"network other {err}")
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
cli = socket.create_connection(srv.getsockname(), timeout=2); print("loopback ok"); cli.close(); srv.close()
import os; print("cuda", repr(os.environ["CUDA_VISIBLE_DEVICES"]))
"""


def _sim(tmp_path, argv, **kw):
    env = device_sim.sim_env(tmp_path / "sim")
    return subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, **kw)


def test_the_absences_hold_in_a_child_python_and_loopback_still_works(tmp_path):
    out = _sim(tmp_path, [sys.executable, "-c", PROBE], timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [ln for ln in lines if ln.startswith(("absent", "imported"))] == [
        "absent ray", "absent pycocotools", "absent torchcodec", "absent pycocotools.coco"
    ]  # fmt: skip
    assert "network refused" in lines and "loopback ok" in lines and "cuda ''" in lines


def test_a_package_outside_site_packages_imports_as_a_carried_wheel_would(tmp_path):
    site = tmp_path / "site" / "pycocotools"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("CARRIED = True\n")
    code = f"import sys; sys.path.append({str(tmp_path / 'site')!r}); import pycocotools; print(pycocotools.CARRIED)"
    out = _sim(tmp_path, [sys.executable, "-c", code], timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr


def test_every_workload_and_benchmark_module_imports_without_ray_or_pycocotools(tmp_path):
    out = _sim(
        tmp_path, [sys.executable, "-m", "benchmarks.device_sim", "--in-sim-check-imports"], timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    n = len(device_sim.module_names())
    assert f"{n} of {n} modules under workloads, benchmarks import" in out.stdout
    assert "absent here: ray, pycocotools, torchcodec" in out.stdout


def test_the_device_check_reaches_every_row_in_the_simulation(tmp_path):
    """The GPU machine's environment less the GPU: every step runs (imports checked), none fails, and the
    summary has each target's row with its reason."""
    out_dir = tmp_path / "out"
    env = device_sim.sim_env(tmp_path / "sim")
    env.update(OUT=str(out_dir), PYTHON=sys.executable)
    start = time.monotonic()
    run = subprocess.run(["bash", "benchmarks/device_check.sh"], env=env, cwd=REPO, capture_output=True, text=True,
                         timeout=400)  # fmt: skip
    seconds = time.monotonic() - start
    text = run.stdout + run.stderr
    assert run.returncode == 0, text[-3000:]
    assert "Traceback" not in text and "ImportError" not in text, text[-3000:]
    steps = load_steps(str(out_dir / "steps"))
    expected = {"environment", "data", "cuda-tests", "cuda-numerics", "eval-time", "shared-box"} | {
        f"bench-{b}-{t}" for b in ("hrnet_w32", "simplebaseline_r50") for t in ("finetune", "pretext")
    }
    assert set(steps) == expected
    assert {k: v["status"] for k, v in steps.items() if v["status"] in ("failed", "timeout")} == {}
    assert all(steps[f"bench-{b}-{t}"]["status"] == "cpu" for b in ("hrnet_w32", "simplebaseline_r50")
               for t in ("finetune", "pretext"))  # fmt: skip
    summary = (out_dir / "summary.txt").read_text()
    rows = {line.strip().split("  ")[0]: line for line in summary.splitlines() if "  " in line}
    for check in ("nvJPEG race test", "other CUDA-only tests", "numerics tests", "hrnet_w32 finetune",
                  "simplebaseline_r50 finetune", "hrnet_w32 pretext", "simplebaseline_r50 pretext", "data wait",
                  "compile", "val2017-sized evaluation", "shared machine (two local Rays)", "COCO AP evaluation"):  # fmt: skip
        assert check in rows, f"no {check!r} row in:\n{summary}"
    assert "not measured on CPU" in rows["nvJPEG race test"]
    assert "not measured on CPU: --device cuda: no CUDA device" in rows["hrnet_w32 finetune"]
    assert "not run" in rows["shared machine (two local Rays)"] and "Ray is not importable" in summary
    assert "pycocotools is not importable" in rows["COCO AP evaluation"]
    assert "COCO eval not run: pycocotools" in rows["val2017-sized evaluation"]
    assert "FAILED" not in summary and " NO" not in summary
    print(f"device check in the simulation: {seconds:.0f} s\n{summary}")
