"""The Python half of `scripts/bench/gpu.sh`: HTTP calls, the environment
probe and the final table. Standard library only (plus torch for `env`), so
it runs on a bare GPU machine with no `curl` or `jq`.

  gpu_bench.py env OUT.json                   torch/CUDA/driver/CPU facts
  gpu_bench.py wait URL PID [SECONDS]         until URL answers 2xx (fails if PID died)
  gpu_bench.py job URL ZIP CONFIG OUT.json [SECONDS]
                                              POST /jobs, poll until it ends, save the job
  gpu_bench.py top URL IMAGE                  the top label /predict gives for IMAGE
  gpu_bench.py report DIR                     the one table, from DIR's result files
"""
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path


def log(msg: str) -> None:
    print(f"   {msg}", file=sys.stderr, flush=True)


# --- environment ------------------------------------------------------------


def env(out: str) -> None:
    import torch
    import transformers

    facts = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "cpus": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts.update(gpu=p.name, capability=f"{p.major}.{p.minor}",
                     gpu_memory_gib=round(p.total_memory / 2**30, 1),
                     multiprocessors=p.multi_processor_count)
    if shutil.which("nvidia-smi"):
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name,clocks.max.sm",
                                "--format=csv,noheader"], capture_output=True, text=True,
                               timeout=20).stdout.strip().splitlines()
            if q:
                driver, _, clock = (s.strip() for s in q[0].split(","))
                facts.update(driver=driver, max_sm_clock=clock)
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    try:
        st = os.statvfs("/dev/shm")
        facts["dev_shm_gib"] = round(st.f_blocks * st.f_frsize / 2**30, 1)
    except OSError:
        pass
    Path(out).write_text(json.dumps(facts, indent=1))


# --- HTTP -------------------------------------------------------------------


