"""Inputs of the training benchmarks (`scripts/bench/train.sh`, `scripts/bench/gpu.sh`).

  train_fixtures.py OUT_DIR [--train N] [--validation N] [--classes K]
                    [--model vit-tiny|vit-base] [--sides MIN MAX]
                    [--separable] [--jobs J]

Writes, under OUT_DIR:
- `images/{train,validation}/<class>/*.jpg`: photo-like JPEGs (quality 85,
  MIN-MAX px a side, 300-800 by default: smooth gradients, a few filled
  shapes, sensor-like noise), N training and N validation images in all,
  spread over K classes;
- `images.zip`: the same files, the archive vitrine ingests (so both sides
  decode the very same bytes);
- `<model>/`: a randomly initialised classifier saved in the Hugging Face
  layout with a `ViTImageProcessor` config (224 px, patch 16): `vit-tiny`
  (hidden 192, 12 layers, 3 heads, MLP 768; DeiT-Tiny's shape) or
  `vit-base` (ViT-B/16: hidden 768, 12 layers, 12 heads, MLP 3072).

Without `--separable` an image's content does not depend on its class (a
pure throughput fixture). With it, each class has its own background hue
(evenly spaced around the colour wheel, jittered by a fraction of the
spacing) under random-coloured shapes, so a model can learn the classes and
validation accuracy means something.

Every image is drawn from its own seed (split, index), so the files are the
same whatever `--jobs` is. Idempotent: an OUT_DIR made with the same
arguments is left as it is.
"""
import argparse
import colorsys
import os
import random
import shutil
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# Hue jitter of a separable class, as a fraction of the spacing between two
# classes' hues: 0.2 puts the half-spacing 2.5 standard deviations away, so
# the classes are learnable but a model must look at the colour, not guess.
HUE_JITTER = 0.2


def photo(rng: random.Random, nrng: np.random.Generator, sides: tuple[int, int],
          hue: float | None) -> Image.Image:
    w, h = rng.randint(*sides), rng.randint(*sides)
    u = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    v = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    a, b, c = rng.uniform(0.5, 4), rng.uniform(0.5, 4), rng.uniform(0, 6)
    if hue is None:
        r = 127 + 100 * np.sin(a * 2 * np.pi * u + c) + 0 * v
        g = 127 + 100 * np.cos(b * 2 * np.pi * v) + 0 * u
        bl = 255 * u * v
        img = np.stack([r, g, bl], axis=-1)
    else:
        tint = np.array(colorsys.hsv_to_rgb(hue % 1.0, 0.65, 0.9), dtype=np.float32) * 255
        pattern = 0.6 + 0.2 * np.sin(a * 2 * np.pi * u + c) + 0.2 * np.cos(b * 2 * np.pi * v)
        img = pattern[..., None] * tint[None, None, :]
    img += nrng.integers(0, 8, size=img.shape)
    im = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(rng.randint(2, 6)):
        x0, y0 = rng.randint(0, w - 20), rng.randint(0, h - 20)
        x1, y1 = x0 + rng.randint(10, w // 2), y0 + rng.randint(10, h // 2)
        fill = tuple(rng.randint(0, 255) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    return im


def write_one(task: tuple) -> None:
    root, split, i, classes, sides, separable = task
    seed = (0 if split == "train" else 1 << 32) + i
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    k = i % classes
    hue = None
    if separable:
        hue = (k + rng.gauss(0, HUE_JITTER)) / classes
    d = Path(root) / split / f"class_{k}"
    d.mkdir(parents=True, exist_ok=True)
    photo(rng, nrng, sides, hue).save(d / f"{split}_{i:05}.jpg", quality=85)


def write_images(root: Path, train: int, validation: int, classes: int,
                 sides: tuple[int, int], separable: bool, jobs: int) -> None:
    tasks = [(str(root), split, i, classes, sides, separable)
             for split, n in (("train", train), ("validation", validation)) for i in range(n)]
    if jobs <= 1:
        for t in tasks:
            write_one(t)
        return
    with ProcessPoolExecutor(jobs) as pool:
        list(pool.map(write_one, tasks, chunksize=max(1, len(tasks) // (jobs * 8))))


def write_zip(root: Path, out: Path) -> None:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for p in sorted(root.rglob("*.jpg")):
            z.write(p, p.relative_to(root).as_posix())


MODELS = {
    "vit-tiny": dict(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                     intermediate_size=768),
    "vit-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072),
}


def write_model(out: Path, name: str, classes: int) -> None:
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    cfg = ViTConfig(**MODELS[name], image_size=224, patch_size=16, num_labels=classes)
    ViTForImageClassification(cfg).save_pretrained(out)
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=384)
    ap.add_argument("--validation", type=int, default=16)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--model", choices=sorted(MODELS), default="vit-tiny")
    ap.add_argument("--sides", type=int, nargs=2, default=(300, 800), metavar=("MIN", "MAX"))
    ap.add_argument("--separable", action="store_true")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    stamp = args.out / "done"
    want = (f"v2 {args.train} {args.validation} {args.classes} {args.model} "
            f"{args.sides[0]} {args.sides[1]} {int(args.separable)}\n")
    if stamp.exists() and stamp.read_text() == want:
        return
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    write_images(args.out / "images", args.train, args.validation, args.classes,
                 tuple(args.sides), args.separable, args.jobs)
    write_zip(args.out / "images", args.out / "images.zip")
    write_model(args.out / args.model, args.model, args.classes)
    stamp.write_text(want)


if __name__ == "__main__":
    main()
