//! Backfill end to end: `replay --openmetrics` into the real `promtool` and a real Prometheus
//! 2.53, `replay --push` into a real VictoriaMetrics, `replay --loki` into the Loki receiver.
//! The workload's cumulative values are computed by the test from what it generated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::common::loki::{Behavior, LokiReceiver};
use crate::common::*;

const STEP: i64 = 60;

/// A dense workload: one record every 5 s for `hours` hours from `start` (unix seconds), plain
/// Envoy JSON (event time = start_time + duration), 3 models × 2 keys = 6 series, so every
/// series has data in every 60 s step. Returns the file text and, per model, the tokens with
/// their event times (seconds).
fn workload(start: i64, hours: i64) -> (String, BTreeMap<String, Vec<(i64, u64)>>) {
    let mut text = String::new();
    let mut by_model: BTreeMap<String, Vec<(i64, u64)>> = BTreeMap::new();
    let models = [
        "gpt-4o-mini",
        "claude-sonnet-4-5",
        "meta-llama/Llama-3.1-8B-Instruct",
    ];
    let n = hours * 3600 / 5;
    for i in 0..n {
        let t = start + i * 5;
        let model = models[(i % 3) as usize];
        let key = ["key-a", "key-b"][((i / 3) % 2) as usize];
        let (inp, out) = (i % 211 + 1, i % 17);
        // duration 0: the event time is the start time exactly.
        text.push_str(&format!(
            "{{\"start_time\":\"{}\",\"duration\":0,\"model\":\"{model}\",\"api_key_id\":\"{key}\",\"aim_service_id\":\"svc\",\"llm_input_token\":{inp},\"llm_output_token\":{out},\"response_code\":200}}\n",
            iso(t)
        ));
        by_model
            .entry(model.to_string())
            .or_default()
            .push((t, (inp + out) as u64));
    }
    (text, by_model)
}

/// Cumulative tokens of `model` counting events strictly before `t` (a step end).
fn cumulative(by_model: &BTreeMap<String, Vec<(i64, u64)>>, model: &str, t: i64) -> u64 {
    by_model[model]
        .iter()
        .filter(|(e, _)| *e < t)
        .map(|(_, v)| v)
        .sum()
}

/// `replay --summary json ARGS [--config CONFIG]`: the summary.
fn replay(args: &[&str], config: Option<&Path>) -> Value {
    let mut cmd = replay_cmd(args);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    summary(&mut cmd, None).1
}

/// `replay --summary json ARGS --retry-for 2s --config CONFIG FILE` against a peer that never
/// takes its requests: it must give up, exit 1, within a bound whatever the peer says. How long
/// it took, the summary and the standard error.
fn replay_giving_up(args: &[&str], config: &Path, file: &Path) -> (Duration, Value, String) {
    let t = std::time::Instant::now();
    let out = run(replay_cmd(args)
        .args(["--retry-for", "2s", "--config"])
        .arg(config)
        .arg(file))
    .exits(1);
    (
        t.elapsed(),
        serde_json::from_str(&out.stdout).unwrap(),
        out.stderr,
    )
}

/// A config in `dir` whose `[loki]` endpoint is `r`'s.
fn loki_config(dir: &Path, r: &LokiReceiver) -> PathBuf {
    let cfg = dir.join("loki.toml");
    std::fs::write(&cfg, format!("[loki]\nendpoint = \"{}\"\n", r.endpoint())).unwrap();
    cfg
}

#[test]
fn openmetrics_into_promtool_and_prometheus_exact() {
    let tmp = tempfile::tempdir().unwrap();
    // Three hours on 2026-11-20, aligned to the hour.
    let start = 1_795_651_200; // 2026-11-20T00:00:00Z
    let (text, by_model) = workload(start, 3);
    let log = tmp.path().join("access.log");
    std::fs::write(&log, &text).unwrap();
    let om = tmp.path().join("backfill.om");
    let summary = replay(
        &["--openmetrics", om.to_str().unwrap(), log.to_str().unwrap()],
        None,
    );
    assert_eq!(summary["records"], 3 * 3600 / 5);
    assert_eq!(summary["emitted"]["series"], 6);
    let body = std::fs::read_to_string(&om).unwrap();
    assert!(body.ends_with("# EOF\n"));
    // Timestamps are seconds (10 digits), never milliseconds; each series starts with a 0 one
    // step before its first value (first increments, SPEC §4).
    let sample = |n: usize| -> (String, i64) {
        let line = body.lines().nth(n).unwrap();
        let mut parts = line.rsplitn(3, ' ');
        let ts = parts.next().unwrap().parse().unwrap();
        (parts.next().unwrap().to_string(), ts)
    };
    assert_eq!(sample(2), ("0".to_string(), start));
    assert_eq!(sample(3).1, start + STEP);
    assert_ne!(sample(3).0, "0");

    let blocks = tmp.path().join("blocks");
    promtool_blocks(&om, &blocks);

    let prom = Prometheus::start_on_blocks(&blocks);
    let query = |q: &str, t: i64| -> BTreeMap<String, f64> {
        prom.query_at(q, t)
            .into_iter()
            .map(|(labels, v)| (labels.get("model").cloned().unwrap_or_default(), v))
            .collect()
    };
    for t in [start + 3600, start + 5400 + 60, start + 3 * 3600] {
        let got = query("sum by (model) (last_over_time(llm_tokens_total[10m]))", t);
        for model in by_model.keys() {
            assert_eq!(
                got[model],
                cumulative(&by_model, model, t) as f64,
                "{model} at {t}"
            );
        }
    }
    // increase over the first hour sees the first increments: every series starts at 0.
    let t = start + 3600;
    let got = query("sum by (model) (increase(llm_tokens_total[1h]))", t);
    for model in by_model.keys() {
        assert_eq!(
            got[model],
            cumulative(&by_model, model, t) as f64,
            "{model} first hour"
        );
    }
    // increase over the second hour: samples exist at both ends of the window, so Prometheus
    // does not extrapolate and the answer is exact.
    let t = start + 2 * 3600;
    let got = query("sum by (model) (increase(llm_tokens_total[1h]))", t);
    for model in by_model.keys() {
        let want = cumulative(&by_model, model, t) - cumulative(&by_model, model, t - 3600);
        assert_eq!(got[model], want as f64, "{model}");
    }
}

