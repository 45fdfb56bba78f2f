"""Parquet datasets written by Hugging Face `datasets` (and a few by pyarrow
where `datasets` cannot write the broken case), for tests/api/datasets_parquet.rs.

Usage: make_parquet_datasets.py DIR. Writes each case into DIR and
DIR/expected.json: for each case, the rows vitrine must keep, as
{split: [[sha256 of the image bytes, [labels...]], ...]}, plus the rows it
must skip.
"""

import hashlib
import io
import json
import os
import random
import shutil
import sys
import tarfile
import zipfile

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
rng = random.Random(7)
expected = {}


def photo(fmt="JPEG"):
    """A small image of random size and colour, as encoded bytes."""
    w, h = rng.randint(8, 40), rng.randint(8, 40)
    img = Image.new("RGB", (w, h), tuple(rng.randint(0, 255) for _ in range(3)))
    for _ in range(5):
        x, y = rng.randint(0, w - 1), rng.randint(0, h - 1)
        img.putpixel((x, y), tuple(rng.randint(0, 255) for _ in range(3)))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def sha(b):
    return hashlib.sha256(b).hexdigest()


def image_dict(b):
    return {"bytes": b, "path": None}


# 1. Multi-class with ClassLabel, three splits, Hub layout in a zip; PNG and
# JPEG images; one row with label -1 (no label) in test.
names = ["cat", "dog", "bird"]
features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
case = {}
os.makedirs(f"{out}/hub/data", exist_ok=True)
for split, n in [("train", 12), ("validation", 6), ("test", 6)]:
    images, labels, rows = [], [], []
    for i in range(n):
        b = photo("PNG" if i % 3 == 0 else "JPEG")
        label = i % 3
        images.append(image_dict(b))
        labels.append(label)
        rows.append([sha(b), [names[label]]])
    if split == "test":
        images.append(image_dict(photo()))
        labels.append(-1)
    ds = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    ds.to_parquet(f"{out}/hub/data/{split}-00000-of-00001.parquet")
    case[split] = rows
with open(f"{out}/hub/README.md", "w") as f:
    f.write("---\nlicense: mit\n---\n")
with zipfile.ZipFile(f"{out}/hub.zip", "w") as z:
    for root, _, files in os.walk(f"{out}/hub"):
        for name in files:
            path = os.path.join(root, name)
            z.write(path, os.path.relpath(path, f"{out}/hub"))
expected["hub.zip"] = {"task": "multi_class", "labels": sorted(names), "rows": case, "skipped": 2}

# 2. Multi-label: a list of ClassLabel, one image with no label at all,
# written as `<split>/*.parquet` in a tar.gz, with the train split in two
# shards.
names = ["indoor", "outdoor", "person"]
features = datasets.Features(
    {"img": datasets.Image(), "labels": datasets.Sequence(datasets.ClassLabel(names=names))}
)
case = {}
os.makedirs(f"{out}/multilabel/train", exist_ok=True)
os.makedirs(f"{out}/multilabel/test", exist_ok=True)
for split, shards in [("train", 2), ("test", 1)]:
    rows = []
    for shard in range(shards):
        images, labels = [], []
        for i in range(8):
            b = photo()
            ls = sorted(rng.sample(range(3), rng.randint(1, 2)))
            if split == "train" and shard == 0 and i == 0:
                ls = []
            images.append(image_dict(b))
            labels.append(ls)
            rows.append([sha(b), sorted(names[l] for l in ls)])
        ds = datasets.Dataset.from_dict({"img": images, "labels": labels}, features=features)
        ds.to_parquet(f"{out}/multilabel/{split}/{shard:04d}.parquet")
    case[split] = rows
with tarfile.open(f"{out}/multilabel.tar.gz", "w:gz") as t:
    t.add(f"{out}/multilabel", arcname="multilabel")
expected["multilabel.tar.gz"] = {"task": "multi_label", "labels": sorted(names), "rows": case, "skipped": 0}

# 3. One Parquet file, labels as plain strings, a WebP among JPEGs and one
# undecodable image (skipped, within the tolerated fraction).
rows, images, labels = [], [], []
for i in range(40):
    b = photo("WEBP" if i == 3 else "JPEG")
    label = ["rose", "tulip"][i % 2]
    if i == 5:
        b = b"\xff\xd8\xff\xe0 not really a jpeg"
    else:
        rows.append([sha(b), [label]])
    images.append(image_dict(b))
    labels.append(label)
ds = datasets.Dataset.from_dict(
    {"image": images, "label": labels},
    features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")}),
)
ds.to_parquet(f"{out}/strings.parquet")
expected["strings.parquet"] = {"task": "multi_class", "labels": ["rose", "tulip"], "rows": {"train": rows}, "skipped": 1}

# 4. Columns `datasets` would not name so: `picture` (binary) and `category`
# (plain integers, no ClassLabel), written by pyarrow with snappy and zstd.
rows, pics, cats = [], [], []
for i in range(10):
    b = photo()
    pics.append(b)
    cats.append(i % 2)
    rows.append([sha(b), [str(i % 2)]])
table = pa.table({"picture": pa.array(pics, pa.binary()), "category": pa.array(cats, pa.int32()), "note": ["x"] * 10})
pq.write_table(table, f"{out}/columns.parquet", compression="zstd")
expected["columns.parquet"] = {"task": "multi_class", "labels": ["0", "1"], "rows": {"train": rows}, "skipped": 0}

# 5. Paths only: the Image feature without embedded bytes (`to_parquet`
# embeds the files it can find, so the Arrow table `datasets` holds is
# written as it is, with its features metadata).
ds = datasets.Dataset.from_dict(
    {"image": [{"bytes": None, "path": f"/home/someone/photos/{i}.jpg"} for i in range(4)], "label": [0, 1, 0, 1]},
    features=datasets.Features({"image": datasets.Image(decode=False), "label": datasets.ClassLabel(names=["a", "b"])}),
)
pq.write_table(ds.data.table, f"{out}/paths_only.parquet")

# 6. A corrupt file: a real Parquet file cut in the middle (starts with PAR1).
with open(f"{out}/strings.parquet", "rb") as f:
    data = f.read()
with open(f"{out}/corrupt.parquet", "wb") as f:
    f.write(data[: len(data) // 2])

# 7. A label id outside the ClassLabel names.
table = pq.read_table(f"{out}/hub/data/train-00000-of-00001.parquet")
labels = table.column("label").to_pylist()
labels[2] = 7
table = table.set_column(1, "label", pa.array(labels, pa.int64()))
pq.write_table(table, f"{out}/bad_label.parquet", compression="snappy")

shutil.rmtree(f"{out}/hub")
shutil.rmtree(f"{out}/multilabel")
with open(f"{out}/expected.json", "w") as f:
    json.dump(expected, f)
