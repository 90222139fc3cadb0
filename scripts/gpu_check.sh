#!/usr/bin/env bash
# The hardware run, on a machine with an NVIDIA GPU (torch with CUDA, triton and a C++ compiler already installed
# there): installs this checkout, runs the backend grid on CUDA tensors with the compiled Triton kernels, the
# selfcheck, and the GPU benchmarks; prints a short table last. Everything it writes lands in $OUT (default
# build/gpu), in at most seven flat files:
#
#     gpu.csv versions.txt   the card and the software
#     steps.txt              one line per step: rc and seconds (rc 124: the step ran out of its time)
#     log.txt                every step's output, autotune's picks included
#     records.jsonl          the benchmark records (append them to benchmarks/results/records.jsonl, then
#                            `python -m benchmarks --report` draws the GPU tables)
#     summary.txt            the table printed last
#
#     OUT=/some/dir DEADLINE=540 [STEPS=install,tests,...] [GPACO_NO_EXTENSION=1] bash scripts/gpu_check.sh [--quick]
#
# DEADLINE (seconds, default 1500) bounds the whole run: each step gets at most its own limit and what is left of the
# deadline, so a slow step cuts the next ones short instead of the run losing everything. STEPS picks steps (default:
# install,tests,selfcheck,overhead,profile,bench_bf16,bench_supcon,bench_fp32,bench_dim,max_batch). GPACO_NO_EXTENSION=1 skips building the
# C++ CPU kernels (about a minute), which a GPU run does not use. --quick: the selfcheck's quick sizes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/gpu}
DEADLINE=${DEADLINE:-1500}
mkdir -p "$OUT"
: > "$OUT/steps.txt"
: > "$OUT/log.txt"
quick=0
[ "${1:-}" = "--quick" ] && quick=1
status=0
STEPS=",${STEPS:-install,tests,selfcheck,overhead,profile,bench_bf16,bench_supcon,bench_fp32,bench_dim,max_batch},"
step() {  # step NAME LIMIT COMMAND...: run under a time limit, append the output to log.txt, remember a failure
    local name=$1 limit=$2
    shift 2
    case "$STEPS" in *",$name,"*) ;; *) return ;; esac
    local left=$((DEADLINE - SECONDS - 10))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -le 5 ]; then
        echo "$name skipped: deadline" | tee -a "$OUT/steps.txt"
        status=1
        return
    fi
    echo "=== $name (limit ${limit}s): $*" | tee -a "$OUT/log.txt"
    local start=$SECONDS
    PYTHONUNBUFFERED=1 timeout -k 5 "$limit" "$@" >> "$OUT/log.txt" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - start))" | tee -a "$OUT/steps.txt"
    [ "$rc" = 0 ] || status=1
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/gpu.csv" 2>&1
python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, 'triton', triton.__version__)" > "$OUT/versions.txt" 2>&1
MAX_JOBS=16 step install 200 python3 -m pip install --no-build-isolation --no-deps -e .

