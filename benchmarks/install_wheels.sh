# Sourced (not run) by benchmarks/gpu_run.sh and benchmarks/gpu_accept.sh: install_wheels puts what the GPU
# machine (python3.12, torch+CUDA, transformers, peft; no deepspeed, no network) lacks from the carried
# wheels (benchmarks/fetch_wheels.sh builds them, with their MANIFEST) into a --target directory, which the
# caller puts on PYTHONPATH.
#
# The caller sets PY (the python), WHEELS (the wheel directory), SITE (the --target directory) and LOG
# (the log file), and defines log MESSAGE. Nothing is installed when deepspeed 0.19.8 already imports
# (BENCH_FORCE_INSTALL=1 installs anyway); "required" wheels are always installed, "optional" ones only
# where `import MODULE` fails (a package the machine already has is never shadowed); pip's failure falls
# back to unpacking the wheels. Returns non-zero when there is nothing to install from or unpacking fails.
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

print_environment() {  # python and package versions, the GPU (uses $PY, set by the sourcing script)
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
}
