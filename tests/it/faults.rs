//! End-to-end fault tests of issue 9 (exactly-once under operational faults, bounded shutdown,
//! one daemon per state dir), against the contract in the issue: the real binary, real files,
//! real signals and resource limits.
//!
//! Every expected value is computed by the test from the lines it wrote (`record_line`) and is
//! compared exactly with both the final `/metrics` and `tokenmeter replay --summary json` of the
//! same bytes. While a fault lasts, a background thread scrapes `/metrics` and records any
//! scrape that shows more than had been written by then (the test adds a line to its expected
//! totals *before* appending it to a file, so the totals read after a scrape bound it).
//!
//! Nothing waits a fixed time for the daemon: every wait is on a condition (`/status` offsets
//! and states, `/metrics` values, a process exit) with a generous deadline. The only fixed
//! durations are the faults themselves (the 3 s of an unreadable directory) and the shutdown
//! bound under test.
//!
//! Liveness (issue 14): the debug build's fault hook (`TOKENMETER_FAULT_METERING=<file>`, see
//! `daemon.rs`) stalls or panics the metering loop; `/healthz` must then fail with a body naming
//! how long the loop has been silent, and a panic must end the process.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::loki::LokiReceiver;
use crate::common::*;
use serde_json::Value;

/// Deadline of every wait on the daemon.
const WAIT: Duration = Duration::from_secs(60);

/// The counters compared, with their column in `Expected` (requests, input, output, total).
const COUNTERS: [(&str, usize); 4] = [
    ("llm_requests_total", 0),
    ("llm_input_tokens_total", 1),
    ("llm_output_tokens_total", 2),
    ("llm_tokens_total", 3),
];

/// The expected totals, shared with the scrape monitor.
type Exp = Arc<Mutex<Expected>>;

fn new_exp() -> Exp {
    Arc::new(Mutex::new(Expected::default()))
}

fn snapshot(exp: &Exp) -> Expected {
    exp.lock().unwrap().clone()
}

/// Appends records `range` to `path` as CRI lines; they are added to `exp` before they are
/// written, so `exp` always bounds what the daemon can have read.
fn write_records(path: &Path, range: std::ops::Range<u64>, exp: &Exp) {
    let mut text = String::new();
    {
        let mut e = exp.lock().unwrap();
        for i in range {
            text.push_str(&cri(&record_line(i, &mut e)));
        }
    }
    append(path, &text);
}

