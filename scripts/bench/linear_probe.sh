#!/usr/bin/env bash
# Linear probe, 10 epochs, on the real pre-trained DINOv2 ViT-S/14
# (scripts/fetch-dinov2-small.sh) and Fashion-MNIST images
# (scripts/fashion_mnist.py): wall time of vitrine's linear_probe run
# (features computed once and cached, head trained on the cache) vs the
# Hugging Face Trainer with the backbone frozen (the backbone's forward
# pass runs again every epoch), same images, model, epochs, batch,
# learning rate and threads. Prints both wall times and accuracies and the
# speed-up.
#
# Usage: scripts/bench/linear_probe.sh [THREADS] [TRAIN_PER_CLASS] [VAL_PER_CLASS] [EPOCHS]
#   defaults: nproc, 30, 10, 10 (300 training and 100 validation images)
set -euo pipefail
cd "$(dirname "$0")/../.."
threads=${1:-$(nproc)}
train=${2:-30}
val=${3:-10}
epochs=${4:-10}
lr=0.003
py=${VITRINE_PYTHON:-$PWD/.venv/bin/python}
export LIBTORCH_USE_PYTORCH=1 VIRTUAL_ENV=${VIRTUAL_ENV:-$PWD/.venv}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$py" -m pip install --disable-pip-version-check -q -c requirements/constraints.txt \
  -r requirements/bench.txt
model=$(VITRINE_PYTHON="$py" scripts/fetch-dinov2-small.sh | tail -n 1)
"$py" scripts/fashion_mnist.py "$work/fm.zip" --train "$train" --validation "$val" --seed 1 >/dev/null
mkdir "$work/images"
(cd "$work/images" && "$py" -m zipfile -e ../fm.zip .)
cargo build -q --release --example bench_train

config=$(printf '{"mode":"linear_probe","epochs":%d,"batch_size":32,"learning_rate":%s}' "$epochs" "$lr")
ours=$(target/release/examples/bench_train "$work/fm.zip" "$model" "$work/run" "$threads" "$config")
echo "vitrine: $ours" | cut -c1-240 >&2
theirs=$("$py" scripts/bench/linear_probe_trainer.py "$work/images" "$model" "$threads" \
  "$epochs" "$lr" 2>/dev/null | tail -n 1)
echo "trainer: $theirs" >&2

"$py" - "$ours" "$theirs" "$train" "$val" "$epochs" <<'PY'
import json, sys
ours, theirs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
train, val, epochs = sys.argv[3:6]
print(f"linear probe, DINOv2-S/14 @224, Fashion-MNIST {train}+{val} images per class, "
      f"{epochs} epochs, batch 32, {ours['threads']} threads")
print(f"  vitrine linear_probe:          {ours['wall_secs']:7.1f} s, best validation accuracy "
      f"{ours['accuracy']:.3f} (epoch {ours['best_epoch']})")
print(f"  HF Trainer, backbone frozen:   {theirs['wall_secs']:7.1f} s, best validation accuracy "
      f"{theirs['accuracy']:.3f} (epoch {theirs['best_epoch']})")
print(f"  speed-up: {theirs['wall_secs'] / ours['wall_secs']:.1f}x")
PY
