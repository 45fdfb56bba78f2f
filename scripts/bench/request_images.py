"""Writes photo-like request JPEGs for the serving benchmarks.

  request_images.py OUT_DIR N

640x480, quality 85: a blurred two-colour gradient with a few ellipses and
rectangles plus noise (seeded), so decoding costs what a photo costs.
"""
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

out, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
for i in range(n):
    w, h = 640, 480
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, np.pi)
    t = ((x * np.cos(angle) + y * np.sin(angle)) / (w + h))[..., None]
    img = Image.fromarray((c0 * (1 - t) + c1 * t).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(3, 9)):
        x0, y0 = rng.integers(0, w - 60), rng.integers(0, h - 60)
        x1, y1 = x0 + rng.integers(40, 300), y0 + rng.integers(40, 250)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=fill)
    img = img.filter(ImageFilter.GaussianBlur(1.5))
    arr = np.asarray(img).astype(np.float32) + rng.normal(0, 6, (h, w, 3))
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(f"{out}/img{i:03d}.jpg", quality=85)
