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

# Test binary (`it`, the integration tests, or `tokenmeter`, the library's unit tests), an
# extended regex over the names of its tests (`module::test`) to run, and one over those to
# leave out (no `|` in either: it separates them); an empty regex to run runs the whole binary.
selection=(
  "it|^loki::|"
  "it|^backfill::.*loki|"
  "it|^backfill::.*to_live|"
  "it|^faults::.*loki|"
  "it|^replay_cli::|"
  "it|^spend::|::cost_is_exact_across_kill9_over_metrics_otlp_and_replay$"
  "tokenmeter||"
)

cargo test --no-run --test it --lib
executables=$(cargo test --no-run --message-format=json --test it --lib 2>/dev/null | python3 -c '
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
    IFS='|' read -r name only skip <<<"$entry"
    exe=$(awk -v n="$name" '$1 == n { print $2 }' <<<"$executables")
    [ -n "$exe" ] || { echo "no test binary for $name" >&2; exit 1; }
    # The names, listed by the binary itself under the real clock, run with --exact: a
    # selection that matches no test fails here, before anything runs.
    names=()
    if [ -n "$only" ]; then
      mapfile -t names < <("$exe" --list --format terse | sed -n 's/: test$//p' \
        | grep -E -e "$only" | grep -v -E -e "${skip:-^$}")
      if [ ${#names[@]} -eq 0 ]; then
        echo "no test of $name matches '$only' (less '$skip'): the selection is stale" >&2
        failed=1
        continue
      fi
      names=(--exact "${names[@]}")
    fi
    printf '\n==> clock %s: %s %s\n' "$shift" "$name" "${only:-(all)}${skip:+, less $skip}"
    if ! moved "$exe" "${names[@]}" 2>&1 | tee "$out"; then
      echo "FAILED with the clock moved $shift: $name $only" >&2
      failed=1
    elif grep -q "test result: ok. 0 passed" "$out"; then
      echo "no test of $name ran for '$only': the selection is stale" >&2
      failed=1
    fi
  done
done
exit $failed
