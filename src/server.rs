//! HTTP endpoints (axum): `/metrics`, `/healthz`, `/readyz`, `/status`.
//!
//! Owns: the exposition of the token counters and self-metrics of SPEC §4 through
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

use crate::aggregate::{invalid_field_names, SkipReason, DURATION_BUCKETS, OVERFLOW_LABELS};
use crate::forwarder::ForwarderStatus;
use crate::health::{AgentStatus, MeterHandle};
use crate::parse::StatusClass;
use crate::source::{ErrorReason, FATE_NAMES};

/// What the server reads: snapshots and statuses, nothing it could change.
pub struct ServerContext {
    pub meter: MeterHandle,
    pub status: Arc<AgentStatus>,
    /// The Loki forwarder's status, when it runs.
    pub loki: Option<Arc<ForwarderStatus>>,
    pub metrics: crate::config::Metrics,
    pub otlp_endpoint: String,
    pub loki_endpoint: String,
}

#[derive(Clone)]
struct AppState {
    shared: Arc<ServerContext>,
    registry: Arc<Registry>,
}

pub async fn serve(listener: tokio::net::TcpListener, ctx: ServerContext) {
    let shared = Arc::new(ctx);
    let mut registry = Registry::default();
    registry.register_collector(Box::new(StoreCollector {
        shared: shared.clone(),
    }));
    let state = AppState {
        shared,
        registry: Arc::new(registry),
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .with_state(state);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("HTTP server: {e}");
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    if !s.shared.status.is_ready() {
        // Still catching up after a (re)start: partial counters would look like a reset.
        return (StatusCode::SERVICE_UNAVAILABLE, "catching up\n").into_response();
    }
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response(),
    }
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
        })
        .collect();
    let stats = sh.meter.stats();
    let loki = sh.loki.as_deref();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let head = json!({
        "node": st.node,
        "ready": st.is_ready(),
        "start_time_ns": st.start_time_ns,
        "lines": stats.lines(),
        "records": stats.records,
        "series": sh.meter.series_count(),
        "open_files": summary.open_descriptors,
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
    });
    match serde_json::to_string(&StatusJson { head, files }) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response(),
    }
}

/// Encodes the store's snapshot and the self-metrics at scrape time.
struct StoreCollector {
    shared: Arc<ServerContext>,
}

impl std::fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreCollector")
    }
}

type Labels<'a> = Vec<(&'a str, &'a str)>;

fn series_labels<'a>(
    x: &'a crate::aggregate::SeriesSnapshot,
    statics: &[(&'a str, &'a str)],
) -> Labels<'a> {
    let mut l: Labels<'a> = vec![
        ("model", x.model.as_str()),
        ("api_key_id", x.api_key_id.as_str()),
        ("service_id", x.service_id.as_str()),
    ];
    l.extend(statics.iter().copied());
    l
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels<'_>, u64)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        let fam = m.encode_family(labels)?;
        ConstCounter::new(*v).encode(fam)?;
    }
    Ok(())
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels<'_>, i64)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        let fam = m.encode_family(labels)?;
        ConstGauge::new(*v).encode(fam)?;
    }
    Ok(())
}

