"""Prints an ONNX file's metadata_props as one JSON object (each value parsed)."""

import json
import sys

import onnx

model = onnx.load(sys.argv[1])
print(json.dumps({p.key: json.loads(p.value) for p in model.metadata_props}))
