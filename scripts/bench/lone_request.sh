#!/usr/bin/env bash
# Lone-request latency: vitrine's POST /predict against a FastAPI + uvicorn
# server around transformers' image-classification pipeline
# (hf_pipeline_server.py), measured by an independent client: Python
# `requests`, one 640x480 JPEG per POST, sequential (lone_request_client.py).
# Same model files (a random-init ViT-Tiny/16 at 224 with a 1-epoch linear
# probe trained through POST /jobs), same images, the servers never run
# together, alternating rounds. Prints the p50 of each run, their medians
# and the ratio vitrine / pipeline (below 1: vitrine is faster).
#
# Usage: scripts/bench/lone_request.sh
# Environment (all optional):
#   ROUNDS=3            alternating rounds (vitrine, then the pipeline)
#   N=60 WARMUP=10      timed requests per run, and untimed ones before
#   IMAGES=20           request images
#   VITRINE=path        the vitrine binary (default: built here, release)
#   VITRINE_ARGS=""     extra `vitrine serve` flags (e.g. "--cpu-threads 2")
#   BASELINE=path       another vitrine binary (an earlier build) to time in
#                       the same rounds, labelled vitrine-baseline
#   THREADS=$(nproc)    the pipeline's torch threads (torch.set_num_threads)
#   PYDEPS=dir          a --target dir holding fastapi, uvicorn,
#                       python-multipart and requests when the venv lacks
#                       them (installed there with requirements/constraints.txt)
#   KEEP=1              keep the temporary directory (printed)
set -euo pipefail
cd "$(dirname "$0")/../.."

rounds=${ROUNDS:-3}
n=${N:-60}
warmup=${WARMUP:-10}
n_images=${IMAGES:-20}
threads=${THREADS:-$(nproc)}
vitrine_args=${VITRINE_ARGS:-}
py=${VITRINE_PYTHON:-.venv/bin/python}
export LIBTORCH_USE_PYTORCH=1
export VIRTUAL_ENV=${VIRTUAL_ENV:-$(cd "$(dirname "$py")/.." && pwd)}
export PATH="$(dirname "$py"):$PATH"
if [ -n "${PYDEPS:-}" ]; then export PYTHONPATH="$PYDEPS${PYTHONPATH:+:$PYTHONPATH}"; fi

# shellcheck source=scripts/bench/lib.sh
. scripts/bench/lib.sh

if ! "$py" -c 'import fastapi, uvicorn, multipart, requests' 2>/dev/null; then
  log "installing fastapi, uvicorn, python-multipart and requests (constraints keep torch)"
  "$py" -m pip install -q -c requirements/constraints.txt -r requirements/bench.txt requests
fi
if [ -n "${VITRINE:-}" ]; then
  vitrine=$VITRINE
else
  log "building the release binary"
  cargo build -q --release --bin vitrine
  vitrine=target/release/vitrine
fi

