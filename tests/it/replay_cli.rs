//! End-to-end tests of `tokenmeter replay` and `check-config`, through the real binary.
//!
//! Expected summaries come from `tests/expected/*.json`, written by
//! `tests/expected/expected_summary.py` (an independent Python reading of SPEC §3 that shares
//! no code with the implementation; CI re-runs it with `--check`). A few totals are also
//! written out by hand from `tests/fixtures/gen_fixtures.py` as a second check. With
//! `--config tests/fixtures/pricing.toml` the same script writes `tests/expected/*.priced.json`
//! (spend, SPEC §10), compared here value by value and cost text by cost text.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::{
    check_config, dir_files, expected, fixture, replay_cmd, replay_json, root, run,
    series_sum as sum, summary, tokenmeter as bin,
};

/// `text` as `c.toml` in a new temporary directory (removed when the first is dropped).
fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, text).unwrap();
    (dir, cfg)
}

#[test]
fn every_fixture_matches_the_independent_reference() {
    for name in [
        "envoy-ai-access.jsonl",
        "cri-wrapped.log",
        "edge-cases.log",
        "docker-json.log",
    ] {
        let got = replay_json([fixture(name)]);
        assert_eq!(got, expected(name), "{name}");
        let skipped: u64 = got["skipped"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(
            got["lines"].as_u64().unwrap(),
            got["records"].as_u64().unwrap() + skipped,
            "{name}"
        );
    }
}

/// `replay --config CONFIG --summary json FILE...`: the raw stdout (one line) and its value.
fn replay_priced(config: &Path, files: &[&Path]) -> (String, Value) {
    // Options may follow the files (clap reads them anywhere).
    summary(replay_cmd(files).arg("--config").arg(config), None)
}

/// The exact text of the top-level `"cost"` number and of each series' `"cost"`, in series
/// order, whatever the key order (a small scan that skips strings and counts nesting).
/// Comparing parsed values alone goes through f64 and could hide a last-digit difference;
/// SPEC §10 wants the plain decimal written from the integer units.
fn cost_texts(json: &str) -> (Option<String>, Vec<String>) {
    let b = json.as_bytes();
    let (mut top, mut series) = (None, Vec::new());
    let (mut depth, mut i) = (0usize, 0usize);
    let mut last_string: Option<&str> = None;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let start = i + 1;
                i += 1;
                while b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                last_string = Some(&json[start..i]);
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth -= 1,
            b':' if last_string == Some("cost") => {
                let rest = json[i + 1..].trim_start();
                let len = rest
                    .find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
                    .unwrap_or(rest.len());
                let number = rest[..len].to_string();
                match depth {
                    1 => top = Some(number),
                    3 => series.push(number),
                    _ => panic!("a \"cost\" at depth {depth}: {json}"),
                }
            }
            _ => {}
        }
        if b[i] != b'"' {
            last_string = last_string.filter(|_| b[i].is_ascii_whitespace() || b[i] == b':');
        }
        i += 1;
    }
    (top, series)
}

#[test]
fn priced_summaries_match_the_independent_reference() {
    // tests/fixtures/pricing.toml exercises every rule of SPEC §10 over the fixtures; the
    // expected files come from `expected_summary.py --config tests/fixtures/pricing.toml`.
    let config = fixture("pricing.toml");
    for name in [
        "envoy-ai-access.jsonl",
        "cri-wrapped.log",
        "edge-cases.log",
        "docker-json.log",
    ] {
        let (text, got) = replay_priced(&config, &[&fixture(name)]);
        let path = root()
            .join("tests/expected")
            .join(format!("{name}.priced.json"));
        let want_text = std::fs::read_to_string(path).unwrap();
        let want: Value = serde_json::from_str(&want_text).unwrap();
        assert_eq!(got, want, "{name}: {text}");
        let want_costs = cost_texts(&want_text);
        assert!(want_costs.0.is_some(), "{name}");
        assert_eq!(
            want_costs.1.len(),
            want["series"].as_array().unwrap().len(),
            "{name}"
        );
        assert_eq!(cost_texts(&text), want_costs, "{name}: cost texts");
        // Plain decimal, at most 12 fractional digits, no trailing zeros.
        for c in want_costs.0.iter().chain(&want_costs.1) {
            let (whole, frac) = c.split_once('.').unwrap_or((c, ""));
            assert!(
                !whole.is_empty() && whole.bytes().all(|b| b.is_ascii_digit()),
                "{c}"
            );
            assert!(frac.len() <= 12 && !frac.ends_with('0'), "{c}");
        }
    }
}

#[test]
fn priced_totals_by_hand() {
    // No `included_in`: the default (cached_input inside input) applies. Custom input field name.
    let (dir, config) = config_file(
        r#"
[pricing]
currency = "USD"
[fields]
input_tokens = "in"
[fields.extra_tokens]
cached_input = "cached"
[[pricing.prices]]
model = "m*"
per_million = { input = 2, output = 8, cached_input = 0.5 }
per_request = 0.001
tiers = [{ above_input = 1000, per_million = { input = 4 } }]
[[pricing.prices]]
model = "m*"
from = "2026-03-01T00:00:00Z"
per_million = { input = 3, output = 8 }
per_request = 0.002
"#,
    );
    let log = dir.path().join("access.log");
    std::fs::write(
        &log,
        concat!(
            // 1. Feb, first entry: (100 - 40) x 2 + 40 x 0.5 + 10 x 8 = 220 µ + fee 1000 µ = 1220 µ
            r#"{"model":"m1","in":100,"llm_output_token":10,"cached":40,"response_code":200,"start_time":"2026-02-01T00:00:00Z"}"#,
            "\n",
            // 2. no time: the previous record's (Feb; the file's mtime would be after March).
            //    Input 2000 > 1000: tier input 4: 2000 x 4 + 100 x 8 = 8800 µ, no fee (503)
            r#"{"model":"m1","in":2000,"llm_output_token":100,"response_code":503}"#,
            "\n",
            // 3. Feb: cached 9 > input 5: input charged max(0, 5 - 9) = 0; 9 x 0.5 = 4.5 µ
            //    + fee 1000 µ = 1004.5 µ
            r#"{"model":"m1","in":5,"cached":9,"response_code":200,"start_time":"2026-02-01T00:00:00Z","duration":"5"}"#,
            "\n",
            // 4. 2026-03-01T00:59:59.999+01:00 + 1 ms = 2026-03-01T00:00:00Z: the March entry
            //    is in force (at or after); cached has no rate there, so input is charged whole:
            //    5 x 3 + 1 x 8 = 23 µ + fee 2000 µ = 2023 µ
            r#"{"model":"m1","in":5,"cached":9,"llm_output_token":1,"response_code":200,"start_time":"2026-03-01T00:59:59.999+01:00","duration":1}"#,
            "\n",
            // 5. no price matches "x": unpriced, cost 0
            r#"{"model":"x","in":7,"response_code":200}"#,
            "\n",
            // 6. 2xx without any token value: unmetered; March entry: fee 2000 µ
            r#"{"model":"m2","response_code":204}"#,
            "\n",
        ),
    )
    .unwrap();
    // m1: 1220 + 8800 + 1004.5 + 2023 = 13047.5 µ = 0.0130475 USD; m2: 0.002; x: 0;
    // total 15047.5 µ = 0.0150475.
    let (text, s) = replay_priced(&config, &[&log]);
    assert_eq!(s["currency"], "USD", "{text}");
    assert_eq!(s["unpriced_requests"], 1, "{text}");
    // Record 5's tokens: input 7, no output, so a total of 7.
    assert_eq!(s["unpriced_tokens"], 7, "{text}");
    assert_eq!(s["unmetered_requests"], 1, "{text}");
    let (total, series) = cost_texts(&text);
    assert_eq!(total.as_deref(), Some("0.0150475"), "{text}");
    assert_eq!(series, ["0.0130475", "0.002", "0"], "{text}");
    assert_eq!(sum(&s, "input_tokens"), 2110 + 7, "{text}");
}