/// Waits up to `limit` for the process to exit; `None` if it still runs.
fn wait_exit(d: &mut Daemon, limit: Duration) -> Option<ExitStatus> {
    let t = Instant::now();
    loop {
        if let Ok(Some(status)) = d.child.try_wait() {
            return Some(status);
        }
        if t.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM {pid} failed");
}

/// SIGTERM, then the exit code (the test fails if the daemon takes more than `WAIT`).
fn terminate(d: &mut Daemon) -> Option<i32> {
    sigterm(d.child.id());
    match wait_exit(d, WAIT) {
        Some(status) => status.code(),
        None => panic!(
            "daemon still running {WAIT:?} after SIGTERM; log:\n{}",
            log_tail(d)
        ),
    }
}

/// The last 80 lines of the daemon's log, for failure messages.
fn log_tail(d: &Daemon) -> String {
    let text = d.log_text();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Comparing counts.

/// A description of every series and counter where `m` shows more than `want`, if any.
fn over_count(m: &Metrics, want: &Expected) -> Option<String> {
    let mut over = Vec::new();
    for (name, col) in COUNTERS {
        let want_col = want.column(col);
        for (k, got) in m.by_series(name) {
            let w = want_col.get(&k).copied().unwrap_or(0);
            if got > w {
                over.push(format!("{name}{k:?}: {got} > {w} written"));
            }
        }
    }
    if over.is_empty() {
        return None;
    }
    let got = m.sum("llm_tokens_total", &[]) as u64;
    Some(format!(
        "llm_tokens_total {got} > {} written; {} counter(s) over, first: {}",
        want.total(),
        over.len(),
        over[..over.len().min(3)].join("; ")
    ))
}

fn exact(m: &Metrics, want: &Expected) -> bool {
    COUNTERS
        .iter()
        .all(|(name, col)| m.by_series(name) == want.column(*col))
}

/// Waits until `/metrics` shows exactly the expected four counters of every series. Fails at
/// once if a scrape shows more than was written (counted twice), else after `WAIT`.
fn wait_exact(d: &Daemon, exp: &Exp, what: &str) -> Metrics {
    let t = Instant::now();
    let mut last = String::from("no scrape answered");
    loop {
        if let Some(m) = d.metrics() {
            // Read after the scrape: it bounds what the scrape can show.
            let want = snapshot(exp);
            if exact(&m, &want) {
                return m;
            }
            if let Some(over) = over_count(&m, &want) {
                panic!(
                    "{what}: counted more than was written (counted twice): {over}\nlog:\n{}",
                    log_tail(d)
                );
            }
            last = format!(
                "llm_tokens_total {:?}, expected {:?}",
                m.by_series("llm_tokens_total"),
                want.column(3)
            );
        }
        if t.elapsed() > WAIT {
            panic!(
                "{what}: /metrics not exact after {WAIT:?}: {last}\nlog:\n{}",
                log_tail(d)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The replay summary's series as `Expected::series`.
fn replay_series(v: &Value) -> BTreeMap<SeriesKey, (u64, u64, u64, u64)> {
    let n = |s: &Value, k: &str| s[k].as_u64().unwrap();
    let t = |s: &Value, k: &str| s[k].as_str().unwrap().to_string();
    v["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                (t(s, "model"), t(s, "api_key_id"), t(s, "service_id")),
                (
                    n(s, "requests"),
                    n(s, "input_tokens"),
                    n(s, "output_tokens"),
                    n(s, "total_tokens"),
                ),
            )
        })
        .collect()
}

/// The final check of a test: `/metrics` exact, and the same totals from `replay` of `files`.
/// Returns the final scrape and the replay summary.
fn assert_final(d: &Daemon, exp: &Exp, files: &[PathBuf], what: &str) -> (Metrics, Value) {
    let m = wait_exact(d, exp, what);
    let want = snapshot(exp);
    let r = replay_json(files);
    let rs = replay_series(&r);
    assert_eq!(
        rs, want.series,
        "{what}: replay of the same bytes differs from what the test wrote"
    );
    for (name, col) in COUNTERS {
        let from_replay: BTreeMap<SeriesKey, u64> = rs
            .iter()
            .map(|(k, v)| (k.clone(), [v.0, v.1, v.2, v.3][col]))
            .collect();
        assert_eq!(m.by_series(name), from_replay, "{what}: {name} vs replay");
    }
    (m, r)
}

// ---------------------------------------------------------------------------------------------
// The scrape monitor: no scrape during a fault may show more than was written.

#[derive(Debug, Default)]
struct MonitorReport {
    scrapes: u64,
    failed_scrapes: u64,
    max_tokens: u64,
    /// The first scrape that showed more than had been written by then.
    first_over: Option<String>,
    overs: u64,
    /// The most descriptors the daemon held on files under the watched root at once.
    max_fds_under_root: usize,
}

struct Monitor {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<MonitorReport>>,
}

impl Monitor {
    /// Scrapes `addr` every 50 ms until `finish`. With `fds`, also samples how many of the
    /// process's descriptors point under the root.
    fn start(addr: &str, exp: &Exp, fds: Option<(u32, PathBuf)>) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, exp, addr) = (stop.clone(), exp.clone(), addr.to_string());
            std::thread::spawn(move || {
                let mut r = MonitorReport::default();
                let started = Instant::now();
                while !stop.load(Ordering::SeqCst) {
                    if let Some((pid, root)) = &fds {
                        r.max_fds_under_root = r.max_fds_under_root.max(fds_under(*pid, root));
                    }
                    match get(&addr, "/metrics") {
                        Ok((200, body)) => {
                            let m = Metrics::parse(&body);
                            let want = snapshot(&exp);
                            r.scrapes += 1;
                            r.max_tokens = r.max_tokens.max(m.sum("llm_tokens_total", &[]) as u64);
                            if let Some(over) = over_count(&m, &want) {
                                r.overs += 1;
                                r.first_over.get_or_insert_with(|| {
                                    format!("at {:?} into the fault: {over}", started.elapsed())
                                });
                            }
                        }
                        _ => r.failed_scrapes += 1,
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                r
            })
        };
        Monitor {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the monitor; fails if any scrape showed more than had been written.
    fn finish(mut self, what: &str) -> MonitorReport {
        self.stop.store(true, Ordering::SeqCst);
        let r = self.thread.take().unwrap().join().unwrap();
        assert!(r.scrapes > 0, "{what}: no scrape answered during the fault");
        assert!(
            r.first_over.is_none(),
            "{what}: {} scrape(s) showed more than had been written (counted twice); first {}; \
             max llm_tokens_total seen {}",
            r.overs,
            r.first_over.as_deref().unwrap_or(""),
            r.max_tokens
        );
        r
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// How many of `pid`'s open descriptors point at regular files under `root`.
fn fds_under(pid: u32, root: &Path) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            // Regular files only: a directory held open for a scan is not a tailed file.
            std::fs::read_link(e.path()).is_ok_and(|target| target.starts_with(root))
                && std::fs::metadata(e.path()).is_ok_and(|m| m.is_file())
        })
        .count()
}

// ---------------------------------------------------------------------------------------------
// /status.

fn status(d: &Daemon) -> Option<Value> {
    match get(&d.addr, "/status") {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// The `/status` entry of the file with inode `ino`, if listed.
fn entry_of(s: &Value, ino: u64) -> Option<&Value> {
    s["files"]
        .as_array()?
        .iter()
        .find(|f| f["inode"].as_u64() == Some(ino))
}

fn ino(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

/// Waits until `/status` shows the committed offset of each file equal to its size on disk
/// (every complete line in it counted).
fn wait_offsets_at_end(d: &Daemon, files: &[PathBuf], what: &str) {
    let mut last = String::new();
    let t = Instant::now();
    loop {
        if let Some(s) = status(d) {
            let behind: Vec<String> = files
                .iter()
                .filter_map(|p| {
                    let md = std::fs::metadata(p).unwrap();
                    let off = entry_of(&s, md.ino()).and_then(|e| e["offset"].as_u64());
                    (off != Some(md.len()))
                        .then(|| format!("{}: offset {off:?} of {}", p.display(), md.len()))
                })
                .collect();
            if behind.is_empty() {
                return;
            }
            last = behind.join("; ");
        }
        if t.elapsed() > WAIT {
            panic!("{what}: /status offsets never reached the file sizes: {last}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// 1. A file renamed out of the glob and back.

#[test]
fn a_file_renamed_out_of_the_glob_and_back_is_counted_once() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let dir = pod_dir(&root, "gw-rename");
    let (a, held) = (dir.join("a.log"), dir.join("a.log.hold"));
    let exp = new_exp();
    let cfg = config(&root, &tmp.path().join("state"), "", "");
    let d = Daemon::start(tmp.path(), "rename", &cfg);

    write_records(&a, 0..300, &exp);
    wait_offsets_at_end(&d, std::slice::from_ref(&a), "a.log written");
    wait_exact(&d, &exp, "a.log written");

    let monitor = Monitor::start(&d.addr, &exp, None);
    let inode = ino(&a);
    // Out of the glob (`*.log` does not match `a.log.hold`), and written to while held.
    std::fs::rename(&a, &held).unwrap();
    write_records(&held, 300..360, &exp);
    // Wait until the daemon has let it go: `/status` shows the identity as "remembered" (its
    // descriptor closed, identity and offset kept). Before this, the rename back could be
    // taken for a file that never left.
    let how = wait_until(
        "the daemon to let go of a.log.hold (state \"remembered\")",
        WAIT,
        || {
            let s = status(&d)?;
            match entry_of(&s, inode) {
                Some(e) if e["state"] == "remembered" => Some("remembered".to_string()),
                _ => None,
            }
        },
    );
    // Back into the glob, same inode, and written on.
    std::fs::rename(&held, &a).unwrap();
    assert_eq!(ino(&a), inode);
    write_records(&a, 360..500, &exp);
    wait_offsets_at_end(&d, std::slice::from_ref(&a), "a.log back");
    let (m, r) = assert_final(
        &d,
        &exp,
        std::slice::from_ref(&a),
        &format!("a.log renamed back after the daemon let it go ({how})"),
    );
    monitor.finish("rename out of the glob and back");
    assert_eq!(
        m.sum("tokenmeter_lines_total", &[("result", "record")]) as u64,
        r["records"].as_u64().unwrap(),
        "records read vs replay"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. The log directory unreadable for 3 s, the daemon an unprivileged user.

const NOBODY: u32 = 65534;

fn euid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// The real, effective, saved and fs uids of `pid`.
fn uids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Gives a directory its mode back when dropped (also when the test fails during the fault).
struct RestoreMode(PathBuf, u32);

impl Drop for RestoreMode {
    fn drop(&mut self) {
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(self.1));
    }
}

/// What shows a permission error: the metrics or `/status` of the contract.
fn permission_error_shown(d: &Daemon) -> Option<String> {
    if let Some(m) = d.metrics() {
        let errors = m.sum("tokenmeter_file_errors_total", &[("reason", "permission")]);
        if errors > 0.0 {
            return Some(format!(
                "tokenmeter_file_errors_total{{reason=\"permission\"}} {errors}"
            ));
        }
        let unreadable = m.sum("tokenmeter_files_unreadable", &[]);
        if unreadable > 0.0 {
            return Some(format!("tokenmeter_files_unreadable {unreadable}"));
        }
    }
    let s = status(d)?;
    s["files"]
        .as_array()?
        .iter()
        .find_map(|f| (f["error"]["reason"] == "permission").then(|| format!("/status: {f}")))
}

#[test]
fn an_unreadable_log_directory_for_3s_loses_and_doubles_nothing() {
    assert_eq!(
        euid(),
        0,
        "this test runs as root (as in CI): it starts the daemon as uid {NOBODY} with setpriv"
    );
    let tmp = tempfile::tempdir().unwrap();
    // Everything the daemon needs is reachable by the unprivileged user: the binary is copied
    // into the test's directory (the build directory may be private), the state dir is its own.
    chmod(tmp.path(), 0o755);
    let binary = tmp.path().join("tokenmeter");
    std::fs::copy(bin(), &binary).unwrap();
    chmod(&binary, 0o755);
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(NOBODY), Some(NOBODY)).unwrap();
    let root = tmp.path().join("pods");
    let dir = pod_dir(&root, "gw-perm");
    for p in [&root, dir.parent().unwrap(), &dir] {
        chmod(p, 0o755);
    }
    let files = [dir.join("0.log"), dir.join("1.log")];
    let exp = new_exp();
    write_records(&files[0], 0..200, &exp);
    write_records(&files[1], 10_000..10_100, &exp);
    for f in &files {
        chmod(f, 0o644);
    }

    let cfg = config(&root, &state, "", "");
    let wrapper = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    let d = Daemon::spawn(tmp.path(), "perm", &cfg, &wrapper, &binary).healthy();
    assert_eq!(
        uids(d.child.id()),
        vec![NOBODY; 4],
        "the daemon runs as the unprivileged user"
    );
    wait_offsets_at_end(&d, &files, "before the fault");
    wait_exact(&d, &exp, "before the fault");

    let monitor = Monitor::start(&d.addr, &exp, None);
    // The fault: the directory unreadable (mode 000, owned by root) for 3 s — and, should the
    // daemon not have reported it by then, until it has (at most 30 s), so the report is
    // checked without depending on timing. Lines keep being appended (root writes through
    // the mode bits) every 500 ms, to both files.
    let guard = RestoreMode(dir.clone(), 0o755);
    chmod(&dir, 0o000);
    let t = Instant::now();
    let mut shown = None;
    let mut i = 0u64;
    let longest = Duration::from_secs(30);
    while t.elapsed() < Duration::from_secs(3) || (shown.is_none() && t.elapsed() < longest) {
        if i.is_multiple_of(5) {
            let batch = 1000 + i * 4;
            write_records(&files[(i / 5 % 2) as usize], batch..batch + 20, &exp);
        }
        i += 1;
        if shown.is_none() {
            shown = permission_error_shown(&d);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let fault = t.elapsed();
    drop(guard);
    // Written on after the fault.
    write_records(&files[0], 5000..5100, &exp);
    write_records(&files[1], 15_000..15_050, &exp);
    wait_offsets_at_end(&d, &files, "after the fault");
    let (m, r) = assert_final(
        &d,
        &exp,
        &files,
        &format!(
            "after the directory was unreadable for {fault:?} (error reported during it: {})",
            shown.as_deref().unwrap_or("no")
        ),
    );
    monitor.finish("unreadable directory");
    assert_eq!(
        m.sum("tokenmeter_lines_total", &[("result", "record")]) as u64,
        r["records"].as_u64().unwrap(),
        "records read vs replay"
    );
    assert!(
        shown.is_some(),
        "during {fault:?} of EACCES on {}, neither tokenmeter_file_errors_total{{reason=\"permission\"}}, \
         tokenmeter_files_unreadable nor a /status error showed it; log:\n{}",
        dir.display(),
        log_tail(&d)
    );
}

// ---------------------------------------------------------------------------------------------
// 3. 300 files under a 256-descriptor limit, then a restart without it.

#[test]
fn three_hundred_files_under_nofile_256_are_counted_once_then_exact_after_a_restart_without_the_limit(
) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let state = tmp.path().join("state");
    let exp = new_exp();
    let files: Vec<PathBuf> = (0..300u64)
        .map(|f| pod_dir(&root, &format!("gw-{f:03}")).join("0.log"))
        .collect();
    for (f, path) in files.iter().enumerate() {
        let base = f as u64 * 1000;
        write_records(path, base..base + 20, &exp);
    }
    let cfg = config(&root, &state, "", "");
    let wrapper = ["prlimit", "--nofile=256:256"];
    let mut d = Daemon::spawn(tmp.path(), "nofile", &cfg, &wrapper, &bin()).healthy();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.child.id())).unwrap();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect::<Vec<_>>();
    assert_eq!(nofile, ["256", "256"], "the daemon runs under the limit");

    let monitor = Monitor::start(&d.addr, &exp, Some((d.child.id(), root.clone())));
    wait_exact(&d, &exp, "300 files under nofile=256");
    // Every file grows again (idle files closed to save descriptors are reopened).
    for (f, path) in files.iter().enumerate() {
        let base = f as u64 * 1000 + 20;
        write_records(path, base..base + 10, &exp);
    }
    wait_offsets_at_end(&d, &files, "300 files grown under nofile=256");
    let m = wait_exact(&d, &exp, "300 files grown under nofile=256");
    let limit = m.sum("tokenmeter_open_files_limit", &[]);
    let report = monitor.finish("300 files under nofile=256");
    assert!(
        limit > 0.0 && limit < 256.0,
        "tokenmeter_open_files_limit is {limit}: expected a cap below the 256 descriptors"
    );
    assert!(
        report.max_fds_under_root as f64 <= limit,
        "{} descriptors on log files at once, above tokenmeter_open_files_limit {limit}",
        report.max_fds_under_root
    );
    assert_eq!(terminate(&mut d), Some(0), "log:\n{}", log_tail(&d));
    drop(d);

    // The same state, no limit: exact, and exact after more lines.
    let d = Daemon::start(tmp.path(), "nofile-after", &cfg);
    let monitor = Monitor::start(&d.addr, &exp, None);
    wait_exact(&d, &exp, "restart without the limit");
    for (f, path) in files.iter().enumerate() {
        let base = f as u64 * 1000 + 30;
        write_records(path, base..base + 10, &exp);
    }
    wait_offsets_at_end(&d, &files, "restart without the limit, grown");
    assert_final(&d, &exp, &files, "restart without the limit, grown");
    monitor.finish("restart without the limit");
}

// ---------------------------------------------------------------------------------------------
// 4. SIGTERM with OTLP and Loki endpoints that accept and never answer.

/// A TCP server that accepts connections, reads and discards what arrives, and never answers.
/// It keeps every accepted connection open until `stop`, and records each request line.
struct HungServer {
    addr: String,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
    acceptor: Option<JoinHandle<Vec<JoinHandle<()>>>>,
}

impl HungServer {
    fn start() -> HungServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (stop, requests) = (stop.clone(), requests.clone());
            std::thread::spawn(move || {
                let mut conns = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            let (stop, requests) = (stop.clone(), requests.clone());
                            conns.push(std::thread::spawn(move || {
                                s.set_nonblocking(false).unwrap();
                                s.set_read_timeout(Some(Duration::from_millis(100)))
                                    .unwrap();
                                let mut head = Vec::new();
                                let mut buf = [0u8; 16384];
                                while !stop.load(Ordering::SeqCst) {
                                    match s.read(&mut buf) {
                                        Ok(0) => break, // the client closed it
                                        Ok(n) => {
                                            if head.len() < 4096 {
                                                let had_line = head.contains(&b'\n');
                                                head.extend_from_slice(&buf[..n]);
                                                if !had_line && head.contains(&b'\n') {
                                                    let line = String::from_utf8_lossy(&head);
                                                    let line = line.lines().next().unwrap_or("");
                                                    requests.lock().unwrap().push(line.to_string());
                                                }
                                            }
                                        }
                                        Err(e)
                                            if matches!(
                                                e.kind(),
                                                std::io::ErrorKind::WouldBlock
                                                    | std::io::ErrorKind::TimedOut
                                            ) => {}
                                        Err(_) => break,
                                    }
                                }
                                // Held open until here: never an answer, never a close first.
                                drop(s);
                            }));
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
                conns
            })
        };
        HungServer {
            addr,
            stop,
            requests,
            acceptor: Some(acceptor),
        }
    }

    fn saw(&self, path: &str) -> bool {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(path))
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            for c in a.join().unwrap() {
                let _ = c.join();
            }
        }
    }
}

impl Drop for HungServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn sigterm_with_hung_otlp_and_loki_endpoints_exits_within_shutdown_timeout_plus_1s() {
    let shutdown_timeout = Duration::from_secs(3);
    // The contract's bound is shutdown_timeout + 1 s from the signal; the 0.5 s on top is for
    // this test's side: spawning `kill`, and polling the exit every 10 ms on a busy machine.
    let allowed = shutdown_timeout + Duration::from_secs(1) + Duration::from_millis(500);

    let mut hung = HungServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let dir = pod_dir(&root, "gw-term");
    let log = dir.join("0.log");
    let state = tmp.path().join("state");
    let exp = new_exp();
    write_records(&log, 0..300, &exp);
    let sections = format!(
        "[otlp]\nendpoint = \"http://{a}/otlp/v1/metrics\"\ninterval = \"500ms\"\ntimeout = \"30s\"\n\
         [loki]\nendpoint = \"http://{a}/loki/api/v1/push\"\nbatch_wait = \"200ms\"\ntimeout = \"30s\"\n",
        a = hung.addr
    );
    let cfg = config(
        &root,
        &state,
        "node_name = \"node-term\"\nshutdown_timeout = \"3s\"",
        &sections,
    );
    let mut d = Daemon::start(tmp.path(), "term", &cfg);
    let monitor = Monitor::start(&d.addr, &exp, None);
    write_records(&log, 300..400, &exp);
    wait_offsets_at_end(&d, std::slice::from_ref(&log), "before SIGTERM");
    wait_exact(&d, &exp, "before SIGTERM");
    // Both exporters have a request in flight on a connection that never answers.
    wait_until(
        "an OTLP push and a Loki push to reach the hung endpoint",
        WAIT,
        || (hung.saw("/otlp/v1/metrics") && hung.saw("/loki/api/v1/push")).then_some(()),
    );
    monitor.finish("before SIGTERM");

    let t = Instant::now();
    sigterm(d.child.id());
    // Waits past the bound (up to 90 s) only to report how long the exit really took.
    let exited = wait_exit(&mut d, Duration::from_secs(90));
    let took = t.elapsed();
    if exited.is_none() {
        d.kill9();
    }
    assert!(
        took <= allowed,
        "SIGTERM with hung exporters: {} after {took:?}, allowed {allowed:?} \
         (shutdown_timeout 3 s + 1 s + 0.5 s for the test); log:\n{}",
        match exited {
            Some(s) => format!("exited ({s})"),
            None => "still running (killed)".to_string(),
        },
        log_tail(&d)
    );
    assert_eq!(
        exited.and_then(|s| s.code()),
        Some(0),
        "exit code after SIGTERM; log:\n{}",
        log_tail(&d)
    );
    drop(d);
    hung.stop();

    // A working setup on the same state: nothing lost, nothing counted twice, and every line
    // delivered to Loki exactly once (none was acknowledged by the hung endpoint).
    let r = LokiReceiver::start();
    let sections = format!(
        "[loki]\nendpoint = \"{}\"\nbatch_wait = \"200ms\"\n",
        r.endpoint()
    );
    let cfg = config(&root, &state, "node_name = \"node-term\"", &sections);
    let d = Daemon::start(tmp.path(), "term-after", &cfg);
    let monitor = Monitor::start(&d.addr, &exp, None);
    wait_exact(&d, &exp, "restart after SIGTERM");
    write_records(&log, 400..450, &exp);
    wait_offsets_at_end(
        &d,
        std::slice::from_ref(&log),
        "restart after SIGTERM, grown",
    );
    assert_final(
        &d,
        &exp,
        std::slice::from_ref(&log),
        "restart after SIGTERM, grown",
    );
    monitor.finish("restart after SIGTERM");

    let mut want_lines: BTreeMap<String, usize> = BTreeMap::new();
    let mut scratch = Expected::default();
    for i in 0..450 {
        *want_lines.entry(record_line(i, &mut scratch)).or_insert(0) += 1;
    }
    let n: usize = want_lines.values().sum();
    // Delivered: the receiver holds as many entries as lines were written, and the daemon
    // reports no undelivered backlog (so nothing more is on its way).
    wait_until("every line in Loki and no Loki backlog", WAIT, || {
        let lag = status(&d)?["exporters"]["loki"]["lag_bytes"].as_u64()?;
        (r.entries().len() >= n && lag == 0).then_some(())
    });
    let mut got_lines: BTreeMap<String, usize> = BTreeMap::new();
    for e in r.entries() {
        *got_lines.entry(e.line).or_insert(0) += 1;
    }
    assert_eq!(got_lines, want_lines, "each line in Loki exactly once");
}

// ---------------------------------------------------------------------------------------------
// 5. Two daemons on one state dir.

#[test]
fn a_second_daemon_on_the_same_state_dir_exits_2_naming_the_first_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let dir = pod_dir(&root, "gw-lock");
    let log = dir.join("0.log");
    let exp = new_exp();
    write_records(&log, 0..100, &exp);
    let cfg = config(&root, &tmp.path().join("state"), "", "");
    let mut first = Daemon::start(tmp.path(), "first", &cfg);
    wait_exact(&first, &exp, "first daemon");
    let first_pid = first.child.id();

    let mut second = Daemon::spawn(tmp.path(), "second", &cfg, &[], &bin());
    let exited = wait_exit(&mut second, Duration::from_secs(10));
    let healthy = matches!(get(&second.addr, "/healthz"), Ok((200, _)));
    if exited.is_none() {
        second.kill9();
    }
    let stderr = second.log_text();
    assert_eq!(
        exited.map(|s| s.code()),
        Some(Some(2)),
        "a second daemon on the same state dir must exit 2 at once; it {} (/healthz 200: \
         {healthy}); its stderr:\n{stderr}",
        match exited {
            Some(s) => format!("exited ({s})"),
            None => "was still running after 10 s".to_string(),
        }
    );
    assert!(
        stderr.contains(&format!("pid {first_pid}")),
        "its message names the first daemon (\"pid {first_pid}\"): {stderr}"
    );
    // The first one runs on, undisturbed.
    assert_eq!(get(&first.addr, "/healthz").unwrap().0, 200);
    write_records(&log, 100..150, &exp);
    wait_exact(&first, &exp, "first daemon after the second one left");

    // A stale lock (the holder killed with SIGKILL) is taken over.
    first.kill9();
    let third = Daemon::start(tmp.path(), "third", &cfg);
    assert_eq!(get(&third.addr, "/healthz").unwrap().0, 200);
    write_records(&log, 150..200, &exp);
    assert_final(
        &third,
        &exp,
        std::slice::from_ref(&log),
        "third daemon, after the first was killed",
    );
}

// ---------------------------------------------------------------------------------------------
// 6. A second signal, and a state that cannot be written.

#[test]
fn a_second_sigterm_writes_the_state_and_exits_at_once() {
    let mut hung = HungServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let log = pod_dir(&root, "gw-twice").join("0.log");
    let state = tmp.path().join("state");
    let exp = new_exp();
    let sections = format!(
        "[loki]\nendpoint = \"http://{}/loki/api/v1/push\"\nbatch_wait = \"200ms\"\ntimeout = \"60s\"\n",
        hung.addr
    );
    // A long deadline: only the second signal can make the exit quick.
    let cfg = config(&root, &state, "shutdown_timeout = \"60s\"", &sections);
    let mut d = Daemon::start(tmp.path(), "twice", &cfg);
    write_records(&log, 0..300, &exp);
    wait_offsets_at_end(&d, std::slice::from_ref(&log), "before the signals");
    wait_exact(&d, &exp, "before the signals");
    wait_until("a Loki push to hang", WAIT, || {
        hung.saw("/loki/api/v1/push").then_some(())
    });
    sigterm(d.child.id());
    // The first signal was taken (reading stopped, first state write) before the second.
    wait_until("the shutdown to begin", WAIT, || {
        d.log_text().contains("shutting down").then_some(())
    });
    let t = Instant::now();
    sigterm(d.child.id());
    let exited = wait_exit(&mut d, Duration::from_secs(20));
    let took = t.elapsed();
    if exited.is_none() {
        d.kill9();
    }
    assert!(
        took < Duration::from_secs(3),
        "second SIGTERM: {exited:?} after {took:?} (shutdown_timeout 60 s); log:\n{}",
        log_tail(&d)
    );
    assert_eq!(exited.and_then(|s| s.code()), Some(0), "{}", log_tail(&d));
    drop(d);
    hung.stop();
    // The state it wrote: a restart is exact, and grows exactly.
    let cfg = config(&root, &state, "", "");
    let d = Daemon::start(tmp.path(), "twice-after", &cfg);
    write_records(&log, 300..350, &exp);
    wait_offsets_at_end(&d, std::slice::from_ref(&log), "after the restart");
    assert_final(
        &d,
        &exp,
        std::slice::from_ref(&log),
        "after a second SIGTERM",
    );
}

#[test]
fn a_state_that_cannot_be_written_is_reported_exits_1_and_costs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let log = pod_dir(&root, "gw-state").join("0.log");
    let state = tmp.path().join("state");
    let exp = new_exp();
    let cfg = config(&root, &state, "", "");
    let mut d = Daemon::start(tmp.path(), "nostate", &cfg);
    write_records(&log, 0..200, &exp);
    wait_offsets_at_end(&d, std::slice::from_ref(&log), "before the fault");
    wait_exact(&d, &exp, "before the fault");
    wait_until("a successful state write", WAIT, || {
        let m = d.metrics()?;
        let ok = m.sum(
            "tokenmeter_checkpoint_writes_total",
            &[("outcome", "success")],
        );
        (ok >= 1.0).then_some(())
    });
    // The temp file's name taken by a directory: every write fails, even as root (as a full
    // or read-only file system would make it fail).
    let blocker = state.join("state.json.tmp");
    std::fs::create_dir(&blocker).unwrap();
    write_records(&log, 200..300, &exp);
    wait_offsets_at_end(&d, std::slice::from_ref(&log), "during the fault");
    wait_exact(
        &d,
        &exp,
        "counting goes on while the state cannot be written",
    );
    wait_until("failed state writes reported", WAIT, || {
        let m = d.metrics()?;
        (m.sum(
            "tokenmeter_checkpoint_writes_total",
            &[("outcome", "failure")],
        ) >= 1.0)
            .then_some(())
    });
    assert_eq!(
        terminate(&mut d),
        Some(1),
        "exit 1 when the final state cannot be written; log:\n{}",
        log_tail(&d)
    );
    assert!(
        d.log_text().contains("cannot write state"),
        "{}",
        log_tail(&d)
    );
    drop(d);
    std::fs::remove_dir(&blocker).unwrap();
    // From the last state that was written: the lines after it are read again, once.
    let d = Daemon::start(tmp.path(), "nostate-after", &cfg);
    write_records(&log, 300..320, &exp);
    wait_offsets_at_end(&d, std::slice::from_ref(&log), "after the restart");
    assert_final(
        &d,
        &exp,
        std::slice::from_ref(&log),
        "after failed state writes",
    );
}

#[test]
fn after_a_restart_more_busy_files_than_descriptors_still_become_ready_and_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let files: Vec<PathBuf> = ["gw-b1", "gw-b2", "gw-b3"]
        .iter()
        .map(|p| pod_dir(&root, p).join("0.log"))
        .collect();
    let state = tmp.path().join("state");
    let exp = new_exp();
    let cfg = config(&root, &state, "", "").replace("[source]\n", "[source]\nmax_open_files = 2\n");
    let mut d = Daemon::start(tmp.path(), "busy", &cfg);
    // Three files written all the time, two descriptors.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, files, exp) = (stop.clone(), files.clone(), exp.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                for (k, f) in files.iter().enumerate() {
                    write_records(
                        f,
                        (k as u64 + 1) * 1_000_000 + i..(k as u64 + 1) * 1_000_000 + i + 3,
                        &exp,
                    );
                }
                i += 3;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    wait_until("the first run to be ready", WAIT, || {
        matches!(get(&d.addr, "/readyz"), Ok((200, _))).then_some(())
    });
    assert_eq!(terminate(&mut d), Some(0), "{}", log_tail(&d));
    drop(d);
    let d = Daemon::start(tmp.path(), "busy-again", &cfg);
    wait_until(
        "the restarted daemon to become ready while three busy files share two descriptors",
        WAIT,
        || matches!(get(&d.addr, "/readyz"), Ok((200, _))).then_some(()),
    );
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    wait_offsets_at_end(&d, &files, "after the writer stopped");
    assert_final(
        &d,
        &exp,
        &files,
        "three busy files, two descriptors, a restart",
    );
}

// ---------------------------------------------------------------------------------------------
// Liveness (issue 14).

/// The seconds in `/healthz`'s 503 body: "metering loop stalled: no heartbeat for <s>s (…)".
fn stalled_for(body: &str) -> Option<f64> {
    body.strip_prefix("metering loop stalled: no heartbeat for ")?
        .split_once("s (server.liveness_timeout = 2s)\n")
        .filter(|(_, rest)| rest.is_empty())?
        .0
        .parse()
        .ok()
}

#[test]
fn healthz_fails_while_the_metering_loop_makes_no_progress_and_recovers_after() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let state = tmp.path().join("state");
    let log = pod_dir(&root, "gw-live").join("0.log");
    let exp = new_exp();
    write_records(&log, 0..20, &exp);
    let fault = tmp.path().join("fault");
    std::fs::write(&fault, "").unwrap();
    let cfg = config(&root, &state, "", "[server]\nliveness_timeout = \"2s\"\n");
    let fault_env = fault.to_str().unwrap();
    let mut d = Daemon::spawn_env(
        tmp.path(),
        "live",
        &cfg,
        &[],
        &bin(),
        &[("TOKENMETER_FAULT_METERING", fault_env)],
    )
    .healthy();
    wait_exact(&d, &exp, "before the stall");
    // An idle node is alive: nothing is written for longer than the timeout, /healthz stays ok.
    let idle_from = Instant::now();
    while idle_from.elapsed() < Duration::from_secs(3) {
        assert_eq!(get(&d.addr, "/healthz").unwrap(), (200, "ok\n".to_string()));
        std::thread::sleep(Duration::from_millis(200));
    }

    std::fs::write(&fault, "stall").unwrap();
    let stalled_at = Instant::now();
    let body = wait_until("/healthz to fail during the stall", WAIT, || {
        match get(&d.addr, "/healthz") {
            Ok((503, body)) => Some(body),
            _ => None,
        }
    });
    let secs = stalled_for(&body).unwrap_or_else(|| panic!("unexpected 503 body {body:?}"));
    assert!(secs >= 2.0, "{body:?}");
    assert!(
        secs <= stalled_at.elapsed().as_secs_f64() + 1.0,
        "{body:?} after {:?}",
        stalled_at.elapsed()
    );
    // Lines written during the stall are not counted yet; /readyz and /metrics still answer.
    write_records(&log, 20..40, &exp);
    assert!(matches!(get(&d.addr, "/readyz"), Ok((200, _))));

    std::fs::write(&fault, "").unwrap();
    wait_until("/healthz ok after the stall", WAIT, || {
        (get(&d.addr, "/healthz").ok()? == (200, "ok\n".to_string())).then_some(())
    });
    wait_exact(&d, &exp, "after the stall");
    assert_eq!(terminate(&mut d), Some(0), "{}", log_tail(&d));
}

