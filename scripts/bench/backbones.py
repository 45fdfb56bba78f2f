"""The course's comparison on real data: ViT, Swin, ConvNeXt and ResNet of
similar size, trained from random initialisation on small Fashion-MNIST
subsets, against DINOv2-S/14 (pre-trained, linear probe) as the reference.

  backbones.py [URL] [--per-class 20,200] [--validation N] [--test N]
               [--epochs SMALL,LARGE] [--image-size PX] [--seed S]
               [--pretrained DIR] [--work DIR] [--families vit,swin,convnext,resnet]

URL defaults to http://localhost:8080 (a running `vitrine serve`). For each
training size (images per class) it makes the subset with
scripts/fashion_mnist.py (Debian's dataset-fashion-mnist; validation and
test sets are the same for every size), uploads it once, and runs one job
per backbone, one after another: random-init models made here by
`transformers` (`XForImageClassification(config)` under torch.manual_seed,
no pretrained weights are available offline), `full` mode at `image_size`
(default 32, from 28x28); DINOv2-S/14 from scripts/fetch-dinov2-small.sh as
a `linear_probe` at 112. Prints a markdown table: backbone, parameters,
images per class, mode, epochs, best validation accuracy, test accuracy and
the job's wall time. Standard library plus torch/transformers (the venv).
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from transfer_report import run_job, timestamp, upload  # noqa: E402


def random_models(work: Path, size: int, seed: int, families: list[str]) -> dict:
    """Random-init classifiers of about 0.5M parameters each, saved with the
    image processor their family uses on the Hub (mean = std = 0.5 here)."""
    import torch
    from transformers import (ConvNextConfig, ConvNextForImageClassification, ConvNextImageProcessor,
                              ResNetConfig, ResNetForImageClassification, SwinConfig,
                              SwinForImageClassification, ViTConfig, ViTForImageClassification,
                              ViTImageProcessor)
    from transformers.utils import logging
    logging.disable_progress_bar()
    square = ViTImageProcessor(size={"height": size, "width": size}, resample=3)
    # crop_pct 1: the whole 28x28 item, as the ViT and Swin processors see it.
    convnext_proc = ConvNextImageProcessor(size={"shortest_edge": size}, crop_pct=1.0,
                                           image_mean=[0.5] * 3, image_std=[0.5] * 3)
    makers = {
        "vit": (lambda: ViTForImageClassification(ViTConfig(
            image_size=size, patch_size=4, hidden_size=128, num_hidden_layers=4,
            num_attention_heads=4, intermediate_size=256)), square),
        "swin": (lambda: SwinForImageClassification(SwinConfig(
            image_size=size, patch_size=2, embed_dim=32, depths=[2, 2, 2], num_heads=[2, 4, 8],
            window_size=4)), square),
        "convnext": (lambda: ConvNextForImageClassification(ConvNextConfig(
            patch_size=2, hidden_sizes=[40, 80, 160], depths=[2, 2, 2], num_stages=3)), convnext_proc),
        "resnet": (lambda: ResNetForImageClassification(ResNetConfig(
            embedding_size=32, hidden_sizes=[32, 64, 96], depths=[2, 2, 2], layer_type="basic",
            downsample_in_first_stage=False)), convnext_proc),
    }
    out = {}
    for family in families:
        make, proc = makers[family]
        d = work / f"{family}-{size}-s{seed}"
        torch.manual_seed(seed)
        model = make()
        params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("classifier"))
        if not (d / "model.safetensors").is_file():
            model.save_pretrained(d)
            proc.save_pretrained(d)
        out[family] = (d.resolve(), params)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", nargs="?", default="http://localhost:8080")
    ap.add_argument("--per-class", default="20,200", help="training images per class, one run each")
    ap.add_argument("--validation", type=int, default=30, help="validation images per class")
    ap.add_argument("--test", type=int, default=50, help="test images per class")
    ap.add_argument("--epochs", default="40,15", help="epochs of the random-init jobs per size")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--families", default="vit,swin,convnext,resnet")
    ap.add_argument("--pretrained", default=str(ROOT / "data/cache/dinov2-small"),
                    help="DINOv2-S/14 directory ('' to skip)")
    ap.add_argument("--work", default=str(ROOT / "data/cache/backbones"))
    ap.add_argument("--extra", default="{}",
                    help="job-config fields added to every random-init job (JSON), e.g. recipes")
    args = ap.parse_args()
    url = args.url.rstrip("/")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(n) for n in args.per_class.split(",")]
    epochs = [int(e) for e in args.epochs.split(",")]
    if len(epochs) != len(sizes):
        sys.exit("--epochs needs one value per --per-class size")
    models = random_models(work, args.image_size, args.seed, args.families.split(","))
    pretrained = Path(args.pretrained).resolve() if args.pretrained else None
    if pretrained and not (pretrained / "model.safetensors").is_file():
        sys.exit(f"{pretrained} has no model.safetensors: run scripts/fetch-dinov2-small.sh")

    import subprocess
    rows = []
    for per_class, n_epochs in zip(sizes, epochs):
        archive = work / f"fm-{per_class}-{args.validation}-{args.test}-s{args.seed}.zip"
        if not archive.is_file():
            subprocess.run([sys.executable, str(ROOT / "scripts/fashion_mnist.py"), str(archive),
                            "--train", str(per_class), "--validation", str(args.validation),
                            "--test", str(args.test), "--seed", str(args.seed)],
                           check=True, stdout=subprocess.DEVNULL)
        dataset = upload(url, archive)
        extra = json.loads(args.extra)
        runs = [(family, path, params, {"mode": "full", "epochs": n_epochs, "learning_rate": 1e-3,
                                        "image_size": args.image_size, **extra})
                for family, (path, params) in models.items()]
        if pretrained:
            runs.append(("DINOv2-S/14 pre-trained", pretrained, 22_056_576,
                         {"mode": "linear_probe", "epochs": 30, "learning_rate": 0.003,
                          "image_size": 112}))
        for name, path, params, extra in runs:
            config = {"base_model": str(path), "batch_size": 32, "seed": args.seed, **extra}
            print(f"{per_class}/class: {name} {extra['mode']} ...", file=sys.stderr, flush=True)
            job, model = run_job(url, dataset["id"], config)
            best = max(m["validation"]["accuracy"] for m in job["metrics"])
            test = (model["metrics"].get("test") or {}).get("metrics", {}).get("accuracy")
            wall = (timestamp(job["finished_at"]) - timestamp(job["started_at"])).total_seconds()
            rows.append((name, params, per_class, extra["mode"], extra["epochs"], best, test, wall))
            print(f"  validation {best:.3f}, test {test}, {wall:.0f} s", file=sys.stderr, flush=True)

    print(f"\nFashion-MNIST, 10 classes, {args.validation} validation and {args.test} test images "
          f"per class, seed {args.seed}; random-init models at {args.image_size} px"
          + (f", with {args.extra}" if args.extra != "{}" else "") + "\n")
    print("| backbone | backbone parameters | train images per class | mode | epochs "
          "| best validation accuracy | test accuracy | job wall time |")
    print("|---|---|---|---|---|---|---|---|")
    for name, params, per_class, mode, n_epochs, best, test, wall in rows:
        test = f"{test:.3f}" if test is not None else "-"
        print(f"| {name} | {params / 1e6:.2f} M | {per_class} | {mode} | {n_epochs} | {best:.3f} "
              f"| {test} | {wall:.0f} s |")


if __name__ == "__main__":
    main()