#[test]
fn push_three_hours_ago_into_victoriametrics() {
    let vm = Victoria::start();
    let tmp = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let start = (now - 3 * 3600) / 3600 * 3600 - 3600; // whole hour, 3-4 hours ago
    let (text, by_model) = workload(start, 2);
    let log = tmp.path().join("old.log");
    std::fs::write(&log, &text).unwrap();
    let cfg = tmp.path().join("push.toml");
    std::fs::write(
        &cfg,
        format!("[otlp]\nendpoint = \"{}\"\n", vm.otlp_endpoint()),
    )
    .unwrap();
    // Pushed as four 30-minute windows, each as it closes: the series continue across them.
    let summary = replay(
        &[
            "--push",
            "--block",
            "30m",
            "--instance",
            "backfill-1",
            log.to_str().unwrap(),
        ],
        Some(&cfg),
    );
    assert_eq!(
        summary["pushed"]["success"].as_u64().map(|n| n > 0),
        Some(true),
        "{summary}"
    );
    // Steps end at start+1m … start+2h: windows [0,30m) … [1h30,2h) and the one holding 2h.
    assert_eq!(summary["emitted"]["windows"], 5, "{summary}");
    for t in [start + 1800, start + 2700, start + 3600, start + 2 * 3600] {
        let results = vm.query_at(
            "sum by (model) (llm_tokens_total{service_instance_id=\"backfill-1\"})",
            t,
        );
        for model in by_model.keys() {
            let got = results
                .iter()
                .find(|(l, _)| l.get("model") == Some(model))
                .map(|x| x.1);
            assert_eq!(
                got,
                Some(cumulative(&by_model, model, t) as f64),
                "{model} at {t}"
            );
        }
    }
}

#[test]
fn same_input_same_bytes_and_from_to_cut_at_records() {
    let tmp = tempfile::tempdir().unwrap();
    let start = 1_795_651_200;
    let (text, _) = workload(start, 1);
    let log = tmp.path().join("a.log");
    std::fs::write(&log, &text).unwrap();
    let (a, b) = (tmp.path().join("a.om"), tmp.path().join("b.om"));
    replay(
        &["--openmetrics", a.to_str().unwrap(), log.to_str().unwrap()],
        None,
    );
    replay(
        &["--openmetrics", b.to_str().unwrap(), log.to_str().unwrap()],
        None,
    );
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    // Records at 00:10:00 .. 00:19:55 are 120 records: --from is inclusive, --to exclusive,
    // and both fall exactly on record times.
    let s = replay(
        &[
            "--from",
            &iso(start + 600),
            "--to",
            &iso(start + 1200),
            log.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(s["records"], 120);
    assert_eq!(s["outside_range"], 720 - 120);
    // A directory expands in name order, gzip included.
    let dir = tmp.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("2.log"), &text).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, text.as_bytes()).unwrap();
    std::fs::write(dir.join("1.log.gz"), gz.finish().unwrap()).unwrap();
    let s = replay(&[dir.to_str().unwrap()], None);
    assert_eq!(s["records"], 2 * 720);
}

#[test]
fn replay_loki_forwards_original_timestamps_and_reports_rejections() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, day) = cri_fixture_of_yesterday(tmp.path());
    let log = log.to_str().unwrap();
    let r = LokiReceiver::start();
    let cfg = tmp.path().join("loki.toml");
    std::fs::write(
        &cfg,
        format!(
            "node_name = \"replayer\"\n[loki]\nendpoint = \"{}\"\n",
            r.endpoint()
        ),
    )
    .unwrap();
    let s = replay(&["--loki", log], Some(&cfg));
    assert_eq!(s["loki"]["sent"], 34);
    assert_eq!(s["loki"]["rejected"], 0);
    assert_eq!(s["loki"]["too_old"], 0);
    let entries = r.entries();
    assert_eq!(entries.len(), 34);
    let first = entries
        .iter()
        .find(|e| e.line.contains("deprecated runtime key"))
        .unwrap();
    // The line's own time, 09:14:01.202232361 of that day, not the time of the replay.
    let first_ns = (day + 9 * 3600 + 14 * 60 + 1) * 1_000_000_000 + 202_232_361;
    assert_eq!(first.ts_ns, first_ns);
    // A Loki whose clock is eight days after the lines rejects them (older than 7 days),
    // while tokenmeter, whose clock says they are a day old, sends them: Loki's rejection is
    // in the summary. (That tokenmeter does not send lines older than its own
    // --loki-max-age is the next test's.)
    let r2 = LokiReceiver::start();
    r2.set_now_ns(first_ns + 8 * 86_400 * 1_000_000_000);
    std::fs::write(&cfg, format!("[loki]\nendpoint = \"{}\"\n", r2.endpoint())).unwrap();
    let s = replay(&["--loki", log], Some(&cfg));
    assert_eq!(s["loki"]["rejected"], 34, "{s}");
    assert_eq!(s["loki"]["too_old"], 0, "{s}");
    assert!(
        s["loki"]["messages"][0]
            .as_str()
            .unwrap()
            .contains("too old"),
        "{s}"
    );
    assert_eq!(r2.entries().len(), 0);
}

