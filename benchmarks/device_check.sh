#!/usr/bin/env bash
# GPU-only checks, for a session with a CUDA device (a CPU session skips these tests with a reason).
# Run from the repository root: bash benchmarks/device_check.sh   (~1 min on one GPU)
set -euo pipefail
PY=${PYTHON:-python}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# numerics (issue 17): evaluation is fp32 on CUDA whatever runtime.amp trains in; TF32 switches recorded
PYTHONPATH=$PWD "$PY" -m pytest -q -rs tests/workloads/test_numerics.py
# device placements: nvJPEG decode and batched pretext rendering against the per-sample paths
PYTHONPATH=$PWD "$PY" -m pytest -q -rs tests/workloads/data/test_device_decode.py tests/workloads/hsjp/test_batched.py
# shared machine (issue 18): two local Rays on this machine's real GPUs get disjoint GPU ids (or the
# second is refused when none is left), and a task of each sees only its own
PYTHONPATH=$PWD "$PY" -m benchmarks.shared_box_check
