#!/usr/bin/env python3
"""Backfill to TSDB blocks (issue 25): `replay --tsdb DIR` against a plain replay of the same
file, in the same run, on the same machine.

    scripts/bench-tsdb.py [--lines 2000000] [--days 30 90] [--runs 5] [--instructions]
                          [--promtool PATH] [--binary PATH] [--files MONTH QUARTER]

For each spread (`--days`), generates `benches/gen-access-log.py -n LINES --days D` (seed 42)
into .cache/bench/ on first use, builds the release binary, warms the page cache, then runs
`--runs` interleaved pairs: `replay --summary json FILE` (plain) and `replay --summary json
--tsdb DIR FILE`, `sync` before each, DIR removed before each. Reports medians of wall and
user CPU, peak RSS (GNU time), the median of the per-pair wall ratio, and the blocks' size.
`--instructions` also counts each command's instructions once under callgrind (valgrind;
minutes): the measure that does not depend on what else the machine runs. `--promtool PATH`
also runs the text path end to end on the first spread: `replay --openmetrics DIR/`, then
`promtool tsdb create-blocks-from openmetrics` on every window file (time and disk of both).
Paste the tables into BENCHMARKS.md.
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIME = "/usr/bin/time"  # GNU time: the child's own peak RSS and CPU


def timed(cmd):
    """Wall s, user s, sys s, peak RSS KiB of one command."""
    out = os.path.join(ROOT, ".cache", "bench", "time")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    subprocess.run(["sync"], check=True)
    t = time.perf_counter()
    subprocess.run([TIME, "-f", "%U %S %M", "-o", out] + cmd, stdout=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - t
    with open(out) as f:
        user, sys_, rss = f.read().split()[-3:]
    return wall, float(user), float(sys_), int(rss)


def instructions(cmd):
    """Instructions of one run (all threads) under callgrind."""
    with tempfile.TemporaryDirectory() as d:
        r = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/cg.out"] + cmd,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=True)
    return int(re.search(r"Collected : (\d+)", r.stderr).group(1))


def du(path):
    total = 0
    for base, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(base, f)) for f in files)
    return total


def workload(lines, days, given=None):
    path = given or os.path.join(ROOT, ".cache", "bench", f"access-{lines}-{days:g}d.log")
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        print(f"generating {lines} lines over {days:g} days into {path}", file=sys.stderr)
        subprocess.run([sys.executable, os.path.join(ROOT, "benches", "gen-access-log.py"),
                        "-n", str(lines), "--days", str(days), "-o", path], check=True)
    with open(path, "rb") as f:  # warm the page cache
        while f.read(1 << 24):
            pass
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=2_000_000)
    ap.add_argument("--days", type=float, nargs="+", default=[30, 90])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--instructions", action="store_true")
    ap.add_argument("--promtool")
    ap.add_argument("--binary", help="instead of building target/release/tokenmeter")
    ap.add_argument("--files", nargs="+", help="the workloads already generated, one per --days")
    a = ap.parse_args()
    binary = a.binary
    if not binary:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
        binary = os.path.join(target, "release", "tokenmeter")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
    scratch = os.path.join(ROOT, ".cache", "bench", "tsdb")
    print(f"{version}; {a.lines} lines; median of {a.runs} interleaved pairs\n")
    print("| spread | run | wall | user CPU | peak RSS | --tsdb ÷ plain (wall, per pair) | blocks |")
    print("|---|---|---:|---:|---:|---:|---:|")
    files = a.files or [None] * len(a.days)
    for days, given in zip(a.days, files):
        path = workload(a.lines, days, given)
        plain = [binary, "replay", "--summary", "json", path]
        tsdb = [binary, "replay", "--summary", "json", "--tsdb", scratch, path]
        runs = {"plain": [], "tsdb": []}
        for _ in range(a.runs):
            runs["plain"].append(timed(plain))
            shutil.rmtree(scratch, ignore_errors=True)
            runs["tsdb"].append(timed(tsdb))
        size, count = du(scratch), len(os.listdir(scratch))
        ratio = statistics.median(t[0] / p[0] for p, t in zip(runs["plain"], runs["tsdb"]))
        for name, rs in runs.items():
            wall = statistics.median(r[0] for r in rs)
            user = statistics.median(r[1] for r in rs)
            rss = max(r[3] for r in rs) / 1024
            extra = (f"**{ratio:.2f}×** | {count} blocks, {size / 1e6:.0f} MB"
                     if name == "tsdb" else "1.00× | –")
            print(f"| {days:g} days | {name} | {wall:.2f} s | {user:.2f} s | {rss:.0f} MiB | {extra} |")
        if a.instructions:
            shutil.rmtree(scratch, ignore_errors=True)
            ip, it = instructions(plain), instructions(tsdb)
            print(f"| {days:g} days | instructions (callgrind) | plain {ip / 1e9:.2f} G | "
                  f"--tsdb {it / 1e9:.2f} G | | **{it / ip:.2f}×** | |")
        shutil.rmtree(scratch, ignore_errors=True)
    if a.promtool:
        path = workload(a.lines, a.days[0], files[0])
        om, blocks = scratch + "-om", scratch + "-promtool"
        for d in (om, blocks):
            shutil.rmtree(d, ignore_errors=True)
        w1, _, _, rss = timed([binary, "replay", "--summary", "json", "--openmetrics", om + "/", path])
        t = time.perf_counter()
        for f in sorted(os.listdir(om)):
            subprocess.run([a.promtool, "tsdb", "create-blocks-from", "openmetrics",
                            os.path.join(om, f), blocks], stdout=subprocess.DEVNULL, check=True)
        w2 = time.perf_counter() - t
        print(f"\n{a.days[0]:g} days through text: `--openmetrics DIR/` {w1:.1f} s ({rss / 1024:.0f} MiB), "
              f"{du(om) / 1e6:,.0f} MB of text in {len(os.listdir(om))} files; promtool {w2:.1f} s, "
              f"{len(os.listdir(blocks))} blocks, {du(blocks) / 1e6:,.0f} MB; end to end {w1 + w2:.1f} s")
        for d in (om, blocks):
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
