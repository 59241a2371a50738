#!/usr/bin/env bash
# Build/download, on a machine with PyPI access, the wheels that benchmarks/gpu_run.sh installs on the
# GPU machine (python3.12, torch+CUDA, transformers, peft; no deepspeed; no network).
#
#   bash benchmarks/fetch_wheels.sh [DEST]        # DEST defaults to benchmarks/wheels
#
# * deepspeed is built as a pure-Python wheel (DS_BUILD_OPS=0: ops would be JIT-built on first use; the
#   trainer's configs use torch's AdamW, so the benchmark builds none). --no-build-isolation: its
#   setup.py imports torch, which must be importable here.
# * deepspeed's runtime dependencies that the GPU machine lacks are downloaded as cp312 manylinux
#   wheels. Versions are pinned to what this repository's virtualenv runs (known to work with
#   deepspeed 0.19.8); pydantic and pydantic-core must match exactly.
# * REQUIRED wheels are always installed there; OPTIONAL ones only where `import NAME` fails (so a
#   package the machine already has is never shadowed). sentencepiece/protobuf serve the tokenizer of
#   the eval benchmark.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEST="${1:-$HERE/wheels}"
PY="${PYTHON:-python}"
mkdir -p "$DEST"

# version of a package in this environment, or the fallback pin
ver() { "$PY" - "$1" "$2" <<'EOF'
import importlib.metadata as m, sys
try:
    print(m.version(sys.argv[1]))
except m.PackageNotFoundError:
    print(sys.argv[2])
EOF
}

DS_VERSION="${DS_VERSION:-0.19.8}"
REQUIRED=(
  "hjson==$(ver hjson 3.1.0)"
  "pydantic==$(ver pydantic 2.14.4)"
  "pydantic-core==$(ver pydantic-core 2.50.5)"
  "annotated-types==$(ver annotated-types 0.8.0)"
  "typing-inspection==$(ver typing-inspection 0.4.5)"
  "typing-extensions==$(ver typing-extensions 4.16.0)"
)
OPTIONAL=(
  "einops==$(ver einops 0.8.2)"
  "msgpack==$(ver msgpack 1.2.4)"
  "ninja==$(ver ninja 1.13.2)"
  "py-cpuinfo==$(ver py-cpuinfo 9.0.0)"
  "psutil==$(ver psutil 7.2.2)"
  "sentencepiece==$(ver sentencepiece 0.2.3)"
  "protobuf==$(ver protobuf 7.36.2)"
)

echo "[fetch] deepspeed==$DS_VERSION (pure-Python wheel, DS_BUILD_OPS=0)"
if ! ls "$DEST"/deepspeed-"$DS_VERSION"-*.whl >/dev/null 2>&1; then
  DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$DEST" "deepspeed==$DS_VERSION"
fi

PLAT=(--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64
      --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform manylinux2010_x86_64
      --platform manylinux_2_12_x86_64)
echo "[fetch] ${REQUIRED[*]} ${OPTIONAL[*]} (cp312, manylinux x86_64)"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLAT[@]}" --dest "$DEST" "${REQUIRED[@]}" "${OPTIONAL[@]}"

# what gpu_run.sh installs: "required" (always) / "optional" (when `import MODULE` fails) + the wheel file
{
  echo "# kind module wheel  (written by benchmarks/fetch_wheels.sh)"
  whl() { (cd "$DEST" && ls "$(echo "$1" | tr '-' '_')"-*.whl "$1"-*.whl 2>/dev/null | head -n1); }
  echo "required deepspeed $(whl deepspeed)"
  for spec in "${REQUIRED[@]}"; do
    name="${spec%%==*}"; mod="$(echo "$name" | tr '-' '_')"
    [ "$name" = "pydantic-core" ] && mod=pydantic_core
    echo "required $mod $(whl "$name")"
  done
  for spec in "${OPTIONAL[@]}"; do
    name="${spec%%==*}"; mod="$(echo "$name" | tr '-' '_')"
    case "$name" in
      py-cpuinfo) mod=cpuinfo ;;
      protobuf) mod=google.protobuf ;;
    esac
    echo "optional $mod $(whl "$name")"
  done
} > "$DEST/MANIFEST"
cat "$DEST/MANIFEST"
if grep -qE '^(required|optional) [^ ]+ *$' "$DEST/MANIFEST"; then
  echo "[fetch] some wheel is missing (see MANIFEST)" >&2
  exit 1
fi
du -sh "$DEST"
