#!/usr/bin/env bash
# /embed against /predict on the same model and the same images, closed-loop
# load at one concurrency (examples/loadgen.rs), alternating A B A B so a
# change in the machine's load hits both alike.
#   scripts/bench/embed_vs_predict.sh VITRINE LOADGEN BASE_MODEL DATASET_ZIP CONCURRENCY SECS IMAGE...
set -euo pipefail
vitrine=$1 loadgen=$2 base=$3 zip=$4 conc=$5 secs=$6
shift 6
tmp=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
url=http://127.0.0.1:$port
"$vitrine" serve --listen 127.0.0.1:$port --data-dir "$tmp/data" --devices cpu >"$tmp/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do curl -fsS "$url/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
job=$(curl -fsS -F "dataset=@$zip" -F "config={\"base_model\":\"$base\",\"mode\":\"linear_probe\",\"epochs\":1}" "$url/jobs" | jq -r .id)
for _ in $(seq 600); do
  s=$(curl -fsS "$url/jobs/$job" | jq -r .status)
  [ "$s" = succeeded ] && break
  [ "$s" = failed ] && { cat "$tmp/log"; exit 1; }
  sleep 0.5
done
for round in 1 2; do
  for ep in predict embed; do
    "$loadgen" "$url/$ep" --concurrency "$conc" --duration "$secs" --warmup 2 --label "$ep-$round" "$@" | grep -v '^LOADGEN_JSON '
  done
done
