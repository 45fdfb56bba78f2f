"""Loads what vitrine wrote with the libraries people trust for it and
compares logits (tests/model/lora.rs).

Usage: lora_check.py BASE_DIR ADAPTER_DIR MERGED_DIR IO

IO holds `pixel_values` and vitrine's `logits`. Prints JSON: `peft`, the max
abs difference of `PeftModel.from_pretrained(AutoModelForImageClassification
.from_pretrained(BASE_DIR), ADAPTER_DIR)`, and `merged`, that of a plain
`AutoModelForImageClassification.from_pretrained(MERGED_DIR)`; plus the
adapter's keys as peft loaded them (`missing`, `unexpected`).
"""

import json
import sys

import torch
from safetensors.torch import load_file

import transformers
from peft import PeftModel
from transformers import AutoModelForImageClassification

transformers.logging.set_verbosity_error()
torch.set_num_threads(1)

base_dir, adapter_dir, merged_dir, io_path = sys.argv[1:5]
io = load_file(io_path)
x, want = io["pixel_values"], io["logits"]
peft = PeftModel.from_pretrained(AutoModelForImageClassification.from_pretrained(base_dir), adapter_dir).eval()
merged = AutoModelForImageClassification.from_pretrained(merged_dir).eval()
with torch.no_grad():
    got_peft = peft(pixel_values=x).logits
    got_merged = merged(pixel_values=x).logits
lora_keys = [n for n, _ in peft.named_parameters() if "lora_" in n]
print(json.dumps({
    "peft": (got_peft - want).abs().max().item(),
    "merged": (got_merged - want).abs().max().item(),
    "lora_params": len(lora_keys),
    "lora_nonzero_b": sum(int(p.abs().sum() > 0) for n, p in peft.named_parameters() if "lora_B" in n),
}))
