//! Spend metering end to end (SPEC §10): the real daemon tailing real files with a price table,
//! scraped over HTTP and pushing OTLP into a real VictoriaMetrics, killed with SIGKILL, and
//! compared with `replay`. Every expected cost is computed here in integer units of 10^-12
//! currency from the lines the test wrote and the rates it configured, never by the code under
//! test.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::common::*;

const WAIT: Duration = Duration::from_secs(30);

/// The prices of these tests, as TOML and as integer rates (units per token):
/// - `gpt-4o-mini*`: input 0.15, output 0.60, cached_input 0.075 (cached is part of input);
/// - `claude*`: input 3, output 15 until 2026-11-26T12:00:00Z, then input 4, output 20;
/// - `meta-llama/*`: input 0.2 only (output unpriced: such records are also "unpriced");
/// - anything else: no price (unpriced).
const PRICES: &str = r#"
[fields.extra_tokens]
cached_input = "llm_cached_input_token"
[pricing]
currency = "EUR"
[[pricing.prices]]
model = "gpt-4o-mini*"
per_million = { input = 0.15, output = 0.60, cached_input = 0.075 }
[[pricing.prices]]
model = "claude*"
per_million = { input = 3, output = 15 }
[[pricing.prices]]
model = "claude*"
from = "2026-11-26T12:00:00Z"
per_million = { input = 4, output = 20 }
[[pricing.prices]]
model = "meta-llama/*"
per_million = { input = 0.2 }
[[budgets]]
api_key_id = "*"
window = "30d"
tokens = 500000000
cost = 1200.5
[[budgets]]
api_key_id = "key-1"
window = "1d"
tokens = 1000
"#;

/// One test record: its CRI line and its expected cost / unpriced / unmetered flags.
struct Line {
    text: String,
    key: (String, String, String),
    cost: u128,
    unpriced: bool,
    unmetered: bool,
}

/// Record `i`: models rotate over four (one unpriced), event times alternate between 10:00
/// and 13:00 (either side of the claude price change), every 7th record has null tokens.
fn line(i: u64) -> Line {
    let model = [
        "gpt-4o-mini",
        "claude-sonnet-4-5",
        "meta-llama/Llama-3.1-8B-Instruct",
        "mistral-large",
    ][(i % 4) as usize];
    let key = format!("key-{}", i % 3);
    let svc = format!("svc-{}", i % 2);
    let hour = if (i / 4).is_multiple_of(2) { 10 } else { 13 };
    let (inp, out) = (i % 89 + 10, i % 17);
    let cached = inp / 3;
    let null = i % 7 == 6;
    let content = if null {
        format!(
            r#"{{"model":"{model}","api_key_id":"{key}","aim_service_id":"{svc}","llm_input_token":null,"llm_output_token":null,"llm_total_token":null,"response_code":200}}"#
        )
    } else {
        format!(
            r#"{{"model":"{model}","api_key_id":"{key}","aim_service_id":"{svc}","llm_input_token":{inp},"llm_output_token":{out},"llm_total_token":{},"llm_cached_input_token":{cached},"response_code":200}}"#,
            inp + out
        )
    };
    let text = format!("2026-11-26T{hour}:00:00.000000000Z stdout F {content}\n");
    let (inp, out, cached) = if null {
        (0, 0, 0)
    } else {
        (u128::from(inp), u128::from(out), u128::from(cached))
    };
    // Rates in units of 10^-12 per token: a rate r per million tokens is r × 10^6 units.
    let (cost, unpriced) = match i % 4 {
        0 => (
            (inp - cached) * 150_000 + cached * 75_000 + out * 600_000,
            false,
        ),
        1 if hour < 12 => (inp * 3_000_000 + out * 15_000_000, false),
        1 => (inp * 4_000_000 + out * 20_000_000, false),
        // Input priced, output not: charged for input, and unpriced when it has output.
        2 => (inp * 200_000, out > 0),
        _ => (0, !null),
    };
    Line {
        text,
        key: (model.to_string(), key, svc),
        cost,
        unpriced,
        unmetered: null,
    }
}