#[test]
fn fixture_totals_by_hand() {
    // From the tok tuples of gen_fixtures.py: 18 records with tokens, 8 LLM records without
    // (errors, a 404 for an unknown model, a client disconnect), 4 lines with no model.
    let jsonl = replay_json([fixture("envoy-ai-access.jsonl")]);
    assert_eq!(jsonl["lines"], 30);
    assert_eq!(jsonl["records"], 26);
    assert_eq!(jsonl["skipped"]["not_llm"], 4);
    assert_eq!(sum(&jsonl, "input_tokens"), 155_563);
    assert_eq!(sum(&jsonl, "output_tokens"), 10_061);
    assert_eq!(sum(&jsonl, "total_tokens"), 165_624);
    assert_eq!(sum(&jsonl, "requests"), 26);
    // The CRI file holds the same 30 lines (one split P,P,F) plus 4 Envoy stderr lines.
    let cri = replay_json([fixture("cri-wrapped.log")]);
    assert_eq!(cri["series"], jsonl["series"]);
    assert_eq!(cri["lines"], 34);
    assert_eq!(cri["skipped"]["not_json"], 4);
    // The 36 KiB line (team-eval, 801 + 96) came through the partials whole.
    let eval: Vec<&Value> = cri["series"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["api_key_id"] == "team-eval" && s["model"] == "gpt-4o-mini")
        .collect();
    assert_eq!(eval.len(), 1);
    assert_eq!(eval[0]["input_tokens"], 801 + 120_000);
    assert_eq!(eval[0]["requests"], 2);
}

#[test]
fn edge_cases_by_hand() {
    // tests/fixtures/edge-cases.txt numbers each case; see make_edge_cases.py.
    let s = replay_json([fixture("edge-cases.log")]);
    assert_eq!(s["lines"], 25, "three blank lines are not counted");
    assert_eq!(s["skipped"]["not_json"], 5);
    assert_eq!(s["skipped"]["not_llm"], 3);
    let m1 = s["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["model"] == "m1")
        .unwrap();
    // input: 10 + (-5 invalid) + (2^53+1 invalid) + 1000 + (2.5 invalid) + 40 + 4 + 10
    //        + (true invalid) + 11 + 12 + 100 = 1187
    assert_eq!(m1["input_tokens"], 1187);
    assert_eq!(m1["requests"], 13);
    // total: 15 + 3 + 2 + 1000 + 1 + 42 + 4 + 25 (gateway's) + 8 + 11 + 12 + 101 = 1224
    assert_eq!(m1["total_tokens"], 1224);
    assert!(s["series"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["model"] == "m\u{FFFD}2"));
    assert!(s["series"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["model"] == "meta-llama/L\u{e8}"));
}

/// `dir/<name>.gz`: the fixture `name` gzipped.
fn gzipped_fixture(dir: &Path, name: &str) -> PathBuf {
    let mut gz = Vec::new();
    write_gzip_member(&mut gz, &std::fs::read(fixture(name)).unwrap());
    let path = dir.join(format!("{name}.gz"));
    std::fs::write(&path, gz).unwrap();
    path
}

fn write_gzip_member(out: &mut Vec<u8>, data: &[u8]) {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    out.extend(enc.finish().unwrap());
}

#[test]
fn multi_member_gzip_equals_the_plain_files() {
    let dir = tempfile::tempdir().unwrap();
    let a = std::fs::read(fixture("envoy-ai-access.jsonl")).unwrap();
    let b = std::fs::read(fixture("edge-cases.log")).unwrap();
    let mut gz = Vec::new();
    write_gzip_member(&mut gz, &a);
    write_gzip_member(&mut gz, &b);
    let path = dir.path().join("rotated.log.1.gz"); // the name does not matter, the magic does
    std::fs::write(&path, gz).unwrap();
    let plain = dir.path().join("both.log");
    let mut both = a.clone();
    both.extend_from_slice(&b);
    std::fs::write(&plain, both).unwrap();
    let got = replay_json([&path]);
    assert_eq!(got, replay_json([&plain]));
    assert_eq!(got["lines"], 30 + 25);
}

#[test]
fn files_are_replayed_in_order_and_summed() {
    let got = replay_json([
        fixture("envoy-ai-access.jsonl"),
        fixture("envoy-ai-access.jsonl"),
    ]);
    let one = expected("envoy-ai-access.jsonl");
    assert_eq!(got["lines"], 60);
    assert_eq!(sum(&got, "total_tokens"), 2 * sum(&one, "total_tokens"));
}

#[test]
fn a_two_mib_line_is_skipped_and_the_rest_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.log");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, r#"{{"model":"m","llm_input_token":1}}"#).unwrap();
    let pad = "x".repeat(2 << 20);
    writeln!(
        f,
        r#"{{"model":"m","llm_input_token":1000,"user-agent":"{pad}"}}"#
    )
    .unwrap();
    write!(f, r#"{{"model":"m","llm_input_token":2}}"#).unwrap(); // no final newline
    drop(f);
    let s = replay_json([&path]);
    assert_eq!(s["lines"], 3);
    assert_eq!(s["records"], 2);
    assert_eq!(s["skipped"]["too_long"], 1);
    assert_eq!(sum(&s, "input_tokens"), 3);
}

#[test]
fn a_missing_file_stops_before_anything_is_written() {
    let missing = root().join("tests/fixtures/no-such-file.log");
    let out = run(&mut replay_cmd([fixture("envoy-ai-access.jsonl"), missing])).exits(1);
    assert!(out.stdout.is_empty(), "nothing on stdout");
    assert!(out.stderr.contains("no-such-file.log"), "{}", out.stderr);
}

#[test]
fn a_glob_that_matches_nothing_stops_the_replay_by_name() {
    let pattern = root().join("tests/fixtures/*.nothing-matches");
    let out = run(&mut replay_cmd([pattern])).exits(1);
    assert!(out.stdout.is_empty());
    assert!(out.stderr.contains("nothing-matches"), "{}", out.stderr);
}

#[test]
fn text_summary_is_readable() {
    let out = run(bin().arg("replay").arg(fixture("cri-wrapped.log"))).ok();
    let text = out.stdout;
    assert!(text.contains("top model by total tokens"), "{text}");
    assert!(text.contains("gpt-4o-mini"), "{text}");
    assert!(text.contains("not_json"), "{text}");
    assert!(text.contains("165624"), "{text}");
    // No progress bar when stderr is not a terminal.
    assert!(!out.stderr.contains("ETA"));
}

#[test]
fn config_errors_name_the_key_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[source]\nstart_at = \"end\"\nglob_intervall = \"1s\"\n",
    )
    .unwrap();
    let err = run(&mut check_config(&path)).exits(2).stderr;
    assert!(
        err.contains("glob_intervall") && err.contains("bad.toml"),
        "{err}"
    );
    // The same through $TOKENMETER_CONFIG, for replay.
    run(bin()
        .env("TOKENMETER_CONFIG", &path)
        .arg("replay")
        .arg(fixture("envoy-ai-access.jsonl")))
    .exits(2);
}