/// Lines older than `--loki-max-age` (default 7 d, Loki's `reject_old_samples_max_age`) are
/// counted in the summary instead of being sent to fail; the rest reach Loki.
#[test]
fn replay_loki_does_not_send_lines_older_than_loki_max_age() {
    let tmp = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    const DAY: i64 = 86_400;
    // (age, lines of that age): in time order, one stream.
    let ages = [(10 * DAY, 3), (8 * DAY, 2), (6 * DAY, 4), (3600, 5)];
    let mut text = String::new();
    for (age, n) in ages {
        for i in 0..n {
            text.push_str(&format!(
                "{} stdout F {{\"model\":\"m\",\"api_key_id\":\"k\",\"aim_service_id\":\"s\",\"llm_input_token\":{i},\"llm_output_token\":1,\"response_code\":200}}\n",
                iso(now - age + i)
            ));
        }
    }
    let log = tmp.path().join("history.log");
    std::fs::write(&log, &text).unwrap();
    let count = |older_than: i64| -> u64 {
        ages.iter()
            .filter(|(a, _)| *a > older_than)
            .map(|(_, n)| *n as u64)
            .sum()
    };
    let r = LokiReceiver::start();
    let cfg = loki_config(tmp.path(), &r);
    let s = replay(&["--loki", log.to_str().unwrap()], Some(&cfg));
    assert_eq!(s["loki"]["too_old"], count(7 * DAY), "{s}");
    assert_eq!(s["loki"]["sent"], 14 - count(7 * DAY), "{s}");
    assert_eq!(s["loki"]["rejected"], 0, "{s}");
    assert_eq!(r.entries().len() as u64, 14 - count(7 * DAY));
    assert!(r.rejections().is_empty(), "{:?}", r.rejections());
    // The counts are in the text summary too.
    let r = LokiReceiver::start();
    std::fs::write(&cfg, format!("[loki]\nendpoint = \"{}\"\n", r.endpoint())).unwrap();
    let text = run(tokenmeter()
        .args(["replay", "--loki", "--config"])
        .arg(&cfg)
        .arg(&log))
    .ok()
    .stdout;
    assert!(
        text.contains(&format!(
            "\nLoki: {} entries accepted, 0 rejected, {} older than --loki-max-age not sent\n",
            14 - count(7 * DAY),
            count(7 * DAY)
        )),
        "{text}"
    );
    // Told a longer age than Loki's, it sends the 8-day-old lines, which Loki rejects (and
    // stores the others of the request).
    let r = LokiReceiver::start();
    std::fs::write(&cfg, format!("[loki]\nendpoint = \"{}\"\n", r.endpoint())).unwrap();
    let s = replay(
        &["--loki", "--loki-max-age", "9d", log.to_str().unwrap()],
        Some(&cfg),
    );
    assert_eq!(s["loki"]["too_old"], count(9 * DAY), "{s}");
    assert_eq!(r.entries().len() as u64, 14 - count(7 * DAY));
    let rejected = r.rejections();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(
        rejected[0].matches("too old").count() as u64,
        count(7 * DAY) - count(9 * DAY),
        "{rejected:?}"
    );
}

#[test]
fn replay_loki_against_a_loki_that_is_down_gives_up_after_retry_for_with_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let (fixture, _) = cri_fixture_of_yesterday(tmp.path());
    let r = LokiReceiver::start();
    r.set_down(true);
    let cfg = loki_config(tmp.path(), &r);
    let (took, s, stderr) = replay_giving_up(&["--loki"], &cfg, &fixture);
    assert!(took < Duration::from_secs(30), "gave up after {took:?}");
    assert_eq!(s["loki"]["sent"], 0);
    assert_eq!(s["loki"]["undelivered"], 34, "{s}");
    assert!(stderr.contains("not delivered to Loki"), "{stderr}");
}

#[test]
fn a_retry_after_of_zero_is_not_a_tight_loop_and_replay_loki_still_gives_up() {
    let tmp = tempfile::tempdir().unwrap();
    let (fixture, _) = cri_fixture_of_yesterday(tmp.path());
    let r = LokiReceiver::start();
    // Every request is told to come back at once (more than any run could use).
    for _ in 0..100_000 {
        r.script(Behavior::RetryAfter("0"));
    }
    let cfg = loki_config(tmp.path(), &r);
    let (took, s, _) = replay_giving_up(&["--loki"], &cfg, &fixture);
    assert!(took < Duration::from_secs(30), "gave up after {took:?}");
    // The agent's own backoff (0.5 s, 1 s, 2 s, ±25 %) is the floor: within 2 s of retrying
    // there is room for at most 4 attempts, not thousands.
    assert!(
        r.requests() <= 4,
        "{} requests in {took:?}: Retry-After: 0 became a tight loop",
        r.requests()
    );
    assert_eq!(s["loki"]["undelivered"], 34, "{s}");
}

