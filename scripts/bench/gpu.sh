#!/usr/bin/env bash
# The GPU check (issue 14): one command that a machine with an NVIDIA GPU and
# torch 2.11 runs in about 4-5 minutes, with no network and no Rust
# toolchain, printing one table:
#   - `vitrine info`, the card, driver, CUDA and the MFU peak it is held to;
#   - training: a random-init ViT-B/16 (made here with transformers, saved in
#     the HF layout), 10 classes, full fine-tune at 224, batch 64,
#     mixed_precision auto, 3 epochs over 8,000 synthetic JPEGs
#     (scripts/bench/train_fixtures.py --separable: the classes are learnable),
#     through POST /jobs on cuda:0, against a plain PyTorch loop over the same
#     files (scripts/bench/train_torch.py: torchvision ImageFolder + DataLoader,
#     one worker per core, pinned memory, transformers ViT with SDPA, bf16
#     autocast, torch.optim.AdamW, clip 1.0, the same schedule): steady-epoch
#     images/s (epoch 1 excluded), their ratio, MFU (images/s x GFLOP per
#     training image / the card's bf16 dense peak), loss per epoch and final
#     validation accuracy of both;
#   - /predict at concurrency 1, 32, 64 (examples/loadgen.rs) for vitrine and
#     for FastAPI + transformers.pipeline on the same GPU
#     (scripts/bench/hf_pipeline_server.py), on the trained model: images/s,
#     p50, p99 and their ratios.
# The two sides never share the GPU: each server or loop runs alone.
#
# Usage: scripts/bench/gpu.sh [--dry-run]
#   --dry-run   the same steps at a size a 2-core CPU finishes in minutes
#               (DEVICE=cpu, MODEL=vit-tiny, 160+40 images, 2 epochs, batch 16,
#               concurrency 1 and 4, 3 s points); every knob below still applies.
# Inputs (prepared where Rust is: scripts/bench/gpu_carry.sh):
#   VITRINE_BIN  the vitrine binary (default: dist/vitrine, else target/release/vitrine)
#   LOADGEN      the load generator (default: dist/loadgen, else target/release/examples/loadgen)
#   WHEELS       wheels installed (--no-index, into a temporary directory) when
#                fastapi/uvicorn/python-multipart are missing (default: dist/wheels;
#                scripts/bench/gpu_wheels.sh downloads them)
#   VITRINE_PYTHON  Python with torch 2.11 (default: .venv/bin/python, else python3);
#                its torch/lib is the libtorch the binaries load
# Knobs: DEVICE=cuda:0 MODEL=vit-base|vit-tiny TRAIN_IMAGES=8000 VAL_IMAGES=1000
#   CLASSES=10 EPOCHS=3 BATCH=64 LR=5e-5 SIDES="320 512" WORKERS=$(nproc)
#   CONCURRENCY="1 32 64" DURATION=10 WARMUP=3 REQUEST_IMAGES=32
#   PIPELINE_DTYPE=float32 PEAK_TFLOPS (override the card's peak)
#   EXTRA_PRECISIONS  other mixed_precision values, one shorter vitrine job each
#                (default on CUDA: fp16, which exercises loss scaling; on CPU: none)
#   EXTRA_EPOCHS=1  epochs of those jobs
#   JOB_TIMEOUT=180 TORCH_TIMEOUT=180  seconds each training side may take; a
#                side that fails or overruns is reported as such and the rest
#                still runs, so one device call always ends with a table
#   RESULTS_DIR  also copy table.md and results.tar.gz (every JSON and log)
#                there, even when a step fails
#   KEEP=1       keep the temporary directory (printed)
set -euo pipefail
cd "$(dirname "$0")/../.."
started=$SECONDS

dry=
case ${1:-} in
  "") ;;
  --dry-run) dry=1 ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac
if [ -n "$dry" ]; then
  : "${DEVICE:=cpu}" "${MODEL:=vit-tiny}" "${TRAIN_IMAGES:=160}" "${VAL_IMAGES:=40}"
  : "${EPOCHS:=2}" "${BATCH:=16}" "${CONCURRENCY:=1 4}" "${DURATION:=3}" "${WARMUP:=1}"
  : "${REQUEST_IMAGES:=8}" "${JOB_TIMEOUT:=900}" "${TORCH_TIMEOUT:=900}"