# Compiled kernels, not the interpreter. The GPU selection: the tests marked gpu (tests/helpers.py GPU), which put
# their tensors on CUDA when the interpreter is off: the float64 grid on CUDA tensors, the Triton launch schedule and
# edge tests, the opchecks with AOT dispatch, the host path, CUDA graphs and the device-side label check. CI rehearses
# this exact step on CPU (tests/test_gpu_check.py): every test passes or skips for want of CUDA. Spread over
# processes (xdist) because most of their time is Triton compiling.
GPU_TESTS="tests/test_backends.py tests/test_triton.py tests/test_wide_features.py tests/test_numerics.py tests/test_op.py tests/test_host_path.py tests/test_training_loop.py"
export TRITON_INTERPRET=0 GPACO_EXPECT_BACKENDS=torch,cpu,triton
[ "${GPACO_NO_EXTENSION:-0}" = 1 ] && export GPACO_EXPECT_BACKENDS=torch,triton
export TRITON_PRINT_AUTOTUNING=1
# Tiles by tensor descriptors with whatever Triton the machine has (the default, "auto", takes them only with a Triton
# the compile report has checked): the run is what checks them compiled; the profile step times them against
# pointer loads (GPACO_TRITON_TMA=0).
export GPACO_TRITON_TMA=${GPACO_TRITON_TMA:-1}
xdist=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
# shellcheck disable=SC2086
step tests 300 python3 -m pytest -q -rs $xdist -p no:cacheprovider -m gpu $GPU_TESTS
step selfcheck 150 python3 -m gpaco_kernels.selfcheck --device cuda $([ $quick = 1 ] && echo --quick)
# The fixed cost of a tiny step per loss and backend (host and wall time, launches, host reads).
step overhead 90 python3 -m benchmarks.overhead --device cuda --repeats 200 --records "$OUT/records.jsonl"
# Host time against device time of one step (the LT step is small enough to be bound by the host).
# Per-kernel times at the issue's headline points (the GPU model's calibration points: tools/gpu_model.py), with
# autotune's picks in the log: pixel 32768 bf16 and 16384 float32 (TF32 off), SupCon 4096 bf16; then the pixel and
# SupCon steps again with the one-pass backward (launch.BACKWARD), the choice the GPU model cannot settle alone, and
# the pixel step with its tiles loaded by pointers instead of tensor descriptors (launch.tma_rows).
step profile 210 bash -c "python3 -m benchmarks.profile_step --sweep lt-queue --size 8192 --provider triton &&
    python3 -m benchmarks.profile_step --sweep lt-queue --size 8192 --provider dense --rows 10 &&
    python3 -m benchmarks.profile_step --sweep pixel --size 32768 --provider triton --rows 10 &&
    python3 -m benchmarks.profile_step --sweep pixel --size 16384 --provider triton --dtype float32 --rows 10 &&
    python3 -m benchmarks.profile_step --sweep supcon --size 4096 --provider triton --rows 10 &&
    echo 'backward: one-pass (GPACO_TRITON_BACKWARD=one-pass)' &&
    GPACO_TRITON_BACKWARD=one-pass python3 -m benchmarks.profile_step --sweep pixel --size 32768 --provider triton \
        --rows 10 &&
    GPACO_TRITON_BACKWARD=one-pass python3 -m benchmarks.profile_step --sweep supcon --size 4096 --provider triton \
        --rows 10 &&
    echo 'tiles by pointers (GPACO_TRITON_TMA=0)' &&
    GPACO_TRITON_TMA=0 python3 -m benchmarks.profile_step --sweep pixel --size 32768 --provider triton --rows 10"
step bench_bf16 150 python3 -m benchmarks --device cuda --dtype bfloat16 --sweeps lt-queue pixel \
    --records "$OUT/records.jsonl" --time-limit 20 --budget 1
step bench_supcon 120 python3 -m benchmarks --device cuda --dtype bfloat16 --sweeps supcon \
    --records "$OUT/records.jsonl" --time-limit 20 --budget 1
step bench_fp32 90 python3 -m benchmarks --device cuda --dtype float32 --sweeps lt-queue pixel \
    --records "$OUT/records.jsonl" --time-limit 20 --budget 1
# The LT step across feature dims 32-512 (past 128 the wide kernels, paco_wide), every provider and the floors.
step bench_dim 90 python3 -m benchmarks --device cuda --dtype bfloat16 --sweeps dim \
    --records "$OUT/records.jsonl" --time-limit 20 --budget 1
# The largest problem under 2 GiB of GPU memory (the CUDA allocator's limit), every provider.
step max_batch 240 python3 -m benchmarks.max_batch --budget 2GiB --device cuda --dtype bfloat16 \
    --records "$OUT/records.jsonl" --time-limit 60

{
    echo "=== summary: $(tail -n +2 "$OUT/gpu.csv" | head -1); $(cat "$OUT/versions.txt")"
    cat "$OUT/steps.txt"
    grep -h -E "passed|failed|error" "$OUT/log.txt" | grep -E "^[0-9]+ (passed|failed)|^=+ .*(passed|failed)" | tail -3
    grep -h "selfcheck:" "$OUT/log.txt" || true
    grep -h -E "ms per step|^backward: one-pass|^triton backward taken|^tiles by pointers" "$OUT/log.txt" || true
    grep -h -E "^(gpaco-lt|pixel) .*\| (bare|triton|torch)" "$OUT/log.txt" || true
    sed -n '/fwd+bwd per step/,/dense\/this > 1/p' "$OUT/log.txt" || true
    [ -s "$OUT/records.jsonl" ] && python3 - "$OUT/records.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
for r in rows:
    if r.get("kind") == "gemm-peak":
        print(f"GEMM peak {r['dtype']}: {r['tflops']:.0f} TFLOP/s ({r['routine']})")
for r in rows:
    if r.get("kind") == "point" and r["provider"] in ("triton", "dense", "tight-floor"):
        t, m = r["time"], r.get("memory", {})
        ms = f"{t['median_s'] * 1e3:9.3f} ms" if t.get("status") == "ok" else f"{t.get('status'):>12}"
        mb = f"{m['peak_mb']:9.1f} MB" if m.get("status") == "ok" else ""
        print(f"{r['dtype']:8} {r['sweep']:8} {r['size']:6} {r['provider']:11} {ms} {mb}")
EOF
} > "$OUT/summary.txt" 2>&1
cat "$OUT/summary.txt"
exit $status
