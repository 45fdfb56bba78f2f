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
    ("GH200", "GH200", 989.4),
    ("H200 NVL", "H200 NVL", 835.0),
    ("H200", "H200 SXM", 989.4),
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
    """Values per epoch; a NaN loss (vitrine's JSON writes it as null) shows as NaN."""
    return " > ".join("NaN" if x is None or x != x else f"{x:.3f}" for x in xs) if xs else "-"


def load_json(path: Path):
    """A result file's JSON, or None where the step wrote nothing usable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def torch_epochs(d: Path) -> tuple[list, float | None]:
    """The PyTorch loop's epochs: its result line, else (killed or failed)
    the per-epoch progress lines it printed as it went."""
    out = load_json(d / "torch.json")
    if out:
        return out["epochs"], out.get("wall_secs")
    lines = (d / "logs" / "torch.log").read_text().splitlines() if (d / "logs" / "torch.log").exists() else []
    return [json.loads(l)["progress"] for l in lines if l.startswith('{"progress"')], None


def steady(ips: list) -> float | None:
    """Mean images/s of the epochs after the first (None with fewer than 2)."""
    return sum(ips[1:]) / len(ips[1:]) if len(ips) > 1 else None


def num(x, spec=".1f", suffix="") -> str:
    return "-" if x is None else f"{x:{spec}}{suffix}"


def ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def report(d: str) -> None:
    d = Path(d)
    meta = load_json(d / "meta.json")
    envf = load_json(d / "env.json") or {}
    info = load_json(d / "info.json") or {}
    vjob = load_json(d / "vitrine_job.json")
    tep, twall = torch_epochs(d)
    loads = [json.loads(l) for l in (d / "predict.jsonl").read_text().splitlines()
             if l.strip()] if (d / "predict.jsonl").exists() else []
    tops = load_json(d / "tops.json") or {}
    failures = (d / "failures.txt").read_text().splitlines() if (d / "failures.txt").exists() else []

    gpu = envf.get("gpu") if meta["device"].startswith("cuda") else None
    card, peak = card_peak(gpu)
    cfg = load_json(Path(meta["model_dir"]) / "config.json")
    gflop = train_gflop_per_image(cfg) if cfg else None
    n_epochs = meta["epochs"]

    print(f"## vitrine GPU benchmark ({'DRY RUN, ' if meta.get('dry_run') else ''}"
          f"{meta['device']}, {meta['wall_secs']} s)")
    print()
    print("vitrine info: " + ", ".join(f"{k}={json.dumps(v)}" for k, v in info.items()))
    print(f"machine: {gpu or 'no GPU'}"
          + (f" (compute {envf.get('capability')}, {envf.get('gpu_memory_gib')} GiB)" if gpu else "")
          + f", driver {envf.get('driver', 'n/a')}, torch {envf.get('torch')} (CUDA "
          f"{envf.get('torch_cuda')}), transformers {envf.get('transformers')}, "
          f"{envf.get('cpus')} CPUs, /dev/shm {envf.get('dev_shm_gib', '?')} GiB")
    if (envf.get("dev_shm_gib") or 99) < 2 and meta["workers"] > 0:
        print(f"warning: /dev/shm holds {envf['dev_shm_gib']} GiB; DataLoader workers pass "
              "batches through it and may fail (as root: mount -o remount,size=16G /dev/shm)")
    print(f"MFU peak: {card}" + (f", bf16 dense {peak:g} TFLOP/s" if peak else ", MFU not computed")
          + f"; {num(gflop)} GFLOP per training image ({meta['model']}, 3x forward)")
    print(f"training: {meta['model']} random init, {meta['classes']} classes, full fine-tune at 224, "
          f"batch {meta['batch']}, lr {meta['lr']:g}, {n_epochs} epochs over "
          f"{meta['train_images']} JPEGs ({meta['sides']} px), validation {meta['val_images']}; "
          f"vitrine: POST /jobs, mixed_precision auto; PyTorch: ImageFolder + DataLoader "
          f"({meta['workers']} workers"
          + (", pinned), SDPA, bf16 autocast" if gpu else "), SDPA, fp32")
          + ", AdamW, clip 1.0")
    print(f"serving: /predict, {meta['duration']} s per point after {meta['warmup']} s warm-up, "
          f"{meta['request_images']} validation JPEGs; FastAPI + transformers.pipeline on "
          f"{meta['pipeline_device']} ({meta['pipeline_dtype']})")
    print()
    print("| measurement | vitrine | baseline | ratio | target |")
    print("|---|---|---|---|---|")

    def row(what, ours, theirs, r="", target=""):
        print(f"| {what} | {ours} | {theirs} | {r} | {target} |")

    def mfu(ips):
        return 100 * ips * gflop * 1e9 / (peak * 1e12) if peak and ips and gflop else None

    vep = (vjob or {}).get("metrics") or []
    vips = [e["train_images_per_sec"] for e in vep]
    tips = [e["train_images_per_sec"] for e in tep]
    vs, ts = steady(vips), steady(tips)
    span = f"epochs 2-{n_epochs}" if n_epochs > 2 else "epoch 2"
    if n_epochs < 2:
        span = "needs 2+ epochs"
    row(f"train images/s, steady ({span})", num(vs), num(ts) + " (PyTorch loop)", ratio(vs, ts),
        met(">= 1.1x", vs and ts and vs / ts >= 1.1))
    row(f"train MFU ({num(gflop)} GFLOP/image)", num(mfu(vs), suffix="%"),
        num(mfu(ts), suffix="%"), "", met(">= 40%", mfu(vs) and mfu(vs) >= 40, peak is not None))
    # Where the job's time went (issue 28): GPU time for compute and the
    # optimiser (CUDA events), host time for the rest, per steady epoch.
    shares = [e.get("time_shares") or {} for e in vep[1:] if e.get("time_shares")]
    if shares:
        wall = sum(s.get("wall", 0) for s in shares) or None
        for k in ("input_wait", "compute", "optimizer", "eval", "checkpoint"):
            part = sum(s.get(k, 0) for s in shares)
            row(f"time share, {k} (epochs 2+)", num(wall and 100 * part / wall, suffix="%"), "-", "",
                met("GPU busy >= 95%", wall and part / wall >= 0.95) if k == "compute" else "")
    row("train images/s, epoch 1 (warm-up, not counted)", num(vips[0] if vips else None),
        num(tips[0] if tips else None), ratio(vips[0] if vips else None, tips[0] if tips else None))
    if len(vep) < n_epochs or len(tep) < n_epochs:
        last = ((vjob or {}).get("progress_samples") or [{}])[-1].get("images_per_sec")
        row("epochs finished (a side that stopped early)", f"{len(vep)} of {n_epochs}"
            + (f"; last in-epoch {last:.1f} images/s" if last and len(vep) < n_epochs else ""),
            f"{len(tep)} of {n_epochs}", "")
    vtl, ttl = [e["train_loss"] for e in vep], [e["train_loss"] for e in tep]
    vvl, tvl = [e["validation_loss"] for e in vep], [e.get("validation_loss") for e in tep]
    alike = curves_alike(vtl, ttl)
    row("train loss per epoch", fmt_curve(vtl), fmt_curve(ttl), alike,
        met("fall alike", alike.startswith("alike") if alike != "n/a" else None))
    row("validation loss per epoch", fmt_curve(vvl), fmt_curve([x for x in tvl if x is not None]),
        curves_alike(vvl, tvl))
    va = vep[-1]["validation"].get("accuracy") if vep else None
    ta = tep[-1].get("accuracy") if tep else None
    row("final validation accuracy", num(va and 100 * va, suffix="%"), num(ta and 100 * ta, suffix="%"),
        f"{100 * (va - ta):+.1f} pts" if va is not None and ta is not None else "-",
        met("within 2 pts", abs(va - ta) <= 0.02 if va is not None and ta is not None else None))
    row("wall time: job submit to model / PyTorch process (incl. load, validation)",
        num((vjob or {}).get("wall_secs"), suffix=" s"), num(twall, suffix=" s"), "")

    by = {(r["label"], r["concurrency"]): r for r in loads}
    for c in meta["concurrency"]:
        v, p = by.get(("vitrine", c)) or {}, by.get(("fastapi-pipeline", c)) or {}
        tgt = met(">= 3x", v.get("rps") and p.get("rps") and v["rps"] / p["rps"] >= 3) if c == 32 else ""
        row(f"/predict c={c} images/s", num(v.get("rps")), num(p.get("rps")) + " (pipeline)",
            ratio(v.get("rps"), p.get("rps")), tgt)
        lat = "-"
        if v.get("p50_ms") and p.get("p50_ms"):
            lat = (f"{p['p50_ms'] / v['p50_ms']:.2f}x / {p['p99_ms'] / v['p99_ms']:.2f}x "
                   "(pipeline/vitrine)")
        row(f"/predict c={c} p50 / p99 ms", f"{num(v.get('p50_ms'))} / {num(v.get('p99_ms'))}",
            f"{num(p.get('p50_ms'))} / {num(p.get('p99_ms'))}", lat,
            met("p50 no worse", v.get("p50_ms") and p.get("p50_ms") and v["p50_ms"] <= p["p50_ms"])
            if c == 1 else "")
        if v.get("errors") or p.get("errors"):
            row(f"/predict c={c} errors", v.get("errors") or 0, p.get("errors") or 0, "")
    if tops:
        same = tops.get("vitrine") == tops.get("pipeline")
        row("top label of one image", tops.get("vitrine") or "-", tops.get("pipeline") or "-",
            "same" if same else "different")
    extras = sorted(d.glob("vitrine_job_*.json"))
    if extras:
        print()
        print("Other precisions (vitrine, same data and recipe, shorter runs; "
              "mixed_precision as named):")
        for path in extras:
            j = load_json(path) or {}
            eps = j.get("metrics") or []
            acc = eps[-1]["validation"].get("accuracy") if eps else None
            ips = [e["train_images_per_sec"] for e in eps]
            print(f"- {path.stem.removeprefix('vitrine_job_')}: {j.get('status')}, "
                  f"{len(eps)} epoch(s), train images/s per epoch {fmt_curve(ips)}, "
                  f"train loss {fmt_curve([e['train_loss'] for e in eps])}, "
                  f"final validation accuracy {num(acc and 100 * acc, suffix='%')}"
                  + (f"; error: {j.get('error')}" if j.get("error") else ""))
    if failures:
        print()
        print("Steps that did not go as planned:")
        for f in failures:
            print(f"- {f}")


def met(target: str, ok, measurable: bool = True) -> str:
    if ok is None or not measurable:
        return f"{target}: n/a"
    return f"{target}: {'met' if ok else 'NOT MET'}"


def curves_alike(a, b) -> str:
    """Both fall from the first epoch to the last, and no epoch's values
    differ by more than 10% of the larger first-epoch value."""
    if len(a) != len(b) or not a:
        return "n/a"
    if any(x is None or x != x for x in a + b):
        return "differ (NaN)"
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
