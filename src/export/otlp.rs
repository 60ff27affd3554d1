//! OTLP/HTTP metrics export (SPEC §4, §6): the store's snapshot as an
//! `ExportMetricsServiceRequest` of monotonic cumulative Sums and a Histogram, POSTed as
//! protobuf (gzip) with retries.
//!
//! Owns: the OTLP shape (names exactly as the Prometheus names, `_total` included, because
//! Mimir's default translation adds no suffix), resource attributes, and the push policy.
//! Reads snapshots only; never changes counting. Cumulative values mean a failed push loses
//! nothing: the next one carries everything.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Histogram, HistogramDataPoint, Metric,
    NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use crate::aggregate::{Snapshot, DURATION_BUCKETS};
use crate::config::{Compression, Config};
use crate::export::http::{retry_after, HttpTarget};
use crate::parse::StatusClass;

/// What the request is built from, besides the snapshot.
pub struct OtlpShape {
    pub prefix: String,
    /// `metrics.labels`: added to every data point.
    pub static_labels: BTreeMap<String, String>,
    pub resource: Vec<(String, String)>,
}

impl OtlpShape {
    pub fn from_config(config: &Config, node: &str) -> Self {
        let mut resource = vec![
            ("service.name".to_string(), "tokenmeter".to_string()),
            ("service.instance.id".to_string(), node.to_string()),
            ("k8s.node.name".to_string(), node.to_string()),
            ("host.name".to_string(), node.to_string()),
            (
                "service.version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            ),
        ];
        for (k, v) in &config.otlp.resource_attributes {
            resource.retain(|(rk, _)| rk != k);
            resource.push((k.clone(), v.clone()));
        }
        OtlpShape {
            prefix: config.metrics.prefix.clone(),
            static_labels: config.metrics.labels.clone(),
            resource,
        }
    }
}

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_string())),
        }),
    }
}

fn sum(name: String, description: &str, unit: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name,
        description: description.to_string(),
        unit: unit.to_string(),
        data: Some(metric::Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

/// Builds the request: one data point per series and counter, every point with the series'
/// start time (from the state, so counters continue across restarts) and `time_ns`.
pub fn build_request(
    snap: &Snapshot,
    shape: &OtlpShape,
    start_time_ns: i64,
    time_ns: i64,
) -> ExportMetricsServiceRequest {
    let start = start_time_ns.max(0) as u64;
    let time = time_ns.max(0) as u64;
    let point = |attrs: Vec<KeyValue>, v: u64| NumberDataPoint {
        attributes: attrs,
        start_time_unix_nano: start,
        time_unix_nano: time,
        value: Some(number_data_point::Value::AsInt(
            v.min(i64::MAX as u64) as i64
        )),
        ..Default::default()
    };
    let base = |model: &str, key: Option<&str>, service: &str| {
        let mut a = vec![kv("model", model)];
        if let Some(k) = key {
            a.push(kv("api_key_id", k));
        }
        a.push(kv("service_id", service));
        for (k, v) in &shape.static_labels {
            a.push(kv(k, v));
        }
        a
    };
    let p = &shape.prefix;
    let mut requests = Vec::new();
    let (mut input, mut output, mut total) = (Vec::new(), Vec::new(), Vec::new());
    let mut extras: Vec<Vec<NumberDataPoint>> = vec![Vec::new(); snap.extra_names.len()];
    for s in &snap.series {
        let labels = base(&s.model, Some(&s.api_key_id), &s.service_id);
        for class in StatusClass::ALL {
            let n = s.requests[class as usize];
            if n > 0 {
                let mut a = labels.clone();
                a.push(kv("status_class", class.as_str()));
                requests.push(point(a, n));
            }
        }
        input.push(point(labels.clone(), s.input_tokens));
        output.push(point(labels.clone(), s.output_tokens));
        for (i, v) in s.extra_tokens.iter().enumerate() {
            if let Some(e) = extras.get_mut(i) {
                e.push(point(labels.clone(), *v));
            }
        }
        total.push(point(labels, s.total_tokens));
    }
    let mut metrics = vec![
        sum(
            format!("{p}_requests_total"),
            "LLM requests by status class.",
            "{request}",
            requests,
        ),
        sum(
            format!("{p}_input_tokens_total"),
            "Input (prompt) tokens.",
            "{token}",
            input,
        ),
        sum(
            format!("{p}_output_tokens_total"),
            "Output (completion) tokens.",
            "{token}",
            output,
        ),
        sum(
            format!("{p}_tokens_total"),
            "Total tokens.",
            "{token}",
            total,
        ),
    ];
    for (name, points) in snap.extra_names.iter().zip(extras) {
        metrics.push(sum(
            format!("{p}_{name}_tokens_total"),
            "Extra token field.",
            "{token}",
            points,
        ));
    }
    let hist_points = snap
        .durations
        .iter()
        .map(|h| {
            let mut a = base(&h.model, None, &h.service_id);
            a.push(kv("status_class", &h.status_class));
            HistogramDataPoint {
                attributes: a,
                start_time_unix_nano: start,
                time_unix_nano: time,
                count: h.histogram.count,
                sum: Some(h.histogram.sum_seconds),
                bucket_counts: h.histogram.buckets.to_vec(),
                explicit_bounds: DURATION_BUCKETS.to_vec(),
                ..Default::default()
            }
        })
        .collect();
    metrics.push(Metric {
        name: format!("{p}_request_duration_seconds"),
        description: "Duration of LLM requests.".into(),
        unit: "s".into(),
        data: Some(metric::Data::Histogram(Histogram {
            data_points: hist_points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        })),
        ..Default::default()
    });
    metrics.retain(|m| match &m.data {
        Some(metric::Data::Sum(s)) => !s.data_points.is_empty(),
        Some(metric::Data::Histogram(h)) => !h.data_points.is_empty(),
        _ => false,
    });
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: shape.resource.iter().map(|(k, v)| kv(k, v)).collect(),
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "tokenmeter".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// How a push ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    Success,
    /// A 4xx other than 429: logged with the body, counted, not retried.
    Rejected,
    /// Retries ran out of time (backend down); the next interval tries again.
    Failed,
}

impl PushOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            PushOutcome::Success => "success",
            PushOutcome::Rejected => "rejected",
            PushOutcome::Failed => "failed",
        }
    }
}

