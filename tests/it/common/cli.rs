//! The binary under test as a command: one way to start it, one runner of
//! `replay --summary json`, one way to read what a command left, and one reader of the
//! repository's fixtures and expected summaries.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

/// The `tokenmeter` binary cargo built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tokenmeter"))
}

/// A command of the binary under test. `TOKENMETER_CONFIG` is removed: a config of whoever runs
/// the tests would change what every command reads.
pub fn tokenmeter() -> Command {
    let mut c = Command::new(bin());
    c.env_remove("TOKENMETER_CONFIG");
    c
}

/// The repository's root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/fixtures/<name>` (`name` may be a path below it, e.g. `formats/kong.jsonl`).
pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

/// `tests/expected/<name>.json`, the summary `tests/expected/expected_summary.py` computes
/// independently (`name` may be a path below it, e.g. `formats/kong.jsonl`).
pub fn expected(name: &str) -> Value {
    let path = root().join("tests/expected").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What a finished command left: its exit code and both streams as text.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    fn of(out: Output) -> Ran {
        Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Both streams, for a search of what must (not) be shown anywhere.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Fails the test, showing both streams, unless the command exited with `code`.
    #[track_caller]
    pub fn exits(self, code: i32) -> Ran {
        assert_eq!(
            self.code,
            Some(code),
            "exit code; stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// `exits(0)`.
    #[track_caller]
    pub fn ok(self) -> Ran {
        self.exits(0)
    }
}

/// Runs `cmd` to its end (standard input empty unless `cmd` set one).
pub fn run(cmd: &mut Command) -> Ran {
    Ran::of(cmd.output().unwrap())
}

/// `tokenmeter check-config --config <config>`, not run yet (for more arguments or variables).
pub fn check_config(config: &Path) -> Command {
    let mut c = tokenmeter();
    c.args(["check-config", "--config"]).arg(config);
    c
}

/// `tokenmeter replay --summary json ARGS`, not run yet (for a `--config`, a working directory or
/// a standard input of the test's own); [`summary`] runs it.
pub fn replay_cmd<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Command {
    let mut c = tokenmeter();
    c.args(["replay", "--summary", "json"])
        .args(args)
        .stdin(Stdio::null());
    c
}

/// Runs a `replay --summary json` command, `stdin` written to it when given, and fails the test
/// (with its standard error) unless it exits 0 having written one JSON object on one line: that
/// line and its value.
#[track_caller]
pub fn summary(cmd: &mut Command, stdin: Option<&[u8]>) -> (String, Value) {
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(bytes) = stdin {
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    let ran = Ran::of(child.wait_with_output().unwrap()).ok();
    assert_eq!(
        ran.stdout.lines().count(),
        1,
        "exactly one JSON object on one line: {}",
        ran.stdout
    );
    let value = serde_json::from_str(&ran.stdout).unwrap();
    (ran.stdout, value)
}

/// `tokenmeter replay --summary json ARGS`: the summary.
#[track_caller]
pub fn replay_json<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Value {
    summary(&mut replay_cmd(args), None).1
}

/// The files directly in `dir`, in name order: (name, bytes).
pub fn dir_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// The sum of `field` over a summary's series.
pub fn series_sum(summary: &Value, field: &str) -> u64 {
    summary["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s[field].as_u64().unwrap())
        .sum()
}
