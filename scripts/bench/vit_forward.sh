#!/usr/bin/env bash
# ViT-B/16 forward at batch 8 on this CPU: vitrine vs transformers, same
# input, same thread count. Prints both timings and their ratio.
# Usage: scripts/bench/vit_forward.sh [THREADS] [ITERATIONS] [BATCH]
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${1:-$(nproc)}
iters=${2:-10}
batch=${3:-8}
py=${VITRINE_PYTHON:-.venv/bin/python}
export LIBTORCH_USE_PYTORCH=1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
input="$tmp/input.safetensors"

cargo build -q --example bench_vit_forward
hf=$("$py" scripts/bench/vit_forward.py "$input" "$threads" "$iters" "$batch")
ours=$(target/debug/examples/bench_vit_forward "$input" "$threads" "$iters")
echo "$hf"
echo "$ours"
"$py" - "$hf" "$ours" <<'PY'
import json, sys
hf, ours = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"vitrine / transformers median forward time: {ours['median_ms'] / hf['median_ms']:.3f}"
      f" ({ours['median_ms']} ms vs {hf['median_ms']} ms, batch {hf['batch']}, {hf['threads']} threads)")
PY
