#!/usr/bin/env bash
# Installs Podman from Debian's packages (podman, runc) when it is missing, for the image test
# (tests/it/image.rs). Needs root and apt; does nothing when podman and runc are there.
set -euo pipefail
if command -v podman >/dev/null && command -v runc >/dev/null; then
  podman --version
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "install-podman: podman is missing; install podman and runc (needs root)" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
apt-get -qq update
apt-get -qq install -y podman runc ca-certificates >/dev/null
podman --version
