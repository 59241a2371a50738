#!/usr/bin/env bash
# The GPU acceptance run of the real trainer (sibling of gpu_run.sh): on one GPU, within 8 minutes of wall
# time, install the carried DeepSpeed wheels, then `hyperscale train` a t5-base-shaped HyperFormer++
# (preset:t5-base, random weights, bf16, the shipped GLUE sample of configs/default.yaml) for 30 steps
# under ZeRO-2, `--resume auto` on the finished run (must exit 0, train nothing, leave an export), a
# second resume with train.max_steps=40 (10 more steps), `hyperscale export` + `hyperscale predict` of
# that ZeRO-2 run, `hyperscale eval` of that export on the GPU (its test scores must equal the run's
# results.json exactly), the memory plan checked against the trainer's engine (`plan`: benchmarks/plan_check.py
# on the README's plan-table row, configs/glue-t5-base.yaml with t5-base, 8 tasks, micro-batch 64, 128 + 8
# tokens, under ZeRO-2 and ZeRO-3: the plan's per-GPU peak less its allowance against
# torch.cuda.max_memory_allocated over 3 real steps, each stage within 15 %), the ZeRO-2 train again with
# train.compile=true, the same train + resumes under ZeRO-3, then the benchmark table (gpu_run.sh) in the time
# that is left. Phases, in order: install train-z2 resume-finished-z2 resume-extend-z2 export-z2 predict-z2
# eval-gpu-z2 plan train-compiled-z2 train-z3 resume-finished-z3 resume-extend-z3 bench (export/predict/eval and
# plan run right after the ZeRO-2 phases, before ZeRO-3's slower ones; predict and eval run with --device
# ACCEPT_DEVICE; without stage 2 in ACCEPT_STAGES, plan runs after the last train). Each prints exactly one line on
# stdout, `PASS <phase> (<s> s)` or `FAIL <phase> (<reason>)`; a failed phase does not stop the independent
# ones after it (a phase whose input is missing fails as "skipped: ..."); the last line is `SUMMARY ...`;
# exit status 0 only if every phase passed. Logs: $OUT/<phase>.log, $OUT/accept.log, $OUT/results.txt,
# $OUT/environment.txt, $OUT/eval-gpu-z2.json (the eval's scores), $OUT/plan-check.json (plan and measurement
# per stage; its PASS/FAIL lines in $OUT/plan.log and accept.log), the runs under $OUT/runs/, the benchmark's
# files under $OUT/bench/ (the device tool brings $OUT back).
#
# On the GPU machine (python3.12, torch+CUDA, transformers, peft; no deepspeed, no network), through the
# device tool, from the repository root, with the wheels carried (benchmarks/fetch_wheels.sh builds them):
#     bash benchmarks/gpu_accept.sh                   # carry: ["benchmarks/wheels"], timeout_s >= 500
#
# Dry run on a CPU machine (preset:t5-tiny, train.device=cpu, 6 + 2 steps, the same phases and ZeRO
# stages, OMP_NUM_THREADS=1, gpu_run.sh --dry-run with one batch size and three rows, the plan phase at
# micro-batch 8 measured by the CPU allocator; installs nothing when the python already imports deepspeed
# 0.19.8): about 3 minutes on 2 cores.
#     bash benchmarks/gpu_accept.sh --dry-run
#
# Knobs (environment; dry-run defaults in brackets): OUT ($REPO/accept_out [a mktemp dir]) PYTHON (python3
# [python]) ACCEPT_CONFIG (configs/default.yaml) ACCEPT_BACKBONE (preset:t5-base [preset:t5-tiny])
# ACCEPT_DEVICE (cuda [cpu]) ACCEPT_PRECISION (bf16) ACCEPT_STAGES ("2 3") ACCEPT_STEPS (30 [6])
# ACCEPT_EXTEND (10 [2]: steps the second resume adds) ACCEPT_BATCH (32 [8]: global = micro batch)
# ACCEPT_TASKS ("": the config's six [[rte,cb]]; must hold rte) ACCEPT_SRC_LEN (128 [64])
# ACCEPT_CKPT_EVERY (15 [3]) ACCEPT_EVAL_N (32 [8]: eval.max_examples per task and split)
# ACCEPT_OVERRIDES ("": more key=value overrides for every train/resume)
# ACCEPT_DEADLINE (450 s [600: 2 cores shared with other jobs]: no phase's process runs past this many seconds
# after the start; each timeout is cut to the time left, and a phase with under ACCEPT_MIN_PHASE (20 s) left
# fails as skipped; the bench phase gets what is left, so the plan phase's ~1 minute on a GPU comes out of it)
# Per-phase timeouts: ACCEPT_TIMEOUT_INSTALL (120) ACCEPT_TIMEOUT_TRAIN (150) ACCEPT_TIMEOUT_RESUME (120)
# ACCEPT_TIMEOUT_EXPORT (90) ACCEPT_TIMEOUT_PREDICT (90) ACCEPT_TIMEOUT_EVAL (90)
# ACCEPT_TIMEOUT_TRAIN_COMPILED (240) ACCEPT_TIMEOUT_PLAN (150). ACCEPT_PLAN (1; 0 leaves the plan phase out)
# ACCEPT_PLAN_CONFIG (configs/glue-t5-base.yaml, with ACCEPT_BACKBONE, ACCEPT_PRECISION, ACCEPT_SRC_LEN, 8 target
# tokens as the README's table, then ACCEPT_TASKS/ACCEPT_OVERRIDES as overrides) ACCEPT_PLAN_STAGES ("2 3")
# ACCEPT_PLAN_BATCH (64 [8]: micro-batch = global batch, the README's t5-base plan row)
# ACCEPT_PLAN_STEPS (3 [2]) ACCEPT_PLAN_TOLERANCE (0.15, of the measured peak). ACCEPT_COMPILE
# (1; 0 leaves train-compiled-z2 out) ACCEPT_COMPILE_BACKEND (inductor [aot_eager: no minute of CPU codegen]).
# ACCEPT_BENCH (1; 0 leaves the bench phase out).
# The bench phase runs gpu_run.sh (its own knobs apply) with BENCH_DEADLINE = the time left, and here by
# default BENCH_BATCHES ("64" [4]) BENCH_XXL (0) BENCH_PROFILE (0) BENCH_EVAL (0) and, in the dry run,
# BENCH_EXTRA_ARGS ("--threads 1 --only floor,hyperformer++,ds-zero2"). Install: BENCH_WHEELS
# (benchmarks/wheels) BENCH_SITE (/tmp/hyperscale_bench_site) BENCH_FORCE_INSTALL (0), as in gpu_run.sh.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu_accept.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done
[ "${ACCEPT_DRY_RUN:-0}" = 1 ] && DRY=1
if [ "$DRY" = 1 ]; then
  : "${ACCEPT_BACKBONE:=preset:t5-tiny}" "${ACCEPT_DEVICE:=cpu}" "${ACCEPT_STEPS:=6}" "${ACCEPT_EXTEND:=2}"
  : "${ACCEPT_TASKS:=[rte,cb]}" "${ACCEPT_BATCH:=8}" "${ACCEPT_SRC_LEN:=64}" "${ACCEPT_CKPT_EVERY:=3}" "${ACCEPT_EVAL_N:=8}"
  : "${ACCEPT_DEADLINE:=600}" "${ACCEPT_PYTHON_DEFAULT:=python}" "${ACCEPT_COMPILE_BACKEND:=aot_eager}"
  : "${ACCEPT_PLAN_BATCH:=8}" "${ACCEPT_PLAN_STEPS:=2}"
  : "${BENCH_COMPILE:=0}"
  : "${BENCH_BATCHES=4}" "${BENCH_EXTRA_ARGS=--threads 1 --only floor,hyperformer++,ds-zero2}"
  : "${OUT:=$(mktemp -d /tmp/hyperscale_gpu_accept_dry.XXXX)}"
  export DS_ACCELERATOR="${DS_ACCELERATOR:-cpu}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
