//! Shared helpers of the integration tests: the binary as a command and the one replay runner
//! (`cli`), the daemon spawner (`Daemon`), the real backends (VictoriaMetrics, Prometheus,
//! promtool; the Loki receiver in `loki`), HTTP to them, and access-log lines whose token sums
//! the tests compute themselves.

mod cli;
pub mod loki;

pub use cli::*;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal HTTP/1.0 client: (status, body). Enough for loopback tests, no extra crates.
pub fn http(
    method: &str,
    addr: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

pub fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    http("GET", addr, path, None)
}

pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One running `tokenmeter run`.
pub struct Daemon {
    pub child: Child,
    pub addr: String,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts the daemon with `config` (TOML) written into `dir`, and waits for `/healthz`.
    pub fn start(dir: &Path, name: &str, config: &str) -> Daemon {
        Daemon::spawn(dir, name, config, &[], &bin()).healthy()
    }

    /// Waits for `/healthz` 200 of a daemon just spawned ([`Daemon::spawn`], under a wrapper, a
    /// binary, extra environment variables of its own); fails at once if the process exits
    /// first.
    pub fn healthy(mut self) -> Daemon {
        let limit = Duration::from_secs(60);
        let t = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "daemon of {} exited before it was healthy ({status}); log:\n{}",
                    self.log.display(),
                    self.log_text()
                );
            }
            if matches!(get(&self.addr, "/healthz"), Ok((200, _))) {
                return self;
            }
            if t.elapsed() > limit {
                panic!(
                    "daemon of {}: no /healthz 200 after {limit:?}; log:\n{}",
                    self.log.display(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `binary run --config <dir>/<name>.toml` under `wrapper` (a command that execs
    /// its arguments, e.g. `setpriv` or `prlimit`, so the child's pid is the daemon's), stderr
    /// to `<dir>/<name>.log`. Does not wait.
    pub fn spawn(dir: &Path, name: &str, config: &str, wrapper: &[&str], binary: &Path) -> Daemon {
        Daemon::spawn_env(dir, name, config, wrapper, binary, &[])
    }

    /// `spawn` with extra environment variables for the daemon (e.g. the debug fault hooks).
    pub fn spawn_env(
        dir: &Path,
        name: &str,
        config: &str,
        wrapper: &[&str],
        binary: &Path,
        env: &[(&str, &str)],
    ) -> Daemon {
        use std::os::unix::fs::PermissionsExt;
        let addr = format!("127.0.0.1:{}", free_port());
        let cfg = dir.join(format!("{name}.toml"));
        // The listen address goes into the config's own [server] table when it has one.
        let text = match config.split_once("[server]\n") {
            Some((head, tail)) => format!("{head}[server]\nlisten = \"{addr}\"\n{tail}\n"),
            None => format!("{config}\n[server]\nlisten = \"{addr}\"\n"),
        };
        std::fs::write(&cfg, text).unwrap();
        // Readable by an unprivileged daemon (the permission tests run it as another user).
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
        let log = dir.join(format!("{name}.log"));
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let child = cmd
            .args(["run", "--config"])
            .arg(&cfg)
            .env("TOKENMETER_LOG", "info")
            .env_remove("TOKENMETER_CONFIG")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {wrapper:?} {}: {e}", binary.display()));
        Daemon { child, addr, log }
    }

    pub fn metrics(&self) -> Option<Metrics> {
        match get(&self.addr, "/metrics") {
            Ok((200, body)) => Some(Metrics::parse(&body)),
            _ => None,
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        unsafe_free_sigterm(self.child.id());
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                panic!(
                    "daemon did not exit after SIGTERM; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Peak resident memory of the daemon so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_free_sigterm(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

/// Parsed exposition: (metric name, labels) → value.
#[derive(Debug, Default)]
pub struct Metrics {
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (head, value) = match line.rsplit_once(' ') {
                Some(x) => x,
                None => continue,
            };
            let (name, labels) = match head.split_once('{') {
                Some((n, rest)) => (n.to_string(), parse_labels(rest.trim_end_matches('}'))),
                None => (head.to_string(), BTreeMap::new()),
            };
            if let Ok(v) = value.parse::<f64>() {
                samples.push((name, labels, v));
            }
        }
        Metrics { samples }
    }

    /// Sum of `name` over samples whose labels include every `(k, v)` of `filter`.
    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && filter
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// `name` summed by (model, api_key_id, service_id).
    pub fn by_series(&self, name: &str) -> BTreeMap<SeriesKey, u64> {
        let mut out = BTreeMap::new();
        for (n, l, v) in &self.samples {
            if n == name {
                let k = (
                    l.get("model").cloned().unwrap_or_default(),
                    l.get("api_key_id").cloned().unwrap_or_default(),
                    l.get("service_id").cloned().unwrap_or_default(),
                );
                *out.entry(k).or_insert(0) += *v as u64;
            }
        }
        out
    }
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some((k, after)) = rest.split_once("=\"") {
        let mut val = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => val.push(c),
            }
        }
        out.insert(k.trim_start_matches(',').to_string(), val);
        rest = &after[end..];
    }
    out
}

/// A real VictoriaMetrics (Debian's package, unpacked by scripts/install-backends.sh).
pub struct Victoria {
    _process: Backend,
    pub addr: String,
}

/// A backend's process with its data directory: killed when dropped, so a test that fails
/// leaves none behind.
struct Backend {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Backend {
    /// Starts `cmd` (its output discarded) and waits up to `timeout` until `GET <addr><ready>`
    /// answers 200.
    fn start(
        cmd: &mut Command,
        dir: tempfile::TempDir,
        addr: &str,
        ready: &str,
        timeout: Duration,
    ) -> Backend {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let backend = Backend { child, _dir: dir };
        wait_until(&format!("{addr}{ready} answering 200"), timeout, || {
            get(addr, ready).ok().filter(|(c, _)| *c == 200).map(|_| ())
        });
        backend
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn backends_root() -> PathBuf {
    std::env::var_os("TOKENMETER_BACKENDS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/backends"))
        .join("root/usr/bin")
}

impl Victoria {
    /// Starts VictoriaMetrics on a free port. Fails (never skips) when it is not installed.
    pub fn start() -> Victoria {
        Self::start_on(&format!("127.0.0.1:{}", free_port()))
    }

    /// Starts VictoriaMetrics listening on `addr`.
    pub fn start_on(addr: &str) -> Victoria {
        Self::start_with(addr, &[])
    }

    /// Starts VictoriaMetrics on `addr` with extra flags (e.g. `-promscrape.config=…`).
    pub fn start_with(addr: &str, extra: &[String]) -> Victoria {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(backend("victoria-metrics"));
        cmd.arg(format!("-storageDataPath={}", dir.path().display()))
            .arg(format!("-httpListenAddr={addr}"))
            .arg("-opentelemetry.usePrometheusNaming")
            // Keep what backfill tests push of a fixed past day (the default, 1 month, would
            // drop it once the day is a month old: the suite would fail from then on).
            .arg("-retentionPeriod=100y")
            // Show the newest samples at once (the default hides the last 30 s).
            .arg("-search.latencyOffset=0s")
            .arg("-search.disableCache")
            .arg("-loggerLevel=ERROR")
            .args(extra);
        Victoria {
            _process: Backend::start(&mut cmd, dir, addr, "/health", Duration::from_secs(30)),
            addr: addr.to_string(),
        }
    }

    pub fn otlp_endpoint(&self) -> String {
        format!("http://{}/opentelemetry/v1/metrics", self.addr)
    }

    /// Runs an instant PromQL query; returns (labels, value) per result.
    pub fn query(&self, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        self.query_body(format!("query={}", urlencode(promql)), promql)
    }

    /// An instant query at unix time `t` (seconds).
    pub fn query_at(&self, promql: &str, t: i64) -> Vec<(BTreeMap<String, String>, f64)> {
        self.query_body(format!("query={}&time={t}", urlencode(promql)), promql)
    }

    /// The raw samples of the series matching `selector` (VictoriaMetrics' `/api/v1/export`):
    /// per series, its labels and its (timestamp ms, value) pairs in time order.
    pub fn raw_samples(&self, selector: &str) -> Vec<RawSeries> {
        let _ = get(&self.addr, "/internal/force_flush");
        let body = format!("match[]={}", urlencode(selector));
        let (code, text) = http("POST", &self.addr, "/api/v1/export", Some(&body)).unwrap();
        assert_eq!(code, 200, "{selector}: {text}");
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let labels = v["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect();
                let ts = v["timestamps"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_i64().unwrap());
                let vals = v["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap());
                (labels, ts.zip(vals).collect())
            })
            .collect()
    }

    fn query_body(&self, body: String, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let _ = get(&self.addr, "/internal/force_flush");
        instant_query(&self.addr, &body, promql)
    }
}

/// One series' labels and its (timestamp ms, value) samples.
pub type RawSeries = (BTreeMap<String, String>, Vec<(i64, f64)>);

/// A PromQL instant query (`body` is the form: `query=…[&time=…]`) against VictoriaMetrics or
/// Prometheus, which share the API: each result's labels and value.
pub fn instant_query(addr: &str, body: &str, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let (code, text) = http("POST", addr, "/api/v1/query", Some(body)).unwrap();
    assert_eq!(code, 200, "{promql}: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let labels = r["metric"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect();
            let value = r["value"][1].as_str().unwrap().parse().unwrap();
            (labels, value)
        })
        .collect()
}

/// A real Prometheus 2.53 (Debian's package) serving TSDB blocks made by promtool.
pub struct Prometheus {
    _process: Backend,
    pub addr: String,
}

/// `name` (e.g. `promtool`) from the test backends; fails (never skips) when it is missing.
pub fn backend(name: &str) -> PathBuf {
    let p = backends_root().join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/install-backends.sh",
        p.display()
    );
    p
}

/// `promtool tsdb create-blocks-from openmetrics <om> <blocks>`: the TSDB blocks of one
/// OpenMetrics file, added to the directory `blocks`.
pub fn promtool_blocks(om: &Path, blocks: &Path) {
    let mut cmd = Command::new(backend("promtool"));
    cmd.args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(om)
        .arg(blocks);
    let out = run(&mut cmd);
    assert_eq!(out.code, Some(0), "promtool of {}: {out:?}", om.display());
}

impl Prometheus {
    /// Starts Prometheus on the blocks in `blocks`, with nothing to scrape, and waits until it
    /// is ready. Fails (never skips) when it is not installed.
    pub fn start_on_blocks(blocks: &Path) -> Prometheus {
        let binary = backend("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(&cfg, "global:\n  scrape_interval: 1h\n").unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(binary);
        cmd.arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", blocks.display()))
            .arg("--storage.tsdb.retention.time=100y")
            .arg(format!("--web.listen-address={addr}"));
        Prometheus {
            _process: Backend::start(&mut cmd, dir, &addr, "/-/ready", Duration::from_secs(60)),
            addr,
        }
    }

    /// An instant query at unix time `t` (seconds).
    pub fn query_at(&self, promql: &str, t: i64) -> Vec<(BTreeMap<String, String>, f64)> {
        instant_query(
            &self.addr,
            &format!("query={}&time={t}", urlencode(promql)),
            promql,
        )
    }
}

pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// (model, api_key_id, service_id)
pub type SeriesKey = (String, String, String);

/// The expected totals, computed by the tests from what they wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    /// (model, api_key_id, service_id) → (requests, input, output, total)
    pub series: BTreeMap<SeriesKey, (u64, u64, u64, u64)>,
}

impl Expected {
    pub fn total(&self) -> u64 {
        self.series.values().map(|v| v.3).sum()
    }

    pub fn column(&self, i: usize) -> BTreeMap<SeriesKey, u64> {
        self.series
            .iter()
            .map(|(k, v)| (k.clone(), [v.0, v.1, v.2, v.3][i]))
            .collect()
    }
}

/// The event time the test workload's lines carry (unix seconds): the test process's start,
/// read once. Never a fixed date: Loki judges an entry's age against its own clock (7 days,
/// `reject_old_samples_max_age`), so a line stamped with a fixed day is accepted for a week
/// and rejected ever after. Run under `faketime`, the start moves with the clock, as a peer's
/// clock would.
pub fn test_start() -> i64 {
    static START: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_secs() as i64
    })
}

/// Record `i` of the test workload, stamped with the test's start: see [`record_line_at`].
pub fn record_line(i: u64, expected: &mut Expected) -> String {
    record_line_at(i, test_start(), expected)
}

/// Record `i` of the test workload with event time `t` (unix seconds): its JSON line, and it
/// is added to `expected`. Tokens: input = i % 97 + 1, output = i % 13, total = input +
/// output; 3 models, 4 keys, 2 services. Every 10th line is an Envoy text line (not counted).
pub fn record_line_at(i: u64, t: i64, expected: &mut Expected) -> String {
    if i % 10 == 9 {
        let day_time = iso(t).replacen('T', " ", 1);
        return format!(
            "[{}][1][warning][main] envoy text line {i}",
            day_time.trim_end_matches('Z')
        );
    }
    let model = [
        "gpt-4o-mini",
        "meta-llama/Llama-3.1-8B-Instruct",
        "claude-sonnet-4-5",
    ][(i % 3) as usize];
    let key = format!("key-{}", i % 4);
    let svc = format!("svc-{}", i % 2);
    let (inp, out) = (i % 97 + 1, i % 13);
    let e = expected
        .series
        .entry((model.to_string(), key.clone(), svc.clone()))
        .or_default();
    e.0 += 1;
    e.1 += inp;
    e.2 += out;
    e.3 += inp + out;
    format!(
        r#"{{"start_time":"{}","model":"{model}","api_key_id":"{key}","aim_service_id":"{svc}","llm_input_token":{inp},"llm_output_token":{out},"llm_total_token":{},"response_code":200,"duration":{}}}"#,
        iso(t),
        inp + out,
        i % 5000
    )
}

/// The CRI fixture (all of it written on 2026-03-17) moved to the day before the test's
/// start, whole days so the times of day stay: lines a day or two old, which Loki and the
/// default `--loki-max-age` (7 d) accept on any date the test runs. Returns the copy's path
/// and the unix time of its day's midnight.
pub fn cri_fixture_of_yesterday(dir: &Path) -> (std::path::PathBuf, i64) {
    let day = (test_start() - 86_400).div_euclid(86_400) * 86_400;
    let fixture = std::fs::read_to_string(fixture("cri-wrapped.log"))
        .unwrap()
        .replace("2026-03-17T", &iso(day).replacen("T00:00:00.000Z", "T", 1));
    let log = dir.join("cri-wrapped.log");
    std::fs::write(&log, fixture).unwrap();
    (log, day)
}

/// Wraps content as one CRI line (F), stamped with the test's start (nanoseconds .123456789).
pub fn cri(content: &str) -> String {
    let stamp = iso(test_start()).replacen(".000Z", ".123456789Z", 1);
    format!("{stamp} stdout F {content}\n")
}

pub fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.flush().unwrap();
}