#[test]
fn a_panic_on_the_metering_thread_ends_the_process() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let state = tmp.path().join("state");
    let exp = new_exp();
    write_records(&pod_dir(&root, "gw-panic").join("0.log"), 0..5, &exp);
    let fault = tmp.path().join("fault");
    std::fs::write(&fault, "").unwrap();
    let cfg = config(&root, &state, "", "");
    let mut d = Daemon::spawn_env(
        tmp.path(),
        "panic",
        &cfg,
        &[],
        &bin(),
        &[("TOKENMETER_FAULT_METERING", fault.to_str().unwrap())],
    )
    .healthy();
    wait_exact(&d, &exp, "before the panic");
    std::fs::write(&fault, "panic").unwrap();
    let status = wait_exit(&mut d, WAIT).unwrap_or_else(|| {
        panic!(
            "still running {WAIT:?} after the metering thread panicked; log:\n{}",
            log_tail(&d)
        )
    });
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status}");
    let log = d.log_text();
    assert!(
        log.contains("injected fault: TOKENMETER_FAULT_METERING=panic")
            && log.contains("a thread panicked; aborting"),
        "{}",
        log_tail(&d)
    );
}

// ---------------------------------------------------------------------------------------------
// The pod's security context (issue 14): uid 0 with every capability dropped.