fi
PY="${PYTHON:-${ACCEPT_PYTHON_DEFAULT:-python3}}"
OUT="${OUT:-$REPO/accept_out}"
CONFIG="${ACCEPT_CONFIG:-$REPO/configs/default.yaml}"
BACKBONE="${ACCEPT_BACKBONE:-preset:t5-base}"
DEVICE="${ACCEPT_DEVICE:-cuda}"
PRECISION="${ACCEPT_PRECISION:-bf16}"
STAGES="${ACCEPT_STAGES:-2 3}"
STEPS="${ACCEPT_STEPS:-30}"
EXTEND="${ACCEPT_EXTEND:-10}"
BATCH="${ACCEPT_BATCH:-32}"
SRC_LEN="${ACCEPT_SRC_LEN:-128}"
CKPT_EVERY="${ACCEPT_CKPT_EVERY:-15}"
EVAL_N="${ACCEPT_EVAL_N:-32}"
DEADLINE="${ACCEPT_DEADLINE:-450}"
COMPILE="${ACCEPT_COMPILE:-1}"
COMPILE_BACKEND="${ACCEPT_COMPILE_BACKEND:-inductor}"
MIN_PHASE="${ACCEPT_MIN_PHASE:-20}"
KILL_AFTER=10
WHEELS="${BENCH_WHEELS:-$REPO/benchmarks/wheels}"
SITE="${BENCH_SITE:-/tmp/hyperscale_bench_site}"
read -r -a USER_OVERRIDES <<< "${ACCEPT_OVERRIDES:-}"
[ -n "${ACCEPT_TASKS:-}" ] && USER_OVERRIDES=("data.tasks=$ACCEPT_TASKS" "${USER_OVERRIDES[@]}")
EXTENDED=$(( STEPS + EXTEND ))
TEXT="sentence1: A man is playing a guitar on the stage. sentence2: Someone is playing music."

