#!/usr/bin/env bash
# The prepared GPU run of the benchmark (issue 6): install the carried DeepSpeed wheels, run the benchmark
# for t5-base, bf16, 128 source + 8 target tokens at batch 64 and 256 (plus the eval benchmark), and
# write JSON + tables under $OUT.
#
# On the GPU machine (python3.12, torch+CUDA, transformers, peft; no deepspeed, no network), through the
# device tool, from the repository root, with the wheels carried (benchmarks/wheels is git-ignored):
#     bash benchmarks/gpu_run.sh                      # carry: ["benchmarks/wheels"]
# Build the wheels first, where PyPI is reachable:  bash benchmarks/fetch_wheels.sh
#
# Dry run on a CPU machine (tiny backbone, a few steps, same code path; installs nothing when the
# python already imports deepspeed 0.19.8):
#     bash benchmarks/gpu_run.sh --dry-run
#
# Phase 3, the 11B target (BENCH_XXL=auto: on when the GPU has > 100 GiB, i.e. an H200; skipped with a
# note on an H100; 1 forces it, 0 skips it): t5-v1_1-xxl HyperFormer++ under the trainer's DeepSpeed
# ZeRO-2 bf16 config with activation checkpointing, built directly in bf16 on the GPU: at batch 32, then
# the largest-batch search. Knobs: BENCH_XXL_BACKBONE (t5-v1_1-xxl) BENCH_XXL_STAGE (2) BENCH_XXL_BATCH
# (32) BENCH_XXL_STEPS (5) BENCH_XXL_TIMEOUT (100 s) BENCH_XXL_SEARCH (1) BENCH_XXL_SEARCH_START (256)
# BENCH_XXL_CAP (2048) BENCH_XXL_SEARCH_SECONDS (100) BENCH_XXL_RESOLUTION (128) BENCH_XXL_FAKE_MEM_MB ("")
# BENCH_XXL_RESERVE (250 s kept free for phase 3: phase 2 passes that would eat into it are shortened
# or skipped). BENCH_DEADLINE (540 s): no benchmark process runs past this many seconds after the
# script's start (each is cut to the time left; one with under 30 s left is skipped).
#
# Knobs (environment): BENCH_BACKBONE (t5-base) BENCH_DEVICE (cuda) BENCH_PRECISION (bf16)
# BENCH_BATCHES ("64 256") BENCH_SRC_LEN (128) BENCH_TGT_LEN (8) BENCH_WARMUP (5) BENCH_STEPS (20)
# BENCH_EVAL (1) BENCH_EVAL_N (256) BENCH_COMPILE (1: the compiled rows at the first batch: floor-compiled, hyperformer++-compiled,
# ds-zero2-compiled, with floor and ds-zero2 again for ratios from the same process; 0 leaves them out)
# BENCH_AMP (0: 1 adds a --plain-mode amp pass of the plain-loop rows at the first batch)
# BENCH_PROFILE (1: a last pass at the first batch under torch.profiler: tables in $OUT/profile_bN/)
# BENCH_EXTRA_ARGS ("") BENCH_TIMEOUT (300 s per benchmark process) PYTHON (python3)
# BENCH_WHEELS (benchmarks/wheels) BENCH_SITE (/tmp/hyperscale_bench_site) BENCH_FORCE_INSTALL (0)
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,31p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu_run.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done
[ "${BENCH_DRY_RUN:-0}" = 1 ] && DRY=1
if [ "$DRY" = 1 ]; then
  : "${BENCH_BACKBONE:=t5-tiny}" "${BENCH_DEVICE:=cpu}" "${BENCH_BATCHES=4 8}" "${BENCH_SRC_LEN:=32}"
  : "${BENCH_TGT_LEN:=4}" "${BENCH_WARMUP:=1}" "${BENCH_STEPS:=2}" "${BENCH_EVAL_N:=16}"
  : "${BENCH_EXTRA_ARGS:=--threads 1 --eval-train-steps 5 --eval-batch 8}" "${BENCH_PYTHON_DEFAULT:=python}"
  : "${BENCH_XXL:=1}" "${BENCH_XXL_BACKBONE:=t5-v1_1-tiny}" "${BENCH_XXL_BATCH:=8}" "${BENCH_XXL_STEPS:=2}"
  : "${BENCH_XXL_SEARCH_START:=8}" "${BENCH_XXL_CAP:=64}" "${BENCH_XXL_SEARCH_SECONDS:=30}"
  : "${BENCH_XXL_RESOLUTION:=8}" "${BENCH_COMPILE:=0}"  # inductor's CPU codegen takes minutes on 2 cores
  : "${OUT:=$(mktemp -d /tmp/hyperscale_gpu_run_dry.XXXX)}"
  export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}"