impl Collector for StoreCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let sh = &self.shared;
        let snap = sh.meter.snapshot();
        let p = &sh.metrics.prefix;
        let statics: Vec<(&str, &str)> = sh
            .metrics
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let series_labels = |x| series_labels(x, &statics);
        // Token counters (prometheus-client adds the `_total` suffix to counters).
        let mut requests = Vec::new();
        for x in &snap.series {
            for class in StatusClass::ALL {
                let n = x.requests[class as usize];
                if n > 0 {
                    let mut l = series_labels(x);
                    l.push(("status_class", class.as_str()));
                    requests.push((l, n));
                }
            }
        }
        counter(
            &mut enc,
            &format!("{p}_requests"),
            "LLM requests by status class.",
            &requests,
        )?;
        let rows = |f: fn(&crate::aggregate::SeriesSnapshot) -> u64| -> Vec<(Labels<'_>, u64)> {
            snap.series
                .iter()
                .map(|x| (series_labels(x), f(x)))
                .collect()
        };
        counter(
            &mut enc,
            &format!("{p}_input_tokens"),
            "Input (prompt) tokens.",
            &rows(|x| x.input_tokens),
        )?;
        counter(
            &mut enc,
            &format!("{p}_output_tokens"),
            "Output (completion) tokens.",
            &rows(|x| x.output_tokens),
        )?;
        counter(
            &mut enc,
            &format!("{p}_tokens"),
            "Total tokens.",
            &rows(|x| x.total_tokens),
        )?;
        for (i, name) in snap.extra_names.iter().enumerate() {
            let r: Vec<(Labels<'_>, u64)> = snap
                .series
                .iter()
                .map(|x| {
                    (
                        series_labels(x),
                        x.extra_tokens.get(i).copied().unwrap_or(0),
                    )
                })
                .collect();
            counter(
                &mut enc,
                &format!("{p}_{name}_tokens"),
                "Extra token field.",
                &r,
            )?;
        }
        {
            let name = format!("{p}_request_duration_seconds");
            let mut m = enc.encode_descriptor(
                &name,
                "Duration of LLM requests.",
                None,
                MetricType::Histogram,
            )?;
            for h in &snap.durations {
                let mut l: Vec<(&str, &str)> = vec![
                    ("model", h.model.as_str()),
                    ("service_id", h.service_id.as_str()),
                    ("status_class", h.status_class.as_str()),
                ];
                l.extend(statics.iter().copied());
                let cum = h.histogram.cumulative();
                let mut buckets: Vec<(f64, u64)> =
                    DURATION_BUCKETS.iter().copied().zip(cum).collect();
                buckets.push((f64::INFINITY, h.histogram.count));
                let mut fam = m.encode_family(&l)?;
                fam.encode_histogram::<NoLabelSet>(
                    h.histogram.sum_seconds,
                    h.histogram.count,
                    &buckets,
                    None,
                )?;
            }
        }

        // Self-metrics.
        let (files, summary) = sh.status.files();
        let st = &snap.stats;
        let mut lines = vec![(vec![("result", "record")], st.records)];
        for r in SkipReason::ALL {
            lines.push((vec![("result", r.as_str())], st.skipped[r as usize]));
        }
        counter(
            &mut enc,
            "tokenmeter_lines",
            "Logical lines read, by result.",
            &lines,
        )?;
        counter(
            &mut enc,
            "tokenmeter_bytes_read",
            "Bytes read from log files.",
            &[(vec![], summary.bytes_read)],
        )?;
        gauge(
            &mut enc,
            "tokenmeter_files_watched",
            "Files being tailed (reading or draining).",
            &[(vec![], (summary.by_state[0] + summary.by_state[1]) as i64)],
        )?;
        let by_state: Vec<(Labels<'_>, i64)> = FATE_NAMES
            .iter()
            .zip(summary.by_state)
            .map(|(s, n)| (vec![("state", *s)], n as i64))
            .collect();
        gauge(
            &mut enc,
            "tokenmeter_files",
            "Known files by state: reading, draining (left the globs, read to its end), idle (closed to save descriptors), waiting (unread bytes, no descriptor yet), remembered (let go; identity and offset kept).",
            &by_state,
        )?;
        gauge(
            &mut enc,
            "tokenmeter_files_unreadable",
            "Files, paths and directories whose last stat, open, read or listing failed.",
            &[(vec![], summary.unreadable as i64)],
        )?;
        let errors: Vec<(Labels<'_>, u64)> = ErrorReason::ALL
            .iter()
            .zip(summary.errors)
            .map(|(r, n)| (vec![("reason", r.as_str())], n))
            .collect();
        counter(
            &mut enc,
            "tokenmeter_file_errors",
            "Failed file operations (listing, stat, open, read), by reason: permission, descriptors, io, other.",
            &errors,
        )?;
        gauge(
            &mut enc,
            "tokenmeter_open_files",
            "Descriptors of log files held (by the reader and the Loki forwarder).",
            &[(vec![], summary.open_descriptors as i64)],
        )?;
        gauge(
            &mut enc,
            "tokenmeter_open_files_limit",
            "Most log files held open at once (source.max_open_files, resolved).",
            &[(vec![], summary.max_open_files as i64)],
        )?;
        // One series per path (a remembered identity and a new file can share a path: their
        // lags are summed); remembered files are left out (nothing to read).
        let mut by_path: std::collections::BTreeMap<String, (&crate::source::FileStatus, u64)> =
            Default::default();
        for f in files
            .iter()
            .filter(|f| f.id.is_some() && f.state != "remembered")
        {
            let slot = by_path
                .entry(f.path.display().to_string())
                .or_insert((f, 0));
            slot.1 = slot.1.saturating_add(f.lag_bytes());
        }
        let lag: Vec<(Labels<'_>, i64)> = by_path
            .iter()
            .map(|(path, (f, lag))| {
                let mut l = vec![("path", path.as_str())];
                if let Some(pl) = &f.labels {
                    l.push(("namespace", pl.namespace.as_str()));
                    l.push(("pod", pl.pod.as_str()));
                    l.push(("container", pl.container.as_str()));
                }
                (l, i64::try_from(*lag).unwrap_or(i64::MAX))
            })
            .collect();
        gauge(
            &mut enc,
            "tokenmeter_file_lag_bytes",
            "Bytes of a file not counted yet.",
            &lag,
        )?;
        let o = &sh.status.otlp;
        counter(
            &mut enc,
            "tokenmeter_exports",
            "Export attempts by exporter and outcome.",
            &[
                (
                    vec![("exporter", "otlp"), ("outcome", "success")],
                    o.success.load(Ordering::Relaxed),
                ),
                (
                    vec![("exporter", "otlp"), ("outcome", "rejected")],
                    o.rejected.load(Ordering::Relaxed),
                ),
                (
                    vec![("exporter", "otlp"), ("outcome", "failed")],
                    o.failed.load(Ordering::Relaxed),
                ),
            ],
        )?;
        gauge(
            &mut enc,
            "tokenmeter_series",
            "Token series in the store.",
            &[(vec![], snap.series.len() as i64)],
        )?;
        if let Some(loki) = sh.loki.as_deref() {
            let l = &loki.stats;
            let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            counter(
                &mut enc,
                "tokenmeter_loki_entries",
                "Log entries forwarded to Loki, by outcome.",
                &[
                    (vec![("outcome", "sent")], load(&l.entries_sent)),
                    (
                        vec![("outcome", "rejected")],
                        load(&l.entries_dropped_rejected),
                    ),
                ],
            )?;
            counter(
                &mut enc,
                "tokenmeter_loki_bytes",
                "Request bytes accepted by Loki (compressed).",
                &[(vec![], load(&l.bytes_sent))],
            )?;
            counter(
                &mut enc,
                "tokenmeter_loki_retries",
                "Loki push attempts that will be retried.",
                &[(vec![], load(&l.retries))],
            )?;
            counter(
                &mut enc,
                "tokenmeter_loki_dropped",
                "Entries dropped, by reason (rejected: Loki answered 4xx; Loki stored the valid ones).",
                &[(vec![("reason", "rejected")], load(&l.entries_dropped_rejected))],
            )?;
            counter(
                &mut enc,
                "tokenmeter_loki_truncated_lines",
                "Lines cut to loki.max_line_bytes.",
                &[(vec![], load(&l.lines_truncated))],
            )?;
            let lost = l
                .lost_bytes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let rows: Vec<(Labels<'_>, u64)> = lost
                .iter()
                .map(|(p, n)| (vec![("path", p.as_str())], *n))
                .collect();
            counter(
                &mut enc,
                "tokenmeter_loki_lost_bytes",
                "Bytes that could not be forwarded (file gone or truncated first), by file.",
                &rows,
            )?;
            let mut lag: std::collections::BTreeMap<String, u64> = Default::default();
            for (p, n) in l.lag.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let slot = lag.entry(p.clone()).or_insert(0);
                *slot = slot.saturating_add(*n);
            }
            let rows: Vec<(Labels<'_>, i64)> = lag
                .iter()
                .map(|(p, n)| {
                    (
                        vec![("path", p.as_str())],
                        i64::try_from(*n).unwrap_or(i64::MAX),
                    )
                })
                .collect();
            gauge(
                &mut enc,
                "tokenmeter_loki_lag_bytes",
                "Bytes of a file not yet delivered to Loki.",
                &rows,
            )?;
        }
        let ovf: Vec<(Labels<'_>, u64)> = OVERFLOW_LABELS
            .iter()
            .zip(st.overflows)
            .map(|(l, n)| (vec![("label", *l)], n))
            .collect();
        counter(
            &mut enc,
            "tokenmeter_overflow",
            "Records whose label was folded into __overflow__.",
            &ovf,
        )?;
        let names = invalid_field_names(&snap.extra_names);
        let inv: Vec<(Labels<'_>, u64)> = names
            .iter()
            .zip(&st.invalid_fields)
            .map(|(n, v)| (vec![("field", n.as_str())], *v))
            .collect();
        counter(
            &mut enc,
            "tokenmeter_invalid_fields",
            "Token fields with an invalid value.",
            &inv,
        )?;
        counter(
            &mut enc,
            "tokenmeter_total_mismatch",
            "Records whose total differs from input + output.",
            &[(vec![], st.total_mismatches)],
        )?;
        counter(
            &mut enc,
            "tokenmeter_checkpoint_writes",
            "State file writes by outcome.",
            &[
                (
                    vec![("outcome", "success")],
                    sh.status.checkpoints_ok.load(Ordering::Relaxed),
                ),
                (
                    vec![("outcome", "failure")],
                    sh.status.checkpoints_failed.load(Ordering::Relaxed),
                ),
            ],
        )?;
        gauge(
            &mut enc,
            "tokenmeter_build_info",
            "Build information.",
            &[(vec![("version", env!("CARGO_PKG_VERSION"))], 1)],
        )?;
        Ok(())
    }
}