mkdir -p "$OUT"
# this script's own outputs only (a second call on a warm machine starts clean; nothing else in $OUT is touched)
rm -rf "$OUT/runs" "$OUT/export-z2" "$OUT/bench" "$OUT"/*.log "$OUT/results.txt" "$OUT/environment.txt" \
       "$OUT/eval-gpu-z2.json" "$OUT/plan-check.json"
LOG="$OUT/accept.log"
log() { echo "[gpu_accept $(date +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }
. "$REPO/benchmarks/install_wheels.sh"  # install_wheels, print_environment

export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-/tmp/hyperscale_torch_ext}"
# one plain process per phase: no inherited launcher variables (the trainer picks a free port itself)
unset RANK LOCAL_RANK WORLD_SIZE LOCAL_WORLD_SIZE MASTER_ADDR MASTER_PORT TORCHELASTIC_RUN_ID GROUP_RANK \
      LOCAL_SIZE CROSS_RANK SLURM_PROCID SLURM_STEP_ID SLURM_STEPID
cd "$REPO" || exit 2

# ------------------------------------------------------------------------------------------ phase plumbing
PHASES=()       # every phase, in order
FAILED=()       # the failed ones
declare -A STATE  # phase -> PASS | FAIL
report() {  # report PASS|FAIL PHASE DETAIL: the phase's one line on stdout
  local line
  if [ "$1" = PASS ]; then line="PASS $2 ($3 s)"; else line="FAIL $2 ($3)"; FAILED+=("$2"); fi
  PHASES+=("$2"); STATE[$2]="$1"
  echo "$line"
  echo "$line" >> "$OUT/results.txt"
  echo "[gpu_accept $(date +%H:%M:%S)] $line" >> "$LOG"
}
passed() { [ "${STATE[$1]:-}" = PASS ]; }

last_error() {  # the most telling line of a failed process's log, on one line
  local f="$1" line
  line="$(grep -E '(Error|Exception|error:|Traceback|Killed|FAILED)' "$f" 2>/dev/null | grep -v '^\s*File ' \
          | grep -vi 'warning' | tail -n 1)"
  [ -z "$line" ] && line="$(grep -v '^\s*$' "$f" 2>/dev/null | tail -n 1)"
  line="${line#\[rank0\]: }"
  line="$(echo "$line" | tr -d '\r' | tr '()' '[]' | sed 's/^ *//')"
  echo "${line:0:220}"
}

