#!/usr/bin/env bash
# Renders every kustomization under config/kubernetes (base, overlays/*, gateway-example), and
# the overlay docs/install.md tells users to write (its remote base of this release replaced by
# the local one), with `kubectl kustomize` and checks each rendering:
#   1. kubernetes-validate --strict (PyPI; bundled schemas of the Kubernetes API, offline) for
#      the built-in kinds;
#   2. scripts/check-crs.mjs: Gateway API, Envoy Gateway and Prometheus Operator resources
#      against the @kubernetes-models schemas (npm), with unknown fields rejected;
#   3. scripts/check-manifests.py: the AIGatewayRoute against the CRD excerpt vendored in
#      tests/fixtures/crds, and the install's assertions (pod security, no Secret or priority
#      class in the base, resources against BENCHMARKS.md, the image and its release tag, the
#      tenants required, every --config in a mounted ConfigMap, hashed config and unhashed
#      price table, the NetworkPolicy, the gateway-nodes tolerations, the gateway example
#      against the binary's default [fields]), and every TOML file of every rendered ConfigMap
#      through `tokenmeter check-config`.
# The OpenShift SecurityContextConstraints has no schema here and is not validated.
# Installs kubernetes-validate into .cache/venv and the npm packages into .cache/node the first
# time; fails (never skips) when kubectl, node or python3 is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
die() { echo "check-manifests: $*" >&2; exit 1; }
command -v kubectl >/dev/null || die "kubectl (with kustomize v5) is required: install kubectl 1.27 or later"
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
# The overlay of docs/install.md (the yaml block after `<!-- check-manifests: install overlay
# -->`), on the local base: its remote base must be this repository's at the newest release of
# CHANGELOG.md.
rm -rf .cache/install-doc && mkdir -p .cache/install-doc
"$venv/bin/python" - docs/install.md CHANGELOG.md .cache/install-doc/kustomization.yaml <<'PY' \
  || die "docs/install.md: no usable install overlay"
import re, sys
doc, changelog = (open(p, encoding="utf-8").read() for p in sys.argv[1:3])
dest = sys.argv[3]
m = re.search(r"<!-- check-manifests: install overlay -->\s*```yaml\n(.*?)```", doc, re.S)
if not m:
    sys.exit("docs/install.md: no ```yaml block after <!-- check-manifests: install overlay -->")
release = re.search(r"^## \[(\d+\.\d+\.\d+)\]", changelog, re.M)[1]
remote = "https://github.com/tokenmeter/tokenmeter//"
refs = set(re.findall(re.escape(remote) + r"[^?\s]+\?ref=(\S+)", m[1]))
if refs != {f"v{release}"}:
    sys.exit(f"docs/install.md: the overlay's remote refs {sorted(refs)} are not v{release}")
text = re.sub(re.escape(remote) + r"([^?\s]+)\?ref=\S+", r"../../\1", m[1])
open(dest, "w", encoding="utf-8").write(text)
PY
for dir in config/kubernetes/base config/kubernetes/overlays/* .cache/install-doc config/kubernetes/gateway-example; do
  name=${dir#config/kubernetes/}
  name=${name#.cache/}
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
env -u MIMIR_OTLP_ENDPOINT -u LOKI_PUSH_ENDPOINT MIMIR_TENANT=check-manifests LOKI_TENANT=check-manifests \
  target/debug/tokenmeter check-config --config config/kubernetes/base/tokenmeter.toml > /dev/null \
  || die "config/kubernetes/base/tokenmeter.toml: check-config failed"
rm -f "$out"/*.json
"$venv/bin/python" scripts/check-manifests.py "$out" "$out/defaults.toml" target/debug/tokenmeter
