#!/usr/bin/env bash
# The one prepared GPU check. It runs on the machine it is for: a bare GPU box with no network, no Ray,
# no pycocotools and no torchcodec (docs/performance.md "The device check's machine"). Here, before the
# call, fetch the one wheel it installs there, and carry it with the call:
#
#   make device-wheels                        # .whl/pycocotools-*-cp312-abi3-manylinux*.whl (~0.4 MB)
#   run: bash benchmarks/device_check.sh      # carry: [".whl"]; timeout_s 540; figures go to $OUT (or /tmp)
#
# Steps (each with its own time limit; all together at most 8 minutes; a step cut short leaves what it
# measured, and its row in the summary says why it is missing):
#  0. what is present (Python, torch, CUDA, Ray, pycocotools, torchcodec); pycocotools installed from the
#     carried wheel into $OUT/site when missing (never from the network);
#  1. synthetic COCO-format data (the runs' data; the CUDA tests' JPEGs when coco-mini is not here);
#  2. the CUDA-only tests: nvJPEG stream-safety race, no host sync in a CUDA training step, device
#     decoding and rendering equal to the CPU paths; the numerics tests (fp32 evaluation under amp auto);
#  3. the throughput benchmark (benchmarks/throughput.py) at full size for both backbones and both tasks,
#     ours then the reference in the same run, with first-step (compile) time and recompiles, and the
#     predict time of 4,096 boxes (scaled to val2017's 104,125);
#  4. the COCO evaluation time (benchmarks/eval_time.py), added to predict for the val2017-sized target;
#  5. two local Rays on one machine (benchmarks/shared_box_check.py), when Ray is present;
#  6. one summary table answering every target (benchmarks/summary.py).
#
# Without CUDA every GPU step still starts (so its imports are checked) and its row reads "not measured
# on CPU"; `python -m benchmarks.device_sim -- bash benchmarks/device_check.sh` runs it so, as the GPU
# machine's environment would be apart from the GPU. When the race test passed,
# device_decode.DEVICE_DECODE_VERIFIED may be set to True (then data.decode_on: auto decodes on CUDA).
set -uo pipefail
PY="${PYTHON:-python3}"
OUT="${OUT:-${TMPDIR:-/tmp}/hsjp-device-check}"
STEPS="$OUT/steps"
mkdir -p "$OUT" "$STEPS"
rm -f "$STEPS"/*.txt "$OUT"/bench-*.json "$OUT"/eval-time.json "$OUT"/*-tests.xml
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PIP_NO_INDEX=1  # nothing is fetched: the machine has no network
T0=$(date +%s)
BUDGET=480  # seconds: one call may run 10 minutes, this leaves room for the start and the transfers
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
limit() { local want=$1 have; have=$(( $(left) - 15 )); (( have < want )) && want=$have; (( want < 1 )) && want=1; echo "$want"; }

# step NAME LIMIT_S COMMAND...: run with a time limit, keep the last lines, and write $STEPS/NAME.txt:
# "<status>\t<seconds>\t<reason>" with status ok / skipped / cpu / timeout / failed. A line "SKIPPED: ..."
# in the output makes it skipped (the reason is that line); a traceback always makes it failed.
step() {
  local name=$1 lim; lim=$(limit "$2"); shift 2
  local log="$STEPS/$name.log" t=$(date +%s) rc status reason
  echo "-- $name (limit $lim s)"
  timeout "$lim" "$@" >"$log" 2>&1; rc=$?
  tail -n 12 "$log"
  local last; last=$(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-300)
  if grep -q '^Traceback\|^ModuleNotFoundError\|^ImportError' "$log"; then
    status=failed; reason="$(grep -E '^[A-Za-z_.]*(Error|Exception)' "$log" | tail -n 1 | cut -c1-300)"
  elif grep -q '^SKIPPED: ' "$log"; then
    status=skipped; reason="$(grep '^SKIPPED: ' "$log" | tail -n 1 | sed 's/^SKIPPED: //' | cut -c1-300)"
  elif (( rc == 124 || rc == 137 )); then
    status=timeout; reason="timed out after $lim s"
  elif (( CUDA == 0 )) && [[ "$name" == cuda-* || "$name" == bench-* ]]; then
    status=cpu; reason="$last"
  elif (( rc == 0 )); then
    status=ok; reason="$last"
  else
    status=failed; reason="exit $rc: $last"
  fi
  printf '%s\t%s\t%s\n' "$status" "$(( $(date +%s) - t ))" "$reason" > "$STEPS/$name.txt"
}

echo "== 0. device and environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -n 2
CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
has() { "$PY" -c "import $1" >/dev/null 2>&1 && echo yes || echo no; }
"$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| available', torch.cuda.is_available())"
echo "ray: $(has ray) | pycocotools: $(has pycocotools) | torchcodec: $(has torchcodec) | cv2: $(has cv2)"
if [[ $(has pycocotools) == no ]]; then
  SITE="$OUT/site"
  wheels=(.whl/pycocotools-*.whl)
  if [[ -e "${wheels[0]}" ]]; then
    rm -rf "$SITE"; mkdir -p "$SITE"
    if "$PY" -m pip --version >/dev/null 2>&1; then
      "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "${wheels[@]}" 2>&1 | tail -n 2
    else  # a wheel is a zip of what goes into site-packages
      "$PY" -c "import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]" "$SITE" "${wheels[@]}"
    fi
    export PYTHONPATH="$PYTHONPATH:$SITE"
    echo "pycocotools from the carried wheel ${wheels[0]##*/}: importable now: $(has pycocotools)"
  else
    echo "pycocotools: absent and no wheel in .whl/ (make device-wheels here, carry .whl): COCO AP cannot run"
  fi
