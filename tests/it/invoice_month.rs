//! The invoice rules (config/prometheus/tokenmeter-rules.yaml, group tokenmeter-invoice) run by
//! Prometheus' own rule engine over a whole calendar month of the agent's backfill:
//! `tokenmeter replay --tsdb DIR --dense` writes January 1970 and the first six hours of
//! February as TSDB blocks, the real `promtool tsdb dump` reads them back, and every dumped
//! sample becomes an input series of a generated `promtool test rules` file that loads the
//! shipped rules, evaluated once an hour (`evaluation_interval: 1h`, the invoice group's interval)
//! from 1970-01-01T00:00Z as promtool always starts. January 1970 is promtool's hours 0h … 744h;
//! tokenmeter takes 1970 event times as any other, so the lines are dated there and nothing is
//! shifted.
//!
//! Keys change team on their own `from` instants (mid-month, half an hour before the month ends,
//! exactly at the boundary), one key has no owner (the default team), two models have different
//! prices. Every expected value is worked out here from the lines the test wrote, not from what
//! tokenmeter wrote: January per team (`team:*:month_to_date` at 744h, the evaluation that ends
//! January's last hour) and per team × model × key × type (the 744 hourly `delta1h` samples),
//! February's first hours, the hourly differences around the team changes, and the team budget
//! alerts in the first evaluation after each crossing (and not the one before). Tokens are
//! compared exactly. Cost too, in whole picodollars (10^-12, the unit tokenmeter counts in):
//! promtool compares floats for equality, and a sum of hourly float differences is the exact
//! decimal only to within a few units in the last place, so the assertions read
//! `round(x * 1e12)`; with every team under 1 USD a month the floats' error is below
//! 10^-3 picodollar, so the rounding recovers the exact integer or the rules are wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::process::Command;

use crate::common::*;

const HOUR: i64 = 3600;
/// 1970-02-01T00:00:00Z, promtool's 744h: January's last hour ends here.
const FEB: i64 = 744 * HOUR;
/// The data ends six hours into February (the last record is one second before it).
const END_HOUR: i64 = 750;
/// k-1 moves from team "before" to "after" at 1970-01-15T12:34:56Z (mid-hour: that hour's
/// usage is split between the two teams' series).
const K1_MOVES: i64 = 14 * 86_400 + 12 * HOUR + 34 * 60 + 56;
/// k-3 moves from "ml" to "search" half an hour before the month ends.
const K3_MOVES: i64 = FEB - 30 * 60;

const OWNERS: &str = "\
[[owners]]\napi_key_id = \"k-1\"\nteam = \"before\"\n\
[[owners]]\napi_key_id = \"k-1\"\nteam = \"after\"\nfrom = \"1970-01-15T12:34:56Z\"\n\
[[owners]]\napi_key_id = \"k-2\"\nteam = \"ml\"\n\
[[owners]]\napi_key_id = \"k-2\"\nteam = \"search\"\nfrom = \"1970-02-01T00:00:00Z\"\n\
[[owners]]\napi_key_id = \"k-3\"\nteam = \"ml\"\n\
[[owners]]\napi_key_id = \"k-3\"\nteam = \"search\"\nfrom = \"1970-01-31T23:30:00Z\"\n\
[[owners]]\napi_key_id = \"k-*\"\nteam = \"rest\"\n";

/// m1 costs 2 and 8 USD per million input and output tokens, every other model 0.5 and 1.5.
const PRICING: &str = "[pricing]\ncurrency = \"USD\"\n\
[[pricing.prices]]\nmodel = \"m1\"\nper_million = { input = 2, output = 8 }\n\
[[pricing.prices]]\nmodel = \"*\"\nper_million = { input = 0.5, output = 1.5 }\n";

/// The team the owners file gives `key` at event time `t`, worked out here by hand.
fn team_of(key: &str, t: i64) -> &'static str {
    match key {
        "k-1" if t < K1_MOVES => "before",
        "k-1" => "after",
        "k-2" if t < FEB => "ml",
        "k-2" => "search",
        "k-3" if t < K3_MOVES => "ml",
        "k-3" => "search",
        "k-0" => "rest",
        // x-9 matches no entry: owners.default.
        _ => "unassigned",
    }
}

struct Rec {
    t: i64,
    key: &'static str,
    model: &'static str,
    input: u64,
    output: u64,
}

