#!/usr/bin/env bash
# Runs the decode+parse fuzz target (libFuzzer via cargo-fuzz) for a bounded time.
#   scripts/fuzz.sh [SECONDS]    default 60
# cargo-fuzz needs nightly-only rustc flags; RUSTC_BOOTSTRAP=1 lets the machine's stable
# toolchain accept them. cargo-fuzz is installed into the user's cargo bin if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
mkdir -p fuzz/corpus/decode_parse
cd fuzz
# The first corpus folder receives new inputs; the seeds (the fixtures) are only read.
log=$(mktemp)
if RUSTC_BOOTSTRAP=1 cargo fuzz run decode_parse -- \
  -max_total_time="$seconds" -max_len=8192 -timeout=10 \
  corpus/decode_parse seeds >"$log" 2>&1; then
  tail -n 3 "$log"
  echo "fuzzing: no crash in ${seconds}s"
else
  tail -n 60 "$log"
  echo "fuzzing found a crash (see fuzz/artifacts/decode_parse)" >&2
  exit 1
fi