#[derive(Default, Clone, Debug, PartialEq)]
struct Spend {
    cost: BTreeMap<(String, String, String), u128>,
    /// (model, service_id) → (unpriced, unmetered)
    flags: BTreeMap<(String, String), (u64, u64)>,
}

fn write_lines(path: &Path, range: std::ops::Range<u64>, spend: &mut Spend) {
    let mut text = String::new();
    for i in range {
        let l = line(i);
        text.push_str(&l.text);
        *spend.cost.entry(l.key.clone()).or_default() += l.cost;
        let f = spend.flags.entry((l.key.0, l.key.2)).or_default();
        f.0 += u64::from(l.unpriced);
        f.1 += u64::from(l.unmetered);
    }
    append(path, &text);
}

/// A cost read back as a double (`/metrics`, VictoriaMetrics), in units: exact for the sizes
/// of these tests (well below 2^53 units).
fn to_units(v: f64) -> u128 {
    (v * 1e12).round() as u128
}

/// The cost series of a scrape, in units, and the unpriced/unmetered counters.
fn scraped(m: &Metrics) -> Spend {
    let mut s = Spend::default();
    for (name, l, v) in &m.samples {
        let g = |k: &str| l.get(k).cloned().unwrap_or_default();
        match name.as_str() {
            "llm_cost_total" => {
                assert_eq!(g("currency"), "EUR");
                s.cost
                    .insert((g("model"), g("api_key_id"), g("service_id")), to_units(*v));
            }
            "llm_unpriced_requests_total" => {
                s.flags.entry((g("model"), g("service_id"))).or_default().0 = *v as u64
            }
            "llm_unmetered_requests_total" => {
                s.flags.entry((g("model"), g("service_id"))).or_default().1 = *v as u64
            }
            _ => {}
        }
    }
    s
}

/// The expected state as a scrape shows it: every series has a cost (0 included), and only
/// (model, service_id) pairs with a count show up.
fn as_scraped(e: &Spend) -> Spend {
    Spend {
        cost: e.cost.clone(),
        flags: e
            .flags
            .iter()
            .filter(|(_, v)| v.0 > 0 || v.1 > 0)
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
    }
}

