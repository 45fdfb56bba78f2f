"""Tiny random DINOv2 checkpoints and reference outputs for tests/dinov2_parity.rs.

Usage: make_dinov2_fixtures.py OUT_DIR

For each fixture NAME it writes OUT_DIR/NAME/model/ (a checkpoint saved by
transformers' `save_pretrained`) and OUT_DIR/NAME/io.safetensors with
`pixel_values` at the config's image size and `pixel_values_interp` at
another size (position embeddings interpolated, as transformers always does
when the patch grid differs), and for each: `features_*` (concat of the
final-layernorm CLS token and the mean patch token, the classifier input)
and `logits_*` when the checkpoint has a head. Seeded, fp32, eval mode.
"""

import os
import sys

import torch
from safetensors.torch import save_file

import transformers
from transformers import (
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification,
)

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
torch.set_num_threads(1)


def config(labels=None, **kw):
    base = dict(
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        mlp_ratio=4,
        image_size=28,
        patch_size=7,
        num_channels=3,
    )
    base.update(kw)
    cfg = Dinov2Config(**base)
    if labels:
        cfg.id2label = {i: l for i, l in enumerate(labels)}
        cfg.label2id = {l: i for i, l in enumerate(labels)}
    return cfg


def randomise(model, seed):
    """Random values everywhere (LayerScale, norms and biases included), so
    every parameter matters to the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lambda1"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def has_head(model):
    return isinstance(model, (Dinov2ForImageClassification, Dinov2WithRegistersForImageClassification))


def features(model, pixels):
    base = getattr(model, model.base_model_prefix) if has_head(model) else model
    h = base(pixel_values=pixels).last_hidden_state
    skip = 1 + getattr(model.config, "num_register_tokens", 0)
    return torch.cat([h[:, 0], h[:, skip:].mean(dim=1)], dim=1)


def fixture(root, name, model, size, interp, seed=0):
    out = os.path.join(root, name)
    os.makedirs(out, exist_ok=True)
    model.eval()
    model.save_pretrained(os.path.join(out, "model"))
    g = torch.Generator().manual_seed(seed)
    channels = model.config.num_channels
    io = {
        "pixel_values": torch.randn(2, channels, size, size, generator=g),
        "pixel_values_interp": torch.randn(2, channels, interp[0], interp[1], generator=g),
    }
    with torch.no_grad():
        for suffix, key in [("", "pixel_values"), ("_interp", "pixel_values_interp")]:
            io["features" + suffix] = features(model, io[key])
            if has_head(model):
                io["logits" + suffix] = model(pixel_values=io[key]).logits
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(out, "io.safetensors"))


def main(root):
    torch.manual_seed(0)
    # Patch 7, 28 px (4x4 grid), layerscale 1.0, gelu MLP; interpolated at 42x35 (6x5 grid).
    m = Dinov2ForImageClassification(config(["cat", "dog", "fox", "owl", "yak"]))
    randomise(m, 1)
    fixture(root, "cls_p7_s28", m, 28, (42, 35))

    # Patch 4, 16 px, SwiGLU, layerscale 0.1 kept as initialised, 3 layers, no
    # qkv bias, hidden 34 ratio 3 (102 -> 72 SwiGLU units), 1 channel; interpolated up to 24 px
    # and down to a non-multiple 13x10 px (3x2 grid).
    m = Dinov2ForImageClassification(
        config(
            ["a", "b", "c"], hidden_size=34, num_attention_heads=2, num_hidden_layers=3, mlp_ratio=3,
            image_size=16, patch_size=4, use_swiglu_ffn=True, layerscale_value=0.1, qkv_bias=False,
            num_channels=1, hidden_act="gelu",
        )
    )
    with torch.no_grad():  # random weights, transformers' LayerScale init
        for n, p in m.named_parameters():
            if not n.endswith("lambda1"):
                p.normal_(0, 0.1)
    fixture(root, "cls_swiglu_p4_s16", m, 16, (24, 24))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 1, 13, 10, generator=g)
    with torch.no_grad():
        extra = {"pixel_values": x, "logits": m(pixel_values=x).logits, "features": features(m, x)}
    save_file({k: v.contiguous() for k, v in extra.items()},
              os.path.join(root, "cls_swiglu_p4_s16", "io_small.safetensors"))

    # Bare Dinov2Model (keys without `dinov2.`), patch 8, 32 px, eps 1e-5, tanh gelu, mask token off.
    m = Dinov2Model(config(hidden_size=64, num_attention_heads=8, num_hidden_layers=2, image_size=32,
                           patch_size=8, layer_norm_eps=1e-5, hidden_act="gelu_pytorch_tanh",
                           use_mask_token=False, layerscale_value=0.5))
    randomise(m, 2)
    fixture(root, "bare_p8_s32", m, 32, (64, 48))

    # DINOv2-small proportions (patch 14, 518 px training grid, 37x37 positions),
    # 2 layers, at the 224 px input every dinov2 checkpoint is used with.
    m = Dinov2ForImageClassification(config(["x", "y"], hidden_size=48, num_attention_heads=2,
                                            num_hidden_layers=2, image_size=518, patch_size=14))
    randomise(m, 3)
    fixture(root, "cls_p14_s518", m, 518, (224, 224))

    # Dinov2WithRegisters: 3 register tokens, patch 4, 32 px (8x8 grid), downsampled
    # to 20x12 px (5x3 grid: the antialiased interpolation matters).
    cfg = Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=4,
                                    image_size=32, patch_size=4, num_register_tokens=3)
    cfg.id2label = {0: "u", 1: "v", 2: "w", 3: "z"}
    cfg.label2id = {v: k for k, v in cfg.id2label.items()}
    m = Dinov2WithRegistersForImageClassification(cfg)
    randomise(m, 4)
    fixture(root, "registers_p4_s32", m, 32, (20, 12))


if __name__ == "__main__":
    main(sys.argv[1])
