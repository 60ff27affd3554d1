//! `tokenmeter replay --tsdb` end to end: the blocks of a replay against promtool's blocks of
//! the OpenMetrics of the same replay, byte-identical repeats, Prometheus serving the
//! summary's totals, a cut run, the last block's end and the flags refused. The block writer's
//! own tests, and the helpers shared here (promtool's dump, parsed), are in `tsdb`.

use crate::common;
use crate::common::Prometheus;
use crate::tsdb::{assert_same, dump, parse_dump, promtool, run, Labels, Samples};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A priced workload over 5 hours (three 2 h windows), a day before the test's start: a
/// record every 12 s, so a series has well over 120 samples a window at a 30 s step (several
/// chunks), plus a model with no price.
fn replay_workload(dir: &Path) -> (PathBuf, PathBuf, common::Expected) {
    let mut expected = common::Expected::default();
    let window0 = (common::test_start() - 86_400).div_euclid(7200) * 7200;
    let start = window0 + 1800;
    let mut lines: String = (0..1500u64)
        .map(|i| common::record_line_at(i, start + 12 * i as i64, &mut expected) + "\n")
        .collect();
    // Two series whose first step ends where a window starts, so their first 0 is in the
    // window before: one that has samples (the 0 joins its block), and one after two empty
    // windows (the 0 gets a block of its own).
    for (model, t) in [
        ("fresh-a", window0 + 7200 - 10),
        ("fresh-b", window0 + 5 * 7200 - 10),
    ] {
        lines.push_str(&format!(
            "{{\"start_time\":\"{}\",\"model\":\"{model}\",\"api_key_id\":\"k\",\"aim_service_id\":\"s\",\"llm_input_token\":5,\"llm_output_token\":2,\"response_code\":200}}\n",
            common::iso(t)
        ));
        expected
            .series
            .insert((model.into(), "k".into(), "s".into()), (1, 5, 2, 7));
    }
    let log = dir.join("access.log");
    std::fs::write(&log, lines).unwrap();
    let config = dir.join("priced.toml");
    std::fs::write(
        &config,
        "[pricing]\ncurrency = \"EUR\"\n[[pricing.prices]]\nmodel = \"gpt-4o-mini\"\nper_million = { input = 0.15, output = 0.6 }\n[[pricing.prices]]\nmodel = \"claude-*\"\nper_million = { input = 3.0, output = 15.0 }\n",
    )
    .unwrap();
    (log, config, expected)
}

fn replay(args: &[&std::ffi::OsStr]) -> serde_json::Value {
    common::replay_json(args)
}

/// `replay --config <config> --tsdb <blocks> <log>`: its JSON summary.
fn replay_tsdb(config: &Path, blocks: &Path, log: &Path) -> serde_json::Value {
    replay(&[
        "--config".as_ref(),
        config.as_os_str(),
        "--tsdb".as_ref(),
        blocks.as_os_str(),
        log.as_os_str(),
    ])
}

/// Every sample of `blocks` from `mint` (ms) on, as promtool's dump reads them back.
fn dumped_from(tmp: &Path, blocks: &Path, mint: i64) -> BTreeMap<Labels, Samples> {
    let sandbox = tmp.join("sandbox");
    std::fs::create_dir_all(&sandbox).unwrap();
    parse_dump(&dump(blocks, &sandbox, mint, i64::MAX / 2))
}