fn wait_spend(d: &Daemon, want: &Spend) -> Metrics {
    let want = as_scraped(want);
    let mut last = Spend::default();
    let start = std::time::Instant::now();
    while start.elapsed() < WAIT {
        if let Some(m) = d.metrics() {
            last = scraped(&m);
            if last == want {
                return m;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "/metrics never showed the expected spend\nwant {want:?}\ngot  {last:?}\nlog:\n{}",
        d.log_text()
    );
}

fn format_units(u: u128) -> String {
    let (int, frac) = (u / 1_000_000_000_000, u % 1_000_000_000_000);
    if frac == 0 {
        return int.to_string();
    }
    let f = format!("{frac:012}");
    format!("{int}.{}", f.trim_end_matches('0'))
}

#[test]
fn cost_is_exact_across_kill9_over_metrics_otlp_and_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let log = pod_dir(&root, "gw-spend").join("0.log");
    let vm = Victoria::start();
    let sections = format!(
        "[otlp]\nendpoint = \"{}\"\ninterval = \"1s\"\n{PRICES}",
        vm.otlp_endpoint()
    );
    let cfg = config(
        &root,
        &tmp.path().join("state"),
        "node_name = \"node-s\"",
        &sections,
    );
    let mut d = Daemon::start(tmp.path(), "spend", &cfg);
    let mut want = Spend::default();
    let mut next = 0;
    for round in 0..3 {
        write_lines(&log, next..next + 400, &mut want);
        next += 400;
        // Killed once it has counted some of the new lines, wherever it is.
        let size = std::fs::metadata(&log).unwrap().len();
        cond_wait(&d, "the daemon to read the new lines", WAIT, || {
            (cond_offset_of(&d, &log)? >= size).then_some(())
        });
        write_lines(&log, next..next + 300, &mut want);
        next += 300;
        cond_kill9_reported(&mut d, &format!("spend round {round}"));
        d = Daemon::start(tmp.path(), "spend", &cfg);
    }
    let m = wait_spend(&d, &want);
    // Budgets are gauges, identical on every agent.
    assert_eq!(
        m.sum(
            "llm_budget_tokens",
            &[("api_key_id", "*"), ("window", "30d")]
        ),
        500_000_000.0
    );
    assert_eq!(
        m.sum(
            "llm_budget_tokens",
            &[("api_key_id", "key-1"), ("window", "1d")]
        ),
        1000.0
    );
    assert_eq!(
        m.sum(
            "llm_budget_cost",
            &[("api_key_id", "*"), ("window", "30d"), ("currency", "EUR")]
        ),
        1200.5
    );

    // OTLP: VictoriaMetrics ends up with the same cost per series.
    let want_vm: BTreeMap<_, _> = want.cost.clone();
    wait_until("cost in VictoriaMetrics", WAIT, || {
        let got: BTreeMap<_, _> = vm
            .query("llm_cost_total")
            .into_iter()
            .map(|(l, v)| {
                let g = |k: &str| l.get(k).cloned().unwrap_or_default();
                ((g("model"), g("api_key_id"), g("service_id")), to_units(v))
            })
            .collect();
        (got == want_vm).then_some(())
    });

    // replay prices the same lines at the same event times: exact decimals.
    let (text, v) = summary(
        replay_cmd([&log])
            .arg("--config")
            .arg(tmp.path().join("spend.toml")),
        None,
    );
    assert_eq!(v["currency"], "EUR");
    let total: u128 = want.cost.values().sum();
    // Every `"cost":<number>` as written (series in order, then the total): exact decimals.
    let written: Vec<&str> = text
        .match_indices("\"cost\":")
        .map(|(i, m)| {
            let rest = &text[i + m.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    let mut expected: Vec<String> = v["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            let key = (
                x["model"].as_str().unwrap().to_string(),
                x["api_key_id"].as_str().unwrap().to_string(),
                x["service_id"].as_str().unwrap().to_string(),
            );
            format_units(want.cost[&key])
        })
        .collect();
    expected.push(format_units(total));
    assert_eq!(written, expected);
    let unpriced: u64 = want.flags.values().map(|f| f.0).sum();
    let unmetered: u64 = want.flags.values().map(|f| f.1).sum();
    assert_eq!(v["unpriced_requests"], unpriced);
    assert_eq!(v["unmetered_requests"], unmetered);
}

#[test]
fn a_changed_price_file_prices_only_later_lines_and_a_broken_one_keeps_the_old_prices() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let log = pod_dir(&root, "gw-prices").join("0.log");
    let prices = tmp.path().join("prices.toml");
    let price_file = |input: &str| {
        std::fs::write(
            &prices,
            format!("[[prices]]\nmodel = \"*\"\nper_million = {{ input = {input} }}\n"),
        )
        .unwrap()
    };
    price_file("1");
    let sections = format!(
        "[pricing]\ncurrency = \"USD\"\nfile = \"{}\"\n",
        prices.display()
    );
    let cfg = config(&root, &tmp.path().join("state"), "", &sections);
    let d = Daemon::start(tmp.path(), "reload", &cfg);
    // Each line: 1,000 input tokens of one series.
    let lines = |n: usize| {
        let one = r#"2026-11-26T10:00:00.000000000Z stdout F {"model":"m","api_key_id":"k","aim_service_id":"s","llm_input_token":1000,"llm_output_token":0,"response_code":200}"#;
        format!("{one}\n").repeat(n)
    };
    let cost = |d: &Daemon| d.metrics().map(|m| to_units(m.sum("llm_cost_total", &[])));
    let reloads = |d: &Daemon, outcome: &str| {
        d.metrics()
            .map(|m| m.sum("tokenmeter_pricing_reloads_total", &[("outcome", outcome)]))
    };
    // 5 lines at 1 per million: 5 × 1000 × 10^6 units.
    append(&log, &lines(5));
    cond_wait(&d, "5 lines priced at 1", WAIT, || {
        (cost(&d)? == 5_000_000_000).then_some(())
    });
    price_file("2");
    cond_wait(&d, "the new price file in force", WAIT, || {
        (reloads(&d, "success")? == 1.0).then_some(())
    });
    append(&log, &lines(3));
    // + 3 × 1000 × 2 × 10^6.
    cond_wait(&d, "3 more lines priced at 2", WAIT, || {
        (cost(&d)? == 11_000_000_000).then_some(())
    });
    std::fs::write(
        &prices,
        "[[prices]]\nmodel = \"*\"\nper_million = { input = -1 }\n",
    )
    .unwrap();
    cond_wait(&d, "the broken price file refused", WAIT, || {
        (reloads(&d, "failure")? == 1.0).then_some(())
    });
    append(&log, &lines(2));
    // Still at 2: + 2 × 1000 × 2 × 10^6.
    cond_wait(&d, "2 more lines at the old price", WAIT, || {
        (cost(&d)? == 15_000_000_000).then_some(())
    });
    // An empty file (a ConfigMap key left empty, a file caught half-written) is refused too:
    // it would turn cost off.
    std::fs::write(&prices, "").unwrap();
    cond_wait(&d, "the empty price file refused", WAIT, || {
        (reloads(&d, "failure")? == 2.0).then_some(())
    });
    append(&log, &lines(1));
    cond_wait(&d, "1 more line at the old price", WAIT, || {
        (cost(&d)? == 17_000_000_000).then_some(())
    });
    let log_text = d.log_text();
    assert!(
        log_text.contains("the prices in force stay") && log_text.contains("has no prices"),
        "the refusals are logged: {log_text}"
    );
}

#[test]
fn cost_is_kept_while_pricing_is_off_and_continues_when_prices_come_back() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let log = pod_dir(&root, "gw-off").join("0.log");
    let state = tmp.path().join("state");
    let priced = config(
        &root,
        &state,
        "",
        "[pricing]\ncurrency = \"USD\"\n[[pricing.prices]]\nmodel = \"*\"\nper_million = { input = 1 }\n",
    );
    let unpriced = config(&root, &state, "", "");
    let line = r#"2026-11-26T10:00:00.000000000Z stdout F {"model":"m","api_key_id":"k","aim_service_id":"s","llm_input_token":1000,"llm_output_token":0,"response_code":200}"#;
    let cost = |d: &Daemon| {
        d.metrics()
            .map(|m| to_units(m.sum("llm_cost_total", &[("currency", "USD")])))
    };
    let requests = |d: &Daemon| d.metrics().map(|m| m.sum("llm_requests_total", &[]));
    let mut d = Daemon::start(tmp.path(), "off", &priced);
    append(&log, &format!("{line}\n").repeat(3));
    cond_wait(&d, "3 priced lines", WAIT, || {
        (cost(&d)? == 3_000_000_000).then_some(())
    });
    assert_eq!(d.terminate(), Some(0));
    // Restarted without prices: the cost counted so far stays (and is saved), flat.
    d = Daemon::start(tmp.path(), "off", &unpriced);
    append(&log, &format!("{line}\n").repeat(2));
    cond_wait(&d, "5 lines counted", WAIT, || {
        (requests(&d)? == 5.0).then_some(())
    });
    assert_eq!(cost(&d), Some(3_000_000_000));
    // (A clean stop: after a kill -9 the lines after the last checkpoint would be counted
    // again under the prices then in force, which is right but not what this test is about.)
    assert_eq!(d.terminate(), Some(0));
    // Prices back: it continues from there.
    let d = Daemon::start(tmp.path(), "off", &priced);
    append(&log, &format!("{line}\n").repeat(1));
    cond_wait(&d, "6 lines, 4 of them priced", WAIT, || {
        (requests(&d)? == 6.0 && cost(&d)? == 4_000_000_000).then_some(())
    });
}
