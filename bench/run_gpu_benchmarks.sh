#!/usr/bin/env bash
# Our GPU benchmarks and the PyTorch baseline on the same GPU, then one markdown table of ratios.
#
# usage: bench/run_gpu_benchmarks.sh OUTDIR BUILD_DIR [--budget SECONDS] [--no-compile] [--no-torch]
#                                    [--compile-cap SECONDS] [--python PYTHON]
#   BUILD_DIR  a Release build with the CUDA backend (bench/bench_cuda_ops, bench/bench_step)
#   --budget   total seconds to aim for (default 150); torch.compile gets what is left of it
#              (at most --compile-cap, default 75 s) and is skipped when under 30 s are left
#   --no-compile  skip the torch.compile measurement; --no-torch  skip PyTorch entirely
#   BENCH_STEP_FILTER  (environment) which bench_step benchmarks run: default the bf16 GPU steps
#              (BM_gpu_.*bf16:1, batch 256 like PyTorch's), else names that say gpu or cuda
#   CLIPCU_BENCH_TARGET_MS  (environment) timed milliseconds per bench_cuda_ops case (default 20)
#   TORCH_ARGS (environment) extra pytorch_baseline.py arguments (a CPU test of this script:
#              TORCH_ARGS="--device cpu --configs clip-tiny-cpu --batch 4 --iters 1 --smoke")
# Steps, each under its own time limit (a step cut short loses only its own results):
#   1. bench_cuda_ops in chunks: ViT-B/32 GEMMs and the memory-bound ops (layer norm ...) first,
#      then every other bench/bench_cuda_* program (bench_cuda_conv: convolution vs cuDNN), JSON
#   2. bench_step's GPU benchmarks, JSON
#   3. bench/pytorch_baseline.py: kernels + eager models; then the other bench_cuda_ops chunks
#      (attention, the other GEMM shapes); then torch.compile (ViT-B-32)
#   4. bench/compare.py -> OUTDIR/bench_table.md
# Files written (flat, few): bench_table.md, bench_ours.json (all Google Benchmark results,
# merged), bench_torch.json (PyTorch results, merged), bench_gpu.log (every program's console).
# Exit status: 0 when the table was written (individual steps may have failed: see the log).
set -uo pipefail

usage() { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 2 ] || usage
OUTDIR="$1"; BUILD="$2"; shift 2
BUDGET=150
COMPILE=1
TORCH=1
COMPILE_CAP=75
PY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --budget) BUDGET="$2"; shift 2 ;;
    --no-compile) COMPILE=0; shift ;;
    --no-torch) TORCH=0; shift ;;
    --compile-cap) COMPILE_CAP="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "run_gpu_benchmarks: unknown argument $1" >&2; usage ;;
  esac
done
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
BUILD="$(cd "$BUILD" && pwd)" || { echo "run_gpu_benchmarks: no build directory $BUILD" >&2; exit 2; }
LOG="$OUTDIR/bench_gpu.log"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
: >"$LOG"
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
say() { echo "[run_gpu_benchmarks $(elapsed)s] $*" | tee -a "$LOG"; }
# capped CAP: CAP, or what is left of the budget (minus 10 s for the table) when that is less
capped() { local left=$(( BUDGET - $(elapsed) - 10 )); [ "$left" -lt "$1" ] && echo "$left" || echo "$1"; }

# A Python with torch (the GPU machine's python3 has PyTorch 2.x; Debian's /usr/bin/python3 has 1.13)
if [ -z "$PY" ]; then
  for p in python3 /usr/bin/python3 python; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import torch' >/dev/null 2>&1; then PY="$p"; break; fi
  done
fi
CPY="$(command -v python3 || echo /usr/bin/python3)"  # compare.py needs no torch

# ---------------------------------------------------------------- 1. our kernels
OPS="$BUILD/bench/bench_cuda_ops"
if [ -x "$OPS" ]; then
  # chunks by name: a timeout or a sticky CUDA error costs one chunk, not the run
  # the first two chunks (targets not met yet: GEMM, layer norm) run now, the others after
  # PyTorch's eager run (attention met its target on the H200 already)
  chunks=('^gemm/bf16/vitb32' '^(copy|layernorm|embedding|clip_loss|adamw)/' '^attention'
          '^gemm/bf16/(text|rn50)' '^gemm/bf16/vitb16' '^gemm/bf16/square' '^gemm/f32/')
  caps=(45 60 40 40 60 40 40)
  # whatever those do not name (an op added later) runs as one more chunk
  rest="$("$OPS" --benchmark_list_tests 2>/dev/null | grep -vE '[[:space:]]' | sed 's|/iterations:.*||' \
          | grep -vE '^(gemm/(bf16/(vitb32|vitb16|text|rn50|square)|f32/)|attention|(copy|layernorm|embedding|clip_loss|adamw)/)' \
          | sed 's/[][().*+?^$|\\{}]/\\&/g' | paste -sd'|')"
  if [ -n "$rest" ]; then chunks+=("^($rest)"); caps+=(60); fi
