//! Owners end to end (docs/owners.md): `replay` attributes each record to the team in force at
//! its event time, exactly as the independent Python reference (tests/expected/
//! expected_summary.py) computes it; the daemon reloads the owners file (valid, invalid,
//! removed) without a restart, folds teams past `limits.max_values.team`, and keeps teams
//! exact across kill -9. Expected values come from the reference or from the lines the test
//! wrote, never from the code under test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// `tokenmeter replay --summary json --config <config> <files>` (from the repository root, where
/// the fixtures' paths are relative to), parsed.
fn replay(config: &Path, files: &[&Path]) -> Value {
    let mut args = vec![std::ffi::OsStr::new("--config"), config.as_os_str()];
    args.extend(files.iter().map(|f| f.as_os_str()));
    let mut cmd = replay_cmd(args);
    summary(cmd.current_dir(root()), None).1
}

/// The independent reference's summary of `files` with `config`.
fn reference(config: &Path, files: &[&Path]) -> Value {
    let out = Command::new("python3")
        .current_dir(root())
        .arg(root().join("tests/expected/expected_summary.py"))
        .arg("--config")
        .arg(config)
        .args(files)
        .output()
        .expect("python3 runs the reference");
    assert!(
        out.status.success(),
        "the reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn replay_with_owners_matches_the_reference_on_every_fixture() {
    // tests/fixtures/owners.toml: globs, a `from` at a record's exact event time, a group not
    // yet in force, file order and the default team (see tests/fixtures/owners-file.toml).
    let config = root().join("tests/fixtures/owners.toml");
    for name in [
        "envoy-ai-access.jsonl",
        "cri-wrapped.log",
        "edge-cases.log",
        "docker-json.log",
    ] {
        let file = root().join("tests/fixtures").join(name);
        let got = replay(&config, &[&file]);
        let path = root()
            .join("tests/expected")
            .join(format!("{name}.owners.json"));
        let want: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn the_fixture_key_that_changes_team_is_split_at_its_from_instant() {
    // What the reference file says, read by hand: team-search-prod's records (event time
    // start_time + duration) at 09:14:02.925, 04.266 and 06.015 are "search" (its GET
    // /v1/models at 06.514 has no model and no tokens: not a record); the one at exactly
    // 09:14:09.703 and those at 12.124, 14.463 and 22.947 are "search-platform".
    let want: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/expected/envoy-ai-access.jsonl.owners.json"))
            .unwrap(),
    )
    .unwrap();
    let mut by_team: BTreeMap<String, u64> = BTreeMap::new();
    for s in want["series"].as_array().unwrap() {
        if s["api_key_id"] == "team-search-prod" {
            *by_team
                .entry(s["team"].as_str().unwrap().to_string())
                .or_default() += s["requests"].as_u64().unwrap();
        }
    }
    assert_eq!(
        by_team,
        BTreeMap::from([("search".into(), 3), ("search-platform".into(), 4)])
    );
}

/// A log whose key `k-1` changes team at 12:00 while its records come out of order: JSON
/// lines whose event time is their start_time (no CRI envelope, whose time would win).
fn out_of_order_log(dir: &Path) -> PathBuf {
    let mut text = String::new();
    for i in 0..200u64 {
        // Minutes 11:50 .. 12:09, shuffled by a stride coprime with 20.
        let minute = 50 + (i * 7) % 20;
        let (h, m) = if minute >= 60 {
            (12, minute - 60)
        } else {
            (11, minute)
        };
        let key = format!("k-{}", i % 3);
        text.push_str(&format!(
            "{{\"start_time\":\"2026-11-30T{h:02}:{m:02}:00.000Z\",\"model\":\"m{}\",\"api_key_id\":\"{key}\",\"aim_service_id\":\"s\",\"llm_input_token\":{},\"llm_output_token\":{},\"response_code\":200}}\n",
            i % 2,
            i % 31 + 1,
            i % 7
        ));
    }
    let log = dir.join("out-of-order.log");
    std::fs::write(&log, text).unwrap();
    log
}

fn write_owners(path: &Path, text: &str) {
    // Written to a temporary name and renamed, as a ConfigMap update is: never half-read.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// k-1 moves from team "before" to "after" at noon on 2026-11-30.
const CHANGE_AT: &str = "2026-11-30T12:00:00Z";

/// In `dir`: the out-of-order log and a config whose owners file moves k-1 at [`CHANGE_AT`]: (log, config).
fn changing_owners_replay(dir: &Path) -> (PathBuf, PathBuf) {
    let log = out_of_order_log(dir);
    let owners = dir.join("owners.toml");
    write_owners(&owners, &owners_k1_moving_at(CHANGE_AT));
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[owners]\nfile = \"{}\"\n",
            dir.join("state").display(),
            owners.display()
        ),
    )
    .unwrap();
    (log, config)
}

#[test]
fn replay_attributes_a_key_changing_team_mid_file_by_each_records_event_time() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, config) = changing_owners_replay(tmp.path());
    let got = replay(&config, &[&log]);
    let want = reference(&config, &[&log]);
    assert_eq!(got, want);
    let teams: Vec<&str> = got["series"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["api_key_id"] == "k-1")
        .map(|s| s["team"].as_str().unwrap())
        .collect();
    assert_eq!(teams, ["after", "before", "after", "before"], "{got}");
}

