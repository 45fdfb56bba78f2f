"""The baseline of the linear-probe benchmark: Hugging Face `Trainer` with the
backbone frozen, as the course notebook fine-tunes an image classifier.

  linear_probe_trainer.py IMAGES_DIR MODEL_DIR THREADS EPOCHS LR [BATCH]

IMAGES_DIR holds `train/<label>/*` and `validation/<label>/*`. The model is
`AutoModelForImageClassification` on MODEL_DIR with a new head; every
backbone parameter has `requires_grad = False`. Images are read with Pillow
and preprocessed by the model's `AutoImageProcessor` on the fly (the
notebook's `set_transform`), no augmentation (a linear probe's features must
not change between epochs, and vitrine caches them). AdamW, linear warm-up
over 10% of the steps then cosine, weight decay 0.01, evaluation every epoch.
Prints one JSON line: the wall time of `trainer.train()` (evaluations
included) and the best epoch's validation accuracy.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import (AutoImageProcessor, AutoModelForImageClassification, Trainer,
                          TrainingArguments)


class Folder(torch.utils.data.Dataset):
    def __init__(self, root: Path, labels: list[str], proc):
        self.items = [(p, labels.index(d.name)) for d in sorted(root.iterdir()) if d.is_dir()
                      for p in sorted(d.iterdir())]
        self.proc = proc

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        pixels = self.proc(Image.open(path).convert("RGB"), return_tensors="pt")["pixel_values"][0]
        return {"pixel_values": pixels, "labels": label}


def accuracy(pred):
    return {"accuracy": float((np.argmax(pred.predictions, axis=-1) == pred.label_ids).mean())}


def main() -> None:
    images, model_dir, threads, epochs, lr = sys.argv[1:6]
    batch = int(sys.argv[6]) if len(sys.argv) > 6 else 32
    torch.set_num_threads(int(threads))
    images = Path(images)
    labels = sorted(d.name for d in (images / "train").iterdir() if d.is_dir())
    proc = AutoImageProcessor.from_pretrained(model_dir)
    model = AutoModelForImageClassification.from_pretrained(
        model_dir, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={l: i for i, l in enumerate(labels)})
    head = {"classifier.weight", "classifier.bias"}
    for name, p in model.named_parameters():
        p.requires_grad = name in head
    args = TrainingArguments(
        output_dir="/tmp/vitrine-bench-trainer", num_train_epochs=int(epochs),
        per_device_train_batch_size=batch, per_device_eval_batch_size=batch,
        learning_rate=float(lr), weight_decay=0.01, warmup_steps=0.1,
        lr_scheduler_type="cosine", eval_strategy="epoch", save_strategy="no",
        logging_strategy="epoch", report_to="none", use_cpu=True, seed=42,
        remove_unused_columns=False, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, compute_metrics=accuracy,
                      train_dataset=Folder(images / "train", labels, proc),
                      eval_dataset=Folder(images / "validation", labels, proc))
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    accs = [h["eval_accuracy"] for h in trainer.state.log_history if "eval_accuracy" in h]
    print(json.dumps({"impl": "hf-trainer", "threads": int(threads), "wall_secs": wall,
                      "accuracy": max(accs), "best_epoch": 1 + accs.index(max(accs)),
                      "epochs": len(accs)}))


if __name__ == "__main__":
    main()
