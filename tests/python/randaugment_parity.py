"""Applies each RandAugment operation of torchvision.transforms.v2 to test
images at given magnitudes, for tests/imaging/randaugment_parity.rs.

usage: randaugment_parity.py OUT_DIR
OUT_DIR/<image>.png           the input images (RGB, 8-bit)
OUT_DIR/<case>.u8             the output, HWC uint8
OUT_DIR/index.json            {"cases": [{"image", "op", "magnitude", "file"}],
                               "tables": {"<op>@WxH": [31 magnitudes]}}
"""
import json, math, os, sys

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import RandAugment

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(0)


def photo(w, h):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 127 + 100 * np.sin(x / w * 7 + y / h * 3)
    g = 127 + 60 * np.cos(y / h * 5)
    b = np.where((x // 13 + y // 11) % 2 == 0, 180.0, 60.0)
    arr = np.stack([r, g, b], -1) + rng.normal(0, 15, (h, w, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


images = {"photo_96x64": photo(96, 64), "photo_57x81": photo(57, 81),
          "dark_40x40": (photo(40, 40) // 4 + 20).astype(np.uint8)}
for name, arr in images.items():
    Image.fromarray(arr).save(os.path.join(out, name + ".png"))

ra = RandAugment(num_ops=1, magnitude=9, num_magnitude_bins=31, interpolation=InterpolationMode.NEAREST)
space = ra._AUGMENTATION_SPACE
cases, tables = [], {}
for name, arr in images.items():
    t = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    h, w = arr.shape[:2]
    for op, (fn, signed) in space.items():
        mags = fn(31, h, w)
        if mags is not None:
            tables[f"{op}@{w}x{h}"] = [float(v) for v in mags]
        bins = [0, 5, 9, 15, 23, 30] if mags is not None else [None]
        for b in bins:
            mag = float(mags[b]) if b is not None else 0.0
            for sign in ([1, -1] if signed else [1]):
                m = mag * sign
                y = ra._apply_image_or_video_transform(t, op, m, interpolation=InterpolationMode.NEAREST,
                                                       fill={torch.Tensor: None})
                file = f"{name}_{op}_{len(cases)}.u8"
                y.permute(1, 2, 0).contiguous().numpy().tofile(os.path.join(out, file))
                cases.append({"image": name + ".png", "op": op, "magnitude": m, "file": file})

json.dump({"cases": cases, "tables": tables}, open(os.path.join(out, "index.json"), "w"))
