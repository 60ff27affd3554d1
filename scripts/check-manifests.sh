#!/usr/bin/env bash
# Validates config/kubernetes/*.yaml with kubernetes-validate (PyPI; bundles the schemas,
# works offline) against a current Kubernetes version, in strict mode. Installs it into
# .cache/venv the first time. CRDs (PodMonitor, EnvoyProxy) and the kustomization have no
# bundled schema and are reported as warnings.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.cache/venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet kubernetes-validate
fi
"$venv/bin/kubernetes-validate" --strict -k 1.34 config/kubernetes/*.yaml