# phase NAME TIMEOUT CHECK CMD...: run CMD (stdout + stderr to $OUT/NAME.log) under its timeout, cut to the
# time left before the deadline; then CHECK NAME T0 (a function; prints why it failed, nothing if fine)
phase() {
  local name="$1" limit="$2" check="$3"; shift 3
  local left=$(( DEADLINE - SECONDS - KILL_AFTER ))
  if [ "$left" -lt "$MIN_PHASE" ]; then
    report FAIL "$name" "skipped: ${left} s left before the ${DEADLINE} s deadline"
    return 1
  fi
  [ "$left" -lt "$limit" ] && limit="$left"
  log "phase $name (timeout ${limit} s): $*"
  local t0=$SECONDS start
  start="$(date +%s)"
  timeout --kill-after="$KILL_AFTER" "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$? why=""
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    why="timed out after ${limit} s"
  elif [ "$rc" -ne 0 ]; then
    why="exit $rc: $(last_error "$OUT/$name.log")"
  else
    why="$("$check" "$name" "$start")"
  fi
  if [ -z "$why" ]; then
    report PASS "$name" "$(( SECONDS - t0 ))"
    return 0
  fi
  report FAIL "$name" "$why"
  { echo "---- tail of $OUT/$name.log"; tail -n 25 "$OUT/$name.log"; echo "----"; } >&2
  return 1
}
skip() { report FAIL "$1" "skipped: $2"; }

# check_run RUN KIND STEP [PREV]: the run directory after a train (KIND train), a resume of the finished run
# (finished: nothing trained, nothing saved, an export there) or a resume that extends it (extend)
check_run() {
  "$PY" - "$@" <<'EOF'
import json, math, os, re, sys
from pathlib import Path

run, kind, step = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
log, start = Path(sys.argv[4]), float(sys.argv[5])
prev = int(sys.argv[6]) if len(sys.argv) > 6 else None
problems = []
latest = run / "checkpoints" / "latest"
tag = latest.read_text().strip() if latest.is_file() else None
if tag != f"step-{step:08d}":
    problems.append(f"checkpoints/latest is {tag}, not step-{step:08d}")
elif not (run / "checkpoints" / tag / "COMPLETE").exists():
    problems.append(f"checkpoint {tag} has no COMPLETE marker")
else:
    state = json.loads((run / "checkpoints" / tag / "trainer_state.json").read_text())
    if state.get("step") != step:
        problems.append(f"{tag}/trainer_state.json says step {state.get('step')}")
records = []
if (run / "train_log.jsonl").is_file():
    for line in (run / "train_log.jsonl").read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pass
steps = [r["step"] for r in records if isinstance(r.get("step"), int)]
if not steps or max(steps) != step:
    problems.append(f"train_log.jsonl ends at step {max(steps) if steps else None}, not {step}")
losses = [r["loss"] for r in records if r.get("step") == step and "loss" in r]
if kind != "finished" and (not losses or not all(math.isfinite(x) for x in losses)):
    problems.append(f"loss at step {step}: {losses}")
exports = [p for p in run.glob("export*") if (p / "hyperscale_config.json").is_file()]
if kind == "finished":
    if not exports:
        problems.append("no export in the run")
else:
    fresh = [p for p in exports if (p / "hyperscale_config.json").stat().st_mtime >= start - 1]
    if not fresh:
        problems.append("no export written by this phase")
results = run / "results.json"
if kind != "finished":
    try:
        res = json.loads(results.read_text())
        if max(int(r["step"]) for r in res.values()) != step:
            problems.append(f"results.json is not of step {step}")
    except (OSError, ValueError, KeyError, TypeError):
        problems.append("no readable results.json")
text = log.read_text(errors="replace") if log.is_file() else ""
if kind == "extend" and not re.search(rf"resumed from \S+ at step {prev}\b", text):
    problems.append(f"the log does not say 'resumed from ... at step {prev}'")
if kind == "finished" and re.search(r"saved checkpoint", text):
    problems.append("a checkpoint was saved by a resume of a finished run")
print("; ".join(problems))
EOF
  [ "$?" -eq 0 ] || echo "the run check itself failed (see above)"
}

