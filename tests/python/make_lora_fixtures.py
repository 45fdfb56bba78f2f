"""Tiny random bases and PEFT LoRA adapters for tests/model/lora.rs.

Usage: make_lora_fixtures.py OUT_DIR

For each family NAME (vit, dinov2, swin) it writes OUT_DIR/NAME/base/ (a
`transformers` classifier with labels cat/dog/fox), OUT_DIR/NAME/adapter/
(a `peft` LoRA adapter on it: r=4, alpha=8, query and value, the head in
`modules_to_save`, B drawn at random so every term counts) and
OUT_DIR/NAME/io.safetensors with `pixel_values`, `targets` and `logits`
(peft's, eval mode). For vit also OUT_DIR/vit/adapter_v4/ (the same adapter
in the `transformers` 4 naming, `...attention.attention.query`, as adapters
made before transformers 5 carry) and, in io.safetensors, PEFT's state after
ONE AdamW step (lr 1e-3, weight decay 0.01 but not on biases) on that batch
from the adapter's weights: `step1.<key>` per adapter tensor and
`logits_step1`. Seeded, fp32.
"""

import json
import os
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file

import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import (
    AutoModelForImageClassification,
    Dinov2Config,
    SwinConfig,
    ViTConfig,
)

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
torch.set_num_threads(1)

LABELS = {0: "cat", 1: "dog", 2: "fox"}


def configs():
    common = dict(id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    return {
        "vit": ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, image_size=32, patch_size=8, **common),
        "dinov2": Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               mlp_ratio=2, image_size=32, patch_size=8, **common),
        "swin": SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
                           num_heads=[2, 2], window_size=4, **common),
    }


def peft_model(base_dir):
    base = AutoModelForImageClassification.from_pretrained(base_dir)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                     modules_to_save=["classifier"], init_lora_weights=False)
    return get_peft_model(base, cfg)


def one_step(model, x, y):
    model.train()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if not n.endswith("bias")]
    no_decay = [p for n, p in params if n.endswith("bias")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}], lr=1e-3)
    loss = torch.nn.functional.cross_entropy(model(pixel_values=x).logits, y)
    loss.backward()
    opt.step()
    model.eval()


def v4_copy(src, dst):
    """The adapter as transformers 4 named ViT's modules."""
    os.makedirs(dst, exist_ok=True)
    tensors = load_file(os.path.join(src, "adapter_model.safetensors"))
    renamed = {}
    for k, v in tensors.items():
        k = k.replace("vit.layers.", "vit.encoder.layer.")
        k = k.replace(".attention.q_proj.", ".attention.attention.query.")
        k = k.replace(".attention.v_proj.", ".attention.attention.value.")
        renamed[k] = v
    save_file(renamed, os.path.join(dst, "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = json.load(open(os.path.join(src, "adapter_config.json")))
    cfg["target_modules"] = ["query", "value"]
    json.dump(cfg, open(os.path.join(dst, "adapter_config.json"), "w"))


def main(out):
    for name, cfg in configs().items():
        torch.manual_seed(0)
        root = os.path.join(out, name)
        base_dir = os.path.join(root, "base")
        AutoModelForImageClassification.from_config(cfg).eval().save_pretrained(base_dir)
        torch.manual_seed(1)
        model = peft_model(base_dir).eval()
        model.save_pretrained(os.path.join(root, "adapter"))
        torch.manual_seed(2)
        x = torch.randn(4, 3, 32, 32)
        y = torch.tensor([0, 1, 2, 1])
        io = {"pixel_values": x, "targets": y}
        with torch.no_grad():
            io["logits"] = model(pixel_values=x).logits
        if name == "vit":
            v4_copy(os.path.join(root, "adapter"), os.path.join(root, "adapter_v4"))
            one_step(model, x, y)
            with torch.no_grad():
                io["logits_step1"] = model(pixel_values=x).logits
            model.save_pretrained(os.path.join(root, "step1"))
            for k, v in load_file(os.path.join(root, "step1", "adapter_model.safetensors")).items():
                io["step1." + k] = v
            shutil.rmtree(os.path.join(root, "step1"))
        save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(root, "io.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1])