def get_json(url: str, timeout: float = 30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def multipart(fields: list[tuple[str, str | None, bytes]]) -> tuple[bytes, str]:
    """(name, filename or None, bytes) parts -> body and content type."""
    boundary = uuid.uuid4().hex
    out = []
    for name, filename, data in fields:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        ctype = "application/octet-stream" if filename else "text/plain; charset=utf-8"
        out.append(f"--{boundary}\r\nContent-Disposition: {disp}\r\n"
                   f"Content-Type: {ctype}\r\n\r\n".encode())
        out.append(data)
        out.append(b"\r\n")
    out.append(f"--{boundary}--\r\n".encode())
    return b"".join(out), f"multipart/form-data; boundary={boundary}"


def post(url: str, fields, timeout: float = 600):
    body, ctype = multipart(fields)
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        sys.exit(f"POST {url}: {e.code} {e.read().decode(errors='replace')[:2000]}")


def wait(url: str, pid: str, seconds: str = "300") -> None:
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if 200 <= r.status < 300:
                    return
        except (urllib.error.URLError, OSError):
            pass
        try:
            os.kill(int(pid), 0)
        except OSError:
            sys.exit(f"the server (pid {pid}) exited before {url} answered")
        time.sleep(0.5)
    sys.exit(f"{url} did not answer within {seconds} s")


def job(url: str, zip_path: str, config: str, out: str, seconds: str = "1800") -> None:
    started = time.monotonic()
    data = Path(zip_path).read_bytes()
    created = post(f"{url}/jobs", [("config", None, config.encode()),
                                  ("dataset", Path(zip_path).name, data)])
    job_id = created["id"]
    log(f"job {job_id} submitted ({len(data) / 2**20:.0f} MiB dataset, "
        f"{time.monotonic() - started:.1f} s)")
    samples, last_log = [], 0.0
    deadline = started + float(seconds)
    while True:
        j = get_json(f"{url}/jobs/{job_id}")
        p = j.get("progress") or {}
        t = time.monotonic() - started
        if p.get("step") is not None and (not samples or samples[-1]["step"] != p["step"]):
            samples.append({"t": round(t, 2), "epoch": p.get("epoch"), "step": p["step"],
                            "loss": p.get("loss"), "images_per_sec": p.get("images_per_sec")})
        if j["status"] in ("succeeded", "failed", "cancelled"):
            break
        if t - last_log >= 10:
            last_log = t
            log(f"{j['status']}: " + json.dumps({k: p[k] for k in sorted(p)
                                                 if k in ("epoch", "step", "total_steps", "loss",
                                                          "images_per_sec")}))
        if time.monotonic() > deadline:
            j["status"] = f"timed out after {seconds} s (was {j['status']})"
            break
        time.sleep(0.5)
    j["wall_secs"] = time.monotonic() - started
    j["progress_samples"] = samples
    Path(out).write_text(json.dumps(j, indent=1))
    if j["status"] != "succeeded":
        sys.exit(f"job {job_id} {j['status']}: {j.get('error')}")
    log(f"job {job_id} succeeded in {j['wall_secs']:.1f} s; model {j.get('model_id')}")


def top(url: str, image: str) -> None:
    answer = post(url, [("image", Path(image).name, Path(image).read_bytes())], timeout=120)
    preds = answer["predictions"] if isinstance(answer, dict) else answer
    print(preds[0]["label"])


# --- the table --------------------------------------------------------------

# bf16 dense (no sparsity) tensor-core peaks, TFLOP/s, from NVIDIA's data
# sheets; the first name fragment that matches the device name wins.
PEAKS = [
    ("H200 NVL", "H200 NVL", 835.0),
    ("H200", "H200 SXM", 989.4),
    ("GH200", "GH200", 989.4),
    ("H100 NVL", "H100 NVL", 835.0),
    ("H100 PCIe", "H100 PCIe", 756.0),
    ("H100", "H100 SXM", 989.4),
    ("H800", "H800 SXM", 989.4),
    ("A100", "A100", 312.0),
    ("L40S", "L40S", 362.1),
]


def card_peak(name: str | None) -> tuple[str, float | None]:
    override = os.environ.get("PEAK_TFLOPS")
    if override:
        return f"{name} (PEAK_TFLOPS)", float(override)
    if not name:
        return "no GPU", None
    for fragment, label, peak in PEAKS:
        if fragment.lower() in name.lower():
            return label, peak
    return f"{name} (unknown peak; set PEAK_TFLOPS)", None


def train_gflop_per_image(config: dict) -> float:
    """Forward + backward (3x forward) FLOPs of one image through a ViT:
    2 FLOPs per multiply-add; patch embedding, per layer the QKV/output
    projections and MLP on every token plus the two attention products,
    the classifier. ViT-B/16 at 224: 105.4."""
    d, m, L = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    p, size = config["patch_size"], config["image_size"]
    patches = (size // p) ** 2
    n = patches + 1
    macs = patches * 3 * p * p * d + L * (n * (4 * d * d + 2 * d * m) + 2 * n * n * d)
    macs += d * len(config.get("id2label") or {0: 0, 1: 1})
    return 3 * 2 * macs / 1e9


def fmt_curve(xs) -> str:
    return " > ".join(f"{x:.3f}" for x in xs)


def report(d: str) -> None:
    d = Path(d)
    meta = json.loads((d / "meta.json").read_text())
    envf = json.loads((d / "env.json").read_text())
    info_text = (d / "info.json").read_text().strip() if (d / "info.json").exists() else ""
    try:
        info = json.loads(info_text)
    except ValueError:
        info = {"raw": info_text}
    vjob = json.loads((d / "vitrine_job.json").read_text()) if (d / "vitrine_job.json").exists() else None
    tjob = json.loads((d / "torch.json").read_text()) if (d / "torch.json").exists() else None
    loads = [json.loads(l) for l in (d / "predict.jsonl").read_text().splitlines()
             if l.strip()] if (d / "predict.jsonl").exists() else []
    tops = json.loads((d / "tops.json").read_text()) if (d / "tops.json").exists() else {}

    gpu = envf.get("gpu") if meta["device"].startswith("cuda") else None
    card, peak = card_peak(gpu)
    gflop = train_gflop_per_image(json.loads(Path(meta["model_dir"], "config.json").read_text()))

    print(f"## vitrine GPU benchmark ({'DRY RUN, ' if meta.get('dry_run') else ''}"
          f"{meta['device']}, {meta['wall_secs']:.0f} s)")
    print()
    print("vitrine info: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in info.items()))
    print(f"machine: {gpu or 'no GPU'}"
          + (f" (compute {envf.get('capability')}, {envf.get('gpu_memory_gib')} GiB)" if gpu else "")
          + f", driver {envf.get('driver', 'n/a')}, torch {envf['torch']} (CUDA "
          f"{envf.get('torch_cuda')}), transformers {envf['transformers']}, "
          f"{envf['cpus']} CPUs, /dev/shm {envf.get('dev_shm_gib', '?')} GiB")
    print(f"MFU peak: {card}" + (f", bf16 dense {peak:g} TFLOP/s" if peak else ", MFU not computed")
          + f"; {gflop:.1f} GFLOP per training image ({meta['model']}, 3x forward)")
    print(f"training: {meta['model']} random init, {meta['classes']} classes, full fine-tune at 224, "
          f"batch {meta['batch']}, lr {meta['lr']:g}, {meta['epochs']} epochs over "
          f"{meta['train_images']} JPEGs ({meta['sides']} px), validation {meta['val_images']}; "
          f"vitrine mixed_precision auto via POST /jobs; PyTorch: ImageFolder + DataLoader "
          f"({tjob['workers'] if tjob else '?'} workers, pinned), SDPA, "
          f"{'bf16 autocast' if tjob and tjob.get('bf16') else 'fp32'}, AdamW, clip 1.0")
    print(f"serving: /predict, {meta['duration']} s per point after {meta['warmup']} s warm-up, "
          f"{meta['request_images']} validation JPEGs; FastAPI + transformers.pipeline on "
          f"{meta['pipeline_device']} ({meta['pipeline_dtype']})")
    print()
    print("| measurement | vitrine | baseline | ratio | target |")
    print("|---|---|---|---|---|")

    def row(what, ours, theirs, ratio="", target=""):
        print(f"| {what} | {ours} | {theirs} | {ratio} | {target} |")

    def mfu(ips):
        return f"{100 * ips * gflop * 1e9 / (peak * 1e12):.1f}%" if peak and ips else "n/a"

    if vjob and tjob:
        vep, tep = vjob["metrics"], tjob["epochs"]
        steady = "epochs 2-%d" % len(vep) if len(vep) > 1 else "epoch 1 only (no steady epoch)"
        vips = [e["train_images_per_sec"] for e in vep]
        tips = [e["train_images_per_sec"] for e in tep]
        vs = sum(vips[1:]) / len(vips[1:]) if len(vips) > 1 else vips[0]
        ts = sum(tips[1:]) / len(tips[1:]) if len(tips) > 1 else tips[0]
        row(f"train images/s, steady ({steady})", f"{vs:.1f}", f"{ts:.1f} (PyTorch loop)",
            f"{vs / ts:.2f}x", met(">= 1.1x", vs / ts >= 1.1))
        row(f"train MFU ({gflop:.1f} GFLOP/image)", mfu(vs), mfu(ts), "",
            met(">= 40%", peak and vs * gflop * 1e9 / (peak * 1e12) >= 0.4))
        row("train images/s, epoch 1 (warm-up, excluded)", f"{vips[0]:.1f}", f"{tips[0]:.1f}",
            f"{vips[0] / tips[0]:.2f}x")
        vtl, ttl = [e["train_loss"] for e in vep], [e["train_loss"] for e in tep]
        vvl = [e["validation_loss"] for e in vep]
        tvl = [e.get("validation_loss", float("nan")) for e in tep]
        alike = curves_alike(vtl, ttl)
        row("train loss per epoch", fmt_curve(vtl), fmt_curve(ttl), alike,
            met("fall alike", alike.startswith("alike")))
        row("validation loss per epoch", fmt_curve(vvl), fmt_curve(tvl), curves_alike(vvl, tvl))
        va = vep[-1]["validation"]["accuracy"]
        ta = tep[-1].get("accuracy", float("nan"))
        row("final validation accuracy", f"{100 * va:.1f}%", f"{100 * ta:.1f}%",
            f"{100 * (va - ta):+.1f} pts", met("within 2 pts", abs(va - ta) <= 0.02))
        row("wall time: job submit to model / PyTorch process (incl. load, validation)",
            f"{vjob['wall_secs']:.1f} s", f"{tjob.get('wall_secs', float('nan')):.1f} s", "")
    else:
        row("training", "not run" if not vjob else "ok", "not run" if not tjob else "ok", "")

    by = {(r["label"], r["concurrency"]): r for r in loads}
    for c in meta["concurrency"]:
        v, p = by.get(("vitrine", c)), by.get(("fastapi-pipeline", c))
        if not v or not p:
            row(f"/predict c={c}", "missing" if not v else "", "missing" if not p else "", "")
            continue
        tgt = met(">= 3x", p["rps"] and v["rps"] / p["rps"] >= 3) if c == 32 else ""
        row(f"/predict c={c} images/s", f"{v['rps']:.1f}", f"{p['rps']:.1f} (pipeline)",
            f"{v['rps'] / p['rps']:.2f}x" if p["rps"] else "n/a", tgt)
        row(f"/predict c={c} p50 / p99 ms", f"{v['p50_ms']:.1f} / {v['p99_ms']:.1f}",
            f"{p['p50_ms']:.1f} / {p['p99_ms']:.1f}",
            (f"{p['p50_ms'] / v['p50_ms']:.2f}x / {p['p99_ms'] / v['p99_ms']:.2f}x (pipeline/vitrine)"
             if v["p50_ms"] and v["p99_ms"] else "n/a"),
            met("p50 no worse", v["p50_ms"] <= p["p50_ms"]) if c == 1 else "")
        if v.get("errors") or p.get("errors"):
            row(f"/predict c={c} errors", v.get("errors"), p.get("errors"), "")
    if tops:
        same = tops.get("vitrine") == tops.get("pipeline")
        row("top label of one image", tops.get("vitrine"), tops.get("pipeline"),
            "same" if same else "DIFFERENT")


def met(target: str, ok) -> str:
    return f"{target}: {'met' if ok else 'NOT MET'}"


def curves_alike(a, b) -> str:
    """Both fall from the first epoch to the last, and no epoch's values
    differ by more than 10% of the larger first-epoch value."""
    if len(a) != len(b) or not a:
        return "n/a"
    if any(x != x for x in a + b):  # NaN
        return "n/a"
    gap = max(abs(x - y) for x, y in zip(a, b))
    tol = 0.1 * max(a[0], b[0])
    falls = len(a) == 1 or (a[-1] < a[0] and b[-1] < b[0])
    verdict = "alike" if falls and gap <= tol else "differ"
    return f"{verdict} (max gap {gap:.3f}, tol {tol:.3f})"


def main() -> None:
    cmd, *args = sys.argv[1:] or ["-h"]
    commands = {"env": env, "wait": wait, "job": job, "top": top, "report": report}
    if cmd not in commands:
        sys.exit(__doc__)
    commands[cmd](*args)


if __name__ == "__main__":
    main()
