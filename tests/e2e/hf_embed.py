"""Reference embeddings from transformers: what a saved model's classifier
reads (the input of its `classifier`, flattened), for image files.

  hf_embed.py MODEL_DIR IMAGE...   prints {"embeddings": [[...], ...]}
"""
import json
import sys

import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification
from transformers.image_utils import load_image

model = AutoModelForImageClassification.from_pretrained(sys.argv[1]).eval()
proc = AutoImageProcessor.from_pretrained(sys.argv[1], backend="pil")
images = [load_image(p) for p in sys.argv[2:]]
seen = {}
model.classifier.register_forward_hook(lambda m, args, out: seen.update(x=args[0]))
with torch.no_grad():
    model(**proc(images, return_tensors="pt"))
print(json.dumps({"embeddings": seen["x"].flatten(1).tolist()}))
