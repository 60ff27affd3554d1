//! The TOML config of SPEC §7: every key with its default, `${ENV}` expansion, durations, and
//! validation that names the offending key.
//!
//! Owns: reading and checking the config file. Must not start anything: the rest of the
//! program receives a validated [`Config`] and never sees TOML.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::pricing::{PriceTable, PricingWarning};
use std::sync::Arc;

/// At most this many `[fields.extra_tokens]`; each one is a counter per series.
pub const MAX_EXTRA_TOKENS: usize = 16;

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
    /// SPEC §10: prices (cost is off while there are none).
    pub pricing: crate::pricing::Pricing,
    /// SPEC §10: token and cost budgets per API key, exported as gauges.
    pub budgets: Vec<crate::pricing::Budget>,
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
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    End,
    Beginning,
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

/// Access-log keys (SPEC §3); defaults are the Envoy AI Gateway names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fields {
    pub model: String,
    pub input_tokens: String,
    pub output_tokens: String,
    pub total_tokens: String,
    pub api_key_id: String,
    pub service_id: String,
    pub status: String,
    pub start_time: String,
    pub duration_ms: String,
    /// Counter name (`llm_<name>_tokens_total`) → access-log key.
    pub extra_tokens: BTreeMap<String, String>,
}

impl Default for Fields {
    fn default() -> Self {
        Self {
            model: "model".into(),
            input_tokens: "llm_input_token".into(),
            output_tokens: "llm_output_token".into(),
            total_tokens: "llm_total_token".into(),
            api_key_id: "api_key_id".into(),
            service_id: "aim_service_id".into(),
            status: "response_code".into(),
            start_time: "start_time".into(),
            duration_ms: "duration".into(),
            extra_tokens: BTreeMap::new(),
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
}

impl Default for MaxValues {
    fn default() -> Self {
        Self {
            model: 1000,
            api_key_id: 10_000,
            service_id: 1000,
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
}

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    None,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BasicAuth {
    pub username: String,
    pub password_file: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    pub ca_file: String,
    pub insecure_skip_verify: bool,
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
    /// Loads the config: `path`, else `$TOKENMETER_CONFIG`, else the built-in defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env_path = std::env::var_os("TOKENMETER_CONFIG").filter(|p| !p.is_empty());
        let path: Option<PathBuf> = path.map(Path::to_path_buf).or(env_path.map(PathBuf::from));
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
            file: Some(path.clone()),
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        let config = Config::from_toml(&text, &|k| std::env::var(k).ok()).map_err(|mut e| {
            e.file = Some(path.clone());
            e
        })?;
        config.check_files().map_err(|mut e| {
            e.file = Some(path.clone());
            e
        })?;
        // A separate price file is read (and checked) now: its errors name that file.
        config.price_table()?;
        Ok(config)
    }

    /// The files an enabled exporter reads (CA, bearer token, password) must be readable now:
    /// found by `check-config` (exit 2, naming the key) rather than when `run` starts. The
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
                if let Err(e) = std::fs::File::open(path) {
                    return Err(ConfigError {
                        file: None,
                        key: Some(format!("{section}.{key}")),
                        message: format!("{path}: cannot read: {e}"),
                    });
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
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError {
            file: None,
            key: None,
            message: format!("invalid TOML: {}", e.message().trim()),
        })?;
        for (k, v) in table.iter_mut() {
            expand_env(v, k, env)?;
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let path = e.path().to_string();
                let message = e.inner().to_string();
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
        if self.fields.extra_tokens.len() > MAX_EXTRA_TOKENS {
            return Err(err(
                "fields.extra_tokens",
                format!("at most {MAX_EXTRA_TOKENS} extra token fields are supported"),
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
            if key.is_empty() {
                return Err(err(
                    &format!("fields.extra_tokens.{name}"),
                    "the access-log key is empty".into(),
                ));
            }
        }
        let f = &self.fields;
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
            if value.is_empty() {
                return Err(err(key, "the access-log key is empty".into()));
            }
        }
        crate::pricing::validate_budgets(&self.budgets).map_err(|e| err(&e.key, e.message))?;
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
        ] {
            if v == 0 {
                return Err(err(key, "must be greater than 0".into()));
            }
        }
        for (key, d) in [
            ("source.glob_interval", self.source.glob_interval),
            ("source.remember_for", self.source.remember_for),
            ("state.interval", self.state.interval),
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
            let ok = endpoint.is_empty()
                || endpoint.starts_with("http://")
                || endpoint.starts_with("https://");
            if !ok {
                // The value itself is not repeated: it may hold credentials.
                return Err(err(key, "must start with http:// or https://".to_string()));
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

    /// The effective config as TOML, as `check-config` prints it.
    /// The config with every secret replaced by `"<redacted>"`: header values, and the
    /// userinfo and query of endpoints (what `check-config` prints unless `--show-secrets`).
    pub fn masked(&self) -> Config {
        let mut c = self.clone();
        for headers in [&mut c.otlp.headers, &mut c.loki.headers] {
            for v in headers.values_mut() {
                *v = "<redacted>".to_string();
            }
        }
        for e in [&mut c.otlp.endpoint, &mut c.loki.endpoint] {
            *e = crate::export::http::display_endpoint(e);
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
            key: Some(e.key),
            message: e.message,
        })?;
        if let Some(included_in) = file.included_in {
            pricing.included_in = included_in;
        }
        pricing.prices = file.prices;
        Ok(pricing)
    }

    /// The compiled price table (`None`: no prices, cost off) and the warnings of SPEC §10
    /// (rates that rounding to 10^-12 units changed).
    pub fn price_table_with_warnings(
        &self,
    ) -> Result<(Option<Arc<PriceTable>>, Vec<PricingWarning>), ConfigError> {
        let pricing = self.effective_pricing()?;
        let from_file = !pricing.file.is_empty();
        let extra: Vec<String> = self.fields.extra_tokens.keys().cloned().collect();
        let (table, warnings) = PriceTable::compile(&pricing, &extra).map_err(|e| ConfigError {
            file: from_file.then(|| PathBuf::from(&pricing.file)),
            key: Some(e.key),
            message: e.message,
        })?;
        Ok(((!table.is_empty()).then(|| Arc::new(table)), warnings))
    }

    /// [`Config::price_table_with_warnings`] without the warnings.
    pub fn price_table(&self) -> Result<Option<Arc<PriceTable>>, ConfigError> {
        self.price_table_with_warnings().map(|(t, _)| t)
    }

    /// The budgets as their gauges show them.
    pub fn budget_views(&self) -> Vec<crate::schema::BudgetView> {
        self.budgets
            .iter()
            .map(|b| crate::schema::BudgetView {
                api_key_id: b.api_key_id.clone(),
                window: b.window.clone(),
                tokens: b.tokens,
                cost_units: crate::pricing::budget_cost_units(b),
            })
            .collect()
    }

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

/// Replaces `${VAR}` and `${VAR:-default}` in every string value; `$$` stands for `$`.
fn expand_env(
    v: &mut toml::Value,
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    match v {
        toml::Value::String(s) if s.contains('$') => {
            *s = expand_str(s, env).map_err(|message| ConfigError {
                file: None,
                key: Some(path.to_string()),
                message,
            })?;
        }
        toml::Value::Array(a) => {
            for (i, item) in a.iter_mut().enumerate() {
                expand_env(item, &format!("{path}[{i}]"), env)?;
            }
        }
        toml::Value::Table(t) => {
            for (k, item) in t.iter_mut() {
                expand_env(item, &format!("{path}.{k}"), env)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn expand_str(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed `${{` in {s:?}"))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if !is_label_name(name) {
                return Err(format!(
                    "`${{{expr}}}` is not a valid environment variable reference"
                ));
            }
            match (env(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write ${{{name}:-default}} for a fallback)"
                    ))
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml("", &no_env).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.otlp.interval.0, Duration::from_secs(15));
        assert_eq!(c.source.max_line_bytes, 1_048_576);
        assert_eq!(c.limits.max_values.api_key_id, 10_000);
        assert_eq!(c.loki.labels["job"], "envoy-access");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::from_toml("[source]\nincludes = []\n", &no_env).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("source.includes"), "{e}");
        assert!(e.to_string().contains("includes"), "{e}");
        let e = Config::from_toml("bogus = 1\n", &no_env).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = Config::from_toml("[limits.max_values]\nmodels = 3\n", &no_env).unwrap_err();
        assert!(e.to_string().contains("models"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = Config::from_toml("[otlp]\ninterval = \"soon\"\n", &no_env).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("otlp.interval"), "{e}");
        let e = Config::from_toml("[source]\nstart_at = \"middle\"\n", &no_env).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("source.start_at"), "{e}");
        let e = Config::from_toml("[server]\nlisten = \"nope\"\n", &no_env).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("server.listen"), "{e}");
        let e = Config::from_toml("[metrics.labels]\nmodel = \"x\"\n", &no_env).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("metrics.labels.model"), "{e}");
        let e = Config::from_toml("[source]\nmax_line_bytes = -1\n", &no_env).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("source.max_line_bytes"), "{e}");
        // An invalid glob is a config error (exit 2) found by check-config, not by run.
        let e = Config::from_toml("[source]\ninclude = [\"/a/*.log\", \"[.log\"]\n", &no_env)
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("source.include[1]"), "{e}");
        // An empty loki.redact entry would withhold every line: a config error, not a silent
        // placeholder for everything.
        for bad in ["\"\"", "\"  \""] {
            let e = Config::from_toml(
                &format!("[loki]\nredact = [\"x-forwarded-for\", {bad}]\n"),
                &no_env,
            )
            .unwrap_err();
            assert_eq!(e.key.as_deref(), Some("loki.redact[1]"), "{e}");
        }
    }

    #[test]
    fn max_open_files_is_resolved_against_the_descriptor_limit() {
        let mut s = Source::default();
        assert_eq!(s.effective_max_open_files(256), 128, "auto: half");
        assert_eq!(
            s.effective_max_open_files(1 << 20),
            8192,
            "auto: at most 8192"
        );
        assert_eq!(s.effective_max_open_files(4), 8, "at least 8");
        s.max_open_files = 500;
        assert_eq!(
            s.effective_max_open_files(256),
            224,
            "never above the limit less 32"
        );
        assert_eq!(s.effective_max_open_files(100_000), 500);
    }

    #[test]
    fn durations_and_env_expansion() {
        let env = |k: &str| (k == "TENANT").then(|| "team-a".to_string());
        let c = Config::from_toml(
            "shutdown_timeout = \"500ms\"\n[state]\ninterval = \"5m\"\n[otlp]\nheaders = { \"X-Scope-OrgID\" = \"${TENANT}\" }\nendpoint = \"${OTLP:-http://localhost:1/otlp}\"\n[metrics.labels]\ncost = \"$$5\"\n",
            &env,
        )
        .unwrap();
        assert_eq!(c.shutdown_timeout.0, Duration::from_millis(500));
        assert_eq!(c.state.interval.0, Duration::from_secs(300));
        assert_eq!(c.otlp.headers["X-Scope-OrgID"], "team-a");
        assert_eq!(c.otlp.endpoint, "http://localhost:1/otlp");
        assert_eq!(c.metrics.labels["cost"], "$5");
        let e = Config::from_toml("node_name = \"${MISSING}\"\n", &env).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("node_name"));
        assert!(e.message.contains("MISSING"), "{e}");
    }

    #[test]
    fn extra_tokens_and_round_trip() {
        let c = Config::from_toml(
            "[fields.extra_tokens]\ncached_input = \"llm_cached_input_token\"\nreasoning = \"llm_reasoning_token\"\n",
            &no_env,
        )
        .unwrap();
        assert_eq!(c.fields.extra_tokens.len(), 2);
        // The printed effective config parses back to the same config.
        let again = Config::from_toml(&c.to_toml(), &no_env).unwrap();
        assert_eq!(again, c);
        let e = Config::from_toml("[fields.extra_tokens]\n\"bad name\" = \"x\"\n", &no_env)
            .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("fields.extra_tokens.bad name"));
    }
}
