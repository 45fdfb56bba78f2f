#!/usr/bin/env bash
# Serving benchmark: vitrine's POST /predict against a FastAPI + uvicorn
# server wrapping transformers' image-classification pipeline
# (scripts/bench/hf_pipeline_server.py), same saved model, same images, same torch
# thread count, closed-loop load at each concurrency (examples/loadgen.rs).
#
# Usage: scripts/bench/serving.sh
# Environment (all optional):
#   MODEL=dinov2-small  linear probe on data/cache/dinov2-small (DINOv2 ViT-S/14,
#                       fetched by scripts/fetch-dinov2-small.sh if absent)
#   MODEL=vit-tiny      a random-init ViT-Tiny/16 (hidden 192, 12 layers, 3 heads,
#                       224 px) saved in the HF layout, then a 1-epoch linear probe
#   THREADS=$(nproc)    torch threads for both servers
#   DURATION=15 WARMUP=3  seconds per measured point, and warmup before it
#   CONCURRENCY="1 32"  the loads to run
#   IMAGES=30           request JPEGs (640x480, quality 85)
#   ROUNDS=1            repetitions of every point (the ratios use the medians)
#   KEEP=1              keep the temporary directory (printed)
# Steps: install requirements/bench.txt (idempotent), build the release
# binary and loadgen, start vitrine on a free port with a temporary data dir,
# train the model through the API, check that both servers give the same top
# label for one image, then, at each concurrency, time a freshly started
# vitrine (--no-workers), stop it, time a freshly started Python server on
# the same model directory, stop it. The two servers never run together.
# Prints a table and the ratios; vitrine's batch-size histogram after the
# highest concurrency shows that batching happened.
set -euo pipefail
cd "$(dirname "$0")/../.."

model=${MODEL:-dinov2-small}
threads=${THREADS:-$(nproc)}
duration=${DURATION:-15}
warmup=${WARMUP:-3}
concurrency=${CONCURRENCY:-1 32}
n_images=${IMAGES:-30}
rounds=${ROUNDS:-1}
py=${VITRINE_PYTHON:-.venv/bin/python}
export LIBTORCH_USE_PYTORCH=1
export VIRTUAL_ENV=${VIRTUAL_ENV:-$(cd "$(dirname "$py")/.." && pwd)}
export PATH="$(dirname "$py"):$PATH"

# shellcheck source=scripts/bench/lib.sh
. scripts/bench/lib.sh

log "installing requirements/bench.txt"
"$py" -m pip install -q -c requirements/constraints.txt -r requirements/bench.txt

log "building the release binary and loadgen"
cargo build -q --release --bin vitrine --example loadgen
vitrine=target/release/vitrine
loadgen=target/release/examples/loadgen


