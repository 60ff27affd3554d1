//! The access-log formats tokenmeter reads, and where each keeps its facts.
//!
//! Owns: the formats' names and order, each format's default mapping (field → the keys it is
//! read from), the rule that a `[fields]` key set in the config overrides that field for every
//! format, and key syntax (a plain key is one top-level member, dots included; a key starting
//! with `/` is a JSON Pointer). Must not read lines: `parse` applies the mappings.
//!
//! Where the defaults come from is in `docs/formats.md`; what tells the formats apart is in
//! [`crate::parse`] (`detect`), tried in [`Format::ALL`]'s order.

use std::fmt;

use super::fields::Fields;

/// An access-log format. The order is the order formats are tried in (`tokenmeter` last: it
/// reads any JSON object of no other format).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Format {
    /// Envoy AI Gateway ≥ v0.6, `aigw`, agentgateway JSON: OpenTelemetry GenAI names.
    GenAi = 0,
    /// Envoy AI Gateway v0.4–v0.5.
    GenaiV04,
    /// Kong AI Gateway's log plugins: `ai.<plugin>.usage` / `.meta`, one request per plugin.
    Kong,
    /// Higress `ai-statistics`: `ai_log`, a JSON object inside a string.
    Higress,
    /// agentgateway's default text log, or any `key=value` line with an `llm.` key.
    Logfmt,
    /// This project's own keys (the seed's), and any other JSON object.
    Tokenmeter,
}

pub const N_FORMATS: usize = 6;

impl Format {
    pub const ALL: [Format; N_FORMATS] = [
        Format::GenAi,
        Format::GenaiV04,
        Format::Kong,
        Format::Higress,
        Format::Logfmt,
        Format::Tokenmeter,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Format::GenAi => "gen_ai",
            Format::GenaiV04 => "genai_v04",
            Format::Kong => "kong",
            Format::Higress => "higress",
            Format::Logfmt => "logfmt",
            Format::Tokenmeter => "tokenmeter",
        }
    }

    pub fn from_name(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Whether lines of this format are JSON objects.
    pub fn is_json(self) -> bool {
        self != Format::Logfmt
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `fields.format`: tell formats apart line by line, or read every line with one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatChoice {
    Auto,
    Pinned(Format),
}

impl FormatChoice {
    /// `"auto"` or a format's name.
    pub fn parse(s: &str) -> Option<FormatChoice> {
        if s == "auto" {
            Some(FormatChoice::Auto)
        } else {
            Format::from_name(s).map(FormatChoice::Pinned)
        }
    }
}

/// The facts a record is read from, in the order of [`Mapping::fields`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Model = 0,
    Input,
    Output,
    Total,
    ApiKey,
    Service,
    Status,
    StartTime,
    Duration,
}

pub const N_FIELDS: usize = 9;

impl Field {
    pub const ALL: [Field; N_FIELDS] = [
        Field::Model,
        Field::Input,
        Field::Output,
        Field::Total,
        Field::ApiKey,
        Field::Service,
        Field::Status,
        Field::StartTime,
        Field::Duration,
    ];

    /// The `[fields]` key that overrides this field.
    pub fn config_key(self) -> &'static str {
        match self {
            Field::Model => "model",
            Field::Input => "input_tokens",
            Field::Output => "output_tokens",
            Field::Total => "total_tokens",
            Field::ApiKey => "api_key_id",
            Field::Service => "service_id",
            Field::Status => "status",
            Field::StartTime => "start_time",
            Field::Duration => "duration_ms",
        }
    }

    /// The override of this field in `fields`, if the config sets one.
    fn configured(self, fields: &Fields) -> Option<&str> {
        match self {
            Field::Model => fields.model.as_deref(),
            Field::Input => fields.input_tokens.as_deref(),
            Field::Output => fields.output_tokens.as_deref(),
            Field::Total => fields.total_tokens.as_deref(),
            Field::ApiKey => fields.api_key_id.as_deref(),
            Field::Service => fields.service_id.as_deref(),
            Field::Status => fields.status.as_deref(),
            Field::StartTime => fields.start_time.as_deref(),
            Field::Duration => fields.duration_ms.as_deref(),
        }
    }
}

/// Where one value is in a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldPath {
    /// A top-level member (or a logfmt key), named literally: `gen_ai.usage.input_tokens` is
    /// one key.
    Key(String),
    /// An RFC 6901 JSON Pointer, as its unescaped reference tokens. A step that reaches a
    /// string holding a JSON object continues inside that object.
    Pointer(Vec<String>),
    /// A pointer into each Kong plugin's object (`ai.<plugin>`), not into the line.
    InPlugin(Vec<String>),
}