impl Rec {
    /// Its cost in picodollars (10^-12 USD): per token, the price per million × 10^6.
    fn cost(&self) -> u128 {
        let (i, o) = if self.model == "m1" {
            (2_000_000, 8_000_000)
        } else {
            (500_000, 1_500_000)
        };
        u128::from(self.input) * i + u128::from(self.output) * o
    }

    fn line(&self) -> String {
        format!(
            "{} stdout F {{\"model\":\"{}\",\"api_key_id\":\"{}\",\"aim_service_id\":\"s\",\"llm_input_token\":{},\"llm_output_token\":{},\"response_code\":200}}\n",
            iso(self.t).replace(".000Z", ".000000000Z"),
            self.model,
            self.key,
            self.input,
            self.output
        )
    }
}

/// About 3,000 records, one every 15 minutes at a varying second, over the 750 hours, plus one
/// each side of every team change and of the month boundary, and a last one at 749:59:59.
fn records() -> Vec<Rec> {
    const KEYS: [&str; 5] = ["k-0", "k-1", "k-2", "k-3", "x-9"];
    let mut out: Vec<Rec> = (0..3000u64)
        .map(|i| Rec {
            t: i as i64 * 900 + (i as i64 * 7919) % 900,
            key: KEYS[(i % 5) as usize],
            model: ["m0", "m1"][(i % 2) as usize],
            input: i * 31 % 500 + 1,
            output: i * 17 % 120,
        })
        .collect();
    for (j, (t, key)) in [
        (K1_MOVES - 1, "k-1"),
        (K1_MOVES, "k-1"),
        (K3_MOVES - 1, "k-3"),
        (K3_MOVES, "k-3"),
        (FEB - 1, "k-2"),
        (FEB, "k-2"),
        (END_HOUR * HOUR - 1, "k-0"),
    ]
    .into_iter()
    .enumerate()
    {
        out.push(Rec {
            t,
            key,
            model: ["m0", "m1"][j % 2],
            input: 100 + j as u64,
            output: 7 * j as u64,
        });
    }
    out.sort_by_key(|r| r.t);
    out
}

/// (team, model, api_key_id)
type Series = (String, String, String);

/// What the lines say, hour by hour: `hours[h]` holds, per series, the tokens (input, output,
/// total) and cost of the records in [h − 1h, h) (the hour the evaluation at h closes), and
/// `born` the time of each series' first sample in dense output (the 0 a step before its first
/// value: the start of its first record's step).
struct Model {
    hours: Vec<BTreeMap<Series, ([u64; 3], u128)>>,
    born: BTreeMap<Series, i64>,
}

impl Model {
    fn of(recs: &[Rec], step: i64) -> Model {
        let mut hours = vec![BTreeMap::new(); END_HOUR as usize + 1];
        let mut born = BTreeMap::new();
        for r in recs {
            let s = (
                team_of(r.key, r.t).to_string(),
                r.model.to_string(),
                r.key.to_string(),
            );
            born.entry(s.clone()).or_insert(r.t.div_euclid(step) * step);
            let e: &mut ([u64; 3], u128) = hours[(r.t / HOUR + 1) as usize].entry(s).or_default();
            e.0[0] += r.input;
            e.0[1] += r.output;
            e.0[2] += r.input + r.output;
            e.1 += r.cost();
        }
        Model { hours, born }
    }

    /// The series that exist at the evaluation at hour `h`.
    fn alive(&self, h: i64) -> impl Iterator<Item = &Series> {
        self.born
            .iter()
            .filter(move |(_, b)| **b <= h * HOUR)
            .map(|(s, _)| s)
    }

    /// Per series alive at `h`, the sums over the hours `hours` (tokens by type, cost).
    fn sum(
        &self,
        h: i64,
        hours: std::ops::RangeInclusive<i64>,
    ) -> BTreeMap<Series, ([u64; 3], u128)> {
        let mut out: BTreeMap<Series, ([u64; 3], u128)> = BTreeMap::new();
        for s in self.alive(h) {
            let e = out.entry(s.clone()).or_default();
            for x in hours.clone() {
                if let Some((t, c)) = self.hours[x as usize].get(s) {
                    for (sum, x) in e.0.iter_mut().zip(t) {
                        *sum += x;
                    }
                    e.1 += c;
                }
            }
        }
        out
    }