#[test]
fn replay_push_spends_one_retry_for_on_all_its_requests() {
    // Enough series for several OTLP requests (at most 5,000 points each).
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("many.log");
    let mut text = String::new();
    for i in 0..3000 {
        text.push_str(&format!(
            "2026-11-26T10:00:00.000000000Z stdout F {{\"model\":\"m\",\"api_key_id\":\"k{i}\",\"aim_service_id\":\"s\",\"llm_input_token\":1,\"llm_output_token\":1,\"response_code\":200}}\n"
        ));
    }
    std::fs::write(&log, text).unwrap();
    // Nothing listens there: every request fails at once and is retried with backoff.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = tmp.path().join("push.toml");
    std::fs::write(
        &cfg,
        format!("[otlp]\nendpoint = \"http://127.0.0.1:{port}/opentelemetry/v1/metrics\"\n"),
    )
    .unwrap();
    let (took, s, _) = replay_giving_up(&["--push"], &cfg, &log);
    let failed = s["pushed"]["failed"].as_u64().unwrap_or(0);
    assert!(failed >= 3, "several requests, all failed: {s}");
    // One budget of 2 s for all of them (plus one last backoff step), not 2 s each.
    assert!(
        took < Duration::from_secs(15),
        "{failed} requests took {took:?}"
    );
}

/// Backfill with pricing: every record is priced at its own event time (a price change in the
/// middle of the replayed range), written as exact decimals, and read back by Prometheus 2.53
/// from promtool's blocks.
#[test]
fn backfilled_cost_uses_the_price_in_force_at_each_event_and_reads_back_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let start = 1_795_651_200; // 2026-11-20T00:00:00Z
    let change = start + 5400; // prices change at 01:30
    let (text, _) = workload(start, 3);
    let log = tmp.path().join("access.log");
    std::fs::write(&log, &text).unwrap();
    let cfg = tmp.path().join("prices.toml");
    std::fs::write(
        &cfg,
        format!(
            "[pricing]\ncurrency = \"USD\"\n\
             [[pricing.prices]]\nmodel = \"gpt-4o-mini\"\nper_million = {{ input = 0.15, output = 0.6 }}\n\
             [[pricing.prices]]\nmodel = \"gpt-4o-mini\"\nfrom = \"{}\"\nper_million = {{ input = 0.3, output = 1.2 }}\n\
             [[pricing.prices]]\nmodel = \"claude-*\"\nper_million = {{ input = 3, output = 15 }}\n",
            iso(change).replace(".000Z", "Z")
        ),
    )
    .unwrap();
    // The workload again, with each record's cost in units of 10^-12 USD (rate per million
    // tokens × 10^6 units per token), from the event time and the rates above.
    let mut cost: BTreeMap<String, Vec<(i64, u128)>> = BTreeMap::new();
    let models = [
        "gpt-4o-mini",
        "claude-sonnet-4-5",
        "meta-llama/Llama-3.1-8B-Instruct",
    ];
    for i in 0..3 * 3600 / 5 {
        let t = start + i * 5;
        let model = models[(i % 3) as usize];
        let (inp, out) = (u128::from(i as u64 % 211 + 1), u128::from(i as u64 % 17));
        let units = match (model, t >= change) {
            ("gpt-4o-mini", false) => inp * 150_000 + out * 600_000,
            ("gpt-4o-mini", true) => inp * 300_000 + out * 1_200_000,
            ("claude-sonnet-4-5", _) => inp * 3_000_000 + out * 15_000_000,
            _ => 0,
        };
        cost.entry(model.to_string()).or_default().push((t, units));
    }
    let before = |model: &str, t: i64| -> u128 {
        cost[model]
            .iter()
            .filter(|(e, _)| *e < t)
            .map(|(_, u)| u)
            .sum()
    };
    let om = tmp.path().join("cost.om");
    let summary = replay(
        &["--openmetrics", om.to_str().unwrap(), log.to_str().unwrap()],
        Some(&cfg),
    );
    assert_eq!(summary["currency"], "USD");
    let body = std::fs::read_to_string(&om).unwrap();
    // Exact decimals in the file: the last cost samples of gpt-4o-mini's series (one per
    // key) add up to its whole cost, to the unit.
    let to_units = |d: &str| -> u128 {
        let (i, f) = d.split_once('.').unwrap_or((d, ""));
        assert!(f.len() <= 12, "{d}: at most 12 fractional digits");
        i.parse::<u128>().unwrap() * 1_000_000_000_000
            + format!("{f:0<12}").parse::<u128>().unwrap()
    };
    let mut last: BTreeMap<String, u128> = BTreeMap::new();
    for l in body
        .lines()
        .filter(|l| l.starts_with("llm_cost_total{model=\"gpt-4o-mini\""))
    {
        assert!(l.contains("currency=\"USD\""), "{l}");
        let mut parts = l.rsplitn(3, ' ');
        let (_ts, value, series) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        last.insert(series.to_string(), to_units(value));
    }
    assert_eq!(last.len(), 2);
    assert_eq!(
        last.values().sum::<u128>(),
        before("gpt-4o-mini", start + 4 * 3600)
    );

    let blocks = tmp.path().join("blocks");
    promtool_blocks(&om, &blocks);
    let prom = Prometheus::start_on_blocks(&blocks);
    for t in [start + 3600, change, change + 60, start + 3 * 3600] {
        let got: BTreeMap<String, u128> = prom
            .query_at("sum by (model) (last_over_time(llm_cost_total[10m]))", t)
            .into_iter()
            .map(|(l, v)| {
                (
                    l.get("model").cloned().unwrap_or_default(),
                    (v * 1e12).round() as u128,
                )
            })
            .collect();
        for model in models {
            assert_eq!(got[model], before(model, t), "{model} at {t}");
        }
    }
}