/// Every file under `dir` (but promtool's `wal/`) with its bytes, by relative path.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if rel.starts_with("wal") {
                continue;
            }
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn replay_tsdb_blocks_hold_sample_for_sample_what_promtool_makes_of_the_same_openmetrics() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, config, _) = replay_workload(tmp.path());
    let (om, blocks, theirs) = (
        tmp.path().join("om"),
        tmp.path().join("blocks"),
        tmp.path().join("promtool-blocks"),
    );
    let om_arg = format!("{}/", om.display());
    let summary = replay(&[
        "--config".as_ref(),
        config.as_os_str(),
        "--step".as_ref(),
        "30s".as_ref(),
        "--openmetrics".as_ref(),
        om_arg.as_ref(),
        "--tsdb".as_ref(),
        blocks.as_os_str(),
        log.as_os_str(),
    ]);
    let backfill = &summary["emitted"];
    // Windows 0, 1, 2 and 5; the 0 of fresh-b makes a block for window 4.
    assert_eq!(backfill["windows"], 4, "{summary}");
    assert_eq!(backfill["blocks"], 5, "{summary}");
    // promtool's own path: each window file into blocks.
    for f in std::fs::read_dir(&om).unwrap() {
        run(Command::new(promtool())
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(f.unwrap().path())
            .arg(&theirs));
    }
    // Every block of ours passes promtool's checks, chunk checksums included.
    let ours: Vec<PathBuf> = std::fs::read_dir(&blocks)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(ours.len() as u64, backfill["blocks"].as_u64().unwrap());
    for b in &ours {
        assert!(b.join("meta.json").is_file(), "{}", b.display());
        run(Command::new(promtool())
            .args(["tsdb", "analyze", "--extended"])
            .arg(&blocks)
            .arg(b.file_name().unwrap()));
    }
    let sandbox = tmp.path().join("sandbox");
    std::fs::create_dir_all(&sandbox).unwrap();
    let (mint, maxt) = (i64::MIN / 2, i64::MAX / 2);
    let ours = parse_dump(&dump(&blocks, &sandbox, mint, maxt));
    let theirs = parse_dump(&dump(&theirs, &sandbox, mint, maxt));
    assert!(ours.len() > 20, "{} series", ours.len());
    assert!(
        ours.keys().any(|l| l.iter().any(|(k, _)| k == "__name__")
            && l.contains(&("__name__".into(), "llm_cost_total".into()))),
        "cost series are there"
    );
    assert_same(&ours, &theirs);
}

#[test]
fn replay_tsdb_gives_the_same_bytes_every_time_and_with_any_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, config, _) = replay_workload(tmp.path());
    let run_into = |name: &str, jobs: &str| {
        let dir = tmp.path().join(name);
        replay(&[
            "--config".as_ref(),
            config.as_os_str(),
            "--jobs".as_ref(),
            jobs.as_ref(),
            "--tsdb".as_ref(),
            dir.as_os_str(),
            log.as_os_str(),
        ]);
        tree(&dir)
    };
    let first = run_into("a", "1");
    assert!(first.len() >= 3 * 4, "{:?}", first.keys());
    assert_eq!(first, run_into("b", "1"), "a repeat");
    assert_eq!(first, run_into("c", "2"), "--jobs 2");
}

#[test]
fn prometheus_serves_a_replays_blocks_with_the_summarys_totals() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, config, expected) = replay_workload(tmp.path());
    let blocks = tmp.path().join("blocks");
    let summary = replay_tsdb(&config, &blocks, &log);
    // An hour after the test's start: every sample is older, and within the 1 d looked back.
    let t = common::test_start() + 3600;
    let prom = Prometheus::start_on_blocks(&blocks);
    let at_end = |q: &str| -> f64 {
        // The last value of every series: the workload ends hours before `t`.
        prom.query_at(&format!("sum(last_over_time({q}[1d]))"), t)
            .first()
            .map_or(f64::NAN, |r| r.1)
    };
    assert_eq!(at_end("llm_tokens_total") as u64, expected.total());
    assert_eq!(
        at_end("llm_input_tokens_total") as u64,
        expected.column(1).values().sum::<u64>()
    );
    assert_eq!(
        at_end("llm_requests_total") as u64,
        expected.column(0).values().sum::<u64>()
    );
    // Cost: the summary's, to 10^-9.
    let cost: f64 = summary["series"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["cost"].as_f64())
        .sum();
    assert!(cost > 0.0, "{summary}");
    assert!((at_end("llm_cost_total") - cost).abs() < 1e-9, "{cost}");
}