/// Runs the daemon as the DaemonSet does: uid 0, no capabilities at all (bounding, inheritable
/// and ambient sets emptied, so the exec leaves root none), no new privileges.
const NO_CAPS: [&str; 5] = [
    "setpriv",
    "--inh-caps=-all",
    "--ambient-caps=-all",
    "--bounding-set=-all",
    "--no-new-privs",
];

/// `CapEff` of `pid`, as hex.
fn effective_caps(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default()
}

#[test]
fn as_uid_0_without_capabilities_it_reads_0600_root_logs_and_keeps_its_state() {
    assert_eq!(euid(), 0, "this test runs as root (as in CI)");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let dir = pod_dir(&root, "gw-crio");
    // CRI-O's conmon: directories 0700 and log files 0600, root's; the state directory as
    // kubelet's DirectoryOrCreate makes it (root, 0755).
    for p in [&root, dir.parent().unwrap(), &dir] {
        chmod(p, 0o700);
    }
    let log = dir.join("0.log");
    let exp = new_exp();
    write_records(&log, 0..100, &exp);
    chmod(&log, 0o600);
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    chmod(&state, 0o755);
    let cfg = config(&root, &state, "", "");
    let mut d = Daemon::spawn(tmp.path(), "nocaps", &cfg, &NO_CAPS, &bin()).healthy();
    assert_eq!(uids(d.child.id()), vec![0; 4]);
    assert_eq!(effective_caps(d.child.id()), "0000000000000000");
    wait_exact(&d, &exp, "uid 0 without capabilities");
    write_records(&log, 100..150, &exp);
    wait_exact(&d, &exp, "appended");
    assert_eq!(terminate(&mut d), Some(0), "{}", log_tail(&d));
    drop(d);
    // The state it wrote is its own: a restart resumes from it (nothing counted twice).
    let d = Daemon::spawn(tmp.path(), "nocaps-again", &cfg, &NO_CAPS, &bin()).healthy();
    write_records(&log, 150..160, &exp);
    wait_exact(&d, &exp, "after a restart without capabilities");
    assert!(d.log_text().contains("resumed from"), "{}", log_tail(&d));
}

