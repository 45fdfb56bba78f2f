#!/usr/bin/env bash
# Builds the image with podman from local base images and checks that it
# serves: /readyz, a training job end to end, /predict, and that the job and
# model records survive a restart in the /data volume. Idempotent; removes its
# container and volume on exit (KEEP=1 keeps them).
#
#   docker/verify.sh                  # CPU image
#   VARIANT=cuda docker/verify.sh     # CUDA image (builds; runs on CPU here)
#
# Needs: podman, runc, debootstrap (apt-get install podman runc debootstrap),
# root, and a Python with torch, transformers, Pillow, numpy for the fixtures
# (the repo's .venv: `make setup`).
# Env: VARIANT (cpu), IMAGE (localhost/vitrine:verify-$VARIANT), PORT (18080),
#      PYTHON, JOB_TIMEOUT (900 s), KEEP, NO_CACHE=1 (rebuild every layer; the
#      cargo and pip caches are kept).
set -euo pipefail
cd "$(dirname "$0")/.."

VARIANT=${VARIANT:-cpu}
IMAGE=${IMAGE:-localhost/vitrine:verify-$VARIANT}
PORT=${PORT:-18080}
JOB_TIMEOUT=${JOB_TIMEOUT:-900}
NAME=vitrine-verify
VOLUME=vitrine-verify-data
CACHE=${BASES_CACHE:-/var/tmp/vitrine-bases}
URL=http://127.0.0.1:$PORT
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
mkdir -p "$CACHE"
export BASES_CACHE=$CACHE
for tool in podman runc debootstrap curl numfmt; do
  command -v "$tool" >/dev/null || { echo "verify: $tool not found (apt-get install podman runc debootstrap curl)" >&2; exit 1; }
done
"$PYTHON" -c 'import torch, transformers, PIL, numpy' 2>/dev/null || {
  echo "verify: $PYTHON lacks torch/transformers/Pillow/numpy for the fixtures: run \`make setup\` or set PYTHON" >&2
  exit 1
}

# podman as this machine needs it: runc, and no default ulimits (setting
# them fails here, as crun does on hybrid cgroups). A containers.conf of the
# caller's own (CONTAINERS_CONF) is left alone.
if [ -z "${CONTAINERS_CONF:-}" ]; then
  export CONTAINERS_CONF=$CACHE/containers.conf
  printf '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n' >"$CONTAINERS_CONF"
fi
PODMAN="podman"
export PODMAN
# podman 4 reports every HEALTHCHECK timer it cannot hand to systemd (none in
# a container or minimal host): that noise is dropped, other errors are kept.
pm() { $PODMAN "$@" 2> >(grep -v 'unable to get systemd connection' >&2); }

