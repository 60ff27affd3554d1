//! The access-log formats of docs/formats.md end to end: `tokenmeter replay` of the fixtures in
//! `tests/fixtures/formats/` (lines written from each gateway's own documentation and code,
//! see its README) against the summaries `tests/expected/expected_summary.py` computes
//! independently; a file mixing every format line by line; standard input and a FIFO.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{self, replay_cmd, replay_json, run, summary};
use serde_json::Value;

/// One fixture per format, named after it.
const SINGLE_FORMAT: [&str; 6] = [
    "gen_ai.jsonl",
    "genai_v04.jsonl",
    "kong.jsonl",
    "higress.jsonl",
    "logfmt.log",
    "tokenmeter.jsonl",
];

/// Every fixture: one per format, then lines of several formats in CRI and docker envelopes and
/// all of them interleaved.
fn format_fixtures() -> impl Iterator<Item = &'static str> {
    SINGLE_FORMAT
        .into_iter()
        .chain(["cri.log", "docker.log", "mixed.log"])
}

/// `tests/fixtures/formats/<name>`.
fn format_fixture(name: &str) -> PathBuf {
    common::fixture(&format!("formats/{name}"))
}

/// The summary of `tests/fixtures/formats/<name>`, by the independent reference.
fn format_expected(name: &str) -> Value {
    common::expected(&format!("formats/{name}"))
}

#[test]
fn every_format_fixture_matches_the_independent_reference_with_no_config() {
    for name in format_fixtures() {
        let got = replay_json([format_fixture(name)]);
        assert_eq!(got, format_expected(name), "{name}");
    }
}

#[test]
fn each_single_format_fixture_is_read_in_its_own_format_only() {
    for name in SINGLE_FORMAT {
        let got = replay_json([format_fixture(name)]);
        let formats = got["formats"].as_object().unwrap();
        let format = name.split('.').next().unwrap();
        assert_eq!(
            formats.keys().collect::<Vec<_>>(),
            [format],
            "{name}: {got}"
        );
        assert!(formats[format].as_u64().unwrap() > 0, "{name}");
    }
}

#[test]
fn a_file_mixing_every_format_line_by_line_sums_to_the_single_format_files() {
    let singles: Vec<PathBuf> = SINGLE_FORMAT.iter().map(|n| format_fixture(n)).collect();
    let refs: Vec<&Path> = singles.iter().map(PathBuf::as_path).collect();
    let together = replay_json(&refs);
    let mixed = replay_json([format_fixture("mixed.log")]);
    assert_eq!(mixed, together);
    // And the mixed file holds records of every format.
    assert_eq!(
        mixed["formats"].as_object().unwrap().len(),
        SINGLE_FORMAT.len()
    );
}

#[test]
fn standard_input_and_a_fifo_give_the_summary_of_the_file() {
    let path = format_fixture("mixed.log");
    let bytes = std::fs::read(&path).unwrap();
    let want = replay_json([&path]);
    let stdin = |bytes: &[u8]| summary(&mut replay_cmd(["-"]), Some(bytes)).1;
    assert_eq!(stdin(&bytes), want, "stdin");
    // gzip through a pipe is recognised by its magic bytes, as a file is.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &bytes).unwrap();
    let gz = gz.finish().unwrap();
    assert_eq!(stdin(&gz), want, "gzip on stdin");

    // Standard input redirected from a file (`< file`) is read from it, not from a file named
    // `-` in the working directory.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("-"),
        "{\"model\":\"decoy\",\"llm_input_token\":1}\n",
    )
    .unwrap();
    let mut cmd = replay_cmd(["-"]);
    cmd.current_dir(tmp.path())
        .stdin(std::fs::File::open(&path).unwrap());
    let (_, got) = summary(&mut cmd, None);
    assert_eq!(got, want, "stdin redirected from a file");

    let fifo = tmp.path().join("access.fifo");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success(), "mkfifo");
    let writer = {
        let fifo = fifo.clone();
        let bytes = bytes.clone();
        // Opening a FIFO for writing waits for its reader: the replay.
        std::thread::spawn(move || std::fs::write(fifo, bytes).unwrap())
    };
    assert_eq!(replay_json([&fifo]), want, "fifo");
    writer.join().unwrap();

    // One FIFO under two names, `-` twice, or `-` and the pipe it is under another name, is
    // refused before anything is read.
    let again = tmp.path().join(".").join("access.fifo");
    for args in [
        [fifo.as_path(), again.as_path()],
        [Path::new("-"), Path::new("-")],
        [Path::new("-"), Path::new("/dev/stdin")],
    ] {
        let out = run(replay_cmd(args).stdin(std::process::Stdio::piped()));
        assert_ne!(out.code, Some(0), "{args:?}");
        assert!(
            out.stderr.contains("name it once"),
            "{args:?}: {}",
            out.stderr
        );
    }
}