/// OpenMetrics text → samples by (metric name with labels) → [(timestamp s, value text)].
fn om_samples(text: &str) -> BTreeMap<String, Vec<(i64, String)>> {
    let mut out: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut parts = line.rsplitn(3, ' ');
        let ts: i64 = parts.next().unwrap().parse().unwrap();
        let value = parts.next().unwrap().to_string();
        out.entry(parts.next().unwrap().to_string())
            .or_default()
            .push((ts, value));
    }
    out
}

/// The files of an `--openmetrics DIR`, in name (= time) order.
fn window_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn window_files_hold_the_values_of_one_file_and_prometheus_reads_across_their_edges() {
    let tmp = tempfile::tempdir().unwrap();
    let start = 1_795_651_200; // 2026-11-26T00:00:00Z
    let (text, by_model) = workload(start, 5);
    let log = tmp.path().join("access.log");
    std::fs::write(&log, &text).unwrap();
    let one = tmp.path().join("one.om");
    replay(
        &[
            "--openmetrics",
            one.to_str().unwrap(),
            log.to_str().unwrap(),
        ],
        None,
    );
    let dir = tmp.path().join("windows");
    let dir_arg = format!("{}/", dir.display());
    let s = replay(&["--openmetrics", &dir_arg, log.to_str().unwrap()], None);
    // Steps end at 00:01 … 05:00; 2 h windows from midnight: [0,2) [2,4) [4,6).
    let files = window_files(&dir);
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "20261126T000000Z-20261126T020000Z.om",
            "20261126T020000Z-20261126T040000Z.om",
            "20261126T040000Z-20261126T060000Z.om"
        ]
    );
    assert_eq!(s["emitted"]["windows"], 3, "{s}");
    assert_eq!(s["late"], 0, "{s}");
    // Every sample of the single file is in exactly one window file, the first 0 included.
    let mut merged: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for f in &files {
        let body = std::fs::read_to_string(f).unwrap();
        assert!(body.ends_with("# EOF\n"));
        for (series, samples) in om_samples(&body) {
            merged.entry(series).or_default().extend(samples);
        }
    }
    assert_eq!(merged, om_samples(&std::fs::read_to_string(&one).unwrap()));
    assert_eq!(
        s["emitted"]["samples"].as_u64().unwrap() as usize,
        merged.values().map(Vec::len).sum::<usize>()
    );

    // promtool makes blocks of each file; Prometheus reads a series continuing from one file
    // into the next exactly.
    let blocks = tmp.path().join("blocks");
    for f in &files {
        promtool_blocks(f, &blocks);
    }
    let prom = Prometheus::start_on_blocks(&blocks);
    for t in [start + 2 * 3600 + 1800, start + 4 * 3600 + 600] {
        let got: BTreeMap<String, f64> = prom
            .query_at("sum by (model) (increase(llm_tokens_total[1h]))", t)
            .into_iter()
            .map(|(l, v)| (l.get("model").cloned().unwrap_or_default(), v))
            .collect();
        for model in by_model.keys() {
            let want = cumulative(&by_model, model, t - t % 60)
                - cumulative(&by_model, model, t - t % 60 - 3600);
            assert_eq!(got[model], want as f64, "{model} at {t}");
        }
    }
}

