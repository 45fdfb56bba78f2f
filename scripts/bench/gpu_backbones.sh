#!/usr/bin/env bash
# Swin, ConvNeXt, ResNet and ViT on a GPU (issue 15): scripts/bench/backbones.py
# (random-init models of about 0.5M parameters, full fine-tuning on a
# Fashion-MNIST subset, mixed_precision auto) against `vitrine serve
# --devices $DEVICE --predict-precision fp32`, then each trained model's
# /models/{id}/predict scores on 8 test images against transformers on the
# CPU (tests/e2e/hf_predict.py, PIL processor): the largest difference.
#
# Usage: scripts/bench/gpu_backbones.sh [WORK_DIR]
#   WORK_DIR  holds the Fashion-MNIST zips (made here when the dataset is
#             installed; carry them to a machine without it), default
#             data/cache/backbones-gpu
#   DEVICE=cuda:0 PER_CLASS=200 EPOCHS=15 EXTRA='{"randaugment": {"n": 2, "m": 9}}'
#   (job-config fields for every job) VITRINE_BIN (default dist/vitrine,
#   else target/release/vitrine) VITRINE_PYTHON (python with torch 2.11)
#   RESULTS_DIR  also copy the table and the server log there
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-data/cache/backbones-gpu}
device=${DEVICE:-cuda:0}
py=${VITRINE_PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
vitrine=${VITRINE_BIN:-$([ -f dist/vitrine ] && echo dist/vitrine || echo target/release/vitrine)}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/vitrine-backbones.XXXXXX")
cp "$vitrine" "$tmp/vitrine" && chmod +x "$tmp/vitrine"
torch_lib=$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port
"$tmp/vitrine" serve --listen "127.0.0.1:$port" --data-dir "$tmp/data" --devices "$device" \
  --predict-precision fp32 >"$tmp/server.log" 2>&1 &
pid=$!
finish() {
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  if [ -n "${RESULTS_DIR:-}" ]; then mkdir -p "$RESULTS_DIR"; cp "$tmp"/*.md "$tmp/server.log" "$RESULTS_DIR/" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap finish EXIT
"$py" scripts/bench/gpu_bench.py wait "$url/readyz" "$pid" 300
"$py" scripts/bench/backbones.py "$url" --per-class "${PER_CLASS:-200}" --epochs "${EPOCHS:-15}" \
  --pretrained '' --work "$work" --extra "${EXTRA:-{\}}" | tee "$tmp/table.md"

# /predict on the device against transformers on the CPU.
"$py" - "$url" "$tmp/data" "$work" <<'PY' | tee "$tmp/parity.md"
import io, json, subprocess, sys, urllib.request, zipfile
from pathlib import Path
url, data, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
archive = sorted(work.glob("fm-*.zip"))[-1]
names = [n for n in zipfile.ZipFile(archive).namelist() if n.startswith("test/") and n.endswith(".png")][:8]
imgs = Path(data.parent / "parity-images"); imgs.mkdir(exist_ok=True)
files = []
for n in names:
    p = imgs / n.replace("/", "_"); p.write_bytes(zipfile.ZipFile(archive).read(n)); files.append(p)
models = json.load(urllib.request.urlopen(f"{url}/models"))
print("| model | base | max abs score difference, GPU /predict vs transformers (CPU) |\n|---|---|---|")
for m in models:
    ref = json.loads(subprocess.run([sys.executable, "tests/e2e/hf_predict.py", str(data / "models" / m["id"]),
                                     *map(str, files)], check=True, capture_output=True, text=True).stdout)
    worst = 0.0
    for f, want in zip(files, ref["scores"]):
        req = urllib.request.Request(f"{url}/models/{m['id']}/predict?all_scores=true", data=f.read_bytes(),
                                     headers={"content-type": "image/png"})
        got = json.load(urllib.request.urlopen(req))["results"][0]["scores"]
        got = {s["label"]: s["score"] for s in got} if isinstance(got, list) else got
        worst = max(worst, max(abs(got[l] - w) for l, w in zip(ref["labels"], want)))
    base = Path(m.get("base_model", "?")).name
    print(f"| {m['id']} | {base} | {worst:.2e} |")
PY
