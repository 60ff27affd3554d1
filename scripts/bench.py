#!/usr/bin/env python3
"""Replay throughput benchmark: `tokenmeter replay --summary json` against `wc -l` on the same
file, in the same run, on the same machine.

    scripts/bench.py [--lines 1000000] [--runs 5] [--file PATH]

Generates the workload with benches/gen-access-log.py (a copy of shared/bench's generator,
deterministic: seed 42) into .cache/bench/, builds the release binary, reads the file once to
warm the page cache, then times each command --runs times and reports the median wall time,
lines/s, MB/s, peak RSS and the ratio to `wc -l`. Paste the table into BENCHMARKS.md.
"""
import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


TIME = "/usr/bin/time"  # GNU time: a small parent, so the child's peak RSS is its own


def run(cmd):
    """Wall time and the peak RSS (KiB) of one command. (A child forked from Python would
    report Python's own pages as its peak RSS, hence GNU time in between.)"""
    rss_file = os.path.join(ROOT, ".cache", "bench", "rss")
    wrapped = [TIME, "-f", "%M", "-o", rss_file] + cmd if os.path.exists(TIME) else cmd
    t = time.perf_counter()
    subprocess.run(wrapped, stdout=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - t
    rss = 0
    if wrapped is not cmd:
        with open(rss_file) as f:
            rss = int(f.read().split()[-1])
    return wall, rss


def machine():
    cpu = "unknown cpu"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {platform.system()} {platform.release()}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--file")
    a = ap.parse_args()
    path = a.file or os.path.join(ROOT, ".cache", "bench", f"access-{a.lines}.log")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        print(f"generating {a.lines} lines into {path}", file=sys.stderr)
        subprocess.run([sys.executable, os.path.join(ROOT, "benches", "gen-access-log.py"),
                        "-n", str(a.lines), "-o", path], check=True)
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "tokenmeter")
    size = os.path.getsize(path)
    with open(path, "rb") as f:  # warm the page cache
        while f.read(1 << 24):
            pass
    lines = a.lines
    results = {}
    for name, cmd in [("wc -l", ["wc", "-l", path]),
                      ("tokenmeter replay --summary json", [binary, "replay", "--summary", "json", path])]:
        walls, rss = [], 0
        for _ in range(a.runs):
            w, r = run(cmd)
            walls.append(w)
            rss = max(rss, r)
        results[name] = (statistics.median(walls), min(walls), rss)
    base = results["wc -l"][0]
    print(f"machine: {machine()}")
    print(f"workload: {lines} lines, {size / 1e6:.0f} MB ({size / lines:.0f} B/line), page cache warm, "
          f"median of {a.runs} runs\n")
    print("| command | median s | best s | lines/s | MB/s | peak RSS | × wc -l |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (med, best, rss) in results.items():
        print(f"| `{name}` | {med:.3f} | {best:.3f} | {lines / med:,.0f} | {size / med / 1e6:,.0f} | " +
              (f"{rss / 1024:.1f} MiB" if rss else "n/a") + f" | {med / base:.1f} |")


if __name__ == "__main__":
    main()