#[test]
fn a_record_later_than_max_delay_lands_in_the_oldest_open_step_and_totals_stay_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let start = 1_795_651_200;
    let rec = |t: i64, tokens: u64| {
        format!(
            "{{\"start_time\":\"{}\",\"duration\":0,\"model\":\"m\",\"api_key_id\":\"k\",\"aim_service_id\":\"s\",\"llm_input_token\":{tokens},\"llm_output_token\":0,\"response_code\":200}}\n",
            iso(t)
        )
    };
    // In order to 00:20, then one record from 00:02 (18 min late: its step is written), one
    // from 00:17 (3 min late: inside --max-delay 5m, its own step), then on to 00:30.
    let mut text = String::new();
    for m in 0..=20 {
        text.push_str(&rec(start + m * 60 + 10, 1));
    }
    text.push_str(&rec(start + 2 * 60 + 30, 1000));
    text.push_str(&rec(start + 17 * 60 + 30, 100));
    for m in 21..30 {
        text.push_str(&rec(start + m * 60 + 10, 1));
    }
    let log = tmp.path().join("late.log");
    std::fs::write(&log, &text).unwrap();
    let dir = tmp.path().join("w");
    let s = replay(
        &[
            "--openmetrics",
            &format!("{}/", dir.display()),
            log.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(s["late"], 1, "{s}");
    let body = std::fs::read_to_string(&window_files(&dir)[0]).unwrap();
    let samples = om_samples(&body);
    let tokens = samples
        .iter()
        .find(|(k, _)| k.starts_with("llm_input_tokens_total{"))
        .unwrap()
        .1
        .clone();
    let at = |minute: i64| -> u64 {
        tokens
            .iter()
            .find(|(t, _)| *t == start + minute * 60)
            .map(|(_, v)| v.parse().unwrap())
            .unwrap()
    };
    // The 18-minute-late record went into the oldest step still open when it came: the steps
    // up to 00:15 were written by then (00:20:10 − 5 min), so it is in the step ending 00:16.
    assert_eq!(at(15), 15);
    assert_eq!(at(16), 16 + 1000);
    // The 3-minute-late one is in its own step (ending 00:18), not before.
    assert_eq!(at(17), 17 + 1000);
    assert_eq!(at(18), 18 + 1000 + 100);
    // And the total is exact.
    assert_eq!(tokens.last().unwrap().1, (30 + 1000 + 100).to_string());
}

#[test]
fn dense_gives_every_series_a_sample_at_every_step_from_its_first() {
    let tmp = tempfile::tempdir().unwrap();
    let start = 1_795_651_200;
    let rec = |t: i64, key: &str| {
        format!(
            "{{\"start_time\":\"{}\",\"duration\":0,\"model\":\"m\",\"api_key_id\":\"{key}\",\"aim_service_id\":\"s\",\"llm_input_token\":5,\"llm_output_token\":0,\"response_code\":200}}\n",
            iso(t)
        )
    };
    // key a at 00:00:30 and 00:09:30, key b once at 00:04:30: sparse.
    let text = [
        rec(start + 30, "a"),
        rec(start + 270, "b"),
        rec(start + 570, "a"),
    ]
    .concat();
    let log = tmp.path().join("sparse.log");
    std::fs::write(&log, &text).unwrap();
    let sparse = tmp.path().join("sparse.om");
    let dense = tmp.path().join("dense.om");
    replay(
        &[
            "--openmetrics",
            sparse.to_str().unwrap(),
            log.to_str().unwrap(),
        ],
        None,
    );
    replay(
        &[
            "--dense",
            "--openmetrics",
            dense.to_str().unwrap(),
            log.to_str().unwrap(),
        ],
        None,
    );
    let series = |path: &Path, key: &str| -> Vec<(i64, String)> {
        om_samples(&std::fs::read_to_string(path).unwrap())
            .into_iter()
            .find(|(k, _)| {
                k.starts_with("llm_input_tokens_total{")
                    && k.contains(&format!("api_key_id=\"{key}\""))
            })
            .unwrap()
            .1
    };
    let minutes = |v: Vec<(i64, String)>| -> Vec<(i64, String)> {
        v.into_iter().map(|(t, x)| ((t - start) / 60, x)).collect()
    };
    let s = |x: &str| x.to_string();
    // Sparse: the 0, then samples at the steps with data only.
    assert_eq!(
        minutes(series(&sparse, "a")),
        [(0, s("0")), (1, s("5")), (10, s("10"))]
    );
    // Dense: every step from the 0 one step before the first value to the end of the replay.
    let want_a: Vec<(i64, String)> = std::iter::once((0, s("0")))
        .chain((1..=9).map(|m| (m, s("5"))))
        .chain(std::iter::once((10, s("10"))))
        .collect();
    assert_eq!(minutes(series(&dense, "a")), want_a);
    let want_b: Vec<(i64, String)> = std::iter::once((4, s("0")))
        .chain((5..=10).map(|m| (m, s("5"))))
        .collect();
    assert_eq!(minutes(series(&dense, "b")), want_b);
}

/// `replay --summary json ARGS --config CONFIG`, whatever its exit code.
fn replay_raw(args: &[&str], config: &Path) -> (Option<i32>, String, String) {
    let out = run(replay_cmd(args).arg("--config").arg(config));
    (out.code, out.stdout, out.stderr)
}

/// `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` of unix nanoseconds (independent of the crate's code).
fn iso_ns(ns: i64) -> String {
    iso(ns.div_euclid(1_000_000_000))
        .replace(".000Z", &format!(".{:09}Z", ns.rem_euclid(1_000_000_000)))
}

#[test]
fn to_live_ends_the_backfill_where_the_live_agent_started_counting() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let pod = pod_dir(&root, "gw-1");
    append(&pod.join("0.log"), "");
    let state = tmp.path().join("state");
    // The real agent, as installed: files present at its first start are read from their end.
    let agent = config(&root, &state, "node_name = \"node-1\"", "")
        .replace("start_at = \"beginning\"", "start_at = \"end\"");
    let mut d = Daemon::start(tmp.path(), "agent", &agent);
    let (code, body) = get(&d.addr, "/status").unwrap();
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let live = status["start_time_ns"].as_i64().unwrap();
    assert_eq!(d.terminate(), Some(0), "{}", d.log_text());
    let cfg = tmp.path().join("agent.toml");

    // History around that instant: (event time ns, input tokens).
    let records = [
        (live - 3_600_000_000_000, 1u64),
        (live - 1_000_000, 10),
        (live - 1, 100),
        (live, 1_000),
        (live + 1_000_000_000, 10_000),
    ];
    let text: String = records
        .iter()
        .map(|(t, n)| {
            format!(
                "{{\"start_time\":\"{}\",\"duration\":0,\"model\":\"m\",\"api_key_id\":\"k\",\"aim_service_id\":\"s\",\"llm_input_token\":{n},\"llm_output_token\":0,\"response_code\":200}}\n",
                iso_ns(*t)
            )
        })
        .collect();
    let log = tmp.path().join("history.log");
    std::fs::write(&log, text).unwrap();
    let om = tmp.path().join("history.om");
    let (code, stdout, stderr) = replay_raw(
        &[
            "--to",
            "live",
            "--openmetrics",
            om.to_str().unwrap(),
            log.to_str().unwrap(),
        ],
        &cfg,
    );
    assert_eq!(code, Some(0), "{stderr}");
    let s: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    // Before the agent's start (exclusive, like --to): the first three.
    let before: Vec<_> = records.iter().filter(|(t, _)| *t < live).collect();
    assert_eq!(s["records"], before.len() as u64, "{s}");
    assert_eq!(s["outside_range"], (records.len() - before.len()) as u64);
    assert_eq!(
        s["series"][0]["input_tokens"],
        before.iter().map(|(_, n)| n).sum::<u64>()
    );
    assert!(
        stderr.contains(&format!("{}state.json", state.display().to_string() + "/")),
        "{stderr}"
    );

    // The same bound written out by hand gives the same bytes.
    let om2 = tmp.path().join("by-hand.om");
    let (code, _, stderr) = replay_raw(
        &[
            "--to",
            &iso_ns(live),
            "--openmetrics",
            om2.to_str().unwrap(),
            log.to_str().unwrap(),
        ],
        &cfg,
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(std::fs::read(&om).unwrap(), std::fs::read(&om2).unwrap());

    // --from at or after the live start: nothing to backfill, a usage error.
    let (code, _, stderr) = replay_raw(
        &[
            "--from",
            &iso_ns(live),
            "--to",
            "live",
            log.to_str().unwrap(),
        ],
        &cfg,
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("is not before the live agent's start"),
        "{stderr}"
    );
}

#[test]
fn to_live_without_a_state_file_or_with_start_at_beginning_is_refused_naming_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("a.log");
    std::fs::write(&log, workload(1_795_651_200, 1).0).unwrap();
    let state = tmp.path().join("no-agent-here");
    let cfg = tmp.path().join("node.toml");
    std::fs::write(&cfg, format!("state_dir = \"{}\"\n", state.display())).unwrap();
    let (code, stdout, stderr) = replay_raw(&["--to", "live", log.to_str().unwrap()], &cfg);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        format!(
            "error: --to live: no state file {}/state.json (state_dir {} of config {}): the live agent has not run with this state_dir on this machine; run the replay where the agent runs, or give --to RFC3339\n",
            state.display(),
            state.display(),
            cfg.display()
        )
    );
    // Nothing was created in the state_dir.
    assert!(!state.exists());

    // An agent that read its first files from the beginning counted history too: no instant
    // separates backfill from live counting.
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"{}\"\n[source]\nstart_at = \"beginning\"\n",
            state.display()
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = replay_raw(&["--to", "live", log.to_str().unwrap()], &cfg);
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr.starts_with(&format!(
            "error: --to live: source.start_at = \"beginning\" in config {}:",
            cfg.display()
        )),
        "{stderr}"
    );
}

