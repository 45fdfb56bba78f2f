# Sourced by the serving benchmarks (lone_request.sh, serving.sh,
# explain_load.sh): a temporary directory `$tmp`, removed at exit (kept
# with KEEP=1) after stopping the server in `$server_pid`; `log`;
# `free_port`; `make_vit_tiny DIR`. Needs `$py` (the venv's python).

tmp=$(mktemp -d)
server_pid=
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  if [ -n "${KEEP:-}" ]; then echo "kept $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
log() { echo "== $*" >&2; }
free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A random-init ViT-Tiny/16 (224 px, hidden 192, 12 layers, 3 heads) in
# the Hugging Face layout, with its image processor, at DIR.
make_vit_tiny() {
  "$py" - "$1" <<'PY'
import sys, torch
from transformers import ViTConfig, ViTImageProcessor, ViTModel
torch.manual_seed(0)
cfg = ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                intermediate_size=768, patch_size=16, image_size=224)
ViTModel(cfg, add_pooling_layer=False).save_pretrained(sys.argv[1])
ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(sys.argv[1])
PY
}
