#!/usr/bin/env bash
# Downloads the wheels scripts/bench/gpu.sh needs for its FastAPI +
# transformers.pipeline baseline on a GPU machine that has torch and
# transformers but no fastapi/uvicorn/python-multipart and no network:
# requirements/bench.txt's pins of those three and everything they need
# (starlette, pydantic, pydantic-core, anyio, h11, click, opentelemetry-api, ...),
# as binary wheels for CPython PY_VERSION on manylinux x86-64, into DEST
# (git-ignored). gpu.sh installs them with `pip install --no-index --no-deps
# --target` into a temporary directory only when the machine lacks fastapi.
#
# Usage: scripts/bench/gpu_wheels.sh [DEST]      (default dist/wheels)
#   PY_VERSION=3.12   the GPU machine's Python (3.12 on this workplace's images)
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=${1:-dist/wheels}
pyv=${PY_VERSION:-3.12}
py=${VITRINE_PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
pins=()
for name in fastapi uvicorn python-multipart; do
  pin=$(grep -i "^$name==" requirements/bench.txt) || { echo "no pin for $name in requirements/bench.txt" >&2; exit 1; }
  pins+=("$pin")
done
rm -rf "$dest"
mkdir -p "$dest"
# pip resolves the dependencies for the target interpreter and platform
# (not this one), so markers such as `python_version < '3.11'` come out right.
"$py" -m pip download -q --disable-pip-version-check --only-binary=:all: \
  --python-version "$pyv" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$dest" "${pins[@]}"
ls "$dest"
du -sh "$dest"
