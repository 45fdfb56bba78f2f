"""A randomly initialised DINOv2 with the architecture of a given one.

  random_dinov2.py SRC_DIR OUT_DIR [--seed S]

Builds `transformers.Dinov2Model(config)` from SRC_DIR's config.json with
`torch.manual_seed(S)` (transformers' own initialisation: truncated normal
weights, layer scale 1, zero biases), saves it with `save_pretrained` and
copies SRC_DIR's preprocessor_config.json, so a job on OUT_DIR differs from
one on SRC_DIR only in the weights. Deterministic for a given seed and
transformers version.
"""
import argparse
import shutil
from pathlib import Path

import torch
from transformers import Dinov2Config, Dinov2Model
from transformers.utils import logging


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.disable_progress_bar()
    src, out = Path(args.src), Path(args.out)
    config = Dinov2Config.from_pretrained(src)
    torch.manual_seed(args.seed)
    model = Dinov2Model(config).eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    shutil.copy(src / "preprocessor_config.json", out / "preprocessor_config.json")
    print(out)


if __name__ == "__main__":
    main()
