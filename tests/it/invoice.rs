//! The invoice rules (config/prometheus/tokenmeter-rules.yaml, group tokenmeter-invoice) run by
//! a real rule evaluator over the agent's own data: `tokenmeter replay --push --dense` writes a
//! night across a month boundary (with a key changing team) into VictoriaMetrics, vmalert
//! evaluates the shipped rules over it (its replay mode, hour by hour), and each month's
//! invoice read back from the rule series, and from the invoice dashboard's table, equals what
//! the test wrote: tokens exactly (every type), cost to 10^-9. Expected values are summed here
//! from the lines the test wrote. A second test has vmalert evaluate the rules over what the
//! daemon itself pushed live, against `replay --summary json` of the same file.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

/// 2026-10-31T20:00:00Z and the month boundary 2026-11-01T00:00:00Z (`date -u -d ... +%s`).
const START: i64 = 1_793_476_800;
const BOUNDARY: i64 = 1_793_491_200;
/// k-1 moves from team "before" to team "after" at 22:30 on the 31st.
const CHANGE: i64 = START + 2 * 3600 + 1800;

/// (team, model, api_key_id) → (total tokens, cost in units of 10^-12), per month.
type Invoice = BTreeMap<(String, String, String), (u64, u128)>;

#[test]
fn the_invoice_rules_evaluated_by_vmalert_give_each_months_tokens_and_cost_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let vm = Victoria::start();
    let owners = tmp.path().join("owners.toml");
    std::fs::write(
        &owners,
        crate::common::owners_k1_moving_at("2026-10-31T22:30:00Z"),
    )
    .unwrap();
    let cfg = tmp.path().join("invoice.toml");
    std::fs::write(
        &cfg,
        format!(
            "[otlp]\nendpoint = \"{}\"\n[owners]\nfile = \"{}\"\n[pricing]\ncurrency = \"USD\"\n\
             [[pricing.prices]]\nmodel = \"*\"\nper_million = {{ input = 0.5, output = 1.5 }}\n",
            vm.otlp_endpoint(),
            owners.display()
        ),
    )
    .unwrap();
    // A record every 150 s from 20:02:30 to 03:57:30, and one at the boundary instant itself
    // (it belongs to November, as every record at or after 00:00:00).
    let mut text = String::new();
    let (mut october, mut november) = (Invoice::new(), Invoice::new());
    // (team, model, api_key_id, type) → tokens of each type but total, per month.
    let (mut october_types, mut november_types) = (Tokens::new(), Tokens::new());
    let mut times: Vec<i64> = (1..=190).map(|i| START + i * 150).collect();
    times.push(BOUNDARY);
    for (i, t) in times.iter().enumerate() {
        let i = i as u64;
        let key = format!("k-{}", i % 3);
        let model = format!("m{}", i % 2);
        let (input, output) = (i % 97 + 1, i % 13);
        let team = match key.as_str() {
            "k-1" if *t < CHANGE => "before",
            "k-1" => "after",
            _ => "rest",
        };
        // 0.5 and 1.5 per million tokens: 500,000 and 1,500,000 units per token.
        let cost = u128::from(input) * 500_000 + u128::from(output) * 1_500_000;
        let month = if *t < BOUNDARY {
            &mut october
        } else {
            &mut november
        };
        let e = month
            .entry((team.to_string(), model.clone(), key.clone()))
            .or_default();
        e.0 += input + output;
        e.1 += cost;
        let types = if *t < BOUNDARY {
            &mut october_types
        } else {
            &mut november_types
        };
        for (ty, n) in [("input", input), ("output", output)] {
            if n > 0 {
                *types
                    .entry((team.to_string(), model.clone(), key.clone(), ty.to_string()))
                    .or_default() += n;
            }
        }
        text.push_str(&format!(
            "{} stdout F {{\"model\":\"{model}\",\"api_key_id\":\"{key}\",\"aim_service_id\":\"s\",\"llm_input_token\":{input},\"llm_output_token\":{output},\"response_code\":200}}\n",
            iso(*t).replace(".000Z", ".000000000Z")
        ));
    }
    let log = tmp.path().join("night.log");
    std::fs::write(&log, text).unwrap();
    replay_json([
        "--config".as_ref(),
        cfg.as_os_str(),
        "--push".as_ref(),
        "--dense".as_ref(),
        "--instance".as_ref(),
        "invoice".as_ref(),
        log.as_os_str(),
    ] as [&std::ffi::OsStr; 7]);

    // What was pushed is searchable once flushed: then the rule evaluator may read it.
    let _ = get(&vm.addr, "/internal/force_flush");
    wait_until("the pushed counters", Duration::from_secs(30), || {
        let n = vm.query_at("count(llm_tokens_total{pod=\"\"})", BOUNDARY);
        (n.first().map(|x| x.1) == Some(8.0)).then_some(())
    });
    // vmalert evaluates the shipped rules over the night, group by group at its interval (the
    // invoice group on the hour), writing the rule series back into VictoriaMetrics.
    let rules = root().join("config/prometheus/tokenmeter-rules.yaml");
    let status = Command::new(backends_root().join("vmalert"))
        .arg(format!("-rule={}", rules.display()))
        .arg(format!("-datasource.url=http://{}", vm.addr))
        .arg(format!("-remoteWrite.url=http://{}", vm.addr))
        .arg(format!(
            "-replay.timeFrom={}",
            iso(START).replace(".000Z", "Z")
        ))
        .arg(format!(
            "-replay.timeTo={}",
            iso(START + 10 * 3600).replace(".000Z", "Z")
        ))
        .arg("-replay.rulesDelay=0s")
        .arg("-loggerLevel=ERROR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("vmalert runs");
    let vmalert_log = String::from_utf8_lossy(&status.stderr).into_owned();
    assert!(
        status.status.success(),
        "vmalert replay failed: {vmalert_log}"
    );

    // A month is the sum of the hourly samples of the hours ending in it: October's end at
    // 21:00 … 00:00 (a range of 3h30m ending at 00:00), November's at 01:00 … 06:00.
    let read = |t: i64, range: &str| -> Invoice {
        let mut got = Invoice::new();
        let tokens = vm.query_at(
            &format!("sum by (team, model, api_key_id) (sum_over_time(team_model_api_key_id:llm_tokens:delta1h{{type=\"total\"}}[{range}]))"),
            t,
        );
        for (l, v) in tokens {
            let key = (
                l["team"].clone(),
                l["model"].clone(),
                l["api_key_id"].clone(),
            );
            got.entry(key).or_default().0 = v as u64;
        }
        let cost = vm.query_at(
            &format!("sum by (team, model, api_key_id) (sum_over_time(team_model_api_key_id:llm_cost:delta1h{{currency=\"USD\"}}[{range}]))"),
            t,
        );
        for (l, v) in cost {
            let key = (
                l["team"].clone(),
                l["model"].clone(),
                l["api_key_id"].clone(),
            );
            // To 10^-9 of the currency: the double sum, rounded to whole 10^-9.
            got.entry(key).or_default().1 = (v * 1e9).round() as u128 * 1000;
        }
        got.retain(|_, v| v.0 > 0 || v.1 > 0);
        got
    };
    let to_nano = |i: &Invoice| -> Invoice {
        i.iter()
            .map(|(k, v)| (k.clone(), (v.0, (v.1 + 500) / 1000 * 1000)))
            .collect()
    };
    let want = (to_nano(&october), to_nano(&november));
    let started = std::time::Instant::now();
    loop {
        let _ = get(&vm.addr, "/internal/force_flush");
        let got = (read(BOUNDARY, "3h30m"), read(BOUNDARY + 6 * 3600, "5h30m"));
        if got == want {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the invoices read from the rule series\n got {got:?}\nwant {want:?}\nrule series: {:?}\ncounters: {:?}\nvmalert: {vmalert_log}",
            vm.query_at("count by (__name__) ({__name__=~\"team.*\"})", BOUNDARY),
            vm.query_at("count by (__name__) ({__name__=~\"llm_.*\"})", BOUNDARY),
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Every other token type the rule records (here input and output), per month.
    for (want, t, range) in [
        (&october_types, BOUNDARY, "3h30m"),
        (&november_types, BOUNDARY + 6 * 3600, "5h30m"),
    ] {
        let got: Tokens = vm
            .query_at(
                &format!("sum by (team, model, api_key_id, type) (sum_over_time(team_model_api_key_id:llm_tokens:delta1h{{type!=\"total\"}}[{range}])) > 0"),
                t,
            )
            .into_iter()
            .map(|(l, v)| {
                let k = |n: &str| l[n].clone();
                ((k("team"), k("model"), k("api_key_id"), k("type")), v as u64)
            })
            .collect();
        assert_eq!(&got, want, "the tokens by type of the month ending at {t}");
    }
    // The invoice dashboard's table (dashboards/invoice.json) over the same data, with the
    // dashboard's time range set to each month's part of the night, as Grafana would query it
    // (instant queries at the range's end): its token and cost columns per team × model.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/invoice.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let panel = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["title"] == "Invoice: team × model (selected month)")
        .expect("the invoice table");
    let expr = |i: usize, range: &str| {
        panel["targets"][i]["expr"]
            .as_str()
            .unwrap()
            .replace("$__range", range)
            .replace("$team", ".*")
            .replace("$model", ".*")
    };
    let by_team_model = |i: &Invoice| -> BTreeMap<(String, String), (u64, u128)> {
        let mut out: BTreeMap<(String, String), (u64, u128)> = BTreeMap::new();
        for ((team, model, _), (t, c)) in i {
            let e = out.entry((team.clone(), model.clone())).or_default();
            e.0 += t;
            e.1 += c;
        }
        out.into_iter()
            .map(|(k, (t, c))| (k, (t, (c + 500) / 1000 * 1000)))
            .collect()
    };
    for (month, end, range) in [
        (&october, BOUNDARY, "4h"),
        (&november, BOUNDARY + 6 * 3600, "6h"),
    ] {
        let mut table: BTreeMap<(String, String), (u64, u128)> = BTreeMap::new();
        for (l, v) in vm.query_at(&expr(2, range), end) {
            assert_eq!(l.get("currency").map(String::as_str), Some("USD"), "{l:?}");
            table
                .entry((l["team"].clone(), l["model"].clone()))
                .or_default()
                .0 = v as u64;
        }
        for (l, v) in vm.query_at(&expr(3, range), end) {
            table
                .entry((l["team"].clone(), l["model"].clone()))
                .or_default()
                .1 = (v * 1e9).round() as u128 * 1000;
        }
        table.retain(|_, v| v.0 > 0 || v.1 > 0);
        assert_eq!(
            table,
            by_team_model(month),
            "the invoice table ending at {end}"
        );
    }
    // k-1 is on both teams' October invoices, only on "after"'s in November.
    assert!(october.keys().any(|k| k.0 == "before") && october.keys().any(|k| k.0 == "after"));
    assert!(!november.keys().any(|k| k.0 == "before"));
}

/// (team, model, api_key_id, type) → tokens.
type Tokens = BTreeMap<(String, String, String, String), u64>;
/// (team, model, api_key_id) → cost in the currency.
type Costs = BTreeMap<(String, String, String), f64>;

/// The token types of a summary series, as the invoice rule's `type` label names them.
const TYPES: [(&str, &str); 5] = [
    ("total", "total_tokens"),
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("cached_input", "cached_input_tokens"),
    ("reasoning", "reasoning_tokens"),
];

/// The shipped rule file's `tokenmeter-invoice` group alone, cut verbatim from
/// config/prometheus/tokenmeter-rules.yaml at run time (so it is always the shipped rules).
fn shipped_invoice_group(dir: &std::path::Path) -> std::path::PathBuf {
    let text =
        std::fs::read_to_string(root().join("config/prometheus/tokenmeter-rules.yaml")).unwrap();
    let start = text
        .find("  - name: tokenmeter-invoice\n")
        .expect("the invoice group");
    let end = text[start + 1..]
        .find("\n  - name: ")
        .map_or(text.len(), |e| start + 1 + e + 1);
    let path = dir.join("tokenmeter-invoice.yaml");
    std::fs::write(&path, format!("groups:\n{}", &text[start..end])).unwrap();
    path
}

/// The daemon pushes OTLP to VictoriaMetrics at wall time (`otlp.interval` 1 s) while the test
/// writes access-log lines (four keys of two teams, three models, cached-input and reasoning
/// tokens besides input and output) into the file it tails; once VictoriaMetrics holds its
/// final counters, vmalert evaluates the shipped invoice rules over whole hours covering every
/// push, and what the rule series say, summed over those hours per team × model × key × type
/// (and cost per team × model × key), equals `tokenmeter replay --summary json` of the same
/// file with the same config: tokens exactly, cost within 10^-9.
///
/// vmalert cannot wait for the hour to end in a test, so it runs in its replay mode: from the
/// hour before the daemon started to the hour after the one that holds the last push
/// (`-replay.timeTo` may lie in the future: vmalert does not refuse it, VictoriaMetrics answers
/// queries at future times from the samples it has, and it keeps the rule samples written at
/// those times, which are within its `-futureRetention` of 2 days). Every push then falls in an
/// evaluated hour, and no push is made after the evaluation.
///
/// Two limits of replay mode shape the month-to-date check. vmalert replays a rule as one
/// range query over the whole window, so a rule that reads its own earlier samples
/// (`team:llm_*:month_to_date` reads `last_over_time(team:llm_*:month_to_date[1d])`) sees none
/// of them: in replay its value is the hour's delta alone. And a rule that reads another rule
/// of its group sees it only once written and searchable, hence `-replay.rulesDelay=3s`
/// (vmalert's documented mechanism for chained rules, with `-remoteWrite.flushInterval=100ms`),
/// and the invoice group alone in the rule file (a 3 s delay after each of the file's 48 rules
/// would cost minutes). So the month to date is checked to equal each team's total when every
/// push fell in one evaluated hour (a test run that crosses a whole hour, 1 to 2 % of runs,
/// says so and skips that one check: a chain over several hours is `promtool`'s to test,
/// tests/it/invoice_month.rs). One hour lies in one calendar month, so the check holds on any
/// date, across a month boundary included.
#[test]
fn vmalert_over_the_daemons_live_otlp_push_gives_the_invoice_of_the_replay_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let root_dir = tmp.path().join("pods");
    let log = pod_dir(&root_dir, "gw-invoice").join("0.log");
    let vm = Victoria::start();
    let owners = tmp.path().join("owners.toml");
    std::fs::write(
        &owners,
        "[[owners]]\napi_key_id = \"key-0\"\nteam = \"alpha\"\n\
         [[owners]]\napi_key_id = \"key-1\"\nteam = \"alpha\"\n\
         [[owners]]\napi_key_id = \"key-*\"\nteam = \"beta\"\n",
    )
    .unwrap();
    let sections = format!(
        "[otlp]\nendpoint = \"{}\"\ninterval = \"1s\"\n[owners]\nfile = \"{}\"\n\
         [pricing]\ncurrency = \"USD\"\n[[pricing.prices]]\nmodel = \"*\"\n\
         per_million = {{ input = 0.5, output = 1.5, cached_input = 0.25 }}\n",
        vm.otlp_endpoint(),
        owners.display()
    );
    let cfg_text = config(
        &root_dir,
        &tmp.path().join("state"),
        "node_name = \"node-invoice\"",
        &sections,
    );
    // Every push is at or after this instant.
    let first_push = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut d = Daemon::start(tmp.path(), "invoice", &cfg_text);

    // The shared workload (3 models, 4 keys, input and output) in two batches, each followed
    // by lines with cached-input and reasoning tokens, stamped relative to the test's start.
    let mut expected = Expected::default();
    let extra = |i: u64| {
        let key = format!("key-{}", i % 4);
        let model = ["gpt-4o-mini", "claude-sonnet-4-5"][(i % 2) as usize];
        let (inp, out) = (i % 89 + 20, i % 11 + 2);
        format!(
            r#"{{"start_time":"{}","model":"{model}","api_key_id":"{key}","aim_service_id":"svc-0","llm_input_token":{inp},"llm_output_token":{out},"llm_total_token":{},"llm_cached_input_token":{},"llm_reasoning_token":{},"response_code":200,"duration":7}}"#,
            iso(test_start() + i as i64),
            inp + out,
            i % 19,
            i % 2
        )
    };
    for batch in 0..2u64 {
        let mut text = String::new();
        for i in batch * 300..(batch + 1) * 300 {
            text.push_str(&record_line_at(i, test_start() + i as i64, &mut expected));
            text.push('\n');
        }
        for i in batch * 40..(batch + 1) * 40 {
            text.push_str(&extra(i));
            text.push('\n');
        }
        append(&log, &text);
        let size = std::fs::metadata(&log).unwrap().len();
        cond_wait(
            &d,
            "the daemon to read the new lines",
            Duration::from_secs(60),
            || (cond_offset_of(&d, &log)? >= size).then_some(()),
        );
    }

    // What `replay` makes of the same file with the same config.
    let cfg = tmp.path().join("invoice.toml");
    let summary = replay_json(
        ["--config".as_ref(), cfg.as_os_str(), log.as_os_str()] as [&std::ffi::OsStr; 3]
    );
    assert_eq!(summary["currency"], "USD");
    let (mut want_tokens, mut want_cost) = (Tokens::new(), Costs::new());
    for s in summary["series"].as_array().unwrap() {
        let k = |f: &str| s[f].as_str().unwrap().to_string();
        for (ty, field) in TYPES {
            let n = s[field].as_u64().unwrap_or(0);
            if n > 0 {
                *want_tokens
                    .entry((k("team"), k("model"), k("api_key_id"), ty.to_string()))
                    .or_default() += n;
            }
        }
        *want_cost
            .entry((k("team"), k("model"), k("api_key_id")))
            .or_default() += s["cost"].as_f64().unwrap();
    }
    let total = series_sum(&summary, "total_tokens");
    assert_eq!(
        total,
        expected.total() + { (0..80).map(|i| i % 89 + 20 + i % 11 + 2).sum::<u64>() }
    );
    for ty in ["cached_input", "reasoning"] {
        assert!(want_tokens.keys().any(|k| k.3 == ty), "no {ty} tokens");
    }
    assert!(
        want_tokens.keys().any(|k| k.0 == "alpha") && want_tokens.keys().any(|k| k.0 == "beta")
    );

    // VictoriaMetrics holds the daemon's final counters; then the daemon stops, so no push
    // comes after the evaluation.
    let total_cost: f64 = want_cost.values().sum();
    wait_until(
        "VictoriaMetrics to hold the final counters",
        Duration::from_secs(60),
        || {
            let tokens = vm.query("sum(llm_tokens_total{pod=\"\"})");
            let cost = vm.query("sum(llm_cost_total{pod=\"\"})");
            let reasoning = vm.query("sum(llm_reasoning_tokens_total{pod=\"\"})");
            (tokens.first().map(|x| x.1) == Some(total as f64)
                && cost
                    .first()
                    .is_some_and(|x| (x.1 - total_cost).abs() < 1e-9)
                && reasoning.first().map(|x| x.1)
                    == Some(
                        want_tokens
                            .iter()
                            .filter(|(k, _)| k.3 == "reasoning")
                            .map(|(_, v)| *v)
                            .sum::<u64>() as f64,
                    ))
            .then_some(())
        },
    );
    assert_eq!(d.terminate(), Some(0), "{}", d.log_text());
    let last_push = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;

    // Whole hours: the evaluations at `from` … `to` cover (from - 1h, to], every push inside.
    let from = first_push.div_euclid(3600) * 3600 - 3600;
    let last_hour = last_push.div_euclid(3600) * 3600 + 3600;
    let to = last_hour + 3600;
    let rules = shipped_invoice_group(tmp.path());
    let ran = Command::new(backends_root().join("vmalert"))
        .arg(format!("-rule={}", rules.display()))
        .arg(format!("-datasource.url=http://{}", vm.addr))
        .arg(format!("-remoteWrite.url=http://{}", vm.addr))
        .arg("-remoteWrite.flushInterval=100ms")
        .arg(format!(
            "-replay.timeFrom={}",
            iso(from).replace(".000Z", "Z")
        ))
        .arg(format!("-replay.timeTo={}", iso(to).replace(".000Z", "Z")))
        .arg("-replay.rulesDelay=3s")
        .arg("-replay.disableProgressBar")
        .arg("-loggerLevel=ERROR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("vmalert runs");
    let vmalert_log = String::from_utf8_lossy(&ran.stderr).into_owned();
    assert!(ran.status.success(), "vmalert replay failed: {vmalert_log}");

    // The hourly samples summed over the window, per team × model × key × type, and cost.
    let range = format!("{}s", to - from);
    let read = || -> (Tokens, Costs) {
        let mut tokens = Tokens::new();
        for (l, v) in vm.query_at(
            &format!("sum by (team, model, api_key_id, type) (sum_over_time(team_model_api_key_id:llm_tokens:delta1h[{range}]))"),
            to,
        ) {
            if v != 0.0 {
                tokens.insert(
                    (l["team"].clone(), l["model"].clone(), l["api_key_id"].clone(), l["type"].clone()),
                    v as u64,
                );
            }
        }
        let mut cost = Costs::new();
        for (l, v) in vm.query_at(
            &format!("sum by (team, model, api_key_id, currency) (sum_over_time(team_model_api_key_id:llm_cost:delta1h[{range}]))"),
            to,
        ) {
            assert_eq!(l.get("currency").map(String::as_str), Some("USD"), "{l:?}");
            cost.insert((l["team"].clone(), l["model"].clone(), l["api_key_id"].clone()), v);
        }
        (tokens, cost)
    };
    let cost_matches = |got: &Costs| {
        got.len() == want_cost.len()
            && want_cost
                .iter()
                .all(|(k, w)| got.get(k).is_some_and(|g| (g - w).abs() < 1e-9))
    };
    let started = std::time::Instant::now();
    loop {
        let (tokens, cost) = read();
        if tokens == want_tokens && cost_matches(&cost) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the invoice read from the rule series over {} … {}\n got {tokens:?}\n{cost:?}\nwant {want_tokens:?}\n{want_cost:?}\nrule samples: {:?}\nvmalert: {vmalert_log}",
            iso(from),
            iso(to),
            vm.query_at(&format!("count_over_time(team_model_api_key_id:llm_tokens:delta1h{{type=\"total\"}}[{range}])"), to),
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Each team's month to date at the last hour with pushes, when they all fell in it.
    if first_push.div_euclid(3600) != last_push.div_euclid(3600) {
        eprintln!(
            "the pushes span the hours ending {} and {}: vmalert's replay cannot chain the month to \
             date over several hours (see the doc comment); that check is skipped this run",
            iso(first_push.div_euclid(3600) * 3600 + 3600),
            iso(last_hour)
        );
        return;
    }
    let mut team_tokens: BTreeMap<String, u64> = BTreeMap::new();
    let mut team_cost: BTreeMap<String, f64> = BTreeMap::new();
    for (k, v) in &want_tokens {
        if k.3 == "total" {
            *team_tokens.entry(k.0.clone()).or_default() += v;
        }
    }
    for (k, v) in &want_cost {
        *team_cost.entry(k.0.clone()).or_default() += v;
    }
    let mtd_tokens: BTreeMap<String, u64> = vm
        .query_at("team:llm_tokens:month_to_date", last_hour)
        .into_iter()
        .map(|(l, v)| (l["team"].clone(), v as u64))
        .collect();
    assert_eq!(
        mtd_tokens,
        team_tokens,
        "team:llm_tokens:month_to_date at {}",
        iso(last_hour)
    );
    let mtd_cost = vm.query_at("team:llm_cost:month_to_date{currency=\"USD\"}", last_hour);
    assert_eq!(mtd_cost.len(), team_cost.len(), "{mtd_cost:?}");
    for (l, v) in mtd_cost {
        assert!(
            (v - team_cost[&l["team"]]).abs() < 1e-9,
            "{l:?} {v} vs {team_cost:?}"
        );
    }
}
