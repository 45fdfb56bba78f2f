#!/usr/bin/env bash
# Creates or repairs the repo's .venv: torch==2.11.0 (libtorch for tch 0.24)
# and the Python references the tests compare against. Idempotent; fails
# loudly if anything would leave torch at another version.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
WANT_TORCH=2.11.0
PYTHON=${PYTHON:-python3}

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install Rust (https://rustup.rs) first" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check --quiet
     -c requirements/constraints.txt)
"${PIP[@]}" -r requirements/torch.txt
"${PIP[@]}" -r requirements/test.txt

have=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')
if [ "${have%%+*}" != "$WANT_TORCH" ]; then
  echo "setup: torch $have is installed in $VENV but vitrine needs $WANT_TORCH exactly" >&2
  echo "setup: remove $VENV and run again" >&2
  exit 1
fi
"$VENV/bin/python" -c 'import transformers, safetensors, PIL' 
touch "$VENV/.vitrine-setup"
echo "setup: torch $have ready in $VENV"
