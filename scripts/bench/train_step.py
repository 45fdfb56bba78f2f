"""The PyTorch side of `scripts/bench/train_step.sh`: one full fine-tuning
step of the ViT-Tiny-sized `transformers` ViT (SDPA) on a fixed random batch
of 32 at 224 px (forward, cross-entropy, backward, clipping at 1,
`torch.optim.AdamW`), no data loading. Usage: train_step.py THREADS [STEPS].
Prints one JSON line (2 warm-up steps not timed)."""
import json
import sys
import time

import torch
from transformers import ViTConfig, ViTForImageClassification

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
torch.set_num_threads(threads)
torch.manual_seed(0)
cfg = ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                intermediate_size=768, image_size=224, patch_size=16, num_labels=4,
                attn_implementation="sdpa")
model = ViTForImageClassification(cfg).train()
assert model.config._attn_implementation == "sdpa"
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
x, y = torch.randn(32, 3, 224, 224), torch.randint(0, 4, (32,))
times = []
for i in range(steps + 2):
    started = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y)
    loss.backward()
    loss.item()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if i >= 2:
        times.append(time.perf_counter() - started)
mean = sum(times) / len(times)
print(json.dumps({"impl": "pytorch", "threads": threads, "steps": steps,
                  "secs_per_step": mean, "images_per_sec": 32 / mean}))
