"""Forward time of ViT-B/16 (random init, google/vit-base-patch16-224 config)
in transformers, and the shared input for the vitrine side.

Usage: vit_forward.py INPUT.safetensors THREADS ITERATIONS BATCH
Writes INPUT (pixel_values, seeded) if absent; prints one JSON line.
"""

import json
import os
import sys
import time

import torch
from safetensors.torch import load_file, save_file

import transformers
from transformers import ViTConfig, ViTForImageClassification

transformers.logging.set_verbosity_error()
path, threads, iters, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
if not os.path.exists(path):
    g = torch.Generator().manual_seed(0)
    save_file({"pixel_values": torch.randn(batch, 3, 224, 224, generator=g)}, path)
x = load_file(path)["pixel_values"]
torch.manual_seed(0)
model = ViTForImageClassification(ViTConfig(num_labels=1000)).eval()  # defaults = ViT-B/16 224
times = []
with torch.no_grad():
    for _ in range(2):
        model(pixel_values=x)
    for _ in range(iters):
        t = time.perf_counter()
        model(pixel_values=x)
        times.append((time.perf_counter() - t) * 1e3)
times.sort()
print(json.dumps({
    "impl": "transformers " + transformers.__version__ + " (" + model.config._attn_implementation + ")",
    "threads": threads, "batch": x.shape[0],
    "median_ms": round(times[len(times) // 2], 1), "min_ms": round(times[0], 1),
}))
