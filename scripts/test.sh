#!/usr/bin/env bash
# The project's whole test suite, as CI runs it (`.ci/run` calls this script).
#   scripts/test.sh              everything: format, lints, reference check, fuzzing, tests (also
#                                with the clock moved a year each way, scripts/test-clock-moved.sh)
#   FUZZ_SECONDS=0 scripts/test.sh   skip the fuzzing run (it needs ~5 min to build the first time)
# Every step runs whatever an earlier one gave, so one failure never hides another; the failed
# steps are listed at the end, and the exit code is non-zero when any failed.
set -uo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-60}
backends=${TOKENMETER_BACKENDS:-$PWD/.cache/backends}
failed=()

# step "what it checks" command...: runs the command, notes a failure.
step() {
  local what=$1
  shift
  printf '\n==> %s\n' "$what"
  if ! "$@"; then
    echo "FAILED: $what" >&2
    failed+=("$what")
  fi
}

reference_check() {
  local fixtures=(tests/fixtures/envoy-ai-access.jsonl tests/fixtures/cri-wrapped.log
    tests/fixtures/edge-cases.log tests/fixtures/docker-json.log)
  python3 tests/expected/expected_summary.py --self-test >/dev/null \
    && python3 tests/expected/expected_summary.py --check tests/expected "${fixtures[@]}" \
    && python3 tests/expected/expected_summary.py --config tests/fixtures/pricing.toml \
      --check tests/expected "${fixtures[@]}" \
    && python3 tests/expected/expected_summary.py --config tests/fixtures/owners.toml \
      --check tests/expected "${fixtures[@]}" \
    && (cd tests/fixtures/formats && python3 ../../expected/expected_summary.py \
      --check ../../expected/formats gen_ai.jsonl genai_v04.jsonl kong.jsonl higress.jsonl \
      logfmt.log tokenmeter.jsonl cri.log docker.log mixed.log)
}

rules_check() {
  local promtool=$backends/root/usr/bin/promtool
  "$promtool" check rules config/prometheus/tokenmeter-rules.yaml \
    && (cd config/prometheus && "$promtool" test rules tokenmeter-rules.test.yaml \
      tokenmeter-rules.hourly.test.yaml tokenmeter-rules.invoice.test.yaml tokenmeter-rules.owners.test.yaml)
}

dashboards_check() {
  local gen
  gen=$(mktemp -d)
  cp -r dashboards/. "$gen/"
  python3 "$gen/generate.py" || return 1
  if ! diff -r -q dashboards "$gen" >/dev/null; then
    echo "dashboards/*.json differ from dashboards/generate.py output; run it" >&2
    return 1
  fi
  rm -rf "$gen"
}

# Nothing in the repository may read ../shared (docs may name it): a contributor's clone stands alone.
standalone_check() {
  if git grep -n -e '\.\./shared' -- ':!*.md' ':!scripts/test.sh' ':!.ci/run'; then
    echo "the lines above read ../shared: copy what they need into the repository" >&2
    return 1
  fi
}

step "install the test backends (VictoriaMetrics, Prometheus, promtool, libfaketime) into .cache/backends" \
  scripts/install-backends.sh
step "the repository stands alone (nothing reads ../shared)" standalone_check
step "cargo fmt --check" cargo fmt --check
step "cargo clippy --all-targets -- -D warnings" cargo clippy --all-targets -- -D warnings
step "expected summaries (plain, priced, every format) match the independent Python reference" \
  reference_check
step "alert and recording rules: promtool check rules, promtool test rules" rules_check
step "dashboards are what dashboards/generate.py writes" dashboards_check
step "LogQL of the Loki panels parses (@grafana/lezer-logql)" scripts/check-logql.sh
step "Kubernetes manifests: every kustomization renders and validates (kubernetes-validate, CRD schemas, assertions)" \
  scripts/check-manifests.sh
if [ "$FUZZ_SECONDS" != 0 ]; then
  step "cargo fuzz: decode + parse for ${FUZZ_SECONDS}s" scripts/fuzz.sh "$FUZZ_SECONDS"
fi
# The image test (tests/it/image.rs) runs the image this builds; without it, it builds its own.
image_build() {
  scripts/install-podman.sh || return 1
  local out
  out=$(scripts/build-image.sh) || return 1
  TOKENMETER_IMAGE=$(printf '%s\n' "$out" | tail -1)
  export TOKENMETER_IMAGE
  echo "built $TOKENMETER_IMAGE"
}
step "the container image: Podman, and the release image built from the Dockerfile (scripts/build-image.sh)" \
  image_build
step "date-sensitive tests with the clock a year ahead and a year back (libfaketime)" \
  scripts/test-clock-moved.sh
# Last, so the test runner's summary closes the output.
step "cargo test (every binary, whatever fails: --no-fail-fast)" \
  cargo test --all-targets --no-fail-fast

if [ ${#failed[@]} -gt 0 ]; then
  printf '\nfailed steps:\n' >&2
  printf '  %s\n' "${failed[@]}" >&2
  exit 1
fi
