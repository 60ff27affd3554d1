//! HTTP endpoints (axum): `/metrics`, `/healthz` (the metering loop's heartbeat against
//! `server.liveness_timeout`), `/readyz`, `/status`.
//!
//! Owns: the exposition of the token counters and self-metrics of docs/metrics.md through
//! `prometheus-client`, with one collector that encodes straight from a snapshot of the store
//! at scrape time. Reads snapshots and published statuses only, through the narrow handles of
//! [`ServerContext`]; it never sees the daemon.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde_json::json;

use crate::forwarder::ForwarderStatus;
use crate::health::{agent_view, AgentStatus, MeterHandle};
use crate::schema::{bucket_counts, families, Kind, Value, View};

/// What the server reads: snapshots and statuses, nothing it could change.
pub struct ServerContext {
    pub meter: MeterHandle,
    pub status: Arc<AgentStatus>,
    /// The Loki forwarder's status, when it runs.
    pub loki: Option<Arc<ForwarderStatus>>,
    pub metrics: crate::config::Metrics,
    pub otlp_endpoint: String,
    pub loki_endpoint: String,
    /// `[[budgets]]`, shown as gauges.
    pub budgets: Vec<crate::schema::BudgetView>,
    /// `server.liveness_timeout`: `/healthz` fails once the metering loop's last heartbeat is
    /// older than this.
    pub liveness_timeout: std::time::Duration,
}

#[derive(Clone)]
struct AppState {
    shared: Arc<ServerContext>,
    body: Arc<tokio::sync::Mutex<BodyCache>>,
}

/// The last `/metrics` body, for every scrape of the same counters within the same second
/// (self-metrics are at most that old): concurrent scrapes wait for one encode and share its
/// bytes instead of each holding a copy.
#[derive(Default)]
struct BodyCache {
    key: Option<(u64, u64)>,
    plain: bytes::Bytes,
    gzip: Option<bytes::Bytes>,
}

pub async fn serve(listener: tokio::net::TcpListener, ctx: ServerContext) {
    let state = AppState {
        shared: Arc::new(ctx),
        body: Default::default(),
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("HTTP server: {e}");
    }
}

/// Whether an `Accept-Encoding` value accepts gzip (RFC 9110 §12.5.3): `gzip` (or `x-gzip`)
/// with a non-zero `q`, else `*` with a non-zero `q`; `q=0` means "not acceptable". A `q`
/// that does not parse counts as 0: the plain body is always acceptable.
fn accepts_gzip(value: &str) -> bool {
    let mut gzip = None;
    let mut any = None;
    for item in value.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let mut q = 1.0;
        for param in parts {
            if let Some((k, v)) = param.split_once('=') {
                if k.trim().eq_ignore_ascii_case("q") {
                    q = v.trim().parse::<f64>().unwrap_or(0.0);
                }
            }
        }
        let accepted = q > 0.0 && q <= 1.0;
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(gzip.unwrap_or(false) || accepted);
        } else if coding == "*" {
            any = Some(any.unwrap_or(false) || accepted);
        }
    }
    gzip.or(any).unwrap_or(false)
}

