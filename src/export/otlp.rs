//! OTLP/HTTP metrics export (docs/metrics.md, docs/otlp-and-loki.md): the store's snapshot as an
//! `ExportMetricsServiceRequest` of monotonic cumulative Sums and a Histogram, POSTed as
//! protobuf (gzip) with retries.
//!
//! Owns: the OTLP shape (names exactly as the Prometheus names, `_total` included, because
//! Mimir's default translation adds no suffix), resource attributes, the one request envelope
//! (resource and instrumentation scope; `backfill::push` builds its requests with it too), and
//! the push policy. Reads snapshots only; never changes counting. Cumulative values mean a failed push loses
//! nothing: the next one carries everything.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use crate::aggregate::DURATION_BUCKETS;
use crate::config::{Compression, Config};
use crate::export::http::{retry_after, HttpTarget};
use crate::schema::{families, Family, Kind, Point, Value, View};

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

/// A string attribute (resource or data point).
pub fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_string())),
        }),
    }
}

/// The one OTLP request envelope, for the daemon's pushes and `replay --push` alike (they
/// drifted apart when each built its own): the resource of `shape` (`service.name`,
/// `service.instance.id`, `k8s.node.name`, `host.name`, `service.version` and the configured
/// `otlp.resource_attributes`), the instrumentation scope (`tokenmeter` and its version),
/// and `metrics` in one `ScopeMetrics`.
pub fn request(shape: &OtlpShape, metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
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

/// A family's metric: its name, help and unit as the schema has them (the same on the scrape
/// path, the push and the backfill), around `data`.
pub fn family_metric(family: &Family, data: metric::Data) -> Metric {
    Metric {
        name: family.full_name(),
        description: family.help.to_string(),
        unit: family.unit.to_string(),
        data: Some(data),
        ..Default::default()
    }
}

/// Data points per request: bounds the memory of a push whatever the number of series
/// (~100 B a point encoded; a request stays well under 1 MB).
pub const MAX_POINTS: usize = 5000;
/// A counter point's 0 is sent for at most this long after the time it is put at (Mimir
/// would refuse a sample that old), so that the 0 → value step of its first records reaches
/// Mimir with its default settings and PromQL's `increase()` sees it.
pub const ZERO_WINDOW_NS: i64 = 10 * 60 * 1_000_000_000;

/// The one owner of the decision "does this counter point carry a 0, and at what time",
/// across the pushes of a process. A point is one OTLP series (family and labels, see
/// [`series_key`]); each goes through: new → pending (its 0 offered, not accepted yet) →
/// done (accepted, expired, or there before this process was ready).
///
/// - **Baseline.** The points present when the process became ready (the state read and
///   every file read to its end) are done from the start: an earlier run may have exported
///   them, past its last state save, and a 0 after their stored value would be a reset.
///   Every point seen later comes from lines no earlier run read, so it never had a sample.
/// - **When.** A new point's 0 is at its series' start, or at the previous push's snapshot if
///   that is later: a point that appears after its series (an extra token type's first count,
///   a status class or currency first seen) was 0 then.
/// - **Fixed.** The time is chosen at the point's first offer and kept for every retry, so a
///   request that Mimir stored but whose answer was lost never leads to a later 0 (which
///   would be a counter reset); a 0 sent again at the same time is a duplicate Mimir ignores
///   or refuses as out of order, both harmless.
/// - **Bounded.** A pending 0 older than [`ZERO_WINDOW_NS`] is dropped for good.
#[derive(Debug, Default)]
pub struct ZeroBook {
    /// Points that get no 0 any more.
    done: std::collections::HashSet<u64>,
    /// Points whose 0 was offered and not accepted: the time it is put at.
    pending: std::collections::HashMap<u64, i64>,
    /// When the previous push (or the baseline) took its snapshot.
    previous_ns: i64,
}

impl ZeroBook {
    /// The book of a process that became ready at `taken_ns` with these points.
    pub fn baseline(points: impl IntoIterator<Item = u64>, taken_ns: i64) -> ZeroBook {
        ZeroBook {
            done: points.into_iter().collect(),
            pending: Default::default(),
            previous_ns: taken_ns,
        }
    }

    /// The time of `key`'s 0 in a push at `time_ns`, if it carries one; `start_ns` is its
    /// series' start.
    fn zero_at(&self, key: u64, start_ns: i64, time_ns: i64) -> Option<i64> {
        if self.done.contains(&key) {
            return None;
        }
        let at = match self.pending.get(&key) {
            Some(&at) => at,
            None => start_ns.max(self.previous_ns),
        };
        (time_ns.saturating_sub(at) < ZERO_WINDOW_NS).then_some(at)
    }

    /// What became of a request offering these 0s (`(key, time)`, from [`Requests`]).
    pub fn outcome(&mut self, offered: &[(u64, i64)], accepted: bool) {
        for &(key, at) in offered {
            if accepted {
                self.pending.remove(&key);
                self.done.insert(key);
            } else {
                self.pending.entry(key).or_insert(at);
            }
        }
    }

    /// A push whose snapshot was taken at `taken_ns` ended at `now_ns`: the next one puts new
    /// points' 0 at `taken_ns`, and pending 0s past the window are dropped for good.
    pub fn pushed(&mut self, taken_ns: i64, now_ns: i64) {
        self.previous_ns = taken_ns;
        let done = &mut self.done;
        self.pending.retain(|&key, &mut at| {
            let keep = now_ns.saturating_sub(at) < ZERO_WINDOW_NS;
            if !keep {
                done.insert(key);
            }
            keep
        });
    }

    /// How many points it knows (for tests and memory accounting).
    pub fn len(&self) -> usize {
        self.done.len() + self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The keys of every counter point a push of `view` would send: the baseline of a
/// [`ZeroBook`].
pub fn counter_points(view: &View<'_>, shape: &OtlpShape, self_metrics: bool) -> Vec<u64> {
    let mut keys = Vec::new();
    for family in families(&shape.prefix, &view.snap.extra_names) {
        if family.kind != Kind::Counter || (!family.token && !self_metrics) {
            continue;
        }
        family.points(view, &mut |p| {
            keys.push(series_key(&family.name, &p.labels))
        });
    }
    keys
}

/// The identity of one OTLP series (family and labels), for [`ZeroBook`].
pub fn series_key(family: &str, labels: &[(&str, &str)]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    family.hash(&mut h);
    labels.hash(&mut h);
    h.finish()
}

/// The requests of one push: the schema's families over `view`, at most [`MAX_POINTS`] data
/// points each, built one at a time as they are sent. `default_start_ns` is the start of
/// series without their own (the agent's); `time_ns` the push time; `self_metrics` whether
/// the `tokenmeter_*` families go too.
pub struct Requests<'v> {
    view: &'v View<'v>,
    families: Vec<Family>,
    shape: &'v OtlpShape,
    default_start_ns: i64,
    time_ns: i64,
    self_metrics: bool,
    zeros: &'v ZeroBook,
    max_points: usize,
    next_family: usize,
    /// Points of the family being sent, and how many of them are sent.
    buf: Vec<Point<'v>>,
    sent: usize,
}

impl<'v> Requests<'v> {
    pub fn new(
        view: &'v View<'v>,
        shape: &'v OtlpShape,
        default_start_ns: i64,
        time_ns: i64,
        self_metrics: bool,
        zeros: &'v ZeroBook,
    ) -> Self {
        Requests {
            zeros,
            families: families(&shape.prefix, &view.snap.extra_names),
            view,
            shape,
            default_start_ns,
            time_ns,
            self_metrics,
            max_points: MAX_POINTS,
            next_family: 0,
            buf: Vec::new(),
            sent: 0,
        }
    }

    /// Smaller requests (tests).
    pub fn with_max_points(mut self, n: usize) -> Self {
        self.max_points = n.max(1);
        self
    }

    fn data_point(
        &self,
        p: &Point<'_>,
        zero: Option<u64>,
        offered: &mut Vec<(u64, i64)>,
    ) -> (Option<NumberDataPoint>, NumberDataPoint) {
        let start = if p.start_ns > 0 {
            p.start_ns
        } else {
            self.default_start_ns
        };
        let attrs = || p.labels.iter().map(|(k, v)| kv(k, v)).collect::<Vec<_>>();
        let int = |n: u64| {
            Some(number_data_point::Value::AsInt(
                i64::try_from(n).unwrap_or(i64::MAX),
            ))
        };
        let value = match p.value {
            Value::Int(n) => int(n),
            Value::Gauge(n) => Some(number_data_point::Value::AsInt(n)),
            Value::Cost(units) => Some(number_data_point::Value::AsDouble(
                crate::pricing::units_to_f64(units),
            )),
            Value::Histogram(_) => None,
        };
        // The 0 (see `ZeroBook`), and the value strictly after it.
        // A point of unknown start (a self-metric, a series of an older state) gets none.
        let zero_ns = zero.filter(|_| p.start_ns > 0).and_then(|key| {
            let at = self.zeros.zero_at(key, start, self.time_ns)?;
            offered.push((key, at));
            Some(at)
        });
        let time = match zero_ns {
            Some(at) => self.time_ns.max(at.saturating_add(1)),
            None => self.time_ns,
        };
        let zero_point = zero_ns.map(|at| NumberDataPoint {
            attributes: attrs(),
            start_time_unix_nano: nanos(start),
            time_unix_nano: nanos(at),
            value: int(0),
            ..Default::default()
        });
        (
            zero_point,
            NumberDataPoint {
                attributes: attrs(),
                start_time_unix_nano: nanos(start),
                time_unix_nano: nanos(time),
                value,
                ..Default::default()
            },
        )
    }

    fn metric(
        &self,
        family: &Family,
        points: &[Point<'_>],
        offered: &mut Vec<(u64, i64)>,
    ) -> Metric {
        let data = match family.kind {
            Kind::Counter => {
                let mut data_points = Vec::with_capacity(points.len());
                for p in points {
                    let key = series_key(&family.name, &p.labels);
                    let (zero, value) = self.data_point(p, Some(key), offered);
                    data_points.extend(zero);
                    data_points.push(value);
                }
                metric::Data::Sum(Sum {
                    data_points,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                })
            }
            Kind::Gauge => metric::Data::Gauge(Gauge {
                data_points: points
                    .iter()
                    .map(|p| self.data_point(p, None, offered).1)
                    .collect(),
            }),
            Kind::Histogram => metric::Data::Histogram(Histogram {
                data_points: points
                    .iter()
                    .filter_map(|p| {
                        let Value::Histogram(h) = p.value else {
                            return None;
                        };
                        let start = if p.start_ns > 0 {
                            p.start_ns
                        } else {
                            self.default_start_ns
                        };
                        Some(HistogramDataPoint {
                            attributes: p.labels.iter().map(|(k, v)| kv(k, v)).collect(),
                            start_time_unix_nano: nanos(start),
                            time_unix_nano: nanos(self.time_ns),
                            count: h.count,
                            sum: Some(h.sum_seconds),
                            bucket_counts: h.buckets.to_vec(),
                            explicit_bounds: DURATION_BUCKETS.to_vec(),
                            ..Default::default()
                        })
                    })
                    .collect(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
        };
        family_metric(family, data)
    }
}

impl Iterator for Requests<'_> {
    /// A request, and the 0s it offers (key, time), for [`ZeroBook::outcome`].
    type Item = (ExportMetricsServiceRequest, Vec<(u64, i64)>);

    fn next(&mut self) -> Option<Self::Item> {
        let mut metrics = Vec::new();
        let mut offered = Vec::new();
        let mut budget = self.max_points;
        while budget > 0 {
            if self.sent == self.buf.len() {
                // The next family with points.
                let Some(family) = self.families.get(self.next_family) else {
                    break;
                };
                self.next_family += 1;
                if !family.token && !self.self_metrics {
                    continue;
                }
                self.buf.clear();
                self.sent = 0;
                let buf = &mut self.buf;
                family.points(self.view, &mut |p| buf.push(p));
                continue;
            }
            let family = &self.families[self.next_family - 1];
            // A counter point may carry its 0: it counts twice against the budget.
            let cost = if family.kind == Kind::Counter { 2 } else { 1 };
            let take = (budget / cost).min(self.buf.len() - self.sent);
            if take == 0 {
                break;
            }
            let m = self.metric(family, &self.buf[self.sent..self.sent + take], &mut offered);
            self.sent += take;
            budget -= take * cost;
            metrics.push(m);
        }
        (!metrics.is_empty()).then(|| (request(self.shape, metrics), offered))
    }
}

fn nanos(t: i64) -> u64 {
    u64::try_from(t).unwrap_or(0)
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
    max_backoff: Duration,
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
            max_backoff: o.max_backoff.0,
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
                    let retry_after = retry_after(&resp, self.max_backoff);
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
                    // Honoured, but never sooner than our own backoff: a `Retry-After: 0` or a
                    // date in the past must not turn into a tight loop.
                    retry_after.map_or(backoff, |ra| ra.max(backoff))
                }
                Err(e) => {
                    if attempt == 1 {
                        // `PushError` text never holds the URL (credentials scrubbed).
                        tracing::warn!("OTLP push to {}: {e}; retrying", self.target.url());
                    }
                    backoff
                }
            };
            let wait = jitter(wait);
            let retry_at = tokio::time::Instant::now().checked_add(wait);
            if retry_at.is_none_or(|t| t > deadline) {
                tracing::warn!(
                    "OTLP push to {} failed after {attempt} attempts",
                    self.target.url()
                );
                return PushOutcome::Failed;
            }
            tokio::time::sleep(wait).await;
            backoff = backoff.saturating_mul(2).min(self.max_backoff);
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
    // Saturating: `mul_f64` panics past Duration's range.
    Duration::try_from_secs_f64(d.as_secs_f64() * (0.75 + 0.5 * r)).unwrap_or(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{Snapshot, Store};
    use crate::config::Fields;
    use crate::parse::{Parsed, Parser};
    use crate::schema::AgentView;

    fn store(config: &Config, lines: &[String]) -> Snapshot {
        store_of(config, lines, &[])
    }

    /// [`store`] whose snapshot carries `extra_names`' families.
    fn store_of(config: &Config, lines: &[String], extra_names: &[String]) -> Snapshot {
        let mut store = Store::new(config);
        store.set_clock(100); // the series are created at t = 100 ns
        let mut parser = Parser::new(&Fields::default());
        for line in lines {
            if let Parsed::Record(r) = parser.parse(line) {
                store.add(&r);
            }
        }
        store.snapshot(extra_names)
    }

    fn points(req: &ExportMetricsServiceRequest) -> usize {
        req.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .map(|m| match &m.data {
                Some(metric::Data::Sum(s)) => s.data_points.len(),
                Some(metric::Data::Gauge(g)) => g.data_points.len(),
                Some(metric::Data::Histogram(h)) => h.data_points.len(),
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn request_shape_and_the_zero_before_a_new_series() {
        let mut config = Config::default();
        config.metrics.labels.insert("cluster".into(), "c1".into());
        let snap = store(
            &config,
            &[
                r#"{"model":"m","api_key_id":"k","aim_service_id":"s","llm_input_token":3,"llm_output_token":4,"response_code":200,"duration":1500}"#.into(),
                r#"{"model":"m","api_key_id":"k","aim_service_id":"s","llm_input_token":10,"response_code":503}"#.into(),
            ],
        );
        let shape = OtlpShape::from_config(&config, "node-a");
        let view = View::new(&snap, &shape.static_labels, None);
        let book = ZeroBook::default();
        let all: Vec<_> = Requests::new(&view, &shape, 1, 200, false, &book).collect();
        assert_eq!(
            all[0].1.len(),
            5,
            "the 0s of 5 counter series are announced with it"
        );
        let reqs: Vec<_> = all.into_iter().map(|r| r.0).collect();
        assert_eq!(reqs.len(), 1);
        let rm = &reqs[0].resource_metrics[0];
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
        // A series younger than the window: its 0 at its start, then its value.
        let (zero, value) = (&s.data_points[0], &s.data_points[1]);
        assert_eq!(zero.value, Some(number_data_point::Value::AsInt(0)));
        assert_eq!((zero.start_time_unix_nano, zero.time_unix_nano), (100, 100));
        assert_eq!(value.value, Some(number_data_point::Value::AsInt(17)));
        assert_eq!(
            (value.start_time_unix_nano, value.time_unix_nano),
            (100, 200)
        );
        assert!(value.attributes.iter().any(|a| a.key == "cluster"));
        let Some(metric::Data::Sum(r)) = &metrics[0].data else {
            panic!()
        };
        assert_eq!(
            r.data_points.len(),
            4,
            "one point (and its 0) per status class seen"
        );
        let Some(metric::Data::Histogram(h)) = &metrics[4].data else {
            panic!()
        };
        assert_eq!(h.data_points[0].count, 1);
        assert_eq!(
            h.data_points[0].bucket_counts.len(),
            DURATION_BUCKETS.len() + 1
        );
        // Accepted once: no 0 any more.
        let mut accepted = ZeroBook::default();
        let offered: Vec<_> = Requests::new(&view, &shape, 1, 200, false, &accepted)
            .flat_map(|r| r.1)
            .collect();
        accepted.outcome(&offered, true);
        let again: Vec<_> = Requests::new(&view, &shape, 1, 300, false, &accepted).collect();
        assert_eq!(points(&again[0].0), 6, "{:?}", again[0].1);
        // There when the process became ready (an earlier run may have sent it): no 0.
        let keys = counter_points(&view, &shape, false);
        assert_eq!(keys.len(), 5);
        let baseline = ZeroBook::baseline(keys, 50);
        let old: Vec<_> = Requests::new(&view, &shape, 1, 300, false, &baseline).collect();
        assert_eq!(points(&old[0].0), 6);
        // Its 0 older than the window: not sent.
        let reqs: Vec<_> = Requests::new(&view, &shape, 100, 100 + ZERO_WINDOW_NS, false, &book)
            .map(|r| r.0)
            .collect();
        assert_eq!(
            points(&reqs[0]),
            6,
            "two status classes, input, output, total, one histogram"
        );
    }

    /// `llm_requests_total` and `llm_cached_input_tokens_total` points of a request:
    /// (value, start, time) each, 0s included.
    fn counter_points_of(req: &ExportMetricsServiceRequest, name: &str) -> Vec<(i64, u64, u64)> {
        let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
        let m = metrics.iter().find(|m| m.name == name).expect(name);
        let Some(metric::Data::Sum(s)) = &m.data else {
            panic!("{name}")
        };
        s.data_points
            .iter()
            .map(|p| {
                let Some(number_data_point::Value::AsInt(v)) = p.value else {
                    panic!("{name}")
                };
                (v, p.start_time_unix_nano, p.time_unix_nano)
            })
            .collect()
    }

    #[test]
    fn a_point_first_seen_long_after_its_series_started_gets_its_0_at_the_previous_push() {
        let config = Config::default();
        let first = r#"{"model":"m","api_key_id":"k","llm_input_token":3,"response_code":200}"#;
        let later = [
            first.to_string(),
            // 20 minutes on: a status class and an extra token type the series had not had.
            r#"{"model":"m","api_key_id":"k","llm_input_token":5,"llm_cached_input_token":2,"response_code":503}"#.to_string(),
        ];
        let shape = OtlpShape::from_config(&config, "node-a");
        let before = store(&config, &[first.to_string()]);
        let view = View::new(&before, &shape.static_labels, None);
        // The series was there when the process became ready (restored from the state file):
        // its points get no 0; the points that appear later do.
        let mut book = ZeroBook::baseline(counter_points(&view, &shape, false), 150);
        for (_, offered) in Requests::new(&view, &shape, 1, 200, false, &book) {
            assert!(offered.is_empty(), "{offered:?}");
        }
        let after = store_of(&config, &later, &config.fields.extra_names());
        let view = View::new(&after, &shape.static_labels, None);
        let now = 100 + 2 * ZERO_WINDOW_NS;
        let previous = now - 15_000_000_000;
        book.pushed(previous, previous);
        let push = |book: &ZeroBook, at: i64| {
            Requests::new(&view, &shape, 1, at, false, book).collect::<Vec<_>>()
        };
        let reqs = push(&book, now);
        let (start, prev, t) = (100, previous as u64, now as u64);
        // The 2xx class was there: no 0. The new 5xx class and the first cached tokens: a 0
        // at the previous push, then the value.
        assert_eq!(
            counter_points_of(&reqs[0].0, "llm_requests_total"),
            vec![(1, start, t), (0, start, prev), (1, start, t)]
        );
        assert_eq!(
            counter_points_of(&reqs[0].0, "llm_cached_input_tokens_total"),
            vec![(0, start, prev), (2, start, t)]
        );
        assert_eq!(
            counter_points_of(&reqs[0].0, "llm_input_tokens_total"),
            vec![(8, start, t)]
        );

        // That push failed (perhaps after Mimir stored it): the next pushes, whatever their
        // time and however many fail, put the 0 at the same time, never later (a 0 after a
        // stored value would be a counter reset).
        book.outcome(&reqs[0].1, false);
        for k in 1..=3 {
            let at = now + k * 15_000_000_000;
            book.pushed(at - 15_000_000_000, at - 15_000_000_000);
            let reqs = push(&book, at);
            assert_eq!(
                counter_points_of(&reqs[0].0, "llm_cached_input_tokens_total"),
                vec![(0, start, prev), (2, start, at as u64)],
                "retry {k}"
            );
            book.outcome(&reqs[0].1, false);
        }
        // Past the window after its first offer: dropped for good, never offered again.
        let late = previous + ZERO_WINDOW_NS;
        book.pushed(late, late);
        let reqs = push(&book, late + 1);
        assert!(reqs[0].1.is_empty(), "{:?}", reqs[0].1);
        assert_eq!(
            counter_points_of(&reqs[0].0, "llm_cached_input_tokens_total"),
            vec![(2, start, late as u64 + 1)]
        );
        // Accepted: done.
        let mut accepted = ZeroBook::default();
        let reqs = push(&accepted, 200);
        accepted.outcome(&reqs[0].1, true);
        assert!(push(&accepted, 201)[0].1.is_empty());
        assert_eq!(accepted.len(), 6, "every counter point of the snapshot");
    }

    #[test]
    fn many_series_are_split_into_bounded_requests_with_every_point_once() {
        let config = Config::default();
        let lines: Vec<String> = (0..997)
            .map(|i| format!(r#"{{"model":"m{}","api_key_id":"k{i}","aim_service_id":"s","llm_input_token":{i},"llm_output_token":1,"response_code":200}}"#, i % 7))
            .collect();
        let snap = store(&config, &lines);
        let shape = OtlpShape::from_config(&config, "node-a");
        let view = View::new(&snap, &shape.static_labels, None);
        let book = ZeroBook::default();
        let whole: usize = Requests::new(&view, &shape, 1, i64::MAX / 2, false, &book)
            .with_max_points(usize::MAX)
            .map(|r| points(&r.0))
            .sum();
        let parts: Vec<_> = Requests::new(&view, &shape, 1, i64::MAX / 2, false, &book)
            .with_max_points(100)
            .map(|r| r.0)
            .collect();
        assert!(parts.iter().all(|r| points(r) <= 100));
        assert_eq!(parts.iter().map(points).sum::<usize>(), whole);
        // 997 series × 4 counters + 7 duration series... none here (no duration field).
        assert_eq!(whole, 997 * 4);
        assert!(parts.len() >= 40);
    }

    #[test]
    fn self_metrics_go_with_the_same_names_as_on_the_scrape_path() {
        let config = Config::default();
        let snap = store(&config, &[]);
        let shape = OtlpShape::from_config(&config, "node-a");
        let agent = AgentView::default();
        let view = View::new(&snap, &shape.static_labels, Some(&agent));
        let book = ZeroBook::default();
        let names: Vec<String> = Requests::new(&view, &shape, 1, 2, true, &book)
            .map(|r| r.0)
            .flat_map(|r| {
                r.resource_metrics[0].scope_metrics[0]
                    .metrics
                    .iter()
                    .map(|m| m.name.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        for want in [
            "tokenmeter_lines_total",
            "tokenmeter_files",
            "tokenmeter_file_errors_total",
            "tokenmeter_exports_total",
            "tokenmeter_checkpoint_writes_total",
            "tokenmeter_build_info",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        let without: usize = Requests::new(&view, &shape, 1, 2, false, &book).count();
        assert_eq!(
            without, 0,
            "no token series and no self-metrics: nothing to send"
        );
    }

    /// The exact request for a fixed snapshot (its prost structure, printed), so a change of
    /// any name, unit, label, time or value shows. `TOKENMETER_BLESS=1` accepts a change.
    #[test]
    fn otlp_request_golden() {
        let mut config = Config::default();
        config.metrics.labels.insert("cluster".into(), "c1".into());
        let snap = store(
            &config,
            &[r#"{"model":"m","api_key_id":"k","aim_service_id":"s","llm_input_token":3,"llm_output_token":4,"response_code":200,"duration":1500}"#.into()],
        );
        let shape = OtlpShape::from_config(&config, "node-a");
        let agent = AgentView {
            otlp: [5, 1, 2],
            ..AgentView::default()
        };
        let view = View::new(&snap, &shape.static_labels, Some(&agent));
        let book = ZeroBook::default();
        let reqs: Vec<_> = Requests::new(&view, &shape, 50, 200, true, &book)
            .map(|r| r.0)
            .collect();
        let text = format!("{reqs:#?}\n").replace(env!("CARGO_PKG_VERSION"), "VERSION");
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/expected/otlp-golden.txt"
        );
        if std::env::var_os("TOKENMETER_BLESS").is_some() {
            std::fs::write(path, &text).unwrap();
        }
        let want = std::fs::read_to_string(path).unwrap();
        assert_eq!(text, want, "run with TOKENMETER_BLESS=1 to accept a change");
    }
}
