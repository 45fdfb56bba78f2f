"""Inputs of the training-throughput benchmark (`scripts/bench/train.sh`).

  train_fixtures.py OUT_DIR [--train N] [--validation N] [--classes K]

Writes, under OUT_DIR:
- `images/{train,validation}/<class>/*.jpg`: photo-like JPEGs (quality 85,
  300-800 px a side: smooth gradients, a few filled shapes, sensor-like
  noise), N training and N validation images in all, spread over K classes;
- `images.zip`: the same files, the archive vitrine ingests (so both sides
  decode the very same bytes);
- `vit-tiny/`: a ViT-Tiny-sized classifier (hidden 192, 12 layers, 3 heads,
  MLP 768, patch 16, 224 px; DeiT-Tiny's shape), randomly initialised and
  saved in the Hugging Face layout with a `ViTImageProcessor` config.

Idempotent: an OUT_DIR made with the same arguments is left as it is.
"""
import argparse
import random
import shutil
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def photo(rng: random.Random, nrng: np.random.Generator) -> Image.Image:
    w, h = rng.randint(300, 800), rng.randint(300, 800)
    u = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    v = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    a, b, c = rng.uniform(0.5, 4), rng.uniform(0.5, 4), rng.uniform(0, 6)
    r = 127 + 100 * np.sin(a * 2 * np.pi * u + c) + 0 * v
    g = 127 + 100 * np.cos(b * 2 * np.pi * v) + 0 * u
    bl = 255 * u * v
    img = np.stack([r, g, bl], axis=-1)
    img += nrng.integers(0, 8, size=img.shape)
    im = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(rng.randint(2, 6)):
        x0, y0 = rng.randint(0, w - 20), rng.randint(0, h - 20)
        x1, y1 = x0 + rng.randint(10, w // 2), y0 + rng.randint(10, h // 2)
        fill = tuple(rng.randint(0, 255) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    return im


def write_images(root: Path, train: int, validation: int, classes: int) -> None:
    rng, nrng = random.Random(0), np.random.default_rng(0)
    for split, n in (("train", train), ("validation", validation)):
        for i in range(n):
            d = root / split / f"class_{i % classes}"
            d.mkdir(parents=True, exist_ok=True)
            photo(rng, nrng).save(d / f"{split}_{i:05}.jpg", quality=85)


def write_zip(root: Path, out: Path) -> None:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for p in sorted(root.rglob("*.jpg")):
            z.write(p, p.relative_to(root).as_posix())


def write_model(out: Path, classes: int) -> None:
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                    intermediate_size=768, image_size=224, patch_size=16,
                    num_labels=classes)
    ViTForImageClassification(cfg).save_pretrained(out)
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=384)
    ap.add_argument("--validation", type=int, default=16)
    ap.add_argument("--classes", type=int, default=4)
    args = ap.parse_args()
    stamp = args.out / "done"
    want = f"{args.train} {args.validation} {args.classes}\n"
    if stamp.exists() and stamp.read_text() == want:
        return
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    write_images(args.out / "images", args.train, args.validation, args.classes)
    write_zip(args.out / "images", args.out / "images.zip")
    write_model(args.out / "vit-tiny", args.classes)
    stamp.write_text(want)


if __name__ == "__main__":
    main()
