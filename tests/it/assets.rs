//! The dashboards and rules against real backends: every PromQL expression in
//! `dashboards/*.json` and `config/prometheus/tokenmeter-rules.yaml` runs against a
//! VictoriaMetrics fed by the daemon only by its OTLP push (token counters and self-metrics, as a
//! push-only install has them: no scraper) and against a Prometheus 2.53 loaded with
//! `replay --openmetrics` blocks; each
//! must parse, and return data where that backend holds the metrics it reads. The dashboards'
//! structure is checked too. (`promtool test rules` and the LogQL check run in scripts/test.sh.)

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::loki::LokiReceiver;
use crate::common::*;

fn dashboards() -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root().join("dashboards"))
        .unwrap()
        .flatten()
    {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "json") {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            out.push((p.file_name().unwrap().to_string_lossy().into_owned(), v));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(out.len(), 6, "six dashboards");
    out
}

/// (where, expression) for every PromQL query: panel targets, variable queries, rules.
fn promql() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (file, d) in dashboards() {
        for p in d["panels"].as_array().unwrap() {
            if p["datasource"]["type"] != "prometheus" {
                continue;
            }
            for t in p["targets"].as_array().unwrap() {
                out.push((
                    format!("{file} panel {}", p["id"]),
                    t["expr"].as_str().unwrap().to_string(),
                ));
            }
        }
        for v in d["templating"]["list"].as_array().unwrap() {
            if v["type"] == "query" {
                // label_values(selector, label) → a query over the same selector.
                let def = v["definition"].as_str().unwrap();
                let inner = def
                    .strip_prefix("label_values(")
                    .and_then(|x| x.strip_suffix(')'))
                    .unwrap();
                let (selector, label) = inner.rsplit_once(',').unwrap();
                out.push((
                    format!("{file} variable {}", v["name"]),
                    format!("count by ({}) ({selector})", label.trim()),
                ));
            }
        }
    }
    let rules =
        std::fs::read_to_string(root().join("config/prometheus/tokenmeter-rules.yaml")).unwrap();
    for line in rules.lines() {
        if let Some(expr) = line.trim().strip_prefix("expr: ") {
            out.push(("rules".into(), expr.to_string()));
        }
    }
    out
}

/// Prices and budgets (SPEC §10) for the daemon and the replay, so that the cost, unpriced and
/// budget series the Spend panels read exist: `record_line`'s Llama model has no price (its
/// records are unpriced), key-1 has budgets of its own, the other keys the "*" default.
const SPEND: &str = r#"
[pricing]
currency = "USD"
[[pricing.prices]]
model = "gpt-4o-mini*"
per_million = { input = 0.15, output = 0.60 }
[[pricing.prices]]
model = "claude-*"
per_million = { input = 3.0, output = 15.0 }
per_request = 0.0001
[[budgets]]
api_key_id = "*"
window = "1d"
tokens = 100000
cost = 0.5
[[budgets]]
api_key_id = "key-1"
window = "1d"
tokens = 5000000
cost = 10.0
"#;

/// Every tenth record as the gateway writes it when the AI Gateway's metadata does not reach
/// the access log: token counts null (a 2xx record is then unmetered).
fn maybe_unmetered(i: u64, line: String) -> String {
    if i % 10 != 4 {
        return line;
    }
    match serde_json::from_str::<serde_json::Value>(&line) {
        Ok(serde_json::Value::Object(mut m)) => {
            for k in ["llm_input_token", "llm_output_token", "llm_total_token"] {
                m.insert(k.into(), serde_json::Value::Null);
            }
            serde_json::Value::Object(m).to_string()
        }
        _ => line,
    }
}

/// Grafana variables as Grafana would interpolate them for "All".
fn interpolate(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__range_s", "3600")
        .replace("$__range", "1h")
        .replace("$__interval", "1m")
        .replace("$model", ".*")
        .replace("$api_key_id", ".*")
        .replace("$service_id", ".*")
        .replace("$team", ".*")
}

