#!/usr/bin/env bash
# The decode-once input cache on the CPU: a job of EPOCHS epochs, and a
# sweep of 4 candidates, over PHOTOS photo-like JPEGs of 1.0-1.4 MP (1000-1400
# px a side), before (every epoch decodes) and after (the cache), in the same
# script, same threads, same files. A randomly initialised ViT-Tiny at 224.
#
# Usage: scripts/bench/input_cache.sh [PHOTOS] [EPOCHS] [THREADS] [MODE]
#   PHOTOS   training photos (default 2000; validation adds an eighth)
#   EPOCHS   epochs of the job (default 5); sweep candidates run 2
#   THREADS  torch threads (default nproc)
#   MODE     the job's mode (default partial, unfreeze_last_n 1: the
#            network's forward pass with a light backward; `full` for a
#            compute-bound run)
# Prints each run's JSON line, then per-epoch seconds and the ratios.
set -euo pipefail
cd "$(dirname "$0")/../.."
photos=${1:-2000}
epochs=${2:-5}
threads=${3:-$(nproc)}
mode=${4:-partial}
py=${VITRINE_PYTHON:-$PWD/.venv/bin/python}
export LIBTORCH_USE_PYTORCH=1 VIRTUAL_ENV=${VIRTUAL_ENV:-$PWD/.venv}
fixtures=data/cache/bench-input-cache-$photos
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$py" scripts/bench/train_fixtures.py "$fixtures" --train "$photos" \
  --validation $((photos / 8)) --sides 1000 1400 >&2
profile=${PROFILE:-release}
if [ "$profile" = release ]; then
  cargo build -q --release --example bench_train; bin=target/release/examples/bench_train
else
  cargo build -q --example bench_train; bin=target/debug/examples/bench_train
fi
extra=""
[ "$mode" = partial ] && extra=',"unfreeze_last_n":1'
job="{\"mode\":\"$mode\"$extra,\"epochs\":$epochs,\"batch_size\":32,\"learning_rate\":1e-4,\"augmentation\":true}"

run() { # name config [cache dir]
  local out
  if [ -n "${3:-}" ]; then
    out=$(BENCH_INPUT_CACHE=$3 "$bin" "$fixtures/images.zip" "$fixtures/vit-tiny" "$work/run" "$threads" "$2" 1)
  else
    out=$("$bin" "$fixtures/images.zip" "$fixtures/vit-tiny" "$work/run" "$threads" "$2" 1)
  fi
  echo "$1 $out" | tee -a "$work/results" >&2
}

run job-before "$job"
run job-after "$job" "$work/cache-job"
for lr in 1e-3 3e-3 1e-2 3e-2; do
  cand="{\"mode\":\"linear_probe\",\"epochs\":2,\"batch_size\":32,\"learning_rate\":$lr}"
  run "sweep-before-$lr" "$cand"
done
for lr in 1e-3 3e-3 1e-2 3e-2; do
  cand="{\"mode\":\"linear_probe\",\"epochs\":2,\"batch_size\":32,\"learning_rate\":$lr}"
  run "sweep-after-$lr" "$cand" "$work/cache-sweep"
done

"$py" - "$work/results" "$photos" <<'PY'
import json, sys
runs = {}
for line in open(sys.argv[1]):
    name, js = line.split(" ", 1)
    runs[name] = json.loads(js)
photos = int(sys.argv[2])
def epochs(r):
    return [e["seconds"] for e in r["epochs"]]
b, a = runs["job-before"], runs["job-after"]
print(f"job, {photos} photos: epoch seconds before {['%.1f' % s for s in epochs(b)]}, "
      f"after {['%.1f' % s for s in epochs(a)]}")
later_b = sum(epochs(b)[1:]) / max(1, len(epochs(b)) - 1)
later_a = sum(epochs(a)[1:]) / max(1, len(epochs(a)) - 1)
print(f"job: epochs after the first {later_b:.1f} s -> {later_a:.1f} s: {later_b / later_a:.2f}x; "
      f"images/s per later epoch {photos / later_b:.1f} -> {photos / later_a:.1f}; "
      f"wall {b['wall_secs']:.1f} s -> {a['wall_secs']:.1f} s: {b['wall_secs'] / a['wall_secs']:.2f}x")
for name in ("job-before", "job-after"):
    s = runs[name]["epochs"][-1]["time_shares"]
    print(f"  {name} last epoch shares: input_wait {s['input_wait']:.1f} s, compute {s['compute']:.1f} s, "
          f"optimizer {s['optimizer']:.1f} s, eval {s['eval']:.1f} s of {s['wall']:.1f} s")
sb = sum(r["wall_secs"] for n, r in runs.items() if n.startswith("sweep-before"))
sa = sum(r["wall_secs"] for n, r in runs.items() if n.startswith("sweep-after"))
print(f"sweep of 4 linear-probe candidates: wall {sb:.1f} s -> {sa:.1f} s: {sb / sa:.2f}x")
PY
