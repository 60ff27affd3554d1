#!/usr/bin/env bash
# The project's whole test suite, as CI runs it (`.ci/run` calls this script).
#   scripts/test.sh              everything: format, lints, reference check, fuzzing, tests (also
#                                with the clock moved a year each way, scripts/test-clock-moved.sh)
#   FUZZ_SECONDS=0 scripts/test.sh   skip the fuzzing run (it needs ~5 min to build the first time)
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-60}

step() { printf '\n==> %s\n' "$*"; }

step "install the test backends (VictoriaMetrics, Prometheus, promtool) into .cache/backends"
scripts/install-backends.sh

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "expected summaries (plain and priced) still match the independent Python reference"
python3 tests/expected/expected_summary.py --check tests/expected \
  tests/fixtures/envoy-ai-access.jsonl tests/fixtures/cri-wrapped.log \
  tests/fixtures/edge-cases.log tests/fixtures/docker-json.log
python3 tests/expected/expected_summary.py --config tests/fixtures/pricing.toml --check tests/expected \
  tests/fixtures/envoy-ai-access.jsonl tests/fixtures/cri-wrapped.log \
  tests/fixtures/edge-cases.log tests/fixtures/docker-json.log

(cd tests/fixtures/formats && python3 ../../expected/expected_summary.py --self-test >/dev/null \
  && python3 ../../expected/expected_summary.py --check ../../expected/formats \
    gen_ai.jsonl genai_v04.jsonl kong.jsonl higress.jsonl logfmt.log tokenmeter.jsonl cri.log docker.log mixed.log)

step "alert and recording rules: promtool check rules, promtool test rules"
promtool=${TOKENMETER_BACKENDS:-$PWD/.cache/backends}/root/usr/bin/promtool
"$promtool" check rules config/prometheus/tokenmeter-rules.yaml
(cd config/prometheus && "$promtool" test rules tokenmeter-rules.test.yaml tokenmeter-rules.hourly.test.yaml)

step "dashboards are what dashboards/generate.py writes"
gen=$(mktemp -d)
cp -r dashboards/. "$gen/"
python3 "$gen/generate.py"
diff -r -q dashboards "$gen" >/dev/null || { echo "dashboards/*.json differ from dashboards/generate.py output; run it" >&2; exit 1; }
rm -rf "$gen"

step "LogQL of the Loki panels parses (@grafana/lezer-logql)"
scripts/check-logql.sh

step "Kubernetes manifests: every kustomization renders and validates (kubernetes-validate, CRD schemas, assertions)"
scripts/check-manifests.sh

if [ "$FUZZ_SECONDS" != 0 ]; then
  step "cargo fuzz: decode + parse for ${FUZZ_SECONDS}s"
  scripts/fuzz.sh "$FUZZ_SECONDS"
fi

# The clock-moved check and the tests both run whatever the other gives, so one failure never
# hides another; the test runner's summary closes the output.
clock=0
step "date-sensitive tests with the clock a year ahead and a year back (faketime)"
scripts/test-clock-moved.sh || clock=$?

step "cargo test (every binary, whatever fails: --no-fail-fast)"
tests=0
cargo test --all-targets --no-fail-fast || tests=$?
if [ "$clock" != 0 ]; then
  echo "the date-sensitive tests failed with the clock moved (see above)" >&2
fi
[ "$clock" = 0 ] && [ "$tests" = 0 ]