#[test]
fn a_replay_cut_by_an_input_error_leaves_only_complete_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _, _) = replay_workload(tmp.path());
    // A second input whose gzip stream breaks off: the replay fails after the first file's
    // windows were written.
    let broken = tmp.path().join("broken.log.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &std::fs::read(&log).unwrap()).unwrap();
    let bytes = gz.finish().unwrap();
    std::fs::write(&broken, &bytes[..bytes.len() / 2]).unwrap();
    let blocks = tmp.path().join("blocks");
    let out = common::replay_cmd([
        "--tsdb".as_ref(),
        blocks.as_os_str(),
        log.as_os_str(),
        broken.as_os_str(),
    ])
    .output()
    .unwrap();
    assert!(!out.status.success());
    for e in std::fs::read_dir(&blocks).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            !name.contains("tmp"),
            "a temporary directory is left: {name}"
        );
        assert!(
            p.join("meta.json").is_file() && p.join("index").is_file(),
            "{name}"
        );
    }
    run(Command::new(promtool())
        .args(["tsdb", "analyze"])
        .arg(&blocks));
}

/// The last block ends just after its last sample, as promtool ends its blocks, whether or
/// not its window is over when the replay runs: the same input gives the same bytes at any
/// time (here the window ended yesterday; before, such a block ran to its window's end and one
/// replayed within its window ended after its last sample). The last sample is read back by
/// promtool, not by this writer.
#[test]
fn the_last_block_ends_just_after_its_last_sample_whenever_the_replay_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, config, _) = replay_workload(tmp.path());
    let blocks = tmp.path().join("blocks");
    replay_tsdb(&config, &blocks, &log);
    let metas: Vec<serde_json::Value> = std::fs::read_dir(&blocks)
        .unwrap()
        .map(|e| e.unwrap().path().join("meta.json"))
        .filter(|p| p.is_file())
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect();
    let last = metas
        .iter()
        .max_by_key(|m| m["minTime"].as_i64().unwrap())
        .unwrap();
    let (mint, maxt) = (
        last["minTime"].as_i64().unwrap(),
        last["maxTime"].as_i64().unwrap(),
    );
    let dumped = dumped_from(tmp.path(), &blocks, mint);
    let last_sample = dumped
        .values()
        .flat_map(|s| s.iter().map(|(t, _)| *t))
        .max()
        .unwrap();
    assert_eq!(maxt, last_sample + 1, "{last}");
    // Every other block is a whole --block window (2h).
    for m in metas.iter().filter(|m| m["minTime"] != last["minTime"]) {
        let (a, b) = (
            m["minTime"].as_i64().unwrap(),
            m["maxTime"].as_i64().unwrap(),
        );
        assert_eq!((a % 7_200_000, b - a), (0, 7_200_000), "{m}");
    }
}

/// A series' first 0 lies a step before its first value: a step that does not divide the
/// block would put it in a block that is not a --block window (overlapping the others,
/// crossing a UTC midnight, longer than 24h: what Mimir refuses). Such a step is refused
/// before anything is read, naming both flags.
#[test]
fn a_step_that_does_not_divide_the_block_is_refused_with_tsdb() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, config, _) = replay_workload(tmp.path());
    for (step, block) in [("5h", "2h"), ("7h", "24h"), ("1d", "2h"), ("45m", "2h")] {
        let ran = common::run(
            common::tokenmeter()
                .arg("replay")
                .arg("--config")
                .arg(&config)
                .args(["--step", step, "--block", block, "--tsdb"])
                .arg(tmp.path().join(format!("b-{step}")))
                .arg(&log),
        )
        .exits(2);
        assert!(
            ran.stderr.contains("--step") && ran.stderr.contains("must divide --block"),
            "{step} {block}: {}",
            ran.stderr
        );
        assert!(!tmp.path().join(format!("b-{step}")).exists());
    }
    // A daily step with daily blocks is fine.
    replay(&[
        "--config".as_ref(),
        config.as_os_str(),
        "--step".as_ref(),
        "1d".as_ref(),
        "--block".as_ref(),
        "24h".as_ref(),
        "--tsdb".as_ref(),
        tmp.path().join("daily").as_os_str(),
        log.as_os_str(),
    ]);
}