#[test]
fn without_owners_the_summary_has_no_team() {
    let tmp = tempfile::tempdir().unwrap();
    let log = out_of_order_log(tmp.path());
    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        format!("state_dir = \"{}\"\n", tmp.path().join("state").display()),
    )
    .unwrap();
    let got = replay(&config, &[&log]);
    assert_eq!(got, reference(&config, &[&log]));
    assert!(!got.to_string().contains("\"team\""), "{got}");
}

/// `llm_tokens_total` of a scrape by (model, api_key_id, service_id, team).
fn tokens_by_team(m: &Metrics) -> BTreeMap<(String, String, String, String), u64> {
    let mut out = BTreeMap::new();
    for (name, l, v) in &m.samples {
        if name == "llm_tokens_total" {
            let g = |k: &str| l.get(k).cloned().unwrap_or_default();
            *out.entry((g("model"), g("api_key_id"), g("service_id"), g("team")))
                .or_default() += *v as u64;
        }
    }
    out
}

/// The same from a summary JSON.
fn summary_by_team(v: &Value) -> BTreeMap<(String, String, String, String), u64> {
    let mut out = BTreeMap::new();
    for s in v["series"].as_array().unwrap() {
        let g = |k: &str| s[k].as_str().unwrap_or_default().to_string();
        *out.entry((g("model"), g("api_key_id"), g("service_id"), g("team")))
            .or_default() += s["total_tokens"].as_u64().unwrap();
    }
    out
}

