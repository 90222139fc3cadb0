#!/usr/bin/env bash
# Everything CI checks besides the test suite, on an installed checkout (`make test`: install, pytest, then this).
set -euo pipefail
cd "$(dirname "$0")/.."

# --- checks ---
python -c "import gpaco_kernels as g; print('gpaco_kernels', g.__version__, 'backends', g.available_backends())"
ruff check .
ruff format --check .

python -c "import gpaco_kernels as g; assert g.HAS_CPU_EXT, 'the C++ extension was not built'"

# --- the user's check of an installation, every loss x backend x dtype against float64, Triton under the interpreter
#     (docs/benchmarks.md "Check the installation"); exits 1 on a mismatch ---
TRITON_INTERPRET=1 python -m gpaco_kernels.selfcheck --quick

# --- Triton kernels compiled ahead of time for sm_80 and sm_90 (no GPU), every autotune candidate: fails on a compile
#     error, spills in a loop or shared memory over the arch's limit (docs/benchmarks.md "Triton kernels") ---
python -m tools.compile_report

# --- the floor Triton (gpaco_kernels/triton/requirements.py), installed apart into build/tritons: the backend loads
#     with it, each kernel variant's first autotune candidate compiles clean in bfloat16 for sm_80 and sm_90, and the
#     interpreter tests pass (README "Supported, and not"; the test suite above ran with 3.7.1, torch 2.13's pin) ---
python -m tools.triton_matrix --versions 3.3.1 --precisions bf16

# --- the tables of the README and docs/benchmarks.md, results.md and the plots are what the committed records give ---
python -m benchmarks --report --check

# --- C++ kernel core: unit test with ctest, plain and under AddressSanitizer + UndefinedBehaviorSanitizer ---
cmake -S . -B build/core -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/core -j 2 >/dev/null
ctest --test-dir build/core --output-on-failure
cmake -S . -B build/sanitize -DCMAKE_BUILD_TYPE=Debug -DGPACO_SANITIZE=ON >/dev/null
cmake --build build/sanitize -j 2 >/dev/null
ctest --test-dir build/sanitize --output-on-failure

# --- benchmarks, smoke runs (docs/benchmarks.md): fail if a provider errors, not if it is slow. One point of each
#     sweep, and the pixel sweep's second (largest quick) point, where the fresh-process memory probes run ---
python -m benchmarks --quick --sweeps lt-queue pixel supcon --sizes 1024 2048 256 --records build/bench-quick/records.jsonl
python -m pytest benchmarks/test_microbench.py -q --benchmark-disable -p no:cacheprovider

# --- memory-limited training, quick versions (docs/benchmarks.md: the largest problem under a budget, segmentation): fail if a
#     fused backend errors, or if the dense formula is not the one the budget stops ---
python -m benchmarks.max_batch --budget 128MiB --quick --workloads supcon pixel --providers dense cpu --start 1024 \
    --max-size 2048 --time-limit 60 --resolution 1.5 --records build/max-batch-quick.jsonl
python python/train_seg.py --epochs 1 --train-size 32 --test-size 16 --seeds 0 --out build/seg-quick --quiet

# --- the main job, as a smoke run (docs/training.md) ---
python python/examples/quickstart.py --repeats 3