/// A state directory left by the earlier manifests (uid 65532, 0700): uid 0 without
/// capabilities cannot use it. The agent must say why and how to fix it, and never move a
/// state it could not read aside as corrupt (that would reset every counter).
#[test]
fn a_state_dir_of_another_uid_is_refused_with_the_fix_and_its_state_is_kept() {
    assert_eq!(euid(), 0, "this test runs as root (as in CI)");
    const OLD_UID: u32 = 65532;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("pods");
    let exp = new_exp();
    write_records(&pod_dir(&root, "gw-old").join("0.log"), 0..10, &exp);
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let saved = b"{\"version\":2,\"saved by\":\"the uid-65532 agent\"}";
    std::fs::write(state.join("state.json"), saved).unwrap();
    std::fs::write(state.join("lock"), b"1\n").unwrap();
    for f in ["state.json", "lock"] {
        chmod(&state.join(f), 0o600);
        std::os::unix::fs::chown(state.join(f), Some(OLD_UID), Some(OLD_UID)).unwrap();
    }
    std::os::unix::fs::chown(&state, Some(OLD_UID), Some(OLD_UID)).unwrap();
    chmod(&state, 0o700);
    let cfg = config(&root, &state, "", "");

    let run = |name: &str| {
        let mut d = Daemon::spawn(tmp.path(), name, &cfg, &NO_CAPS, &bin());
        let status = wait_exit(&mut d, WAIT)
            .unwrap_or_else(|| panic!("still running on a foreign state dir: {}", log_tail(&d)));
        (status.code(), d.log_text())
    };
    // The whole directory is the old uid's.
    let (code, log) = run("foreign-dir");
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("owned by uid 65532 (mode 700) and this agent runs as uid 0")
            && log.contains(&format!("chown -R 0:0 {}", state.display())),
        "{log}"
    );
    // Only the directory was given back: the lock file is still the old uid's.
    std::os::unix::fs::chown(&state, Some(0), Some(0)).unwrap();
    let (code, log) = run("foreign-lock");
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("owned by uid 65532 (mode 600)"), "{log}");
    // The lock file removed too: the state file itself cannot be read. It is an error, not a
    // corrupt file: it stays where it is, unchanged.
    std::fs::remove_file(state.join("lock")).unwrap();
    let (code, log) = run("foreign-state");
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("state.json: cannot read: Permission denied")
            && log.contains("owned by uid 65532 (mode 600)"),
        "{log}"
    );
    assert!(!log.contains("corrupt"), "{log}");
    assert_eq!(std::fs::read(state.join("state.json")).unwrap(), saved);
    let names: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n == "state.json" || n == "lock"),
        "{names:?}"
    );
}