#[test]
fn the_daemon_reloads_the_owners_file_and_keeps_the_old_one_when_it_is_invalid_or_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let root_dir = tmp.path().join("pods");
    let log = pod_dir(&root_dir, "gw-owners").join("0.log");
    let owners = tmp.path().join("owners.toml");
    // Each version maps every key to one team and gives that team a month budget.
    let mapping = |team: &str| {
        format!(
            "[[owners]]\napi_key_id = \"k*\"\nteam = \"{team}\"\n\
             [[budgets]]\nteam = \"{team}\"\nwindow = \"month\"\ntokens = 1000\n"
        )
    };
    let budget = |d: &Daemon, team: &str| {
        d.metrics()
            .map(|m| m.sum("llm_budget_tokens", &[("team", team), ("window", "month")]))
    };
    write_owners(&owners, &mapping("one"));
    let sections = format!("[owners]\nfile = \"{}\"\n", owners.display());
    let cfg = config(&root_dir, &tmp.path().join("state"), "", &sections);
    let d = Daemon::start(tmp.path(), "owners-reload", &cfg);
    // Each line: 10 tokens of key k.
    let lines = |n: usize| {
        let one = r#"2026-11-26T10:00:00.000000000Z stdout F {"model":"m","api_key_id":"k","aim_service_id":"s","llm_input_token":10,"llm_output_token":0,"response_code":200}"#;
        format!("{one}\n").repeat(n)
    };
    let team_tokens = |d: &Daemon, team: &str| {
        d.metrics()
            .map(|m| m.sum("llm_tokens_total", &[("team", team)]) as u64)
    };
    let reloads = |d: &Daemon, outcome: &str| {
        d.metrics()
            .map(|m| m.sum("tokenmeter_owners_reloads_total", &[("outcome", outcome)]))
    };
    append(&log, &lines(2));
    cond_wait(&d, "2 lines for team one", WAIT, || {
        (team_tokens(&d, "one")? == 20).then_some(())
    });
    // Valid: later lines go to the new team; counted ones stay.
    write_owners(&owners, &mapping("two"));
    cond_wait(&d, "the new owners file in force", WAIT, || {
        (reloads(&d, "success")? == 1.0).then_some(())
    });
    // The owners file's budgets are live too: the gauge follows the file.
    cond_wait(&d, "the new team's budget", WAIT, || {
        (budget(&d, "two")? == 1000.0 && budget(&d, "one")? == 0.0).then_some(())
    });
    append(&log, &lines(3));
    cond_wait(&d, "3 lines for team two", WAIT, || {
        (team_tokens(&d, "two")? == 30 && team_tokens(&d, "one")? == 20).then_some(())
    });
    // Invalid: refused, counted, logged; team two stays in force.
    write_owners(&owners, "[[owners]]\napi_key_id = \"k*\"\nteam = \"\"\n");
    cond_wait(&d, "the invalid owners file refused", WAIT, || {
        (reloads(&d, "failure")? == 1.0).then_some(())
    });
    append(&log, &lines(1));
    cond_wait(&d, "1 more line for team two", WAIT, || {
        (team_tokens(&d, "two")? == 40).then_some(())
    });
    // Removed: refused too; team two still in force.
    std::fs::remove_file(&owners).unwrap();
    cond_wait(&d, "the removed owners file reported", WAIT, || {
        (reloads(&d, "failure")? == 2.0).then_some(())
    });
    append(&log, &lines(1));
    cond_wait(&d, "1 more line for team two", WAIT, || {
        (team_tokens(&d, "two")? == 50).then_some(())
    });
    // Back: applied again.
    write_owners(&owners, &mapping("three"));
    cond_wait(&d, "the owners file back in force", WAIT, || {
        (reloads(&d, "success")? == 2.0).then_some(())
    });
    append(&log, &lines(1));
    cond_wait(&d, "1 line for team three", WAIT, || {
        (team_tokens(&d, "three")? == 10).then_some(())
    });
    cond_wait(&d, "team three's budget", WAIT, || {
        (budget(&d, "three")? == 1000.0).then_some(())
    });
    let m = d.metrics().unwrap();
    // The histogram has no team; the token series all have one.
    assert!(m
        .samples
        .iter()
        .filter(|(n, _, _)| n.starts_with("llm_request_duration_seconds"))
        .all(|(_, l, _)| !l.contains_key("team")));
    assert!(m
        .samples
        .iter()
        .filter(|(n, _, _)| n.starts_with("llm_") && !n.starts_with("llm_request_duration"))
        .all(|(_, l, _)| l.contains_key("team")));
    let text = d.log_text();
    assert!(
        text.contains("the owners in force stay") && text.contains("cannot read"),
        "the refusals are logged: {text}"
    );
}

#[test]
fn teams_past_the_limit_fold_into_overflow_in_the_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let root_dir = tmp.path().join("pods");
    let log = pod_dir(&root_dir, "gw-fold").join("0.log");
    let owners = tmp.path().join("owners.toml");
    // Key k<i> belongs to team t<i>; at most 2 teams.
    let mut text = String::new();
    for i in 0..4 {
        text.push_str(&format!(
            "[[owners]]\napi_key_id = \"k{i}\"\nteam = \"t{i}\"\n"
        ));
    }
    write_owners(&owners, &text);
    let sections = format!(
        "[owners]\nfile = \"{}\"\nlabel = \"owner\"\n[limits]\nmax_values = {{ team = 2 }}\n",
        owners.display()
    );
    let cfg = config(&root_dir, &tmp.path().join("state"), "", &sections);
    let d = Daemon::start(tmp.path(), "owners-fold", &cfg);
    // In this order: k0 (t0), k1 (t1), k2 and k3 past the limit; k0 again.
    let mut lines = String::new();
    for (i, n) in [(0, 1), (1, 2), (2, 4), (3, 8), (0, 16)] {
        lines.push_str(&format!(
            "2026-11-26T10:00:00.000000000Z stdout F {{\"model\":\"m\",\"api_key_id\":\"k{i}\",\"aim_service_id\":\"s\",\"llm_input_token\":{n},\"llm_output_token\":0,\"response_code\":200}}\n"
        ));
    }
    append(&log, &lines);
    cond_wait_read_to_end(&d, &log, WAIT);
    let m = cond_wait(&d, "5 records counted", WAIT, || {
        let m = d.metrics()?;
        (m.sum("llm_requests_total", &[]) == 5.0).then_some(m)
    });
    let by_owner = |owner: &str| m.sum("llm_tokens_total", &[("owner", owner)]) as u64;
    assert_eq!(
        (by_owner("t0"), by_owner("t1"), by_owner("__overflow__")),
        (17, 2, 12)
    );
    assert_eq!(
        m.sum("tokenmeter_overflow_total", &[("label", "owner")]),
        2.0
    );
}

