"""Times lone requests the way a new user would: Python `requests`, one
image per POST, one request at a time (no concurrency, a new connection
each time, as `requests.post` makes it).

  lone_request_client.py URL FIELD_JSON_PATH IMAGE... [--warmup 10] [--n 60]

Posts each image in turn as multipart part `image` to URL, `--warmup`
times untimed, then `--n` times timed; prints one JSON line:
{"p50_ms", "p90_ms", "mean_ms", "n", "top"} where `top` is the top label
of the first answer (found at FIELD_JSON_PATH, e.g. `predictions.0.label`
or `0.label`), so the caller can check both servers agree.
"""
import argparse
import json
import statistics
import time

import requests


def dig(doc, path):
    for part in path.split("."):
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("label_path")
    ap.add_argument("images", nargs="+")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--n", type=int, default=60)
    args = ap.parse_args()
    blobs = [(p, open(p, "rb").read()) for p in args.images]

    def post(i):
        name, data = blobs[i % len(blobs)]
        r = requests.post(args.url, files={"image": (name, data, "image/jpeg")})
        r.raise_for_status()
        return r.json()

    top = dig(post(0), args.label_path)
    for i in range(1, args.warmup):
        post(i)
    times = []
    for i in range(args.n):
        t0 = time.perf_counter()
        post(i)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    print(json.dumps({
        "p50_ms": statistics.median(times),
        "p90_ms": times[int(0.9 * (len(times) - 1))],
        "mean_ms": statistics.fmean(times),
        "n": len(times),
        "top": top,
    }))


if __name__ == "__main__":
    main()
