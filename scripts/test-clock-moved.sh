#!/usr/bin/env bash
# The date-sensitive tests again with the clock moved a year ahead and a year back
# (libfaketime), to show that no test depends on the day it runs.
#
#   scripts/test-clock-moved.sh            both shifts (+365d, -365d)
#   scripts/test-clock-moved.sh +30d       one shift, in faketime's syntax
#
# Date-sensitive means: the lines carry event times and a peer judges them against its own
# clock (the Loki receiver's 7-day age limit), or the daemon reads event times against the
# wall clock or with each other (prices by `from`, the event-time fallback, `--loki-max-age`,
# `--to live`). The Loki receiver lives in the test process, so its clock moves with the test's.
# Tests against VictoriaMetrics and Prometheus are not run here: they are Go programs, which
# read the clock without libc, so faketime cannot move theirs, and a daemon a year ahead of its
# Mimir is a fault of its own. Their tests stamp live samples with the wall clock and history
# with fixed past days their peers are told to keep (retention 100y): see docs/testing.md.
#
# The test binaries are built first and run directly: cargo itself must not run under a moved
# clock (it stamps its fingerprints with the time it starts, which would rebuild everything).
# libfaketime is the machine's Debian package, unpacked by scripts/install-backends.sh into
# .cache/backends (nothing is installed on the machine); the run fails when the clock did not
# move, or when a filter below matches no test.
set -euo pipefail
cd "$(dirname "$0")/.."

backends=${TOKENMETER_BACKENDS:-$PWD/.cache/backends}
lib=$backends/root/usr/lib/$(uname -m)-linux-gnu/faketime/libfaketime.so.1
[ -e "$lib" ] || scripts/install-backends.sh
[ -e "$lib" ] || { echo "missing $lib (scripts/install-backends.sh installs it)" >&2; exit 1; }

# binary name, then the arguments of its test harness (name filters, --skip …)
selection=(
  "loki|"
  "backfill|loki to_live"
  "faults|loki"
  "replay_cli|"
  "spend|--skip cost_is_exact_across_kill9_over_metrics_otlp_and_replay"
  "tokenmeter|--lib"
)

targets=()
for entry in "${selection[@]}"; do
  name=${entry%%|*}
  if [ "$name" = tokenmeter ]; then targets+=(--lib); else targets+=(--test "$name"); fi
done
cargo test --no-run "${targets[@]}"
executables=$(cargo test --no-run --message-format=json "${targets[@]}" 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])
')

# Runs "$@" with the clock moved by $shift (libfaketime; the monotonic clock is left alone).
moved() {
  LD_PRELOAD=$lib FAKETIME="$shift" FAKETIME_DONT_FAKE_MONOTONIC=1 "$@"
}

shifts=("$@")
[ ${#shifts[@]} -gt 0 ] || shifts=(+365d -365d)
failed=0
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for shift in "${shifts[@]}"; do
  # The canary: the clock really moved (a library that did not load is only a warning).
  real=$(date +%s)
  faked=$(moved date +%s)
  if [ $(( faked - real )) -lt 60 ] && [ $(( real - faked )) -lt 60 ]; then
    echo "the clock did not move with FAKETIME=$shift ($lib): real $real, moved $faked" >&2
    exit 1
  fi
  for entry in "${selection[@]}"; do
    name=${entry%%|*}
    args=${entry#*|}
    [ "$args" = --lib ] && args=
    exe=$(awk -v n="$name" '$1 == n { print $2 }' <<<"$executables")
    [ -n "$exe" ] || { echo "no test binary for $name" >&2; exit 1; }
    printf '\n==> clock %s: %s %s\n' "$shift" "$name" "$args"
    # shellcheck disable=SC2086 # args is a list of harness arguments
    if ! moved "$exe" $args 2>&1 | tee "$out"; then
      echo "FAILED with the clock moved $shift: $name $args" >&2
      failed=1
    elif grep -q "test result: ok. 0 passed" "$out"; then
      echo "no test of $name matched '$args': the selection is stale" >&2
      failed=1
    fi
  done
done
exit $failed
