"""The baseline of the training benchmarks: a plain PyTorch loop.

  train_torch.py IMAGES_DIR MODEL_DIR THREADS WORKERS [BATCH] [SKIP_STEPS]
                 [--device cpu|cuda] [--epochs N] [--lr LR] [--bf16]
                 [--pin-memory] [--evaluate]

What a notebook would write: torchvision `ImageFolder` over
`IMAGES_DIR/train` (Pillow decoding), `RandomResizedCrop` + horizontal flip
+ `ToTensor` + `Normalize` from the model's preprocessor config, a
`DataLoader` with WORKERS persistent worker processes (and pinned memory
with `--pin-memory`), `transformers`' `ViTForImageClassification` (SDPA
attention; fp32, or bf16 autocast with `--bf16`), `torch.optim.AdamW`
(torch's default implementation; weight decay 0.01), cross-entropy,
gradient clipping at 1.0, and vitrine's `full` schedule: linear warm-up
over the first 10% of all steps, then cosine to zero. Same batch size,
thread count and learning rate (default 5e-5, vitrine's `full` default)
as the vitrine job it is compared with. The loss is summed on the device
and read once per epoch, so the host never waits for the GPU mid-epoch.

Prints one JSON line:
- `images_per_sec`: one epoch: the steps after the first SKIP_STEPS
  (default 2: warm-up, worker start); several epochs: the mean over the
  epochs after the first (the steady state; the first pays for worker start,
  cuDNN/cuBLAS autotuning and the allocator's growth);
- `epochs`: one record per epoch: training images/s (the epoch's images
  over its wall time, validation excluded, like vitrine's
  `train_images_per_sec`), mean training loss and, with `--evaluate`,
  validation loss and accuracy over `IMAGES_DIR/validation` (resized to the
  model's size, no augmentation, under the same autocast).
"""
import argparse
import json
import math
import sys
import time

import torch
from torchvision import datasets, transforms
from transformers import AutoImageProcessor, ViTForImageClassification


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images")
    ap.add_argument("model_dir")
    ap.add_argument("threads", type=int)
    ap.add_argument("workers", type=int)
    ap.add_argument("batch", type=int, nargs="?", default=32)
    ap.add_argument("skip", type=int, nargs="?", default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast for forward and loss")
    ap.add_argument("--pin-memory", action="store_true")
    ap.add_argument("--evaluate", action="store_true", help="validation after every epoch")
    return ap.parse_args()


def lr_factor(step: int, total: int, warmup: int) -> float:
    """vitrine's `train::optim::lr_at` divided by the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def loader(folder, batch, shuffle, workers, pin):
    return torch.utils.data.DataLoader(folder, batch_size=batch, shuffle=shuffle,
                                       num_workers=workers, pin_memory=pin,
                                       persistent_workers=workers > 0)


def main() -> None:
    process_started = time.perf_counter()
    args = parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    proc = AutoImageProcessor.from_pretrained(args.model_dir)
    size = proc.size["height"]
    normalize = transforms.Normalize(proc.image_mean, proc.image_std)
    train_tf = transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                                     interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        normalize,
    ])
    eval_tf = transforms.Compose([
        transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.ToTensor(),
        normalize,
    ])
    data = datasets.ImageFolder(f"{args.images}/train", transform=train_tf)
    train_loader = loader(data, args.batch, True, args.workers, args.pin_memory)
    val_loader = None
    if args.evaluate:
        val = datasets.ImageFolder(f"{args.images}/validation", transform=eval_tf)
        assert val.classes == data.classes, "validation classes differ from training classes"
        val_loader = loader(val, args.batch, False, args.workers, args.pin_memory)

    model = ViTForImageClassification.from_pretrained(
        args.model_dir, num_labels=len(data.classes), ignore_mismatched_sizes=True,
        attn_implementation="sdpa")
    assert model.config._attn_implementation == "sdpa"
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    total = len(train_loader) * args.epochs
    warmup = round(0.1 * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup))
    loss_fn = torch.nn.CrossEntropyLoss()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    records, first_epoch_stamps = [], []
    for epoch in range(1, args.epochs + 1):
        model.train()
        loss_sum = torch.zeros((), device=device)
        seen = 0
        started = time.perf_counter()
        for x, y in train_loader:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = loss_fn(model(pixel_values=x).logits.float(), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            loss_sum += loss.detach() * len(y)
            seen += len(y)
            if epoch == 1 and args.epochs == 1:
                sync()
                first_epoch_stamps.append(time.perf_counter())
        sync()
        secs = time.perf_counter() - started
        record = {"epoch": epoch, "train_loss": loss_sum.item() / max(1, seen),
                  "seconds": secs, "train_images_per_sec": seen / secs}
        if val_loader is not None:
            record.update(evaluate(model, val_loader, device, autocast, loss_fn))
        records.append(record)
        print(json.dumps({"progress": record}), file=sys.stderr, flush=True)

    if args.epochs == 1:
        stamps, skip = first_epoch_stamps, args.skip
        timed = len(stamps) - skip - 1
        ips = timed * args.batch / (stamps[-1] - stamps[skip]) if timed > 0 else None
    else:
        steady = [r["train_images_per_sec"] for r in records[1:]]
        ips = sum(steady) / len(steady)
    print(json.dumps({
        "impl": "pytorch",
        "device": str(device),
        "bf16": args.bf16,
        "threads": args.threads,
        "workers": args.workers,
        "batch": args.batch,
        "steps": len(train_loader) * args.epochs,
        "images_per_sec": ips,
        "wall_secs": time.perf_counter() - process_started,
        "epochs": records,
    }))


@torch.no_grad()
def evaluate(model, val_loader, device, autocast, loss_fn) -> dict:
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    for x, y in val_loader:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with autocast:
            logits = model(pixel_values=x).logits.float()
        loss_sum += loss_fn(logits, y) * len(y)
        correct += (logits.argmax(-1) == y).sum()
        n += len(y)
    return {"validation_loss": loss_sum.item() / max(1, n), "accuracy": correct.item() / max(1, n)}


if __name__ == "__main__":
    main()
