//! The access-log formats of docs/formats.md end to end: `tokenmeter replay` of the fixtures in
//! `tests/fixtures/formats/` (lines written from each gateway's own documentation and code,
//! see its README) against the summaries `tests/expected/expected_summary.py` computes
//! independently; a file mixing every format line by line; standard input and a FIFO.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::bin;
use serde_json::Value;

const FORMAT_FIXTURES: [&str; 9] = [
    "gen_ai.jsonl",
    "genai_v04.jsonl",
    "kong.jsonl",
    "higress.jsonl",
    "logfmt.log",
    "tokenmeter.jsonl",
    "cri.log",
    "docker.log",
    "mixed.log",
];

const SINGLE_FORMAT: [&str; 6] = [
    "gen_ai.jsonl",
    "genai_v04.jsonl",
    "kong.jsonl",
    "higress.jsonl",
    "logfmt.log",
    "tokenmeter.jsonl",
];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/formats")
        .join(name)
}

fn expected(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/expected/formats")
        .join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `tokenmeter replay --summary json` of `args` with no config at all, `stdin` fed to it.
fn replay_json(args: &[&Path], stdin: Option<&[u8]>) -> Value {
    let mut child = Command::new(bin())
        .env_remove("TOKENMETER_CONFIG")
        .args(["replay", "--summary", "json"])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        std::io::Write::write_all(&mut pipe, bytes).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "replay {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn every_format_fixture_matches_the_independent_reference_with_no_config() {
    for name in FORMAT_FIXTURES {
        let got = replay_json(&[&fixture(name)], None);
        assert_eq!(got, expected(name), "{name}");
    }
}

#[test]
fn each_single_format_fixture_is_read_in_its_own_format_only() {
    for name in SINGLE_FORMAT {
        let got = replay_json(&[&fixture(name)], None);
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
    let singles: Vec<PathBuf> = SINGLE_FORMAT.iter().map(|n| fixture(n)).collect();
    let refs: Vec<&Path> = singles.iter().map(PathBuf::as_path).collect();
    let together = replay_json(&refs, None);
    let mixed = replay_json(&[&fixture("mixed.log")], None);
    assert_eq!(mixed, together);
    // And the mixed file holds records of every format.
    assert_eq!(
        mixed["formats"].as_object().unwrap().len(),
        SINGLE_FORMAT.len()
    );
}

#[test]
fn standard_input_and_a_fifo_give_the_summary_of_the_file() {
    let path = fixture("mixed.log");
    let bytes = std::fs::read(&path).unwrap();
    let want = replay_json(&[&path], None);
    assert_eq!(replay_json(&[Path::new("-")], Some(&bytes)), want, "stdin");
    // gzip through a pipe is recognised by its magic bytes, as a file is.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &bytes).unwrap();
    let gz = gz.finish().unwrap();
    assert_eq!(
        replay_json(&[Path::new("-")], Some(&gz)),
        want,
        "gzip on stdin"
    );

    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("access.fifo");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success(), "mkfifo");
    let writer = {
        let fifo = fifo.clone();
        let bytes = bytes.clone();
        // Opening a FIFO for writing waits for its reader: the replay.
        std::thread::spawn(move || std::fs::write(fifo, bytes).unwrap())
    };
    assert_eq!(replay_json(&[&fifo], None), want, "fifo");
    writer.join().unwrap();
}
