#!/usr/bin/env bash
# minift bench and the PyTorch reference (../shared/bench/torch_ref.py), side by side, in the same conditions:
# the same thread count for numpy's OpenBLAS and torch (OMP/OPENBLAS/MKL_NUM_THREADS), the same glibc malloc policy
# (what `minift bench` sets with mallopt, given to torch_ref through the environment), run in turn - minift, torch
# with sdpa, torch without - so that a drift in the machine's load hits all three alike. With two or more threads,
# minift also runs with the batch split across that many worker threads of one BLAS thread each (--workers).
#
#   benchmarks/run.sh [OUT.tsv]        then   python benchmarks/summarize.py OUT.tsv
#   ROUNDS=3 THREADS="1 2" PRESETS="demo small" METHODS="full lora" STEPS=10 benchmarks/run.sh
#   DEVICE=gpu THREADS=1 PRESETS="demo small gpt2" benchmarks/run.sh   # minift on CuPy, torch on CUDA
#
# With DEVICE=gpu, minift runs with --device gpu and torch through benchmarks/torch_device.py (torch_ref's model on
# the CUDA device, GPT-2 small added); THREADS then only sets the host's threads. For the presets in NOFUSED
# (default "demo small") minift also runs with --no-fused (variant "minift-nofused"): the reference lines instead
# of the fused elementwise kernels of minift/fast/kernels.py, to measure what fusion buys.
#
# Each line of OUT is: threads <TAB> round <TAB> variant <TAB> the JSON line the program printed.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/raw.tsv}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-"1 2"}
PRESETS=${PRESETS:-"demo small"}
METHODS=${METHODS:-"full lora"}
STEPS=${STEPS:-10}
TORCH_REF=${TORCH_REF:-../shared/bench/torch_ref.py}
PYTHON=${PYTHON:-python}
DEVICE=${DEVICE:-cpu}
NOFUSED=${NOFUSED:-"demo small"}
if [ "$DEVICE" = gpu ]; then
  MINIFT_DEVICE_ARGS=(--device gpu)
  TORCH=("$PYTHON" benchmarks/torch_device.py --ref "$TORCH_REF" --device cuda)
else
  MINIFT_DEVICE_ARGS=()
  TORCH=("$PYTHON" "$TORCH_REF")
fi
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824   # = minift.measure.bench.reuse_freed_memory()

run() {   # threads round variant command...
  local t=$1 r=$2 v=$3; shift 3
  local line
  if line=$(OMP_NUM_THREADS=$t OPENBLAS_NUM_THREADS=$t MKL_NUM_THREADS=$t "$@" | tail -n 1); then
    printf '%s\t%s\t%s\t%s\n' "$t" "$r" "$v" "$line" >> "$OUT"
  else
    echo "run.sh: failed: $*" >&2
  fi
}

: > "$OUT"
for t in $THREADS; do
  for r in $(seq 1 "$ROUNDS"); do
    for p in $PRESETS; do
      for m in $METHODS; do
        echo "threads $t, round $r: $p $m" >&2
        run "$t" "$r" minift "$PYTHON" -m minift bench --preset "$p" --method "$m" --steps "$STEPS" --profile-steps 0 \
          --json "${MINIFT_DEVICE_ARGS[@]}"
        if [ "$t" -gt 1 ] && [ "$DEVICE" = cpu ]; then   # the batch split across t threads, one BLAS thread each
          run "$t" "$r" minift-workers "$PYTHON" -m minift bench --preset "$p" --method "$m" --steps "$STEPS" \
            --profile-steps 0 --json --workers "$t" --threads 1
        fi
        if [ "$DEVICE" = gpu ] && [[ " $NOFUSED " == *" $p "* ]]; then   # the same step without fused kernels
          run "$t" "$r" minift-nofused "$PYTHON" -m minift bench --preset "$p" --method "$m" --steps "$STEPS" \
            --profile-steps 0 --json --no-fused "${MINIFT_DEVICE_ARGS[@]}"
        fi
        run "$t" "$r" torch-sdpa "${TORCH[@]}" --config "$p" --mode "$m" --steps "$STEPS"
        run "$t" "$r" torch-nosdpa "${TORCH[@]}" --config "$p" --mode "$m" --steps "$STEPS" --no-sdpa
      done
    done
  done
done
"$PYTHON" benchmarks/summarize.py "$OUT"
