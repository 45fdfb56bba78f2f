"""Writes test images and the pixel_values of transformers' PIL image
processors for them, for tests/imaging_parity.rs.

usage: imaging_parity.py OUT_DIR
OUT_DIR/images/<name>     the encoded images
OUT_DIR/<proc>/preprocessor_config.json (save_pretrained)
OUT_DIR/<proc>/<name>.f32 pixel_values [3,H,W] float32 little-endian
OUT_DIR/<proc>/<name>.fast.f32 the same from the torchvision backend
OUT_DIR/index.json        {"images": [...], "processors": {name: [h, w]}}
"""
import io, json, os, sys

import numpy as np
from PIL import Image, ImageOps
from transformers import (BitImageProcessor, BitImageProcessorPil, ConvNextImageProcessor,
                          ConvNextImageProcessorPil, ViTImageProcessor, ViTImageProcessorPil)

out = sys.argv[1]
img_dir = os.path.join(out, "images")
os.makedirs(img_dir, exist_ok=True)
rng = np.random.default_rng(0)


def photo(w, h):
    """Smooth gradients, edges and noise: something like a photograph."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 127 + 100 * np.sin(x / w * 7 + y / h * 3)
    g = 127 + 100 * np.cos(y / h * 5)
    b = np.where((x // 37 + y // 29) % 2 == 0, 200.0, 40.0)
    arr = np.stack([r, g, b], -1) + rng.normal(0, 12, (h, w, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


images = []

def save(name, img, **kw):
    img.save(os.path.join(img_dir, name), **kw)
    images.append(name)

save("rgb_640x480.png", Image.fromarray(photo(640, 480)))
save("tall_300x800.png", Image.fromarray(photo(300, 800)))
# Portrait photo: Pillow 12+ resizes it vertical pass first (the height
# shrinks by more than twice the width's pixels), landscape horizontal first.
save("portrait_480x640.png", Image.fromarray(photo(480, 640)))
save("wide_1000x200.jpg", Image.fromarray(photo(1000, 200)), quality=100, subsampling=0)
save("small_100x50.png", Image.fromarray(photo(100, 50)))
rgba = np.concatenate([photo(256, 256), rng.integers(0, 256, (256, 256, 1), dtype=np.uint8)], -1)
save("rgba_256.png", Image.fromarray(rgba, "RGBA"))
save("gray_333x222.png", Image.fromarray(photo(333, 222)[..., 0], "L"))
g16 = (photo(200, 300)[..., 1].astype(np.uint16) * 257 + rng.integers(0, 200, (300, 200))).astype(np.uint16)
save("gray16_200x300.png", Image.fromarray(g16))
exif = Image.Exif()
exif[0x0112] = 6  # rotate 90 CW when displayed
save("exif6_320x200.jpg", Image.fromarray(photo(320, 200)), quality=100, subsampling=0, exif=exif.tobytes())
save("palette_150x100.gif", Image.fromarray(photo(150, 100)).quantize(64))
save("lossless_200.webp", Image.fromarray(photo(200, 200)), lossless=True)
save("bmp_123x77.bmp", Image.fromarray(photo(123, 77)))
# 51x40 after a shortest-edge-40 resize: an odd padding to 64 (PIL puts
# the extra column on the left, the torchvision backend on the right).
save("odd_61x47.png", Image.fromarray(photo(61, 47)))


def load(name):
    """As transformers.image_utils.load_image: EXIF transposed, RGB. 16-bit
    samples are scaled to 8 bits (PIL's convert would clip them)."""
    img = ImageOps.exif_transpose(Image.open(os.path.join(img_dir, name)))
    if img.mode in ("I;16", "I;16B", "I"):
        img = Image.fromarray(np.round(np.array(img).astype(np.float64) / 257).astype(np.uint8), "L")
    return img.convert("RGB")


processors = {
    "vit": (ViTImageProcessorPil(), ViTImageProcessor()),
    "bit": (
        BitImageProcessorPil(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                             image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),
        BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                          image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),
    ),
    # A crop larger than the resized image: transformers pads with zeros
    # (before rescaling and normalising) around the image.
    "bit_pad_40_64": (
        BitImageProcessorPil(size={"shortest_edge": 40}, crop_size={"height": 64, "width": 64},
                             image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),
        BitImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 64, "width": 64},
                          image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),
    ),
    # ConvNeXt and ResNet checkpoints: shortest edge to int(224 / crop_pct),
    # centre crop 224; at 384 and above the image is warped, not cropped.
    "convnext_224": (
        ConvNextImageProcessorPil(size={"shortest_edge": 224}, crop_pct=0.875,
                                  image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),
        ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875,
                               image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),
    ),
    "convnext_160_pct95": (
        ConvNextImageProcessorPil(size={"shortest_edge": 160}, crop_pct=0.95),
        ConvNextImageProcessor(size={"shortest_edge": 160}, crop_pct=0.95),
    ),
    "convnext_384": (
        ConvNextImageProcessorPil(size={"shortest_edge": 384}),
        ConvNextImageProcessor(size={"shortest_edge": 384}),
    ),
    # Swin checkpoints: ViTImageProcessor, bicubic, ImageNet statistics.
    "swin": (
        ViTImageProcessorPil(resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),
        ViTImageProcessor(resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]),
    ),
    "vit_nearest_96": (
        ViTImageProcessorPil(size={"height": 96, "width": 96}, resample=0),
        ViTImageProcessor(size={"height": 96, "width": 96}, resample=0),
    ),
}
index = {"images": images, "processors": {}}
for pname, (slow, fast) in processors.items():
    d = os.path.join(out, pname)
    slow.save_pretrained(d)
    for name in images:
        img = load(name)
        pv = slow(images=img, return_tensors="np")["pixel_values"][0].astype("<f4")
        pv.tofile(os.path.join(d, name + ".f32"))
        fv = fast(images=img, return_tensors="pt")["pixel_values"][0].numpy().astype("<f4")
        fv.tofile(os.path.join(d, name + ".fast.f32"))
        index["processors"][pname] = list(pv.shape[1:])
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump(index, f)