/// Prometheus' times are milliseconds from 1970-01-01, never negative, so a record dated
/// before 1970 cannot be in a block: with `--tsdb` it is outside the range, counted as such
/// (as a record before `--from`), and the rest of the replay is written (it used to stop the
/// replay with an error naming no line).
#[test]
fn a_record_dated_before_1970_is_outside_the_range_of_tsdb_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, config, expected) = replay_workload(tmp.path());
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(
        &log,
        format!(
            "{{\"start_time\":\"1969-12-31T23:00:00Z\",\"model\":\"pre-epoch\",\"api_key_id\":\"k\",\"aim_service_id\":\"s\",\"llm_input_token\":5,\"llm_output_token\":2,\"response_code\":200}}\n{text}"
        ),
    )
    .unwrap();
    let blocks = tmp.path().join("blocks");
    let summary = replay_tsdb(&config, &blocks, &log);
    assert_eq!(summary["outside_range"], 1, "{summary}");
    let models: Vec<&str> = summary["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["model"].as_str().unwrap())
        .collect();
    assert!(!models.contains(&"pre-epoch"), "{models:?}");
    assert_eq!(
        summary["series"].as_array().unwrap().len(),
        expected.series.len(),
        "{summary}"
    );
    run(Command::new(promtool())
        .args(["tsdb", "analyze"])
        .arg(&blocks));
}

/// `--tsdb` names a directory: a regular file there is a usage error (exit 2) naming it,
/// before anything is read, and the file is left as it was.
#[test]
fn tsdb_at_a_regular_file_is_refused_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, config, _) = replay_workload(tmp.path());
    let file = tmp.path().join("not-a-dir");
    std::fs::write(&file, "keep me").unwrap();
    let ran = common::run(
        common::tokenmeter()
            .arg("replay")
            .arg("--config")
            .arg(&config)
            .arg("--tsdb")
            .arg(&file)
            .arg(&log),
    )
    .exits(2);
    assert!(
        ran.stderr.contains("not-a-dir") && ran.stderr.contains("is not a directory"),
        "{}",
        ran.stderr
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

/// The first instants of 1970 fit in a block (a record's step starts at or after it, and a
/// series' 0 is at the start of its first step, 0 ms): a record at 1970-01-01T00:00:00Z is
/// counted and written; one a second before is outside the range.
#[test]
fn a_record_at_the_epoch_is_written_and_one_a_second_before_is_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("epoch.jsonl");
    std::fs::write(
        &log,
        concat!(
            r#"{"start_time":"1969-12-31T23:59:59Z","model":"m","api_key_id":"k","aim_service_id":"s","llm_input_token":5,"llm_output_token":2,"response_code":200}"#,
            "\n",
            r#"{"start_time":"1970-01-01T00:00:00Z","model":"m","api_key_id":"k","aim_service_id":"s","llm_input_token":3,"llm_output_token":1,"response_code":200}"#,
            "\n",
        ),
    )
    .unwrap();
    let blocks = tmp.path().join("blocks");
    let summary = replay(&["--tsdb".as_ref(), blocks.as_os_str(), log.as_os_str()]);
    assert_eq!(summary["outside_range"], 1, "{summary}");
    assert_eq!(summary["series"][0]["input_tokens"], 3, "{summary}");
    let dumped = dumped_from(tmp.path(), &blocks, 0);
    let input: Vec<&(i64, f64)> = dumped
        .iter()
        .filter(|(l, _)| {
            l.iter()
                .any(|(k, v)| k == "__name__" && v == "llm_input_tokens_total")
        })
        .flat_map(|(_, s)| s.iter())
        .collect();
    assert_eq!(input, [&(0, 0.0), &(60_000, 3.0)], "{dumped:?}");
}