# ------------------------------------------------------------------------------------------ 1. install
log "repo $REPO, out $OUT, python $PY, backbone $BACKBONE, device $DEVICE, stages $STAGES, dry-run $DRY"
check_install() {  # deepspeed imports now (the versions and the GPU go to $OUT/environment.txt)
  print_environment > "$OUT/environment.txt" 2>&1
  grep -E '^(python|torch|transformers|deepspeed|cuda|gpu) ' "$OUT/environment.txt" | tee -a "$LOG" >&2
  grep -q '^deepspeed [0-9]' "$OUT/environment.txt" \
    || echo "deepspeed does not import after the install: $(grep '^deepspeed' "$OUT/environment.txt" | cut -c1-200)"
}
# the shared install (benchmarks/install_wheels.sh), in its own bash so that it has a timeout
phase install "${ACCEPT_TIMEOUT_INSTALL:-120}" check_install \
    env PY="$PY" WHEELS="$WHEELS" SITE="$SITE" LOG="$OUT/install.pip.log" bash -c \
    'log() { echo "[install $(date +%H:%M:%S)] $*"; }; . "$1" && install_wheels' \
    install_wheels "$REPO/benchmarks/install_wheels.sh"

# ------------------------------------------------------------------------------------------ train + resumes
train_cmd() {  # train_cmd STAGE MAX_STEPS: CMD = `hyperscale train` of stage STAGE's run
  CMD=("$PY" -m hyperscale.cli train "$CONFIG" "output_dir=$OUT/runs/z$1" "model.backbone=$BACKBONE"
       "train.precision=$PRECISION" "train.device=$DEVICE" "deepspeed.zero_stage=$1" "train.max_steps=$2"
       "train.global_batch_size=$BATCH" "train.micro_batch_size=$BATCH" "data.max_source_length=$SRC_LEN"
       "checkpoint.every_steps=$CKPT_EVERY" "eval.max_examples=$EVAL_N"
       "logging.every_steps=$(( STEPS < 10 ? 2 : 10 ))" "logging.progress_bar=false" "${USER_OVERRIDES[@]}")
}
CHECK_STAGE=""
check_train() { check_run "$OUT/runs/z$CHECK_STAGE" train "$STEPS" "$OUT/$1.log" "$2"; }
check_finished() { check_run "$OUT/runs/z$CHECK_STAGE" finished "$STEPS" "$OUT/$1.log" "$2"; }
check_extend() { check_run "$OUT/runs/z$CHECK_STAGE" extend "$EXTENDED" "$OUT/$1.log" "$2" "$STEPS"; }
has_checkpoint() { [ -f "$OUT/runs/z$1/checkpoints/latest" ]; }

train_stage() {  # the three phases of one ZeRO stage
  local z="$1"
  CHECK_STAGE="$z"
  train_cmd "$z" "$STEPS"
  phase "train-z$z" "${ACCEPT_TIMEOUT_TRAIN:-150}" check_train "${CMD[@]}"
  if ! passed "train-z$z"; then
    skip "resume-finished-z$z" "train-z$z failed"
    skip "resume-extend-z$z" "train-z$z failed"
    return
  fi
  # the same command again: the run is complete; it must say so, print the results, keep an export, exit 0
  phase "resume-finished-z$z" "${ACCEPT_TIMEOUT_RESUME:-120}" check_finished "${CMD[@]}" --resume auto
  train_cmd "$z" "$EXTENDED"
  phase "resume-extend-z$z" "${ACCEPT_TIMEOUT_RESUME:-120}" check_extend "${CMD[@]}" --resume auto
}

