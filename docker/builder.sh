#!/usr/bin/env bash
# Runs inside the builder stage of docker/Dockerfile.
#
#   builder.sh torch   VARIANT       install the pinned torch wheel into the venv
#   builder.sh collect VARIANT OUT   lay out the binary and the libraries it loads
#
# VARIANT cpu: only libtorch's CPU side ships. libtorch_cpu.so itself needs
# the CUDA runtime and CUPTI (small), but libtorch.so also needs
# libtorch_cuda.so, which pulls in ~2.5 GB of cuBLAS, cuDNN, NCCL... For the
# CPU image libtorch_cuda.so is replaced by an empty library of that name
# before linking: nothing in vitrine calls into it (build.rs only links it so
# libtorch registers its CUDA backend), so libtorch simply reports no CUDA.
# VARIANT cuda: the wheel with all its NVIDIA libraries, laid out as in
# site-packages so libtorch's own run paths ($ORIGIN/../../nvidia/...) hold.
set -euo pipefail

site() { python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }

install_torch() {
  local variant=$1
  local pip=(python -m pip install --disable-pip-version-check --progress-bar off
             -c requirements/constraints.txt)
  case "$variant" in
    cuda) "${pip[@]}" -r requirements/torch.txt ;;
    cpu)
      "${pip[@]}" --no-deps -r requirements/torch.txt
      # The CUDA runtime and CUPTI, at the versions this torch pins.
      local toolkit
      toolkit=$(python -c 'import importlib.metadata as m, re
for r in m.requires("torch"):
    if r.startswith("cuda-toolkit"):
        print(re.sub(r"\[.*?\]", "[cudart,cupti]", r.split(";")[0]).strip())')
      "${pip[@]}" "$toolkit"
      local lib; lib="$(site)/torch/lib"
      rm -f "$lib"/libtorch_cuda*.so "$lib"/libc10_cuda.so "$lib"/libtorch_nvshmem.so \
            "$lib"/libcaffe2_nvrtc.so "$lib"/libtorch_python.so
      printf '' | gcc -shared -x c - -o "$lib/libtorch_cuda.so" -Wl,-soname,libtorch_cuda.so
      ;;
    *) echo "builder: VARIANT must be cpu or cuda, not '$variant'" >&2; exit 2 ;;
  esac
  # torch-sys and build.rs read libtorch from $LIBTORCH (include/, lib/,
  # build-version), so no `import torch` is needed to build.
  python -c 'import importlib.metadata as m; print(m.version("torch"))' >"$(site)/torch/build-version"
  echo "builder: torch $(cat "$(site)/torch/build-version") in $(site)/torch"
}

collect() {
  local variant=$1 out=$2 sp; sp=$(site)
  mkdir -p "$out/lib"
  cp "${CARGO_TARGET_DIR:-target}/release/vitrine" "$out/vitrine"
  case "$variant" in
    cpu)
      # Exactly what the dynamic linker resolves from the venv, nothing else.
      local missing
      missing=$(ldd "$out/vitrine" | grep 'not found' || true)
      [ -z "$missing" ] || { echo "builder: unresolved libraries:"; echo "$missing"; exit 1; } >&2
      ldd "$out/vitrine" | awk '$3 ~ /^\// {print $3}' | grep "^$sp/" | while read -r so; do
        cp -L "$so" "$out/lib/"
      done
      ;;
    cuda)
      cp -a "$sp/torch/lib/." "$out/lib/"
      rm -f "$out/lib/libtorch_python.so"
      mkdir -p "$out/../nvidia"
      cp -a "$sp/nvidia/." "$out/../nvidia/"
      find "$out/../nvidia" \( -name '*.a' -o -name include -o -name '__pycache__' \) -prune -exec rm -rf {} +
      ;;
  esac
  # The laid-out binary must resolve every library from its own lib/ (or the
  # system), none from the venv, which the runtime image does not have.
  local bad
  bad=$(ldd "$out/vitrine" | grep -E "not found|$sp/" || true)
  [ -z "$bad" ] || { echo "builder: not self-contained:"; echo "$bad"; exit 1; } >&2
  ldd "$out/vitrine" | sed 's/^/builder: ldd /'
  du -sh "$out" | sed 's/^/builder: /'
}

case "${1:-}" in
  torch) install_torch "${2:?variant}" ;;
  collect) collect "${2:?variant}" "${3:?out dir}" ;;
  *) echo "usage: builder.sh torch VARIANT | collect VARIANT OUT" >&2; exit 2 ;;
esac