#[test]
fn config_files_and_directories_layer_and_an_error_names_the_file_that_set_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.toml");
    std::fs::write(
        &base,
        "[source]\ninclude = [\"/a/*.log\", \"/b/*.log\"]\nmax_line_bytes = 4096\n[otlp.headers]\nA = \"1\"\n",
    )
    .unwrap();
    let drop_in = dir.path().join("conf.d");
    std::fs::create_dir(&drop_in).unwrap();
    std::fs::write(
        drop_in.join("20-late.toml"),
        "[source]\nmax_line_bytes = 8192\n",
    )
    .unwrap();
    std::fs::write(
        drop_in.join("10-early.toml"),
        "[source]\ninclude = [\"/c/*.log\"]\nmax_line_bytes = 2048\n[otlp.headers]\nB = \"2\"\n",
    )
    .unwrap();
    let text = run(check_config(&base)
        .arg("-c")
        .arg(&drop_in)
        .arg("--show-secrets"))
    .ok()
    .stdout;
    // The array replaced whole, the last file's number, the header tables merged.
    assert!(text.contains("include = [\"/c/*.log\"]"), "{text}");
    assert!(text.contains("max_line_bytes = 8192"), "{text}");
    assert!(
        text.contains("A = \"1\"") && text.contains("B = \"2\""),
        "{text}"
    );

    // A bad key in the drop-in: the error names the drop-in, not the base.
    std::fs::write(
        drop_in.join("30-bad.toml"),
        "[source]\nmax_line_bytes = -1\n",
    )
    .unwrap();
    let err = run(check_config(&base).arg("-c").arg(&drop_in))
        .exits(2)
        .stderr;
    assert!(
        err.contains("30-bad.toml") && err.contains("source.max_line_bytes"),
        "{err}"
    );
}

#[test]
fn check_config_prints_the_effective_config() {
    let config = root().join("config/tokenmeter.toml");
    let text = run(check_config(&config).env("NODE_NAME", "node-a"))
        .ok()
        .stdout;
    assert!(text.contains("max_line_bytes = 1048576"), "{text}");
    assert!(text.contains("interval = \"15s\""), "{text}");
    // Defaults alone.
    let text = run(bin().arg("check-config")).ok().stdout;
    assert!(
        text.contains("/var/log/pods/envoy-gateway-system_*/envoy/*.log"),
        "{text}"
    );
}

/// Tables whose keys are the user's own names (headers, labels, token types): one key each.
const CONFIG_MAPS: &[&str] = &[
    "fields.extra_tokens",
    "metrics.labels",
    "otlp.headers",
    "otlp.resource_attributes",
    "loki.labels",
    "loki.headers",
    "pricing.included_in",
    "pricing.prices[].per_million",
    "pricing.prices[].tiers[].per_million",
];

/// The key paths of a serialized config: `a.b` into tables, `a[].b` into arrays of tables; a
/// table of [`CONFIG_MAPS`], an empty table and an array are keys themselves.
fn config_key_paths(v: &toml::Value, path: &str, out: &mut std::collections::BTreeSet<String>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        toml::Value::Table(t) if !t.is_empty() && !CONFIG_MAPS.contains(&path) => {
            for (k, item) in t {
                config_key_paths(item, &join(k), out);
            }
        }
        toml::Value::Array(a) if a.first().is_some_and(toml::Value::is_table) => {
            out.insert(path.to_string());
            // Every element: entries of one list may set different keys (a key's or a team's
            // budget).
            for item in a {
                config_key_paths(item, &format!("{path}[]"), out);
            }
        }
        _ => {
            out.insert(path.to_string());
        }
    }
}