/// A sparse-key workload over `days` days from `start`: keys with a single request (mid-day,
/// in the last second of a day, at midnight exactly), keys with a few requests at random
/// times, and one key with a request every hour (so the replay runs to the last midnight).
/// Returns the file text (time order) and every (key, event time s, total tokens).
fn sparse_keys(start: i64, days: i64) -> (String, Vec<(String, i64, u64)>) {
    const DAY: i64 = 86_400;
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut recs: Vec<(String, i64, u64, u64)> = vec![
        ("single-mid".into(), start + DAY + 5 * 3600 + 1800, 700, 11),
        ("single-last-second".into(), start + DAY - 1, 300, 7),
        ("single-midnight".into(), start + 2 * DAY, 900, 5),
    ];
    for h in 0..days * 24 {
        recs.push(("hourly".into(), start + h * 3600 + 17 * 60, 10, 2));
    }
    for k in 0..12 {
        for _ in 0..1 + next(8) {
            let t = start + next((days * DAY) as u64) as i64;
            recs.push((format!("sparse-{k:02}"), t, 1 + next(5000), next(800)));
        }
    }
    recs.sort_by_key(|r| r.1);
    let mut text = String::new();
    let mut out = Vec::new();
    for (key, t, inp, outp) in recs {
        text.push_str(&format!(
            "{{\"start_time\":\"{}\",\"duration\":0,\"model\":\"m\",\"api_key_id\":\"{key}\",\"aim_service_id\":\"s\",\"llm_input_token\":{inp},\"llm_output_token\":{outp},\"response_code\":200}}\n",
            iso(t)
        ));
        out.push((key, t, inp + outp));
    }
    (text, out)
}

/// `--openmetrics DIR/` into promtool blocks in `blocks`, file by file.
fn promtool_dir(dir: &Path, blocks: &Path) {
    for f in window_files(dir) {
        promtool_blocks(&f, blocks);
    }
}