fi
printf 'ok\t0\tpython %s, ray %s, pycocotools %s, torchcodec %s, CUDA %s\n' \
  "$("$PY" -c 'import sys; print(sys.version.split()[0])')" "$(has ray)" "$(has pycocotools)" \
  "$(has torchcodec)" "$CUDA" > "$STEPS/environment.txt"

echo "== 1. synthetic data"
if (( CUDA )); then SYN="n_train=256, n_val=512, image_size=(640, 480)"; else SYN="n_train=8, n_val=8, image_size=(320, 240)"; fi
DATA="$OUT/shared-data/coco-mini"  # the name the tests' coco_mini fixture looks for
rm -rf "$DATA"
step data 60 "$PY" -c "
from workloads.data import synthetic
print(synthetic.generate('$DATA', $SYN, seed=0)['root'])"
ROOT=$(tail -n 1 "$STEPS/data.log" 2>/dev/null)
[[ -d "$ROOT" ]] || ROOT=""
SHARED="${HSJP_SHARED_DATA:-$(dirname "$PWD")/shared/data}"
if [[ ! -d "$SHARED/coco-mini/annotations" && -n "$ROOT" ]]; then
  export HSJP_SHARED_DATA="$OUT/shared-data"  # real coco-mini absent: the JPEG tests read synthetic JPEGs
  echo "coco-mini not found at $SHARED: the CUDA tests read the synthetic set's JPEGs"
fi

echo "== 2. CUDA-only tests"
step cuda-tests 100 "$PY" -m pytest -q -rs -p no:cacheprovider --junitxml="$OUT/cuda-tests.xml" \
  tests/workloads/data/test_decode_race.py \
  tests/workloads/test_host_syncs.py \
  tests/workloads/data/test_device_decode.py::test_nvjpeg_decode_and_crop_match_opencv_within_a_few_levels \
  tests/workloads/hsjp/test_batched.py::test_rendering_on_cuda_equals_rendering_on_the_cpu \
  -k "cuda or race or nvjpeg"
step cuda-numerics 60 "$PY" -m pytest -q -rs -p no:cacheprovider --junitxml="$OUT/numerics-tests.xml" \
  tests/workloads/test_numerics.py

echo "== 3. throughput (each run: ours then the reference; finetune first, the main targets)"
BENCH=()
for run in "hrnet_w32 finetune 95" "simplebaseline_r50 finetune 80" "hrnet_w32 pretext 80" "simplebaseline_r50 pretext 70"; do
  set -- $run
  json="$OUT/bench-$1-$2.json"
  BENCH+=("$json")
  extra=()
  [[ "$2" == pretext ]] && extra+=(--no-eval)
  [[ -n "$ROOT" ]] && extra+=(--coco-root "$ROOT")
  step "bench-$1-$2" "$3" "$PY" -m benchmarks.throughput --device cuda --backbone "$1" --task "$2" \
    --steps 20 --warmup 3 --eval-instances 4096 --json "$json" "${extra[@]}"
done

echo "== 4. COCO evaluation time"
step eval-time 30 "$PY" -m benchmarks.eval_time ${ROOT:+--coco-root "$ROOT"} --json "$OUT/eval-time.json"

echo "== 5. shared machine: two local Rays on this machine's GPUs get disjoint GPU ids"
step shared-box 45 "$PY" -m benchmarks.shared_box_check

echo "== 6. summary ($(( $(date +%s) - T0 )) s)"
"$PY" -m benchmarks.summary --bench "${BENCH[@]}" --tests "$OUT/cuda-tests.xml" "$OUT/numerics-tests.xml" \
  --eval-time "$OUT/eval-time.json" --steps "$STEPS" | tee "$OUT/summary.txt"
echo "device check: $(( $(date +%s) - T0 )) s"
