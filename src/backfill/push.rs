//! Backfill as OTLP (docs/backfill.md, `replay --push`): a block window's samples as OTLP requests with
//! their historical timestamps, and the client that sends them within one `--retry-for`.
//!
//! Owns: the backfill's data points (every point with its series' start time, a 0 at that
//! start where a label set starts) and the push outcomes. Must not: build the request
//! envelope (resource, instrumentation scope): `export::otlp::request` is the one the daemon
//! uses, so a backend sees the same resource and scope from a replay as from a live agent.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, NumberDataPoint, Sum,
};

use super::samples::{backfill_families, is_money, FamilySeries, SeriesSamples};
use crate::config::Config;
use crate::export::otlp::{family_metric, kv, request, OtlpClient, OtlpShape, PushOutcome};

/// Stands for "for ever" where `--retry-for` is too large to add to a clock reading.
const YEAR: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

/// OTLP requests per outcome (`success`, `rejected`, `failed`).
pub type PushOutcomes = BTreeMap<&'static str, u64>;

/// `--push`: the client, the request shape, and one `--retry-for` for all requests.
pub struct Pusher {
    client: OtlpClient,
    rt: tokio::runtime::Runtime,
    shape: OtlpShape,
    deadline: tokio::time::Instant,
    pub outcomes: PushOutcomes,
}

impl Pusher {
    /// `instance` is the resource's identity (`--instance`), in the place of the live
    /// agent's node name; `retry_for` starts now and is shared by every request.
    pub fn new(
        config: &Config,
        instance: &str,
        retry_for: std::time::Duration,
    ) -> anyhow::Result<Self> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let now = tokio::time::Instant::now();
        Ok(Pusher {
            client: OtlpClient::new(config)?,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            // The resource as a live agent sends it, with the replay's instance as its
            // identity.
            shape: OtlpShape::from_config(config, instance),
            deadline: now.checked_add(retry_for).unwrap_or(now + YEAR),
            outcomes: BTreeMap::new(),
        })
    }

    /// Pushes one window's samples, [`MAX_POINTS`](crate::export::otlp::MAX_POINTS) points a
    /// request, and counts each request's outcome.
    pub fn push(
        &mut self,
        series: &[SeriesSamples],
        extra_names: &[String],
        currency: Option<&str>,
    ) {
        let requests = otlp_requests(
            series,
            extra_names,
            currency,
            &self.shape,
            crate::export::otlp::MAX_POINTS,
        );
        for req in &requests {
            // Once `--retry-for` is spent the rest is not tried: reported as failed.
            let o = if tokio::time::Instant::now() >= self.deadline {
                PushOutcome::Failed
            } else {
                self.rt.block_on(self.client.push(req, self.deadline))
            };
            *self.outcomes.entry(o.as_str()).or_insert(0) += 1;
        }
    }
}