fi
run_chunks() {  # FIRST LAST: bench_cuda_ops chunks FIRST..LAST (indices into chunks)
  [ -x "$OPS" ] || return 0
  local i f cap rc
  for ((i = $1; i <= $2 && i < ${#chunks[@]}; i++)); do
    f="${chunks[$i]}"; cap="$(capped "${caps[$i]}")"
    if [ "$cap" -lt 5 ]; then say "bench_cuda_ops '$f' skipped: the ${BUDGET}s budget is spent"; continue; fi
    say "bench_cuda_ops --benchmark_filter='$f' (limit ${cap}s)"
    timeout --kill-after=5 "$cap" "$OPS" "--benchmark_filter=$f" --benchmark_counters_tabular=true \
      "--benchmark_out=$WORK/ours_$i.json" --benchmark_out_format=json >>"$LOG" 2>&1
    rc=$?
    [ "$rc" -ne 0 ] && say "  exit $rc$([ "$rc" -ge 124 ] && echo ' (time limit: the results of this chunk so far are kept if readable)')"
  done
}
if [ -x "$OPS" ]; then
  run_chunks 0 1
else
  say "no $OPS: build with -DCLIPCU_CUDA=ON first"
fi

# Google Benchmark >= 1.8 wants a unit on --benchmark_min_time, older ones refuse it
min_time() {  # min_time PROGRAM SECONDS
  if "$1" "--benchmark_min_time=${2}s" --benchmark_list_tests >/dev/null 2>&1; then echo "${2}s"; else echo "$2"; fi
}

# the other CUDA benchmark programs (bench_cuda_conv: our convolution against cuDNN), one chunk each
for b in "$BUILD"/bench/bench_cuda_*; do
  [ -x "$b" ] && [ "$b" != "$OPS" ] || continue
  name="$(basename "$b")"
  cap="$(capped 90)"
  if [ "$cap" -lt 5 ]; then say "$name skipped: the ${BUDGET}s budget is spent"; continue; fi
  say "$name (limit ${cap}s)"
  timeout --kill-after=5 "$cap" "$b" "--benchmark_min_time=$(min_time "$b" 0.05)" --benchmark_counters_tabular=true \
    "--benchmark_out=$WORK/ours_$name.json" --benchmark_out_format=json >>"$LOG" 2>&1 || say "  $name exit $?"
done

# ---------------------------------------------------------------- 2. whole GPU steps (bench_step)
STEP="$BUILD/bench/bench_step"
if [ -x "$STEP" ]; then
  # bf16 steps (what PyTorch's bf16 autocast runs beside), else every GPU step
  filt="${BENCH_STEP_FILTER:-BM_gpu_.*bf16:1}"
  if [ -z "${BENCH_STEP_FILTER:-}" ] && ! "$STEP" "--benchmark_filter=$filt" --benchmark_list_tests 2>/dev/null | grep -q .; then
    filt='[Gg][Pp][Uu]|[Cc][Uu][Dd][Aa]'
  fi
  if "$STEP" "--benchmark_filter=$filt" --benchmark_list_tests 2>/dev/null | grep -q .; then
    mt="$(min_time "$STEP" 0.2)"
    cap="$(capped 60)"
    say "bench_step --benchmark_filter='$filt' (limit ${cap}s)"
    [ "$cap" -ge 5 ] && timeout --kill-after=5 "$cap" "$STEP" "--benchmark_filter=$filt" --benchmark_min_time=$mt \
      --benchmark_counters_tabular=true "--benchmark_out=$WORK/ours_step.json" --benchmark_out_format=json >>"$LOG" 2>&1 \
      || say "  bench_step exit $?"
  else
    say "bench_step has no benchmark matching '$filt' (set BENCH_STEP_FILTER): no step rows of ours"
  fi
fi

# ---------------------------------------------------------------- 3. PyTorch
if [ "$TORCH" -eq 1 ] && [ -z "$PY" ]; then
  say "no Python with torch found: PyTorch columns stay empty"
elif [ "$TORCH" -eq 1 ]; then
  left=$(( BUDGET - $(elapsed) ))
  cap=$(( left > 90 ? left - 30 : left - 10 ))  # eager needs about 30 s on an H200; leave compile its share
  [ "$cap" -gt 120 ] && cap=120
  say "pytorch_baseline.py eager ($PY, limit ${cap}s)"
  [ "$cap" -ge 5 ] && timeout --kill-after=5 "$cap" "$PY" "$repo/bench/pytorch_baseline.py" --out "$WORK/torch_eager.json" ${TORCH_ARGS:-} >>"$LOG" 2>&1 \
    || say "  pytorch_baseline eager exit $?"
  run_chunks 2 99; ran_rest=1  # attention, the other GEMM shapes: after PyTorch's eager numbers
  if [ "$COMPILE" -eq 1 ]; then
    left=$(( BUDGET - $(elapsed) ))
    cap="$(capped "$COMPILE_CAP")"
    if [ "$cap" -ge 30 ]; then
      say "pytorch_baseline.py torch.compile ViT-B-32 (limit ${cap}s; cut short = no compile column)"
      timeout --kill-after=5 "$cap" "$PY" "$repo/bench/pytorch_baseline.py" --mode compile --configs ViT-B-32 \
        --out "$WORK/torch_compile.json" ${TORCH_ARGS:-} >>"$LOG" 2>&1 || say "  pytorch_baseline compile exit $?"
    else
      say "torch.compile skipped: ${left}s left of the ${BUDGET}s budget"
    fi
  fi
fi

[ "${ran_rest:-0}" -eq 1 ] || run_chunks 2 99

# ---------------------------------------------------------------- 4. the table
shopt -s nullglob
files=("$WORK"/ours_*.json "$WORK"/torch_*.json)
say "compare.py over ${#files[@]} JSON files"
"$CPY" "$repo/bench/compare.py" -o "$OUTDIR/bench_table.md" --write-ours "$OUTDIR/bench_ours.json" \
  --write-torch "$OUTDIR/bench_torch.json" --title "clipcu GPU benchmarks vs cuBLAS / cuDNN / PyTorch" "${files[@]}" >>"$LOG" 2>&1
rc=$?
say "done in $(elapsed)s: $OUTDIR/bench_table.md"
[ "$rc" -eq 0 ] && cat "$OUTDIR/bench_table.md"
exit "$rc"
