"""Tiny random ConvNeXt and ResNet checkpoints and reference outputs for
tests/model/cnn_parity.rs.

Usage: make_cnn_fixtures.py OUT_DIR

For each fixture NAME it writes OUT_DIR/NAME/model/ (save_pretrained) and
OUT_DIR/NAME/io.safetensors with, in fp32:

- `pixel_values` [4, 3, H, W] and `labels` [4] (int64);
- eval mode: `logits` (when the checkpoint has a head) and `pooled`
  (the backbone's `pooler_output`, flattened);
- training (on a copy, checkpoints with a head only): `train_logits` of a
  forward in train mode (batch norm on batch statistics), then one SGD step
  (lr 0.1, no momentum) on the mean cross-entropy against `labels`, then
  `train_logits2` of a second train-mode forward, `eval_logits_after` in
  eval mode, and every buffer after both forwards as `after.<name>`
  (running_mean, running_var, num_batches_tracked);
- ResNet only: `frozen_logits`, a train-mode forward with the stem and
  stages 0-1 in eval mode (what `set_trainable_parts(LastLayers(stages - 2))` asks of vitrine).

Random init leaves batch-norm statistics at 0/1 and ConvNeXt's layer scale
at 1e-6 (blocks near the identity): both are randomised, seeded, before
saving, so the references exercise them. Stochastic depth (drop_path_rate
> 0) is random in training: such fixtures have eval references only.
"""

import copy
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import transformers
from transformers import (
    ConvNextConfig,
    ConvNextForImageClassification,
    ConvNextModel,
    ResNetConfig,
    ResNetForImageClassification,
    ResNetModel,
)

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
torch.set_num_threads(1)

LR = 0.1


def labelled(cfg, n):
    labels = [f"c{i}" for i in range(n)]
    cfg.id2label = dict(enumerate(labels))
    cfg.label2id = {l: i for i, l in enumerate(labels)}
    return cfg


