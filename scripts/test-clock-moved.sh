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
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v faketime >/dev/null; then
  echo "installing faketime (Debian's libfaketime)"
  apt-get update -qq && apt-get install -y -qq faketime >/dev/null
fi
command -v faketime >/dev/null || { echo "faketime is required (apt-get install faketime)" >&2; exit 1; }

# binary name, then the arguments of its test harness (a name filter, --skip …)
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
executables=$(cargo test --no-run --message-format=json "${targets[@]}" 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])
')

shifts=("$@")
[ ${#shifts[@]} -gt 0 ] || shifts=(+365d -365d)
failed=0
for shift in "${shifts[@]}"; do
  for entry in "${selection[@]}"; do
    name=${entry%%|*}
    args=${entry#*|}
    [ "$args" = --lib ] && args=
    exe=$(awk -v n="$name" '$1 == n { print $2 }' <<<"$executables")
    [ -n "$exe" ] || { echo "no test binary for $name" >&2; exit 1; }
    printf '\n==> clock %s: %s %s\n' "$shift" "$name" "$args"
    # shellcheck disable=SC2086 # args is a list of harness arguments
    if ! FAKETIME_DONT_FAKE_MONOTONIC=1 faketime -f "$shift" "$exe" $args; then
      echo "FAILED with the clock moved $shift: $name $args" >&2
      failed=1
    fi
  done
done
exit $failed
