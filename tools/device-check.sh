#!/usr/bin/env bash
# One check of the whole project on a GPU machine: configure and build Release with all cores
# (the GPU programs first), the wgmma smoke tests, the CUDA tests, compute-sanitizer (memcheck over
# the CUDA tests, racecheck over the kernels that use shared memory), the GPU benchmarks against
# cuBLAS / cuDNN / PyTorch, then the rest of the build, every other test and the CPU benchmarks
# with the time left, and write OUTDIR/report.md (GPU, driver, CUDA, pass/fail per stage with
# timings, what failed) beside the raw logs.
# Meant to finish within 8 minutes on an H100: every stage has a time limit, and a stage cut
# short is reported as TIMEOUT, never as passed.
#
# usage: tools/device-check.sh OUTDIR [--prefix DIR] [--build-dir DIR] [--arch ARCHS] [--jobs N]
#                              [--no-bench] [--no-sanitizers] [--cuda-only] [--budget SECONDS]
#                              [--bench-budget SECONDS] [--sanitize-budget SECONDS] [--bench-only]
#   --prefix DIR   what tools/device-prepare.sh made (default: <repo>/.deps when it exists):
#                  DIR/debs/*.deb are unpacked into DIR/root and put on CMAKE_PREFIX_PATH,
#                  PKG_CONFIG_PATH and LD_LIBRARY_PATH; DIR/golden and DIR/vocab become
#                  CLIPCU_GOLDEN and CLIPCU_VOCAB.
#   --arch ARCHS   CMAKE_CUDA_ARCHITECTURES (default: the GPU's own, e.g. 90a on an H100)
#   --budget S     the report is final after S seconds (default 470: within 8 minutes)
#   --bench-budget S  seconds for bench/run_gpu_benchmarks.sh (default 150; 0: build the
#                  benchmark programs but run none, for a --bench-only call after this one)
#   --sanitize-budget S  seconds for all compute-sanitizer runs together (default 150; each run
#                  at most 120): racecheck can be slow, and the benchmarks come after them
#   --cuda-only    build only the CUDA tests and benchmarks (and bench_step); run those, the
#                  sanitizers and the GPU benchmarks without torch.compile (the CPU-only tests and
#                  benchmarks are left out)
#   --bench-only   a second call on the same machine: no configure, build, tests or sanitizers;
#                  the smoke tests (which hide a failing Hopper kernel) and then the GPU
#                  benchmarks in full (torch.compile included) on the build an earlier call left
#                  in the build folder, within --bench-budget
# Files written (at most 8, flat, for the device tool's copy-back): report.md, build.log (the
# environment, then configure and build), test_cuda.log, sanitizer.log, ctest.log, bench.log,
# bench_table.md and bench_json.tgz (bench/run_gpu_benchmarks.sh's table and JSON).
# Exit status: 0 when every stage passed, 1 otherwise.
set -uo pipefail

usage() { sed -n '2,/^set -uo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
case "$1" in -h|--help|-*) usage ;; esac
OUTDIR="$1"; shift
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX=""
[ -d "$repo/.deps" ] && PREFIX="$repo/.deps"
BUILD="$repo/build/device-check"
ARCH=""
JOBS="$(nproc)"
BENCH=1
SANITIZE=1
CUDA_ONLY=0
BUDGET=470
BENCH_BUDGET=150
SAN_BUDGET=150
BENCH_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX="$(cd "$2" && pwd)"; shift 2 ;;
    --build-dir) BUILD="$2"; shift 2 ;;
    --arch) ARCH="$2"; shift 2 ;;
    --jobs) JOBS="$2"; shift 2 ;;
    --no-bench) BENCH=0; shift ;;
    --no-sanitizers) SANITIZE=0; shift ;;
    --cuda-only) CUDA_ONLY=1; shift ;;
    --bench-only) BENCH_ONLY=1; shift ;;
    --budget) BUDGET="$2"; shift 2 ;;
    --bench-budget) BENCH_BUDGET="$2"; shift 2 ;;
    --sanitize-budget) SAN_BUDGET="$2"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "device-check: unknown argument $1" >&2; usage ;;
  esac
done
mkdir -p "$OUTDIR" && OUTDIR="$(cd "$OUTDIR" && pwd)" || { echo "device-check: cannot use $OUTDIR as the output folder" >&2; exit 2; }
RC=1; SECS=0
REPORT="$OUTDIR/report.md"

