"""The Python baseline for the serving benchmark (scripts/bench/serving.sh).

What it is: the way a typical user serves a fine-tuned image classifier with
Hugging Face: a FastAPI app around
`transformers.pipeline("image-classification", model=DIR)`, run by uvicorn
with one worker process.

  hf_pipeline_server.py --model DIR [--host 127.0.0.1] [--port 8000]
                        [--threads T] [--device cpu|cuda] [--dtype float32|bfloat16]

- `POST /predict`, multipart part `image` (an `UploadFile`), answers the
  pipeline's output for that image: a JSON list of the top 5
  `{"label", "score"}`, highest first.
- The endpoint is a plain (sync) `def`, as FastAPI's tutorials write it:
  FastAPI runs it in its thread pool, so concurrent requests run the
  pipeline concurrently, one image per call (no batching across requests).
- The image is opened with PIL and preprocessed by the model's own image
  processor (`preprocessor_config.json`, the fast or slow class
  `AutoImageProcessor` picks, as the pipeline does by default).
- `torch.set_num_threads(T)` (default: the number of CPUs) before loading,
  the same T vitrine gets with `--torch-threads`; inference under
  `torch.inference_mode()` (the pipeline's default), on `--device` (the CPU
  by default; `cuda` as `pipeline(..., device="cuda")` puts it there) in
  `--dtype` (float32 by default, the pipeline's own default).
- `GET /healthz` answers `{"status": "ok"}` once the model is loaded.
"""
import argparse
import os

import torch
import uvicorn
from fastapi import FastAPI, File, UploadFile
from PIL import Image
from transformers import pipeline


def build_app(model_dir, device="cpu", dtype="float32"):
    classifier = pipeline("image-classification", model=model_dir, device=device,
                          dtype=getattr(torch, dtype))
    app = FastAPI(title="transformers image-classification pipeline")

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.post("/predict")
    def predict(image: UploadFile = File(...)):
        img = Image.open(image.file)
        return classifier(img, top_k=5)

    return app


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="HF model directory")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    app = build_app(args.model, args.device, args.dtype)
    uvicorn.run(app, host=args.host, port=args.port, workers=1, log_level="warning")


if __name__ == "__main__":
    main()