    /// Month to date per team at the evaluation at hour `h` (1 ≤ h): the hours of h's month up
    /// to h (January: 1h … 744h; February: 745h …), total tokens and cost.
    fn month_to_date(&self, h: i64) -> BTreeMap<String, (u64, u128)> {
        let first = if h <= 744 { 1 } else { 745 };
        let mut out: BTreeMap<String, (u64, u128)> = BTreeMap::new();
        for ((team, _, _), (t, c)) in self.sum(h, first..=h) {
            let e = out.entry(team).or_default();
            e.0 += t[2];
            e.1 += c;
        }
        out
    }
}

/// Go's `%.4g`, which `humanizePercentage` applies to the value × 100 (strconv's 'g' with 4
/// significant digits: trailing zeros dropped, an exponent from 10^4 on or below 10^-4).
fn go_g4(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let s = format!("{:.3e}", v.abs());
    let (mantissa, exp) = s.split_once('e').expect("an exponent");
    let exp: i32 = exp.parse().expect("a number");
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_end_matches('0');
    let (nd, dp) = (digits.len() as i32, exp + 1);
    let sign = if v < 0.0 { "-" } else { "" };
    let mut prec = 4;
    let eprec = if prec > nd && nd >= dp { nd } else { prec };
    if exp < -4 || exp >= eprec {
        prec = prec.min(nd);
        let frac = &digits[1..prec as usize];
        let dot = if frac.is_empty() { "" } else { "." };
        let esign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{}{dot}{frac}e{esign}{:02}", &digits[..1], exp.abs());
    }
    if prec > dp {
        prec = nd;
    }
    let decimals = (prec - dp).max(0) as usize;
    let (int, frac) = if dp <= 0 {
        (
            "0".to_string(),
            format!("{}{digits}", "0".repeat((-dp) as usize)),
        )
    } else if dp >= nd {
        (
            format!("{digits}{}", "0".repeat((dp - nd) as usize)),
            String::new(),
        )
    } else {
        (
            digits[..dp as usize].to_string(),
            digits[dp as usize..].to_string(),
        )
    };
    assert_eq!(frac.len(), decimals, "{v}");
    if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

/// The `summary`, `description` and `runbook_url` of alert `name` in the rules file, as written
/// there (YAML double-quoted strings).
fn annotations(rules: &str, name: &str) -> Vec<(String, String)> {
    let start = rules
        .find(&format!("- alert: {name}\n"))
        .unwrap_or_else(|| panic!("{name} in the rules"));
    let mut out = Vec::new();
    for line in rules[start..].lines().skip(1) {
        let l = line.trim_start();
        if l.starts_with("- alert:") || l.starts_with("- record:") || l.starts_with("- name:") {
            break;
        }
        for key in ["summary", "description", "runbook_url"] {
            if let Some(v) = l.strip_prefix(&format!("{key}: ")) {
                out.push((key.to_string(), v.to_string()));
            }
        }
    }
    assert_eq!(out.len(), 3, "{name}'s annotations: {out:?}");
    out
}

/// One firing alert: its labels (besides alertname) and value.
type Alert = (BTreeMap<&'static str, String>, f64);

#[test]
fn promtools_rule_engine_over_the_agents_backfilled_month_gives_each_teams_invoice_exactly() {
    // At a 10-minute step the rules read dense samples between the hours (the lookback, the
    // subqueries) as they read a live agent's, 4,500 samples a series; at 1 h, the step
    // docs/backfill.md prescribes for chargeback backfills, only the samples on the hour.
    for step in [600, 3600] {
        month_at_step(step);
    }
}

/// The whole check at one `replay --step` (seconds; it divides an hour): the promtool test's
/// series interval is the same step.
fn month_at_step(step: i64) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("owners.toml"), OWNERS).unwrap();
    let cfg = dir.join("tokenmeter.toml");
    std::fs::write(
        &cfg,
        format!(
            "[owners]\nfile = \"{}\"\n{PRICING}",
            dir.join("owners.toml").display()
        ),
    )
    .unwrap();
    let recs = records();
    let log = dir.join("month.log");
    std::fs::write(&log, recs.iter().map(Rec::line).collect::<String>()).unwrap();

    // The backfill, as TSDB blocks (one per day), and promtool's reading of them.
    let blocks = dir.join("blocks");
    let summary = replay_json([
        "--config".as_ref(),
        cfg.as_os_str(),
        "--tsdb".as_ref(),
        blocks.as_os_str(),
        "--dense".as_ref(),
        "--step".as_ref(),
        format!("{step}s").as_ref(),
        "--block".as_ref(),
        "24h".as_ref(),
        "--instance".as_ref(),
        "backfill".as_ref(),
        log.as_os_str(),
    ] as [&std::ffi::OsStr; 12]);
    assert_eq!(summary["records"], recs.len(), "{summary}");
    assert_eq!(summary["late"], 0, "{summary}");
    std::fs::create_dir_all(blocks.join("wal")).unwrap();
    std::fs::create_dir_all(dir.join("sandbox")).unwrap();
    let dumped = run(Command::new(backend("promtool"))
        .args(["tsdb", "dump"])
        .arg(format!(
            "--sandbox-dir-root={}",
            dir.join("sandbox").display()
        ))
        .arg(&blocks))
    .ok();

    // Every dumped series as an input series at the replay's step: index i is time i × step;
    // runs of one value as `vxN`, the time before a series' first sample as `_xN`.
    let mut series: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for line in dumped.stdout.lines() {
        let mut parts = line.rsplitn(3, ' ');
        let (ts, value, labels) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let labels = labels.trim_start_matches('{').trim_end_matches('}');
        let mut name = String::new();
        let mut rest = Vec::new();
        for pair in labels.split(", ") {
            match pair.strip_prefix("__name__=") {
                Some(n) => name = n.trim_matches('"').to_string(),
                None => rest.push(pair),
            }
        }
        let ts: i64 = ts.parse().unwrap();
        assert_eq!(ts % (step * 1000), 0, "a sample off the step: {line}");
        series
            .entry(format!("{name}{{{}}}", rest.join(", ")))
            .or_default()
            .push((ts / (step * 1000), value.parse().unwrap()));
    }
    let n = END_HOUR * HOUR / step; // the last index
    let mut input = String::new();
    for (s, samples) in &series {
        let mut values: Vec<String> = Vec::new();
        let mut next = 0;
        let mut i = 0;
        while i < samples.len() {
            let (at, v) = samples[i];
            assert!(at >= next, "{s}: samples out of order");
            if at > next {
                values.push(format!("_x{}", at - next));
            }
            let mut j = i;
            while j + 1 < samples.len() && samples[j + 1] == (samples[j].0 + 1, v) {
                j += 1;
            }
            let run = j - i;
            values.push(if run == 0 {
                format!("{v}")
            } else {
                format!("{v}x{run}")
            });
            next = samples[j].0 + 1;
            i = j + 1;
        }
        assert_eq!(next, n + 1, "{s}: dense to the end of the replay");
        let _ = writeln!(
            input,
            "      - series: '{s}'\n        values: '{}'",
            values.join(" ")
        );
    }

    let model = Model::of(&recs, step);
    let january = model.month_to_date(744);
    // The precision argument of the module's comment: every team under 1 USD a month.
    assert!(
        january.values().all(|(_, c)| *c < 1_000_000_000_000),
        "{january:?}"
    );
    // Budgets as the agents export them (docs/owners.md "Budgets"), the same on two nodes:
    // team "rest" 3/4 of its January tokens (it crosses 80 % and then 100 % during the month),
    // team "after" 90 % of its January cost, in whole microdollars, and a default far above
    // every team's tokens.
    let rest_budget = january["rest"].0 * 3 / 4;
    let after_budget_pico = january["after"].1 * 9 / 10 / 1_000_000 * 1_000_000;
    let after_budget = format!(
        "{}.{:012}",
        after_budget_pico / 1_000_000_000_000,
        after_budget_pico % 1_000_000_000_000
    );
    let default_budget: u64 = 1_000_000_000_000;
    for node in ["node-a", "node-b"] {
        for (family, labels, v) in [
            (
                "llm_budget_tokens",
                "team=\"rest\"",
                rest_budget.to_string(),
            ),
            (
                "llm_budget_tokens",
                "team=\"*\"",
                default_budget.to_string(),
            ),
            (
                "llm_budget_cost",
                "team=\"after\", currency=\"USD\"",
                after_budget.clone(),
            ),
        ] {
            let _ = writeln!(
                input,
                "      - series: '{family}{{job=\"tokenmeter\", instance=\"{node}\", {labels}, window=\"month\"}}'\n        values: '{v}x{n}'"
            );
        }
    }

    // The expected values.
    let mut exprs = String::new();
    let mut expr = |e: &str, h: i64, samples: Vec<(String, String)>| {
        let _ = writeln!(exprs, "      - expr: '{e}'\n        eval_time: {h}h");
        if samples.is_empty() {
            let _ = writeln!(exprs, "        exp_samples: []");
        } else {
            let _ = writeln!(exprs, "        exp_samples:");
        }
        for (labels, value) in samples {
            let _ = writeln!(
                exprs,
                "          - labels: '{labels}'\n            value: {value}"
            );
        }
    };
    // Month to date per team: all of January at 744h, February's six hours at 750h.
    for h in [744, 750] {
        let mtd = model.month_to_date(h);
        expr(
            "team:llm_tokens:month_to_date",
            h,
            mtd.iter()
                .map(|(team, (t, _))| {
                    (
                        format!("team:llm_tokens:month_to_date{{team=\"{team}\"}}"),
                        t.to_string(),
                    )
                })
                .collect(),
        );
        expr(
            "round(team:llm_cost:month_to_date * 1e12)",
            h,
            mtd.iter()
                .map(|(team, (_, c))| {
                    (
                        format!("{{team=\"{team}\", currency=\"USD\"}}"),
                        c.to_string(),
                    )
                })
                .collect(),
        );
    }
    // January per team × model × key and type: the sum of the 744 hourly samples 1h … 744h (a
    // range of 743h30m ending at 744h holds exactly those, whichever end a backend includes).
    let month = model.sum(744, 1..=744);
    let mut tokens = Vec::new();
    let mut cost = Vec::new();
    for ((team, m, key), (t, c)) in &month {
        let labels = format!("team=\"{team}\", model=\"{m}\", api_key_id=\"{key}\"");
        for (i, ty) in ["input", "output", "total"].iter().enumerate() {
            tokens.push((format!("{{{labels}, type=\"{ty}\"}}"), t[i].to_string()));
        }
        cost.push((format!("{{{labels}, currency=\"USD\"}}"), c.to_string()));
    }
    expr(
        "sum_over_time(team_model_api_key_id:llm_tokens:delta1h[743h30m])",
        744,
        tokens,
    );
    expr(
        "round(sum_over_time(team_model_api_key_id:llm_cost:delta1h[743h30m]) * 1e12)",
        744,
        cost,
    );
    // Single hours around each team change: the hour each change falls in, the hours either
    // side of the boundary (k-3 moved in January's last hour, k-2 at the boundary itself).
    let change_hours: BTreeSet<i64> = [
        K1_MOVES / HOUR,
        K1_MOVES / HOUR + 1,
        K1_MOVES / HOUR + 2,
        743,
        744,
        745,
        746,
    ]
    .into();
    for &h in &change_hours {
        let hour = model.sum(h, h..=h);
        expr(
            "team_model_api_key_id:llm_tokens:delta1h{api_key_id=~\"k-[123]\", type=\"total\"}",
            h,
            hour.iter()
                .filter(|((_, _, k), _)| ["k-1", "k-2", "k-3"].contains(&k.as_str()))
                .map(|((team, m, key), (t, _))| {
                    (
                        format!("team_model_api_key_id:llm_tokens:delta1h{{team=\"{team}\", model=\"{m}\", api_key_id=\"{key}\", type=\"total\"}}"),
                        t[2].to_string(),
                    )
                })
                .collect(),
        );
    }

    // The budget alerts, hour by hour from the model: which fire at each evaluation.
    let firing = |h: i64| -> BTreeMap<&'static str, Vec<Alert>> {
        let mut out: BTreeMap<&'static str, Vec<Alert>> = BTreeMap::new();
        for (team, (t, c)) in model.month_to_date(h) {
            let budget = if team == "rest" {
                rest_budget
            } else {
                default_budget
            };
            let mut ratios = vec![("tokens", t as f64 / budget as f64, None)];
            if team == "after" {
                let c = c as f64 / 1e12 / after_budget.parse::<f64>().unwrap();
                ratios.push(("cost", c, Some("USD")));
            }
            for (kind, r, currency) in ratios {
                let name = match r {
                    r if r >= 1.0 => "TeamOverBudget",
                    r if r >= 0.8 => "TeamNearBudget",
                    _ => continue,
                };
                let mut labels = BTreeMap::from([
                    ("team", team.clone()),
                    ("window", "month".to_string()),
                    ("budget", kind.to_string()),
                ]);
                if let Some(c) = currency {
                    labels.insert("currency", c.to_string());
                }
                out.entry(name).or_default().push((labels, r));
            }
        }
        out
    };
    let names =
        |a: &BTreeMap<&'static str, Vec<Alert>>| -> BTreeSet<(&'static str, String, String)> {
            a.iter()
                .flat_map(|(n, v)| {
                    v.iter()
                        .map(|(l, _)| (*n, l["team"].clone(), l["budget"].clone()))
                })
                .collect()
        };
    // The hours where the set of firing alerts changes, and the hour before each.
    let mut alert_hours: BTreeSet<i64> = [744, 745].into();
    let mut crossings = Vec::new();
    for h in 2..=END_HOUR {
        let (before, now) = (names(&firing(h - 1)), names(&firing(h)));
        if before != now {
            alert_hours.insert(h - 1);
            alert_hours.insert(h);
            for (n, team, budget) in now.difference(&before) {
                crossings.push(format!("{n} {team} {budget} at {h}h"));
            }
        }
    }
    for want in [
        "TeamNearBudget rest tokens",
        "TeamOverBudget rest tokens",
        "TeamNearBudget after cost",
        "TeamOverBudget after cost",
    ] {
        assert!(
            crossings.iter().any(|c| c.starts_with(want)),
            "the month crosses {want}: {crossings:?}"
        );
    }
    let rules_text =
        std::fs::read_to_string(root().join("config/prometheus/tokenmeter-rules.yaml")).unwrap();
    let severity = |n: &str| {
        if n == "TeamOverBudget" {
            "warning"
        } else {
            "info"
        }
    };
    let mut alerts = String::new();
    for &h in &alert_hours {
        let now = firing(h);
        for n in ["TeamNearBudget", "TeamOverBudget"] {
            let _ = writeln!(alerts, "      - eval_time: {h}h\n        alertname: {n}");
            let list = now.get(n).cloned().unwrap_or_default();
            if list.is_empty() {
                let _ = writeln!(alerts, "        exp_alerts: []");
                continue;
            }
            let _ = writeln!(alerts, "        exp_alerts:");
            for (labels, value) in list {
                let l: Vec<String> = labels
                    .iter()
                    .map(|(k, v)| format!("{k}: \"{v}\""))
                    .chain([format!("severity: {}", severity(n))])
                    .collect();
                let _ = writeln!(
                    alerts,
                    "          - exp_labels: {{ {} }}\n            exp_annotations:",
                    l.join(", ")
                );
                for (key, template) in annotations(&rules_text, n) {
                    let text = template
                        .replace("{{ $labels.team }}", &labels["team"])
                        .replace("{{ $labels.window }}", &labels["window"])
                        .replace("{{ $labels.budget }}", &labels["budget"])
                        .replace(
                            "{{ $value | humanizePercentage }}",
                            &format!("{}%", go_g4(value * 100.0)),
                        );
                    assert!(!text.contains("{{"), "a template left in {text}");
                    let _ = writeln!(alerts, "              {key}: {text}");
                }
            }
        }
    }

    std::fs::copy(
        root().join("config/prometheus/tokenmeter-rules.yaml"),
        dir.join("tokenmeter-rules.yaml"),
    )
    .unwrap();
    let test = dir.join("month.test.yaml");
    std::fs::write(
        &test,
        format!(
            "# Generated by tests/it/invoice_month.rs from `replay --tsdb --dense` blocks.\n\
             rule_files:\n  - tokenmeter-rules.yaml\nevaluation_interval: 1h\n\
             tests:\n  - interval: {step}s\n    input_series:\n{input}    promql_expr_test:\n{exprs}    alert_rule_test:\n{alerts}"
        ),
    )
    .unwrap();
    let out = run(Command::new(backend("promtool"))
        .args(["test", "rules"])
        .arg(&test));
    if out.code != Some(0) {
        let kept = tmp.keep();
        panic!(
            "promtool test rules over the month backfilled at --step {step}s failed (files kept in {}):\n{}\n{}",
            kept.display(),
            out.stdout,
            out.stderr
        );
    }
}