impl FieldPath {
    /// A key as written in the config: `/…` is a JSON Pointer, anything else one key.
    pub fn parse(spec: &str) -> FieldPath {
        match spec.strip_prefix('/') {
            Some(rest) => FieldPath::Pointer(pointer_tokens(rest)),
            None => FieldPath::Key(spec.to_string()),
        }
    }

    /// The top-level member the path starts at (`None` for a path inside a Kong plugin).
    pub fn top(&self) -> Option<&str> {
        match self {
            FieldPath::Key(k) => Some(k),
            FieldPath::Pointer(steps) => steps.first().map(String::as_str),
            FieldPath::InPlugin(_) => None,
        }
    }
}

/// Why `spec` is not a key or JSON Pointer tokenmeter can read (`None`: it is one). A pointer's
/// `~` must be `~0` or `~1` (RFC 6901). An empty step is the key `""` (RFC 6901: `/` is the
/// member named by the empty string).
pub fn key_error(spec: &str) -> Option<String> {
    if spec.is_empty() {
        return Some("the access-log key is empty".into());
    }
    let rest = spec.strip_prefix('/')?;
    let bytes = rest.as_bytes();
    for (i, &c) in bytes.iter().enumerate() {
        if c == b'~' && !matches!(bytes.get(i + 1), Some(b'0' | b'1')) {
            return Some(format!(
                "{spec:?}: a JSON Pointer's `~` must be `~0` (a `~`) or `~1` (a `/`)"
            ));
        }
    }
    None
}

/// RFC 6901 reference tokens of a pointer without its leading `/`: `~1` is `/`, `~0` is `~`
/// (in that order, so `~01` is `~1`).
fn pointer_tokens(rest: &str) -> Vec<String> {
    rest.split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect()
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let escaped = |steps: &[String]| -> String {
            steps
                .iter()
                .map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1")))
                .collect()
        };
        match self {
            FieldPath::Key(k) => f.write_str(k),
            FieldPath::Pointer(steps) => f.write_str(&escaped(steps)),
            FieldPath::InPlugin(steps) => write!(f, "/ai/<plugin>{}", escaped(steps)),
        }
    }
}

/// One format's mapping: per field, the paths tried in order (the first that holds a value
/// wins), and per extra token type the same.
#[derive(Clone, Debug, PartialEq)]
pub struct Mapping {
    pub format: Format,
    pub fields: [Vec<FieldPath>; N_FIELDS],
    /// In the order of the extra token types' names (`[fields.extra_tokens]`).
    pub extra: Vec<Vec<FieldPath>>,
    /// A number in the start-time field is epoch milliseconds (Kong's `started_at`, also when
    /// `fields.start_time` names another key); a string is RFC 3339 in every format.
    pub start_time_epoch_ms: bool,
}

impl Mapping {
    pub fn get(&self, field: Field) -> &[FieldPath] {
        &self.fields[field as usize]
    }

    /// The mapping of `format`: its defaults with the config's `[fields]` overrides applied.
    pub fn of(format: Format, fields: &Fields) -> Mapping {
        let mut m = default_mapping(format);
        for field in Field::ALL {
            if let Some(key) = field.configured(fields) {
                m.fields[field as usize] =
                    vec![configured_path(format, field_in_plugin(field), key)];
            }
        }
        m.extra = fields
            .extra_names()
            .iter()
            .map(|name| match fields.extra_tokens.get(name) {
                Some(key) => vec![configured_path(format, true, key)],
                None => default_extra(format, name),
            })
            .collect();
        m
    }

    /// Every format's mapping under `fields`, indexed like [`Format::ALL`].
    pub fn all(fields: &Fields) -> Vec<Mapping> {
        Format::ALL
            .iter()
            .map(|&f| Mapping::of(f, fields))
            .collect()
    }
}