/// docs/configuration.md is the config reference and cannot go stale: its key tables list
/// exactly the keys of the config types (every optional key set, every list of tables given
/// an entry, so none is left out of the serialization), and every TOML example in the README
/// and docs/ is a config the parser accepts (`toml price-file` blocks: a price file).
#[test]
fn docs_configuration_md_lists_exactly_the_config_keys_and_every_doc_toml_example_parses() {
    use std::collections::{BTreeMap, BTreeSet};
    use tokenmeter::config::{Config, Fields};
    use tokenmeter::pricing::{Budget, PriceEntry, Rate, Tier};

    // Struct literals without `..`: a new field does not compile until it is set here.
    let mut config = Config::default();
    let key = |k: &str| Some(k.to_string());
    config.fields = Fields {
        format: "auto".into(),
        model: key("model"),
        input_tokens: key("in"),
        output_tokens: key("out"),
        total_tokens: key("total"),
        api_key_id: key("key"),
        service_id: key("service"),
        status: key("status"),
        start_time: key("start"),
        duration_ms: key("duration"),
        extra_tokens: BTreeMap::from([("audio_input".into(), "audio".into())]),
    };
    let rates = || BTreeMap::from([("input".to_string(), Rate("1".into()))]);
    config.pricing.prices = vec![PriceEntry {
        model: "*".into(),
        service_id: "*".into(),
        from: Some("2026-01-01T00:00:00Z".into()),
        per_million: rates(),
        per_request: Some(Rate("0.1".into())),
        tiers: vec![Tier {
            above_input: 1000,
            per_million: rates(),
        }],
    }];
    config.budgets = vec![
        Budget {
            api_key_id: "*".into(),
            team: String::new(),
            window: "1d".into(),
            tokens: Some(1),
            cost: Some(Rate("1".into())),
        },
        Budget {
            api_key_id: String::new(),
            team: "*".into(),
            window: "month".into(),
            tokens: Some(1),
            cost: Some(Rate("1".into())),
        },
    ];
    let mut code = BTreeSet::new();
    config_key_paths(&toml::Value::try_from(&config).unwrap(), "", &mut code);

    let doc = std::fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    let reference = doc
        .split("\n## Every key\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("docs/configuration.md has a section `## Every key`");
    let documented: BTreeSet<String> = reference
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split_once("` |"))
        .map(|(k, _)| k.to_string())
        .collect();
    let missing: Vec<&String> = code.difference(&documented).collect();
    let unknown: Vec<&String> = documented.difference(&code).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "docs/configuration.md \"Every key\": keys of the config types not documented: \
         {missing:?}; documented keys the config does not have: {unknown:?}"
    );

    // Every TOML example of the README and docs/ parses (variables get a plausible value).
    let env = |name: &str| {
        Some(if name.contains("ENDPOINT") {
            "http://backend.example:8080/push".to_string()
        } else {
            "example".to_string()
        })
    };
    let mut pages = vec![root().join("README.md")];
    for e in std::fs::read_dir(root().join("docs")).unwrap() {
        pages.push(e.unwrap().path());
    }
    let mut examples = 0;
    for page in pages
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
    {
        let text = std::fs::read_to_string(page).unwrap();
        let mut lines = text.lines().enumerate();
        while let Some((at, line)) = lines.next() {
            let info = line.trim_start().strip_prefix("```").unwrap_or("");
            if info != "toml" && info != "toml price-file" && info != "toml owners-file" {
                continue;
            }
            let block: Vec<&str> = lines
                .by_ref()
                .map(|(_, l)| l)
                .take_while(|l| !l.trim_start().starts_with("```"))
                .collect();
            let block = block.join("\n");
            let place = format!(
                "{}:{}",
                page.strip_prefix(root()).unwrap_or(page).display(),
                at + 1
            );
            if info == "toml" {
                if let Err(e) = Config::from_toml(&block, &env) {
                    panic!("{place}: the example is not a valid config: {e}");
                }
            } else if info == "toml owners-file" {
                let table = tokenmeter::owners::parse_owners_file(&block)
                    .and_then(|file| tokenmeter::owners::OwnerTable::compile(&file, "unassigned"));
                if let Err(e) = table {
                    panic!("{place}: the example is not a valid owners file: {e:?}");
                }
            } else if let Err(e) = tokenmeter::pricing::parse_price_file(&block) {
                panic!("{place}: the example is not a valid price file: {e:?}");
            }
            examples += 1;
        }
    }
    assert!(
        examples >= 8,
        "only {examples} TOML examples found in the README and docs/"
    );
}

#[test]
fn the_local_config_replays_the_sample_logs() {
    run(&mut check_config(&root().join("config/local.toml"))).ok();
}

#[test]
fn help_and_version() {
    let help = run(bin().arg("--help")).ok().stdout;
    for cmd in ["run", "replay", "check-config"] {
        assert!(help.contains(cmd), "{help}");
    }
    let help = run(bin().args(["replay", "--help"])).stdout;
    assert!(help.contains("--summary"), "{help}");
    let version = run(bin().arg("--version")).stdout;
    assert!(version.starts_with("tokenmeter "), "{version}");
    // A missing FILE is a usage error.
    run(bin().arg("replay")).exits(2);
}

#[test]
fn check_config_refuses_an_invalid_glob_and_warns_about_one_that_matches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[source]\ninclude = [\"/var/log/pods/[.log\"]\n").unwrap();
    // An invalid glob is a config error.
    let err = run(&mut check_config(&bad)).exits(2).stderr;
    assert!(err.contains("source.include[0]"), "{err}");

    let empty = dir.path().join("logs");
    std::fs::create_dir(&empty).unwrap();
    let none = dir.path().join("none.toml");
    std::fs::write(
        &none,
        format!("[source]\ninclude = [\"{}/*.log\"]\n", empty.display()),
    )
    .unwrap();
    // Matching nothing is only a warning.
    let err = run(&mut check_config(&none)).ok().stderr;
    assert!(err.contains("warning: source.include[0]"), "{err}");
    assert!(err.contains("matches no file"), "{err}");
}

