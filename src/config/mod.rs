//! The TOML config of docs/configuration.md: every key with its default, `${ENV}` expansion, durations, and
//! validation that names the offending key.
//!
//! Owns: reading and checking the config file. Must not start anything: the rest of the
//! program receives a validated [`Config`] and never sees TOML.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::endpoint::{BasicAuth, Tls};
pub use crate::parse::fields::{Fields, DEFAULT_EXTRA_TOKENS, MAX_EXTRA_TOKENS};
use crate::pricing::{PriceTable, PricingWarning};
pub use crate::source::StartAt;
use std::sync::Arc;

mod env;
mod files;

use env::expand_env;
pub use files::config_files;

/// The most `otlp.max_backoff` / `loki.max_backoff` may be.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// The most any other duration key may be: far from overflowing the clock arithmetic.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// Labels of single families besides [`RESERVED_LABELS`]: the team label may not be one.
const OWN_LABELS: &[&str] = &["currency", "window", "label", "result", "format"];

/// Label names the program sets itself; static labels may not reuse them.
const RESERVED_LABELS: &[&str] = &[
    "model",
    "api_key_id",
    "service_id",
    "status_class",
    "le",
    "job",
    "instance",
    "__name__",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub state_dir: PathBuf,
    pub node_name: String,
    pub shutdown_timeout: Dur,
    pub source: Source,
    pub fields: Fields,
    pub metrics: Metrics,
    pub limits: Limits,
    pub state: State,
    pub server: Server,
    pub otlp: Otlp,
    pub loki: Loki,
    /// docs/spend.md: prices (cost is off while there are none).
    pub pricing: crate::pricing::Pricing,
    /// docs/spend.md: token and cost budgets per API key, exported as gauges.
    pub budgets: Vec<crate::pricing::Budget>,
    /// docs/owners.md: the team of each API key (off while `owners.file` is empty).
    pub owners: Owners,
}

/// `[owners]` (docs/owners.md): a live-reloaded file maps api_key_id globs to teams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Owners {
    /// A TOML file of `[[owners]]` (and `[[budgets]]`) entries, checked every
    /// `source.glob_interval`; empty: no team label anywhere.
    pub file: String,
    /// The label name of the team on every `llm_*` series that carries `api_key_id`.
    pub label: String,
    /// The team of keys no entry matches.
    pub default: String,
}

