"""Hostile Parquet files, for tests/api/datasets_parquet.rs and
tests/e2e/hostile_parquet.rs (issue 26, findings 1, 3 and 10).

Usage: make_hostile_parquet.py DIR. Writes into DIR:

- deep_200.parquet, deep_5000.parquet: real images and labels, plus a
  column that is a struct nested 200 (5,000) levels deep;
- deep_64.parquet: the same nested exactly as deep as vitrine accepts
  (64 levels; the column is not read);
- bomb_image.parquet: one row whose image is 512 MiB of zeros (zstd: a few
  tens of KB on disk), in a row group of its own;
- bomb_unused.parquet: 8 real images and labels, plus a column vitrine does
  not use holding the same 512 MiB of zeros;
- missing_images.parquet: 190,000 rows without an image and 8 real images;
- no_labels.parquet: 20 real images plus 150 images without a label (kept
  within the rules: rows without a label are skipped, not refused);
- long_label.parquet: 8 real images, one of them labelled with a 16 MiB
  string.
"""

import io
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
BOMB = 512 << 20


def photo(i):
    img = Image.new("RGB", (8 + i % 5, 8), ((i * 40) % 256, 90, 200 - i))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def images(n, start=0):
    return [photo(start + i) for i in range(n)]


def labels(n):
    return ["cat" if i % 2 else "dog" for i in range(n)]


def deep(depth, n):
    """A struct column nested `depth` levels, `n` null rows."""
    t = pa.int32()
    for _ in range(depth - 1):
        t = pa.struct([pa.field("s", t)])
    return pa.nulls(n, type=t)


for depth in (64, 200, 5000):
    t = pa.table({"image": pa.array(images(8), pa.binary()), "label": labels(8), "deep": deep(depth, 8)})
    pq.write_table(t, f"{out}/deep_{depth}.parquet")

zeros = bytes(BOMB)
t = pa.table({"image": pa.array([zeros], pa.binary()), "label": ["cat"]})
pq.write_table(t, f"{out}/bomb_image.parquet", compression="zstd", use_dictionary=False, write_statistics=False)

extra = pa.array([zeros] + [None] * 7, pa.binary())
t = pa.table({"image": pa.array(images(8), pa.binary()), "label": labels(8), "extra": extra})
pq.write_table(t, f"{out}/bomb_unused.parquet", compression="zstd", use_dictionary=False, write_statistics=False)
del zeros, extra, t

n = 190_000
imgs = [None] * n + images(8)
t = pa.table({"image": pa.array(imgs, pa.binary()), "label": labels(n + 8)})
pq.write_table(t, f"{out}/missing_images.parquet", compression="zstd")

imgs = images(170)
labs = labels(20) + [None] * 150
t = pa.table({"image": pa.array(imgs, pa.binary()), "label": pa.array(labs, pa.string())})
pq.write_table(t, f"{out}/no_labels.parquet")

labs = labels(8)
labs[3] = "x" * (16 << 20)
t = pa.table({"image": pa.array(images(8), pa.binary()), "label": labs})
pq.write_table(t, f"{out}/long_label.parquet", compression="zstd")
