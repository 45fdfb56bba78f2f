"""Driver of scripts/bench/ingest.sh: asynchronous dataset ingestion.

Subcommands (the shell script runs them in order):

  photos DIR N            N JPEGs of 4000x3000 in DIR/train/<a|b>/, made once
                          (photo-like but compressible: ~300 KB each)
  archive DIR N ZIP       a stored (uncompressed) zip of the first N of them
  upload URL ZIP PID [probe_predict]
                          POST /datasets streamed from ZIP; prints JSON: the
                          answer time after the last byte was sent, the time
                          to `ready`, images/s, progress samples, the
                          server's peak RSS (VmHWM of PID), and, with
                          probe_predict, /healthz and /predict latencies
                          measured while it validates
  idle URL SECONDS        the same latency probes on an idle server (baseline)
  pillow DIR N PROCS      Pillow verify() + load() of the first N photos in a
                          process pool of PROCS; prints JSON with images/s
  ttfs URL DATASET BASE MODE
                          time to first step: POST /jobs (JSON, a ready
                          dataset), then the time until the job is running
                          and until its first optimiser step; the job is
                          cancelled then. Prints JSON
"""

import http.client
import json
import os
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from multiprocessing import Pool

W, H = 4000, 3000


def photo_path(d, i):
    return os.path.join(d, "train", "a" if i % 2 == 0 else "b", f"{i:05d}.jpg")


BASES = 48