#[test]
fn check_config_masks_secrets_from_env_and_urls_unless_asked() {
    let (_dir, cfg) = config_file(
        "[otlp]\nendpoint = \"https://agent:pa55w0rd@mimir:8080/otlp/v1/metrics?token=q5ecret\"\nheaders = { \"Authorization\" = \"Bearer ${TOKEN}\" }\n[loki]\nendpoint = \"http://loki/loki/api/v1/push\"\nheaders = { \"X-Scope-OrgID\" = \"tenant-s3cret\" }\nbasic_auth = { username = \"${BASIC_USER}\" }\n",
    );
    let check = |extra: &[&str]| {
        let mut cmd = check_config(&cfg);
        cmd.args(extra)
            .env("TOKEN", "tok-from-env-123")
            .env("BASIC_USER", "user-from-env-456");
        run(&mut cmd).ok().text()
    };
    let text = check(&[]);
    for secret in [
        "tok-from-env-123",
        "pa55w0rd",
        "q5ecret",
        "tenant-s3cret",
        "agent:",
        "user-from-env-456",
    ] {
        assert!(!text.contains(secret), "{secret} shown:\n{text}");
    }
    assert!(text.contains("<redacted>"), "{text}");
    assert!(
        text.contains("https://mimir:8080/otlp/v1/metrics"),
        "{text}"
    );
    let shown = check(&["--show-secrets"]);
    assert!(shown.contains("Bearer tok-from-env-123"), "{shown}");
    assert!(shown.contains("user-from-env-456"), "{shown}");
}

#[test]
fn check_config_refuses_an_unreadable_token_file_of_an_enabled_exporter() {
    let (_dir, cfg) = config_file(
        "[otlp]\nendpoint = \"http://mimir/otlp/v1/metrics\"\nbearer_token_file = \"/nonexistent/token\"\n",
    );
    let err = run(&mut check_config(&cfg)).exits(2).stderr;
    assert!(err.contains("otlp.bearer_token_file"), "{err}");
    // The same key without an endpoint: the exporter is off, nothing to read.
    std::fs::write(&cfg, "[otlp]\nbearer_token_file = \"/nonexistent/token\"\n").unwrap();
    run(&mut check_config(&cfg)).ok();
}

#[test]
fn check_config_refuses_each_pricing_error_naming_the_entry_and_warns_about_rounding() {
    let tmp = tempfile::tempdir().unwrap();
    let check = |name: &str, toml: &str| {
        let path = tmp.path().join(format!("{name}.toml"));
        std::fs::write(&path, toml).unwrap();
        let out = run(&mut check_config(&path));
        (out.code, out.stderr)
    };
    let ok = "[[pricing.prices]]\nmodel = \"ok\"\nper_million = { input = 1 }\n";
    // (what, the second entry, a fragment the message must contain)
    let cases = [
        (
            "unknown type",
            "model = \"m*\"\nper_million = { cachd = 1 }\n",
            "cachd",
        ),
        (
            "negative rate",
            "model = \"m*\"\nper_million = { input = -1 }\n",
            "negative",
        ),
        (
            "rate above 10^6",
            "model = \"m*\"\nper_million = { input = 1000001 }\n",
            "above 1000000",
        ),
        (
            "total beside input",
            "model = \"m*\"\nper_million = { input = 1, total = 2 }\n",
            "total",
        ),
        (
            "bad from",
            "model = \"m*\"\nfrom = \"2026-01-01\"\nper_million = { input = 1 }\n",
            "RFC 3339",
        ),
        (
            "duplicate",
            "model = \"ok\"\nper_million = { input = 2 }\n",
            "same",
        ),
        (
            "negative fee",
            "model = \"m*\"\nper_request = -0.5\n",
            "negative",
        ),
    ];
    for (what, entry, fragment) in cases {
        let (code, err) = check("bad", &format!("{ok}[[pricing.prices]]\n{entry}"));
        assert_eq!(code, Some(2), "{what}: {err}");
        assert!(
            err.contains("pricing.prices[1]"),
            "{what}: names the entry: {err}"
        );
        assert!(
            err.contains(if what == "duplicate" { "ok" } else { "m*" }),
            "{what}: names the model: {err}"
        );
        assert!(
            err.to_lowercase().contains(&fragment.to_lowercase()),
            "{what}: says why ({fragment}): {err}"
        );
    }
    // An included_in cycle, and budgets: (file, config, what the message names).
    for (name, toml, named) in [
        (
            "cycle",
            "[fields.extra_tokens]\na = \"la\"\nb = \"lb\"\n[pricing]\nincluded_in = { a = \"b\", b = \"a\" }\n[[pricing.prices]]\nmodel = \"x\"\nper_million = { input = 1 }\n",
            "included_in",
        ),
        (
            "budget",
            "[[budgets]]\napi_key_id = \"k\"\nwindow = \"30d\"\ntokens = 1\n[[budgets]]\napi_key_id = \"k\"\nwindow = \"30d\"\ncost = 2\n",
            "budgets[1]",
        ),
        (
            "budget2",
            "[[budgets]]\napi_key_id = \"k\"\nwindow = \"30d\"\n",
            "budgets[0]",
        ),
    ] {
        let (code, err) = check(name, toml);
        assert_eq!(code, Some(2), "{name}: {err}");
        assert!(err.contains(named), "{name}: {err}");
    }
    // A rate that rounding to 10^-12 units changes is accepted with a warning naming it.
    let (code, err) = check(
        "round",
        "[[pricing.prices]]\nmodel = \"r\"\nper_million = { input = 0.0000001234 }\n",
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("warning")
            && err.contains("pricing.prices[0]")
            && err.contains("0.0000001234"),
        "{err}"
    );
}

#[test]
fn check_config_refuses_an_endpoint_every_push_would_fail_on_without_showing_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    for (section, endpoint) in [
        ("otlp", "http://mimir:99999/otlp"),
        ("loki", "https://agent:pa55w0rd@:3100/push?token=q5ecret"),
    ] {
        std::fs::write(&cfg, format!("[{section}]\nendpoint = \"{endpoint}\"\n")).unwrap();
        let text = run(&mut check_config(&cfg)).exits(2).text();
        assert!(text.contains(&format!("{section}.endpoint")), "{text}");
        for secret in ["99999", "agent", "pa55w0rd", "q5ecret", "redacted"] {
            assert!(!text.contains(secret), "{secret} shown: {text}");
        }
    }
}

#[test]
fn check_config_refuses_a_header_value_with_a_newline_from_env_without_showing_it() {
    let (_dir, cfg) = config_file(
        "[otlp]\nendpoint = \"http://mimir/otlp/v1/metrics\"\nheaders = { Authorization = \"Bearer ${TOKEN}\" }\n",
    );
    let mut cmd = check_config(&cfg);
    cmd.arg("--show-secrets").env("TOKEN", "tok-from-env-123\n");
    let text = run(&mut cmd).exits(2).text();
    assert!(text.contains("otlp.headers.Authorization"), "{text}");
    assert!(!text.contains("tok-from-env-123"), "{text}");
}

