//! The invoice rules (config/prometheus/tokenmeter-rules.yaml, group tokenmeter-invoice) run by
//! a real rule evaluator over the agent's own data: `tokenmeter replay --push --dense` writes a
//! night across a month boundary (with a key changing team) into VictoriaMetrics, vmalert
//! evaluates the shipped rules over it (its replay mode, hour by hour), and each month's
//! invoice read back from the rule series, and from the invoice dashboard's table, equals what
//! the test wrote: tokens exactly, cost to 10^-9. Expected values are summed here from the lines
//! the test wrote.

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