async fn metrics(State(s): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if !s.shared.status.is_ready() {
        // Still catching up after a (re)start: partial counters would look like a reset.
        return (StatusCode::SERVICE_UNAVAILABLE, "catching up\n").into_response();
    }
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(accepts_gzip);
    let second = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut cache = s.body.lock().await;
    if cache.key != Some((s.shared.meter.published().generation, second)) {
        let snap = s.shared.meter.snapshot().await;
        let key = (snap.stats.lines(), second);
        // Encoding 50,000 series takes a while: off the runtime's I/O workers, so /healthz
        // and pushes go on meanwhile.
        let shared = s.shared.clone();
        // Sized from the last body: no doubling reallocations of a 17 MB buffer.
        let capacity = cache.plain.len() + cache.plain.len() / 16;
        // The old body goes now, not after the new one is built: scrapes still sending it
        // hold their own reference, and a gzip scrape holds only the compressed copy.
        *cache = BodyCache::default();
        let encoded = tokio::task::spawn_blocking(move || {
            let mut registry = Registry::default();
            registry.register_collector(Box::new(SnapshotCollector { shared, snap }));
            let mut body = String::with_capacity(capacity);
            prometheus_client::encoding::text::encode(&mut body, &registry).map(|()| body)
        })
        .await;
        let Ok(Ok(body)) = encoded else {
            return (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response();
        };
        *cache = BodyCache {
            key: Some(key),
            plain: bytes::Bytes::from(body),
            gzip: None,
        };
    }
    let content_type = (
        header::CONTENT_TYPE,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
    );
    if gzip {
        if cache.gzip.is_none() {
            let plain = cache.plain.clone();
            let gz = tokio::task::spawn_blocking(move || {
                use std::io::Write;
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(&plain).and_then(|()| enc.finish())
            })
            .await;
            if let Ok(Ok(gz)) = gz {
                cache.gzip = Some(bytes::Bytes::from(gz));
            }
        }
        if let Some(gz) = cache.gzip.clone() {
            return ([content_type, (header::CONTENT_ENCODING, "gzip")], gz).into_response();
        }
    }
    ([content_type], cache.plain.clone()).into_response()
}

/// Alive while the metering loop makes progress: 200 `ok` while its last heartbeat (one per
/// poll, read or not) is at most `server.liveness_timeout` old, else 503 naming how long ago.
async fn healthz(State(s): State<AppState>) -> Response {
    let since = s.shared.status.heartbeat.since_last();
    let limit = s.shared.liveness_timeout;
    if since <= limit {
        return (StatusCode::OK, "ok\n").into_response();
    }
    let body = format!(
        "metering loop stalled: no heartbeat for {:.1}s (server.liveness_timeout = {})\n",
        since.as_secs_f64(),
        humantime::format_duration(limit)
    );
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

async fn readyz(State(s): State<AppState>) -> Response {
    if s.shared.status.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

/// One file in `/status`, serialized straight from the published status (no JSON tree: with
/// thousands of files `/status` is polled cheaply).
#[derive(serde::Serialize)]
struct FileJson<'a> {
    path: &'a std::path::Path,
    dev: Option<u64>,
    inode: Option<u64>,
    offset: u64,
    size: u64,
    lag_bytes: u64,
    state: &'static str,
    draining: bool,
    error: Option<ErrorJson<'a>>,
    namespace: Option<&'a str>,
    pod: Option<&'a str>,
    container: Option<&'a str>,
    /// The formats its records were read in (docs/formats.md).
    formats: Vec<&'static str>,
}

#[derive(serde::Serialize)]
struct ErrorJson<'a> {
    reason: &'static str,
    message: &'a str,
    count: u64,
}

/// `/status`: the small parts as a JSON value, the files typed (see [`FileJson`]).
#[derive(serde::Serialize)]
struct StatusJson<'a> {
    #[serde(flatten)]
    head: serde_json::Value,
    files: Vec<FileJson<'a>>,
}

async fn status(State(s): State<AppState>) -> Response {
    let sh = &s.shared;
    let st = &sh.status;
    let (files, summary) = st.files();
    let formats = st.formats();
    let files: Vec<FileJson<'_>> = files
        .iter()
        .map(|f| FileJson {
            path: &f.path,
            dev: f.id.map(|i| i.dev),
            inode: f.id.map(|i| i.ino),
            offset: f.offset,
            size: f.size,
            lag_bytes: f.lag_bytes(),
            state: f.state,
            draining: f.state == "draining",
            error: f.error.as_ref().map(|(reason, message, count)| ErrorJson {
                reason: reason.as_str(),
                message,
                count: *count,
            }),
            namespace: f.labels.as_ref().map(|l| l.namespace.as_str()),
            pod: f.labels.as_ref().map(|l| l.pod.as_str()),
            container: f.labels.as_ref().map(|l| l.container.as_str()),
            formats: {
                let bits = formats.get(&f.path).copied().unwrap_or(0);
                crate::parse::format::Format::ALL
                    .iter()
                    .filter(|&&x| bits >> x as u8 & 1 == 1)
                    .map(|x| x.name())
                    .collect()
            },
        })
        .collect();
    let published = sh.meter.published();
    let stats = &published.stats;
    let loki = sh.loki.as_deref();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let head = json!({
        "node": st.node,
        "ready": st.is_ready(),
        "start_time_ns": st.start_time_ns,
        "lines": stats.lines(),
        "records": stats.records,
        "series": published.series,
        "open_files": summary.open_descriptors,
        "unmatched_globs": summary.unmatched_globs,
        "max_open_files": summary.max_open_files,
        "exporters": {
            "otlp": {
                "enabled": !sh.otlp_endpoint.is_empty(),
                "endpoint": sh.otlp_endpoint,
                "success": load(&st.otlp.success),
                "rejected": load(&st.otlp.rejected),
                "failed": load(&st.otlp.failed),
                "last_success_ns": load(&st.otlp_last_success_ns),
            },
            "loki": {
                "enabled": loki.is_some(),
                "endpoint": sh.loki_endpoint,
                "entries_sent": loki.map(|l| load(&l.stats.entries_sent)),
                "entries_rejected": loki.map(|l| load(&l.stats.entries_dropped_rejected)),
                "retries": loki.map(|l| load(&l.stats.retries)),
                "lag_bytes": loki.map(|l| l.stats.lag.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|x| x.1).sum::<u64>()),
            }
        },
        "checkpoints": {
            "ok": load(&st.checkpoints_ok),
            "failed": load(&st.checkpoints_failed),
        },
        // The live-reloaded files (docs/owners.md "Reloading", docs/spend.md): null while unset.
        "reloads": {
            "pricing_file": st.pricing_file.then(|| json!({
                "success": load(&st.pricing_reloads[0]),
                "failure": load(&st.pricing_reloads[1]),
            })),
            "owners_file": st.owners_file.then(|| json!({
                "success": load(&st.owners_reloads[0]),
                "failure": load(&st.owners_reloads[1]),
            })),
        },
    });
    match serde_json::to_string(&StatusJson { head, files }) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response(),
    }
}

