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

# Fashion-MNIST (Debian's dataset-fashion-mnist) for the transfer-learning
# tests and scripts/fashion_mnist.py. Optional: without it those tests skip
# (or fail under CI), so setup only warns when it cannot install it.
# VITRINE_FASHION_MNIST overrides the directory checked (for testing this).
FASHION_MNIST=${VITRINE_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
FASHION_MNIST_PKG=dataset-fashion-mnist
install_fashion_mnist() {
  # $@: how to run apt-get (as root, or through sudo -n).
  if ! command -v apt-get >/dev/null; then
    return 1
  fi
  "$@" apt-get install -y "$FASHION_MNIST_PKG" && return 0
  # The package lists may be missing or stale: refresh them and retry once.
  "$@" apt-get update && "$@" apt-get install -y "$FASHION_MNIST_PKG"
}
if [ ! -d "$FASHION_MNIST" ]; then
  echo "setup: $FASHION_MNIST is missing; installing $FASHION_MNIST_PKG"
  if [ "$(id -u)" = 0 ]; then
    install_fashion_mnist env DEBIAN_FRONTEND=noninteractive || fm_failed=1
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    install_fashion_mnist sudo -n env DEBIAN_FRONTEND=noninteractive || fm_failed=1
  else
    fm_failed=1
  fi
  if [ "${fm_failed:-0}" = 1 ]; then
    echo "setup: WARNING: could not install the Debian package $FASHION_MNIST_PKG" >&2
    echo "setup: WARNING: (needs root or password-less sudo, and apt-get); install it with" >&2
    echo "setup: WARNING:   sudo apt-get install $FASHION_MNIST_PKG" >&2
    echo "setup: WARNING: until then the Fashion-MNIST transfer tests are skipped (they fail under CI)" >&2
  fi
fi
touch "$VENV/.vitrine-setup"
echo "setup: torch $have ready in $VENV"