T0=$(date +%s)
DEADLINE=$((T0 + BUDGET))  # default 7 min 50 s: the report is written before 8 minutes
now() { date +%s; }
left() { echo $((DEADLINE - $(now))); }

# ---------------------------------------------------------------- stage bookkeeping
STAGES=()   # "name|result|seconds|detail"
FAILED=()
record() {  # name result seconds detail
  STAGES+=("$1|$2|$3|$4")
  case "$2" in PASS|SKIP) ;; *) FAILED+=("$1 ($2)") ;; esac
  write_report
}
# Runs "$@" with a time limit of min(cap, time left - reserve); sets RC (124 = timed out) and SECS.
timed() {
  local cap="$1"; shift
  local budget; budget=$(( $(left) - 15 ))
  [ "$budget" -gt "$cap" ] && budget="$cap"
  if [ "$budget" -lt 10 ]; then RC=124; SECS=0; return; fi
  local t; t=$(now)
  timeout --kill-after=10 "$budget" "$@"
  RC=$?
  SECS=$(( $(now) - t ))
}
verdict() {  # exit code -> PASS / FAIL / TIMEOUT
  case "$1" in 0) echo PASS ;; 124|137) echo TIMEOUT ;; *) echo "FAIL" ;; esac
}

GPU="(none found)"; DRIVER="?"; CUDA_VER="?"; CAP=""
write_report() {
  {
    if [ ${#FAILED[@]} -eq 0 ]; then
      echo "# device check: PASS (so far: every stage below passed)"
    else
      echo "# device check: FAIL"
      echo
      echo "Failed: ${FAILED[*]}"
    fi
    echo
    echo "- GPU: $GPU (compute capability $CAP), driver $DRIVER"
    echo "- CUDA: $CUDA_VER; built for CMAKE_CUDA_ARCHITECTURES=${ARCH:-?}"
    echo "- commit: $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo ?)$(git -C "$repo" status --porcelain 2>/dev/null | grep -q . && echo ' (with uncommitted changes)')"
    echo "- started $(date -d @"$T0" -u '+%Y-%m-%d %H:%M:%S UTC'), elapsed $(( $(now) - T0 )) s"
    echo
    echo "| stage | result | seconds | detail |"
    echo "|---|---|---|---|"
    local s n r secs d  # local: the caller's variables (a loop's $t, say) must survive a report
    for s in "${STAGES[@]}"; do
      IFS='|' read -r n r secs d <<<"$s"
      echo "| $n | $r | $secs | $d |"
    done
    [ -n "${EXTRA:-}" ] && printf '\n%s\n' "$EXTRA"
  } >"$REPORT"
}
EXTRA=""
add_extra() { EXTRA+=$'\n'"$1"; write_report; }

# ---------------------------------------------------------------- environment
{
  echo "== nvidia-smi"; nvidia-smi 2>&1
  echo "== nvcc"; (command -v nvcc || echo /usr/local/cuda/bin/nvcc); (nvcc --version || /usr/local/cuda/bin/nvcc --version) 2>&1
  echo "== cmake"; cmake --version 2>&1 | head -1
  echo "== c++"; c++ --version 2>&1 | head -1
  echo "== compute-sanitizer"; (compute-sanitizer --version || /usr/local/cuda/bin/compute-sanitizer --version) 2>&1 | head -3
  echo "== cores"; nproc
} >"$OUTDIR/build.log" 2>&1
if command -v nvidia-smi >/dev/null 2>&1; then
  GPU="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
  DRIVER="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)"
  CAP="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1)"
fi
NVCC="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
CUDA_VER="$("$NVCC" --version 2>/dev/null | grep -o 'release [0-9.]*' | head -1)"
SANITIZER="$(command -v compute-sanitizer || echo "$(dirname "$NVCC")/compute-sanitizer")"
if [ -z "$ARCH" ]; then
  case "$CAP" in
    9.0) ARCH="90a" ;;
    "") ARCH="80;90a" ;;
    *) ARCH="${CAP/./}" ;;
  esac
fi
write_report

