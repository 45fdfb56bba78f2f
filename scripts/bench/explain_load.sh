#!/usr/bin/env bash
# /predict latency (p50, p99 over 4 closed-loop clients) idle and while
# three clients keep /explain saturated (integrated gradients, 32 steps),
# and /explain latency per method, on one server: a random-init
# ViT-Tiny/16 at 224 with a 1-epoch linear probe trained through POST
# /jobs on Fashion-MNIST images (explain_load_client.py measures).
#
# Usage: scripts/bench/explain_load.sh
# Environment (all optional):
#   N=40                /predict requests per client and phase
#   VITRINE=path        the vitrine binary (default: built here, release)
#   VITRINE_ARGS=""     extra `vitrine serve` flags
#   KEEP=1              keep the temporary directory (printed)
set -euo pipefail
cd "$(dirname "$0")/../.."

n=${N:-40}
py=${VITRINE_PYTHON:-.venv/bin/python}
export LIBTORCH_USE_PYTORCH=1
# shellcheck source=scripts/bench/lib.sh
. scripts/bench/lib.sh
"$py" -c 'import requests' 2>/dev/null || "$py" -m pip install -q -c requirements/constraints.txt requests
if [ -n "${VITRINE:-}" ]; then vitrine=$VITRINE; else
  log "building the release binary"; cargo build -q --release --bin vitrine; vitrine=target/release/vitrine
fi
port=$(free_port)
url=http://127.0.0.1:$port
start() {
  # shellcheck disable=SC2086
  "$vitrine" serve --listen "127.0.0.1:$port" --data-dir "$tmp/data" ${VITRINE_ARGS:-} "$@" >>"$tmp/vitrine.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 600); do curl -fs -o /dev/null "$url/readyz" && return 0; sleep 0.5; done
  cat "$tmp/vitrine.log" >&2; return 1
}

log "a random-init ViT-Tiny/16 (224 px) and a 1-epoch linear probe"
make_vit_tiny "$tmp/base"
mkdir -p "$tmp/images"
"$py" scripts/bench/request_images.py "$tmp/images" 8
"$py" scripts/fashion_mnist.py "$tmp/fm.zip" --train 4 --validation 2 --seed 1 >/dev/null
start --devices cpu
job=$(curl -fsS -F "dataset=@$tmp/fm.zip" \
  -F 'config={"base_model":"'"$tmp/base"'","mode":"linear_probe","epochs":1}' "$url/jobs" | jq -r .id)
for _ in $(seq 600); do
  status=$(curl -fsS "$url/jobs/$job" | jq -r .status)
  case $status in succeeded) break ;; failed|cancelled) curl -sS "$url/jobs/$job" >&2; exit 1 ;; esac
  sleep 1
done
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
log "measuring (no workers)"
start --no-workers
"$py" scripts/bench/explain_load_client.py "$url" "$n" "$tmp"/images/*.jpg