#[test]
fn dashboards_are_well_formed() {
    for (file, d) in dashboards() {
        let inputs: BTreeSet<String> = d["__inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| format!("${{{}}}", i["name"].as_str().unwrap()))
            .collect();
        assert!(inputs.contains("${DS_PROMETHEUS}"), "{file}");
        let vars: BTreeSet<String> = d["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect();
        let mut ids = BTreeSet::new();
        for p in d["panels"].as_array().unwrap() {
            assert!(
                ids.insert(p["id"].as_u64().unwrap()),
                "{file}: duplicate panel id {}",
                p["id"]
            );
            let uid = p["datasource"]["uid"].as_str().unwrap();
            assert!(
                inputs.contains(uid),
                "{file}: panel {} uses {uid}, not a declared input",
                p["id"]
            );
            for t in p["targets"].as_array().unwrap() {
                assert_eq!(t["datasource"]["uid"], p["datasource"]["uid"], "{file}");
                let expr = t["expr"].as_str().unwrap();
                // Every $variable used is defined (Grafana's own $__… aside).
                for part in expr.split('$').skip(1) {
                    let name: String = part
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.starts_with("__") {
                        assert!(
                            vars.contains(&name),
                            "{file}: panel {} uses undefined ${name}",
                            p["id"]
                        );
                    }
                }
            }
        }
        for v in d["templating"]["list"].as_array().unwrap() {
            if v["type"] == "query" {
                assert_eq!(v["datasource"]["uid"], "${DS_PROMETHEUS}", "{file}");
            }
        }
        // No hard-coded data source anywhere.
        let text = d.to_string();
        assert!(
            !text.contains("\"uid\":\"prometheus\"") && !text.contains("\"uid\":\"loki\""),
            "{file}"
        );
    }
}

/// The anchors GitHub gives the headings of a Markdown page: lower case, letters, digits, `-`
/// and `_` kept, spaces made `-`, everything else dropped; a repeated heading gets `-1`, `-2`.
/// Lines inside code fences are not headings.
fn heading_anchors(markdown: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut in_fence = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        let Some(text) = line.strip_prefix('#') else {
            continue;
        };
        if in_fence {
            continue;
        }
        let text = text.trim_start_matches('#');
        if !text.starts_with(' ') {
            continue;
        }
        let slug: String = text
            .trim()
            .chars()
            .flat_map(char::to_lowercase)
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let mut unique = slug.clone();
        let mut n = 0;
        while !anchors.insert(unique.clone()) {
            n += 1;
            unique = format!("{slug}-{n}");
        }
    }
    anchors
}

/// Relative link targets `](target)` of a Markdown page, outside code fences, with their line.
fn relative_links(markdown: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_fence = false;
    for (i, line) in markdown.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        for part in line.split("](").skip(1) {
            let target = part.split(')').next().unwrap_or("");
            if !target.contains("://") && !target.starts_with("mailto:") {
                out.push((i + 1, target.to_string()));
            }
        }
    }
    out
}

/// Nothing points at a moved anchor: every alert of the rules has a `runbook_url` naming its own
/// section of docs/runbook.md (and so does every expected alert of the `promtool test rules`
/// files); every relative link of the README, BENCHMARKS.md and docs/ reaches an existing file
/// and, with `#anchor`, one of its headings; and every `docs/<page>.md "Heading"` named in a
/// comment or message under config/, src/, tests/ and scripts/ is a heading of that page.
#[test]
fn runbook_urls_doc_links_and_doc_references_reach_existing_headings() {
    let read = |rel: &str| std::fs::read_to_string(root().join(rel)).unwrap();
    let runbook = heading_anchors(&read("docs/runbook.md"));
    const RUNBOOK: &str = "https://github.com/tokenmeter/tokenmeter/blob/main/docs/runbook.md#";

    // Alerts and their runbook URLs.
    let rules = read("config/prometheus/tokenmeter-rules.yaml");
    let mut alert: Option<String> = None;
    let mut alerts = 0;
    for line in rules.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("- alert: ") {
            assert!(alert.is_none(), "alert {alert:?} has no runbook_url");
            alert = Some(name.trim().to_string());
            alerts += 1;
        } else if let Some(url) = line.strip_prefix("runbook_url: ") {
            let url = url.trim_matches('"');
            let name = alert.take().expect("a runbook_url outside an alert");
            assert_eq!(
                url,
                format!("{RUNBOOK}{}", name.to_lowercase()),
                "alert {name}: runbook_url"
            );
        }
    }
    assert!(alert.is_none(), "alert {alert:?} has no runbook_url");
    assert!(alerts >= 15, "only {alerts} alerts found");
    for file in [
        "config/prometheus/tokenmeter-rules.yaml",
        "config/prometheus/tokenmeter-rules.test.yaml",
        "config/prometheus/tokenmeter-rules.hourly.test.yaml",
        "config/prometheus/tokenmeter-rules.invoice.test.yaml",
        "config/prometheus/tokenmeter-rules.owners.test.yaml",
    ] {
        for line in read(file).lines() {
            if let Some(url) = line.trim().strip_prefix("runbook_url: ") {
                let url = url.trim_matches('"');
                let anchor = url.strip_prefix(RUNBOOK).unwrap_or_else(|| {
                    panic!("{file}: runbook_url {url} is not docs/runbook.md#...")
                });
                assert!(
                    runbook.contains(anchor),
                    "{file}: {url}: docs/runbook.md has no heading #{anchor}"
                );
            }
        }
    }

    // Links between the pages.
    let mut pages = vec!["README.md".to_string(), "BENCHMARKS.md".to_string()];
    for e in std::fs::read_dir(root().join("docs")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            pages.push(format!("docs/{name}"));
        }
    }
    let mut links = 0;
    for page in &pages {
        let text = read(page);
        let dir = root().join(page).parent().unwrap().to_path_buf();
        for (line, target) in relative_links(&text) {
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let file = if path.is_empty() {
                root().join(page)
            } else {
                dir.join(path)
            };
            assert!(file.exists(), "{page}:{line}: {target}: no such file");
            if !anchor.is_empty() {
                let anchors = heading_anchors(&std::fs::read_to_string(&file).unwrap());
                assert!(
                    anchors.contains(anchor),
                    "{page}:{line}: {target}: no heading #{anchor} there"
                );
            }
            links += 1;
        }
    }
    assert!(links >= 50, "only {links} relative links found");

    // `docs/<page>.md "Heading"` in comments and messages.
    let mut files = Vec::new();
    let mut dirs: Vec<PathBuf> = ["config", "src", "tests", "scripts"]
        .iter()
        .map(|d| root().join(d))
        .collect();
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if !p.ends_with("fixtures") {
                    dirs.push(p);
                }
            } else if p.extension().is_some_and(|x| {
                ["rs", "py", "sh", "yaml", "toml", "mjs"]
                    .iter()
                    .any(|e| x == *e)
            }) {
                files.push(p);
            }
        }
    }
    let mut references = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (at, _) in text.match_indices("docs/") {
            let rest = &text[at..];
            let name: String = rest["docs/".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            let Some(after) = rest["docs/".len() + name.len()..].strip_prefix(".md") else {
                continue;
            };
            let page = format!("docs/{name}.md");
            let where_ = format!("{}: {page}", file.strip_prefix(root()).unwrap().display());
            assert!(root().join(&page).exists(), "{where_}: no such page");
            references += 1;
            // A heading in quotes right after the page name (`\"` inside a Rust string).
            let after = after.strip_prefix(' ').unwrap_or("\n");
            let after = after.strip_prefix('\\').unwrap_or(after);
            let Some(quoted) = after.strip_prefix('"') else {
                continue;
            };
            let heading: String = quoted
                .chars()
                .take_while(|&c| c != '"' && c != '\\')
                .collect::<String>()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                // A heading wrapped onto the next comment line (`probes,\n # priority`).
                .replace(" # ", " ");
            let anchor = heading_anchors(&format!("# {heading}"))
                .into_iter()
                .next()
                .unwrap();
            assert!(
                heading_anchors(&read(&page)).contains(&anchor),
                "{where_} \"{heading}\": no such heading there"
            );
        }
    }
    assert!(
        references >= 10,
        "only {references} references to docs/ found"
    );
}