wait_up() { # url pid
  for _ in $(seq 600); do
    curl -fs -o /dev/null "$1" && return 0
    kill -0 "$2" 2>/dev/null || { echo "server exited; log:" >&2; cat "$tmp"/*.log >&2; return 1; }
    sleep 0.5
  done
  echo "server at $1 did not come up" >&2; return 1
}
stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
}

log "making a random-init ViT-Tiny/16 (224 px) in the HF layout"
base=$tmp/vit-tiny
make_vit_tiny "$base"
mkdir -p "$tmp/images"
"$py" scripts/bench/request_images.py "$tmp/images" "$n_images"
images=("$tmp"/images/*.jpg)

data=$tmp/data
start_vitrine() { # extra flags...
  start_binary "$vitrine" "$@"
}
start_binary() { # binary, extra flags...
  local port bin=$1; shift
  port=$(free_port)
  url=http://127.0.0.1:$port
  "$bin" serve --listen "127.0.0.1:$port" --data-dir "$data" "$@" >>"$tmp/vitrine.log" 2>&1 &
  server_pid=$!
  wait_up "$url/readyz" "$server_pid"
}
start_python() {
  local port; port=$(free_port)
  url=http://127.0.0.1:$port
  "$py" scripts/bench/hf_pipeline_server.py --model "$model_dir" --port "$port" --threads "$threads" \
    >>"$tmp/python.log" 2>&1 &
  server_pid=$!
  wait_up "$url/healthz" "$server_pid"
}

log "training a 1-epoch linear probe through POST /jobs"
start_vitrine --devices cpu
"$py" scripts/fashion_mnist.py "$tmp/fm.zip" --train 4 --validation 2 --seed 1 >/dev/null
job=$(curl -fsS -F "dataset=@$tmp/fm.zip" \
  -F 'config={"base_model":"'"$base"'","mode":"linear_probe","epochs":1}' "$url/jobs" | jq -r .id)
for _ in $(seq 600); do
  status=$(curl -fsS "$url/jobs/$job" | jq -r .status)
  case $status in succeeded) break ;; failed|cancelled) curl -sS "$url/jobs/$job" >&2; exit 1 ;; esac
  sleep 1
done
[ "$status" = succeeded ] || { echo "job $job did not finish" >&2; exit 1; }
model_dir=$data/models/$(curl -fsS "$url/jobs/$job" | jq -r .model_id)
stop_server

results=$tmp/results.jsonl
: >"$results"
measure() { # label label_path
  local load1 out
  load1=$(cut -d' ' -f1 /proc/loadavg)
  out=$("$py" scripts/bench/lone_request_client.py "$url/predict" "$2" "${images[@]}" \
    --warmup "$warmup" --n "$n")
  echo "$out" | jq -c --arg l "$1" --arg load "$load1" '. + {label: $l, load1: $load}' | tee -a "$results" >&2
}
for round in $(seq "$rounds"); do
  log "round $round: vitrine $vitrine_args"
  # shellcheck disable=SC2086
  start_vitrine --no-workers $vitrine_args
  measure vitrine predictions.0.label
  stop_server
  if [ -n "${BASELINE:-}" ]; then
    log "round $round: baseline $BASELINE"
    start_binary "$BASELINE" --no-workers
    measure vitrine-baseline predictions.0.label
    stop_server
  fi
  log "round $round: transformers pipeline ($threads torch threads)"
  start_python
  measure fastapi-pipeline 0.label
  stop_server
done

"$py" - "$results" "$rounds" "$n" "$vitrine_args" "$threads" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
rounds, n, vargs, threads = sys.argv[2:6]
tops = {r["label"]: r["top"] for r in rows}
if len(set(tops.values())) != 1:
    sys.exit(f"the servers disagree on the first image's top label: {tops}")
print(f"lone /predict, ViT-Tiny/16 at 224, 640x480 JPEG, Python requests, "
      f"{rounds} alternating rounds of {n} sequential requests")
print(f"vitrine flags: {vargs or '(defaults)'}; pipeline: {threads} torch threads")
print()
print("| server | p50 ms per round | median p50 ms | p90 ms (median) |")
print("|---|---|---|---|")
med = {}
for label in ("vitrine", "vitrine-baseline", "fastapi-pipeline"):
    rs = [r for r in rows if r["label"] == label]
    if not rs:
        continue
    p50s = [r["p50_ms"] for r in rs]
    med[label] = statistics.median(p50s)
    p90 = statistics.median(r["p90_ms"] for r in rs)
    print(f"| {label} | {' / '.join(f'{p:.1f}' for p in p50s)} | {med[label]:.1f} | {p90:.1f} |")
print()
print(f"p50 ratio vitrine / pipeline: {med['vitrine'] / med['fastapi-pipeline']:.2f}")
if "vitrine-baseline" in med:
    print(f"p50 ratio baseline / pipeline: {med['vitrine-baseline'] / med['fastapi-pipeline']:.2f}")
PY