fi
device=${DEVICE:-cuda:0}
model=${MODEL:-vit-base}
train_n=${TRAIN_IMAGES:-8000}
val_n=${VAL_IMAGES:-1000}
classes=${CLASSES:-10}
epochs=${EPOCHS:-3}
batch=${BATCH:-64}
lr=${LR:-5e-5}
read -r side_min side_max <<<"${SIDES:-320 512}"
workers=${WORKERS:-$(nproc)}
concurrency=${CONCURRENCY:-1 32 64}
duration=${DURATION:-10}
warmup=${WARMUP:-3}
n_req=${REQUEST_IMAGES:-32}
pipeline_dtype=${PIPELINE_DTYPE:-float32}
job_timeout=${JOB_TIMEOUT:-180}
EXTRA_EPOCHS=${EXTRA_EPOCHS:-1}
torch_timeout=${TORCH_TIMEOUT:-180}
wheels=${WHEELS:-dist/wheels}
pipe_device=cpu
[[ $device == cuda* ]] && pipe_device=$device

log() { echo "== [$((SECONDS - started)) s] $*" >&2; }
die() { echo "gpu.sh: $*" >&2; exit 1; }

# --- inputs -------------------------------------------------------------
py=${VITRINE_PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
pick() { # the first existing file among the arguments; an explicit one must exist
  local explicit=$1; shift
  if [ -n "$explicit" ]; then [ -f "$explicit" ] || die "$explicit does not exist"; echo "$explicit"; return; fi
  for f in "$@"; do [ -f "$f" ] && { echo "$f"; return; }; done
}
vitrine=$(pick "${VITRINE_BIN:-}" dist/vitrine target/release/vitrine)
loadgen=$(pick "${LOADGEN:-}" dist/loadgen target/release/examples/loadgen)
[ -n "$vitrine" ] || die "no vitrine binary: build one with scripts/bench/gpu_carry.sh or set VITRINE_BIN"
[ -n "$loadgen" ] || die "no loadgen binary: build one with scripts/bench/gpu_carry.sh or set LOADGEN"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/vitrine-gpu.XXXXXX")
res=$tmp/results
logs=$res/logs
fx=$tmp/fixtures
mkdir -p "$logs"
server_pid=
reported=
# Whatever happens, print the table of what was measured and hand the
# results over before the temporary directory goes.
cleanup() {
  local rc=$?
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  if [ -z "$reported" ] && [ -f "$res/env.json" ]; then
    echo "gpu.sh stopped early (exit $rc); the table of what was measured:" >&2
    write_meta
    "$py" scripts/bench/gpu_bench.py report "$res" | tee "$res/table.md" || true
  fi
  if [ -n "${RESULTS_DIR:-}" ]; then
    mkdir -p "$RESULTS_DIR"
    if [ -f "$res/table.md" ]; then cp "$res/table.md" "$RESULTS_DIR/"; fi
    tar -czf "$RESULTS_DIR/results.tar.gz" -C "$tmp" results || true
  fi
  if [ -n "${KEEP:-}" ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
write_meta() {
  cat >"$res/meta.json" <<EOF
{"dry_run": $([ -n "$dry" ] && echo true || echo false), "device": "$device", "model": "$model",
 "model_dir": "$fx/$model", "train_images": $train_n, "val_images": $val_n, "classes": $classes,
 "epochs": $epochs, "batch": $batch, "lr": $lr, "sides": "$side_min-$side_max",
 "workers": $workers, "concurrency": [$(echo $concurrency | tr ' ' ',')], "duration": $duration,
 "warmup": $warmup, "request_images": $n_req, "pipeline_device": "$pipe_device",
 "pipeline_dtype": "$pipeline_dtype", "job_timeout": $job_timeout, "torch_timeout": $torch_timeout,
 "wall_secs": $((SECONDS - started))}
EOF
}
# One line per step that did not go as planned; the table lists them.
failed() { echo "$*" >>"$res/failures.txt"; echo "gpu.sh: $*" >&2; }

# Carried files may lose their executable bit; run copies that have it.
for b in vitrine loadgen; do
  if [ ! -x "${!b}" ]; then cp "${!b}" "$tmp/$b"; chmod +x "$tmp/$b"; printf -v "$b" %s "$tmp/$b"; fi
done

torch_lib=$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') ||
  die "$py cannot import torch"
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1
built_for=$("$vitrine" --version | sed -n 's/.*(libtorch \([^;]*\);.*/\1/p')
have=$("$py" -c 'import torch; print(torch.__version__)')
[ "${built_for%%+*}" = "${have%%+*}" ] ||
  die "$vitrine was built for libtorch $built_for but $py has torch $have"

# The pipeline server's packages: the machine's own, else the carried wheels.
server_path=${PYTHONPATH:-}
if ! "$py" -c 'import fastapi, uvicorn, python_multipart' 2>/dev/null; then
  compgen -G "$wheels/*.whl" >/dev/null ||
    die "fastapi/uvicorn/python-multipart are missing and $wheels has no wheels (scripts/bench/gpu_wheels.sh)"
  log "installing $(ls "$wheels"/*.whl | wc -l) wheels from $wheels into a temporary directory"
  "$py" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile \
    --no-cache-dir --target "$tmp/site" "$wheels"/*.whl
  server_path=$tmp/site${server_path:+:$server_path}
  PYTHONPATH=$server_path "$py" -c 'import fastapi, uvicorn, python_multipart' ||
    die "the wheels in $wheels do not import"
fi

free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
bench() { "$py" scripts/bench/gpu_bench.py "$@"; }
stop_server() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  server_pid=
}
start_vitrine() { # log-name [serve flags...]
  local name=$1; shift
  port=$(free_port)
  url=http://127.0.0.1:$port
  "$vitrine" serve --listen "127.0.0.1:$port" --data-dir "$tmp/data" --devices "$device" "$@" \
    >>"$logs/$name.log" 2>&1 &
  server_pid=$!
  bench wait "$url/readyz" "$server_pid" 300 || { tail -n 40 "$logs/$name.log" >&2; exit 1; }
}

# --- environment ----------------------------------------------------------
log "vitrine info ($vitrine, libtorch from $torch_lib)"
"$vitrine" info >"$res/info.json" 2>"$logs/info.stderr" ||
  { cat "$logs/info.stderr" >&2; die "vitrine info failed"; }
cat "$res/info.json" >&2
bench env "$res/env.json"
write_meta
if [[ $device == cuda* ]]; then
  grep -q '"cuda_available": true' "$res/info.json" ||
    die "vitrine sees no CUDA device (see vitrine info above); DEVICE=cpu runs without one"
fi

# --- fixtures -------------------------------------------------------------
log "writing $train_n + $val_n JPEGs ($side_min-$side_max px, $classes classes) and a random-init $model"
"$py" scripts/bench/train_fixtures.py "$fx" --train "$train_n" --validation "$val_n" \
  --classes "$classes" --model "$model" --sides "$side_min" "$side_max" --separable \
  --jobs "$(nproc)" 2>"$logs/fixtures.log" || { cat "$logs/fixtures.log" >&2; die "fixtures failed"; }
model_dir=$fx/$model

# --- training: vitrine through POST /jobs -----------------------------------
log "vitrine: $epochs epochs through POST /jobs on $device (at most $job_timeout s)"
start_vitrine vitrine-train
config=$(printf '{"base_model":"%s","mode":"full","epochs":%d,"batch_size":%d,"learning_rate":%s,"mixed_precision":"auto","device":"%s","seed":0}' \
  "$model_dir" "$epochs" "$batch" "$lr" "$device")
served_dir=
if bench job "$url" "$fx/images.zip" "$config" "$res/vitrine_job.json" "$job_timeout"; then
  model_id=$("$py" -c 'import json,sys; print(json.load(open(sys.argv[1]))["model_id"])' "$res/vitrine_job.json")
  served_dir=$tmp/data/models/$model_id
  [ -f "$served_dir/config.json" ] || { failed "vitrine training: no model directory at $served_dir"; served_dir=; }
else
  failed "vitrine training: the job did not succeed (its status and error are above)"
  tail -n 30 "$logs/vitrine-train.log" >&2
fi
stop_server

# --- other precisions: a shorter vitrine job each ----------------------------
# fp16 exercises the dynamic loss scaler, which bf16 never needs.
extra_precisions=${EXTRA_PRECISIONS-}
if [ -z "${EXTRA_PRECISIONS+set}" ] && [[ $device == cuda* ]]; then extra_precisions=fp16; fi
for precision in $extra_precisions; do
  log "vitrine: $EXTRA_EPOCHS epoch(s) with mixed_precision $precision (at most $job_timeout s)"
  start_vitrine "vitrine-$precision"
  config=$(printf '{"base_model":"%s","mode":"full","epochs":%d,"batch_size":%d,"learning_rate":%s,"mixed_precision":"%s","device":"%s","seed":0}' \
    "$model_dir" "$EXTRA_EPOCHS" "$batch" "$lr" "$precision" "$device")
  bench job "$url" "$fx/images.zip" "$config" "$res/vitrine_job_$precision.json" "$job_timeout" ||
    failed "vitrine training with mixed_precision $precision: the job did not succeed"
  stop_server
done

# --- training: the plain PyTorch loop ---------------------------------------
torch_flags=()
if [[ $device == cuda* ]]; then torch_flags=(--bf16 --pin-memory); fi
log "PyTorch loop: $epochs epochs on $device, $workers DataLoader workers ${torch_flags[*]} (at most $torch_timeout s)"
rc=0
timeout -k 10 "$torch_timeout" "$py" scripts/bench/train_torch.py "$fx/images" "$model_dir" \
  "$(nproc)" "$workers" "$batch" --device "$device" --epochs "$epochs" --lr "$lr" --evaluate \
  "${torch_flags[@]}" >"$res/torch.json" 2>"$logs/torch.log" || rc=$?
grep '^{"progress"' "$logs/torch.log" >&2 || true
if [ "$rc" != 0 ]; then
  failed "PyTorch loop: exit $rc$([ "$rc" = 124 ] && echo " (over $torch_timeout s)")"
  grep -v '^{"progress"' "$logs/torch.log" | tail -n 30 >&2
fi

# --- serving ----------------------------------------------------------------
mapfile -t images < <(find "$fx/images/validation" -name '*.jpg' | sort | head -n "$n_req")
run_load() { # label url concurrency
  if "$loadgen" "$2" --concurrency "$3" --duration "$duration" --warmup "$warmup" --label "$1" \
    "${images[@]}" >"$tmp/load.txt" 2>>"$logs/loadgen.log"; then
    grep -v '^LOADGEN_JSON ' "$tmp/load.txt" >&2 || true
    sed -n 's/^LOADGEN_JSON //p' "$tmp/load.txt" >>"$res/predict.jsonl"
  else
    failed "loadgen $1 c=$3 failed"
    cat "$tmp/load.txt" >&2
  fi
}
vitrine_top=
if [ -n "$served_dir" ]; then
  log "/predict: vitrine on $device (model $model_id)"
  start_vitrine vitrine-serve --no-workers
  vitrine_top=$(bench top "$url/predict" "${images[0]}") || failed "vitrine /predict failed"
  for c in $concurrency; do run_load vitrine "$url/predict" "$c"; done
  stop_server
else
  failed "vitrine /predict: skipped (no trained model); the pipeline serves the untrained base model"
fi

log "/predict: FastAPI + transformers.pipeline on $pipe_device ($pipeline_dtype)"
port=$(free_port)
url=http://127.0.0.1:$port
PYTHONPATH=$server_path "$py" scripts/bench/hf_pipeline_server.py --model "${served_dir:-$model_dir}" \
  --port "$port" --threads "$(nproc)" --device "$pipe_device" --dtype "$pipeline_dtype" \
  >>"$logs/pipeline.log" 2>&1 &
server_pid=$!
pipeline_top=
if bench wait "$url/healthz" "$server_pid" 300; then
  pipeline_top=$(bench top "$url/predict" "${images[0]}") || failed "pipeline /predict failed"
  for c in $concurrency; do run_load fastapi-pipeline "$url/predict" "$c"; done
else
  failed "the pipeline server did not come up"
  tail -n 30 "$logs/pipeline.log" >&2
fi
stop_server

# --- the table --------------------------------------------------------------
printf '{"vitrine": "%s", "pipeline": "%s"}\n' "$vitrine_top" "$pipeline_top" >"$res/tops.json"
write_meta
echo
bench report "$res" | tee "$res/table.md"
reported=1