check_export() {
  [ -f "$OUT/export-z2/hyperscale_config.json" ] || { echo "no export-z2/hyperscale_config.json"; return; }
  compgen -G "$OUT/export-z2/*.safetensors" >/dev/null || compgen -G "$OUT/export-z2/*.bin" >/dev/null \
    || echo "no weights in export-z2"
}
check_predict() {
  # generate: one line per text, "PREDICTION[<tab>LABEL]<tab>TEXT"; rank: a label of rte (0 or 1)
  grep -qF $'\t'"$TEXT" "$OUT/$1.log" || { echo "no prediction line for the text"; return; }
  grep -qE $'^RANK [01]\t' "$OUT/$1.log" || echo "rank mode gave no rte label: $(grep '^RANK' "$OUT/$1.log" | head -n1)"
}
predict_both() {  # the README's command (generate), then rank classification (always a valid label)
  "$PY" -m hyperscale.cli predict "$OUT/export-z2" --device "$DEVICE" --task rte "$TEXT" || return
  "$PY" -m hyperscale.cli predict "$OUT/export-z2" --device "$DEVICE" --task rte --mode rank "$TEXT" | sed 's/^/RANK /'
}
eval_export() {  # the export's test scores, as JSON, into eval-gpu-z2.json (the log keeps stderr)
  "$PY" -m hyperscale.cli eval "$OUT/export-z2" --device "$DEVICE" --json > "$OUT/eval-gpu-z2.json"
}
check_eval() {  # every metric of every task equal to the run's own results.json (same step)
  "$PY" -c 'import json, sys
e, r = (json.load(open(f))["test"] for f in sys.argv[1:])
print("" if (e["step"], e["tasks"]) == (r["step"], r["tasks"]) else
      "differs from results.json: eval step %s %s, run step %s %s" % (e["step"], e["tasks"], r["step"], r["tasks"]))' \
      "$OUT/eval-gpu-z2.json" "$OUT/runs/z2/results.json" 2>&1 | tail -n 1 | cut -c1-220
}

# ------------------------------------------------------------------------------------------ plan
# benchmarks/plan_check.py: the plan of ACCEPT_PLAN_CONFIG (this run's backbone, precision, source length, tasks)
# at micro-batch ACCEPT_PLAN_BATCH on one GPU against the trainer's engine, each of ACCEPT_PLAN_STAGES in one process
plan_check_cmd() {  # exit 0 once plan-check.json is written (check_plan judges it); else plan_check.py's status
  "$PY" "$REPO/benchmarks/plan_check.py" "$@"
  local rc=$?
  [ "$rc" -eq 1 ] && [ -f "$OUT/plan-check.json" ] && return 0
  return "$rc"
}
check_plan() {  # every stage within the tolerance; else the FAIL lines; the per-stage lines go to accept.log
  local line
  while IFS= read -r line; do log "plan: $line"; done < <(grep -E '^(PASS|FAIL) ZeRO|^  (ZeRO|activations)' "$OUT/$1.log")
  [ -f "$OUT/plan-check.json" ] || { echo "no plan-check.json"; return; }
  "$PY" -c 'import json, sys
r = json.load(open(sys.argv[1]))
bad = [s["line"].removeprefix("FAIL ") for s in r["stages"] if not s["pass"]]
print("; ".join(bad) if bad else "" if r["stages"] else "no stage was checked")' "$OUT/plan-check.json" 2>&1 \
      | tail -n 1 | tr '()' '[]' | cut -c1-300
}
PLAN_DONE=0
plan_phase() {
  PLAN_DONE=1
  [ "${ACCEPT_PLAN:-1}" = 1 ] || return 0
  export -f plan_check_cmd
  export PY OUT REPO
  # shellcheck disable=SC2086  # ACCEPT_PLAN_STAGES is a list of stages
  phase plan "${ACCEPT_TIMEOUT_PLAN:-150}" check_plan bash -c 'plan_check_cmd "$@"' plan_check_cmd \
      "${ACCEPT_PLAN_CONFIG:-$REPO/configs/glue-t5-base.yaml}" \
      "model.backbone=$BACKBONE" "train.precision=$PRECISION" "data.max_source_length=$SRC_LEN" \
      "data.max_target_length=8" "${USER_OVERRIDES[@]}" --device "$DEVICE" --stages ${ACCEPT_PLAN_STAGES:-2 3} \
      --batch "${ACCEPT_PLAN_BATCH:-64}" --steps "${ACCEPT_PLAN_STEPS:-3}" \
      --tolerance "${ACCEPT_PLAN_TOLERANCE:-0.15}" --out "$OUT"
}

