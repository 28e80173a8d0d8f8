#!/usr/bin/env bash
# The GPU run of the moe bundle that `cargo xtask gpu-bundle` builds (target/gpu-bundle/).
#
# usage: run.sh [STAGE]... [NAME=VALUE]...
#   stages (in this order, default: all):
#     tests      every test binary in bin/tests (the cuda build of moe-kernels, moe-backends, moe-hf)
#     matrix     moe-matrix --backend cuda (the shared test matrix, cuda cells only)
#     bench      moe bench --backend cuda --json (layer timings, device ceilings, floors)
#     baseline   torch_baseline.py (HF transformers blocks and a torch._grouped_mm MoE, same shapes)
#     all        all of the above
#   NAME=VALUE arguments are exported before anything runs (same as setting them in the environment).
#
# environment:
#   OUT                  where logs and results go (default ./out)
#   MOE_CMD_TIMEOUT      seconds one command may run before it is stopped and recorded as a
#                        timeout (default 0: no limit)
#   MOE_TEST_BINS        glob of the test binaries to run (default '*': moe-kernels-lib, moe-hf-it, ...)
#   MOE_TEST_ARGS        arguments for every test binary (a name filter, --test-threads=1, --exact ...)
#   MOE_MATRIX_BACKEND   backend(s) of the matrix stage (default cuda; comma-separated)
#   MOE_MATRIX_ARGS      more moe-matrix arguments (--filter bf16 ...)
#   MOE_BENCH_PRESETS    space-separated PRESET[:WEIGHTS] runs, e.g. "mixtral-8x7b deepseek-v3:bf16"
#                        (default: one run of everything: qwen3-30b-a3b bf16 and fp8-block, mixtral-8x7b,
#                        deepseek-v3 bf16 and fp8-block); MOE_BENCH_ARGS=--sweep with MOE_BENCH_TOKENS unset
#                        runs T = 1,2,4,8,16,32,128,256,1024,2048,8192
#   MOE_BENCH_TOKENS     comma-separated token counts (default 1,8,64,512,4096)
#   MOE_BENCH_ARGS       more `moe bench` arguments (--repeats 50 --warmup 10 --device 1 ...)
#   BASELINE_PRESETS     comma-separated presets of the torch baseline (default qwen3-30b-a3b,mixtral-8x7b,deepseek-v3)
#   BASELINE_TOKENS      comma-separated token counts (default 1,8,64,512,4096)
#   BASELINE_ARGS        more torch_baseline.py arguments (--variants torch-grouped_mm --repeats 20 ...)
#   PYTHON               the python with torch and transformers (default python3)
#
# Every command runs even after a failure; each one's exit code and time are recorded, and a
# summary table closes the run (also in $OUT/summary.txt). The exit code is 0 only if every
# command that ran succeeded.

set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

STAGES=()
for arg in "$@"; do
  case "$arg" in
    *=*) export "${arg?}" ;;
    tests | matrix | bench | baseline) STAGES+=("$arg") ;;
    all) STAGES+=(tests matrix bench baseline) ;;
    -h | --help)
      sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "run.sh: unknown stage '$arg' (tests, matrix, bench, baseline, all; or NAME=VALUE)" >&2
      exit 2
      ;;
  esac
done
[ ${#STAGES[@]} -eq 0 ] && STAGES=(tests matrix bench baseline)
want() {
  local s
  for s in "${STAGES[@]}"; do [ "$s" = "$1" ] && return 0; done
  return 1
}

OUT=${OUT:-./out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export OUT
LOGS="$OUT/logs"
mkdir -p "$LOGS"

# shellcheck source=/dev/null
source "$HERE/gpu-env.sh"
export MOE_FIXTURES_DIR="$HERE/fixtures"
# moe-testkit logs its skips under $CARGO_TARGET_DIR/moe-testkit/skips.jsonl.
export CARGO_TARGET_DIR="$OUT/target"
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
PY=${PYTHON:-python3}
TIMEOUT=${MOE_CMD_TIMEOUT:-0}

SUMMARY="$OUT/summary.tsv"
: >"$SUMMARY"
FAILED=0

# step STAGE NAME LOG CMD...: runs CMD with stdout+stderr to LOG, records rc and seconds.
step() {
  local stage=$1 name=$2 log=$3
  shift 3
  local start end secs rc note
  start=$(date +%s.%N)
  printf '[%s] %s ... ' "$stage" "$name"
  if [ "$TIMEOUT" != 0 ]; then
    timeout -k 15 "$TIMEOUT" "$@" >"$log" 2>&1
  else
    "$@" >"$log" 2>&1
  fi
  rc=$?
  end=$(date +%s.%N)
  secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
  note=$(step_note "$stage" "$log")
  [ "$rc" = 124 ] && note="TIMEOUT after ${TIMEOUT}s; $note"
  printf 'rc=%s %ss %s\n' "$rc" "$secs" "$note"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$stage" "$name" "$rc" "$secs" "${log#"$OUT"/}" "$note" >>"$SUMMARY"
  if [ "$rc" != 0 ]; then
    FAILED=1
    echo "----- last lines of $log -----"
    tail -n 25 "$log"
    echo "-----"
  fi
  return 0
}

# A one-line digest of a step's log.
step_note() {
  local stage=$1 log=$2
  case "$stage" in
    tests)
      # libtest: "test result: ok. 12 passed; 0 failed; 0 ignored; ..."
      awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) g += $i } n++ }
           END { if (n) printf "%d passed, %d failed, %d ignored", p, f, g; else printf "no test result line" }' "$log"
      ;;
    matrix) grep -E '[0-9]+ passed' "$log" | tail -n 1 | tr -s ' ' | cut -c1-120 ;;
    bench) printf '%s rows in bench.jsonl so far' "$(grep -c '^{' "$OUT/bench.jsonl" 2>/dev/null || echo 0)" ;;
    baseline) printf '%s rows' "$(grep -c '"kind": "row"' "$OUT/baseline.jsonl" 2>/dev/null || echo 0)" ;;
    *) ;;
  esac
}