def perturb(model, seed):
    """Seeded non-trivial norms, running statistics and layer scales."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(0.5 + torch.rand(c, generator=g))
                module.bias.copy_(0.2 * torch.randn(c, generator=g))
                module.running_mean.copy_(0.3 * torch.randn(c, generator=g))
                module.running_var.copy_(0.5 + torch.rand(c, generator=g))
                module.num_batches_tracked.fill_(int(torch.randint(1, 100, (1,), generator=g)))
            elif isinstance(module, torch.nn.LayerNorm):
                c = module.weight.shape[0]
                module.weight.copy_(1 + 0.2 * torch.randn(c, generator=g))
                module.bias.copy_(0.2 * torch.randn(c, generator=g))
        for name, p in model.named_parameters():
            if name.endswith("layer_scale_parameter"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))


def pooled(model, x):
    base = model.convnext if hasattr(model, "convnext") else getattr(model, "resnet", model)
    return base(pixel_values=x).pooler_output.flatten(1)


def write(root, name, model, size, num_labels, seed, train=True):
    out = os.path.join(root, name)
    os.makedirs(out, exist_ok=True)
    perturb(model, seed)
    model.eval()
    model.save_pretrained(os.path.join(out, "model"))
    h, w = size
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, h, w, generator=g)
    labels = torch.randint(0, max(num_labels, 1), (4,), generator=g)
    io = {"pixel_values": x, "labels": labels}
    has_head = num_labels > 0
    with torch.no_grad():
        io["pooled"] = pooled(model, x)
        if has_head:
            io["logits"] = model(pixel_values=x).logits
    if has_head and train:
        m = copy.deepcopy(model).train()
        logits = m(pixel_values=x).logits
        io["train_logits"] = logits.detach()
        F.cross_entropy(logits, labels).backward()
        with torch.no_grad():
            for p in m.parameters():
                if p.grad is not None:
                    p -= LR * p.grad
            io["train_logits2"] = m(pixel_values=x).logits
            m.eval()
            io["eval_logits_after"] = m(pixel_values=x).logits
        for bname, b in m.named_buffers():
            io[f"after.{bname}"] = b.detach().clone()
    if has_head and hasattr(model, "resnet"):
        m = copy.deepcopy(model).train()
        m.resnet.embedder.eval()
        for stage in m.resnet.encoder.stages[:2]:
            stage.eval()
        with torch.no_grad():
            io["frozen_logits"] = m(pixel_values=x).logits
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(out, "io.safetensors"))


def convnext(**kw):
    base = dict(num_channels=3, patch_size=4, initializer_range=0.1, image_size=64)
    base.update(kw)
    return ConvNextConfig(**base)


def resnet(**kw):
    return ResNetConfig(num_channels=3, **kw)


def main(root):
    torch.manual_seed(0)
    # ConvNeXt: four stages, layer scale (perturbed), one block per stage but the third.
    m = ConvNextForImageClassification(
        labelled(convnext(num_stages=4, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1]), 5)
    )
    write(root, "cnx_s4_ls", m, (64, 64), 5, seed=1)

    # Three stages, no layer scale, tanh GELU, final eps 1e-6.
    m = ConvNextForImageClassification(
        labelled(
            convnext(
                num_stages=3, hidden_sizes=[12, 24, 48], depths=[2, 2, 2], layer_scale_init_value=0.0,
                hidden_act="gelu_new", layer_norm_eps=1e-6, image_size=32,
            ),
            3,
        )
    )
    write(root, "cnx_s3_nols", m, (32, 32), 3, seed=2)

    # Two stages of equal width (still downsampled), patch 2, stochastic
    # depth configured (eval ignores it), a non-square input.
    m = ConvNextForImageClassification(
        labelled(
            convnext(num_stages=2, patch_size=2, hidden_sizes=[16, 16], depths=[3, 1], drop_path_rate=0.2,
                     image_size=40),
            4,
        )
    )
    write(root, "cnx_s2_p2_droppath", m, (40, 48), 4, seed=3, train=False)

    # One stage (no downsampling layer), patch 8, relu, several blocks.
    m = ConvNextForImageClassification(
        labelled(convnext(num_stages=1, patch_size=8, hidden_sizes=[20], depths=[3], hidden_act="relu",
                          image_size=48), 3)
    )
    write(root, "cnx_s1_p8_relu", m, (48, 40), 3, seed=10)

    # A bare ConvNextModel (keys without `convnext.`, no head).
    m = ConvNextModel(convnext(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], image_size=32))
    write(root, "cnx_bare", m, (32, 32), 0, seed=4)

    # ResNet, basic blocks, stem as wide as stage 0 (no shortcut there).
    m = ResNetForImageClassification(
        labelled(resnet(layer_type="basic", embedding_size=8, hidden_sizes=[8, 16, 24], depths=[2, 1, 2]), 5)
    )
    write(root, "rn_basic", m, (64, 64), 5, seed=5)

    # Basic, downsampling in the first stage (a strided shortcut there), non-square input.
    m = ResNetForImageClassification(
        labelled(
            resnet(layer_type="basic", embedding_size=12, hidden_sizes=[8, 16, 16], depths=[1, 2, 1],
                   downsample_in_first_stage=True),
            3,
        )
    )
    write(root, "rn_basic_dfs", m, (48, 56), 3, seed=6)

    # Bottleneck, stem narrower than stage 0 (a stride-1 shortcut), stride in the 3x3.
    m = ResNetForImageClassification(
        labelled(resnet(layer_type="bottleneck", embedding_size=8, hidden_sizes=[16, 32, 48], depths=[2, 1, 1]), 4)
    )
    write(root, "rn_bottleneck", m, (64, 64), 4, seed=7)

    # Bottleneck striding in its first 1x1, first stage downsampling, GELU.
    m = ResNetForImageClassification(
        labelled(
            resnet(layer_type="bottleneck", embedding_size=16, hidden_sizes=[16, 32, 32], depths=[1, 2, 1],
                   downsample_in_bottleneck=True, downsample_in_first_stage=True, hidden_act="gelu"),
            2,
        )
    )
    write(root, "rn_bottleneck_dib", m, (64, 64), 2, seed=8)

    # A bare ResNetModel (keys start with `embedder.`, no head).
    m = ResNetModel(resnet(layer_type="basic", embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]))
    write(root, "rn_bare", m, (32, 32), 0, seed=9)


if __name__ == "__main__":
    main(sys.argv[1])
