"""Tiny random checkpoints of every family and the reference explanations
for tests/model/explain_parity.rs, from the libraries people use.

Usage: make_explain_fixtures.py OUT_DIR

For each fixture NAME it writes OUT_DIR/NAME/model/ (save_pretrained) and
OUT_DIR/NAME/io.safetensors with, in fp32:

- `pixel_values` [1, 3, 32, 32];
- `gradcam` [2, 32, 32] (ConvNeXt, ResNet, Swin): pytorch-grad-cam's
  `GradCAM` for labels 0 and 2 on the last stage (`encoder.stages[-1]`;
  Swin: `swin.layernorm`, tokens reshaped onto their grid);
- `rollout` [h, w] (ViT, DINOv2 with registers): attention rollout from
  `output_attentions` (eager attention): head mean, plus identity, rows
  renormalised, multiplied from the first layer up; the CLS row over the
  patch tokens, registers excluded, on the patch grid;
- `ig` [1, 3, 32, 32] and `ig_delta` [1]: captum's `IntegratedGradients`
  for label 1 from a zero baseline, 16 steps, `riemann_trapezoid`.

Weights are random with seeded non-zero biases, norms and statistics, so
no map is degenerate.
"""

import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

import transformers
from captum.attr import IntegratedGradients
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
torch.set_num_threads(1)

IG_STEPS = 16


class Logits(torch.nn.Module):
    """The classifier's logits as a plain tensor (what both libraries call)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(pixel_values=x).logits


def perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "lambda" in name or "layer_scale" in name:
                p.copy_(p + 0.2 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))


def labelled(cfg):
    cfg.id2label = {i: f"c{i}" for i in range(4)}
    cfg.label2id = {f"c{i}": i for i in range(4)}
    return cfg


def swin_reshape(tokens):
    b, n, c = tokens.shape
    side = int(round(n**0.5))
    return tokens.reshape(b, side, side, c).permute(0, 3, 1, 2)


def fixtures():
    T = transformers
    return {
        "vit": (
            T.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, image_size=32, patch_size=8),
            T.ViTForImageClassification, None,
        ),
        "dinov2_reg": (
            T.Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        mlp_ratio=2, image_size=32, patch_size=8, num_register_tokens=2),
            T.Dinov2WithRegistersForImageClassification, None,
        ),
        "swin": (
            T.SwinConfig(embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=4,
                         image_size=32, patch_size=4),
            T.SwinForImageClassification, lambda m: m.swin.layernorm,
        ),
        "convnext": (
            T.ConvNextConfig(hidden_sizes=[8, 16], depths=[2, 1], num_stages=2, image_size=32,
                             patch_size=4),
            T.ConvNextForImageClassification, lambda m: m.convnext.encoder.stages[-1],
        ),
        "resnet": (
            T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2], layer_type="basic"),
            T.ResNetForImageClassification, lambda m: m.resnet.encoder.stages[-1],
        ),
    }


def rollout(model, x, prefix):
    out = model(pixel_values=x, output_attentions=True)
    n = out.attentions[0].shape[-1]
    eye = torch.eye(n)
    flow = eye.clone()
    for a in out.attentions:
        a = a[0].mean(0) + eye
        a = a / a.sum(-1, keepdim=True)
        flow = a @ flow
    side = int(round((n - prefix) ** 0.5))
    return flow[0, prefix:].reshape(side, side)


def main(out_dir):
    for seed, (name, (cfg, cls, cam_layer)) in enumerate(fixtures().items()):
        torch.manual_seed(seed)
        model = cls(labelled(cfg)).eval()
        perturb(model, seed)
        model.save_pretrained(os.path.join(out_dir, name, "model"))
        x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(100 + seed))
        io = {"pixel_values": x}
        net = Logits(model).eval()
        if cam_layer is None:
            prefix = 1 + getattr(cfg, "num_register_tokens", 0)
            # Attention weights need the eager kernel; integrated gradients
            # below run the default one, as vitrine's fused kernel does.
            eager = cls.from_pretrained(os.path.join(out_dir, name, "model"),
                                        attn_implementation="eager").eval()
            with torch.no_grad():
                io["rollout"] = rollout(eager, x, prefix)
        else:
            reshape = swin_reshape if name == "swin" else None
            with GradCAM(model=net, target_layers=[cam_layer(model)], reshape_transform=reshape) as cam:
                maps = [cam(input_tensor=x, targets=[ClassifierOutputTarget(c)])[0] for c in (0, 2)]
            io["gradcam"] = torch.from_numpy(np.stack(maps))
        ig = IntegratedGradients(net)
        attr, delta = ig.attribute(x, baselines=torch.zeros_like(x), target=1, n_steps=IG_STEPS,
                                   method="riemann_trapezoid", return_convergence_delta=True)
        io["ig"] = attr.detach().contiguous()
        io["ig_delta"] = delta.detach().reshape(1).float()
        save_file({k: v.float().contiguous() for k, v in io.items()},
                  os.path.join(out_dir, name, "io.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1])
