"""Fixtures for the end-to-end tests, made on the spot (nothing downloaded).

  synthetic.py pretrain OUT_DIR      a tiny ViT pre-trained on one task,
                                     saved in the Hugging Face layout
  synthetic.py dataset OUT.zip KIND  an imagefolder zip for another task:
                                     KIND = tints (multi-class, split dirs) or
                                     mosaic (multi-label, metadata.jsonl)
  synthetic.py image OUT.png COLOUR  one downstream-style image

Pre-training: which of six colours a filled shape has (a tiny ViT learns
colour in a few hundred steps on a CPU; shape would take far longer).
Downstream, two other tasks on other images: the colour of an outlined
shape among four colours, on a noisier background (multi-class), and which
colours a 2x2 mosaic holds (multi-label). A frozen backbone helps only if
pre-training left it with features that transfer.
"""
import io
import json
import random
import sys
import zipfile

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ["circle", "square", "triangle", "cross"]
PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 230),
    "yellow": (230, 210, 40),
    "magenta": (200, 50, 200),
    "cyan": (40, 210, 210),
}
PRETRAIN_COLOURS = list(PALETTE)
DOWNSTREAM_COLOURS = ["blue", "green", "red", "yellow"]
SIZE = 32


def draw_shape(draw, shape, colour, cx, cy, r, outline=False):
    kw = {"outline": colour, "width": 2} if outline else {"fill": colour}
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], **kw)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], **kw)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], **kw)
    else:
        w = max(1, r // 3)
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=colour)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=colour)


def background(rng, spread=25):
    noise_rng = np.random.default_rng(rng.getrandbits(32))
    base = rng.randint(90, 160)
    noise = noise_rng.integers(-spread, spread, size=(SIZE, SIZE, 1))
    grey = np.clip(base + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey, 3, axis=2))


def one_shape(rng, colour, rmin=6, rmax=11, outline=False, spread=25):
    img = background(rng, spread)
    r = rng.randint(rmin, rmax)
    cx, cy = rng.randint(r, SIZE - r - 1), rng.randint(r, SIZE - r - 1)
    draw_shape(ImageDraw.Draw(img), rng.choice(SHAPES), PALETTE[colour], cx, cy, r, outline)
    return img


def mosaic(rng, colours):
    """A 2x2 grid: a shape of each given colour in one random cell."""
    img = background(rng)
    draw = ImageDraw.Draw(img)
    cells = rng.sample(range(4), len(colours))
    for colour, cell in zip(colours, cells):
        cx = (cell % 2) * 16 + 8
        cy = (cell // 2) * 16 + 8
        draw_shape(draw, rng.choice(SHAPES), PALETTE[colour], cx, cy, rng.randint(5, 7))
    return img


def png(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def pretrain(out_dir):
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    torch.set_num_threads(2)
    rng = random.Random(0)
    classes = PRETRAIN_COLOURS
    cfg = ViTConfig(
        image_size=SIZE, patch_size=8, hidden_size=64, num_hidden_layers=3,
        num_attention_heads=4, intermediate_size=128, num_labels=len(classes),
        id2label=dict(enumerate(classes)), label2id={c: i for i, c in enumerate(classes)},
    )
    model = ViTForImageClassification(cfg)
    proc = ViTImageProcessor(size={"height": SIZE, "width": SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for step in range(150):
        labels = [rng.randrange(len(classes)) for _ in range(64)]
        imgs = [np.asarray(one_shape(rng, classes[l])) for l in labels]
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
        if kind == "tints":
            for split, n in (("train", per_class), ("validation", val_per_class)):
                for colour in DOWNSTREAM_COLOURS:
                    for i in range(n):
                        img = one_shape(rng, colour, 5, 10, outline=True, spread=40)
                        z.writestr(f"{split}/{colour}/{i}.png", png(img))
        elif kind == "mosaic":
            lines = []
            for i in range(per_class * len(DOWNSTREAM_COLOURS)):
                present = rng.sample(DOWNSTREAM_COLOURS, rng.randint(1, 3))
                name = f"img{i}.png"
                z.writestr(name, png(mosaic(rng, present)))
                lines.append(json.dumps({"file_name": name, "labels": sorted(present)}))
            z.writestr("metadata.jsonl", "\n".join(lines) + "\n")
        else:
            raise SystemExit(f"unknown kind {kind}")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "pretrain":
        pretrain(sys.argv[2])
    elif cmd == "dataset":
        dataset(sys.argv[2], sys.argv[3], *(int(a) for a in sys.argv[4:]))
    elif cmd == "image":
        one_shape(random.Random(7), sys.argv[3], 9, 9, outline=True).save(sys.argv[2])
    else:
        raise SystemExit(f"unknown command {cmd}")
