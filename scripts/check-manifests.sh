#!/usr/bin/env bash
# Renders every kustomization under config/kubernetes (base, overlays/*, gateway-example) with
# `kubectl kustomize` and checks each rendering:
#   1. kubernetes-validate --strict (PyPI; bundled schemas of the Kubernetes API, offline) for
#      the built-in kinds;
#   2. scripts/check-crs.mjs: Gateway API, Envoy Gateway and Prometheus Operator resources
#      against the @kubernetes-models schemas (npm), with unknown fields rejected;
#   3. scripts/check-manifests.py: the AIGatewayRoute against the CRD excerpt vendored in
#      tests/fixtures/crds, and the install's assertions (pod security, no Secret or priority
#      class in the base, resources against BENCHMARKS.md, the gateway example against the
#      binary's default [fields]).
# The OpenShift SecurityContextConstraints has no schema here and is not validated.
# Installs kubernetes-validate into .cache/venv and the npm packages into .cache/node the first
# time; fails (never skips) when kubectl, node or python3 is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "check-manifests: $*" >&2; exit 1; }
command -v kubectl >/dev/null || die "kubectl (with kustomize v5) is required: install kubectl 1.32 or later"
command -v node >/dev/null && command -v npm >/dev/null || die "node and npm are required (custom resource schemas)"
command -v python3 >/dev/null || die "python3 is required"

# Pinned, and reinstalled when a pin changes: a new kubernetes-validate release (its bundled
# schemas, its CLI) must not change what CI checks. It brings jsonschema and PyYAML, which
# check-manifests.py uses too.
venv=.cache/venv
pip_pins="kubernetes-validate==1.37.0"
if [ "$(cat "$venv/.check-manifests-pins" 2>/dev/null)" != "$pip_pins" ] \
   || [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv" \
    || die "python3 -m venv $venv failed (Debian/Ubuntu: apt-get install python3-venv)"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install --quiet $pip_pins \
    || die "pip install $pip_pins failed (PyPI is needed once; it is then kept in $venv)"
  echo "$pip_pins" > "$venv/.check-manifests-pins"
fi
# Pinned: the schemas the gateway example was written against (Envoy Gateway with apiKeyAuth
# forwardClientIDHeader/sanitize and ClientTrafficPolicy earlyRequestHeaders). Reinstalled
# when an installed version is not the pinned one.
models="@kubernetes-models/envoy-gateway@2.0.0 @kubernetes-models/gateway-api@2.0.0 @kubernetes-models/prometheus-operator@6.0.0"
stale=
for m in $models; do
  have=$(cd .cache/node 2>/dev/null && node -p "require('./node_modules/${m%@*}/package.json').version" 2>/dev/null) || have=
  [ "$have" = "${m##*@}" ] || stale=1
done
if [ -n "$stale" ]; then
  mkdir -p .cache/node
  # shellcheck disable=SC2086
  (cd .cache/node && npm install --silent --no-audit --no-fund --save-exact $models) \
    || die "npm install $models failed (the npm registry is needed once; then kept in .cache/node)"
fi
cp scripts/check-crs.mjs .cache/node/check-crs.mjs

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for dir in config/kubernetes/base config/kubernetes/overlays/* config/kubernetes/gateway-example; do
  name=${dir#config/kubernetes/}
  name=${name//\//-}
  kubectl kustomize "$dir" > "$out/$name.yaml" || die "kubectl kustomize $dir failed"
  echo "== $dir: $(grep -c '^kind:' "$out/$name.yaml") resources"
  "$venv/bin/kubernetes-validate" --strict -k 1.34 --quiet "$out/$name.yaml"
  "$venv/bin/python" -c 'import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], open(sys.argv[2], "w"))' \
    "$out/$name.yaml" "$out/$name.json"
  node .cache/node/check-crs.mjs "$out/$name.json"
done

# The binary's defaults (default [fields], limits.max_series) and the base config, checked by
# the program itself.
cargo build --quiet --bin tokenmeter
env -u TOKENMETER_CONFIG target/debug/tokenmeter check-config > "$out/defaults.toml"
env -u MIMIR_OTLP_ENDPOINT -u LOKI_PUSH_ENDPOINT \
  target/debug/tokenmeter check-config --config config/kubernetes/base/tokenmeter.toml > /dev/null \
  || die "config/kubernetes/base/tokenmeter.toml: check-config failed"
rm -f "$out"/*.json
"$venv/bin/python" scripts/check-manifests.py "$out" "$out/defaults.toml"
