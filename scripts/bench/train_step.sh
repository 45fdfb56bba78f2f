#!/usr/bin/env bash
# The compute bound of the training benchmark: one full fine-tuning step of
# the ViT-Tiny-sized model on a fixed batch (no data loading), vitrine's
# model and AdamW vs transformers' ViT and torch.optim.AdamW, same threads.
# Alternates the two ROUNDS times; prints the best of each and the ratio.
# Usage: scripts/bench/train_step.sh [THREADS] [ROUNDS] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${1:-$(nproc)}
rounds=${2:-2}
steps=${3:-5}
py=${VITRINE_PYTHON:-$PWD/.venv/bin/python}
export LIBTORCH_USE_PYTORCH=1 VIRTUAL_ENV=${VIRTUAL_ENV:-$PWD/.venv}
cargo build -q --release --example bench_step
results=()
for r in $(seq "$rounds"); do
  ours=$(target/release/examples/bench_step "$threads" "$steps")
  theirs=$("$py" scripts/bench/train_step.py "$threads" "$steps" 2>/dev/null)
  echo "round $r: $ours $theirs" >&2
  results+=("$ours" "$theirs")
done
"$py" - "${results[@]}" <<'PY'
import json, sys
runs = [json.loads(a) for a in sys.argv[1:]]
best = {i: max(r["images_per_sec"] for r in runs if r["impl"] == i) for i in ("vitrine", "pytorch")}
print("fixed-input training step, ViT-Tiny @224, batch 32 (best of each side)")
print(f"  vitrine:  {best['vitrine']:.2f} images/s")
print(f"  PyTorch:  {best['pytorch']:.2f} images/s")
print(f"  ratio vitrine / PyTorch: {best['vitrine'] / best['pytorch']:.3f}x")
PY
