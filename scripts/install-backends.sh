#!/usr/bin/env bash
# Installs the real backends the end-to-end tests run against, into .cache/backends/root
# (override with TOKENMETER_BACKENDS), without touching the machine's apt setup:
#   - VictoriaMetrics (Debian sid): OTLP receiver + PromQL API, standing in for Mimir;
#   - Prometheus and promtool 2.53 (Debian trixie): backfill and rule tests;
#   - libfaketime (the machine's own Debian release, so it loads into its programs): the
#     date-sensitive tests with the clock moved (scripts/test-clock-moved.sh).
# apt-get runs with a private sources list, lists and cache, downloads the packages, and
# dpkg -x unpacks them; the Debian archive keyring already on the machine verifies them.
# Idempotent: does nothing when the binaries are already there.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${TOKENMETER_BACKENDS:-$PWD/.cache/backends}
root=$cache/root
faketime_lib=$root/usr/lib/$(uname -m)-linux-gnu/faketime/libfaketime.so.1
want=("$root/usr/bin/victoria-metrics" "$root/usr/bin/prometheus" "$root/usr/bin/promtool" "$faketime_lib")
have=1
for b in "${want[@]}"; do [ -e "$b" ] || have=0; done
if [ $have = 1 ]; then
  echo "backends already in $root"
  exit 0
fi

apt_dir=$cache/apt
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/sources.list.d" "$cache/debs" "$root"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$keyring" ] || { echo "missing $keyring (package debian-archive-keyring)" >&2; exit 1; }
# shellcheck disable=SC1091 # the machine's own release, for libraries loaded into its programs
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
cat >"$apt_dir/sources.list" <<SRC
deb [signed-by=$keyring] http://deb.debian.org/debian sid main
deb [signed-by=$keyring] http://deb.debian.org/debian trixie main
deb [signed-by=$keyring] http://deb.debian.org/debian $codename main
SRC
opts=(
  -o "Dir::Etc::SourceList=$apt_dir/sources.list"
  -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
  -o "Dir::State::Lists=$apt_dir/lists"
  -o "Dir::Cache=$apt_dir/cache"
  -o "Debug::NoLocking=1"
  -o "APT::Get::List-Cleanup=0"
  -o "APT::Sandbox::User=root"
)
echo "apt-get update (private state in $apt_dir)"
apt-get "${opts[@]}" -qq update
cd "$cache/debs"
rm -f ./*.deb
apt-get "${opts[@]}" -qq download victoria-metrics/sid prometheus/trixie promtool/trixie "libfaketime/$codename"
for deb in ./*.deb; do
  echo "unpacking $deb"
  dpkg -x "$deb" "$root"
done
for b in "${want[@]}"; do
  [ -e "$b" ] || { echo "missing $b after unpacking" >&2; exit 1; }
done
"$root/usr/bin/victoria-metrics" -version || true
"$root/usr/bin/prometheus" --version 2>&1 | head -1
