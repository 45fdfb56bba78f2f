#!/usr/bin/env bash
# Training throughput, full fine-tune of a ViT-Tiny-sized model at 224 px,
# batch 32, on the CPU, from the same JPEG files on disk (decoding and
# augmentation included): vitrine's trainer vs a plain PyTorch loop
# (torchvision transforms, DataLoader with workers), same threads and model.
# Runs the two alternately ROUNDS times and prints the best images/s of each
# and their ratio.
#
# Usage: scripts/bench/train.sh [THREADS] [ROUNDS] [TRAIN_IMAGES]
#   THREADS       torch threads on both sides, and DataLoader workers (default: nproc)
#   ROUNDS        alternating runs per side (default 2)
#   TRAIN_IMAGES  one epoch over this many images, batch 32 (default 448: 14 steps,
#                 the first 2 are warm-up and not timed)
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${1:-$(nproc)}
rounds=${2:-2}
train=${3:-448}
py=${VITRINE_PYTHON:-$PWD/.venv/bin/python}
export LIBTORCH_USE_PYTORCH=1 VIRTUAL_ENV=${VIRTUAL_ENV:-$PWD/.venv}
fixtures=data/cache/bench-train
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$py" scripts/bench/train_fixtures.py "$fixtures" --train "$train" --validation 16
cargo build -q --release --example bench_train
config='{"mode":"full","epochs":1,"batch_size":32,"learning_rate":5e-5,"augmentation":true}'

results=()
for r in $(seq "$rounds"); do
  ours=$(target/release/examples/bench_train "$fixtures/images.zip" "$fixtures/vit-tiny" \
    "$work/run" "$threads" "$config" 2)
  echo "round $r vitrine: $ours" >&2
  theirs=$("$py" scripts/bench/train_torch.py "$fixtures/images" "$fixtures/vit-tiny" \
    "$threads" "$threads" 32 2 2>/dev/null)
  echo "round $r pytorch: $theirs" >&2
  results+=("$ours" "$theirs")
done

"$py" - "${results[@]}" <<'PY'
import json, sys
runs = [json.loads(a) for a in sys.argv[1:]]
best = {}
for r in runs:
    best[r["impl"]] = max(best.get(r["impl"], 0), r["images_per_sec"])
ours, theirs = best["vitrine"], best["pytorch"]
print(f"full fine-tune, ViT-Tiny @224, batch 32, {runs[0]['threads']} threads, "
      f"JPEG decode + augmentation included (best of {len(runs) // 2})")
print(f"  vitrine trainer:                       {ours:7.2f} images/s")
print(f"  PyTorch loop (torchvision, DataLoader): {theirs:7.2f} images/s")
print(f"  ratio vitrine / PyTorch: {ours / theirs:.3f}x")
PY
