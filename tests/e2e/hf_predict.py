"""Reference scores from transformers for a saved model and image files.

  hf_predict.py MODEL_DIR IMAGE...   prints {"labels": [...], "scores": [[...], ...]}
"""
import json
import sys

import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification
from transformers.image_utils import load_image

model = AutoModelForImageClassification.from_pretrained(sys.argv[1]).eval()
# The PIL backend: vitrine's preprocessing follows it (tests/imaging); the
# default torchvision backend resizes a level or two differently.
proc = AutoImageProcessor.from_pretrained(sys.argv[1], backend="pil")
# As the image-classification pipeline loads them: EXIF orientation applied, RGB.
images = [load_image(p) for p in sys.argv[2:]]
with torch.no_grad():
    logits = model(**proc(images, return_tensors="pt")).logits
multi = model.config.problem_type == "multi_label_classification"
scores = logits.sigmoid() if multi else logits.softmax(-1)
labels = [model.config.id2label[i] for i in range(logits.shape[1])]
print(json.dumps({"labels": labels, "scores": scores.tolist()}))
