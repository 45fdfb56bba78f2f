"""Fixtures for the end-to-end tests, made on the spot (nothing downloaded).

  synthetic.py pretrain OUT_DIR      a tiny ViT pre-trained on shape x colour
                                     images, saved in the Hugging Face layout
  synthetic.py dataset OUT.zip KIND  an imagefolder zip for a different task:
                                     KIND = shapes (multi-class, split dirs) or
                                     mosaic (multi-label, metadata.jsonl)

The downstream task (which shape) differs from the pre-training task (shape
and colour jointly), so a frozen backbone helps only if it learnt features.
"""
import io
import json
import random
import sys
import zipfile

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ["circle", "square", "triangle", "cross"]
COLOURS = [(220, 40, 40), (40, 200, 60), (50, 80, 230)]
SIZE = 32


def draw_shape(draw, shape, colour, cx, cy, r):
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    else:
        w = max(1, r // 3)
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)


def background(rng):
    noise_rng = np.random.default_rng(rng.getrandbits(32))
    base = rng.randint(90, 160)
    noise = noise_rng.integers(-25, 25, size=(SIZE, SIZE, 1))
    grey = np.clip(base + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey, 3, axis=2))


def one_shape(rng, shape, colour):
    img = background(rng)
    r = rng.randint(6, 10)
    cx, cy = rng.randint(r, SIZE - r - 1), rng.randint(r, SIZE - r - 1)
    draw_shape(ImageDraw.Draw(img), shape, colour, cx, cy, r)
    return img


def mosaic(rng, shapes):
    """A 2x2 grid: each given shape in one random cell, the rest empty."""
    img = background(rng)
    draw = ImageDraw.Draw(img)
    cells = rng.sample(range(4), len(shapes))
    for shape, cell in zip(shapes, cells):
        cx = (cell % 2) * 16 + 8
        cy = (cell // 2) * 16 + 8
        draw_shape(draw, shape, rng.choice(COLOURS), cx, cy, rng.randint(4, 6))
    return img


def png(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def pretrain(out_dir):
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    rng = random.Random(0)
    classes = [(s, c) for s in SHAPES for c in range(len(COLOURS))]
    cfg = ViTConfig(
        image_size=SIZE, patch_size=8, hidden_size=64, num_hidden_layers=3,
        num_attention_heads=4, intermediate_size=128, num_labels=len(classes),
        id2label={i: f"{s}-{c}" for i, (s, c) in enumerate(classes)},
        label2id={f"{s}-{c}": i for i, (s, c) in enumerate(classes)},
    )
    model = ViTForImageClassification(cfg)
    proc = ViTImageProcessor(size={"height": SIZE, "width": SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for step in range(300):
        labels = [rng.randrange(len(classes)) for _ in range(64)]
        imgs = [np.asarray(one_shape(rng, classes[l][0], COLOURS[classes[l][1]])) for l in labels]
        x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0
        x = (x - 0.5) / 0.5
        out = model(pixel_values=x, labels=torch.tensor(labels))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    model.save_pretrained(out_dir)
    proc.save_pretrained(out_dir)
    print(json.dumps({"final_loss": float(out.loss.detach())}))


def dataset(out_zip, kind, per_class=50, val_per_class=20, seed=1):
    rng = random.Random(seed)
    with zipfile.ZipFile(out_zip, "w", zipfile.ZIP_DEFLATED) as z:
        if kind == "shapes":
            for split, n in (("train", per_class), ("validation", val_per_class)):
                for shape in SHAPES:
                    for i in range(n):
                        img = one_shape(rng, shape, rng.choice(COLOURS))
                        z.writestr(f"{split}/{shape}/{i}.png", png(img))
        elif kind == "mosaic":
            lines = []
            for i in range(per_class * len(SHAPES)):
                k = rng.randint(1, 3)
                present = rng.sample(SHAPES, k)
                name = f"img{i}.png"
                z.writestr(name, png(mosaic(rng, present)))
                lines.append(json.dumps({"file_name": name, "labels": sorted(present)}))
            z.writestr("metadata.jsonl", "\n".join(lines) + "\n")
        else:
            raise SystemExit(f"unknown kind {kind}")


def sample_image(out_png, shape):
    one_shape(random.Random(7), shape, COLOURS[0]).save(out_png)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "pretrain":
        pretrain(sys.argv[2])
    elif cmd == "dataset":
        dataset(sys.argv[2], sys.argv[3], *(int(a) for a in sys.argv[4:]))
    elif cmd == "image":
        sample_image(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"unknown command {cmd}")