# Waits until URL answers 2xx; fails if the server process died.
wait_up() {
  local url=$1 pid=$2 tries=${3:-600}
  for _ in $(seq "$tries"); do
    curl -fs -o /dev/null "$url" && return 0
    kill -0 "$pid" 2>/dev/null || { echo "server exited; log:" >&2; cat "$tmp"/*.log >&2; return 1; }
    sleep 0.5
  done
  echo "server at $url did not come up" >&2
  return 1
}

stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
}

# --- base model ---------------------------------------------------------
case $model in
  dinov2-small)
    base=data/cache/dinov2-small
    [ -f "$base/model.safetensors" ] || base=$(scripts/fetch-dinov2-small.sh | tail -n1)
    job_config='{"base_model":"'"$(realpath "$base")"'","mode":"linear_probe","epochs":2}'
    train_n=10 val_n=4
    ;;
  vit-tiny)
    base=$tmp/vit-tiny
    make_vit_tiny "$base"
    job_config='{"base_model":"'"$base"'","mode":"linear_probe","epochs":1}'
    train_n=10 val_n=4
    ;;
  *) echo "MODEL is dinov2-small or vit-tiny, not $model" >&2; exit 2 ;;
esac

# --- request images: photo-like 640x480 JPEGs ---------------------------
log "writing $n_images request images"
mkdir -p "$tmp/images"
"$py" scripts/bench/request_images.py "$tmp/images" "$n_images"
images=("$tmp"/images/*.jpg)

# --- vitrine: train through the API, then measure -----------------------
data=$tmp/data
port=$(free_port)
url=http://127.0.0.1:$port
log "starting vitrine on $url (torch threads $threads)"
"$vitrine" serve --listen "127.0.0.1:$port" --data-dir "$data" --torch-threads "$threads" \
  >"$tmp/vitrine.log" 2>&1 &
server_pid=$!
wait_up "$url/readyz" "$server_pid"

log "training a $model linear probe through POST /jobs"
"$py" scripts/fashion_mnist.py "$tmp/fm.zip" --train "$train_n" --validation "$val_n" --seed 1 >/dev/null
job=$(curl -fsS -F "dataset=@$tmp/fm.zip" -F "config=$job_config" "$url/jobs" | jq -r .id)
for _ in $(seq 1800); do
  status=$(curl -fsS "$url/jobs/$job" | jq -r .status)
  case $status in succeeded) break ;; failed|cancelled) curl -sS "$url/jobs/$job" >&2; exit 1 ;; esac
  sleep 1
done
[ "$status" = succeeded ] || { echo "job $job did not finish" >&2; exit 1; }
model_id=$(curl -fsS "$url/jobs/$job" | jq -r .model_id)
model_dir=$data/models/$model_id
[ -f "$model_dir/config.json" ] || { echo "no model directory at $model_dir" >&2; exit 1; }
log "model $model_id at $model_dir"

check_image=${images[0]}
vitrine_top=$(curl -fsS -F "image=@$check_image" "$url/predict" | jq -r '.predictions[0].label')
stop_server

start_vitrine() {
  port=$(free_port)
  url=http://127.0.0.1:$port
  "$vitrine" serve --listen "127.0.0.1:$port" --data-dir "$data" --torch-threads "$threads" \
    --no-workers >>"$tmp/vitrine.log" 2>&1 &
  server_pid=$!
  wait_up "$url/readyz" "$server_pid"
}
start_python() {
  port=$(free_port)
  url=http://127.0.0.1:$port
  "$py" scripts/bench/hf_pipeline_server.py --model "$model_dir" --port "$port" --threads "$threads" \
    >>"$tmp/python.log" 2>&1 &
  server_pid=$!
  wait_up "$url/healthz" "$server_pid"
}

log "checking that the pipeline server agrees"
start_python
python_top=$(curl -fsS -F "image=@$check_image" "$url/predict" | jq -r '.[0].label')
stop_server
if [ "$vitrine_top" != "$python_top" ]; then
  echo "top labels differ for $check_image: vitrine $vitrine_top, pipeline $python_top" >&2
  exit 1
fi
log "both servers answer \`$vitrine_top\` for $(basename "$check_image")"

results=$tmp/results.jsonl
: >"$results"
run_load() { # label url concurrency
  local load1
  load1=$(cut -d' ' -f1 /proc/loadavg)
  "$loadgen" "$2" --concurrency "$3" --duration "$duration" --warmup "$warmup" --label "$1" \
    "${images[@]}" | tee "$tmp/out.txt" | grep -v '^LOADGEN_JSON ' >&2
  sed -n 's/^LOADGEN_JSON //p' "$tmp/out.txt" | jq -c --argjson l "$load1" '. + {load1: $l}' >>"$results"
}
# Each server runs alone, freshly started, and the two alternate at each
# point so that a change in the machine's load hits both alike.
max_c=$(printf '%s\n' $concurrency | sort -n | tail -n1)
for round in $(seq "$rounds"); do
  for c in $concurrency; do
    log "round $round: vitrine c=$c"
    start_vitrine
    run_load vitrine "$url/predict" "$c"
    if [ "$c" = "$max_c" ]; then
      curl -fsS "$url/metrics" | grep '^vitrine_inference_batch_size' >"$tmp/batch_hist.txt"
    fi
    stop_server
    log "round $round: transformers pipeline c=$c"
    start_python
    run_load fastapi-pipeline "$url/predict" "$c"
    stop_server
  done
done

# --- report -------------------------------------------------------------
echo
echo "vitrine batch sizes during the last c=$max_c run (Prometheus histogram, cumulative):"
cat "$tmp/batch_hist.txt"
echo
"$py" - "$results" "$model" "$threads" "$duration" "$(uptime)" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
model, threads, duration, load = sys.argv[2:6]
print(f"model {model}, {threads} torch threads, {duration} s per point, 640x480 JPEG q85")
print(f"load: {load.strip()}")
print()
print("| server | concurrency | req/s | p50 ms | p99 ms | errors | load before |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['label']} | {r['concurrency']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | "
          f"{r['p99_ms']:.1f} | {r['errors']} | {r['load1']} |")
def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
def point(label, c, key):
    vals = [r[key] for r in rows if r["label"] == label and r["concurrency"] == c]
    return median(vals) if vals else None
print()
for c in sorted({r["concurrency"] for r in rows}):
    v = {k: point("vitrine", c, k) for k in ("rps", "p50_ms", "p99_ms")}
    p = {k: point("fastapi-pipeline", c, k) for k in ("rps", "p50_ms", "p99_ms")}
    if None in v.values() or None in p.values():
        continue
    print(f"c={c}: throughput vitrine/pipeline {v['rps'] / p['rps']:.2f}x, "
          f"p50 pipeline/vitrine {p['p50_ms'] / v['p50_ms']:.2f}x, "
          f"p99 pipeline/vitrine {p['p99_ms'] / v['p99_ms']:.2f}x")
PY
