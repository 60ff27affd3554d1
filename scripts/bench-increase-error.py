#!/usr/bin/env python3
"""How far the chargeback query reads from the exact daily sums, sparse vs dense backfill.

    scripts/bench-increase-error.py [--keys 200] [--models 2] [--days 7] [--seed 1]
                                    [--steps sparse:60s,dense:60s,sparse:1h,dense:1h]

1. Generates a sparse-key workload (plain Envoy JSON, in time order): `--keys` API keys with
   Zipf-like request rates (key 0: ~2,000 requests a day, the tail: well under one a day, so
   many key-days hold a single request), each request for one of `--models` models. The exact
   tokens per (api_key_id, UTC day) are summed here from the generated records (event time =
   start_time + duration), independently of tokenmeter.
2. Backfills it once per `--steps` entry (`tokenmeter replay --openmetrics DIR/ --step S
   [--dense] --instance <kind>-<step>`), timing each run and taking its sample count from the
   summary, then turns every window file into TSDB blocks with promtool.
3. Starts Prometheus 2.53 on the blocks and asks, at every UTC midnight that closes a whole
   day, `sum by (api_key_id) (increase(llm_tokens_total{instance=…}[1d]))` and the invoice
   query without extrapolation, `sum by (api_key_id) (x - x offset 1d or x)`.
4. Prints, per output and query, the relative error per key-day with tokens (|read − exact| /
   exact; a key-day missing from the answer counts as 100 %): mean, median, p90, max, the
   share read exactly, the same for key-days of a single request, and key-days read as
   non-zero that had no tokens. Writes the figures as JSON next to the workload.

Needs the release binary (built if missing) and the backends of scripts/install-backends.sh
(promtool, prometheus); `TOKENMETER_BACKENDS` as for the tests.
"""
import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAY = 86_400
START = 1_795_651_200  # 2026-11-20T00:00:00Z
TIME = "/usr/bin/time"


def iso_ms(ms):
    s, frac = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)) + f".{frac:03d}Z"