#[test]
fn check_config_refuses_a_directory_as_a_secret_file_and_a_ca_file_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "s3cret, not a certificate\n").unwrap();
    let d = dir.path().display().to_string();
    for (body, key) in [
        (
            format!("bearer_token_file = \"{d}\"\n"),
            "otlp.bearer_token_file",
        ),
        (
            format!("tls = {{ ca_file = \"{d}\" }}\n"),
            "otlp.tls.ca_file",
        ),
        (
            format!("tls = {{ ca_file = \"{}\" }}\n", not_pem.display()),
            "otlp.tls.ca_file",
        ),
        (
            format!("basic_auth = {{ username = \"u\", password_file = \"{d}\" }}\n"),
            "otlp.basic_auth.password_file",
        ),
    ] {
        std::fs::write(
            &cfg,
            format!("[otlp]\nendpoint = \"https://mimir/otlp/v1/metrics\"\n{body}"),
        )
        .unwrap();
        let err = run(&mut check_config(&cfg)).exits(2).stderr;
        assert!(err.contains(key), "{body}: {err}");
        assert!(!err.contains("s3cret"), "{err}");
    }
    std::fs::write(
        &cfg,
        format!(
            "[otlp]\nendpoint = \"https://mimir/otlp/v1/metrics\"\ntls = {{ ca_file = \"{}\" }}\n",
            fixture("test-ca.pem").display()
        ),
    )
    .unwrap();
    run(&mut check_config(&cfg)).ok();
}