fi
PY="${PYTHON:-${BENCH_PYTHON_DEFAULT:-python3}}"
OUT="${OUT:-$REPO/bench_out}"
BACKBONE="${BENCH_BACKBONE:-t5-base}"
DEVICE="${BENCH_DEVICE:-cuda}"
PRECISION="${BENCH_PRECISION:-bf16}"
BATCHES="${BENCH_BATCHES-64 256}"
SRC="${BENCH_SRC_LEN:-128}"
TGT="${BENCH_TGT_LEN:-8}"
WARMUP="${BENCH_WARMUP:-5}"
STEPS="${BENCH_STEPS:-20}"
EVAL="${BENCH_EVAL:-1}"
EVAL_N="${BENCH_EVAL_N:-256}"
TIMEOUT="${BENCH_TIMEOUT:-300}"
WHEELS="${BENCH_WHEELS:-$REPO/benchmarks/wheels}"
SITE="${BENCH_SITE:-/tmp/hyperscale_bench_site}"
DEADLINE="${BENCH_DEADLINE:-540}"
XXL="${BENCH_XXL:-auto}"
XXL_RESERVE="${BENCH_XXL_RESERVE:-250}"
read -r -a EXTRA <<< "${BENCH_EXTRA_ARGS:-}"
mkdir -p "$OUT"
LOG="$OUT/gpu_run.log"
log() { echo "[gpu_run $(date +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }

# ------------------------------------------------------------------------------------------ install
# install_wheels: shared with gpu_accept.sh (uses PY, WHEELS, SITE, LOG, log)
. "$REPO/benchmarks/install_wheels.sh"

export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-/tmp/hyperscale_torch_ext}"
log "repo $REPO, out $OUT, python $PY, device $DEVICE, dry-run $DRY"
install_wheels || log "WARNING: wheel install failed; DeepSpeed rows will report errors"

{
  print_environment
  command -v nvidia-smi >/dev/null && nvidia-smi
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt" | tee -a "$LOG" >&2

# ------------------------------------------------------------------------------------------ phase 3 switch
# decided before any run, so that phases 1-2 can leave it its time
GPU_MIB="$(awk '/^gpu /{print $(NF-1); exit}' "$OUT/environment.txt")"
XXL_NOTE=""
case "$XXL" in
  1) XXL_ON=1 ;;
  0) XXL_ON=0; XXL_NOTE="skipped: BENCH_XXL=0" ;;
  *) if [ -n "$GPU_MIB" ] && [ "$GPU_MIB" -gt 102400 ] 2>/dev/null; then XXL_ON=1
     else XXL_ON=0
       XXL_NOTE="skipped: $([ -n "$GPU_MIB" ] && echo "the GPU has $GPU_MIB MiB" || echo "no CUDA GPU"), not > 100 GiB: the 11B target is stated for an H200 (its largest batch is card-specific), and on an H100 this script's time goes to phases 1-2; BENCH_XXL=1 runs it anyway (batch 32 is predicted to need ~25-28 GiB)"
     fi ;;
esac
RESERVE=0
[ "$XXL_ON" = 1 ] && RESERVE="$XXL_RESERVE"
log "phase 3 (11B): $([ "$XXL_ON" = 1 ] && echo "on, ${XXL_RESERVE}s reserved" || echo "$XXL_NOTE")"

# ------------------------------------------------------------------------------------------ runs
STATUS=0
bench() {  # bench TAG ARGS...: one benchmark process, bounded by $TIMEOUT, the deadline and $RESERVE
  local tag="$1"; shift
  local left=$(( DEADLINE - SECONDS - ${RESERVE:-0} )) limit="$TIMEOUT"
  if [ "$left" -lt 30 ]; then
    log "skip $tag: ${left}s left before the deadline (${DEADLINE}s, ${RESERVE:-0}s reserved)"
    echo "skipped: ${left}s left before the script's deadline" > "$OUT/$tag.skipped"
    return 0
  fi
  [ "$left" -lt "$limit" ] && limit="$left"
  log "run $tag (timeout ${limit}s): $*"
  timeout --kill-after=20 "${limit}" "$PY" -m hyperscale.cli bench --device "$DEVICE" --backbone "$BACKBONE" \
      --precision "$PRECISION" --src-len "$SRC" --tgt-len "$TGT" --warmup "$WARMUP" --steps "$STEPS" \
      --json-out "$OUT/$tag.json" --table-out "$OUT/$tag.md" "$@" "${EXTRA[@]}" \
      > "$OUT/$tag.stdout" 2> "$OUT/$tag.stderr"
  local rc=$?
  [ -f "$OUT/$tag.md" ] && cat "$OUT/$tag.md"
  [ "$rc" -ne 0 ] && { log "run $tag exited $rc (tail of $tag.stderr follows)"; tail -n 15 "$OUT/$tag.stderr" >&2; STATUS=1; }
  return 0
}

# most important first: phase 1, every row at each batch size (only the deadline bounds it); phase 2,
# the eval benchmark and the extras (bounded so that phase 3 keeps its reserve); phase 3, the 11B target
FIRST_B="${BATCHES%% *}"
SAVED_RESERVE="$RESERVE"; RESERVE=0
for B in $BATCHES; do
  bench "bench_b$B" --batch "$B"
