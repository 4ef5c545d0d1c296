#!/usr/bin/env bash
# What the performance issue asks of a GPU, in one command, for a machine with an NVIDIA GPU, CuPy and a CUDA build of
# PyTorch (the lent H200 machine has all three and everything else minift needs; nothing is installed here):
#
#   bash benchmarks/gpu.sh OUTDIR [PATH/TO/torch_ref.py]
#
#   OUTDIR/env.txt      the GPU, driver, and numpy / CuPy / torch / CUDA versions
#   OUTDIR/kernels.txt  the fused kernels checked against the reference lines on the device, first: if they fail,
#                       the benchmarks run without them (MINIFT_FUSED=0) rather than not at all
#   OUTDIR/tests.txt    the test suite's CuPy variants (every op test's `cupy` case, bench and memory on the GPU) and
#                       tutorial 11 with a GPU present (its GPU-vs-CPU agreement checks and GPU timings)
#   OUTDIR/bench.tsv    minift on CuPy and torch on CUDA, in turn, for demo, small and gpt2, full and LoRA; on demo
#                       and small minift also without its fused kernels (--no-fused)
#   OUTDIR/bench.txt    the ratio tables of benchmarks/RESULTS.md made from it (benchmarks/summarize.py)
#   OUTDIR/bench.log    run.sh's progress and any failed run
#   OUTDIR/profile.txt  minift bench's per-op breakdown on the device, demo full fine-tuning
#
# The machine's tree holds only the repository: copy ../shared/bench/torch_ref.py into an ignored folder of the
# repository first and pass its path (see "What remains" in benchmarks/RESULTS.md for the exact call).
# Time, at most: 60 s for the kernel check (KERNELS_S; seconds when they compile), 170 s of tests (TEST_S), 320 s
# of benchmarks (BENCH_S), 40 s of profile (PROFILE_S): 590 s; each part is cut off at its limit and what it wrote
# so far is kept.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: bash benchmarks/gpu.sh OUTDIR [PATH/TO/torch_ref.py]}
export TORCH_REF=${2:-${TORCH_REF:-../shared/bench/torch_ref.py}}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  "$PYTHON" -c "import sys, numpy, cupy, torch
print('python', sys.version.split()[0], '| numpy', numpy.__version__, '| cupy', cupy.__version__,
      '| CUDA runtime', cupy.cuda.runtime.runtimeGetVersion(), '| torch', torch.__version__, 'CUDA', torch.version.cuda,
      '| torch TF32 matmul', torch.backends.cuda.matmul.allow_tf32)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

echo "== fused kernels (minift/fast/kernels.py) against the reference lines, on the device"
if timeout "${KERNELS_S:-60}" "$PYTHON" -m pytest tests/fast/test_kernels.py -q -p no:cacheprovider -rs \
    -k "cupy and not fakecupy" > "$OUT/kernels.txt" 2>&1 && grep -q " passed" "$OUT/kernels.txt"; then
  echo "they agree (kernels.txt)"
else
  echo "they FAILED or did not run (kernels.txt): the benchmarks below run the reference lines (MINIFT_FUSED=0)"
  export MINIFT_FUSED=0
fi

echo "== tests (CuPy variants, tutorial 11)"
timeout "${TEST_S:-170}" "$PYTHON" -m pytest tests -q -p no:cacheprovider -rs \
  -k "(cupy and not fakecupy) or on_the_gpu or 11_gpu" > "$OUT/tests.txt" 2>&1
echo "pytest exit status $?" >> "$OUT/tests.txt"
tail -n 5 "$OUT/tests.txt"

echo "== benchmarks"
ROUNDS=${ROUNDS:-2} DEVICE=gpu THREADS=1 PRESETS=${PRESETS:-"demo small gpt2"} METHODS="full lora" STEPS=${STEPS:-10} \
  PYTHON=$PYTHON timeout "${BENCH_S:-320}" bash benchmarks/run.sh "$OUT/bench.tsv" > "$OUT/bench.log" 2>&1
"$PYTHON" benchmarks/summarize.py "$OUT/bench.tsv" > "$OUT/bench.txt" 2>&1   # also when run.sh was cut off
cat "$OUT/bench.txt"

echo "== where the time goes on the device (demo, full fine-tuning; each op synchronised)"
timeout "${PROFILE_S:-40}" "$PYTHON" -m minift bench --preset demo --device gpu --steps 5 --profile-steps 5 \
  > "$OUT/profile.txt" 2>&1
cat "$OUT/profile.txt"
