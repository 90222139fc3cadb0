#!/usr/bin/env bash
# The hardware run, on a machine with an NVIDIA GPU (torch with CUDA, triton and nvcc already installed there):
# installs this checkout, runs the test suite's backend grid on CUDA tensors with the compiled Triton kernels, the
# selfcheck, the autotune picks, and the GPU benchmarks at the headline sizes; writes everything under $OUT
# (default build/gpu) and prints a short table last. Commit what comes back under benchmarks/results/<gpu>/.
#
#     OUT=/some/dir bash scripts/gpu_check.sh [--quick]
#
# --quick: the tests and selfcheck only, with the quick table (a first look within a few minutes).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/gpu}
mkdir -p "$OUT"
quick=0
[ "${1:-}" = "--quick" ] && quick=1
status=0
step() {  # step NAME COMMAND...: run, tee the log to $OUT/NAME.log, remember a failure, go on
    local name=$1
    shift
    echo "=== $name: $*"
    local start=$SECONDS
    "$@" 2>&1 | tee "$OUT/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$OUT/steps.txt"
    [ "$rc" = 0 ] || status=1
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/gpu.csv" 2>&1
python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" \
    > "$OUT/versions.txt" 2>&1
step install pip install --no-build-isolation --no-deps -e .

# Compiled kernels, not the interpreter; the CPU part of the suite runs as in CI, Triton there needs no test.
export TRITON_INTERPRET=0 GPACO_EXPECT_BACKENDS=torch,cpu
export TRITON_PRINT_AUTOTUNING=1  # autotune's picks go to the logs
step tests python -m pytest -q -x tests/test_backends.py tests/test_triton.py -k "cuda or split or gpu" -p no:cacheprovider
step selfcheck python -m gpaco_kernels.selfcheck --device cuda $([ $quick = 1 ] && echo --quick)
if [ $quick = 0 ]; then
    step bench_bf16 python -m benchmarks --device cuda --dtype bfloat16 --sweeps lt-queue pixel supcon \
        --out "$OUT/bench-bf16" --time-limit 60 --budget 5
    step bench_fp32 python -m benchmarks --device cuda --dtype float32 --sweeps lt-queue pixel \
        --out "$OUT/bench-fp32" --time-limit 60 --budget 5
fi

echo
echo "=== summary ($(head -2 "$OUT/gpu.csv" | tail -1))"
cat "$OUT/steps.txt"
grep -h "selfcheck:" "$OUT/selfcheck.log" || true
sed -n '/fwd+bwd per step/,/dense\/this > 1/p' "$OUT/selfcheck.log" || true
exit $status
