"""Tiny random Swin checkpoints and reference outputs for tests/model/swin_parity.rs.

Usage: make_swin_fixtures.py OUT_DIR

For each fixture NAME it writes OUT_DIR/NAME/model/ (save_pretrained) and
OUT_DIR/NAME/io.safetensors with `pixel_values`, the reference `pooled`
(the backbone's `pooler_output`) and `logits` when the checkpoint has a
head; some fixtures add a second input `pixel_values_2` with `pooled_2` /
`logits_2` (another size). Everything is seeded, fp32, eval mode.

`transformers` initialises the relative position bias tables and absolute
position embeddings to zero and the norms to 1/0: every parameter is
perturbed so that each one matters in the comparison. Each forward pass
runs on a fresh copy of the model, because `SwinLayer` keeps the window
and shift it shrank to at a small input.
"""

import copy
import os
import sys

import torch
from safetensors.torch import save_file

import transformers
from transformers import SwinConfig, SwinForImageClassification, SwinModel

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
torch.set_num_threads(1)


def config(labels=("cat", "dog", "fox"), **kw):
    base = dict(image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4)
    base.update(kw)
    cfg = SwinConfig(**base)
    if labels is not None:
        cfg.id2label = {i: l for i, l in enumerate(labels)}
        cfg.label2id = {l: i for i, l in enumerate(labels)}
    return cfg


def perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name == "classifier.weight":  # logits of order 1, so 1e-4 is tight
                p.copy_(noise)
            elif "relative_position_bias" in name:
                p.copy_(noise)
            elif "position_embeddings" in name:
                p.copy_(noise * 0.5)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.05 * noise)
    return model


def run(model, pixels, interpolate):
    m = copy.deepcopy(model).eval()
    with torch.no_grad():
        if isinstance(m, SwinForImageClassification):
            out = m(pixel_values=pixels, interpolate_pos_encoding=interpolate)
            pooled = m.swin(pixel_values=pixels, interpolate_pos_encoding=interpolate).pooler_output
            return out.logits, pooled
        return None, m(pixel_values=pixels, interpolate_pos_encoding=interpolate).pooler_output


def fixture(root, name, model, size, second=None, interpolate_second=False, seed=0):
    """`size` and `second` are (height, width) of the inputs."""
    out = os.path.join(root, name)
    os.makedirs(out, exist_ok=True)
    model = perturb(model, seed + 100).eval()
    model.save_pretrained(os.path.join(out, "model"))
    g = torch.Generator().manual_seed(seed)
    channels = model.config.num_channels
    io = {"pixel_values": torch.randn(2, channels, *size, generator=g)}
    logits, pooled = run(model, io["pixel_values"], False)
    io["pooled"] = pooled
    if logits is not None:
        io["logits"] = logits
    if second is not None:
        io["pixel_values_2"] = torch.randn(2, channels, *second, generator=g)
        logits, pooled = run(model, io["pixel_values_2"], interpolate_second)
        io["pooled_2"] = pooled
        if logits is not None:
            io["logits_2"] = logits
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(out, "io.safetensors"))


def main(root):
    torch.manual_seed(0)
    # 36 px, patch 4: a 9x9 map, window 4 -> padded to 12x12 (stage 0) and,
    # after merging (odd side padded), 5x5 -> 8x8 (stage 1, shifted).
    # Second input 34x38: the pixels are padded to whole patches first.
    m = SwinForImageClassification(config(image_size=36, hidden_dropout_prob=0.1,
                                          attention_probs_dropout_prob=0.1))
    fixture(root, "pad_s36_w4", m, (36, 36), second=(34, 38))

    # Non-square 32x48 input, window 2: 8x12 -> 4x6 -> 2x3, where the window
    # covers the shorter side (no shift) and the width is padded to 4.
    m = SwinForImageClassification(config(embed_dim=8, depths=[1, 1, 2], num_heads=[1, 2, 4], window_size=2,
                                          labels=("a", "b")))
    fixture(root, "rect_w2_3stages", m, (32, 48), seed=1)

    # Absolute position embeddings; the second input (48x40) interpolates
    # them (`interpolate_pos_encoding=True`).
    m = SwinForImageClassification(config(use_absolute_embeddings=True, labels=("x", "y", "z", "w")))
    fixture(root, "abs_pos", m, (32, 32), second=(48, 40), interpolate_second=True, seed=2)

    # Three stages [2, 2, 6], patch 2, window 2 (shifted everywhere), no qkv
    # bias, mlp_ratio 2.5, eps 1e-3 (blocks and final norm only), stochastic
    # depth configured (eval ignores it).
    m = SwinForImageClassification(config(patch_size=2, depths=[2, 2, 6], num_heads=[2, 4, 8], window_size=2,
                                          qkv_bias=False, mlp_ratio=2.5, layer_norm_eps=1e-3,
                                          drop_path_rate=0.3, hidden_act="gelu"))
    fixture(root, "deep_2_2_6", m, (32, 32), seed=3)

    # swin-tiny-like: window 7, 56 px: 14x14 -> 7x7 (one window, no shift);
    # tanh GELU, 1 channel, 24 wide with 3 and 6 heads.
    m = SwinForImageClassification(config(image_size=56, embed_dim=24, num_heads=[3, 6], window_size=7,
                                          hidden_act="gelu_new", num_channels=1, labels=("p", "q")))
    fixture(root, "w7_s56_gelu_new", m, (56, 56), second=(70, 84), seed=4)

    # Bare SwinModel (keys without `swin.`): no head, reference = pooler_output.
    m = SwinModel(config(labels=None))
    fixture(root, "bare_model", m, (32, 32), seed=5)


if __name__ == "__main__":
    main(sys.argv[1])