impl Default for Owners {
    fn default() -> Self {
        Self {
            file: String::new(),
            label: "team".into(),
            default: "unassigned".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from("/var/lib/tokenmeter"),
            node_name: String::new(),
            shutdown_timeout: Dur::secs(10),
            source: Source::default(),
            fields: Fields::default(),
            metrics: Metrics::default(),
            limits: Limits::default(),
            state: State::default(),
            server: Server::default(),
            otlp: Otlp::default(),
            loki: Loki::default(),
            pricing: crate::pricing::Pricing::default(),
            budgets: Vec::new(),
            owners: Owners::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Source {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub start_at: StartAt,
    pub glob_interval: Dur,
    pub max_line_bytes: usize,
    /// Most descriptors held for tailed files at once; 0 = half the soft `RLIMIT_NOFILE`
    /// read at start, at most 8192 (see [`Source::effective_max_open_files`]).
    pub max_open_files: usize,
    /// How long a file that left the globs is remembered (identity and offset), so it
    /// continues at its offset if it comes back; always while it still exists.
    pub remember_for: Dur,
}

impl Source {
    /// `max_open_files` resolved against the process's descriptor limit: `0` means half the
    /// soft limit (at most 8192, at least 8); an explicit value above the limit less 32 (kept
    /// for sockets, the state file and the runtime) is lowered to it.
    pub fn effective_max_open_files(&self, soft_limit: u64) -> usize {
        let room = soft_limit.saturating_sub(32).max(8);
        let n = if self.max_open_files == 0 {
            (soft_limit / 2).clamp(8, 8192)
        } else {
            self.max_open_files as u64
        };
        usize::try_from(n.min(room)).unwrap_or(usize::MAX)
    }
}

impl Default for Source {
    fn default() -> Self {
        Self {
            include: vec!["/var/log/pods/envoy-gateway-system_*/envoy/*.log".into()],
            exclude: vec!["*.gz".into()],
            start_at: StartAt::End,
            glob_interval: Dur::secs(1),
            max_line_bytes: 1 << 20,
            max_open_files: 0,
            remember_for: Dur::secs(3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Metrics {
    pub prefix: String,
    pub labels: BTreeMap<String, String>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            prefix: "llm".into(),
            labels: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_series: usize,
    pub max_values: MaxValues,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_series: 50_000,
            max_values: MaxValues::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaxValues {
    pub model: usize,
    pub api_key_id: usize,
    pub service_id: usize,
    /// Distinct teams (docs/owners.md); only with `owners.file`.
    pub team: usize,
}

impl Default for MaxValues {
    fn default() -> Self {
        Self {
            model: 1000,
            api_key_id: 10_000,
            service_id: 1000,
            team: 1000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct State {
    pub interval: Dur,
}

impl Default for State {
    fn default() -> Self {
        Self {
            interval: Dur::secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Server {
    pub listen: String,
    /// `/healthz` fails (503) once the metering loop has not completed a poll for this long: a
    /// liveness probe then restarts an agent whose counting froze. A poll is ~100 ms apart
    /// when idle; a slow disk or a large state write can make one take seconds.
    pub liveness_timeout: Dur,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
            liveness_timeout: Dur::secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Otlp {
    pub endpoint: String,
    pub interval: Dur,
    pub timeout: Dur,
    /// Longest wait between two attempts, `Retry-After` included (a peer cannot ask for more).
    pub max_backoff: Dur,
    pub compression: Compression,
    pub headers: BTreeMap<String, String>,
    pub bearer_token_file: String,
    pub basic_auth: BasicAuth,
    pub tls: Tls,
    pub resource_attributes: BTreeMap<String, String>,
    /// Push the `tokenmeter_*` self-metrics too (same names and labels as on `/metrics`), so
    /// a push-only install has its agent-health dashboard and alerts.
    pub self_metrics: bool,
}

impl Default for Otlp {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            interval: Dur::secs(15),
            timeout: Dur::secs(10),
            max_backoff: Dur::secs(30),
            compression: Compression::Gzip,
            headers: BTreeMap::new(),
            bearer_token_file: String::new(),
            basic_auth: BasicAuth::default(),
            tls: Tls::default(),
            resource_attributes: BTreeMap::new(),
            self_metrics: true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Loki {
    pub endpoint: String,
    pub labels: BTreeMap<String, String>,
    pub structured_metadata: Vec<String>,
    pub redact: Vec<String>,
    pub batch_bytes: usize,
    pub batch_wait: Dur,
    pub max_line_bytes: usize,
    pub timeout: Dur,
    /// Longest wait between two attempts, `Retry-After` included (a peer cannot ask for more).
    pub max_backoff: Dur,
    pub headers: BTreeMap<String, String>,
    pub bearer_token_file: String,
    pub basic_auth: BasicAuth,
    pub tls: Tls,
}

impl Default for Loki {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            labels: BTreeMap::from([("job".to_string(), "envoy-access".to_string())]),
            structured_metadata: vec!["model".into(), "api_key_id".into(), "service_id".into()],
            redact: Vec::new(),
            batch_bytes: 1 << 20,
            batch_wait: Dur::secs(1),
            max_line_bytes: 256 << 10,
            timeout: Dur::secs(10),
            max_backoff: Dur::secs(300),
            headers: BTreeMap::new(),
            bearer_token_file: String::new(),
            basic_auth: BasicAuth::default(),
            tls: Tls::default(),
        }
    }
}

/// A duration written as a string such as `"500ms"`, `"15s"` or `"5m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); write e.g. \"500ms\", \"15s\", \"5m\""
            ))
        })
    }
}

/// A config problem, naming the key (dotted path) when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config")?;
        if let Some(file) = &self.file {
            write!(f, " {}", file.display())?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Loads the config from `paths` (files or directories, later overriding earlier keys:
    /// see [`files`]), else from `$TOKENMETER_CONFIG` (one file or directory), else the
    /// built-in defaults. An error names the file that set the key at fault.
    pub fn load(paths: &[PathBuf]) -> Result<Config, ConfigError> {
        let mut args = paths.to_vec();
        if args.is_empty() {
            match std::env::var_os("TOKENMETER_CONFIG").filter(|p| !p.is_empty()) {
                Some(p) => args.push(PathBuf::from(p)),
                None => return Ok(Config::default()),
            }
        }
        let files = config_files(&args)?;
        if files.is_empty() {
            return Err(ConfigError {
                file: args.first().cloned(),
                key: None,
                message: "no *.toml file here: nothing to read".into(),
            });
        }
        let merged = files::Merged::read(&files)?;
        let name = |mut e: ConfigError| {
            if e.file.is_none() {
                e.file = merged.file_of(e.key.as_deref(), &files);
            }
            e
        };
        let config =
            Config::from_table(merged.table.clone(), &|k| std::env::var(k).ok()).map_err(name)?;
        config.check_files().map_err(name)?;
        // A separate price file is read (and checked) now: its errors name that file.
        config.price_table()?;
        // The owners file too (docs/owners.md); a running agent reloads it.
        config.owner_table()?;
        Ok(config)
    }

    /// The files an enabled exporter reads (CA, bearer token, password) must be readable
    /// regular files now, and the CA file PEM certificates the TLS stack accepts: found by
    /// `check-config` (exit 2, naming the key) rather than when `run` starts or pushes. The
    /// content is not shown.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        let exporters = [
            (
                "otlp",
                &self.otlp.endpoint,
                &self.otlp.tls.ca_file,
                &self.otlp.bearer_token_file,
                &self.otlp.basic_auth.password_file,
            ),
            (
                "loki",
                &self.loki.endpoint,
                &self.loki.tls.ca_file,
                &self.loki.bearer_token_file,
                &self.loki.basic_auth.password_file,
            ),
        ];
        for (section, endpoint, ca, token, password) in exporters {
            if endpoint.is_empty() {
                continue;
            }
            for (key, path) in [
                ("tls.ca_file", ca),
                ("bearer_token_file", token),
                ("basic_auth.password_file", password),
            ] {
                if path.is_empty() {
                    continue;
                }
                let fail = |message: String| ConfigError {
                    file: None,
                    key: Some(format!("{section}.{key}")),
                    message: format!("{path}: {message}"),
                };
                // Opening a directory succeeds: what `run` reads must be a regular file (a
                // Secret mounted by Kubernetes is a symlink to one: followed).
                let meta =
                    std::fs::metadata(path).map_err(|e| fail(format!("cannot read: {e}")))?;
                if !meta.is_file() {
                    return Err(fail("not a regular file".into()));
                }
                let content = std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))?;
                if key == "tls.ca_file" {
                    // As the TLS stack will load it; the content is never shown.
                    crate::endpoint::pem_certificates(&content).map_err(fail)?;
                }
            }
        }
        Ok(())
    }

    /// Parses TOML text; `env` looks up variables for `${VAR}` expansion.
    pub fn from_toml(
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Config::from_table(files::parse(text)?, env)
    }

    /// The config of a parsed table (one file's, or several merged); `env` as for
    /// [`Config::from_toml`].
    fn from_table(
        mut table: toml::Table,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        for (k, v) in table.iter_mut() {
            expand_env(v, k, env)?;
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let path = e.path().to_string();
                // The message alone, on one line: the key is `path`, not a trailing "in `x`".
                let message = e.inner().message().trim().to_string();
                ConfigError {
                    file: None,
                    key: (path != ".").then_some(path),
                    message,
                }
            })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            file: None,
            key: Some(key.to_string()),
            message,
        };
        if self.source.max_line_bytes == 0 {
            return Err(err(
                "source.max_line_bytes",
                "must be greater than 0".into(),
            ));
        }
        for (key, patterns) in [
            ("source.include", &self.source.include),
            ("source.exclude", &self.source.exclude),
        ] {
            for (i, p) in patterns.iter().enumerate() {
                if let Err(e) = crate::source::discover::glob(p) {
                    return Err(err(
                        &format!("{key}[{i}]"),
                        format!("{p:?} is not a valid glob: {e}"),
                    ));
                }
            }
        }
        if self.source.include.is_empty() {
            return Err(err("source.include", "must name at least one glob".into()));
        }
        if !is_metric_name(&self.metrics.prefix) {
            return Err(err(
                "metrics.prefix",
                format!(
                    "{:?} is not a valid metric name prefix ([a-zA-Z_][a-zA-Z0-9_]*)",
                    self.metrics.prefix
                ),
            ));
        }
        for name in self.metrics.labels.keys() {
            if !is_label_name(name) || RESERVED_LABELS.contains(&name.as_str()) {
                return Err(err(
                    &format!("metrics.labels.{name}"),
                    "not a valid label name, or one tokenmeter sets itself".into(),
                ));
            }
        }
        let mut all_extra: Vec<&str> = DEFAULT_EXTRA_TOKENS.to_vec();
        all_extra.extend(self.fields.extra_tokens.keys().map(String::as_str));
        all_extra.sort_unstable();
        all_extra.dedup();
        if all_extra.len() > MAX_EXTRA_TOKENS {
            return Err(err(
                "fields.extra_tokens",
                format!(
                    "at most {MAX_EXTRA_TOKENS} extra token types are supported, the {} built-in ones ({}) included",
                    DEFAULT_EXTRA_TOKENS.len(),
                    DEFAULT_EXTRA_TOKENS.join(", ")
                ),
            ));
        }
        let builtin = ["input", "output", ""];
        for (name, key) in &self.fields.extra_tokens {
            if !is_label_name(name) || name.starts_with("__") || builtin.contains(&name.as_str()) {
                return Err(err(
                    &format!("fields.extra_tokens.{name}"),
                    "the name becomes `<prefix>_<name>_tokens_total`: use [a-z0-9_], not input/output".into(),
                ));
            }
            if let Some(why) = crate::parse::format::key_error(key) {
                return Err(err(&format!("fields.extra_tokens.{name}"), why));
            }
        }
        let f = &self.fields;
        if crate::parse::format::FormatChoice::parse(&f.format).is_none() {
            let names: Vec<&str> = crate::parse::format::Format::ALL
                .iter()
                .map(|f| f.name())
                .collect();
            return Err(err(
                "fields.format",
                format!(
                    "{:?} is not a format: use \"auto\" or one of {}",
                    f.format,
                    names.join(", ")
                ),
            ));
        }
        for (key, value) in [
            ("fields.model", &f.model),
            ("fields.input_tokens", &f.input_tokens),
            ("fields.output_tokens", &f.output_tokens),
            ("fields.total_tokens", &f.total_tokens),
            ("fields.api_key_id", &f.api_key_id),
            ("fields.service_id", &f.service_id),
            ("fields.status", &f.status),
            ("fields.start_time", &f.start_time),
            ("fields.duration_ms", &f.duration_ms),
        ] {
            if let Some(why) = value.as_deref().and_then(crate::parse::format::key_error) {
                return Err(err(key, why));
            }
        }
        crate::pricing::validate_budgets(&self.budgets).map_err(|e| err(&e.key, e.message))?;
        self.validate_owners()?;
        if self.pricing.file.is_empty() {
            // Inline prices are checked with the rest; a price file when it is read.
            self.price_table_with_warnings()?;
        }
        let lim = &self.limits;
        for (key, v) in [
            ("limits.max_series", lim.max_series),
            ("limits.max_values.model", lim.max_values.model),
            ("limits.max_values.api_key_id", lim.max_values.api_key_id),
            ("limits.max_values.service_id", lim.max_values.service_id),
            ("limits.max_values.team", lim.max_values.team),
        ] {
            if v == 0 {
                return Err(err(key, "must be greater than 0".into()));
            }
        }
        for (key, d) in [
            ("source.glob_interval", self.source.glob_interval),
            ("source.remember_for", self.source.remember_for),
            ("state.interval", self.state.interval),
            ("server.liveness_timeout", self.server.liveness_timeout),
            ("otlp.interval", self.otlp.interval),
            ("otlp.timeout", self.otlp.timeout),
            ("loki.batch_wait", self.loki.batch_wait),
            ("loki.timeout", self.loki.timeout),
            ("otlp.max_backoff", self.otlp.max_backoff),
            ("loki.max_backoff", self.loki.max_backoff),
        ] {
            if d.0.is_zero() {
                return Err(err(key, "must be longer than 0s".into()));
            }
        }
        // Upper bounds: a wait is added to the clock (and jittered), which must not overflow
        // whatever is written; and a backoff is the longest a peer can make the agent wait.
        for (key, d) in [
            ("otlp.max_backoff", self.otlp.max_backoff),
            ("loki.max_backoff", self.loki.max_backoff),
        ] {
            if d.0 > MAX_BACKOFF {
                return Err(err(key, "must be at most 1h".into()));
            }
        }
        for (key, d) in [
            ("shutdown_timeout", self.shutdown_timeout),
            ("source.glob_interval", self.source.glob_interval),
            ("source.remember_for", self.source.remember_for),
            ("state.interval", self.state.interval),
            ("server.liveness_timeout", self.server.liveness_timeout),
            ("otlp.interval", self.otlp.interval),
            ("otlp.timeout", self.otlp.timeout),
            ("loki.batch_wait", self.loki.batch_wait),
            ("loki.timeout", self.loki.timeout),
        ] {
            if d.0 > MAX_DURATION {
                return Err(err(key, "must be at most 365d".into()));
            }
        }
        // One poll sleeps 100 ms when idle and may write the state: a shorter timeout would
        // fail /healthz between two healthy polls and have the kubelet restart a working agent.
        if self.server.liveness_timeout.0 < Duration::from_secs(1) {
            return Err(err(
                "server.liveness_timeout",
                "must be at least 1s (a healthy poll can take longer than that)".into(),
            ));
        }
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(err(
                "server.listen",
                format!(
                    "{:?} is not an address like \"127.0.0.1:9464\"",
                    self.server.listen
                ),
            ));
        }
        for (key, endpoint) in [
            ("otlp.endpoint", &self.otlp.endpoint),
            ("loki.endpoint", &self.loki.endpoint),
        ] {
            if endpoint.is_empty() {
                continue;
            }
            // What the HTTP client would refuse makes every push fail: found here instead.
            // The value itself is not repeated: it may hold credentials.
            if let Err(message) = crate::endpoint::parse_endpoint(endpoint) {
                return Err(err(key, message));
            }
        }
        for (section, headers) in [("otlp", &self.otlp.headers), ("loki", &self.loki.headers)] {
            for (name, value) in headers {
                let key = format!("{section}.headers.{name}");
                // Checked as the HTTP client checks them: what it refuses fails every push.
                if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(err(
                        &key,
                        "not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~)".into(),
                    ));
                }
                if value.trim().is_empty() {
                    // An empty tenant header (`${MIMIR_TENANT}` set to "") would send the
                    // data to another tenant, or be refused; either way not what was meant.
                    return Err(err(
                        &key,
                        "the value is empty (an unset or empty ${VAR}?): give it a value or \
                         remove the header"
                            .into(),
                    ));
                }
                if reqwest::header::HeaderValue::from_str(value).is_err() {
                    // The value is not repeated: it is often a token.
                    return Err(err(
                        &key,
                        "the value (not shown) is not a valid HTTP header value: control \
                         characters such as a newline (e.g. at the end of an ${ENV} value) \
                         are not allowed"
                            .into(),
                    ));
                }
            }
        }
        for name in self.loki.labels.keys() {
            if !is_label_name(name) || name.starts_with("__") {
                return Err(err(
                    &format!("loki.labels.{name}"),
                    "not a valid Loki label name".into(),
                ));
            }
        }
        for (i, field) in self.loki.redact.iter().enumerate() {
            if field.trim().is_empty() {
                return Err(err(
                    &format!("loki.redact[{i}]"),
                    "is empty: it would withhold every line".into(),
                ));
            }
            if let Some(why) = crate::parse::format::key_error(field) {
                return Err(err(&format!("loki.redact[{i}]"), why));
            }
            if let crate::parse::format::FieldPath::Pointer(steps) =
                crate::parse::format::FieldPath::parse(field)
            {
                // Redaction masks a key's value wherever the key is. The empty key (`/`,
                // `/a/`) would be found in every line and withhold them all; an array element
                // has no key, so a pointer ending in an index (below the top level, which is
                // an object) would mask nothing: both refused (fail closed).
                let last = steps.last().map_or("", String::as_str);
                if last.is_empty() {
                    return Err(err(
                        &format!("loki.redact[{i}]"),
                        format!(
                            "{field:?} ends in the empty key: it would withhold every line; \
                             name the key to mask"
                        ),
                    ));
                }
                if steps.len() > 1 && last.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err(
                        &format!("loki.redact[{i}]"),
                        format!(
                            "{field:?} ends in an array index; redaction masks keys: name the \
                             key that holds the array to mask it whole"
                        ),
                    ));
                }
            }
        }
        if self.loki.max_line_bytes == 0 || self.loki.batch_bytes == 0 {
            return Err(err(
                "loki.max_line_bytes",
                "sizes must be greater than 0".into(),
            ));
        }
        Ok(())
    }

    /// The node name: `node_name`, else `$NODE_NAME`, else the host name.
    pub fn effective_node_name(&self) -> String {
        if !self.node_name.is_empty() {
            return self.node_name.clone();
        }
        if let Ok(n) = std::env::var("NODE_NAME") {
            if !n.is_empty() {
                return n;
            }
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown".into())
    }

    /// The config with every secret replaced by `"<redacted>"`: header values, basic auth
    /// user names (often from `${ENV}` beside the password), and the userinfo and query of
    /// endpoints (what `check-config` prints unless `--show-secrets`). File paths are kept.
    pub fn masked(&self) -> Config {
        let mut c = self.clone();
        for headers in [&mut c.otlp.headers, &mut c.loki.headers] {
            for v in headers.values_mut() {
                *v = "<redacted>".to_string();
            }
        }
        for user in [
            &mut c.otlp.basic_auth.username,
            &mut c.loki.basic_auth.username,
        ] {
            if !user.is_empty() {
                *user = "<redacted>".to_string();
            }
        }
        for e in [&mut c.otlp.endpoint, &mut c.loki.endpoint] {
            *e = crate::endpoint::display_endpoint(e);
        }
        c
    }

    /// The effective `[pricing]`: the inline table, or with `pricing.file` set, that file's
    /// `included_in` and prices in place of the inline ones (read now).
    pub fn effective_pricing(&self) -> Result<crate::pricing::Pricing, ConfigError> {
        let mut pricing = self.pricing.clone();
        if pricing.file.is_empty() {
            return Ok(pricing);
        }
        let path = PathBuf::from(&pricing.file);
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
            file: None,
            key: Some("pricing.file".into()),
            message: format!("{}: cannot read: {e}", path.display()),
        })?;
        let file = crate::pricing::parse_price_file(&text).map_err(|e| ConfigError {
            file: Some(path.clone()),
            key: (!e.key.is_empty()).then_some(e.key),
            message: e.message,
        })?;
        if let Some(included_in) = file.included_in {
            pricing.included_in = included_in;
        }
        pricing.prices = file.prices;
        Ok(pricing)
    }

    /// The compiled price table (`None`: no prices, cost off) and the warnings of docs/spend.md
    /// (rates that rounding to 10^-12 units changed).
    pub fn price_table_with_warnings(
        &self,
    ) -> Result<(Option<Arc<PriceTable>>, Vec<PricingWarning>), ConfigError> {
        let pricing = self.effective_pricing()?;
        let from_file = !pricing.file.is_empty();
        let extra: Vec<String> = self.fields.extra_names();
        // Keys as the operator wrote them: `pricing.prices[2]` inline, `prices[2]` in a file.
        let prefix = if from_file { "" } else { "pricing" };
        let (table, warnings) =
            PriceTable::compile_with_prefix(&pricing, &extra, prefix).map_err(|e| ConfigError {
                file: from_file.then(|| PathBuf::from(&pricing.file)),
                key: (!e.key.is_empty()).then_some(e.key),
                message: e.message,
            })?;
        Ok(((!table.is_empty()).then(|| Arc::new(table)), warnings))
    }

    /// [`Config::price_table_with_warnings`] without the warnings.
    pub fn price_table(&self) -> Result<Option<Arc<PriceTable>>, ConfigError> {
        self.price_table_with_warnings().map(|(t, _)| t)
    }

    /// `[owners]`: the label a valid name that no other label uses, a default team, and team
    /// budgets only with an owners file. The file itself is read when the agent starts (and
    /// by `check-config`), like `pricing.file`.
    fn validate_owners(&self) -> Result<(), ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            file: None,
            key: Some(key.to_string()),
            message,
        };
        let o = &self.owners;
        // A static label of the same name only clashes once the team label is there.
        let taken = RESERVED_LABELS.contains(&o.label.as_str())
            || OWN_LABELS.contains(&o.label.as_str())
            || (!o.file.is_empty() && self.metrics.labels.contains_key(&o.label));
        if !is_label_name(&o.label) || o.label.starts_with("__") || taken {
            return Err(err(
                "owners.label",
                format!(
                    "{:?} is not a valid label name ([a-zA-Z_][a-zA-Z0-9_]*), or one another label uses",
                    o.label
                ),
            ));
        }
        if o.default.is_empty() {
            return Err(err(
                "owners.default",
                "is empty: it is the team of keys no entry matches, e.g. \"unassigned\"".into(),
            ));
        }
        if o.file.is_empty() {
            if let Some(i) = self.budgets.iter().position(|b| !b.team.is_empty()) {
                return Err(err(
                    &format!("budgets[{i}].team"),
                    "a team budget needs owners.file (docs/owners.md)".into(),
                ));
            }
        }
        Ok(())
    }

    /// The owners table of `owners.file` (read now; `None` while the key is empty). Errors
    /// name the file, and keys relative to it (`owners[2].from`); a budget the main config
    /// also defines is one of them.
    pub fn owner_table(&self) -> Result<Option<Arc<crate::owners::OwnerTable>>, ConfigError> {
        if self.owners.file.is_empty() {
            return Ok(None);
        }
        let path = PathBuf::from(&self.owners.file);
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
            file: None,
            key: Some("owners.file".into()),
            message: format!("{}: cannot read: {e}", path.display()),
        })?;
        let in_file = |e: crate::pricing::PricingError| ConfigError {
            file: Some(path.clone()),
            key: (!e.key.is_empty()).then_some(e.key),
            message: e.message,
        };
        let file = crate::owners::parse_owners_file(&text).map_err(in_file)?;
        let table =
            crate::owners::OwnerTable::compile(&file, &self.owners.default).map_err(in_file)?;
        table.check_budgets_beside(&self.budgets).map_err(in_file)?;
        Ok(Some(Arc::new(table)))
    }

    /// The config as TOML, as `check-config` prints it (after [`Config::masked`]).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_metric_name(s: &str) -> bool {
    is_label_name(s)
}

#[cfg(test)]
mod tests;