/// A pod-log directory under `root`: `<root>/<ns>_<pod>_<uid>/envoy/`.
pub fn pod_dir(root: &Path, pod: &str) -> PathBuf {
    let d = root
        .join(format!("envoy-gateway-system_{pod}_0000-{pod}"))
        .join("envoy");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The daemon config for a test: tail `<root>/*/envoy/*.log`, state in `state`; `top` holds
/// top-level keys (e.g. `node_name`), `sections` whole tables (e.g. `[otlp]`).
pub fn config(root: &Path, state: &Path, top: &str, sections: &str) -> String {
    format!(
        "{top}\nstate_dir = \"{}\"\n[source]\ninclude = [\"{}/envoy-gateway-system_*/envoy/*.log\"]\nstart_at = \"beginning\"\nglob_interval = \"200ms\"\n[state]\ninterval = \"300ms\"\n{sections}",
        state.display(),
        root.display()
    )
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SS.000Z` (UTC), by `humantime` rather than the crate's
/// own time code, so tests do not check the code with itself.
pub fn iso(secs: i64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).expect("after 1970"));
    humantime::format_rfc3339_millis(at).to_string()
}

// --- Waiting on what the daemon shows instead of sleeping, and saying what it was doing when
// it was killed. Names start with `cond_`.

/// The `files` of the daemon's `/status`; `None` while it does not answer.
pub fn cond_status_files(d: &Daemon) -> Option<Vec<serde_json::Value>> {
    let (code, body) = get(&d.addr, "/status").ok()?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["files"].as_array().cloned()
}

/// The `/status` entry of the file now at `path`, found by device and inode (a renamed or
/// replaced file is never taken for it).
pub fn cond_status_of(d: &Daemon, path: &Path) -> Option<serde_json::Value> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    cond_status_files(d)?
        .into_iter()
        .find(|f| f["inode"].as_u64() == Some(meta.ino()) && f["dev"].as_u64() == Some(meta.dev()))
}

/// The committed offset (`/status` files[].offset) of the file now at `path`.
pub fn cond_offset_of(d: &Daemon, path: &Path) -> Option<u64> {
    cond_status_of(d, path)?["offset"].as_u64()
}

/// Polls `f` until it gives a value; on timeout, panics with `what` and what the daemon was
/// doing (`/status`, log tail).
pub fn cond_wait<T>(
    d: &Daemon,
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                cond_daemon_report(d, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the daemon has counted every byte of the file now at `path`: its `/status`
/// offset equals the file's size on disk.
pub fn cond_wait_read_to_end(d: &Daemon, path: &Path, timeout: Duration) {
    let what = format!("{}: /status offset = size on disk", path.display());
    cond_wait(d, &what, timeout, || {
        let len = std::fs::metadata(path).ok()?.len();
        (cond_offset_of(d, path)? == len).then_some(())
    });
}

/// What the daemon is doing now, for a test's output: each `/status` file (offset against its
/// size on disk), the exporter and checkpoint counts, and the last `log_lines` of its log.
pub fn cond_daemon_report(d: &Daemon, log_lines: usize) -> String {
    let mut out = format!("daemon pid {} at {}\n", d.child.id(), d.addr);
    match get(&d.addr, "/status") {
        Ok((200, body)) => match serde_json::from_str::<serde_json::Value>(&body) {
            Ok(v) => {
                for f in v["files"].as_array().into_iter().flatten() {
                    let path = f["path"].as_str().unwrap_or("?");
                    let disk = std::fs::metadata(path)
                        .map(|m| m.len().to_string())
                        .unwrap_or_else(|_| "gone".into());
                    let state = f.get("state").or_else(|| f.get("draining"));
                    out.push_str(&format!(
                        "  file {path} inode {} offset {} size {} on disk {disk} state {}\n",
                        f["inode"],
                        f["offset"],
                        f["size"],
                        state.map(|s| s.to_string()).unwrap_or_default(),
                    ));
                }
                for k in ["lines", "records", "checkpoints", "exporters"] {
                    if let Some(x) = v.get(k) {
                        out.push_str(&format!("  {k}: {x}\n"));
                    }
                }
            }
            Err(e) => out.push_str(&format!("  /status not JSON ({e}): {body}\n")),
        },
        other => out.push_str(&format!("  /status: {other:?}\n")),
    }
    let log = d.log_text();
    let lines: Vec<&str> = log.lines().collect();
    out.push_str(&format!(
        "  last {} lines of its log:\n",
        log_lines.min(lines.len())
    ));
    for l in &lines[lines.len().saturating_sub(log_lines)..] {
        out.push_str(&format!("    {l}\n"));
    }
    out
}

/// The seed of a randomized test: `TOKENMETER_TEST_SEED` when set, else `default`.
pub fn cond_test_seed(default: u64) -> u64 {
    match std::env::var("TOKENMETER_TEST_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("TOKENMETER_TEST_SEED={s:?} is not a u64")),
        Err(_) => default,
    }
}

/// SIGKILL, after printing (to stderr: cargo shows it when the test fails) `context` (seed,
/// iteration, what was written) and what the daemon was doing right before the kill.
pub fn cond_kill9_reported(d: &mut Daemon, context: &str) {
    eprintln!("--- kill -9: {context}\n{}", cond_daemon_report(d, 15));
    d.kill9();
}

/// An owners file where `k-1` is team `before` until `from` (RFC 3339) and `after` from then
/// on, and every other `k-*` key team `rest`.
pub fn owners_k1_moving_at(from: &str) -> String {
    format!(
        "[[owners]]\napi_key_id = \"k-1\"\nteam = \"before\"\n\
         [[owners]]\napi_key_id = \"k-1\"\nteam = \"after\"\nfrom = \"{from}\"\n\
         [[owners]]\napi_key_id = \"k-*\"\nteam = \"rest\"\n"
    )
}
