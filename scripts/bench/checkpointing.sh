#!/usr/bin/env bash
# Activation checkpointing on the CPU: full fine-tuning steps of ViT-B/16 at
# 224 px (randomly initialised) on a fixed batch, without and with
# `gradient_checkpointing`, each in its own process: seconds per step and
# peak resident memory, and their ratios.
# Usage: scripts/bench/checkpointing.sh [BATCH] [STEPS] [THREADS] [MODEL]
#   defaults: batch 16, 2 timed steps (after 1 warm-up), nproc threads, vit-base
set -euo pipefail
cd "$(dirname "$0")/../.."
batch=${1:-16}
steps=${2:-2}
threads=${3:-$(nproc)}
model=${4:-vit-base}
py=${VITRINE_PYTHON:-$PWD/.venv/bin/python}
export LIBTORCH_USE_PYTORCH=1 VIRTUAL_ENV=${VIRTUAL_ENV:-$PWD/.venv}
if [ "${PROFILE:-release}" = release ]; then
  cargo build -q --release --example bench_checkpointing; bin=target/release/examples/bench_checkpointing
else
  cargo build -q --example bench_checkpointing; bin=target/debug/examples/bench_checkpointing
fi
plain=$("$bin" "$threads" "$steps" "$model" "$batch" 0)
echo "$plain" >&2
ckpt=$("$bin" "$threads" "$steps" "$model" "$batch" 1)
echo "$ckpt" >&2
"$py" - "$plain" "$ckpt" <<'PY'
import json, sys
p, c = (json.loads(a) for a in sys.argv[1:])
print(f"{p['model']} full fine-tune, batch {p['batch']}, {p['threads']} threads")
print(f"  without checkpointing: {p['secs_per_step']:.2f} s/step, peak RSS {p['peak_rss_mib']:.0f} MiB")
print(f"  with checkpointing:    {c['secs_per_step']:.2f} s/step, peak RSS {c['peak_rss_mib']:.0f} MiB")
print(f"  peak {100 * (1 - c['peak_rss_mib'] / p['peak_rss_mib']):.0f}% lower; step time {c['secs_per_step'] / p['secs_per_step']:.2f}x")
PY