/// Encodes one published snapshot and the self-metrics at scrape time, family by family from
/// the one schema.
struct SnapshotCollector {
    shared: Arc<ServerContext>,
    snap: Arc<crate::aggregate::Snapshot>,
}

impl std::fmt::Debug for SnapshotCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotCollector")
    }
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let sh = &self.shared;
        let agent = agent_view(&sh.status, sh.loki.as_deref());
        let view =
            View::new(&self.snap, &sh.metrics.labels, Some(&agent)).with_budgets(&sh.budgets);
        encode_view(&view, &sh.metrics.prefix, &mut enc)
    }
}

/// The OpenMetrics formatter over the one schema: every family with points, in order.
fn encode_view(view: &View<'_>, prefix: &str, enc: &mut DescriptorEncoder) -> std::fmt::Result {
    for family in families(prefix, &view.snap.extra_names) {
        let mut points = Vec::new();
        family.points(view, &mut |p| points.push((p.labels, p.value)));
        if points.is_empty() {
            continue;
        }
        let ty = match family.kind {
            Kind::Counter => MetricType::Counter, // prometheus-client adds `_total`
            Kind::Gauge => MetricType::Gauge,
            Kind::Histogram => MetricType::Histogram,
        };
        let mut m = enc.encode_descriptor(&family.name, family.help, None, ty)?;
        for (labels, value) in &points {
            let mut fam = m.encode_family(labels)?;
            match value {
                Value::Int(n) => ConstCounter::new(*n).encode(fam)?,
                Value::Gauge(n) => ConstGauge::new(*n).encode(fam)?,
                Value::Cost(units) => {
                    let v = crate::pricing::units_to_f64(*units);
                    match family.kind {
                        Kind::Counter => ConstCounter::new(v).encode(fam)?,
                        _ => ConstGauge::new(v).encode(fam)?,
                    }
                }
                Value::Histogram(h) => fam.encode_histogram::<NoLabelSet>(
                    h.sum_seconds,
                    h.count,
                    &bucket_counts(h),
                    None,
                )?,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Store;
    use crate::config::{Config, Fields};
    use crate::parse::{Parsed, Parser};
    use crate::schema::AgentView;

    #[test]
    fn accept_encoding_gzip_honours_q_values() {
        for (v, gzip) in [
            ("gzip", true),
            ("gzip, deflate", true),
            ("deflate, GZIP", true),
            ("x-gzip", true),
            ("gzip;q=1", true),
            ("gzip; q=0.5", true),
            ("gzip;q=0.001", true),
            ("*", true),
            ("identity, *;q=0.1", true),
            ("gzip;q=0", false),
            ("gzip;q=0.0", false),
            ("gzip ; Q=0.000", false),
            ("deflate, gzip;q=0", false),
            ("*;q=0", false),
            ("gzip;q=0, *", false),
            ("*;q=0, gzip", true),
            ("gzip;q=nope", false),
            ("gzipped", false),
            ("identity", false),
            ("", false),
        ] {
            assert_eq!(accepts_gzip(v), gzip, "{v:?}");
        }
    }

    /// A fixed snapshot and agent view, encoded as a scrape would.
    #[derive(Debug)]
    struct Fixed(
        crate::aggregate::Snapshot,
        AgentView,
        std::collections::BTreeMap<String, String>,
    );

    impl Collector for Fixed {
        fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
            let view = View::new(&self.0, &self.2, Some(&self.1));
            encode_view(&view, "llm", &mut enc)
        }
    }

    #[test]
    fn metrics_text_golden() {
        let config = Config::default();
        let mut store = Store::new(&config);
        let mut parser = Parser::new(&Fields::default());
        let line = r#"{"model":"m","api_key_id":"k","aim_service_id":"s","llm_input_token":3,"llm_output_token":4,"response_code":200,"duration":1500}"#;
        if let Parsed::Record(r) = parser.parse(line) {
            store.add(&r);
        }
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("cluster".to_string(), "c1".to_string());
        let agent = AgentView {
            otlp: [5, 1, 2],
            checkpoints: [7, 0],
            ..AgentView::default()
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed(store.snapshot(&[]), agent, labels)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        // The release is not part of the format: a version bump changes no golden file.
        let text = text.replace(
            &format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
            "version=\"VERSION\"",
        );
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/expected/metrics-golden.txt"
        );
        if std::env::var_os("TOKENMETER_BLESS").is_some() {
            std::fs::write(path, &text).unwrap();
        }
        let want = std::fs::read_to_string(path).unwrap();
        assert_eq!(text, want, "run with TOKENMETER_BLESS=1 to accept a change");
    }
}
