"""Loads a vitrine-saved model with transformers and prints its logits.

Usage: check_saved_vit.py MODEL_DIR IO_SAFETENSORS
Fails (exit 1) when loading reports missing, unexpected or mismatched
weights. Prints one JSON object: logits, id2label, problem_type.
"""

import json
import sys

import torch
from safetensors.torch import load_file

import transformers
from transformers import AutoModelForImageClassification

torch.set_num_threads(1)
model, info = AutoModelForImageClassification.from_pretrained(sys.argv[1], output_loading_info=True)
problems = {k: list(v) for k, v in info.items() if v}
if problems:
    print(f"loading reported problems: {problems}", file=sys.stderr)
    sys.exit(1)
model.eval()
x = load_file(sys.argv[2])["pixel_values"]
with torch.no_grad():
    logits = model(pixel_values=x).logits
print(json.dumps({
    "logits": logits.tolist(),
    "id2label": {str(k): v for k, v in model.config.id2label.items()},
    "problem_type": model.config.problem_type,
    "class": type(model).__name__,
}))