def generate(path, keys, models, days, seed):
    """Writes the workload; returns {(key, day): [tokens, requests]} from the records."""
    rng = random.Random(seed)
    names = [f"model-{m}" for m in range(models)]
    recs = []
    for k in range(keys):
        per_day = 2000.0 / (k + 1) ** 1.5
        n = sum(1 for _ in range(days) for _ in range(poisson(rng, per_day)))
        for _ in range(n):
            start_ms = START * 1000 + rng.randrange(days * DAY * 1000)
            dur_ms = rng.randrange(30_000)
            recs.append((start_ms + dur_ms, start_ms, dur_ms, f"key-{k:04d}",
                         rng.choice(names), 1 + rng.randrange(4000), rng.randrange(1000)))
    recs.sort()
    exact = {}
    with open(path, "w") as f:
        for event_ms, start_ms, dur_ms, key, model, inp, out in recs:
            f.write(json.dumps({
                "start_time": iso_ms(start_ms), "duration": dur_ms, "model": model,
                "api_key_id": key, "aim_service_id": "svc-1", "response_code": 200,
                "llm_input_token": inp, "llm_output_token": out,
                "llm_total_token": inp + out}, separators=(",", ":")) + "\n")
            # The event time is start_time + duration (SPEC §3); days are UTC.
            day = (event_ms // 1000 - START) // DAY
            e = exact.setdefault((key, day), [0, 0])
            e[0] += inp + out
            e[1] += 1
    return exact, len(recs)


def poisson(rng, lam):
    # Knuth for small rates, normal approximation for large ones.
    if lam > 50:
        return max(0, round(rng.gauss(lam, lam ** 0.5)))
    L, k, p = pow(2.718281828459045, -lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= L:
            return k
        k += 1


def run_timed(cmd):
    rss_file = os.path.join(WORK, "rss")
    wrapped = [TIME, "-f", "%M", "-o", rss_file] + cmd if os.path.exists(TIME) else cmd
    t = time.perf_counter()
    out = subprocess.run(wrapped, stdout=subprocess.PIPE, check=True).stdout
    wall = time.perf_counter() - t
    rss = 0
    if wrapped is not cmd:
        with open(rss_file) as f:
            rss = int(f.read().split()[-1])
    return out, wall, rss


def query(addr, q, t):
    url = f"http://{addr}/api/v1/query?" + urllib.parse.urlencode({"query": q, "time": t})
    with urllib.request.urlopen(url, timeout=300) as r:
        body = json.load(r)
    if body.get("status") != "success":
        sys.exit(f"query {q}: {body}")
    return {s["metric"].get("api_key_id", ""): float(s["value"][1]) for s in body["data"]["result"]}


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else 0.0


def errors(exact, got_by_day, days):
    """Relative errors per key-day with tokens, and the phantom key-days."""
    rel, rel_single, phantom = [], [], 0
    keys = {k for k, _ in exact}
    for d in range(days):
        got = got_by_day[d]
        for k in keys | set(got):
            want = exact.get((k, d), [0, 0])
            g = got.get(k, 0.0)
            if want[0] == 0:
                phantom += abs(g) > 1e-6
                continue
            e = abs(g - want[0]) / want[0]
            rel.append(e)
            if want[1] == 1:
                rel_single.append(e)
    return rel, rel_single, phantom


def stats(xs):
    if not xs:
        return {}
    return {
        "key_days": len(xs),
        "mean": statistics.fmean(xs),
        "median": percentile(xs, 0.5),
        "p90": percentile(xs, 0.9),
        "max": max(xs),
        "exact": sum(1 for x in xs if x < 1e-9) / len(xs),
    }


def main():
    global WORK
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--keys", type=int, default=200)
    ap.add_argument("--models", type=int, default=2)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", default="sparse:60s,dense:60s,sparse:1h,dense:1h")
    ap.add_argument("--work", default=os.path.join(ROOT, ".cache", "bench", "increase"))
    a = ap.parse_args()
    WORK = a.work
    backends = os.path.join(os.environ.get("TOKENMETER_BACKENDS", os.path.join(ROOT, ".cache", "backends")),
                            "root", "usr", "bin")
    promtool, prometheus = os.path.join(backends, "promtool"), os.path.join(backends, "prometheus")
    for b in (promtool, prometheus):
        if not os.path.exists(b):
            sys.exit(f"{b} is missing: run scripts/install-backends.sh")
    binary = os.path.join(ROOT, "target", "release", "tokenmeter")
    if not os.path.exists(binary):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    log = os.path.join(WORK, "sparse-keys.log")
    exact, n = generate(log, a.keys, a.models, a.days, a.seed)
    singles = sum(1 for v in exact.values() if v[1] == 1)
    print(f"workload: {n} requests, {a.keys} keys x {a.models} models over {a.days} days; "
          f"{len(exact)} key-days with tokens, {singles} of them a single request")

    blocks = os.path.join(WORK, "blocks")
    runs = []
    for spec in a.steps.split(","):
        kind, step = spec.split(":")
        instance = f"{kind}-{step}"
        out_dir = os.path.join(WORK, instance) + "/"
        cmd = [binary, "replay", "--summary", "json", "--step", step, "--block", "24h",
               "--instance", instance, "--openmetrics", out_dir, log]
        if kind == "dense":
            cmd.insert(2, "--dense")
        out, wall, rss = run_timed(cmd)
        summary = json.loads(out)
        size = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
        t = time.perf_counter()
        for f in sorted(os.listdir(out_dir)):
            subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics",
                            os.path.join(out_dir, f), blocks], stdout=subprocess.DEVNULL, check=True)
        promtool_s = time.perf_counter() - t
        shutil.rmtree(out_dir)
        runs.append({"instance": instance, "kind": kind, "step": step,
                     "series": summary["emitted"]["series"], "samples": summary["emitted"]["samples"],
                     "om_bytes": size, "replay_s": wall, "replay_rss_kib": rss, "promtool_s": promtool_s})
        print(f"{instance}: {summary['emitted']['samples']} samples, {size / 1e6:.1f} MB, "
              f"replay {wall:.2f}s {rss / 1024:.0f} MiB, promtool {promtool_s:.1f}s", flush=True)

    addr = "127.0.0.1:%d" % free_port()
    cfg = os.path.join(WORK, "prometheus.yml")
    with open(cfg, "w") as f:
        f.write("global:\n  scrape_interval: 1h\n")
    prom = subprocess.Popen([prometheus, f"--config.file={cfg}", f"--storage.tsdb.path={blocks}",
                             "--storage.tsdb.retention.time=100y", f"--web.listen-address={addr}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://{addr}/-/ready", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                sys.exit("Prometheus did not become ready within 300 s")
            time.sleep(0.2)
        results = []
        for r in runs:
            x = f'llm_tokens_total{{instance="{r["instance"]}"}}'
            for qname, q in [("increase", f"sum by (api_key_id) (increase({x}[1d]))"),
                             ("invoice", f"sum by (api_key_id) ({x} - {x} offset 1d or {x})")]:
                got = {d: query(addr, q, START + (d + 1) * DAY) for d in range(a.days)}
                rel, rel_single, phantom = errors(exact, got, a.days)
                results.append({**r, "query": qname, "all": stats(rel),
                                "single_request": stats(rel_single), "phantom_key_days": phantom})
    finally:
        prom.terminate()
        prom.wait()

    print()
    print("| output | query | key-days | mean rel. error | median | p90 | max | read exactly "
          "| single-request key-days: mean / max | non-zero without tokens |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        s, s1 = r["all"], r["single_request"]
        print(f"| {r['instance']} | {r['query']} | {s['key_days']} | {s['mean']:.2%} | {s['median']:.2%} "
              f"| {s['p90']:.2%} | {s['max']:.2%} | {s['exact']:.1%} "
              f"| {s1.get('mean', 0):.1%} / {s1.get('max', 0):.1%} | {r['phantom_key_days']} |")
    print()
    print("| output | series | samples | OpenMetrics | replay wall | replay peak RSS | promtool |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        print(f"| {r['instance']} | {r['series']} | {r['samples']:,} | {r['om_bytes'] / 1e6:.1f} MB "
              f"| {r['replay_s']:.2f} s | {r['replay_rss_kib'] / 1024:.0f} MiB | {r['promtool_s']:.1f} s |")
    with open(os.path.join(WORK, "results.json"), "w") as f:
        json.dump({"args": vars(a), "requests": n, "key_days": len(exact),
                   "single_request_key_days": singles, "runs": runs, "results": results}, f, indent=1)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


if __name__ == "__main__":
    main()
