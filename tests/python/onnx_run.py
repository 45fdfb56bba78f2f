"""Runs an exported ONNX file with onnxruntime against vitrine's logits.

Usage: onnx_run.py MODEL.onnx IO.safetensors

IO holds `pixel_values` [N, C, H, W] and vitrine's `logits` [N, labels].
Checks the file with `onnx.checker.check_model` (full check: shape
inference too), runs the first image alone and, when the batch axis is
symbolic, the whole batch; prints JSON: the largest absolute logit
differences, the largest difference between `probabilities` and
softmax/sigmoid of the onnxruntime logits, the input shape and the
metadata props.
"""

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file


def main(model_path, io_path):
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    io = load_file(io_path)
    x, want = io["pixel_values"].astype(np.float32), io["logits"].astype(np.float64)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    shape = sess.get_inputs()[0].shape
    out = {"input_shape": [d if isinstance(d, int) else None for d in shape], "metadata": meta}

    def run(batch):
        logits, probs = sess.run(["logits", "probabilities"], {"pixel_values": x[:batch]})
        logits64 = logits.astype(np.float64)
        if meta["probabilities"] == "softmax":
            e = np.exp(logits64 - logits64.max(axis=1, keepdims=True))
            ref = e / e.sum(axis=1, keepdims=True)
        else:
            ref = 1 / (1 + np.exp(-logits64))
        return (
            float(np.abs(logits64 - want[:batch]).max()),
            float(np.abs(probs - ref).max()),
            logits.dtype.name,
        )

    out["batch1"], out["probs1"], out["dtype"] = run(1)
    if shape[0] is None or isinstance(shape[0], str):
        out["batchN"], out["probsN"], _ = run(x.shape[0])
        out["n"] = int(x.shape[0])
    else:
        try:
            run(x.shape[0])
            out["static_batch_refused"] = False
        except Exception:
            out["static_batch_refused"] = True
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
