#!/usr/bin/env bash
# The GPU check of fastnn, in one command, for a lent GPU machine with no network (Python 3.12,
# NumPy, CuPy for CUDA 13, pybind11, scikit-build-core, pytest installed there):
#   1. build fastnn with CUDA for sm_90 only (pip install --no-build-isolation: nothing fetched);
#   2. run the GPU tests (pytest -m cuda) and all of tests/test_cuda.py;
#   3. compute-sanitizer --tool memcheck on benchmarks/gpu_smoke.py (a small call of each
#      kernel), where the tool exists and accepts the device;
#   4. time the kernels against cuBLAS and the copy bandwidth (benchmarks/gpu_bench.py); the
#      table comes last.
# Finishes in under 5 minutes on one H200. Every step has its own time limit, so that the later
# (Python) steps still run when the whole script is run under `timeout`. A failed build stops
# the script at once; a failed later step is reported, the remaining steps still run, and the
# script exits non-zero with a summary naming each failed step.
#
# Usage: benchmarks/gpu_check.sh [--quick]     (logs and the table also go to $OUT or build/gpu-check)
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=""
[[ "${1:-}" == "--quick" ]] && QUICK="--quick"
PY="${PYTHON:-python3}"
LOGS="${OUT:-build/gpu-check}"
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
[[ -x /usr/local/cuda/bin/nvcc ]] && export PATH="$PATH:/usr/local/cuda/bin"

FAILED=()
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }
# run NAME SECONDS COMMAND...: runs with a time limit, logs to $LOGS/NAME.log, records failure.
run() {
  local name=$1 limit=$2
  shift 2
  local rc=0
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log" || rc=$?
  if ((rc == 124)); then
    FAILED+=("$name (timed out after $limit s)")
  elif ((rc != 0)); then
    FAILED+=("$name (exit $rc)")
  fi
  ((rc == 0)) || echo "!!! $name FAILED (exit $rc)"
  return 0
}

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "(no nvidia-smi)"
command -v nvcc >/dev/null && nvcc --version | tail -2
"$PY" -c "import sys, numpy, cupy; print('python', sys.version.split()[0], '| numpy', numpy.__version__, '| cupy', cupy.__version__)"

step "build (sm_90, FASTNN_CUDA=ON)"
start=$SECONDS
"$PY" -m pip install --no-build-isolation --no-deps --no-index -q . \
  -Cbuild-dir=build/gpu-check-build \
  -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90 -Ccmake.define.FASTNN_CUDA=ON \
  2>&1 | tee "$LOGS/build.log"
echo "built in $((SECONDS - start)) s"
# From outside the source tree, so that the installed package is the one imported.
(cd /tmp && "$PY" -c "
import fastnn, sys
print(fastnn.__file__, '| cuda built:', fastnn.cuda.is_built(), '| GPUs:', fastnn.cuda.device_count())
sys.exit(0 if fastnn.cuda.is_available() else 'fastnn.cuda.is_available() is False after the build')
")

step "GPU tests"
run tests 150 "$PY" -m pytest -q -p no:cacheprovider --no-header -rfEs \
  tests/test_cuda.py tests/test_data.py::test_batches_and_one_hot_on_cupy
# The cuda-marked tests must have run, not been skipped.
if grep -q "needs a CUDA GPU" "$LOGS/tests.log"; then
  FAILED+=("tests (cuda tests were skipped)")
fi

step "compute-sanitizer memcheck on a small call of each kernel"
SANITIZER="$(command -v compute-sanitizer || true)"
[[ -z "$SANITIZER" && -x /usr/local/cuda/bin/compute-sanitizer ]] && SANITIZER=/usr/local/cuda/bin/compute-sanitizer
if [[ -z "$SANITIZER" ]]; then
  echo "compute-sanitizer not found: memcheck NOT run"
else
  rc=0
  timeout --kill-after=10 120 "$SANITIZER" --tool memcheck --error-exitcode 9 \
    "$PY" benchmarks/gpu_smoke.py 2>&1 | tee "$LOGS/memcheck.log" || rc=$?
  if grep -q "Device not supported" "$LOGS/memcheck.log"; then
    echo "compute-sanitizer does not accept this device (a gVisor machine?): memcheck NOT run"
    run smoke 60 "$PY" benchmarks/gpu_smoke.py
  elif ((rc != 0)); then
    FAILED+=("memcheck (exit $rc; see memcheck.log)")
  fi
fi

step "benchmarks"
run bench 150 "$PY" benchmarks/gpu_bench.py $QUICK --out "$LOGS/table.md"

step "summary"
if ((${#FAILED[@]})); then
  printf '!!! FAILED: %s\n' "${FAILED[@]}"
  [[ -f "$LOGS/table.md" ]] && cat "$LOGS/table.md"
  exit 1
fi
echo "all steps passed; logs in $LOGS"
cat "$LOGS/table.md"