#[test]
fn teams_are_exact_across_kill9_and_equal_the_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let root_dir = tmp.path().join("pods");
    let log = pod_dir(&root_dir, "gw-kill").join("0.log");
    let owners = tmp.path().join("owners.toml");
    write_owners(&owners, &owners_k1_moving_at(CHANGE_AT));
    let sections = format!("[owners]\nfile = \"{}\"\n", owners.display());
    let cfg = config(&root_dir, &tmp.path().join("state"), "", &sections);
    let mut d = Daemon::start(tmp.path(), "owners-kill", &cfg);
    // Records alternate either side of k-1's change of team at 12:00 (CRI time = event time).
    let write = |range: std::ops::Range<u64>| {
        let mut text = String::new();
        for i in range {
            let hour = if (i / 3) % 2 == 0 { 11 } else { 12 };
            text.push_str(&format!(
                "2026-11-30T{hour}:00:00.000000000Z stdout F {{\"model\":\"m{}\",\"api_key_id\":\"k-{}\",\"aim_service_id\":\"s\",\"llm_input_token\":{},\"llm_output_token\":{},\"response_code\":200}}\n",
                i % 2,
                i % 3,
                i % 89 + 1,
                i % 13
            ));
        }
        append(&log, &text);
    };
    let mut next = 0;
    for round in 0..3 {
        write(next..next + 400);
        next += 400;
        let size = std::fs::metadata(&log).unwrap().len();
        cond_wait(&d, "the daemon to read the new lines", WAIT, || {
            (cond_offset_of(&d, &log)? >= size).then_some(())
        });
        write(next..next + 300);
        next += 300;
        cond_kill9_reported(&mut d, &format!("owners round {round}"));
        d = Daemon::start(tmp.path(), "owners-kill", &cfg);
    }
    cond_wait_read_to_end(&d, &log, WAIT);
    let config_path = tmp.path().join("owners-kill.toml");
    let want = summary_by_team(&reference(&config_path, &[&log]));
    assert!(want.keys().any(|k| k.3 == "before") && want.keys().any(|k| k.3 == "after"));
    let mut last = BTreeMap::new();
    cond_wait(&d, "the scrape to equal the reference", WAIT, || {
        last = tokens_by_team(&d.metrics()?);
        (last == want).then_some(())
    });
    // replay of the same file agrees too.
    assert_eq!(summary_by_team(&replay(&config_path, &[&log])), want);
}

#[test]
fn backfill_carries_the_team_label_and_ends_at_the_reference_totals() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, config) = changing_owners_replay(tmp.path());
    let om = tmp.path().join("out.om");
    replay_json([
        "--config".as_ref(),
        config.as_os_str(),
        "--openmetrics".as_ref(),
        om.as_os_str(),
        log.as_os_str(),
    ] as [&std::ffi::OsStr; 5]);
    // The last sample of each llm_tokens_total series: its total.
    let text = std::fs::read_to_string(&om).unwrap();
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("llm_tokens_total{")) {
        let (head, rest) = line.split_once("} ").unwrap();
        let value = rest.split_whitespace().next().unwrap().parse().unwrap();
        last.insert(head.to_string(), value);
    }
    let want: BTreeMap<String, u64> = summary_by_team(&reference(&config, &[&log]))
        .into_iter()
        .map(|((m, k, s, t), n)| {
            (
                format!(
                    "llm_tokens_total{{model=\"{m}\",api_key_id=\"{k}\",service_id=\"{s}\",team=\"{t}\",job=\"tokenmeter\",instance=\"replay\""
                ),
                n,
            )
        })
        .collect();
    assert_eq!(last, want);
}

