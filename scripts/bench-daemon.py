#!/usr/bin/env python3
"""Daemon benchmark: `tokenmeter run` tailing a pod log while this script appends lines.

    scripts/bench-daemon.py [--rate 5000] [--seconds 60] [--series 10000] [--files 1]
                            [--idle-seconds 10] [--binary PATH] [--max-open-files N]

Appends `--rate` CRI lines per second (in 20 batches a second) for `--seconds`, spread over
`--series` distinct (model, api_key_id, service_id) series and round-robin over `--files` pod
logs (one pod directory each), and measures:
  * CPU of the daemon (utime + stime from /proc over the run) as % of one core;
  * peak RSS (VmHWM) and RSS at 10 s intervals (is memory flat?);
  * delay from a line's write to its count: /status is polled every 50 ms; for each batch, the
    delay is the first poll whose `lines` includes the batch minus the batch's write time;
  * descriptors: the most the daemon held (all, and those of log files), sampled every second;
  * idle CPU: `--idle-seconds` with no writes after the load (no /status polling then).
`--binary` runs another build (e.g. the previous release, as the baseline of the same run).
Prints a Markdown table row for BENCHMARKS.md.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def proc_cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def proc_mem(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024  # MiB
    return 0.0


def line(i, series):
    k = i % series
    return ('2026-11-26T10:00:00.123456789Z stdout F {"start_time":"2026-11-26T10:00:00.000Z","method":"POST",'
            '"x-envoy-origin-path":"/v1/chat/completions","protocol":"HTTP/1.1","response_code":200,'
            '"response_flags":"-","response_code_details":"via_upstream","bytes_received":1203,"bytes_sent":2210,'
            '"duration":%d,"user-agent":"OpenAI/Python 1.54.0","x-request-id":"%032x",'
            '"model":"model-%d","llm_input_token":%d,"llm_output_token":%d,"llm_total_token":%d,'
            '"api_key_id":"key-%05d","aim_service_id":"svc-%02d"}\n'
            % (100 + i % 900, i, k % 20, 10 + i % 500, i % 100, 10 + i % 500 + i % 100, k, k % 15))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--series", type=int, default=10000)
    ap.add_argument("--files", type=int, default=1)
    ap.add_argument("--idle-seconds", type=int, default=10)
    ap.add_argument("--binary")
    ap.add_argument("--max-open-files", type=int)
    a = ap.parse_args()
    if a.binary:
        binary = a.binary
    else:
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
        binary = os.path.join(ROOT, "target", "release", "tokenmeter")
    tmp = tempfile.mkdtemp(prefix="tokenmeter-bench-")
    logs = []
    for n in range(a.files):
        pods = os.path.join(tmp, "pods", f"envoy-gateway-system_gw-{n}_uid-{n}", "envoy")
        os.makedirs(pods)
        logs.append(os.path.join(pods, "0.log"))
        open(logs[-1], "w").close()
    port = free_port()
    cfg = os.path.join(tmp, "bench.toml")
    extra = f"max_open_files = {a.max_open_files}\n" if a.max_open_files else ""
    with open(cfg, "w") as f:
        f.write(f'state_dir = "{tmp}/state"\nnode_name = "bench"\n[source]\n'
                f'include = ["{tmp}/pods/envoy-gateway-system_*/envoy/*.log"]\nstart_at = "beginning"\n{extra}'
                f'[limits]\nmax_series = 50000\n[server]\nlisten = "127.0.0.1:{port}"\n')
    daemon = subprocess.Popen([binary, "run", "--config", cfg], stderr=open(os.path.join(tmp, "daemon.log"), "w"))
    status_url = f"http://127.0.0.1:{port}/status"
    for _ in range(100):
        try:
            urllib.request.urlopen(status_url, timeout=1).read()
            break
        except OSError:
            time.sleep(0.05)

    written = []  # (time, cumulative lines written)
    counted = []  # (time, lines counted)
    stop = threading.Event()

    def poller():
        while not stop.is_set():
            try:
                s = json.loads(urllib.request.urlopen(status_url, timeout=2).read())
                counted.append((time.monotonic(), s["lines"]))
            except OSError:
                pass
            time.sleep(0.05)

    fds = [0, 0]  # most descriptors: all, log files

    def fd_sampler():
        while not stop.is_set():
            try:
                names = os.listdir(f"/proc/{daemon.pid}/fd")
                targets = []
                for n in names:
                    try:
                        targets.append(os.readlink(f"/proc/{daemon.pid}/fd/{n}"))
                    except OSError:
                        pass
                fds[0] = max(fds[0], len(names))
                fds[1] = max(fds[1], sum(1 for x in targets if x.startswith(tmp + "/pods")))
            except OSError:
                pass
            time.sleep(1)

    t = threading.Thread(target=poller)
    t.start()
    fs = threading.Thread(target=fd_sampler)
    fs.start()
    cpu0 = proc_cpu(daemon.pid)
    rss_samples = []
    start = time.monotonic()
    batch = a.rate // 20
    i = 0
    handles = [open(p, "a") for p in logs]
    while time.monotonic() - start < a.seconds:
        target = start + (i // batch) / 20
        now = time.monotonic()
        if target > now:
            time.sleep(target - now)
        chunks = [[] for _ in handles]
        for j in range(i, i + batch):
            chunks[j % len(handles)].append(line(j, a.series))
        for h, c in zip(handles, chunks):
            if c:
                h.write("".join(c))
                h.flush()
        i += batch
        written.append((time.monotonic(), i))
        if i % (a.rate * 10) == 0:
            rss_samples.append(proc_mem(daemon.pid, "VmRSS"))
    for h in handles:
        h.close()
    elapsed = time.monotonic() - start
    time.sleep(2)
    cpu = proc_cpu(daemon.pid) - cpu0
    peak = proc_mem(daemon.pid, "VmHWM")
    stop.set()
    t.join()
    fs.join()
    idle0 = proc_cpu(daemon.pid)
    time.sleep(a.idle_seconds)
    idle = (proc_cpu(daemon.pid) - idle0) / max(a.idle_seconds, 1)
    daemon.terminate()
    daemon.wait(timeout=30)

    delays = []
    for wt, n in written:
        hit = next((ct for ct, c in counted if ct >= wt and c >= n), None)
        if hit is not None:
            delays.append(hit - wt)
    delays.sort()
    p = lambda q: delays[min(len(delays) - 1, int(q * len(delays)))] if delays else float("nan")
    final = counted[-1][1] if counted else 0
    size = sum(os.path.getsize(x) for x in logs)
    print(f"binary {binary}; workload: {a.rate} lines/s for {a.seconds} s ({i} lines, {a.series} series, "
          f"{a.files} files), {size / 1e6:.0f} MB; /status polled every 50 ms")
    print(f"counted {final} of {i} lines\n")
    print("| files | CPU (% of one core) | idle CPU | peak RSS | RSS every 10 s (MiB) | delay p50 | delay p99 | delay max | fds (all / log files) |")
    print("|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    print(f"| {a.files} | {100 * cpu / elapsed:.1f} % | {100 * idle:.2f} % | {peak:.1f} MiB | {' '.join(f'{r:.1f}' for r in rss_samples)} | "
          f"{p(0.5) * 1000:.0f} ms | {p(0.99) * 1000:.0f} ms | {delays[-1] * 1000 if delays else float('nan'):.0f} ms | {fds[0]} / {fds[1]} |")


if __name__ == "__main__":
    sys.exit(main())