# ---------------------------------------------------------------- carried dependencies
if [ -n "$PREFIX" ]; then
  t=$(now); note=""
  root="$PREFIX/root"
  if ls "$PREFIX"/debs/*.deb >/dev/null 2>&1; then
    rm -rf "$root"; mkdir -p "$root"
    for f in "$PREFIX"/debs/*.deb; do dpkg -x "$f" "$root" || note+="dpkg -x failed: $(basename "$f"); "; done
    libdir="$root/usr/lib/x86_64-linux-gnu"
    # .pc files say prefix=/usr: point them at the unpacked tree
    for pc in "$libdir"/pkgconfig/*.pc "$root"/usr/share/pkgconfig/*.pc; do
      [ -f "$pc" ] && sed -i "s|^prefix=/usr\$|prefix=$root/usr|" "$pc"
    done
    # -dev symlinks to runtime files that did not travel (libarchive.so -> .so.13.x): use the
    # system's library of the same soname
    for l in "$libdir"/*.so; do
      [ -L "$l" ] && [ ! -e "$l" ] || continue
      target="$(readlink "$l")"; soname="$(echo "$target" | sed -E 's/^(.*\.so\.[0-9]+).*/\1/')"
      sys="$(ldconfig -p | awk -v s="$soname" '$1 == s && /x86-64/ {print $NF; exit}')"
      if [ -n "$sys" ]; then ln -sf "$sys" "$l"; else note+="no system $soname for $(basename "$l"); "; fi
    done
    export CMAKE_PREFIX_PATH="$root/usr${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
    export PKG_CONFIG_PATH="$libdir/pkgconfig:$root/usr/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
    export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  [ -d "$PREFIX/golden" ] && export CLIPCU_GOLDEN="$PREFIX/golden"
  [ -f "$PREFIX/vocab/bpe_simple_vocab_16e6.txt.gz" ] && export CLIPCU_VOCAB="$PREFIX/vocab/bpe_simple_vocab_16e6.txt.gz"
  record "prefix $PREFIX" "$([ -z "$note" ] && echo PASS || echo FAIL)" $(( $(now) - t )) \
    "${note:-debs unpacked; CLIPCU_GOLDEN=${CLIPCU_GOLDEN:-unset}}"
fi

# ---------------------------------------------------------------- configure + build
if [ "$BENCH_ONLY" -eq 1 ]; then
  # no make: the tree copied anew may look newer than the build and would rebuild it all
  if [ -x "$BUILD/bench/bench_cuda_ops" ]; then
    record build SKIP 0 "--bench-only: the programs an earlier call built in $BUILD"
  else
    record build "NOT RUN" 0 "--bench-only: no earlier build in $BUILD (run the full check first on this machine)"
  fi
else
timed 120 cmake -S "$repo" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DCLIPCU_CUDA=ON \
  "-DCMAKE_CUDA_ARCHITECTURES=$ARCH" "-DCMAKE_CUDA_COMPILER=$NVCC" >>"$OUTDIR/build.log" 2>&1
if [ "$RC" -ne 0 ]; then
  record configure "$(verdict $RC)" "$SECS" "see build.log"
