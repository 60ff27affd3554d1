#!/usr/bin/env python3
"""Daemon benchmark: `tokenmeter run` tailing a pod log while this script appends lines.

    scripts/bench-daemon.py [--rate 5000] [--seconds 60] [--series 10000] [--files 1]
                            [--idle-seconds 10] [--binary PATH] [--max-open-files N]
                            [--otlp [--otlp-interval 5s]] [--loki] [--prefill]
                            [--scrapers 16 [--scrape-seconds 10] [--scrape-gzip]]

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
`--otlp` starts a real VictoriaMetrics (from .cache/backends, see scripts/install-backends.sh,
run if missing) on a loopback port as `[otlp] endpoint`, pushed to every `--otlp-interval`;
after the idle period it checks that VictoriaMetrics holds `count(llm_tokens_total)` = the
number of distinct series written and `sum(llm_requests_total)` = the lines written.
`--loki` starts a minimal Loki stand-in in this script (a threaded HTTP server on 127.0.0.1
that reads each body and answers 204) as `[loki] endpoint`.
`--prefill` writes one line of every series before the daemon starts, so it holds all
`--series` from the first second.
`--scrapers N` runs N threads that each GET /metrics back to back (the whole body read) for
`--scrape-seconds`, starting 5 s into the load (`--scrape-gzip`: with `Accept-Encoding: gzip`,
as Prometheus sends), while /healthz is requested every 20 ms; it reports scrapes done, body
size, and /healthz latency p50/p99/max during the scrape window; the delay columns then cover
the whole run, scrapes included.
`limits.max_series` and `limits.max_values.api_key_id` are raised above `--series` when it
exceeds their defaults (50,000 and 10,000), so no series is folded into `__overflow__`.
Every process started here is stopped at the end (terminate, then kill after 30 s).
Prints a Markdown table row for BENCHMARKS.md.
"""
import argparse
import http.server
import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
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


class LokiSink(http.server.BaseHTTPRequestHandler):
    """Loki stand-in: reads the push body and answers 204; counts requests and bytes."""
    stats = {"requests": 0, "bytes": 0}
    lock = threading.Lock()

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        with self.lock:
            self.stats["requests"] += 1
            self.stats["bytes"] += len(body)
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def start_victoria(tmp):
    """A real VictoriaMetrics on a loopback port, flags as tests/it/common/mod.rs Victoria::start_with."""
    root = os.environ.get("TOKENMETER_BACKENDS") or os.path.join(ROOT, ".cache", "backends")
    binary = os.path.join(root, "root", "usr", "bin", "victoria-metrics")
    if not os.access(binary, os.X_OK):
        subprocess.run([os.path.join(ROOT, "scripts", "install-backends.sh")], cwd=ROOT, check=True)
    addr = f"127.0.0.1:{free_port()}"
    data = os.path.join(tmp, "victoria")
    vm = subprocess.Popen([binary, f"-storageDataPath={data}", f"-httpListenAddr={addr}",
                           "-opentelemetry.usePrometheusNaming", "-search.latencyOffset=0s",
                           "-search.disableCache", "-loggerLevel=ERROR"],
                          stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "victoria.log"), "w"))
    for _ in range(300):
        try:
            if urllib.request.urlopen(f"http://{addr}/health", timeout=1).status == 200:
                return vm, addr, data
        except OSError:
            time.sleep(0.1)
    vm.kill()
    raise SystemExit("VictoriaMetrics did not become healthy in 30 s")


def promql(addr, q):
    urllib.request.urlopen(f"http://{addr}/internal/force_flush", timeout=10).read()
    body = urllib.parse.urlencode({"query": q}).encode()
    r = json.loads(urllib.request.urlopen(f"http://{addr}/api/v1/query", data=body, timeout=60).read())
    res = r["data"]["result"]
    return float(res[0]["value"][1]) if res else 0.0