echo "moe GPU run: bundle $HERE, out $OUT, stages: ${STAGES[*]}"
[ -f "$HERE/BUILD.txt" ] && head -n 1 "$HERE/BUILD.txt"
{
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
} >"$LOGS/nvidia-smi.txt" 2>&1
cat "$LOGS/nvidia-smi.txt"
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" >"$LOGS/env.txt"

if want tests; then
  for bin in "$HERE"/bin/tests/*; do
    name=$(basename "$bin")
    # shellcheck disable=SC2053
    [[ $name == ${MOE_TEST_BINS:-*} ]] || continue
    # shellcheck disable=SC2086
    step tests "$name" "$LOGS/test-$name.log" "$bin" ${MOE_TEST_ARGS:-}
  done
fi

if want matrix; then
  IFS=',' read -r -a backends <<<"${MOE_MATRIX_BACKEND:-cuda}"
  matrix_args=()
  for b in "${backends[@]}"; do matrix_args+=(--backend "$b"); done
  # shellcheck disable=SC2086
  step matrix "moe-matrix ${matrix_args[*]}" "$LOGS/matrix.log" "$HERE/bin/moe-matrix" "${matrix_args[@]}" ${MOE_MATRIX_ARGS:-}
fi

if want bench; then
  : >"$OUT/bench.jsonl"
  tokens=()
  [ -n "${MOE_BENCH_TOKENS:-}" ] && tokens=(--tokens "$MOE_BENCH_TOKENS")
  read -r -a runs <<<"${MOE_BENCH_PRESETS:-all}"
  for r in "${runs[@]}"; do
    sel=()
    if [ "$r" != all ]; then
      sel=(--preset "${r%%:*}")
      [ "$r" != "${r%%:*}" ] && sel+=(--weights "${r#*:}")
    fi
    # stdout: one JSON object per row; stderr: card, ceilings, notes, warnings.
    # shellcheck disable=SC2086,SC2016
    step bench "moe bench $r" "$LOGS/bench-${r//[:\/]/_}.log" \
      bash -c '"$@" >>"$OUT/bench.jsonl"' _ "$HERE/bin/moe" bench --backend cuda --json "${sel[@]}" "${tokens[@]}" ${MOE_BENCH_ARGS:-}
  done
fi

if want baseline; then
  base=(--out "$OUT/baseline.jsonl")
  [ -n "${BASELINE_PRESETS:-}" ] && base+=(--presets "$BASELINE_PRESETS")
  [ -n "${BASELINE_TOKENS:-}" ] && base+=(--tokens "$BASELINE_TOKENS")
  # shellcheck disable=SC2086
  step baseline "torch_baseline.py" "$LOGS/baseline.log" env PYTHONUNBUFFERED=1 "$PY" "$HERE/torch_baseline.py" "${base[@]}" ${BASELINE_ARGS:-}
fi

{
  echo
  echo "=== summary ($OUT) ==="
  printf '%-9s %-44s %4s %8s  %s\n' stage command rc seconds result
  while IFS=$'\t' read -r stage name rc secs log note; do
    printf '%-9s %-44s %4s %8s  %s  (%s)\n' "$stage" "${name:0:44}" "$rc" "$secs" "$note" "$log"
  done <"$SUMMARY"
  if [ -s "$OUT/bench.jsonl" ] || [ -s "$OUT/baseline.jsonl" ]; then
    echo
    "$PY" "$HERE/torch_baseline.py" --summarize "$OUT/bench.jsonl" "$OUT/baseline.jsonl" 2>&1
  fi
} | tee "$OUT/summary.txt"
exit "$FAILED"
