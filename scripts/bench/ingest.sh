#!/usr/bin/env bash
# Ingestion benchmark: uploading N photos of 4000x3000 (12 MP JPEGs) to
# POST /datasets until the dataset is `ready` (extraction, decoding every
# image, hashing, layout, manifest), against Pillow's verify() + load() of
# the same files in a process pool on the same cores; the server's peak RSS
# (VmHWM) for each N (it must not grow with the archive); and, while a
# PROBE_N-photo upload validates, POST /datasets' answer time after the
# body is read, the progress it reports, and /healthz and /predict latency
# (p50/p99) against the same probes on the idle server; then the time from
# POST /jobs to the first training step on that ready dataset.
#
# Usage: scripts/bench/ingest.sh
# Disk: about 4 x N x 410 KB at the largest N (the photos, the zip, and the
# server's kept upload and extracted copy): 16 GB for N=10000.
# Environment (all optional):
#   NS="1000 10000"     archive sizes timed (photos), each on a fresh server
#   PROBE_N=2000        photos uploaded while /healthz and /predict are probed, then
#                       trained on (time to first step, full and linear probe); 0: skip
#   THREADS=$(nproc)    --cpu-threads and --ingest-threads of vitrine; Pillow's processes
#   CACHE=data/cache/ingest-photos   where the photos are made once (~150 KB each)
#   BIN=target/release/vitrine       the binary (built unless BIN is given)
#   CLEAN=1             delete the photo cache at the end
#   KEEP=1              keep the temporary directory (printed)
set -euo pipefail
cd "$(dirname "$0")/../.."

ns=${NS-1000 10000}
probe_n=${PROBE_N:-2000}
threads=${THREADS:-$(nproc)}
cache=${CACHE:-data/cache/ingest-photos}
py=${VITRINE_PYTHON:-.venv/bin/python}
py=$(cd "$(dirname "$py")" && pwd)/$(basename "$py")
export LIBTORCH_USE_PYTORCH=1
export VIRTUAL_ENV=${VIRTUAL_ENV:-$(cd "$(dirname "$py")/.." && pwd)}
export PATH="$(dirname "$py"):$PATH"
driver=scripts/bench/ingest_bench.py

tmp=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  if [ -n "${KEEP:-}" ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
  if [ -n "${CLEAN:-}" ]; then rm -rf "$cache"; fi
}
trap cleanup EXIT
log() { echo "== $*" >&2; }

if [ -z "${BIN:-}" ]; then
  log "building the release binary"
  cargo build -q --release --bin vitrine
  BIN=target/release/vitrine
fi

free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_server DATA_DIR [extra args]: sets $url and $server_pid.
start_server() {
  local data=$1; shift
  local port; port=$(free_port)
  url=http://127.0.0.1:$port
  # The archives here outgrow the default upload limit (2 GiB) from about
  # 5,000 photos: the limit is raised to what the largest one needs.
  "$BIN" serve --listen "127.0.0.1:$port" --data-dir "$data" --devices cpu \
    --cpu-threads "$threads" --ingest-threads "$threads" \
    --max-upload-bytes $((max_n * 1024 * 1024)) "$@" >"$data.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 600); do
    curl -fs -o /dev/null "$url/readyz" && return 0
    kill -0 "$server_pid" 2>/dev/null || { cat "$data.log" >&2; return 1; }
    sleep 0.2
  done
  return 1
}
stop_server() { kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; server_pid=; }

max_n=$probe_n
for n in $ns; do [ "$n" -gt "$max_n" ] && max_n=$n; done
log "making $max_n photos of 4000x3000 in $cache (once)"
"$py" $driver photos "$cache" "$max_n" >&2