#[test]
fn the_daemon_counts_every_format_and_status_names_the_formats_of_each_file() {
    use crate::common::{append, config, pod_dir, wait_until, Daemon};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let mixed = pod_dir(&root, "gw-mixed").join("0.log");
    let kong = pod_dir(&root, "gw-kong").join("0.log");
    let cfg = config(&root, &tmp.path().join("state"), "", "");
    let d = Daemon::start(tmp.path(), "formats", &cfg);
    append(
        &mixed,
        &std::fs::read_to_string(format_fixture("mixed.log")).unwrap(),
    );
    append(
        &kong,
        &std::fs::read_to_string(format_fixture("kong.jsonl")).unwrap(),
    );
    // The counters: the reference's records per format of the two files together.
    let want_mixed = format_expected("mixed.log");
    let want_kong = format_expected("kong.jsonl");
    let want = |format: &str| {
        want_mixed["formats"][format].as_u64().unwrap_or(0)
            + want_kong["formats"][format].as_u64().unwrap_or(0)
    };
    wait_until(
        "every record counted",
        std::time::Duration::from_secs(60),
        || {
            let m = d.metrics()?;
            let n = m.sum("tokenmeter_lines_total", &[("result", "record")]) as u64;
            (n == want_mixed["records"].as_u64()? + want_kong["records"].as_u64()?).then_some(m)
        },
    );
    let m = d.metrics().unwrap();
    for format in [
        "gen_ai",
        "genai_v04",
        "kong",
        "higress",
        "logfmt",
        "tokenmeter",
    ] {
        assert_eq!(
            m.sum(
                "tokenmeter_lines_total",
                &[("result", "record"), ("format", format)]
            ) as u64,
            want(format),
            "{format}"
        );
    }
    let status = wait_until(
        "both files' formats in /status",
        std::time::Duration::from_secs(30),
        || {
            let (_, body) = crate::common::get(&d.addr, "/status").ok()?;
            let v: Value = serde_json::from_str(&body).ok()?;
            let files = v["files"].as_array()?.clone();
            (files.len() == 2
                && files
                    .iter()
                    .all(|f| f["formats"].as_array().is_some_and(|a| !a.is_empty())))
            .then_some(files)
        },
    );
    for f in status {
        let formats: Vec<&str> = f["formats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        if f["path"].as_str().unwrap().contains("gw-kong") {
            assert_eq!(formats, ["kong"]);
        } else {
            // Every format, in the order /status lists them (the order they are tried in).
            let all: Vec<&str> = SINGLE_FORMAT
                .iter()
                .map(|f| f.split('.').next().unwrap())
                .collect();
            assert_eq!(formats, all);
        }
    }
}

#[test]
fn a_summary_reader_that_went_away_ends_the_replay_quietly_with_its_exit_code() {
    // `tokenmeter replay … | head -0`: standard output is a pipe whose reader is gone, so the
    // summary's write fails with EPIPE, every time (no race with a reader closing late).
    for summary in ["json", "text"] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let stderr = run(common::tokenmeter()
            .args(["replay", "--summary", summary])
            .arg(format_fixture("mixed.log"))
            .stdout(writer))
        .ok()
        .stderr;
        assert!(!stderr.contains("panicked"), "{summary}: {stderr}");
    }
}