/// The effective mapping of every format, as TOML comments (`check-config` prints it after
/// the config, so its output stays a valid config).
pub fn describe_mappings(fields: &Fields) -> String {
    let mut out = String::from(
        "\n# The keys each format is read from (the first key of a list that holds a value wins;\n# /… is a JSON Pointer). ",
    );
    out.push_str(&match FormatChoice::parse(&fields.format) {
        Some(FormatChoice::Pinned(f)) => format!("fields.format = \"{f}\": every line is read as {f}.\n"),
        _ => "fields.format = \"auto\": each line is read with the first format it is in, in this order.\n".into(),
    });
    let extra_names = fields.extra_names();
    for m in Mapping::all(fields) {
        out.push_str(&format!("# {}\n", m.format));
        let mut rows: Vec<(String, &[FieldPath])> = Field::ALL
            .iter()
            .map(|&f| (f.config_key().to_string(), m.get(f)))
            .collect();
        for (name, paths) in extra_names.iter().zip(&m.extra) {
            rows.push((format!("extra_tokens.{name}"), paths));
        }
        for (key, paths) in rows {
            let shown = if paths.is_empty() {
                if m.format == Format::Logfmt && key == "start_time" {
                    "the line's leading RFC 3339 timestamp".to_string()
                } else {
                    "(none)".to_string()
                }
            } else {
                paths
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(" | ")
            };
            let note = if key == "start_time" && m.start_time_epoch_ms {
                " (epoch milliseconds)"
            } else {
                ""
            };
            out.push_str(&format!("#   {key:<14} = {shown}{note}\n"));
        }
    }
    out
}

/// Whether Kong reads `field` inside each plugin's object (the model and the counts), not at
/// the top level of the line.
fn field_in_plugin(field: Field) -> bool {
    matches!(
        field,
        Field::Model | Field::Input | Field::Output | Field::Total
    )
}

/// A configured key as a path in `format`: for Kong's per-plugin fields (`in_plugin`), inside
/// each plugin's object (`/meta/response_model`, or a plain member name of the plugin).
fn configured_path(format: Format, in_plugin: bool, key: &str) -> FieldPath {
    match (format == Format::Kong && in_plugin, FieldPath::parse(key)) {
        (true, FieldPath::Key(k)) => FieldPath::InPlugin(vec![k]),
        (true, FieldPath::Pointer(steps)) => FieldPath::InPlugin(steps),
        (_, path) => path,
    }
}

/// Where `format` logs the built-in extra token type `name` (none where its gateway does not).
fn default_extra(format: Format, name: &str) -> Vec<FieldPath> {
    match (format, name) {
        (Format::Tokenmeter, "cached_input") => keys(&["llm_cached_input_token"]),
        (Format::Tokenmeter, "cache_creation_input") => keys(&["llm_cache_creation_input_token"]),
        (Format::Tokenmeter, "reasoning") => keys(&["llm_reasoning_token"]),
        (Format::GenAi | Format::Logfmt, "cached_input") => {
            keys(&["gen_ai.usage.cache_read.input_tokens"])
        }
        (Format::GenAi | Format::Logfmt, "cache_creation_input") => {
            keys(&["gen_ai.usage.cache_creation.input_tokens"])
        }
        (Format::GenAi | Format::Logfmt, "reasoning") => keys(&[
            "gen_ai.usage.reasoning_tokens",
            "gen_ai.usage.reasoning.output_tokens",
        ]),
        _ => Vec::new(),
    }
}

fn keys(names: &[&str]) -> Vec<FieldPath> {
    names.iter().map(|n| FieldPath::parse(n)).collect()
}

fn in_plugin(pointers: &[&str]) -> Vec<FieldPath> {
    pointers
        .iter()
        .map(|p| FieldPath::InPlugin(pointer_tokens(p.trim_start_matches('/'))))
        .collect()
}