#[test]
fn durations_too_long_for_the_clock_are_usage_or_config_errors() {
    let err = run(bin()
        .args(["replay", "--retry-for", "500000000000years"])
        .arg(fixture("envoy-ai-access.jsonl")))
    .exits(2)
    .stderr;
    assert!(err.contains("--retry-for"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    for (text, key) in [
        ("[otlp]\nmax_backoff = \"2h\"\n", "otlp.max_backoff"),
        (
            "[loki]\nmax_backoff = \"500000000000years\"\n",
            "loki.max_backoff",
        ),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let err = run(&mut check_config(&cfg)).exits(2).stderr;
        assert!(err.contains(key), "{text}: {err}");
    }
}

#[test]
fn the_example_price_file_is_valid_and_prices_the_fixtures() {
    // config/pricing.example.toml prices `cached_input`, so the main config must define that
    // extra token type (an undefined type in `per_million` is a config error, SPEC §10).
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("spend.toml");
    let prices = root().join("config/pricing.example.toml");
    std::fs::write(
        &config,
        format!(
            "[fields.extra_tokens]\ncached_input = \"llm_cached_input_token\"\n\
             reasoning = \"llm_reasoning_token\"\n\
             [pricing]\ncurrency = \"USD\"\nfile = '{}'\n",
            prices.display()
        ),
    )
    .unwrap();
    let stderr = run(&mut check_config(&config)).ok().stderr;
    assert!(
        !stderr.contains("not a whole number"),
        "every example rate is exact: {stderr}"
    );
    let (text, s) = replay_priced(&config, &[&fixture("envoy-ai-access.jsonl")]);
    assert_eq!(s["currency"], "USD", "{text}");
    assert_eq!(
        s["unpriced_requests"], 0,
        "every model of the fixture is priced: {text}"
    );
    for series in s["series"].as_array().unwrap() {
        if series["total_tokens"].as_u64().unwrap() > 0 {
            assert!(series["cost"].as_f64().unwrap() > 0.0, "{series}");
        }
    }
}

/// A replay whose prices depend on time works out event times only for the records whose
/// price needs them, keeping the others' time fields unparsed (SPEC §3 fallback, bounded to
/// 64 records). Records without a time of their own, or with an invalid one, must still be
/// priced at the previous record's event time: the fallback chain is resolved newest first,
/// across the bound, and from the file's mtime at its start. Expected costs by hand: 1 M input
/// tokens cost 1 USD before `from` and 2 USD from it; `--from 1970-...` (every event time
/// worked out eagerly) must agree.
#[test]
fn a_price_change_prices_records_without_a_time_of_their_own_at_the_previous_records_time() {
    let (dir, config) = config_file(
        r#"
[pricing]
currency = "USD"
[[pricing.prices]]
model = "changing"
per_million = { input = 1 }
[[pricing.prices]]
model = "changing"
from = "2026-05-01T00:00:00Z"
per_million = { input = 2 }
[[pricing.prices]]
model = "steady"
per_million = { input = 1 }
"#,
    );
    let line = |model: &str, start: Option<&str>| {
        let start = start.map_or(String::new(), |s| format!(r#","start_time":"{s}""#));
        format!(
            r#"{{"model":"{model}","llm_input_token":1000000,"llm_output_token":0,"llm_total_token":1000000,"api_key_id":"k","aim_service_id":"s","response_code":200{start}}}"#
        )
    };
    let (before, after) = (
        Some("2026-04-30T23:59:59.000Z"),
        Some("2026-05-01T00:00:01.000Z"),
    );
    // Changing priced at its own time: old (1), new (2).
    let mut lines = vec![line("changing", before), line("changing", after)];
    // After a steady record past `from`, one without time: new (2).
    lines.push(line("steady", after));
    lines.push(line("changing", None));
    // An invalid time falls back too; the newest valid one is `before`: old (1).
    lines.push(line("steady", before));
    lines.push(line("steady", Some("2026-05-01T00:00:99.000Z")));
    lines.push(line("changing", None));
    // Two valid times kept unparsed: the newer one (`before`) decides: old (1).
    lines.push(line("steady", after));
    lines.push(line("steady", before));
    lines.push(line("changing", None));
    // A start_time longer than what is kept unparsed (escaped), after `from`: new (2).
    lines.push(line("steady", before));
    lines.push(line(
        "steady",
        Some(r"\u0032\u0030\u0032\u0036-05-01T00:00:01.000Z"),
    ));
    lines.push(line("changing", None));
    // 70 steady records (more than the 64 kept unparsed), the last valid one after `from`,
    // then 69 invalid ones: new (2).
    lines.push(line("steady", after));
    for _ in 0..69 {
        lines.push(line("steady", Some("not a time")));
    }
    lines.push(line("changing", None));
    // 70 valid steady records before `from`, the newest one decides: old (1).
    for _ in 0..70 {
        lines.push(line("steady", before));
    }
    lines.push(line("changing", None));
    let file = dir.path().join("access.log");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    // A second file starts from its own mtime (after `from`): new (2).
    let second = dir.path().join("second.log");
    std::fs::write(&second, line("changing", None) + "\n").unwrap();
    let mtime = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_777_593_600 + 3600); // 2026-05-01T01:00Z
    std::fs::File::options()
        .write(true)
        .open(&second)
        .unwrap()
        .set_modified(mtime)
        .unwrap();

    let changing_cost = |v: &Value| -> String {
        let series = v["series"].as_array().unwrap();
        let s: Vec<&Value> = series.iter().filter(|s| s["model"] == "changing").collect();
        assert_eq!(s.len(), 1, "{v}");
        s[0]["cost"].to_string()
    };
    // Old: 1 + 1 + 1 + 1 = 4; new: 2 + 2 + 2 + 2 + 2 = 10.
    let (_, on_demand) = replay_priced(&config, &[&file, &second]);
    assert_eq!(changing_cost(&on_demand), "14", "{on_demand}");
    let (_, eager) = summary(
        replay_cmd([&file, &second])
            .arg("--config")
            .arg(&config)
            .args(["--from", "1970-01-01T00:00:00Z"]),
        None,
    );
    assert_eq!(changing_cost(&eager), "14", "{eager}");
    assert_eq!(on_demand["cost"], eager["cost"]);
}

/// `replay --summary json FILES ARGS`: the summary's line.
fn replay_stdout(args: &[&str], files: &[PathBuf]) -> String {
    summary(replay_cmd(files).args(args), None).0
}

/// `--jobs 2` counts files on two threads and merges them in the order given: the summary is
/// byte for byte the one `--jobs 1` writes, with prices and with limits small enough that
/// values and series fold (those files are counted again in order). The totals also equal
/// the sum of each fixture's independently written summary (tests/expected).
#[test]
fn replay_jobs_2_writes_the_summary_of_jobs_1_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let names = [
        "envoy-ai-access.jsonl",
        "cri-wrapped.log",
        "edge-cases.log",
        "docker-json.log",
    ];
    // Each fixture twice, the second copy gzipped, so parts repeat series of earlier parts.
    let mut files: Vec<PathBuf> = names.iter().map(|n| fixture(n)).collect();
    for n in names {
        files.push(gzipped_fixture(dir.path(), n));
    }
    let limits = dir.path().join("limits.toml");
    std::fs::write(
        &limits,
        "[limits]\nmax_series = 5\n[limits.max_values]\napi_key_id = 3\n",
    )
    .unwrap();
    let pricing = fixture("pricing.toml");
    let configs: [&[&str]; 3] = [
        &[],
        &["--config", pricing.to_str().unwrap()],
        &["--config", limits.to_str().unwrap()],
    ];
    for config in configs {
        let mut one = config.to_vec();
        one.extend(["--jobs", "1"]);
        let mut two = config.to_vec();
        two.extend(["--jobs", "2"]);
        assert_eq!(
            replay_stdout(&two, &files),
            replay_stdout(&one, &files),
            "{config:?}"
        );
    }
    let summary: Value = serde_json::from_str(&replay_stdout(&["--jobs", "2"], &files)).unwrap();
    let (mut lines, mut records) = (0, 0);
    for n in names {
        let want = expected(n);
        lines += 2 * want["lines"].as_u64().unwrap();
        records += 2 * want["records"].as_u64().unwrap();
    }
    assert_eq!(summary["lines"].as_u64(), Some(lines));
    assert_eq!(summary["records"].as_u64(), Some(records));
    // The limits fold: the fallback to counting in order was taken.
    let folded = replay_stdout(
        &["--config", limits.to_str().unwrap(), "--jobs", "2"],
        &files,
    );
    assert!(folded.contains("__overflow__"), "{folded}");
}

/// With backfill the records must reach the steps in order: `--jobs 2` reads and inflates the
/// files ahead on another thread and counts them here in order, so the OpenMetrics windows
/// and the summary are byte for byte those of `--jobs 1` (gzip and plain files, a small
/// chunk-sized file and a multi-window split).
#[test]
fn backfill_with_jobs_2_writes_the_files_of_jobs_1_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<PathBuf> = Vec::new();
    for n in [
        "envoy-ai-access.jsonl",
        "cri-wrapped.log",
        "docker-json.log",
    ] {
        files.push(fixture(n));
        files.push(gzipped_fixture(dir.path(), n));
    }
    let mut outputs = Vec::new();
    for jobs in ["1", "2"] {
        let out_dir = dir.path().join(format!("om-{jobs}/"));
        let mut cmd = replay_cmd(&files);
        cmd.args([
            "--jobs",
            jobs,
            "--step",
            "10s",
            "--block",
            "1m",
            "--openmetrics",
        ])
        .arg(&out_dir);
        let text = summary(&mut cmd, None).0;
        let written = dir_files(&out_dir);
        assert!(written.len() > 1, "several windows: {written:?}");
        outputs.push((text, written));
    }
    assert_eq!(outputs[0], outputs[1]);
}

/// A file that fails half-way (a cut gzip member) stops the replay with the same message and
/// exit code whatever `--jobs`, counted in parallel or read ahead for backfill.
#[test]
fn a_broken_file_fails_the_same_way_with_any_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("cut.gz");
    let mut member = Vec::new();
    write_gzip_member(
        &mut member,
        &std::fs::read(fixture("envoy-ai-access.jsonl")).unwrap(),
    );
    std::fs::write(&gz, &member[..300]).unwrap();
    let files = [fixture("cri-wrapped.log"), gz, fixture("docker-json.log")];
    for extra in [&[][..], &["--openmetrics", "OUT"][..]] {
        let mut results = Vec::new();
        for jobs in ["1", "2"] {
            let out_dir = dir.path().join(format!("om-{jobs}/"));
            let args: Vec<String> = extra
                .iter()
                .map(|a| {
                    if *a == "OUT" {
                        out_dir.to_string_lossy().into_owned()
                    } else {
                        a.to_string()
                    }
                })
                .collect();
            let out = run(replay_cmd(&files).args(["--jobs", jobs]).args(&args));
            results.push((out.code, out.stderr, out.stdout));
        }
        assert_eq!(results[0], results[1], "{extra:?}");
        assert_eq!(results[0].0, Some(1), "{:?}", results[0]);
        assert!(
            results[0].1.contains("cut.gz"),
            "the message names the file: {}",
            results[0].1
        );
    }
}

