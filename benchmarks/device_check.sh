#!/usr/bin/env bash
# The one prepared GPU check (issue 16). Run it first, in one call, whenever a CUDA machine is at hand:
#
#   bash benchmarks/device_check.sh            # from the repository root; figures go to $OUT (or /tmp)
#
# 1. the CUDA-only tests: nvJPEG stream-safety race, no host sync in a CUDA training step (both tasks and
#    backbones), device rendering and decoding equal to the CPU paths, fp32 evaluation under amp auto
#    with the TF32 switches recorded (tests/workloads/test_numerics.py, issue 17);
# 2. the throughput benchmark (benchmarks/throughput.py) at full size for both backbones and both tasks,
#    one run each, as training runs (prefetch, compile as configured, no per-step sync), with the
#    reference pipeline, plus the evaluation time of 4,096 boxes (scaled to val2017's 104,125);
# 3. one summary table against the targets (benchmarks/summary.py).
#
# Every part has its own time limit (total at most 8 minutes); a part cut short leaves what it measured,
# and the summary names what is missing. When the race test passed, device_decode.DEVICE_DECODE_VERIFIED
# may be set to True (then data.decode_on: auto decodes on CUDA).
set -uo pipefail
PY="${PYTHON:-python}"
OUT="${OUT:-${TMPDIR:-/tmp}/hsjp-device-check}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
T0=$(date +%s)
left() { echo $(( 480 - ($(date +%s) - T0) )); }
limit() { local want=$1 have; have=$(( $(left) - 20 )); (( have < want )) && want=$have; (( want < 1 )) && want=1; echo "$want"; }

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi failed"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"

echo "== CUDA-only tests"
timeout "$(limit 100)" "$PY" -m pytest -q -p no:cacheprovider -x --junitxml="$OUT/cuda-tests.xml" \
  tests/workloads/data/test_decode_race.py \
  tests/workloads/test_host_syncs.py \
  tests/workloads/data/test_device_decode.py::test_nvjpeg_decode_and_crop_match_opencv_within_a_few_levels \
  tests/workloads/hsjp/test_batched.py::test_rendering_on_cuda_equals_rendering_on_the_cpu \
  -k "cuda or race or nvjpeg" 2>&1 | tail -n 15
timeout "$(limit 60)" "$PY" -m pytest -q -rs -p no:cacheprovider --junitxml="$OUT/numerics-tests.xml" \
  tests/workloads/test_numerics.py 2>&1 | tail -n 8

echo "== shared machine (issue 18): two local Rays on this machine's real GPUs get disjoint GPU ids"
timeout "$(limit 60)" "$PY" -m benchmarks.shared_box_check 2>&1 | tail -n 8

echo "== synthetic data (shared by the runs)"
DATA="$OUT/synthetic"
timeout "$(limit 60)" "$PY" -c "
from workloads.data import synthetic
print(synthetic.generate('$DATA', n_train=256, n_val=512, seed=0, image_size=(640, 480))['root'])" | tail -n 1 > "$OUT/root.txt"
ROOT=$(cat "$OUT/root.txt" 2>/dev/null)

echo "== throughput (each run: ours then the reference; finetune first, the main targets)"
BENCH=()
for run in "hrnet_w32 finetune 95" "simplebaseline_r50 finetune 85" "hrnet_w32 pretext 85" "simplebaseline_r50 pretext 75"; do
  set -- $run
  json="$OUT/bench-$1-$2.json"
  BENCH+=("$json")
  extra=()
  [[ "$2" == pretext ]] && extra+=(--no-eval)
  [[ -n "$ROOT" ]] && extra+=(--coco-root "$ROOT")
  echo "-- $1 $2 (limit $(limit "$3") s)"
  timeout "$(limit "$3")" "$PY" -m benchmarks.throughput --device cuda --backbone "$1" --task "$2" \
    --steps 20 --warmup 3 --eval-instances 4096 --json "$json" "${extra[@]}" 2>&1 | tail -n 8
done

echo "== summary ($(( $(date +%s) - T0 )) s)"
"$PY" -m benchmarks.summary --bench "${BENCH[@]}" --tests "$OUT/cuda-tests.xml" "$OUT/numerics-tests.xml" \
  | tee "$OUT/summary.txt"