/// Sends requests to one OTLP endpoint.
pub struct OtlpClient {
    target: HttpTarget,
    gzip: bool,
}

impl OtlpClient {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let o = &config.otlp;
        Ok(OtlpClient {
            target: HttpTarget::new(
                "otlp",
                &o.endpoint,
                o.timeout.0,
                &o.headers,
                &o.bearer_token_file,
                &o.basic_auth,
                &o.tls,
            )?,
            gzip: o.compression == Compression::Gzip,
        })
    }

    fn body(&self, req: &ExportMetricsServiceRequest) -> Vec<u8> {
        let raw = req.encode_to_vec();
        if !self.gzip {
            return raw;
        }
        let mut enc = flate2::write::GzEncoder::new(
            Vec::with_capacity(raw.len() / 4),
            flate2::Compression::fast(),
        );
        match enc.write_all(&raw).and_then(|_| enc.finish()) {
            Ok(b) => b,
            Err(_) => raw,
        }
    }

    /// Pushes once, retrying connection errors, 429 and 502–504 with exponential backoff and
    /// jitter (honouring `Retry-After`) until `deadline` has passed.
    pub async fn push(
        &self,
        req: &ExportMetricsServiceRequest,
        deadline: tokio::time::Instant,
    ) -> PushOutcome {
        let body = self.body(req);
        let mut backoff = Duration::from_millis(500);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut r = self.target.post("application/x-protobuf", body.clone());
            if self.gzip {
                r = r.header("Content-Encoding", "gzip");
            }
            let wait = match r.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        return PushOutcome::Success;
                    }
                    let retry_after = retry_after(&resp);
                    let text = resp.text().await.unwrap_or_default();
                    let retryable = matches!(status.as_u16(), 429 | 502 | 503 | 504);
                    if !retryable {
                        tracing::error!(
                            "OTLP push to {} rejected: {status}: {}",
                            self.target.url(),
                            text.chars().take(1000).collect::<String>()
                        );
                        return PushOutcome::Rejected;
                    }
                    if attempt == 1 {
                        tracing::warn!("OTLP push to {}: {status}; retrying", self.target.url());
                    }
                    retry_after.unwrap_or(backoff)
                }
                Err(e) => {
                    if attempt == 1 {
                        tracing::warn!("OTLP push to {}: {e}; retrying", self.target.url());
                    }
                    backoff
                }
            };
            let wait = jitter(wait);
            if tokio::time::Instant::now() + wait > deadline {
                tracing::warn!("OTLP push to {} failed after {attempt} attempts; the next push carries the same counts", self.target.url());
                return PushOutcome::Failed;
            }
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }
}

/// ±25 % jitter so agents that failed together do not retry together.
pub fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    // A cheap mix of the clock's low bits; uniform enough for spreading retries.
    let r = (nanos.wrapping_mul(2_654_435_761) >> 8) as f64 / (u32::MAX >> 8) as f64;
    d.mul_f64(0.75 + 0.5 * r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::Store;
    use crate::config::Fields;
    use crate::parse::{Parsed, Parser};

    #[test]
    fn request_shape() {
        let mut config = Config::default();
        config.metrics.labels.insert("cluster".into(), "c1".into());
        let mut store = Store::new(&config);
        let mut parser = Parser::new(&Fields::default());
        for line in [
            r#"{"model":"m","api_key_id":"k","aim_service_id":"s","llm_input_token":3,"llm_output_token":4,"response_code":200,"duration":1500}"#,
            r#"{"model":"m","api_key_id":"k","aim_service_id":"s","llm_input_token":10,"response_code":503}"#,
        ] {
            if let Parsed::Record(r) = parser.parse(line) {
                store.add(&r);
            }
        }
        let shape = OtlpShape::from_config(&config, "node-a");
        let req = build_request(&store.snapshot(&[]), &shape, 100, 200);
        let rm = &req.resource_metrics[0];
        let res = &rm.resource.as_ref().unwrap().attributes;
        assert!(res.iter().any(|a| a.key == "service.instance.id"));
        let metrics = &rm.scope_metrics[0].metrics;
        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "llm_requests_total",
                "llm_input_tokens_total",
                "llm_output_tokens_total",
                "llm_tokens_total",
                "llm_request_duration_seconds"
            ]
        );
        let Some(metric::Data::Sum(s)) = &metrics[3].data else {
            panic!()
        };
        assert!(s.is_monotonic);
        assert_eq!(
            s.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        assert_eq!(
            s.data_points[0].value,
            Some(number_data_point::Value::AsInt(17))
        );
        assert_eq!(s.data_points[0].start_time_unix_nano, 100);
        assert!(s.data_points[0]
            .attributes
            .iter()
            .any(|a| a.key == "cluster"));
        let Some(metric::Data::Sum(r)) = &metrics[0].data else {
            panic!()
        };
        assert_eq!(r.data_points.len(), 2, "one point per status class seen");
        let Some(metric::Data::Histogram(h)) = &metrics[4].data else {
            panic!()
        };
        assert_eq!(h.data_points[0].count, 1);
        assert_eq!(
            h.data_points[0].bucket_counts.len(),
            DURATION_BUCKETS.len() + 1
        );
    }
}