#[test]
fn the_text_summary_ranks_teams_by_total_tokens_as_the_reference_sums_them() {
    let config = root().join("tests/fixtures/owners.toml");
    let file = root().join("tests/fixtures/envoy-ai-access.jsonl");
    let want = reference(&config, &[&file]);
    let mut by_team: BTreeMap<String, u64> = BTreeMap::new();
    for s in want["series"].as_array().unwrap() {
        *by_team
            .entry(s["team"].as_str().unwrap().to_string())
            .or_default() += s["total_tokens"].as_u64().unwrap();
    }
    let text = run(tokenmeter()
        .current_dir(root())
        .args(["replay", "--summary", "text", "--config"])
        .arg(&config)
        .arg(&file))
    .ok()
    .stdout;
    let section = text
        .split("\ntop team by total tokens")
        .nth(1)
        .expect("a team section");
    let got: BTreeMap<String, u64> = section
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with("  "))
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            (words[0].to_string(), words[4].parse().unwrap())
        })
        .collect();
    assert_eq!(got, by_team, "{text}");
}

#[test]
fn tsdb_blocks_carry_the_team_label_and_end_at_the_reference_totals() {
    let tmp = tempfile::tempdir().unwrap();
    let config = root().join("tests/fixtures/owners.toml");
    let file = root().join("tests/fixtures/envoy-ai-access.jsonl");
    let blocks = tmp.path().join("blocks");
    let mut cmd = replay_cmd([
        "--config".as_ref(),
        config.as_os_str(),
        "--tsdb".as_ref(),
        blocks.as_os_str(),
        file.as_os_str(),
    ] as [&std::ffi::OsStr; 5]);
    summary(cmd.current_dir(root()), None);
    // promtool reads the blocks as Prometheus would (it wants a WAL directory beside them).
    std::fs::create_dir_all(blocks.join("wal")).unwrap();
    let dump = Command::new(backends_root().join("promtool"))
        .args(["tsdb", "dump", "--match=llm_tokens_total"])
        .arg(format!("--sandbox-dir-root={}", tmp.path().display()))
        .arg(&blocks)
        .output()
        .expect("promtool runs");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    // `{name="value", ...} value timestamp`, samples in time order: the last one per series.
    let mut last: BTreeMap<(String, String, String, String), (i64, u64)> = BTreeMap::new();
    for line in String::from_utf8(dump.stdout).unwrap().lines() {
        let (labels, rest) = line.trim_start_matches('{').split_once("} ").unwrap();
        let l: BTreeMap<&str, &str> = labels
            .split(", ")
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        let mut rest = rest.split_whitespace();
        let value: f64 = rest.next().unwrap().parse().unwrap();
        let t: i64 = rest.next().unwrap().parse().unwrap();
        let key = (
            l["model"].to_string(),
            l["api_key_id"].to_string(),
            l["service_id"].to_string(),
            l["team"].to_string(),
        );
        let e = last.entry(key).or_insert((i64::MIN, 0));
        if t >= e.0 {
            *e = (t, value as u64);
        }
    }
    let got: BTreeMap<_, _> = last.into_iter().map(|(k, (_, v))| (k, v)).collect();
    assert_eq!(got, summary_by_team(&reference(&config, &[&file])));
}

/// A main config budget `team = "search"` over the month, beside an owners file (and a price
/// file) in `dir`: (config text, owners path, root of the pods).
fn budget_in_main_config(dir: &Path) -> (String, PathBuf, PathBuf) {
    let root_dir = dir.join("pods");
    let owners = dir.join("owners.toml");
    let prices = dir.join("prices.toml");
    std::fs::write(
        &prices,
        "[[prices]]\nmodel = \"m\"\nper_million = { input = 1 }\n",
    )
    .unwrap();
    let sections = format!(
        "[[budgets]]\nteam = \"search\"\nwindow = \"month\"\ntokens = 7\n\
         [pricing]\nfile = \"{}\"\n[owners]\nfile = \"{}\"\n",
        prices.display(),
        owners.display()
    );
    let cfg = config(&root_dir, &dir.join("state"), "", &sections);
    (cfg, owners, root_dir)
}