results=()
for n in $ns; do
  log "N=$n: archive, upload to ready on a fresh server, then Pillow"
  "$py" $driver archive "$cache" "$n" "$tmp/photos.zip"
  start_server "$tmp/data-$n" --no-workers
  up=$("$py" $driver upload "$url" "$tmp/photos.zip" "$server_pid")
  stop_server
  rm -rf "$tmp/data-$n" "$tmp/photos.zip"
  pil=$("$py" $driver pillow "$cache" "$n" "$threads")
  echo "vitrine N=$n: $up"
  echo "pillow  N=$n: $pil"
  results+=("$n|$up|$pil")
done

if [ "$probe_n" -gt 0 ]; then
  log "probes: a tiny model to serve, then /healthz and /predict idle and while $probe_n photos validate"
  fx=$tmp/fixtures
  mkdir -p "$fx"
  synthetic=$PWD/tests/e2e/synthetic.py
  (cd "$fx" && "$py" "$synthetic" pretrain base && "$py" "$synthetic" dataset tints.zip tints) >&2
  start_server "$tmp/data-probe"
  job=$(curl -fs -F dataset=@"$fx/tints.zip" \
    -F "config={\"base_model\":\"$fx/base\",\"mode\":\"linear_probe\",\"epochs\":1}" "$url/jobs" |
    "$py" -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  for _ in $(seq 600); do
    status=$(curl -fs "$url/jobs/$job" | "$py" -c 'import json,sys; print(json.load(sys.stdin)["status"])')
    [ "$status" = succeeded ] && break
    [ "$status" = failed ] && { echo "training the probe model failed" >&2; exit 1; }
    sleep 1
  done
  idle=$("$py" $driver idle "$url" 20)
  echo "idle probes: $idle"
  "$py" $driver archive "$cache" "$probe_n" "$tmp/photos.zip"
  busy=$("$py" $driver upload "$url" "$tmp/photos.zip" "$server_pid" probe_predict)
  echo "while validating $probe_n: $busy"
  log "time to first step on the ready $probe_n-photo dataset (tiny ViT, batch 16)"
  ds=$(echo "$busy" | "$py" -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  for mode in full linear_probe; do
    echo "time to first step: $("$py" $driver ttfs "$url" "$ds" "$fx/base" $mode)"
  done
  stop_server
fi

"$py" - "$threads" "$probe_n" "${idle:-}" "${busy:-}" "${results[@]}" <<'EOF'
import json, sys
threads, probe_n, idle, busy, rows = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
print()
print(f"Ingestion of 4000x3000 JPEGs, {threads} threads (vitrine --ingest-threads, Pillow processes)")
print(f"{'N':>6} {'archive MB':>10} {'answer ms':>9} {'to ready s':>10} {'vitrine img/s':>13} {'Pillow img/s':>12} {'ratio':>6} {'peak RSS MB':>11}")
for row in rows:
    n, up, pil = row.split("|")
    up, pil = json.loads(up), json.loads(pil)
    print(f"{n:>6} {up['archive_mb']:>10} {up['answer_after_body_ms']:>9} {up['to_ready_s']:>10} "
          f"{up['images_per_sec']:>13} {pil['images_per_sec']:>12} {up['images_per_sec'] / pil['images_per_sec']:>6.2f} {up['peak_rss_mb']:>11}")
if busy:
    idle, busy = json.loads(idle), json.loads(busy)
    lat = busy["latency_while_validating"]
    print()
    print(f"While {probe_n} photos validate: POST /datasets answered {busy['answer_after_body_ms']} ms after the body, "
          f"progress showed {busy['progress_distinct_counts']} distinct counts, ready after {busy['to_ready_s']} s "
          f"({busy['images_per_sec']} img/s), peak RSS {busy['peak_rss_mb']} MB")
    print(f"{'probe':>8} {'idle p50':>9} {'idle p99':>9} {'busy p50':>9} {'busy p99':>9} {'busy max':>9} {'n':>5}")
    for k in ("healthz", "predict"):
        print(f"{k:>8} {idle[k]['p50_ms']:>9} {idle[k]['p99_ms']:>9} {lat[k]['p50_ms']:>9} {lat[k]['p99_ms']:>9} {lat[k]['max_ms']:>9} {lat[k]['n']:>5}")
EOF
