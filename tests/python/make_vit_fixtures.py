"""Tiny random ViT checkpoints and reference outputs for tests/vit_parity.rs.

Usage: make_vit_fixtures.py OUT_DIR

For each fixture NAME it writes OUT_DIR/NAME/model/ (a checkpoint in the
layout under test) and OUT_DIR/NAME/io.safetensors with `pixel_values`, the
reference `cls` (final-layernorm CLS hidden state) and `logits` when the
checkpoint has a head; `pixel_values_interp` / `logits_interp` / `cls_interp`
at another input size with `interpolate_pos_encoding=True` where asked.
Everything is seeded, fp32, eval mode.
"""

import json
import os
import sys

import torch
from safetensors.torch import save_file

import transformers
from transformers import ViTConfig, ViTForImageClassification, ViTForMaskedImageModeling, ViTModel

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
torch.set_num_threads(1)


def config(**kw):
    base = dict(
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        image_size=32,
        patch_size=8,
        num_channels=3,
    )
    base.update(kw)
    return ViTConfig(**base)


def labelled(cfg, labels):
    cfg.id2label = {i: l for i, l in enumerate(labels)}
    cfg.label2id = {l: i for i, l in enumerate(labels)}
    return cfg


def write_io(out, model, size, channels, interp_size=None, has_head=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    io = {"pixel_values": torch.randn(2, channels, size, size, generator=g)}

    def run(pixels, interp):
        with torch.no_grad():
            if has_head:
                o = model(pixel_values=pixels, output_hidden_states=True, interpolate_pos_encoding=interp)
                # hidden_states[-1] is before the final layernorm: recompute CLS features.
                base = model.vit
                h = base(pixel_values=pixels, interpolate_pos_encoding=interp).last_hidden_state
                return o.logits, h[:, 0]
            h = model(pixel_values=pixels, interpolate_pos_encoding=interp).last_hidden_state
            return None, h[:, 0]

    logits, cls = run(io["pixel_values"], False)
    io["cls"] = cls
    if logits is not None:
        io["logits"] = logits
    if interp_size is not None:
        h, w = interp_size
        io["pixel_values_interp"] = torch.randn(2, channels, h, w, generator=g)
        logits, cls = run(io["pixel_values_interp"], True)
        io["cls_interp"] = cls
        if logits is not None:
            io["logits_interp"] = logits
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(out, "io.safetensors"))


def hf_fixture(root, name, model, size, channels=3, save_kw=None, **io_kw):
    out = os.path.join(root, name)
    os.makedirs(out, exist_ok=True)
    model.eval()
    model.save_pretrained(os.path.join(out, "model"), **(save_kw or {}))
    write_io(out, model, size, channels, has_head=isinstance(model, ViTForImageClassification), **io_kw)


def main(root):
    torch.manual_seed(0)
    # Classifier, patch 8, 32 px, qkv bias, dropout configured (eval must ignore it).
    m = ViTForImageClassification(
        labelled(config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1), ["cat", "dog", "fox", "owl", "yak"])
    )
    hf_fixture(root, "cls_p8_s32_d2", m, 32, interp_size=(48, 40))

    # Classifier, patch 4, 16 px, no qkv bias, tanh gelu, 3 layers, eps 1e-6, 1 channel.
    m = ViTForImageClassification(
        labelled(
            config(
                hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=3,
                image_size=16, patch_size=4, qkv_bias=False, hidden_act="gelu_new",
                layer_norm_eps=1e-6, num_channels=1,
            ),
            ["a", "b", "c"],
        )
    )
    hf_fixture(root, "cls_p4_s16_d3_nobias", m, 16, channels=1)

    # Bare ViTModel with pooler, patch 16, 64 px, one layer (keys without `vit.`).
    m = ViTModel(config(hidden_size=64, num_attention_heads=4, intermediate_size=128, num_hidden_layers=1,
                        image_size=64, patch_size=16))
    hf_fixture(root, "bare_pooler_p16_s64", m, 64, interp_size=(96, 96))

    # Classifier stored in bfloat16 and sharded: reference is its fp32 upcast.
    m = ViTForImageClassification(labelled(config(hidden_size=64, num_attention_heads=8, intermediate_size=128,
                                                  num_hidden_layers=2), ["x", "y"]))
    m = m.to(torch.bfloat16).float()
    hf_fixture(root, "cls_bf16_sharded", m, 32)
    out = os.path.join(root, "cls_bf16_sharded", "model")
    for f in os.listdir(out):
        os.remove(os.path.join(out, f))
    m.to(torch.bfloat16).save_pretrained(out, max_shard_size="40KB")
    m.float()

    # Every parameter-free activation of transformers' ACT2FN, one fixture each.
    for act in ACTIVATIONS:
        m = ViTForImageClassification(labelled(config(hidden_act=act, num_hidden_layers=1), ["a", "b"]))
        with torch.no_grad():  # pre-activations spread over about [-30, 30]: clipping and tails matter
            m.vit.layers[0].mlp.fc1.weight.normal_(0, 2.0)  # `intermediate.dense` on disk
        hf_fixture(root, f"act_{act}", m, 32)

    # ViTForMaskedImageModeling (SimMIM-style pre-training): backbone with a
    # mask token, no pooler, and a `decoder.*` pixel head. Reference: the
    # backbone's final-layernorm CLS token.
    m = ViTForMaskedImageModeling(config(encoder_stride=8)).eval()
    out = os.path.join(root, "mim_p8_s32")
    os.makedirs(out, exist_ok=True)
    m.save_pretrained(os.path.join(out, "model"))
    write_io(out, m.vit, 32, 3, has_head=False)

    timm_fixture(root)


ACTIVATIONS = [
    "gelu", "gelu_python", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "gelu_accurate",
    "gelu_python_tanh", "gelu_10", "quick_gelu", "relu", "relu2", "relu6", "leaky_relu",
    "silu", "swish", "mish", "hardswish", "tanh", "sigmoid", "sqrtsoftplus", "laplace", "linear",
]


def timm_fixture(root):
    import timm

    out = os.path.join(root, "timm_vit_tiny")
    os.makedirs(os.path.join(out, "model"), exist_ok=True)
    args = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=4)
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, **args).eval()
    torch.manual_seed(1)
    with torch.no_grad():  # timm zero-inits the head: make it matter
        m.head.weight.normal_(0, 0.2)
        m.head.bias.normal_(0, 0.2)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, os.path.join(out, "model", "model.safetensors"))
    cfg = {
        "architecture": "vit_tiny_patch16_224",
        "num_classes": 4,
        "num_features": 48,
        "global_pool": "token",
        "model_args": args,
        "label_names": ["n01", "n02", "n03", "n04"],
        "pretrained_cfg": {
            "input_size": [3, 32, 32],
            "interpolation": "bicubic",
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
            "crop_pct": 0.9,
        },
    }
    with open(os.path.join(out, "model", "config.json"), "w") as f:
        json.dump(cfg, f)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        feats = m.forward_head(m.forward_features(x), pre_logits=True)
        logits = m(x)
    save_file({"pixel_values": x, "logits": logits.contiguous(), "cls": feats.contiguous()}, os.path.join(out, "io.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1])