else
  record configure PASS "$SECS" "$(grep -E 'clipcu: (CUDA|OpenBLAS)' "$OUTDIR/build.log" | sed 's/-- //' | tr '\n' ' ')"
  # First the GPU programs: every test_cuda_* and bench_cuda_* program and bench_step (its GPU
  # steps), names from the generator's target list; the other targets are built later, before
  # `ctest -LE cuda`, so that the GPU tests, sanitizers and benchmarks come first in the budget.
  mapfile -t cuda_targets < <(cmake --build "$BUILD" --target help 2>/dev/null | grep -oE '\b((test|bench)_cuda[a-z0-9_]*|bench_step)\b' | sort -u)
  [ ${#cuda_targets[@]} -gt 0 ] || cuda_targets=(test_cuda_ops bench_cuda_ops)
  if [ "$BENCH" -eq 0 ]; then  # --no-bench: the test programs only
    mapfile -t cuda_targets < <(printf '%s\n' "${cuda_targets[@]}" | grep -v '^bench_')
  fi
  targets=(--target "${cuda_targets[@]}"); what="${cuda_targets[*]}"
  # -k: a target that fails to build does not stop the others (their tests still run below)
  timed 300 cmake --build "$BUILD" -j "$JOBS" "${targets[@]}" -- -k >>"$OUTDIR/build.log" 2>&1
  if [ "$RC" -eq 0 ]; then
    warnings=$(grep -c -i 'warning' "$OUTDIR/build.log")
    record build PASS "$SECS" "$what, -j$JOBS; $warnings lines mention a warning"
  else
    errs="$(grep -E 'error' "$OUTDIR/build.log" | head -3 | tr '|' '/' | cut -c1-160 | tr '\n' ' ')"
    record build "$(verdict $RC)" "$SECS" "$what: $errs"
  fi
fi
fi  # --bench-only

# ---------------------------------------------------------------- benchmarks (function)
# run_benches PATTERN: every executable bench/PATTERN, each for at most 90 s, into bench.log.
run_benches() {
  local b name
  for b in "$BUILD"/bench/$1; do
    [ -x "$b" ] || continue
    # run_gpu_benchmarks.sh ran the GPU programs and bench_step's GPU steps
    [[ "$b" == */bench_cuda* ]] && continue
    name="$(basename "$b")"
    echo "===== $name" >>"$OUTDIR/bench.log"
    # Google Benchmark >= 1.8 wants a unit on --benchmark_min_time, older ones refuse it
    local mt=0.05s
    "$b" --benchmark_min_time=$mt --benchmark_list_tests >/dev/null 2>&1 || mt=0.05
    local filter=()
    [[ "$b" == */bench_step ]] && filter=("--benchmark_filter=-gpu")  # the CPU steps only
    timed 45 "$b" --benchmark_min_time=$mt --benchmark_counters_tabular=true "${filter[@]}" >>"$OUTDIR/bench.log" 2>&1
    record "bench $name" "$(verdict $RC)" "$SECS" ""
    [ "$(left)" -lt 30 ] && break
  done
}
# ---------------------------------------------------------------- GPU benchmarks
run_gpu_benches() {
  # bench/run_gpu_benchmarks.sh: every bench_cuda_* program, bench_step's GPU steps and PyTorch
  # beside them, one table (bench_table.md) and the JSON of both sides (bench_json.tgz)
  if [ "$BENCH_BUDGET" -le 0 ]; then
    record "GPU benchmarks (bench/run_gpu_benchmarks.sh)" SKIP 0 "--bench-budget 0: built for a --bench-only call"
    return
  fi
  gb="$(mktemp -d)"
  echo "===== bench/run_gpu_benchmarks.sh" >>"$OUTDIR/bench.log"
  bb=$(( $(left) - 45 )); [ "$bb" -gt "$BENCH_BUDGET" ] && bb="$BENCH_BUDGET"
  [ "$bb" -lt 30 ] && bb=30
  timed $((bb + 30)) "$repo/bench/run_gpu_benchmarks.sh" "$gb" "$BUILD" --budget "$bb" \
    $([ "$CUDA_ONLY" -eq 1 ] && [ "$BENCH_ONLY" -eq 0 ] && echo --no-compile) >/dev/null 2>&1
  cat "$gb/bench_gpu.log" >>"$OUTDIR/bench.log" 2>/dev/null
  if [ -s "$gb/bench_table.md" ]; then
    cp "$gb/bench_table.md" "$OUTDIR/bench_table.md"
    (cd "$gb" && tar czf "$OUTDIR/bench_json.tgz" ./*.json 2>/dev/null)
    record "GPU benchmarks (bench/run_gpu_benchmarks.sh)" "$(verdict $RC)" "$SECS" "bench_table.md, bench_json.tgz"
    add_extra "## GPU benchmarks against cuBLAS / cuDNN / PyTorch (bench_table.md)"$'\n\n'"$(cat "$gb/bench_table.md")"
  else
    record "GPU benchmarks (bench/run_gpu_benchmarks.sh)" "FAIL" "$SECS" "no table written: see bench.log"
  fi
  rm -rf "$gb"
}
finish() {
  write_report
  echo "device-check: report in $REPORT"
  cat "$REPORT"
  [ ${#FAILED[@]} -eq 0 ]
  exit
}
: >"$OUTDIR/bench.log"

# ---------------------------------------------------------------- wgmma smoke tests
# The Hopper kernels first, alone and briefly: a fault in one would poison the CUDA context of a
# whole test program (and a hang would eat the budget). When the GEMM's fails, CLIPCU_WGMMA=0
# hides the wgmma GEMM and convolution from everything after this stage; when the convolution's
# fails, CLIPCU_CONV_WGMMA=0 hides the convolution; so the other kernels' results still come back.
: >"$OUTDIR/test_cuda.log"
# smoke NAME PROGRAM TEST_CASE UNAVAILABLE_TEXT VARIABLE
smoke() {
  local name="$1" prog="$BUILD/tests/$2" tc="$3" unavailable="$4" var="$5" asserts
  [ -x "$prog" ] || return 0
  echo "===== $2: $name" >>"$OUTDIR/test_cuda.log"
  timed 60 "$prog" "--test-case=$tc" >"$OUTDIR/.one.log" 2>&1
  cat "$OUTDIR/.one.log" >>"$OUTDIR/test_cuda.log"
  asserts="$(grep -oE '^\[doctest\] assertions: *[0-9]+' "$OUTDIR/.one.log" | grep -oE '[0-9]+$')"
  if grep -q "$unavailable" "$OUTDIR/.one.log"; then
    record "$name" SKIP "$SECS" "not available on this GPU / build (or hidden by an earlier smoke test)"
  elif [ "$RC" -eq 0 ] && [ "${asserts:-0}" -eq 0 ]; then
    record "$name" "NOT RUN" "$SECS" "no assertion ran (no GPU answered?)"
  elif [ "$RC" -eq 0 ]; then
    record "$name" PASS "$SECS" "$(grep -E 'worst rel err' "$OUTDIR/.one.log" | sed -E 's/^.*MESSAGE: //' | head -1)"
  else
    export "$var=0"
    record "$name" "$(verdict $RC)" "$SECS" "$var=0 for the rest of the run; see test_cuda.log"
  fi
  rm -f "$OUTDIR/.one.log"
}
smoke "wgmma smoke test" test_cuda_ops 'cuda gemm: wgmma smoke*' 'wgmma backend is not available' CLIPCU_WGMMA
smoke "conv wgmma smoke test" test_cuda_conv 'cuda conv2d: wgmma smoke*' 'wgmma convolution is not available' \
  CLIPCU_CONV_WGMMA
if [ "$BENCH_ONLY" -eq 1 ]; then
  record "CUDA tests, sanitizers, other tests" SKIP 0 "--bench-only"
  run_gpu_benches
  finish
fi

# ---------------------------------------------------------------- CUDA tests
# every tests/test_cuda_* program, in full, one after the other into test_cuda.log
CUDA_TESTS=()
for t in "$BUILD"/tests/test_cuda_*; do [ -x "$t" ] && CUDA_TESTS+=("$t"); done
if [ ${#CUDA_TESTS[@]} -eq 0 ]; then
  record "CUDA tests" FAIL 0 "no tests/test_cuda_* program was built"
fi
for t in "${CUDA_TESTS[@]}"; do
  name="$(basename "$t")"
  echo "===== $name" >>"$OUTDIR/test_cuda.log"
  timed 150 "$t" --duration=true >"$OUTDIR/.one.log" 2>&1
  cat "$OUTDIR/.one.log" >>"$OUTDIR/test_cuda.log"
  summary="$(grep -E '^\[doctest\] (test cases|assertions)' "$OUTDIR/.one.log" | tr '\n' ' ' | tr '|' '/')"
  if [ "$RC" -eq 77 ]; then
    record "CUDA tests ($name)" FAIL "$SECS" "exit 77: no GPU answered, the GPU tests were skipped"
  else
    record "CUDA tests ($name)" "$(verdict $RC)" "$SECS" "$summary"
  fi
done
rm -f "$OUTDIR/.one.log"
if [ ${#CUDA_TESTS[@]} -gt 0 ]; then
  worst="$(grep -E 'worst rel err' "$OUTDIR/test_cuda.log" | sed -E 's/^.*MESSAGE: //' | sort -u | sed 's/^/    /')"
  fails="$(grep -E 'ERROR:|FAILED!|^=====' -A2 "$OUTDIR/test_cuda.log" | grep -v -E '^=====|^--$' | grep -B0 -A2 -E 'ERROR:|FAILED!' | head -60 | sed 's/^/    /')"
  add_extra "## CUDA tests: worst relative error per group"$'\n\n'"${worst:-    (none printed)}"
  [ -n "$fails" ] && add_extra "## CUDA test failures (first lines; test_cuda.log has all)"$'\n\n'"$fails"
fi

# ---------------------------------------------------------------- compute-sanitizer
# memcheck over every CUDA test program, racecheck over the kernels that use shared memory; small
# shapes (CLIPCU_TEST_SMALL) and no ViT-B/32-sized cases: the tools slow kernels down a lot
: >"$OUTDIR/sanitizer.log"
sanitize() {  # tool program cases [more test cases to leave out]
  local tool="$1" prog="$2" cases="$3" exclude="*ViT-B/32*${4:+,$4}" res summary cap
  cap=$(( SAN_END - $(now) )); [ "$cap" -gt 120 ] && cap=120
  if [ "$cap" -lt 10 ]; then
    record "compute-sanitizer $tool $(basename "$prog")" "NOT RUN" 0 "the sanitizers' budget (--sanitize-budget $SAN_BUDGET) was spent"
    return
  fi
  echo "===== compute-sanitizer --tool $tool $(basename "$prog") (test cases: $cases; not: $exclude)" >>"$OUTDIR/sanitizer.log"
  timed "$cap" env CLIPCU_TEST_SMALL=1 "$SANITIZER" --tool "$tool" --error-exitcode 3 --print-limit 20 \
    "$prog" "--test-case=$cases" "--test-case-exclude=$exclude" >>"$OUTDIR/sanitizer.log" 2>&1
  summary="$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUTDIR/sanitizer.log" | tail -1)"
  case "$RC" in
    0) res=PASS ;;
    3) res="FAIL (errors found)" ;;
    124|137) res=TIMEOUT ;;
    *) res="FAIL (exit $RC: tests failed or the tool broke)" ;;
  esac
  record "compute-sanitizer $tool $(basename "$prog")" "$res" "$SECS" "${summary:-no summary line}"
}
SAN_END=$(( $(now) + SAN_BUDGET ))
if [ "$SANITIZE" -eq 1 ] && [ ${#CUDA_TESTS[@]} -gt 0 ]; then
  # memcheck over every program first (quick: 2-10 s each on an H200; the whole-model programs
  # run the trainer in child processes, which the tool follows: those command-line cases run the
  # same kernels again and are left out), then racecheck over the kernels with shared memory
  # (the convolutions, then the rest but embedding's plain row copies), which can take long
  for t in "${CUDA_TESTS[@]}"; do
    case "$(basename "$t")" in
      test_cuda_ops|test_cuda_conv) sanitize memcheck "$t" '*' ;;
      *) sanitize memcheck "$t" '*' '*train --device*,*checkpoint written on the GPU*' ;;
    esac
  done
  for name in test_cuda_conv test_cuda_ops; do
    t="$BUILD/tests/$name"
    [ -x "$t" ] || continue
    case "$name" in
      test_cuda_ops) sanitize racecheck "$t" 'cuda gemm*,cuda attention*,cuda layernorm*,cuda bias*,cuda clip loss*,cuda adamw*' ;;
      *) sanitize racecheck "$t" '*' ;;
    esac
  done
elif [ "$SANITIZE" -eq 0 ]; then
  record "compute-sanitizer" SKIP 0 "--no-sanitizers"
else
  record "compute-sanitizer" "NOT RUN" 0 "no CUDA test program was built"
fi

# Before the CPU-only tests: the benchmarks are what the GPU machine is for (CI runs the CPU
# tests on every commit), so they get their budget first.
[ "$BENCH" -eq 1 ] && run_gpu_benches

# ---------------------------------------------------------------- every other test
if [ "$CUDA_ONLY" -eq 1 ]; then
  record "ctest (all other tests)" SKIP 0 "--cuda-only"
elif [ -d "$BUILD/tests" ]; then
  timed 300 cmake --build "$BUILD" -j "$JOBS" -- -k >>"$OUTDIR/build.log" 2>&1
  if [ "$RC" -eq 0 ]; then
    record "build (all other targets)" PASS "$SECS" "-j$JOBS"
  else
    record "build (all other targets)" "$(verdict $RC)" "$SECS" "see build.log"
  fi
  # the CUDA test programs (label "cuda") ran above in full
  timed 200 ctest --test-dir "$BUILD" -j "$JOBS" --timeout 180 --output-on-failure -LE cuda >"$OUTDIR/ctest.log" 2>&1
  summary="$(grep -E 'tests passed|tests failed' "$OUTDIR/ctest.log" | tail -1)"
  failed="$(sed -n '/The following tests FAILED/,$p' "$OUTDIR/ctest.log" | grep -E '^\s+[0-9]+ - ' | head -15 | sed 's/^\s*/    /')"
  skipped="$(grep -c 'Skipped' "$OUTDIR/ctest.log")"
  record "ctest (all other tests)" "$(verdict $RC)" "$SECS" "${summary:-no summary}; $skipped lines say Skipped"
  [ -n "$failed" ] && add_extra "## ctest failures"$'\n\n'"$failed"
else
  record "ctest (all other tests)" "NOT RUN" 0 "no build"
fi

# ---------------------------------------------------------------- the other benchmarks
if [ "$BENCH" -eq 1 ] && [ "$CUDA_ONLY" -eq 0 ]; then
  run_benches 'bench_*'
elif [ "$BENCH" -eq 0 ]; then
  record bench SKIP 0 "--no-bench"
fi

finish