def make_base(args):
    d, b = args
    path = os.path.join(d, "bases", f"{b:02d}.jpg")
    if os.path.exists(path):
        return
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(b)
    # Smooth colour fields (a sky, a wall) with a little grain, so that
    # every block is coded: ~300 KB at quality 85, decoded as slowly as a
    # photo of that size and entropy.
    low = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(low).resize((W, H), Image.BILINEAR), dtype=np.uint8)
    grain = rng.integers(0, 4, size=(H // 8, W // 8, 3), dtype=np.uint8)
    grain = np.repeat(np.repeat(grain, 8, axis=0), 8, axis=1)
    tmp = path + ".tmp"
    Image.fromarray(img + grain).save(tmp, "JPEG", quality=85)
    os.replace(tmp, path)


def photos(d, n):
    """N distinct files made from BASES encoded images: each is a base with
    its own JPEG comment segment after the start-of-image marker (distinct
    bytes, the same pixels and decoding cost)."""
    for sub in ("a", "b", "bases"):
        os.makedirs(os.path.join(d, "train", sub) if sub != "bases" else os.path.join(d, sub), exist_ok=True)
    with Pool(os.cpu_count()) as pool:
        pool.map(make_base, [(d, b) for b in range(BASES)])
    bases = [open(os.path.join(d, "bases", f"{b:02d}.jpg"), "rb").read() for b in range(BASES)]
    for i in range(n):
        path = photo_path(d, i)
        if os.path.exists(path):
            continue
        base = bases[i % BASES]
        text = f"vitrine bench photo {i}".encode()
        com = b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text
        with open(path + ".tmp", "wb") as f:
            f.write(base[:2] + com + base[2:])
        os.replace(path + ".tmp", path)
    size = sum(os.path.getsize(photo_path(d, i)) for i in range(n))
    print(json.dumps({"photos": n, "bytes": size, "mean_kb": round(size / n / 1024, 1)}))


def archive(d, n, out):
    import zipfile

    tmp = out + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
        for i in range(n):
            p = photo_path(d, i)
            z.write(p, os.path.relpath(p, d))
    os.replace(tmp, out)


def vm_hwm_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def get_json(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def percentile(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Probe(threading.Thread):
    """Sends one request after another (`path`, a GET, or a POST of
    `body`) until stopped; keeps each latency in ms."""

    def __init__(self, url, path, body=None, content_type=None, pause=0.05):
        super().__init__(daemon=True)
        host = url.split("//")[1]
        self.conn = http.client.HTTPConnection(host, timeout=60)
        self.path, self.body, self.ct, self.pause = path, body, content_type, pause
        self.latencies, self.errors = [], 0
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            t = time.perf_counter()
            try:
                if self.body is None:
                    self.conn.request("GET", self.path)
                else:
                    self.conn.request("POST", self.path, self.body, {"Content-Type": self.ct})
                r = self.conn.getresponse()
                r.read()
                if r.status >= 400:
                    self.errors += 1
                else:
                    self.latencies.append((time.perf_counter() - t) * 1000)
            except Exception:
                self.errors += 1
                host = self.conn.host + ":" + str(self.conn.port)
                self.conn = http.client.HTTPConnection(host, timeout=60)
            time.sleep(self.pause)

    def summary(self):
        return {
            "n": len(self.latencies),
            "errors": self.errors,
            "p50_ms": round(percentile(self.latencies, 50) or 0, 1),
            "p99_ms": round(percentile(self.latencies, 99) or 0, 1),
            "max_ms": round(max(self.latencies, default=0), 1),
        }


def small_jpeg():
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("RGB", (320, 240), (200, 40, 40)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def start_probes(url, predict):
    probes = {"healthz": Probe(url, "/healthz")}
    if predict:
        probes["predict"] = Probe(url, "/predict", small_jpeg(), "image/jpeg", pause=0.1)
    for p in probes.values():
        p.start()
    return probes


def stop_probes(probes):
    for p in probes.values():
        p.stop.set()
    for p in probes.values():
        p.join()
    return {k: p.summary() for k, p in probes.items()}


def upload(url, zip_path, pid, predict=False):
    boundary = "vitrine-bench-boundary"
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"dataset\"; "
        f"filename=\"photos.zip\"\r\nContent-Type: application/zip\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = os.path.getsize(zip_path)
    host = url.split("//")[1]
    conn = http.client.HTTPConnection(host, timeout=3600)
    conn.putrequest("POST", "/datasets")
    conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    conn.putheader("Content-Length", str(len(head) + size + len(tail)))
    conn.endheaders()
    t0 = time.perf_counter()
    conn.send(head)
    with open(zip_path, "rb") as f:
        while chunk := f.read(1 << 20):
            conn.send(chunk)
    conn.send(tail)
    sent = time.perf_counter()
    r = conn.getresponse()
    answered = time.perf_counter()
    body = json.loads(r.read())
    assert r.status == 202, (r.status, body)
    probes = start_probes(url, predict)
    ds = body["id"]
    samples = []
    while True:
        d = get_json(f"{url}/datasets/{ds}")
        p = d.get("progress") or {}
        samples.append(
            (round(time.perf_counter() - answered, 2), p.get("images_checked"), p.get("images_per_sec"), p.get("eta_seconds"))
        )
        if d["status"] != "validating":
            break
        time.sleep(0.5)
    ready = time.perf_counter()
    latencies = stop_probes(probes)
    assert d["status"] == "ready", d
    n = d["summary"]["images"]
    moving = sorted({s[1] for s in samples if s[1]})
    print(
        json.dumps(
            {
                "id": ds,
                "images": n,
                "archive_mb": round(size / 2**20, 1),
                "upload_s": round(sent - t0, 2),
                "answer_after_body_ms": round((answered - sent) * 1000, 1),
                "status": r.status,
                "to_ready_s": round(ready - answered, 2),
                "upload_to_ready_s": round(ready - t0, 2),
                "images_per_sec": round(n / (ready - answered), 2),
                "progress_distinct_counts": len(moving),
                "progress_samples": samples[:: max(1, len(samples) // 8)],
                "peak_rss_mb": round(vm_hwm_kb(pid) / 1024, 1),
                "latency_while_validating": latencies,
            }
        )
    )


def idle(url, seconds):
    probes = start_probes(url, True)
    time.sleep(seconds)
    print(json.dumps(stop_probes(probes)))


def pillow_check(path):
    from PIL import Image

    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        im.load()
        return im.size


def pillow(d, n, procs):
    paths = [photo_path(d, i) for i in range(n)]
    t = time.perf_counter()
    with Pool(procs) as pool:
        sizes = pool.map(pillow_check, paths, chunksize=4)
    s = time.perf_counter() - t
    assert all(sz == (W, H) for sz in sizes)
    print(json.dumps({"images": n, "seconds": round(s, 2), "images_per_sec": round(n / s, 2), "procs": procs}))


def post_json(url, path, body):
    req = urllib.request.Request(
        url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def ttfs(url, dataset, base, mode):
    config = {"base_model": base, "mode": mode, "epochs": 1, "batch_size": 16}
    t0 = time.perf_counter()
    job = post_json(url, "/jobs", {"dataset_id": dataset, "config": config})
    running = features_done = None
    while True:
        j = get_json(f"{url}/jobs/{job['id']}")
        now = time.perf_counter() - t0
        p = j.get("progress") or {}
        if running is None and j["status"] == "running":
            running = now
        if features_done is None and p.get("phase") == "training":
            features_done = now
        if (p.get("step") or 0) >= 1:
            break
        assert j["status"] in ("queued", "running"), j
        time.sleep(0.05)
    try:
        post_json(url, f"/jobs/{job['id']}/cancel", {})
    except urllib.error.HTTPError as e:
        if e.code != 409:  # 409: it already ended (a linear probe's epoch is quick)
            raise
    print(json.dumps({"mode": mode, "running_s": round(running or now, 2), "training_phase_s": round(features_done or now, 2), "first_step_s": round(now, 2)}))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "photos":
        photos(args[0], int(args[1]))
    elif cmd == "archive":
        archive(args[0], int(args[1]), args[2])
    elif cmd == "upload":
        upload(args[0], args[1], int(args[2]), len(args) > 3 and args[3] == "probe_predict")
    elif cmd == "idle":
        idle(args[0], float(args[1]))
    elif cmd == "ttfs":
        ttfs(args[0], args[1], args[2], args[3])
    elif cmd == "pillow":
        pillow(args[0], int(args[1]), int(args[2]))
    else:
        sys.exit(__doc__)