/// The built-in mapping of each format (docs/formats.md says where each key comes from).
fn default_mapping(format: Format) -> Mapping {
    use Format::*;
    let (model, input, output, total, api_key, service, status, start, duration) = match format {
        Tokenmeter => (
            keys(&["model"]),
            keys(&["llm_input_token"]),
            keys(&["llm_output_token"]),
            keys(&["llm_total_token"]),
            keys(&["api_key_id"]),
            keys(&["aim_service_id"]),
            keys(&["response_code"]),
            keys(&["start_time"]),
            keys(&["duration"]),
        ),
        GenAi => (
            keys(&["gen_ai.request.model", "gen_ai.response.model"]),
            keys(&["gen_ai.usage.input_tokens"]),
            keys(&["gen_ai.usage.output_tokens"]),
            keys(&["gen_ai.usage.total_tokens"]),
            keys(&["api_key_id"]),
            keys(&["gen_ai.provider.name"]),
            keys(&["response_code", "http.status"]),
            keys(&["start_time"]),
            keys(&["duration"]),
        ),
        GenaiV04 => (
            keys(&["genai_model_name"]),
            keys(&["genai_tokens_input"]),
            keys(&["genai_tokens_output"]),
            keys(&["genai_tokens_total"]),
            keys(&["api_key_id"]),
            keys(&["genai_backend_name"]),
            keys(&["response_code"]),
            keys(&["start_time"]),
            keys(&["duration"]),
        ),
        Kong => (
            in_plugin(&["/meta/request_model", "/meta/response_model"]),
            in_plugin(&["/usage/prompt_tokens", "/usage/prompt_token"]),
            in_plugin(&["/usage/completion_tokens", "/usage/completion_token"]),
            in_plugin(&["/usage/total_tokens"]),
            keys(&["/consumer/username", "/consumer/id"]),
            keys(&["/service/name"]),
            keys(&["/response/status"]),
            keys(&["started_at"]),
            keys(&["/latencies/request"]),
        ),
        Higress => (
            keys(&["/ai_log/model"]),
            keys(&["/ai_log/input_token"]),
            keys(&["/ai_log/output_token"]),
            Vec::new(),
            keys(&["/ai_log/consumer"]),
            Vec::new(),
            keys(&["response_code"]),
            keys(&["start_time"]),
            keys(&["/ai_log/llm_service_duration"]),
        ),
        // agentgateway's text log: `llm.*` keys up to v0.9, `gen_ai.*` from v0.10 (a line has
        // one generation's keys, so their order in a list does not matter).
        Logfmt => (
            keys(&[
                "llm.request.model",
                "gen_ai.request.model",
                "llm.response.model",
                "gen_ai.response.model",
            ]),
            keys(&["llm.request.tokens", "gen_ai.usage.input_tokens"]),
            keys(&["llm.response.tokens", "gen_ai.usage.output_tokens"]),
            keys(&["gen_ai.usage.total_tokens"]),
            keys(&["api_key_id"]),
            keys(&["llm.provider", "gen_ai.provider.name"]),
            keys(&["http.status"]),
            // The line's leading RFC 3339 timestamp: no key (see `logfmt`).
            Vec::new(),
            keys(&["duration"]),
        ),
    };
    Mapping {
        format,
        fields: [
            model, input, output, total, api_key, service, status, start, duration,
        ],
        extra: Vec::new(),
        start_time_epoch_ms: format == Kong,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_the_order_formats_are_tried() {
        let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
        assert_eq!(
            names,
            [
                "gen_ai",
                "genai_v04",
                "kong",
                "higress",
                "logfmt",
                "tokenmeter"
            ]
        );
        for f in Format::ALL {
            assert_eq!(Format::from_name(f.name()), Some(f));
        }
        assert_eq!(FormatChoice::parse("auto"), Some(FormatChoice::Auto));
        assert_eq!(
            FormatChoice::parse("kong"),
            Some(FormatChoice::Pinned(Format::Kong))
        );
        assert_eq!(FormatChoice::parse("Kong"), None);
    }

    #[test]
    fn a_plain_key_keeps_its_dots_and_a_pointer_is_unescaped() {
        assert_eq!(
            FieldPath::parse("gen_ai.usage.input_tokens"),
            FieldPath::Key("gen_ai.usage.input_tokens".into())
        );
        assert_eq!(
            FieldPath::parse("/a~1b/c~0d/~01"),
            FieldPath::Pointer(vec!["a/b".into(), "c~d".into(), "~1".into()])
        );
        assert_eq!(FieldPath::parse("/a~1b/c~0d").to_string(), "/a~1b/c~0d");
        assert_eq!(FieldPath::parse("/").top(), Some(""));
    }

    #[test]
    fn a_configured_key_overrides_that_field_in_every_format() {
        let fields = Fields {
            api_key_id: Some("/consumer/custom_id".into()),
            start_time: Some("ts".into()),
            ..Fields::default()
        };
        for m in Mapping::all(&fields) {
            assert_eq!(
                m.get(Field::ApiKey),
                [FieldPath::Pointer(vec![
                    "consumer".into(),
                    "custom_id".into()
                ])],
                "{}",
                m.format
            );
            assert_eq!(m.get(Field::StartTime), [FieldPath::Key("ts".into())]);
            // Kong reads a number there as epoch milliseconds whichever key holds it.
            assert_eq!(m.start_time_epoch_ms, m.format == Format::Kong);
        }
        let kong = Mapping::of(Format::Kong, &Fields::default());
        assert!(kong.start_time_epoch_ms);
        assert_eq!(kong.get(Field::Model).len(), 2);
    }
}
