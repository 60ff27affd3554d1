#!/usr/bin/env bash
# Installs @grafana/lezer-logql (npm) into .cache/node the first time and parses the dashboards'
# LogQL with it; fails on any error node or when no query was found.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v node >/dev/null || { echo "node is required for the LogQL check" >&2; exit 1; }
if [ ! -d .cache/node/node_modules/@grafana/lezer-logql ]; then
  mkdir -p .cache/node
  (cd .cache/node && npm install --silent --no-audit --no-fund @grafana/lezer-logql)
fi
# Run from beside node_modules so the package resolves.
cp scripts/check-logql.mjs .cache/node/check-logql.mjs
node .cache/node/check-logql.mjs dashboards