def stop_proc(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def line(i, series):
    k = i % series
    return ('2026-11-26T10:00:00.123456789Z stdout F {"start_time":"2026-11-26T10:00:00.000Z","method":"POST",'
            '"x-envoy-origin-path":"/v1/chat/completions","protocol":"HTTP/1.1","response_code":200,'
            '"response_flags":"-","response_code_details":"via_upstream","bytes_received":1203,"bytes_sent":2210,'
            '"duration":%d,"user-agent":"OpenAI/Python 1.54.0","x-request-id":"%032x",'
            '"model":"model-%d","llm_input_token":%d,"llm_output_token":%d,"llm_total_token":%d,'
            '"api_key_id":"key-%05d","aim_service_id":"svc-%02d"}\n'
            % (100 + i % 900, i, k % 20, 10 + i % 500, i % 100, 10 + i % 500 + i % 100, k, k % 15))


def health_prober(port, go, stop, out):
    """GET /healthz every 20 ms between `go` and `stop`; sends the latencies (s) to `out`."""
    go.wait()
    got = []
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10).read()
            got.append(time.monotonic() - t0)
        except OSError:
            got.append(float("inf"))
        time.sleep(0.02)
    out.put(got)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--series", type=int, default=10000)
    ap.add_argument("--files", type=int, default=1)
    ap.add_argument("--idle-seconds", type=int, default=10)
    ap.add_argument("--binary")
    ap.add_argument("--max-open-files", type=int)
    ap.add_argument("--otlp", action="store_true", help="push OTLP to a real VictoriaMetrics")
    ap.add_argument("--otlp-interval", default="5s")
    ap.add_argument("--loki", action="store_true", help="forward lines to a local 204 sink")
    ap.add_argument("--prefill", action="store_true", help="one line per series before the start")
    ap.add_argument("--scrapers", type=int, default=0, help="concurrent /metrics scrapers")
    ap.add_argument("--scrape-seconds", type=int, default=10)
    ap.add_argument("--scrape-gzip", action="store_true")
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
    if a.prefill:
        with open(logs[0], "w") as f:
            f.write("".join(line(j, a.series) for j in range(a.series)))
    procs, sinks = [], []  # everything started here, stopped in `finally`
    try:
        return run(a, binary, tmp, logs, procs, sinks)
    finally:
        for s in sinks:
            s.shutdown()
            s.server_close()
        for proc in reversed(procs):
            stop_proc(proc)
        shutil.rmtree(os.path.join(tmp, "victoria"), ignore_errors=True)


