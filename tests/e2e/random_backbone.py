"""A tiny randomly initialised classifier of one backbone family, saved as
`transformers` saves it, with the image processor its Hub checkpoints use.

  random_backbone.py FAMILY OUT_DIR      FAMILY: swin | convnext | resnet

32x32 inputs, two stages, a two-label head (a job gives it its own labels).
Swin checkpoints use `ViTImageProcessor` (bicubic, ImageNet statistics);
ConvNeXt and ResNet ones `ConvNextImageProcessor` (shortest edge to
int(32 / 0.875) = 36, centre crop 32). ResNet's batch-norm running
statistics are moved off their 0/1 initialisation so that eval-mode
inference depends on them.
"""
import sys

import torch
from transformers import (ConvNextConfig, ConvNextForImageClassification, ConvNextImageProcessor,
                          ResNetConfig, ResNetForImageClassification, SwinConfig,
                          SwinForImageClassification, ViTImageProcessor)
from transformers.utils import logging

IMAGENET = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
LABELS = dict(id2label={0: "a", 1: "b"}, label2id={"a": 0, "b": 1})


def build(family):
    if family == "swin":
        config = SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=[1, 2],
                            num_heads=[2, 4], window_size=4, **LABELS)
        return (SwinForImageClassification(config),
                ViTImageProcessor(size={"height": 32, "width": 32}, resample=3, **IMAGENET))
    proc = ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875, **IMAGENET)
    if family == "convnext":
        config = ConvNextConfig(patch_size=2, hidden_sizes=[16, 32], depths=[1, 2], num_stages=2,
                                **LABELS)
        return ConvNextForImageClassification(config), proc
    if family == "resnet":
        config = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                              layer_type="basic", downsample_in_first_stage=False, **LABELS)
        model = ResNetForImageClassification(config)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
        return model, proc
    sys.exit(f"unknown family {family}")


def main():
    family, out = sys.argv[1], sys.argv[2]
    logging.disable_progress_bar()
    torch.manual_seed(0)
    model, proc = build(family)
    model.eval().save_pretrained(out)
    proc.save_pretrained(out)
    print(out)


if __name__ == "__main__":
    main()
