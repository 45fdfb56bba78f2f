"""/predict latency idle and while /explain is kept saturated, and /explain
latency per method, against a running vitrine.

Usage: explain_load_client.py URL N IMAGE... (prints one JSON object)
"""

import json
import statistics
import sys
import threading
import time

import requests

url, n, images = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
blobs = [open(p, "rb").read() for p in images]
HEADERS = {"content-type": "image/jpeg"}


def post(path, body):
    t = time.perf_counter()
    r = requests.post(url + path, data=body, headers=HEADERS, timeout=600)
    return r.status_code, (time.perf_counter() - t) * 1e3


def predict_latencies(clients=4):
    out, lock = [], threading.Lock()

    def client(k):
        for i in range(n):
            status, ms = post("/predict", blobs[(k + i) % len(blobs)])
            assert status == 200, status
            with lock:
                out.append(ms)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.sort()
    return {"p50_ms": round(statistics.median(out), 1), "p99_ms": round(out[int(0.99 * (len(out) - 1))], 1)}


def explain_latency(query, runs=3):
    times = []
    for i in range(runs):
        status, ms = post("/explain?" + query, blobs[i % len(blobs)])
        assert status == 200, (query, status)
        times.append(ms)
    return round(statistics.median(times), 1)


for b in blobs[:4]:
    post("/predict", b)  # warm-up: model load
explain_latency("method=attention_rollout", 1)
result = {"explain_ms": {
    "attention_rollout": explain_latency("method=attention_rollout"),
    "integrated_gradients_32": explain_latency("method=integrated_gradients&steps=32", 1),
}}
result["predict_idle"] = predict_latencies()

stop = threading.Event()
counts = {"200": 0, "429": 0}


def flood():
    i = 0
    while not stop.is_set():
        status, _ = post("/explain?method=integrated_gradients&steps=32", blobs[i % len(blobs)])
        counts[str(status)] = counts.get(str(status), 0) + 1
        if status == 429:
            time.sleep(0.05)
        i += 1


flooders = [threading.Thread(target=flood) for _ in range(3)]
for t in flooders:
    t.start()
time.sleep(2)
result["predict_while_explaining"] = predict_latencies()
stop.set()
for t in flooders:
    t.join()
result["explain_answers_during"] = counts
result["p99_ratio"] = round(result["predict_while_explaining"]["p99_ms"] / result["predict_idle"]["p99_ms"], 2)
print(json.dumps(result))