/// The same samples as OTLP requests, in time order, at most `max_points` points each; every
/// point carries its series' start time so the backend sees one continuous counter, and each
/// series starts with a 0 at that start. `shape` carries the resource attributes and
/// `metrics.labels`; the envelope is `export::otlp::request`, the live push's. Linear in the points.
pub fn otlp_requests(
    series: &[SeriesSamples],
    extra_names: &[String],
    currency: Option<&str>,
    shape: &OtlpShape,
    max_points: usize,
) -> Vec<ExportMetricsServiceRequest> {
    let families = backfill_families(&shape.prefix, extra_names, currency);
    // (time, family index, point), sorted by time so each request moves forward in time.
    let mut points: Vec<(i64, usize, NumberDataPoint)> = Vec::new();
    let mut reader = FamilySeries::new();
    for (fi, family) in families.iter().enumerate() {
        let Some(read) = family.series.as_ref() else {
            continue;
        };
        let money = is_money(family);
        for s in series {
            reader.read(read, s, currency);
            let labels = s.labels.pairs();
            let statics = shape
                .static_labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()));
            let series_attrs: Vec<KeyValue> = labels
                .into_iter()
                .chain(statics)
                .map(|(k, v)| kv(k, v))
                .collect();
            for (set, samples) in reader.each() {
                let mut attrs = series_attrs.clone();
                attrs.extend(set.own.map(|(k, v)| kv(k, v)));
                let start = u64::try_from(s.start_ns).unwrap_or(0);
                // The 0 at the series' start, in the window where the label set starts.
                let zero = set.starts_here.then_some((s.start_ns, 0));
                for (t, v) in zero.into_iter().chain(samples) {
                    points.push((
                        t,
                        fi,
                        NumberDataPoint {
                            attributes: attrs.clone(),
                            start_time_unix_nano: start,
                            time_unix_nano: u64::try_from(t).unwrap_or(0),
                            value: Some(if money {
                                number_data_point::Value::AsDouble(crate::pricing::units_to_f64(v))
                            } else {
                                number_data_point::Value::AsInt(
                                    i64::try_from(v).unwrap_or(i64::MAX),
                                )
                            }),
                            ..Default::default()
                        },
                    ));
                }
            }
        }
    }
    points.sort_by_key(|p| (p.0, p.1));
    let mut requests = Vec::new();
    let mut rest = points.into_iter().peekable();
    while rest.peek().is_some() {
        let mut by_family: BTreeMap<usize, Vec<NumberDataPoint>> = BTreeMap::new();
        for (_, fi, p) in rest.by_ref().take(max_points.max(1)) {
            by_family.entry(fi).or_default().push(p);
        }
        let metrics = by_family
            .into_iter()
            .map(|(fi, data_points)| {
                let sum = metric::Data::Sum(Sum {
                    data_points,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                });
                family_metric(&families[fi], sum)
            })
            .collect();
        // The live push's envelope: the same resource and instrumentation scope.
        requests.push(request(shape, metrics));
    }
    requests
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backfill::samples::one_series;

    /// 30 days at 60 s for one series: linear (it took 5.2 s when it was quadratic). The
    /// bound is loose for debug builds on a slow machine; BENCHMARKS.md has the release time.
    #[test]
    fn otlp_backfill_of_43200_points_is_linear() {
        let s = one_series(43_200);
        let shape = OtlpShape::from_config(&crate::config::Config::default(), "replay");
        let t = std::time::Instant::now();
        let reqs = otlp_requests(std::slice::from_ref(&s), &[], None, &shape, 5000);
        let took = t.elapsed();
        let points: usize = reqs
            .iter()
            .flat_map(|r| &r.resource_metrics[0].scope_metrics[0].metrics)
            .map(|m| match &m.data {
                Some(metric::Data::Sum(s)) => s.data_points.len(),
                _ => 0,
            })
            .sum();
        // requests (one class), input, output, total: each 43,200 values and a leading 0.
        assert_eq!(points, 4 * 43_201);
        assert!(reqs.iter().all(|r| {
            r.resource_metrics[0].scope_metrics[0]
                .metrics
                .iter()
                .map(|m| match &m.data {
                    Some(metric::Data::Sum(s)) => s.data_points.len(),
                    _ => 0,
                })
                .sum::<usize>()
                <= 5000
        }));
        eprintln!("43,200-point OTLP backfill built in {took:?}");
        assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    }

    /// Issue 22: the backfill built its own envelope and had no instrumentation scope. Both
    /// paths now go through `export::otlp::request`: for the same config and node, a backfill
    /// request's resource, scope and schema URLs are the live push's.
    #[test]
    fn backfill_and_live_requests_carry_the_same_resource_and_scope() {
        use crate::aggregate::Store;
        use crate::parse::{Parsed, Parser};
        use crate::schema::View;

        let mut config = Config::default();
        config.metrics.labels.insert("cluster".into(), "c1".into());
        config
            .otlp
            .resource_attributes
            .insert("deployment.environment".into(), "prod".into());
        config
            .otlp
            .resource_attributes
            .insert("host.name".into(), "override".into());
        let shape = OtlpShape::from_config(&config, "node-a");

        let mut store = Store::new(&config);
        let mut parser = Parser::new(&config.fields);
        let line = r#"{"model":"m","api_key_id":"k","aim_service_id":"s","llm_input_token":3,"response_code":200}"#;
        let Parsed::Record(r) = parser.parse(line) else {
            panic!("a record")
        };
        store.add(&r);
        let snap = store.snapshot(&[]);
        let view = View::new(&snap, &shape.static_labels, None);
        let zeros = crate::export::otlp::ZeroBook::default();
        let live: Vec<_> = crate::export::otlp::Requests::new(&view, &shape, 1, 2, false, &zeros)
            .map(|r| r.0)
            .collect();
        let backfill = otlp_requests(&[one_series(3)], &[], None, &shape, 5);
        assert!(!live.is_empty() && backfill.len() > 1);

        let envelope = |req: &ExportMetricsServiceRequest| {
            assert_eq!(req.resource_metrics.len(), 1);
            let rm = &req.resource_metrics[0];
            assert_eq!(rm.scope_metrics.len(), 1);
            let sm = &rm.scope_metrics[0];
            (
                rm.resource.clone(),
                rm.schema_url.clone(),
                sm.scope.clone(),
                sm.schema_url.clone(),
            )
        };
        let want = envelope(&live[0]);
        for req in &backfill {
            assert_eq!(envelope(req), want);
        }
        let scope = want.2.expect("an instrumentation scope");
        assert_eq!(
            (scope.name.as_str(), scope.version.as_str()),
            ("tokenmeter", env!("CARGO_PKG_VERSION"))
        );
        let resource: Vec<(String, String)> = want
            .0
            .expect("a resource")
            .attributes
            .iter()
            .map(|a| match &a.value {
                Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                    value: Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(v)),
                }) => (a.key.clone(), v.clone()),
                v => panic!("{}: {v:?}", a.key),
            })
            .collect();
        let get = |k: &str| {
            resource
                .iter()
                .find(|(rk, _)| rk == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("service.name"), Some("tokenmeter"));
        assert_eq!(get("service.instance.id"), Some("node-a"));
        assert_eq!(get("k8s.node.name"), Some("node-a"));
        assert_eq!(get("host.name"), Some("override"));
        assert_eq!(get("service.version"), Some(env!("CARGO_PKG_VERSION")));
        assert_eq!(get("deployment.environment"), Some("prod"));
    }
}