/// The owners file of [`budget_in_main_config`]'s tests, `budget` after its one mapping.
fn search_owns_k(budget: &str) -> String {
    format!("[[owners]]\napi_key_id = \"k*\"\nteam = \"search\"\n{budget}")
}

const SEARCH_MONTH_BUDGET_AGAIN: &str =
    "[[budgets]]\nteam = \"search\"\nwindow = \"month\"\ntokens = 5000\n";

#[test]
fn a_budget_also_in_the_main_config_makes_the_owners_file_invalid_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, owners, _) = budget_in_main_config(tmp.path());
    write_owners(&owners, &search_owns_k(SEARCH_MONTH_BUDGET_AGAIN));
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, &cfg).unwrap();
    for ran in [
        run(&mut check_config(&config)),
        run(tokenmeter().args(["run", "--config"]).arg(&config)),
    ] {
        let ran = ran.exits(2);
        let want = format!(
            "config {}: key `budgets[0]`: (team \"search\"): also defined in the main config's budgets[0]; define each budget once",
            owners.display()
        );
        assert!(ran.stderr.contains(&want), "{}", ran.stderr);
    }
}

#[test]
fn reload_counters_start_at_0_and_a_budget_also_in_the_main_config_is_a_refused_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let (cfg, owners, root_dir) = budget_in_main_config(tmp.path());
    let log = pod_dir(&root_dir, "gw-owners-dup").join("0.log");
    write_owners(&owners, &search_owns_k(""));
    let d = Daemon::start(tmp.path(), "owners-dup", &cfg);
    let reloads = |m: &Metrics, family: &str| -> BTreeMap<String, f64> {
        m.samples
            .iter()
            .filter(|(n, _, _)| n == family)
            .map(|(_, l, v)| (l["outcome"].clone(), *v))
            .collect()
    };
    let zero: BTreeMap<String, f64> =
        [("failure".to_string(), 0.0), ("success".into(), 0.0)].into();
    // Before any reload: both outcomes of both files at 0, so a first refusal is an increase.
    let m = d.metrics().unwrap();
    assert_eq!(reloads(&m, "tokenmeter_owners_reloads_total"), zero);
    assert_eq!(reloads(&m, "tokenmeter_pricing_reloads_total"), zero);
    // The same budget in the owners file: refused, counted; the owners in force stay.
    write_owners(
        &owners,
        &format!("[[owners]]\napi_key_id = \"k*\"\nteam = \"other\"\n{SEARCH_MONTH_BUDGET_AGAIN}"),
    );
    cond_wait(&d, "the owners file refused", WAIT, || {
        let m = d.metrics()?;
        (m.sum("tokenmeter_owners_reloads_total", &[("outcome", "failure")]) == 1.0).then_some(())
    });
    let one = r#"2026-11-26T10:00:00.000000000Z stdout F {"model":"m","api_key_id":"k","aim_service_id":"s","llm_input_token":10,"llm_output_token":0,"response_code":200}"#;
    append(&log, &format!("{one}\n"));
    cond_wait(&d, "the line counted for team search", WAIT, || {
        let m = d.metrics()?;
        (m.sum("llm_tokens_total", &[("team", "search")]) == 10.0).then_some(())
    });
    let m = d.metrics().unwrap();
    assert_eq!(m.sum("llm_tokens_total", &[("team", "other")]), 0.0);
    assert_eq!(
        reloads(&m, "tokenmeter_owners_reloads_total"),
        [("failure".to_string(), 1.0), ("success".into(), 0.0)].into()
    );
    // /status says the same, for both files.
    let (code, body) = get(&d.addr, "/status").unwrap();
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        status["reloads"],
        serde_json::json!({
            "owners_file": {"success": 0, "failure": 1},
            "pricing_file": {"success": 0, "failure": 0},
        }),
        "{body}"
    );
    // One budget series: the main config's.
    let budgets: Vec<f64> = m
        .samples
        .iter()
        .filter(|(n, l, _)| {
            n == "llm_budget_tokens" && l.get("team").map(String::as_str) == Some("search")
        })
        .map(|(_, _, v)| *v)
        .collect();
    assert_eq!(budgets, [7.0]);
    assert!(
        d.log_text()
            .contains("also defined in the main config's budgets[0]"),
        "{}",
        d.log_text()
    );
}

