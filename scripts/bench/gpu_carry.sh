#!/usr/bin/env bash
# Prepares what scripts/bench/gpu.sh needs on a GPU machine without Rust:
# builds the release binary and loadgen (`cargo build --release --locked`),
# strips them into dist/ (git-ignored), downloads the FastAPI wheels
# (scripts/bench/gpu_wheels.sh) into dist/wheels, checks that dist/ and the
# rest of the working tree fit the device tool's 64 MiB, and prints the
# device tool's `run` call: carry ["dist"] and the command.
#
# Usage: scripts/bench/gpu_carry.sh
#   CARGO_TARGET_DIR  where cargo builds (default: target)
#   NO_WHEELS=1       skip the wheels (the GPU machine has fastapi)
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${VITRINE_PYTHON:-$PWD/.venv/bin/python}
export LIBTORCH_USE_PYTORCH=1 VIRTUAL_ENV=${VIRTUAL_ENV:-$(cd "$(dirname "$py")/.." && pwd)}
target=${CARGO_TARGET_DIR:-target}

cargo build --release --locked --bin vitrine --example loadgen
mkdir -p dist
strip -o dist/vitrine "$target/release/vitrine"
strip -o dist/loadgen "$target/release/examples/loadgen"
chmod +x dist/vitrine dist/loadgen
if [ -z "${NO_WHEELS:-}" ]; then
  VITRINE_PYTHON=$py scripts/bench/gpu_wheels.sh dist/wheels >/dev/null
fi

# What travels: tracked files, untracked files git does not ignore, and dist/.
tree_bytes=$(git ls-files -z --cached --others --exclude-standard |
  xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
dist_bytes=$(du -sb dist | cut -f1)
total=$((tree_bytes + dist_bytes))
ls -l dist
awk -v t="$tree_bytes" -v d="$dist_bytes" 'BEGIN {
  printf "working tree %.1f MiB + dist %.1f MiB = %.1f MiB of 64 MiB\n", t / 2^20, d / 2^20, (t + d) / 2^20 }'
[ "$total" -lt $((64 << 20)) ] || { echo "too big to carry" >&2; exit 1; }
git check-ignore -q dist/vitrine || { echo "dist/ is not git-ignored" >&2; exit 1; }

cat <<'RUN'
device tool call (one run, about 5 minutes of the 15; from the repository root):
  run(carry=["dist"], timeout_s=540,
      command="nvidia-smi -L; RESULTS_DIR=$OUT scripts/bench/gpu.sh 2>&1")
RUN
