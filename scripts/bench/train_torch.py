"""The baseline of the training-throughput benchmark: a plain PyTorch loop.

  train_torch.py IMAGES_DIR MODEL_DIR THREADS WORKERS [BATCH] [SKIP_STEPS]

What a notebook would write: torchvision `ImageFolder` over
`IMAGES_DIR/train` (Pillow decoding), `RandomResizedCrop` + horizontal flip
+ `ToTensor` + `Normalize` from the model's preprocessor config, a
`DataLoader` with WORKERS worker processes, `transformers`'
`ViTForImageClassification` (SDPA attention, fp32), `torch.optim.AdamW`,
cross-entropy, gradient clipping at 1.0; one pass over the images with the
same batch size, thread count and learning-rate schedule shape as vitrine's
`full` job. Prints one JSON line: images/s over the steps after the first
SKIP_STEPS (default 2: warm-up, worker start).
"""
import json
import sys
import time

import torch
from torchvision import datasets, transforms
from transformers import AutoImageProcessor, ViTForImageClassification


def main() -> None:
    images, model_dir, threads, workers = sys.argv[1:5]
    batch = int(sys.argv[5]) if len(sys.argv) > 5 else 32
    skip = int(sys.argv[6]) if len(sys.argv) > 6 else 2
    threads, workers = int(threads), int(workers)
    torch.set_num_threads(threads)
    torch.manual_seed(0)

    proc = AutoImageProcessor.from_pretrained(model_dir)
    size = proc.size["height"]
    tf = transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                                     interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(proc.image_mean, proc.image_std),
    ])
    data = datasets.ImageFolder(f"{images}/train", transform=tf)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True,
                                         num_workers=workers,
                                         persistent_workers=workers > 0)
    model = ViTForImageClassification.from_pretrained(
        model_dir, num_labels=len(data.classes), ignore_mismatched_sizes=True)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    total = len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, round(0.1 * total))))
    loss_fn = torch.nn.CrossEntropyLoss()

    stamps = []
    for x, y in loader:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(pixel_values=x).logits, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss.item()
        stamps.append(time.perf_counter())
    timed = len(stamps) - skip - 1
    print(json.dumps({
        "impl": "pytorch",
        "threads": threads,
        "workers": workers,
        "steps": len(stamps),
        "timed_steps": timed,
        "images_per_sec": timed * batch / (stamps[-1] - stamps[skip]) if timed > 0 else None,
    }))


if __name__ == "__main__":
    main()
