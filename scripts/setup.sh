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
"$VENV/bin/python" -c "import transformers, safetensors, PIL, datasets, onnx, onnxruntime, moto.server, boto3, peft, scipy, torchmetrics, captum, pytorch_grad_cam, cleanlab, sklearn"

# Debian packages some tests need. Optional: without them those tests skip
# (or fail under CI), so setup only warns when it cannot install them.
# apt-get runs as root, or through password-less sudo; the package lists are
# refreshed once, and only if a first install fails.
APT_REFRESHED=0
apt_install() {
  # $@: the packages.
  local run=()
  if [ "$(id -u)" = 0 ]; then
    run=(env DEBIAN_FRONTEND=noninteractive)
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    run=(sudo -n env DEBIAN_FRONTEND=noninteractive)
  else
    return 1
  fi
  command -v apt-get >/dev/null || return 1
  "${run[@]}" apt-get install -y "$@" && return 0
  # The package lists may be missing or stale: refresh them and retry once.
  if [ "$APT_REFRESHED" = 0 ]; then
    APT_REFRESHED=1
    "${run[@]}" apt-get update || return 1
  fi
  "${run[@]}" apt-get install -y "$@"
}
warn_missing() {
  # $1: the packages, $2: what skips without them.
  echo "setup: WARNING: could not install the Debian package(s) $1" >&2
  echo "setup: WARNING: (needs root or password-less sudo, and apt-get); install with" >&2
  echo "setup: WARNING:   sudo apt-get install $1" >&2
  echo "setup: WARNING: until then $2 are skipped (they fail under CI)" >&2
}

# Fashion-MNIST (Debian's dataset-fashion-mnist) for the transfer-learning
# tests and scripts/fashion_mnist.py.
# VITRINE_FASHION_MNIST overrides the directory checked (for testing this).
FASHION_MNIST=${VITRINE_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
FASHION_MNIST_PKG=dataset-fashion-mnist
if [ ! -d "$FASHION_MNIST" ]; then
  echo "setup: $FASHION_MNIST is missing; installing $FASHION_MNIST_PKG"
  apt_install "$FASHION_MNIST_PKG" || warn_missing "$FASHION_MNIST_PKG" "the Fashion-MNIST transfer tests"
fi

# Headless chromium and its WebDriver server for the web page's browser
# tests (tests/e2e/web_page.rs). VITRINE_CHROMIUM / VITRINE_CHROMEDRIVER
# name other binaries (the tests read them too).
if ! command -v "${VITRINE_CHROMIUM:-chromium}" >/dev/null \
   || ! command -v "${VITRINE_CHROMEDRIVER:-chromedriver}" >/dev/null; then
  echo "setup: chromium or chromedriver is missing; installing chromium chromium-driver"
  apt_install chromium chromium-driver || warn_missing "chromium chromium-driver" "the browser tests of the web page"
fi
# PostgreSQL for the tests that run the store and the queue on it
# (tests/common/postgres.rs starts a throwaway server with initdb/pg_ctl).
# Debian keeps the binaries in /usr/lib/postgresql/<version>/bin.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
  echo "setup: PostgreSQL (initdb, pg_ctl) is missing; installing postgresql"
  apt_install postgresql || warn_missing "postgresql" "the PostgreSQL runs of the store and queue tests"
fi
# The Gloo headers (Debian's libgloo-dev) for c10d's ProcessGroupGloo: the
# torch wheel ships c10d's headers but not Gloo's. Without them build.rs
# builds vitrine without multi-device training (docs/distributed.md).
if [ ! -f "${GLOO_INCLUDE:-/usr/include}/gloo/config.h" ]; then
  echo "setup: the Gloo headers are missing; installing libgloo-dev"
  apt_install libgloo-dev || warn_missing "libgloo-dev" "multi-device training and its tests"
fi
touch "$VENV/.vitrine-setup"
echo "setup: torch $have ready in $VENV"
