"""Writes Fashion-MNIST (Debian's `dataset-fashion-mnist`) as an imagefolder zip.

  fashion_mnist.py OUT.zip [--train N] [--validation N] [--test N] [--seed S]
                           [--mosaic] [--size PX]

Per split, N images per class are drawn (seeded) from the original training
set (train, validation) and test set (test), written as PNG under
`<split>/<label>/`. With --mosaic, each image is a 2x2 grid of items and its
labels are the set of classes present (multi-label, `metadata.jsonl`).
Install the data with `apt-get install dataset-fashion-mnist`
(VITRINE_FASHION_MNIST: another directory with the same four .gz files).
"""
import argparse
import gzip
import io
import json
import os
import random
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(os.environ.get("VITRINE_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
LABELS = ["t-shirt", "trouser", "pullover", "dress", "coat",
          "sandal", "shirt", "sneaker", "bag", "ankle-boot"]


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        return np.frombuffer(data, np.uint8, offset=16).reshape(n, rows, cols)
    return np.frombuffer(data, np.uint8, offset=8)


def load(part):
    images = read_idx(ROOT / f"{part}-images-idx3-ubyte.gz")
    labels = read_idx(ROOT / f"{part}-labels-idx1-ubyte.gz")
    return images, labels


def per_class(labels, n, rng, exclude=()):
    """n indices per class, none of them in `exclude`."""
    out = []
    for c in range(len(LABELS)):
        idx = [i for i in np.flatnonzero(labels == c) if i not in exclude]
        out.extend(rng.sample(idx, n))
    return out


def png(array, size):
    img = Image.fromarray(array).convert("RGB")
    if size and size != img.width:
        img = img.resize((size, size), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--train", type=int, default=100)
    ap.add_argument("--validation", type=int, default=30)
    ap.add_argument("--test", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mosaic", action="store_true")
    ap.add_argument("--size", type=int, default=0, help="resize images to PX (default: 28, or 56 for mosaics)")
    args = ap.parse_args()
    if not ROOT.exists():
        sys.exit(f"{ROOT} is missing: apt-get install dataset-fashion-mnist")
    rng = random.Random(args.seed)
    train_x, train_y = load("train")
    test_x, test_y = load("t10k")
    train_idx = per_class(train_y, args.train, rng)
    val_idx = per_class(train_y, args.validation, rng, set(train_idx))
    test_idx = per_class(test_y, args.test, rng) if args.test else []
    splits = [("train", train_x, train_y, train_idx), ("validation", train_x, train_y, val_idx),
              ("test", test_x, test_y, test_idx)]
    with zipfile.ZipFile(args.out, "w", zipfile.ZIP_DEFLATED) as z:
        for split, xs, ys, idx in splits:
            if not idx:
                continue
            if not args.mosaic:
                for k, i in enumerate(idx):
                    z.writestr(f"{split}/{LABELS[ys[i]]}/{k}.png", png(xs[i], args.size))
                continue
            lines = []
            for k in range(len(idx)):
                picks = rng.sample(idx, 4)
                grid = np.block([[xs[picks[0]], xs[picks[1]]], [xs[picks[2]], xs[picks[3]]]])
                name = f"{split}/{k}.png"
                z.writestr(name, png(grid, args.size))
                present = sorted({LABELS[ys[p]] for p in picks})
                lines.append(json.dumps({"file_name": f"{k}.png", "labels": present}))
            z.writestr(f"{split}/metadata.jsonl", "\n".join(lines) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
