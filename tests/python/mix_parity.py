"""MixUp and CutMix of torchvision.transforms.v2 with given parameters, for
tests/imaging/mix_parity.rs.

usage: mix_parity.py OUT_DIR
OUT_DIR/x.f32                 the batch [4, 3, 6, 10] float32 little-endian
OUT_DIR/y.i64                 its class ids [4]
OUT_DIR/<case>.x.f32, .y.f32  the mixed batch and its soft targets [4, 5]
OUT_DIR/index.json            {"cases": [{"kind", "lam", "box", "lam_adjusted", "file"}]}
"""
import json, os, sys

import torch
from torchvision.transforms.v2 import CutMix, MixUp

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
g = torch.Generator().manual_seed(0)
x = torch.randn(4, 3, 6, 10, generator=g)
y = torch.tensor([0, 3, 1, 4])
x.numpy().tofile(os.path.join(out, "x.f32"))
y.numpy().tofile(os.path.join(out, "y.i64"))
cases = []
mixup = MixUp(alpha=1.0, num_classes=5)
for lam in [0.0, 0.3, 0.731, 1.0]:
    params = {"labels": y, "batch_size": 4, "lam": lam}
    name = f"mixup{len(cases)}"
    mixup.transform(x, params).numpy().tofile(os.path.join(out, name + ".x.f32"))
    mixup.transform(y, params).numpy().tofile(os.path.join(out, name + ".y.f32"))
    cases.append({"kind": "mixup", "lam": lam, "file": name})
cutmix = CutMix(alpha=1.0, num_classes=5)
for (x1, y1, x2, y2) in [(2, 1, 7, 4), (0, 0, 10, 6), (3, 2, 3, 5), (8, 3, 10, 6)]:
    lam_adjusted = float(1.0 - (x2 - x1) * (y2 - y1) / (10 * 6))
    params = {"labels": y, "batch_size": 4, "box": (x1, y1, x2, y2), "lam_adjusted": lam_adjusted}
    name = f"cutmix{len(cases)}"
    cutmix.transform(x, params).numpy().tofile(os.path.join(out, name + ".x.f32"))
    cutmix.transform(y, params).numpy().tofile(os.path.join(out, name + ".y.f32"))
    cases.append({"kind": "cutmix", "box": [x1, y1, x2, y2], "lam_adjusted": lam_adjusted, "file": name})
json.dump({"cases": cases}, open(os.path.join(out, "index.json"), "w"))