def run(a, binary, tmp, logs, procs, sinks):
    port = free_port()
    cfg = os.path.join(tmp, "bench.toml")
    extra = f"max_open_files = {a.max_open_files}\n" if a.max_open_files else ""
    limits = f"[limits]\nmax_series = {max(50000, a.series + 1000)}\n"
    if a.series > 10000:
        limits += f"[limits.max_values]\napi_key_id = {a.series + 1000}\n"
    exports = ""
    vm_addr = None
    if a.otlp:
        vm, vm_addr, _ = start_victoria(tmp)
        procs.append(vm)
        exports += f'[otlp]\nendpoint = "http://{vm_addr}/opentelemetry/v1/metrics"\ninterval = "{a.otlp_interval}"\n'
    if a.loki:
        sink = http.server.ThreadingHTTPServer(("127.0.0.1", 0), LokiSink)
        sink.daemon_threads = True
        threading.Thread(target=sink.serve_forever, daemon=True).start()
        sinks.append(sink)
        exports += f'[loki]\nendpoint = "http://127.0.0.1:{sink.server_address[1]}/loki/api/v1/push"\n'
    with open(cfg, "w") as f:
        f.write(f'state_dir = "{tmp}/state"\nnode_name = "bench"\n[source]\n'
                f'include = ["{tmp}/pods/envoy-gateway-system_*/envoy/*.log"]\nstart_at = "beginning"\n{extra}'
                f'{limits}[server]\nlisten = "127.0.0.1:{port}"\n{exports}')
    daemon = subprocess.Popen([binary, "run", "--config", cfg], stderr=open(os.path.join(tmp, "daemon.log"), "w"))
    procs.append(daemon)
    status_url = f"http://127.0.0.1:{port}/status"
    for _ in range(100):
        try:
            urllib.request.urlopen(status_url, timeout=1).read()
            break
        except OSError:
            time.sleep(0.05)

    prefilled = a.series if a.prefill else 0
    if prefilled:
        # Wait until the prefill is counted (and the daemon ready), so the load starts at
        # full size.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                s = json.loads(urllib.request.urlopen(status_url, timeout=2).read())
                if s["lines"] >= prefilled and s["ready"]:
                    break
            except OSError:
                pass
            time.sleep(0.1)
    written = []  # (time, cumulative lines written)
    counted = []  # (time, lines counted)
    stop = threading.Event()

    def poller():
        while not stop.is_set():
            try:
                s = json.loads(urllib.request.urlopen(status_url, timeout=2).read())
                counted.append((time.monotonic(), s["lines"] - prefilled))
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

    scrape = {"done": 0, "failed": 0, "bytes": 0, "health": []}
    scrape_window = threading.Event()

    def scraper():
        scrape_window.wait()
        headers = {"Accept-Encoding": "gzip"} if a.scrape_gzip else {}
        while scrape_window.is_set():
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
                body = urllib.request.urlopen(req, timeout=30).read()
                scrape["done"] += 1
                scrape["bytes"] = len(body)
            except OSError:
                scrape["failed"] += 1

    # /healthz from its own process: in a thread it would wait for the scrapers' GIL.
    health_go, health_stop = multiprocessing.Event(), multiprocessing.Event()
    health_out = multiprocessing.Queue()
    prober = multiprocessing.Process(target=health_prober, args=(port, health_go, health_stop, health_out))
    if a.scrapers:
        prober.start()

    scrapers = [threading.Thread(target=scraper) for _ in range(a.scrapers)]
    for x in scrapers:
        x.start()
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
        if a.scrapers and not scrape_window.is_set() and time.monotonic() - start >= 5 \
                and time.monotonic() - start < 5 + a.scrape_seconds:
            scrape_window.set()
            health_go.set()
        if scrape_window.is_set() and time.monotonic() - start >= 5 + a.scrape_seconds:
            scrape_window.clear()
            health_stop.set()
        if i % (a.rate * 10) == 0:
            rss_samples.append(proc_mem(daemon.pid, "VmRSS"))
    for h in handles:
        h.close()
    if scrape_window.is_set():
        scrape_window.clear()
    elif a.scrapers:  # a run shorter than the window: release the threads
        scrape_window.set()
        scrape_window.clear()
    for x in scrapers:
        x.join()
    if a.scrapers:
        health_go.set()
        health_stop.set()
        scrape["health"] = health_out.get(timeout=60)
        prober.join()
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
    exports_seen = []
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
        exports_seen = [x for x in text.splitlines() if x.startswith("tokenmeter_exports_total")]
    except OSError:
        pass
    vm_check = None
    if vm_addr:
        want_series = min(a.series, i)
        # The last push may still be under way: wait up to two intervals plus 30 s for it.
        deadline = time.monotonic() + 60
        while True:
            got_series = promql(vm_addr, "count(llm_tokens_total)")
            got_requests = promql(vm_addr, "sum(llm_requests_total)")
            if (got_series == want_series and got_requests == i) or time.monotonic() > deadline:
                break
            time.sleep(1)
        vm_check = (got_series, want_series, got_requests)
    peak_after = proc_mem(daemon.pid, "VmHWM")
    stop_proc(daemon)

    delays = []
    for wt, n in written:
        hit = next((ct for ct, c in counted if ct >= wt and c >= n), None)
        if hit is not None:
            delays.append(hit - wt)
    delays.sort()
    p = lambda q: delays[min(len(delays) - 1, int(q * len(delays)))] if delays else float("nan")
    final = counted[-1][1] if counted else 0
    if a.scrapers:
        h = sorted(scrape["health"])
        hq = lambda q: h[min(len(h) - 1, int(q * len(h)))] * 1000 if h else float("nan")
        print(f"scrapes: {a.scrapers} concurrent for {a.scrape_seconds} s{' (gzip)' if a.scrape_gzip else ''}: "
              f"{scrape['done']} done, {scrape['failed']} failed, body {scrape['bytes'] / 1e6:.1f} MB; "
              f"/healthz during them: {len(h)} probes, p50 {hq(0.5):.1f} ms, p99 {hq(0.99):.1f} ms, "
              f"max {h[-1] * 1000 if h else float('nan'):.1f} ms")
    size = sum(os.path.getsize(x) for x in logs)
    print(f"binary {binary}; workload: {a.rate} lines/s for {a.seconds} s ({i} lines, {a.series} series"
          f"{', prefilled' if prefilled else ''}, "
          f"{a.files} files), {size / 1e6:.0f} MB; /status polled every 50 ms")
    print(f"counted {final} of {i} lines")
    if a.otlp or a.loki:
        print(f"exports: otlp {'on, every ' + a.otlp_interval if a.otlp else 'off'}, loki {'on' if a.loki else 'off'}; "
              f"peak RSS after the idle period and the export check: {peak_after:.1f} MiB")
        for x in exports_seen:
            print("  " + x)
    if vm_check:
        got_series, want_series, got_requests = vm_check
        # The prefilled lines (one per series, before the load) are requests too.
        want_requests = i + prefilled
        ok = "OK" if got_series == want_series and got_requests == want_requests else "MISMATCH"
        print(f"VictoriaMetrics: count(llm_tokens_total) = {got_series:.0f} (want {want_series}), "
              f"sum(llm_requests_total) = {got_requests:.0f} (want {want_requests}): {ok}")
    if a.loki:
        print(f"Loki sink: {LokiSink.stats['requests']} pushes, {LokiSink.stats['bytes'] / 1e6:.1f} MB")
    print()
    print("| files | CPU (% of one core) | idle CPU | peak RSS | RSS every 10 s (MiB) | delay p50 | delay p99 | delay max | fds (all / log files) |")
    print("|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    print(f"| {a.files} | {100 * cpu / elapsed:.1f} % | {100 * idle:.2f} % | {peak:.1f} MiB | {' '.join(f'{r:.1f}' for r in rss_samples)} | "
          f"{p(0.5) * 1000:.0f} ms | {p(0.99) * 1000:.0f} ms | {delays[-1] * 1000 if delays else float('nan'):.0f} ms | {fds[0]} / {fds[1]} |")


if __name__ == "__main__":
    sys.exit(main())