for z in $STAGES; do
  train_stage "$z"
  if [ "$z" = 2 ]; then  # export + predict of the ZeRO-2 result, before ZeRO-3's slower phases
    if has_checkpoint 2; then
      phase export-z2 "${ACCEPT_TIMEOUT_EXPORT:-90}" check_export \
          "$PY" -m hyperscale.cli export "$OUT/runs/z2" "$OUT/export-z2"
    else
      skip export-z2 "no ZeRO-2 checkpoint"
    fi
    if passed export-z2; then
      export -f predict_both eval_export
      export PY TEXT OUT DEVICE
      phase predict-z2 "${ACCEPT_TIMEOUT_PREDICT:-90}" check_predict bash -o pipefail -c predict_both
      phase eval-gpu-z2 "${ACCEPT_TIMEOUT_EVAL:-90}" check_eval bash -c eval_export
    else
      skip predict-z2 "export-z2 failed"
      skip eval-gpu-z2 "export-z2 failed"
    fi
    plan_phase  # the memory plan against the engine, before ZeRO-3's slower phases
    # the same ZeRO-2 run compiled (train.compile=true): the log's "torch.compile (...): N graph(s)" line and
    # its step times against train-z2's are the first GPU measurement of the compiled trainer
    if [ "$COMPILE" = 1 ]; then
      train_cmd 2 "$STEPS"
      CMD=("${CMD[@]/#output_dir=*/output_dir=$OUT/runs/z2-compiled}" "train.compile=true"
           "train.compile_backend=$COMPILE_BACKEND")
      CHECK_STAGE="2-compiled"
      phase train-compiled-z2 "${ACCEPT_TIMEOUT_TRAIN_COMPILED:-240}" check_train "${CMD[@]}"
    fi
  fi
done

[ "$PLAN_DONE" = 1 ] || plan_phase

# ------------------------------------------------------------------------------------------ bench
check_bench() {
  ls "$OUT/bench"/bench_*.json >/dev/null 2>&1 || { echo "no benchmark ran (see bench/summary.md)"; return; }
  [ -f "$OUT/bench/summary.md" ] || echo "no bench/summary.md"
}
if [ "${ACCEPT_BENCH:-1}" = 1 ]; then
  LEFT=$(( DEADLINE - SECONDS - KILL_AFTER ))
  BENCH_ARGS=()
  [ "$DRY" = 1 ] && BENCH_ARGS=(--dry-run)
  # gpu_run.sh bounds its own processes by BENCH_DEADLINE (from its start); a little is kept for its summary
  phase bench "$LEFT" check_bench env OUT="$OUT/bench" PYTHON="$PY" BENCH_DEADLINE="$(( LEFT - 5 ))" \
      BENCH_BATCHES="${BENCH_BATCHES-64}" BENCH_XXL="${BENCH_XXL:-0}" BENCH_PROFILE="${BENCH_PROFILE:-0}" \
      BENCH_EVAL="${BENCH_EVAL:-0}" BENCH_COMPILE="${BENCH_COMPILE:-$COMPILE}" \
      BENCH_EXTRA_ARGS="${BENCH_EXTRA_ARGS:-}" BENCH_WHEELS="$WHEELS" \
      BENCH_SITE="$SITE" bash "$REPO/benchmarks/gpu_run.sh" "${BENCH_ARGS[@]}"
  [ -f "$OUT/bench/summary.md" ] && cat "$OUT/bench/summary.md" >&2
fi

# ------------------------------------------------------------------------------------------ summary
N=${#PHASES[@]}
if [ "${#FAILED[@]}" -eq 0 ]; then
  echo "SUMMARY all $N phases passed in $SECONDS s (logs in $OUT)"
  exit 0
fi
echo "SUMMARY $(( N - ${#FAILED[@]} ))/$N phases passed in $SECONDS s; FAIL: ${FAILED[*]} (logs in $OUT)"
exit 1
