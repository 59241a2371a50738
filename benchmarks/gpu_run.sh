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
# Knobs (environment): BENCH_BACKBONE (t5-base) BENCH_DEVICE (cuda) BENCH_PRECISION (bf16)
# BENCH_BATCHES ("64 256") BENCH_SRC_LEN (128) BENCH_TGT_LEN (8) BENCH_WARMUP (5) BENCH_STEPS (20)
# BENCH_EVAL (1) BENCH_EVAL_N (256) BENCH_COMPILE (0: 1 adds the torch.compile floor at the first batch)
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
    -h|--help) sed -n '2,22p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu_run.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done
[ "${BENCH_DRY_RUN:-0}" = 1 ] && DRY=1
if [ "$DRY" = 1 ]; then
  : "${BENCH_BACKBONE:=t5-tiny}" "${BENCH_DEVICE:=cpu}" "${BENCH_BATCHES=4 8}" "${BENCH_SRC_LEN:=32}"
  : "${BENCH_TGT_LEN:=4}" "${BENCH_WARMUP:=1}" "${BENCH_STEPS:=2}" "${BENCH_EVAL_N:=16}"
  : "${BENCH_EXTRA_ARGS:=--threads 1 --eval-train-steps 5 --eval-batch 8}" "${BENCH_PYTHON_DEFAULT:=python}"
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
read -r -a EXTRA <<< "${BENCH_EXTRA_ARGS:-}"
mkdir -p "$OUT"
LOG="$OUT/gpu_run.log"
log() { echo "[gpu_run $(date +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }

# ------------------------------------------------------------------------------------------ install
install_wheels() {
  if [ "${BENCH_FORCE_INSTALL:-0}" != 1 ] && "$PY" -c \
      "import deepspeed, sys; sys.exit(0 if deepspeed.__version__ == '0.19.8' else 1)" 2>/dev/null; then
    log "deepspeed 0.19.8 already importable: installing nothing"
    return 0
  fi
  if [ ! -f "$WHEELS/MANIFEST" ]; then
    log "no $WHEELS/MANIFEST: run benchmarks/fetch_wheels.sh where PyPI is reachable and carry benchmarks/wheels"
    return 1
  fi
  local wheels=() kind mod whl
  while read -r kind mod whl; do
    case "$kind" in required|optional) ;; *) continue ;; esac
    if [ "$kind" = optional ] && "$PY" -c "import $mod" 2>/dev/null; then
      log "have $mod: not installing $whl"
      continue
    fi
    wheels+=("$WHEELS/$whl")
  done < "$WHEELS/MANIFEST"
  mkdir -p "$SITE"
  log "installing ${#wheels[@]} wheels into $SITE"
  if ! "$PY" -m pip install --quiet --no-index --no-deps --target "$SITE" "${wheels[@]}" >>"$LOG" 2>&1; then
    log "pip install failed (see log): unpacking the wheels instead"
    for w in "${wheels[@]}"; do "$PY" -m zipfile -e "$w" "$SITE" || return 1; done
  fi
}

export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-/tmp/hyperscale_torch_ext}"
log "repo $REPO, out $OUT, python $PY, device $DEVICE, dry-run $DRY"
install_wheels || log "WARNING: wheel install failed; DeepSpeed rows will report errors"

{
  "$PY" - <<'EOF'
import importlib, platform, sys
print("python", platform.python_version(), sys.executable)
for name in ("torch", "transformers", "deepspeed", "peft", "accelerate", "pydantic", "sentencepiece", "datasets"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"), getattr(m, "__file__", ""))
    except Exception as e:
        print(name, "MISSING", type(e).__name__, e)
import torch
print("cuda available", torch.cuda.is_available(), torch.version.cuda)
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), torch.cuda.get_device_properties(0).total_memory // 2**20, "MiB")
EOF
  command -v nvidia-smi >/dev/null && nvidia-smi
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt" | tee -a "$LOG" >&2

# ------------------------------------------------------------------------------------------ runs
STATUS=0
bench() {  # bench TAG ARGS...: one benchmark process, bounded by $TIMEOUT
  local tag="$1"; shift
  log "run $tag: $*"
  timeout --kill-after=20 "${TIMEOUT}" "$PY" -m hyperscale.cli bench --device "$DEVICE" --backbone "$BACKBONE" \
      --precision "$PRECISION" --src-len "$SRC" --tgt-len "$TGT" --warmup "$WARMUP" --steps "$STEPS" \
      --json-out "$OUT/$tag.json" --table-out "$OUT/$tag.md" "$@" "${EXTRA[@]}" \
      > "$OUT/$tag.stdout" 2> "$OUT/$tag.stderr"
  local rc=$?
  [ -f "$OUT/$tag.md" ] && cat "$OUT/$tag.md"
  [ "$rc" -ne 0 ] && { log "run $tag exited $rc (tail of $tag.stderr follows)"; tail -n 15 "$OUT/$tag.stderr" >&2; STATUS=1; }
  return 0
}

# most important first: every row at each batch size; then the eval benchmark; then the extras
FIRST_B="${BATCHES%% *}"
for B in $BATCHES; do
  bench "bench_b$B" --batch "$B"
done
if [ "$EVAL" = 1 ]; then
  bench "bench_eval" --eval-only --eval-n "$EVAL_N"
fi
if [ -n "$FIRST_B" ] && [ "${BENCH_AMP:-0}" = 1 ]; then
  bench "bench_b${FIRST_B}_amp" --batch "$FIRST_B" --plain-mode amp --only floor,hyperformer++,adapters,lora,finetune
fi
if [ -n "$FIRST_B" ] && [ "${BENCH_COMPILE:-0}" = 1 ]; then
  bench "bench_b${FIRST_B}_compiled" --batch "$FIRST_B" --only floor,floor-compiled
fi
if [ -n "$FIRST_B" ] && [ "${BENCH_PROFILE:-1}" = 1 ]; then
  # a separate process: its steps run under torch.profiler (op and kernel counts per step, top ops);
  # its timings are not the reported ones
  TIMEOUT="${BENCH_PROFILE_TIMEOUT:-240}" bench "profile_b${FIRST_B}" --batch "$FIRST_B" --warmup 2 --steps 2 \
      --profile-steps 2 --profile-dir "$OUT/profile_b${FIRST_B}"
fi

# ------------------------------------------------------------------------------------------ summary
{
  echo "# hyperscale bench on $(grep '^gpu ' "$OUT/environment.txt" | head -n1 | cut -d' ' -f2- || true) ($(date -u +%Y-%m-%dT%H:%MZ))"
  grep -E '^(python|torch|transformers|deepspeed|peft) ' "$OUT/environment.txt"
  for f in "$OUT"/bench_*.md; do [ -f "$f" ] && { echo; echo "## $(basename "$f" .md)"; cat "$f"; }; done
  for d in "$OUT"/profile_b*/; do
    [ -d "$d" ] || continue
    echo; echo "## $(basename "$d"): per-step counts under torch.profiler"
    for f in "$d"*.txt; do echo "- $(basename "$f" .txt): $(sed -n 2p "$f" | sed 's/^# per step: //')"; done
  done
} > "$OUT/summary.md"
log "done (status $STATUS); tables in $OUT/summary.md"
cat "$OUT/summary.md"
exit "$STATUS"