/// The first record of `envoy-ai-access.jsonl` with its `start_time` set to `t`, one line
/// without its newline.
fn envoy_record_at(t: &str) -> String {
    let line = std::fs::read_to_string(fixture("envoy-ai-access.jsonl")).unwrap();
    let v: Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    let mut v = v.as_object().unwrap().clone();
    v.insert("start_time".into(), Value::String(t.into()));
    serde_json::to_string(&v).unwrap()
}

/// SIGTERM while the writer thread is in the middle of a window file (held there by a
/// debug-only fault) and the reader waits on its input, which then goes on or ends (its
/// writer stopped by the same Ctrl-C): the replay stops, the writer finishes and renames that
/// file, and the process says so and dies by the signal (a shell loop sees it). No temporary
/// file or block directory is left, what was written is what an uninterrupted replay writes,
/// and nothing after the held window is written (an input cut short is not a whole one).
#[test]
fn sigterm_during_a_window_write_finishes_that_window_and_leaves_no_temporary_file_or_block() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let at = |t: &str| envoy_record_at(t) + "\n";
    // 08–10 h is complete once a step of the 10–12 h window closes (the 13:00 record).
    let lines = [
        at("2026-03-17T09:14:02.113Z"),
        at("2026-03-17T11:30:00.000Z"),
        at("2026-03-17T13:00:00.000Z"),
    ]
    .concat();
    let whole = dir.path().join("whole.log");
    std::fs::write(&whole, &lines).unwrap();
    let (full_om, full_tsdb) = (dir.path().join("full-om"), dir.path().join("full-tsdb"));
    let mut cmd = replay_cmd([&whole]);
    cmd.arg("--openmetrics")
        .arg(format!("{}/", full_om.display()))
        .arg("--tsdb")
        .arg(&full_tsdb);
    run(&mut cmd).exits(0);
    let full = dir_files(&full_om);
    let listing = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let full_blocks = listing(&full_tsdb);
    assert_eq!(full_blocks.len(), 3, "{full_blocks:?}");

    for input_ends in [false, true] {
        let case = if input_ends {
            "input ends"
        } else {
            "input goes on"
        };
        let (om, tsdb) = (
            dir.path().join(format!("om-{input_ends}")),
            dir.path().join(format!("tsdb-{input_ends}")),
        );
        let mut child = replay_cmd(["-"])
            .env("TOKENMETER_FAULT_WINDOW_WRITER", "hold-first")
            .arg("--openmetrics")
            .arg(format!("{}/", om.display()))
            .arg("--tsdb")
            .arg(&tsdb)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(lines.as_bytes()).unwrap();
        stdin.flush().unwrap();
        // The writer holds the first window's temporary file until the replay stops.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let held = || {
            std::fs::read_dir(&om).is_ok_and(|mut d| {
                d.any(|e| {
                    e.is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".tmp-tokenmeter"))
                })
            })
        };
        while !held() {
            assert!(
                std::time::Instant::now() < deadline,
                "{case}: no window file was started"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        // SAFETY: a signal to our own child, which has not been waited for (its pid is its own).
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let status = if input_ends {
            drop(stdin);
            child.wait().unwrap()
        } else {
            // The reader is blocked on its input: lines let it reach the check, until it exits.
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{case}: the replay did not stop"
                );
                let _ = stdin.write_all(at("2026-03-17T13:00:01.000Z").as_bytes());
                let _ = stdin.flush();
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
        assert_eq!(
            status.signal(),
            Some(libc::SIGTERM),
            "{case}: {status:?} {err}"
        );
        assert!(err.contains("interrupted by SIGTERM"), "{case}: {err}");
        assert_eq!(out, "", "{case}: no summary of an interrupted replay");
        // The held window was finished, byte for byte as the uninterrupted replay wrote it.
        let written = dir_files(&om);
        let names: Vec<&str> = written.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["20260317T080000Z-20260317T100000Z.om"], "{case}");
        assert!(
            full.contains(&written[0]),
            "{case}: the window file differs from the full replay's"
        );
        // Blocks: complete ones only, each one of the uninterrupted replay's (a ULID is a hash
        // of the content), and no temporary directory.
        for b in listing(&tsdb) {
            assert!(
                full_blocks.contains(&b),
                "{case}: {b} is not one of {full_blocks:?}"
            );
        }
    }
}

/// A replay whose input breaks while the writer thread is in the middle of a window file
/// (held there by a debug-only fault until the replay stops handing over windows) still
/// finishes and renames that file before it exits: no temp file is left, and the files are
/// those of `--jobs 1`, which writes each window before it reads on.
#[test]
fn a_replay_failing_while_a_window_is_written_finishes_that_window_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let at = envoy_record_at;
    // 08–10 h is complete once a step of the 10–12 h window closes (the 13:00 record).
    let plain = dir.path().join("a.log");
    let lines = [
        at("2026-03-17T09:14:02.113Z"),
        at("2026-03-17T11:30:00.000Z"),
        at("2026-03-17T13:00:00.000Z"),
    ];
    std::fs::write(&plain, lines.join("\n") + "\n").unwrap();
    let gz = dir.path().join("cut.gz");
    let mut member = Vec::new();
    write_gzip_member(&mut member, (lines.join("\n") + "\n").as_bytes());
    std::fs::write(&gz, &member[..member.len() / 2]).unwrap();
    let mut listings = Vec::new();
    for jobs in ["1", "2"] {
        let out_dir = dir.path().join(format!("om-{jobs}"));
        let mut cmd = replay_cmd([&plain, &gz]);
        cmd.env("TOKENMETER_FAULT_WINDOW_WRITER", "hold-first")
            .args(["--jobs", jobs, "--openmetrics"])
            .arg(format!("{}/", out_dir.display()));
        let err = run(&mut cmd).exits(1).stderr;
        assert!(err.contains("cut.gz"), "jobs {jobs}: {err}");
        listings.push(dir_files(&out_dir));
    }
    let names = |l: &[(String, Vec<u8>)]| l.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(&listings[0]),
        ["20260317T080000Z-20260317T100000Z.om"]
    );
    assert_eq!(
        names(&listings[1]),
        names(&listings[0]),
        "jobs 2 against jobs 1"
    );
    assert!(
        listings[0] == listings[1],
        "the same bytes with jobs 1 and 2"
    );
}