done
RESERVE="$SAVED_RESERVE"
if [ "$EVAL" = 1 ]; then
  bench "bench_eval" --eval-only --eval-n "$EVAL_N"
fi
if [ -n "$FIRST_B" ] && [ "${BENCH_AMP:-0}" = 1 ]; then
  bench "bench_b${FIRST_B}_amp" --batch "$FIRST_B" --plain-mode amp --only floor,hyperformer++,adapters,lora,finetune
fi
if [ -n "$FIRST_B" ] && [ "${BENCH_COMPILE:-1}" = 1 ]; then
  bench "bench_b${FIRST_B}_compiled" --batch "$FIRST_B" \
      --only floor,floor-compiled,hyperformer++-compiled,ds-zero2,ds-zero2-compiled
fi
if [ -n "$FIRST_B" ] && [ "${BENCH_PROFILE:-1}" = 1 ]; then
  # a separate process: its steps run under torch.profiler (op and kernel counts per step, top ops);
  # its timings are not the reported ones
  TIMEOUT="${BENCH_PROFILE_TIMEOUT:-240}" bench "profile_b${FIRST_B}" --batch "$FIRST_B" --warmup 2 --steps 2 \
      --profile-steps 2 --profile-dir "$OUT/profile_b${FIRST_B}"
fi

# ------------------------------------------------------------------------------------------ phase 3: 11B
# ZeRO-2 (the trainer's default engine): on one GPU it partitions nothing, but it is what a user of the
# trainer runs, and its fp32 gradient accumulation is allowed (ZeRO-0 bf16 drops it). Memory for the
# 138.5M trainable parameters (fp32 masters + Adam + fp32 gradients, ~2.2 GB, plus a 1 GB bf16 reduce
# bucket) is small next to 22 GB of weights, so ZeRO-0 would fit the same; ZeRO-3 would cost ~7x per step.
RESERVE=0
if [ "$XXL_ON" = 1 ]; then
  XXL_ARGS=(--backbone "${BENCH_XXL_BACKBONE:-t5-v1_1-xxl}" --only "ds-zero${BENCH_XXL_STAGE:-2}"
            --gradient-checkpointing --no-process-warmup)
  [ -n "${BENCH_XXL_FAKE_MEM_MB:-}" ] && XXL_ARGS+=(--fake-mem-limit-mb "$BENCH_XXL_FAKE_MEM_MB")
  TIMEOUT="${BENCH_XXL_TIMEOUT:-100}" bench "bench_xxl_b${BENCH_XXL_BATCH:-32}" "${XXL_ARGS[@]}" \
      --batch "${BENCH_XXL_BATCH:-32}" --warmup 2 --steps "${BENCH_XXL_STEPS:-5}"
  if [ "${BENCH_XXL_SEARCH:-1}" = 1 ]; then
    SEARCH_S="${BENCH_XXL_SEARCH_SECONDS:-100}"
    # its own process: a fresh CUDA context and allocator; the start row (1 warm-up + 1 timed step) is
    # the search's first try; the budget bounds the tries, the timeout adds the build and one overrun
    TIMEOUT=$(( SEARCH_S + 50 )) bench "bench_xxl_maxbatch" "${XXL_ARGS[@]}" \
        --batch "${BENCH_XXL_SEARCH_START:-256}" --warmup 1 --steps 1 --max-batch-search \
        --max-batch-cap "${BENCH_XXL_CAP:-2048}" --search-seconds "$SEARCH_S" --search-steps 1 \
        --search-resolution "${BENCH_XXL_RESOLUTION:-128}"
  fi
else
  echo "11B phase ${XXL_NOTE}" > "$OUT/bench_xxl_skipped.md"
fi

# ------------------------------------------------------------------------------------------ summary
{
  echo "# hyperscale bench on $(grep '^gpu ' "$OUT/environment.txt" | head -n1 | cut -d' ' -f2- || true) ($(date -u +%Y-%m-%dT%H:%MZ))"
  grep -E '^(python|torch|transformers|deepspeed|peft) ' "$OUT/environment.txt"
  for f in "$OUT"/bench_*.md; do [ -f "$f" ] && { echo; echo "## $(basename "$f" .md)"; cat "$f"; }; done
  for f in "$OUT"/*.skipped; do [ -f "$f" ] && { echo; echo "## $(basename "$f" .skipped): $(cat "$f")"; }; done
  for d in "$OUT"/profile_b*/; do
    [ -d "$d" ] || continue
    echo; echo "## $(basename "$d"): per-step counts under torch.profiler"
    for f in "$d"*.txt; do echo "- $(basename "$f" .txt): $(sed -n 2p "$f" | sed 's/^# per step: //')"; done
  done
} > "$OUT/summary.md"
log "done (status $STATUS); tables in $OUT/summary.md"
cat "$OUT/summary.md"
exit "$STATUS"