#[test]
fn heading_anchors_are_githubs() {
    let anchors = heading_anchors(
        "# Runbook\n## TokenmeterAgentDown\n### replay --loki\n```\n# not a heading\n```\n\
         ## Which path: OTLP push or scrape\n### [state] and [server]\n## Runbook\n#nope\n",
    );
    let want = [
        "runbook",
        "tokenmeteragentdown",
        "replay---loki",
        "which-path-otlp-push-or-scrape",
        "state-and-server",
        "runbook-1",
    ];
    assert_eq!(anchors, want.iter().map(|s| s.to_string()).collect());
}

fn needs_self_metrics(expr: &str) -> bool {
    expr.contains("tokenmeter_") || expr.contains("up{")
}

#[test]
fn every_promql_expression_runs_on_victoriametrics_fed_only_by_otlp() {
    let tmp = tempfile::tempdir().unwrap();
    let root_dir = tmp.path().join("pods");
    let dir = pod_dir(&root_dir, "gw-assets");
    let log = dir.join("0.log");
    // The CRI fixture moved to yesterday: Loki (7 days) accepts its lines on any date.
    let (fixture, _) = cri_fixture_of_yesterday(tmp.path());
    std::fs::copy(fixture, &log).unwrap();
    let loki = LokiReceiver::start();
    let vm_addr = format!("127.0.0.1:{}", free_port());
    // Owners (docs/owners.md): key-0 and key-1 are team alpha's, with month budgets; the other
    // keys are the default team's. The invoice dashboard's team panels then have data.
    let owners = tmp.path().join("owners.toml");
    std::fs::write(
        &owners,
        "[[owners]]\napi_key_id = \"key-[01]\"\nteam = \"never\"\n\
         [[owners]]\napi_key_id = \"key-0\"\nteam = \"alpha\"\n\
         [[owners]]\napi_key_id = \"key-1\"\nteam = \"alpha\"\n\
         [[budgets]]\nteam = \"alpha\"\nwindow = \"month\"\ntokens = 100000000\ncost = 1000\n",
    )
    .unwrap();
    let sections = format!(
        "[otlp]\nendpoint = \"http://{vm_addr}/opentelemetry/v1/metrics\"\ninterval = \"1s\"\n[loki]\nendpoint = \"{}\"\nbatch_wait = \"200ms\"\n[owners]\nfile = \"{}\"\n{SPEND}",
        loki.endpoint(),
        owners.display()
    );
    // Kept running for the whole test (dropped at its end).
    let _daemon = Daemon::start(
        tmp.path(),
        "assets",
        &config(
            &root_dir,
            &tmp.path().join("state"),
            "node_name = \"node-a\"",
            &sections,
        ),
    );
    let vm = Victoria::start_on(&vm_addr);
    // Keep traffic flowing so rates are not zero.
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (done, log) = (done.clone(), log.clone());
        std::thread::spawn(move || {
            let mut exp = Expected::default();
            let mut i = 0;
            while !done.load(Ordering::SeqCst) {
                append(&log, &cri(&maybe_unmetered(i, record_line(i, &mut exp))));
                i += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    wait_until(
        "self-metrics and token counters in VictoriaMetrics",
        Duration::from_secs(60),
        || {
            let a = vm.query("tokenmeter_lines_total");
            let b = vm.query("llm_request_duration_seconds_bucket");
            (!a.is_empty() && !b.is_empty()).then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(6));
    let mut failures = Vec::new();
    for (at, expr) in promql() {
        let q = interpolate(&expr);
        let body = format!("query={}", urlencode(&q));
        let (code, text) = http("POST", &vm.addr, "/api/v1/query", Some(&body)).unwrap();
        if code != 200 {
            failures.push(format!("{at}: {q}: HTTP {code}: {text}"));
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let empty = v["data"]["result"].as_array().is_none_or(|r| r.is_empty());
        // Alert expressions hold only when something is wrong; recording rules and panels
        // must show data. Rules that read other rules' series (`level:llm_…:operations`, the
        // budget rules) cannot without a ruler; they must still run.
        let is_alert = at == "rules" && (expr.contains(" > ") || expr.contains(" == "));
        let reads_rules = at == "rules" && expr.contains(":llm_");
        // A one-minute subquery (the invoice rule's) steps on whole minutes: series younger
        // than its last step, as all of these are, are not in it yet.
        let young = at == "rules" && expr.contains(":1m]");
        if empty && !is_alert && !reads_rules && !young {
            failures.push(format!("{at}: no data: {q}"));
        }
    }
    done.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_promql_expression_runs_on_prometheus_with_backfilled_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    // An hour of dense traffic ending now, replayed into OpenMetrics and promtool blocks.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let start = now / 60 * 60 - 3600;
    let mut text = String::new();
    let mut exp = Expected::default();
    for i in 0..720 {
        let line = record_line_at(i as u64, start + i * 5, &mut exp);
        let mut line = line.replacen("\"duration\":", "\"duration_unused\":", 1);
        if i % 7 == 0 {
            line = line.replacen("\"response_code\":200", "\"response_code\":503", 1);
            // some errors
        }
        text.push_str(&maybe_unmetered(i as u64, line));
        text.push('\n');
    }
    let log = tmp.path().join("a.log");
    std::fs::write(&log, text).unwrap();
    let cfg = tmp.path().join("spend.toml");
    std::fs::write(&cfg, SPEND).unwrap();
    let om = tmp.path().join("a.om");
    let mut replay = replay_cmd([&log]);
    replay
        .arg("--config")
        .arg(&cfg)
        .arg("--openmetrics")
        .arg(&om);
    summary(&mut replay, None);
    let blocks = tmp.path().join("blocks");
    promtool_blocks(&om, &blocks);
    let prom = Prometheus::start_on_blocks(&blocks);
    let addr = &prom.addr;
    let t = start + 3600;
    let mut failures = Vec::new();
    for (at, expr) in promql() {
        let q = interpolate(&expr);
        let body = format!("query={}&time={t}", urlencode(&q));
        let (code, text) = http("POST", addr, "/api/v1/query", Some(&body)).unwrap();
        if code != 200 {
            failures.push(format!("{at}: {q}: HTTP {code}: {text}"));
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let empty = v["data"]["result"].as_array().is_none_or(|r| r.is_empty());
        // Backfilled blocks hold the token and cost counters only (no self-metrics, no
        // histogram, no budget gauges: those are a live agent's; no unpriced/unmetered
        // request counters: replay reports those in its summary).
        let applicable = !needs_self_metrics(&expr)
            && !expr.contains("_bucket")
            && !expr.contains(':')
            && !expr.contains("_unpriced_requests_total")
            && !expr.contains("_unpriced_tokens_total")
            && !expr.contains("_unmetered_requests_total");
        let is_alert = at == "rules" && (expr.contains(" > ") || expr.contains(" == "));
        if empty && applicable && !is_alert {
            failures.push(format!("{at}: no data: {q}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
