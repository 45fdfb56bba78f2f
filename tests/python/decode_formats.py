"""Writes images in the formats and colour types users upload, and what
`transformers.image_utils.load_image` makes of each (EXIF transposed, then
`convert("RGB")`), for tests/imaging_formats.rs.

usage: decode_formats.py OUT_DIR
OUT_DIR/<name>        the encoded image
OUT_DIR/<name>.rgb    load_image's pixels, uint8 HxWx3
OUT_DIR/index.json    [{"name", "width", "height", "lossy", "refused"}]

Files `load_image` refuses (truncated, not an image) are listed with
"refused": true: vitrine must refuse them too, not train on half an image.
"""
import io, json, os, struct, sys, zlib

import numpy as np
from PIL import Image
from transformers.image_utils import load_image

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(7)


def photo(w, h):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 127 + 100 * np.sin(x / w * 7 + y / h * 3)
    g = 127 + 100 * np.cos(y / h * 5)
    b = np.where((x // 13 + y // 11) % 2 == 0, 200.0, 40.0)
    arr = np.stack([r, g, b], -1) + rng.normal(0, 8, (h, w, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


index = []


def put(name, data, lossy=False):
    path = os.path.join(out, name)
    with open(path, "wb") as f:
        f.write(data)
    img = load_image(path)
    arr = np.asarray(img, dtype=np.uint8)
    raw = Image.open(path)
    if raw.mode in ("I;16", "I;16B", "I"):
        # vitrine scales 16-bit samples (v / 257); PIL's convert clips them.
        g = np.round(np.asarray(raw).astype(np.float64) / 257).astype(np.uint8)
        arr = np.repeat(g[..., None], 3, -1)
    arr.tofile(path + ".rgb")
    index.append({"name": name, "width": img.width, "height": img.height, "lossy": lossy, "refused": False})


def refused(name, data):
    path = os.path.join(out, name)
    with open(path, "wb") as f:
        f.write(data)
    try:
        load_image(path)
    except Exception:
        index.append({"name": name, "width": 0, "height": 0, "lossy": False, "refused": True})
        return
    raise AssertionError(f"load_image accepted {name}")


def enc(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_rgb16(arr):
    """A 48-bit RGB PNG (Pillow cannot write one)."""
    h, w, _ = arr.shape
    raw = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))


base = Image.fromarray(photo(61, 43))
# PNG colour types.
put("rgba.png", enc(Image.fromarray(np.concatenate([photo(61, 43), rng.integers(0, 256, (43, 61, 1), dtype=np.uint8)], -1), "RGBA"), "PNG"))
put("la.png", enc(base.convert("LA"), "PNG"))
put("palette.png", enc(base.quantize(50), "PNG"))
put("palette_trns.png", enc(base.quantize(50), "PNG", transparency=3))
put("bilevel.png", enc(base.convert("1"), "PNG"))
put("gray.png", enc(base.convert("L"), "PNG"))
put("gray16.png", enc(Image.fromarray((photo(61, 43)[..., 0].astype(np.uint16) * 257)), "PNG"))
put("rgb16.png", png_rgb16(photo(61, 43).astype(np.uint16) * 257))
put("tiny_1x1.png", enc(Image.new("RGB", (1, 1), (200, 10, 30)), "PNG"))
put("thin_2x300.png", enc(Image.fromarray(photo(2, 300)), "PNG"))
# JPEG variants.
put("baseline.jpg", enc(base, "JPEG", quality=95), lossy=True)
put("gray.jpg", enc(base.convert("L"), "JPEG", quality=95), lossy=True)
put("progressive.jpg", enc(base, "JPEG", quality=95, progressive=True), lossy=True)
# Hard colour edges: where chroma upsampling (4:2:0) differs most.
y, x = np.mgrid[0:60, 0:90]
edges = np.stack([np.where(x < 30, 230, 20), np.where(y < 20, 200, 30), np.where(x > 60, 220, 10)], -1)
edges = Image.fromarray(np.clip(edges + rng.normal(0, 15, edges.shape), 0, 255).astype(np.uint8))
put("edges_420.jpg", enc(edges, "JPEG", quality=95), lossy=True)
put("edges_444.jpg", enc(edges, "JPEG", quality=95, subsampling=0), lossy=True)
put("cmyk.jpg", enc(base.convert("CMYK"), "JPEG", quality=95), lossy=True)
for o in range(1, 9):
    exif = Image.Exif()
    exif[0x0112] = o
    put(f"exif{o}.jpg", enc(base, "JPEG", quality=95, exif=exif.tobytes()), lossy=True)
exif = Image.Exif()
exif[0x0112] = 6
put("exif6.png", enc(base, "PNG", exif=exif.tobytes()))
put("exif6.webp", enc(base, "WEBP", lossless=True, exif=exif.tobytes()))
# WebP, BMP, GIF.
put("lossy.webp", enc(base, "WEBP", quality=90), lossy=True)
put("lossless_alpha.webp", enc(base.convert("RGBA"), "WEBP", lossless=True))
put("rgb.bmp", enc(base, "BMP"))
put("palette.bmp", enc(base.quantize(50), "BMP"))
put("gray.bmp", enc(base.convert("L"), "BMP"))
put("still.gif", enc(base.quantize(50), "GIF"))
put("trns.gif", enc(base.quantize(50), "GIF", transparency=3))
frames = [Image.fromarray(photo(61, 43)).quantize(50) for _ in range(3)]
put("animated.gif", enc(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0))
put("animated.webp", enc(frames[0].convert("RGB"), "WEBP", lossless=True, save_all=True, append_images=[f.convert("RGB") for f in frames[1:]], duration=100))
put("animated.png", enc(frames[0].convert("RGB"), "PNG", save_all=True, append_images=[f.convert("RGB") for f in frames[1:]], duration=100))
# TIFF.
put("rgb.tiff", enc(base, "TIFF"))
put("lzw.tiff", enc(base, "TIFF", compression="tiff_lzw"))
put("gray.tiff", enc(base.convert("L"), "TIFF"))
put("deflate_rgba.tiff", enc(base.convert("RGBA"), "TIFF", compression="tiff_adobe_deflate"))
put("cmyk.tiff", enc(base.convert("CMYK"), "TIFF"))
put("gray16.tiff", enc(Image.fromarray((photo(61, 43)[..., 0].astype(np.uint16) * 257)), "TIFF"))
put("orient6.tiff", enc(base, "TIFF", tiffinfo={274: 6}))
put("pages.tiff", enc(base, "TIFF", save_all=True, append_images=[base.convert("L"), base.rotate(90)]))
# JPEGs with something after the end-of-image marker are whole.
exif = Image.Exif()
exif[0x0112] = 3
put("trailing_bytes.jpg", enc(base, "JPEG", quality=95) + b"camera trailer\xff\xd8 junk", lossy=True)
# Cut short: Pillow says "image file is truncated"; so must vitrine.
big = Image.fromarray(photo(160, 120))
for name, data in [
    ("cut.jpg", enc(big, "JPEG", quality=95)),
    ("cut_progressive.jpg", enc(big, "JPEG", quality=95, progressive=True)),
    ("cut_exif.jpg", enc(big, "JPEG", quality=95, exif=exif.tobytes())),
    ("cut.png", enc(big, "PNG")),
    ("cut.gif", enc(big.quantize(64), "GIF")),
    ("cut.webp", enc(big, "WEBP")),
    ("cut.bmp", enc(big, "BMP")),
    ("cut.tiff", enc(big, "TIFF")),
]:
    for frac in (0.5, 0.97):
        refused(name.replace("cut", f"cut{int(frac * 100)}"), data[: int(len(data) * frac)])
refused("no_eoi.jpg", enc(big, "JPEG", quality=95)[:-2])
refused("text.jpg", b"not an image at all")
refused("empty.png", b"")

with open(os.path.join(out, "index.json"), "w") as f:
    json.dump(index, f)
