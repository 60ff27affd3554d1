#!/usr/bin/env python3
"""Daemon benchmark: `tokenmeter run` tailing a pod log while this script appends lines.

    scripts/bench-daemon.py [--rate 5000] [--seconds 60] [--series 10000]

Appends `--rate` CRI lines per second (in 20 batches a second) for `--seconds`, spread over
`--series` distinct (model, api_key_id, service_id) series, and measures:
  * CPU of the daemon (utime + stime from /proc over the run) as % of one core;
  * peak RSS (VmHWM) and RSS at 10 s intervals (is memory flat?);
  * delay from a line's write to its count: /status is polled every 50 ms; for each batch, the
    delay is the first poll whose `lines` includes the batch minus the batch's write time.
Prints a Markdown table for BENCHMARKS.md.
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
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "tokenmeter")
    tmp = tempfile.mkdtemp(prefix="tokenmeter-bench-")
    pods = os.path.join(tmp, "pods", "envoy-gateway-system_gw-0_uid-0", "envoy")
    os.makedirs(pods)
    log = os.path.join(pods, "0.log")
    open(log, "w").close()
    port = free_port()
    cfg = os.path.join(tmp, "bench.toml")
    with open(cfg, "w") as f:
        f.write(f'state_dir = "{tmp}/state"\nnode_name = "bench"\n[source]\n'
                f'include = ["{tmp}/pods/envoy-gateway-system_*/envoy/*.log"]\nstart_at = "beginning"\n'
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

    t = threading.Thread(target=poller)
    t.start()
    cpu0 = proc_cpu(daemon.pid)
    rss_samples = []
    start = time.monotonic()
    batch = a.rate // 20
    i = 0
    with open(log, "a") as f:
        while time.monotonic() - start < a.seconds:
            target = start + (i // batch) / 20
            now = time.monotonic()
            if target > now:
                time.sleep(target - now)
            f.write("".join(line(j, a.series) for j in range(i, i + batch)))
            f.flush()
            i += batch
            written.append((time.monotonic(), i))
            if i % (a.rate * 10) == 0:
                rss_samples.append(proc_mem(daemon.pid, "VmRSS"))
    elapsed = time.monotonic() - start
    time.sleep(2)
    cpu = proc_cpu(daemon.pid) - cpu0
    peak = proc_mem(daemon.pid, "VmHWM")
    stop.set()
    t.join()
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
    print(f"workload: {a.rate} lines/s for {a.seconds} s ({i} lines, {a.series} series), "
          f"{os.path.getsize(log) / 1e6:.0f} MB; /status polled every 50 ms")
    print(f"counted {final} of {i} lines\n")
    print("| CPU (% of one core) | peak RSS | RSS every 10 s (MiB) | delay p50 | delay p99 | delay max |")
    print("|---:|---:|---|---:|---:|---:|")
    print(f"| {100 * cpu / elapsed:.1f} % | {peak:.1f} MiB | {' '.join(f'{r:.1f}' for r in rss_samples)} | "
          f"{p(0.5) * 1000:.0f} ms | {p(0.99) * 1000:.0f} ms | {delays[-1] * 1000 if delays else float('nan'):.0f} ms |")


if __name__ == "__main__":
    sys.exit(main())