step() { printf '\n== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
fail() { echo "verify: FAILED: $*" >&2; exit 1; }
json() { "$PYTHON" -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

cleanup() {
  if [ "${KEEP:-0}" != 1 ]; then
    $PODMAN rm -f -t 5 "$NAME" >/dev/null 2>&1 || true
    $PODMAN volume rm -f "$VOLUME" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
cleanup

step "base images"
docker/bases.sh

step "build $IMAGE (VARIANT=$VARIANT)"
# The build reaches PyPI and crates.io with this machine's client settings,
# passed as build secrets (never written into a layer or the repository).
secrets=()
for ca in "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
  if [ -n "$ca" ] && [ -s "$ca" ]; then secrets+=(--secret "id=cacert,src=$ca"); break; fi
done
pipconf=$CACHE/pip.conf
: >"$pipconf"
for f in "${PIP_CONFIG_FILE:-}" /etc/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf"; do
  if [ -n "$f" ] && [ -s "$f" ]; then cat "$f" >>"$pipconf"; echo >>"$pipconf"; fi
done
secrets+=(--secret "id=pipconf,src=$pipconf")
log=$CACHE/build-$VARIANT.log
# --format docker: OCI images have no HEALTHCHECK.
if ! pm build --format docker -f docker/Dockerfile -t "$IMAGE" \
  ${NO_CACHE:+--no-cache} --build-arg VARIANT="$VARIANT" \
  --build-arg BUILDER_IMAGE=localhost/vitrine-base-builder:bookworm \
  --build-arg RUNTIME_IMAGE=localhost/vitrine-base-runtime:bookworm \
  "${secrets[@]}" . >"$log" 2>&1; then
  tail -40 "$log" >&2
  fail "build (log: $log)"
fi
grep -E 'builder: |Finished' "$log" || true
size=$(pm image inspect --format '{{.Size}}' "$IMAGE")
echo "image $IMAGE: $size bytes ($(numfmt --to=iec --suffix=B "$size"))"
pm run --rm --health-interval disable "$IMAGE" info || fail "vitrine info in the image"

step "fixtures (tiny pre-trained ViT, dataset, image)"
fx=$CACHE/fixtures
if [ ! -f "$fx/.complete" ]; then
  rm -rf "$fx"; mkdir -p "$fx"
  "$PYTHON" tests/e2e/synthetic.py pretrain "$fx/base-model"
  "$PYTHON" tests/e2e/synthetic.py dataset "$fx/tints.zip" tints
  "$PYTHON" tests/e2e/synthetic.py image "$fx/red.png" red
  touch "$fx/.complete"
fi

step "start with volume $VOLUME"
pm volume create "$VOLUME" >/dev/null
# The base model goes into the volume; the job refers to it by its path there.
pm run --rm --health-interval disable --user 0 -v "$VOLUME:/data" -v "$fx/base-model:/fixture:ro" --entrypoint sh \
  "$IMAGE" -c 'cp -r /fixture /data/base-model && chown -R vitrine:vitrine /data/base-model' 
# No systemd here to time the HEALTHCHECK: it is run by hand below.
pm run -d --health-interval disable --name "$NAME" -p "127.0.0.1:$PORT:8080" -v "$VOLUME:/data" "$IMAGE" >/dev/null

wait_ready() {
  for _ in $(seq 1 90); do
    if curl -fsS "$URL/readyz" >/dev/null 2>&1; then echo "ready: $(curl -fsS "$URL/readyz")"; return 0; fi
    sleep 1
  done
  pm logs --tail 30 "$NAME" >&2 || true
  fail "/readyz did not answer within 90 s"
}
wait_ready
curl -fsS "$URL/healthz"; echo
pm healthcheck run "$NAME" && echo "HEALTHCHECK passes" || fail "HEALTHCHECK"
[ "$(pm exec "$NAME" id -u)" != 0 ] || fail "runs as root"
echo "runs as $(pm exec "$NAME" id)"

step "job end to end"
config='{"base_model": "/data/base-model", "mode": "linear_probe", "epochs": 3, "batch_size": 32, "learning_rate": 0.01}'
resp=$(curl -sS -w '\n%{http_code}' -F "dataset=@$fx/tints.zip;type=application/zip" -F "config=$config" "$URL/jobs")
code=${resp##*$'\n'}; body=${resp%$'\n'*}
[ "$code" = 202 ] || fail "POST /jobs answered $code: $body"
job=$(echo "$body" | json 'd["id"]')
echo "job $job queued"
deadline=$((SECONDS + JOB_TIMEOUT))
while :; do
  status=$(curl -fsS "$URL/jobs/$job" | json 'd["status"]')
  case "$status" in
    succeeded) break ;;
    failed|cancelled) curl -sS "$URL/jobs/$job"; echo; fail "job $job $status" ;;
  esac
  [ $SECONDS -lt $deadline ] || fail "job $job still $status after $JOB_TIMEOUT s"
  sleep 3
done
model=$(curl -fsS "$URL/jobs/$job" | json 'd["model_id"]')
echo "job $job succeeded in $(curl -fsS "$URL/jobs/$job" | json 'd.get("started_at"), "->", d.get("finished_at")'), model $model"

predict() {
  local out
  out=$(curl -fsS -H 'content-type: image/png' --data-binary "@$fx/red.png" "$URL/predict?top_k=2") \
    || fail "POST /predict"
  echo "predict: $out"
  [ "$(echo "$out" | json 'd["model"]')" = "$model" ] || fail "/predict did not use model $model"
  [ "$(echo "$out" | json 'd["predictions"][0]["label"]')" = red ] || fail "/predict: a red image is not red"
}
step "predict"
predict

step "restart (SIGTERM, then start again on the same volume)"
pm stop -t 30 "$NAME" >/dev/null
rc=$(pm inspect --format '{{.State.ExitCode}}' "$NAME")
echo "stopped on SIGTERM with exit code $rc"
[ "$rc" = 0 ] || fail "exit code $rc after SIGTERM (not a graceful shutdown)"
pm start "$NAME" >/dev/null
wait_ready
[ "$(curl -fsS "$URL/jobs/$job" | json 'd["status"]')" = succeeded ] || fail "job record lost"
echo "job $job: still succeeded"
curl -fsS "$URL/models" | grep -q "$model" || fail "model $model not listed by /models"
curl -fsS "$URL/models/$model" >/dev/null || fail "GET /models/$model"
echo "model $model: still listed"
predict

step "summary"
echo "image $IMAGE: $(numfmt --to=iec --suffix=B "$size") ($size bytes)"
echo "verify: PASSED"
