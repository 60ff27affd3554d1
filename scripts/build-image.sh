#!/usr/bin/env bash
# Builds the tokenmeter container image from the repository's Dockerfile, with Podman or Docker:
#   scripts/build-image.sh [IMAGE]     default IMAGE: localhost/tokenmeter:<Cargo.toml version>
#   IMAGE_TOOL=docker scripts/build-image.sh registry.example.com/tokenmeter:0.2.0
# The image is FROM scratch: the release binary (/tokenmeter, the entrypoint), exactly the
# shared libraries it links (as distroless does: the C library, libgcc_s, the loader), the
# CA certificates of this machine, and the example config at /etc/tokenmeter/tokenmeter.toml.
# No base image is pulled, so it builds with no registry in reach. The binary is built here,
# so the image's architecture is this machine's. The image reference is the last line printed.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
image=${1:-localhost/tokenmeter:$version}
tool=${IMAGE_TOOL:-}
if [ -z "$tool" ]; then
  if command -v podman >/dev/null; then tool=podman
  elif command -v docker >/dev/null; then tool=docker
  else echo "build-image: podman or docker is required" >&2; exit 1
  fi
fi
certs=${CA_CERTIFICATES:-/etc/ssl/certs/ca-certificates.crt}
[ -r "$certs" ] || { echo "build-image: no CA bundle at $certs (package ca-certificates, or set CA_CERTIFICATES)" >&2; exit 1; }

commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
echo "building the release binary (commit $commit)" >&2
TOKENMETER_GIT_COMMIT=$commit cargo build --release --locked --bin tokenmeter >&2
target_dir=$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
bin=$target_dir/release/tokenmeter

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
rootfs=$context/rootfs
install -D -m 0755 "$bin" "$rootfs/tokenmeter"
strip "$rootfs/tokenmeter" 2>/dev/null || true
# Each library where the loader looks for it (the path ldd names), with the content of the
# file that path resolves to.
libs=$(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
for lib in $libs; do
  install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
done
install -D -m 0644 "$certs" "$rootfs/etc/ssl/certs/ca-certificates.crt"
install -D -m 0644 config/tokenmeter.toml "$rootfs/etc/tokenmeter/tokenmeter.toml"
cp Dockerfile "$context/Dockerfile"
echo "building $image with $tool ($(echo "$libs" | wc -w) libraries)" >&2
"$tool" build --quiet --label "org.opencontainers.image.revision=$commit" \
  --label "org.opencontainers.image.version=$version" -f "$context/Dockerfile" -t "$image" "$context" >&2
echo "$image"
