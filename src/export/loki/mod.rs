//! Loki export (docs/otlp-and-loki.md): every logical line, LLM record or not, to `POST /loki/api/v1/push`
//! as a `logproto.PushRequest` (protobuf, raw snappy), at least once from the file.
//!
//! Owns: the wire messages, the shape of an entry (redaction, Envoy-escape repair, truncation,
//! structured metadata, event time), stream labels, batching, and the push with its retry
//! policy. Which lines are read and which offsets are saved is the forwarder's business
//! (`crate::forwarder` for `run`, `crate::replay` for `replay --loki`).
//!
//! Redaction (`redact`, failing closed) has its own lenient lexer (`lexer`): see there why it is
//! not `crate::json`.

mod lexer;
mod redact;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prost::Message;

use crate::config::Config;
use crate::export::http::{retry_after, HttpTarget};
use crate::json::Scanner;
use crate::parse::{Parsed, Parser};
use crate::source::PodLabels;

use redact::redacted_key;

pub use redact::{redact, REDACTION_PLACEHOLDER};

/// `logproto.PushRequest` and friends, field for field from Loki's `pkg/push/push.proto`.
#[allow(missing_docs)]
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PushRequest {
        #[prost(message, repeated, tag = "1")]
        pub streams: Vec<StreamAdapter>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StreamAdapter {
        #[prost(string, tag = "1")]
        pub labels: String,
        #[prost(message, repeated, tag = "2")]
        pub entries: Vec<EntryAdapter>,
        #[prost(uint64, tag = "3")]
        pub hash: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EntryAdapter {
        #[prost(message, optional, tag = "1")]
        pub timestamp: Option<Timestamp>,
        #[prost(string, tag = "2")]
        pub line: String,
        #[prost(message, repeated, tag = "3")]
        pub structured_metadata: Vec<LabelPairAdapter>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelPairAdapter {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// `google.protobuf.Timestamp`.
    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct Timestamp {
        #[prost(int64, tag = "1")]
        pub seconds: i64,
        #[prost(int32, tag = "2")]
        pub nanos: i32,
    }
}

use proto::{EntryAdapter, LabelPairAdapter, PushRequest, StreamAdapter, Timestamp};

/// Turns a logical line into what Loki receives.
pub struct EntryShaper {
    parser: Parser,
    scanner: Scanner,
    redact: Vec<String>,
    /// `loki.structured_metadata` less the entries read from a `loki.redact` field.
    metadata: Vec<String>,
    max_line: usize,
}

/// A shaped entry.
pub struct Shaped {
    pub line: String,
    pub metadata: Vec<LabelPairAdapter>,
    pub truncated: bool,
    /// Redaction could not be done with certainty: the line is a placeholder.
    pub redaction_failed: bool,
    /// The event time a record carries itself ([`crate::pipeline::event_time_ns`] without an
    /// envelope); the envelope's time, when there is one, comes first.
    pub record_time_ns: Option<i64>,
}

impl EntryShaper {
    pub fn new(config: &Config) -> Self {
        EntryShaper {
            parser: Parser::new(&config.fields),
            scanner: Scanner::new(),
            redact: config.loki.redact.clone(),
            metadata: config
                .loki
                .structured_metadata
                .iter()
                .filter(|name| {
                    // A redacted field never leaves as metadata either: what decides is the
                    // field the value is read from, not the metadata's name. A redact entry
                    // masks its (last) key wherever it is, so any step of any key the value
                    // may be read from, in any format, that it masks keeps the metadata home.
                    let sources = metadata_sources(&config.fields, name);
                    !config
                        .loki
                        .redact
                        .iter()
                        .any(|f| sources.contains(&redacted_key(f)))
                })
                .cloned()
                .collect(),
            max_line: config.loki.max_line_bytes,
        }
    }

    pub fn shape(&mut self, text: &str) -> Shaped {
        let mut line = repair_envoy_escapes(text);
        let mut redaction_failed = false;
        if !self.redact.is_empty() {
            // Before truncation, never after: a cut could hide a field from the scan.
            match redact(&line, &self.redact) {
                Some(clean) => line = clean,
                None => {
                    redaction_failed = true;
                    line = REDACTION_PLACEHOLDER.to_string();
                }
            }
        }
        let mut metadata = Vec::new();
        if redaction_failed {
            metadata.push(LabelPairAdapter {
                name: "redaction_failed".into(),
                value: "true".into(),
            });
        }
        let mut record_time_ns = None;
        if let Parsed::Record(r) = self.parser.parse(text) {
            record_time_ns = crate::pipeline::event_time_ns(None, Some(&r));
            for name in &self.metadata {
                let value = match name.as_str() {
                    "model" => Some(r.model.to_string()),
                    "api_key_id" => Some(r.api_key_id.to_string()),
                    "service_id" => Some(r.service_id.to_string()),
                    other => top_level_string(&mut self.scanner, text, other),
                };
                if let Some(value) = value {
                    metadata.push(LabelPairAdapter {
                        name: name.clone(),
                        value,
                    });
                }
            }
        }
        let truncated = line.len() > self.max_line;
        if truncated {
            let mut end = self.max_line;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            line.truncate(end);
        }
        Shaped {
            line,
            metadata,
            truncated,
            redaction_failed,
            record_time_ns,
        }
    }
}

/// The access-log keys a structured-metadata entry may be read from: for `model`,
/// `api_key_id` and `service_id` every format's keys of that field (as written in the config:
/// a key, or a pointer and the top-level member it starts at), else the top-level field of
/// that name.
fn metadata_sources(fields: &crate::config::Fields, name: &str) -> Vec<String> {
    use crate::parse::format::{Field, Mapping};
    let field = match name {
        "model" => Field::Model,
        "api_key_id" => Field::ApiKey,
        "service_id" => Field::Service,
        other => return vec![other.to_string()],
    };
    let mut sources = Vec::new();
    for m in Mapping::all(fields) {
        for path in m.get(field) {
            match path {
                crate::parse::format::FieldPath::Key(k) => sources.push(k.clone()),
                crate::parse::format::FieldPath::Pointer(steps)
                | crate::parse::format::FieldPath::InPlugin(steps) => {
                    sources.extend(steps.iter().cloned())
                }
            }
        }
    }
    sources
}

fn top_level_string(scanner: &mut Scanner, text: &str, key: &str) -> Option<String> {
    let mut out = None;
    scanner
        .scan_object(text, |k, v| {
            if k.eq_str(key) {
                if let crate::json::Value::Str(s) = v {
                    out = Some(s.decode().into_owned());
                }
            }
        })
        .ok()?;
    out
}

/// Envoy writes a byte that is not UTF-8 as `\NNN`, which is not JSON; Loki gets `\ufffd`
/// instead, so the line stays valid JSON.
pub fn repair_envoy_escapes(text: &str) -> String {
    let b = text.as_bytes();
    if memchr::memchr(b'\\', b).is_none() {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut run = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let octal = b.len() >= i + 4
                && (b'0'..=b'3').contains(&b[i + 1])
                && (b'0'..=b'7').contains(&b[i + 2])
                && (b'0'..=b'7').contains(&b[i + 3]);
            if octal {
                out.push_str(&text[run..i]);
                out.push_str("\\ufffd");
                i += 4;
                run = i;
                continue;
            }
            i += 2; // any other escape, including `\\`, stays as it is
            continue;
        }
        i += 1;
    }
    out.push_str(&text[run.min(text.len())..]);
    out
}

/// The stream selector of a file's lines: few, fixed labels (Loki indexes labels; per-request
/// values such as model or API key would explode its streams).
pub fn stream_labels(config: &Config, node: &str, pod: Option<&PodLabels>) -> String {
    let mut l: BTreeMap<&str, &str> = config
        .loki
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    l.insert("node", node);
    if let Some(p) = pod {
        l.insert("namespace", &p.namespace);
        l.insert("pod", &p.pod);
        l.insert("container", &p.container);
    }
    let parts: Vec<String> = l
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// Entries waiting to be sent, grouped by stream, in file order.
#[derive(Default)]
pub struct Batch {
    streams: BTreeMap<String, Vec<EntryAdapter>>,
    pub bytes: usize,
    pub entries: usize,
    pub started: Option<Instant>,
}

impl Batch {
    pub fn push(&mut self, labels: &str, time_ns: i64, shaped: Shaped) {
        self.bytes += shaped.line.len() + 32;
        self.entries += 1;
        self.started.get_or_insert_with(Instant::now);
        let entry = EntryAdapter {
            timestamp: Some(Timestamp {
                seconds: time_ns.div_euclid(1_000_000_000),
                nanos: time_ns.rem_euclid(1_000_000_000) as i32,
            }),
            line: shaped.line,
            structured_metadata: shaped.metadata,
        };
        match self.streams.get_mut(labels) {
            Some(v) => v.push(entry),
            None => {
                self.streams.insert(labels.to_string(), vec![entry]);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The request body: protobuf, then raw (block) snappy, as Loki expects.
    pub fn encode(&self) -> Vec<u8> {
        let req = PushRequest {
            streams: self
                .streams
                .iter()
                .map(|(labels, entries)| StreamAdapter {
                    labels: labels.clone(),
                    entries: entries.clone(),
                    hash: 0,
                })
                .collect(),
        };
        let raw = req.encode_to_vec();
        snap::raw::Encoder::new()
            .compress_vec(&raw)
            .unwrap_or_default()
    }
}

/// What Loki said to one batch.
#[derive(Debug, PartialEq, Eq)]
pub enum PushResult {
    Accepted,
    /// 400 (or another 4xx but 429): Loki stored the valid entries; the rest is dropped.
    Rejected {
        status: u16,
        message: String,
    },
}

/// Counters of the Loki forwarder, for `/metrics` and `/status`.
#[derive(Default)]
pub struct LokiStats {
    pub entries_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub batches_sent: AtomicU64,
    pub retries: AtomicU64,
    pub entries_dropped_rejected: AtomicU64,
    pub lines_truncated: AtomicU64,
    /// Lines replaced by a placeholder because redaction could not be done with certainty.
    pub redaction_failures: AtomicU64,
    /// path → bytes that could not be forwarded (file deleted or truncated before Loki caught up).
    pub lost_bytes: Mutex<BTreeMap<String, u64>>,
    /// path → bytes not yet delivered.
    pub lag: Mutex<Vec<(String, u64)>>,
}

pub struct LokiClient {
    target: HttpTarget,
    max_backoff: Duration,
}

impl LokiClient {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let l = &config.loki;
        Ok(LokiClient {
            target: HttpTarget::new(
                "loki",
                &l.endpoint,
                l.timeout.0,
                &l.headers,
                &l.bearer_token_file,
                &l.basic_auth,
                &l.tls,
            )?,
            max_backoff: l.max_backoff.0,
        })
    }

    /// Sends one batch until Loki accepts or rejects it: connection errors, 429 and 5xx are
    /// retried with exponential backoff (0.5 s to `loki.max_backoff`, 5 min) and jitter,
    /// honouring `Retry-After` up to that same limit.
    /// `stop` ends the retrying early (shutdown); then `None` is returned.
    pub async fn push(
        &self,
        body: Vec<u8>,
        stats: &LokiStats,
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Option<PushResult> {
        let mut backoff = Duration::from_millis(500);
        let mut attempt = 0u32;
        loop {
            if attempt > 0 && stop() {
                return None;
            }
            attempt += 1;
            let r = self.target.post("application/x-protobuf", body.clone());
            let wait = match r.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    if (200..300).contains(&status) {
                        return Some(PushResult::Accepted);
                    }
                    let retry_after = retry_after(&resp, self.max_backoff);
                    let message = resp.text().await.unwrap_or_default();
                    if status != 429 && (400..500).contains(&status) {
                        return Some(PushResult::Rejected { status, message });
                    }
                    if attempt == 1 || attempt.is_power_of_two() {
                        tracing::warn!(
                            "Loki push: {status} {}; retrying (attempt {attempt})",
                            message.trim()
                        );
                    }
                    // Honoured, but never sooner than our own backoff: a `Retry-After: 0` or a
                    // date in the past must not turn into a tight loop.
                    retry_after.map_or(backoff, |ra| ra.max(backoff))
                }
                Err(e) => {
                    if attempt == 1 || attempt.is_power_of_two() {
                        // `PushError` text never holds the URL (credentials scrubbed).
                        tracing::warn!(
                            "Loki push to {}: {e}; retrying (attempt {attempt})",
                            self.target.url()
                        );
                    }
                    backoff
                }
            };
            stats.retries.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            let until = now
                .checked_add(crate::export::otlp::jitter(wait))
                .unwrap_or(now);
            while Instant::now() < until {
                if stop() {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            backoff = backoff.saturating_mul(2).min(self.max_backoff);
        }
    }
}
