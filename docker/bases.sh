#!/usr/bin/env bash
# Builds the two local base images docker/Dockerfile can start from on a
# machine without an image registry: a Debian bookworm root made with
# debootstrap (runtime), and the same plus a C toolchain, Python and this
# machine's Rust toolchain (builder). Cached: an image that exists is kept.
#
#   docker/bases.sh            # -> localhost/vitrine-base-runtime:bookworm
#                              #    localhost/vitrine-base-builder:bookworm
# Env: PODMAN (command, default "podman"), MIRROR (Debian mirror),
#      RUST_TOOLCHAIN (dir of a rustup toolchain, default: the active one),
#      BASES_CACHE (work dir, default /var/tmp/vitrine-bases).
set -euo pipefail

PODMAN=${PODMAN:-podman}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
CACHE=${BASES_CACHE:-/var/tmp/vitrine-bases}
RUNTIME_IMAGE=localhost/vitrine-base-runtime:$SUITE
BUILDER_IMAGE=localhost/vitrine-base-builder:$SUITE
mkdir -p "$CACHE"

have_image() { $PODMAN image exists "$1"; }

# debootstrap ROOT [--include=...]: a minimal Debian root, kept between runs.
bootstrap() {
  local root=$1; shift
  if [ ! -f "$root/.complete" ]; then
    rm -rf "$root"
    debootstrap --variant=minbase "$@" "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 \
      || { tail -20 "$root.log" >&2; exit 1; }
    # What the official slim images leave out, and what a container needs not.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin \
           "$root"/var/cache/apt/archives/*.deb "$root"/usr/share/doc/* \
           "$root"/usr/share/man/* "$root"/usr/share/locale/*
    echo "deb $MIRROR $SUITE main" >"$root/etc/apt/sources.list"
    touch "$root/.complete"
  fi
}

import_root() {
  local root=$1 image=$2; shift 2
  tar -C "$root" --exclude=./.complete -c . | $PODMAN import --quiet "$@" - "$image" >/dev/null
}

if ! have_image "$RUNTIME_IMAGE"; then
  echo "bases: debootstrap runtime root"
  bootstrap "$CACHE/runtime"
  import_root "$CACHE/runtime" "$RUNTIME_IMAGE" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]'
fi
echo "bases: $RUNTIME_IMAGE ready"

if ! have_image "$BUILDER_IMAGE"; then
  echo "bases: debootstrap builder root"
  bootstrap "$CACHE/builder" \
    --include=ca-certificates,curl,gcc,g++,libc6-dev,make,pkg-config,python3,python3-venv,python3-pip
  # No Rust can be downloaded here: copy this machine's toolchain in, as the
  # official rust image lays it out (/usr/local/cargo, /usr/local/rustup).
  toolchain=${RUST_TOOLCHAIN:-$(rustc --print sysroot)}
  dest="$CACHE/builder/usr/local/rust"
  rm -rf "$dest"; mkdir -p "$dest"
  cp -a "$toolchain/bin" "$toolchain/lib" "$toolchain/libexec" "$dest/" 2>/dev/null \
    || cp -a "$toolchain/bin" "$toolchain/lib" "$dest/"
  import_root "$CACHE/builder" "$BUILDER_IMAGE" \
    --change 'ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'CMD ["bash"]'
fi
echo "bases: $BUILDER_IMAGE ready"