#[test]
fn check_config_says_how_many_entries_teams_and_budgets_the_owners_file_holds() {
    let file = std::fs::read_to_string(root().join("tests/fixtures/owners-file.toml")).unwrap();
    // Counted from the file's text, not by the code under test.
    let parsed: toml::Table = toml::from_str(&file).unwrap();
    let entries = parsed["owners"].as_array().unwrap();
    let teams: std::collections::BTreeSet<&str> = entries
        .iter()
        .map(|e| e["team"].as_str().unwrap())
        .collect();
    let budgets = parsed
        .get("budgets")
        .and_then(|b| b.as_array())
        .map_or(0, Vec::len);
    let out = run(check_config(&root().join("tests/fixtures/owners.toml")).current_dir(root()))
        .ok()
        .stdout;
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let want = format!(
        "# owners.file tests/fixtures/owners-file.toml: {}, {}, {}\n",
        plural(entries.len(), "owners entry", "owners entries"),
        plural(teams.len(), "team", "distinct teams"),
        plural(budgets, "budget", "budgets")
    );
    assert!(out.contains(&want), "{want:?} in\n{out}");
}

#[test]
fn the_text_summary_names_the_team_of_each_unpriced_line() {
    let tmp = tempfile::tempdir().unwrap();
    // 60 records of model "u" (no price) and 30 of "p" (priced), keys k-0..k-2, half before
    // and half after noon: k-1 moves from "before" to "after" at noon, the others are "rest".
    let mut log = String::new();
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for i in 0..90u64 {
        let (hour, key) = (11 + i % 2, format!("k-{}", i % 3));
        let model = if i % 3 == 2 && i % 2 == 0 { "p" } else { "u" };
        log.push_str(&format!(
            "{{\"start_time\":\"2026-11-30T{hour}:{:02}:00.000Z\",\"model\":\"{model}\",\"api_key_id\":\"{key}\",\"aim_service_id\":\"s\",\"llm_input_token\":{},\"llm_output_token\":1,\"response_code\":200}}\n",
            i % 60,
            i + 1
        ));
        if model == "u" {
            let team = match (key.as_str(), hour) {
                ("k-1", 11) => "before",
                ("k-1", _) => "after",
                _ => "rest",
            };
            *want.entry(team.to_string()).or_default() += 1;
        }
    }
    let file = tmp.path().join("u.log");
    std::fs::write(&file, log).unwrap();
    let owners = tmp.path().join("owners.toml");
    write_owners(&owners, &owners_k1_moving_at(CHANGE_AT));
    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[owners]\nfile = \"{}\"\n\
             [[pricing.prices]]\nmodel = \"p\"\nper_million = {{ input = 1, output = 1 }}\n",
            tmp.path().join("state").display(),
            owners.display()
        ),
    )
    .unwrap();
    let text = run(tokenmeter()
        .args(["replay", "--summary", "text", "--config"])
        .arg(&config)
        .arg(&file))
    .ok()
    .stdout;
    let section = text
        .split("\nunpriced and unmetered requests by model, service_id and team:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("an unpriced section with teams in\n{text}"));
    let got: BTreeMap<String, u64> = section
        .lines()
        .take_while(|l| l.starts_with("  "))
        .map(|l| {
            let (pair, counts) = l.trim().split_once(": ").unwrap();
            let team = pair
                .strip_prefix("u / s / ")
                .unwrap_or_else(|| panic!("{l:?} is a line of model u, service s"));
            assert!(counts.ends_with(" unpriced, 0 unmetered"), "{l:?}");
            (
                team.to_string(),
                counts.split(' ').next().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, want, "{text}");
    assert_eq!(want.len(), 3, "every team has unpriced records");
}