/// With `--dense --step 1h`, Prometheus 2.53 gives the exact daily tokens of every key through
/// `x - x offset 1d or x` (no extrapolation), single-request keys included, and `increase()`
/// stays within one step's worth of tokens at each end; the sparse output does not give the
/// exact sums. The expected values are summed from the generated records.
#[test]
fn dense_backfill_gives_exact_daily_sums_per_key_in_prometheus() {
    const DAY: i64 = 86_400;
    let tmp = tempfile::tempdir().unwrap();
    let start = 1_795_651_200; // 2026-11-20T00:00:00Z
    let days = 3;
    let (text, recs) = sparse_keys(start, days);
    let log = tmp.path().join("sparse.log");
    std::fs::write(&log, &text).unwrap();
    let blocks = tmp.path().join("blocks");
    // A backfill that ends in the middle of a day, as at a live agent's start (`--to live`).
    let cut = start + 2 * DAY + 6 * 3600 + 1234;
    let cut_arg = iso(cut);
    for (instance, dense) in [("dense", true), ("sparse", false), ("cut", true)] {
        let dir = tmp.path().join(instance);
        let mut args = vec!["--step", "1h", "--block", "24h", "--instance", instance];
        if dense {
            args.push("--dense");
        }
        if instance == "cut" {
            args.extend(["--to", &cut_arg]);
        }
        let dir_arg = format!("{}/", dir.display());
        args.extend(["--openmetrics", &dir_arg, log.to_str().unwrap()]);
        let s = replay(&args, None);
        let inside = recs
            .iter()
            .filter(|r| instance != "cut" || r.1 < cut)
            .count();
        assert_eq!(s["records"], inside as u64);
        assert_eq!(s["late"], 0);
        promtool_dir(&dir, &blocks);
    }
    let prom = Prometheus::start_on_blocks(&blocks);
    let keys: std::collections::BTreeSet<&str> = recs.iter().map(|r| r.0.as_str()).collect();
    // Tokens of `key` with an event time in [a, b).
    let tokens = |key: &str, a: i64, b: i64| -> u64 {
        recs.iter()
            .filter(|r| r.0 == key && r.1 >= a && r.1 < b)
            .map(|r| r.2)
            .sum()
    };
    let by_key = |q: &str, t: i64| -> BTreeMap<String, f64> {
        prom.query_at(q, t)
            .into_iter()
            .map(|(l, v)| (l.get("api_key_id").cloned().unwrap_or_default(), v))
            .collect()
    };
    let invoice = |instance: &str| {
        let x = format!("llm_tokens_total{{instance=\"{instance}\"}}");
        format!("sum by (api_key_id) ({x} - {x} offset 1d or {x})")
    };
    let mut sparse_wrong = 0;
    for d in 0..days {
        let (a, b) = (start + d * DAY, start + (d + 1) * DAY);
        // A key without tokens that day may have a 0 or no series yet: both read as 0.
        let nonzero = |m: BTreeMap<String, f64>| -> BTreeMap<String, f64> {
            m.into_iter().filter(|(_, v)| *v != 0.0).collect()
        };
        let want: BTreeMap<String, f64> = nonzero(
            keys.iter()
                .map(|k| (k.to_string(), tokens(k, a, b) as f64))
                .collect(),
        );
        // Exact, every key.
        let got = nonzero(by_key(&invoice("dense"), b));
        assert_eq!(got, want, "day {d}: dense `x - x offset 1d or x`");
        let sparse = by_key(&invoice("sparse"), b);
        sparse_wrong += want
            .iter()
            .filter(|(k, v)| sparse.get(*k) != Some(*v))
            .count();

        // increase(): within one step's worth at each end, at the day boundary and half a
        // step after it (where both ends are extrapolated).
        for t in [b, b + 1800] {
            let got = by_key(
                "sum by (api_key_id) (increase(llm_tokens_total{instance=\"dense\"}[1d]))",
                t,
            );
            for k in &keys {
                let exact = tokens(k, t - DAY, t) as f64;
                // The largest one-step (1 h) amount of the key around the window, with
                // Prometheus' 10 % extrapolation threshold.
                let step_worth = (-1..=24)
                    .map(|h| tokens(k, a + h * 3600, a + (h + 1) * 3600))
                    .max()
                    .unwrap_or(0) as f64
                    * 1.1;
                let g = got.get(*k).copied().unwrap_or(0.0);
                assert!(
                    (g - exact).abs() <= 2.0 * step_worth,
                    "{k} day {d} at {t}: increase {g}, exact {exact}, one step's worth {step_worth}"
                );
                if t == b {
                    // Samples at both ends of the day: nothing to extrapolate.
                    assert!((g - exact).abs() < 1e-6, "{k} day {d}: {g} vs {exact}");
                }
            }
        }
    }
    assert!(
        sparse_wrong > 0,
        "the sparse output was expected to miss some daily sums"
    );

    // The day the backfill ends in: its series stop before the next midnight, so the plain
    // invoice query misses that day's part; with last_over_time it is exact (docs/backfill.md).
    let x = "llm_tokens_total{instance=\"cut\"}";
    let robust = format!(
        "sum by (api_key_id) (last_over_time({x}[1d]) - {x} offset 1d or last_over_time({x}[1d]))"
    );
    for d in 0..days {
        let (a, b) = (start + d * DAY, start + (d + 1) * DAY);
        let want: BTreeMap<String, f64> = keys
            .iter()
            .map(|k| (k.to_string(), tokens(k, a, b.min(cut)) as f64))
            .filter(|(_, v)| *v != 0.0)
            .collect();
        let got: BTreeMap<String, f64> = by_key(&robust, b)
            .into_iter()
            .filter(|(_, v)| *v != 0.0)
            .collect();
        assert_eq!(got, want, "day {d}: backfill cut at {cut_arg}");
    }
}
