//! Backfill (SPEC §6): the cumulative value of every series at the end of each `--step` that
//! has data, as an OpenMetrics file for `promtool tsdb create-blocks-from openmetrics` /
//! `mimirtool backfill`, or as OTLP points with historical timestamps.
//!
//! Owns: bucketing counted records by event time into steps (a [`LineSink`]), the cumulative
//! sums, and the OpenMetrics text. Output is a function of the input and flags only (sorted,
//! no wall-clock time), so the same replay always gives the same bytes.

use std::collections::BTreeMap;
use std::io::{self, Write};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Metric, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::aggregate::Store;
use crate::config::MAX_EXTRA_TOKENS;
use crate::parse::{Record, StatusClass};
use crate::pipeline::LineSink;

/// Per-step additions of one series.
#[derive(Clone, Debug, Default)]
struct Delta {
    requests: [u64; 5],
    input: u64,
    output: u64,
    total: u64,
    extra: [u64; MAX_EXTRA_TOKENS],
}

/// Collects counted records by (series, step).
pub struct Backfill {
    step_ns: i64,
    from_ns: Option<i64>,
    to_ns: Option<i64>,
    deltas: BTreeMap<(usize, i64), Delta>,
    /// Records counted without any event time (cannot be placed; should not happen in replay).
    pub untimed: u64,
    /// Records left out by --from/--to.
    pub outside: u64,
}

impl Backfill {
    pub fn new(step_ns: i64, from_ns: Option<i64>, to_ns: Option<i64>) -> Self {
        Backfill {
            step_ns: step_ns.max(1_000_000_000),
            from_ns,
            to_ns,
            deltas: BTreeMap::new(),
            untimed: 0,
            outside: 0,
        }
    }
}

impl LineSink for Backfill {
    fn accept(&mut self, _record: &Record<'_>, event_ns: Option<i64>) -> bool {
        let Some(t) = event_ns else {
            return self.from_ns.is_none() && self.to_ns.is_none();
        };
        let inside = self.from_ns.is_none_or(|f| t >= f) && self.to_ns.is_none_or(|e| t < e);
        if !inside {
            self.outside += 1;
        }
        inside
    }

    fn counted(&mut self, series: usize, r: &Record<'_>, event_ns: Option<i64>) {
        let Some(t) = event_ns else {
            self.untimed += 1;
            return;
        };
        let step = t.div_euclid(self.step_ns);
        let d = self.deltas.entry((series, step)).or_default();
        d.requests[r.status_class as usize] += 1;
        d.input += r.input_tokens;
        d.output += r.output_tokens;
        d.total += r.total_tokens;
        for (a, b) in d.extra.iter_mut().zip(&r.extra_tokens) {
            *a += b;
        }
    }
}

/// One series' cumulative samples: (timestamp ns = end of step, values).
pub struct SeriesSamples {
    pub model: String,
    pub api_key_id: String,
    pub service_id: String,
    /// First event step start: the OTLP start time of the series.
    pub start_ns: i64,
    pub points: Vec<(i64, Cumulative)>,
}

/// Cumulative values at one step end.
#[derive(Clone, Debug, Default)]
pub struct Cumulative {
    pub requests: [u64; 5],
    pub input: u64,
    pub output: u64,
    pub total: u64,
    pub extra: Vec<u64>,
}

/// What was emitted, for the summary.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Emitted {
    pub series: usize,
    pub samples: usize,
    pub first_sample: Option<String>,
    pub last_sample: Option<String>,
}

impl Backfill {
    /// Cumulative samples per series, series sorted by labels, samples in time order.
    pub fn samples(&self, store: &Store, n_extra: usize) -> Vec<SeriesSamples> {
        let mut by_series: BTreeMap<(String, String, String), SeriesSamples> = BTreeMap::new();
        let mut prev = usize::MAX;
        let mut cum = Cumulative::default();
        for (&(series, step), d) in &self.deltas {
            let Some((m, k, s)) = store.series_labels(series) else {
                continue;
            };
            if series != prev {
                // The map is ordered by (series, step): a new series starts from zero.
                prev = series;
                cum = Cumulative {
                    extra: vec![0; n_extra],
                    ..Default::default()
                };
            }
            for (a, b) in cum.requests.iter_mut().zip(d.requests) {
                *a += b;
            }
            cum.input += d.input;
            cum.output += d.output;
            cum.total += d.total;
            for (a, b) in cum.extra.iter_mut().zip(&d.extra) {
                *a += b;
            }
            let entry = by_series
                .entry((m.to_string(), k.to_string(), s.to_string()))
                .or_insert_with(|| SeriesSamples {
                    model: m.to_string(),
                    api_key_id: k.to_string(),
                    service_id: s.to_string(),
                    start_ns: step * self.step_ns,
                    points: Vec::new(),
                });
            entry.points.push(((step + 1) * self.step_ns, cum.clone()));
        }
        by_series.into_values().collect()
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes the OpenMetrics text: per metric family a `# TYPE` line, each series' samples in
/// time order with timestamps in seconds, `job="tokenmeter"` and `instance`, then `# EOF`.
pub fn write_openmetrics(
    out: &mut dyn Write,
    series: &[SeriesSamples],
    prefix: &str,
    extra_names: &[String],
    static_labels: &BTreeMap<String, String>,
    instance: &str,
) -> io::Result<Emitted> {
    let mut emitted = Emitted {
        series: 0,
        ..Default::default()
    };
    let statics: String = static_labels
        .iter()
        .map(|(k, v)| format!(",{k}=\"{}\"", escape(v)))
        .collect();
    let tail = format!(
        "{statics},job=\"tokenmeter\",instance=\"{}\"",
        escape(instance)
    );
    let labels = |s: &SeriesSamples| {
        format!(
            "model=\"{}\",api_key_id=\"{}\",service_id=\"{}\"",
            escape(&s.model),
            escape(&s.api_key_id),
            escape(&s.service_id)
        )
    };
    let mut first = i64::MAX;
    let mut last = i64::MIN;
    let mut sample = |out: &mut dyn Write, name: &str, l: &str, v: u64, t: i64| -> io::Result<()> {
        emitted.samples += 1;
        first = first.min(t);
        last = last.max(t);
        // Timestamps in seconds: promtool and mimirtool read OpenMetrics seconds, not ms.
        writeln!(out, "{name}{{{l}{tail}}} {v} {}", t / 1_000_000_000)
    };
    // requests_total per status class
    writeln!(out, "# TYPE {prefix}_requests counter")?;
    writeln!(
        out,
        "# HELP {prefix}_requests LLM requests by status class."
    )?;
    for s in series {
        for class in StatusClass::ALL {
            if s.points
                .iter()
                .all(|(_, c)| c.requests[class as usize] == 0)
            {
                continue;
            }
            let l = format!("{},status_class=\"{}\"", labels(s), class.as_str());
            for (t, c) in &s.points {
                sample(
                    out,
                    &format!("{prefix}_requests_total"),
                    &l,
                    c.requests[class as usize],
                    *t,
                )?;
            }
        }
    }
    type Pick = fn(&Cumulative) -> u64;
    let families: [(&str, &str, Pick); 3] = [
        ("input_tokens", "Input (prompt) tokens.", |c| c.input),
        ("output_tokens", "Output (completion) tokens.", |c| c.output),
        ("tokens", "Total tokens.", |c| c.total),
    ];
    for (name, help, pick) in families {
        writeln!(out, "# TYPE {prefix}_{name} counter")?;
        writeln!(out, "# HELP {prefix}_{name} {help}")?;
        for s in series {
            let l = labels(s);
            for (t, c) in &s.points {
                sample(out, &format!("{prefix}_{name}_total"), &l, pick(c), *t)?;
            }
        }
    }
    for (i, name) in extra_names.iter().enumerate() {
        writeln!(out, "# TYPE {prefix}_{name}_tokens counter")?;
        for s in series {
            let l = labels(s);
            for (t, c) in &s.points {
                sample(
                    out,
                    &format!("{prefix}_{name}_tokens_total"),
                    &l,
                    c.extra.get(i).copied().unwrap_or(0),
                    *t,
                )?;
            }
        }
    }
    writeln!(out, "# EOF")?;
    emitted.series = series.len();
    if emitted.samples > 0 {
        emitted.first_sample = Some(crate::timefmt::format_rfc3339_millis(first));
        emitted.last_sample = Some(crate::timefmt::format_rfc3339_millis(last));
    }
    Ok(emitted)
}

/// The same samples as OTLP requests, in time order, at most `max_points` points each; every
/// point carries its series' start time so the backend sees one continuous counter.
pub fn otlp_requests(
    series: &[SeriesSamples],
    prefix: &str,
    extra_names: &[String],
    static_labels: &BTreeMap<String, String>,
    resource: &[(String, String)],
    max_points: usize,
) -> Vec<ExportMetricsServiceRequest> {
    let kv = |k: &str, v: &str| KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_string())),
        }),
    };
    // All points, then sorted by time so each request moves forward in time.
    let mut points: Vec<(i64, String, NumberDataPoint)> = Vec::new();
    for s in series {
        let mut base = vec![
            kv("model", &s.model),
            kv("api_key_id", &s.api_key_id),
            kv("service_id", &s.service_id),
        ];
        for (k, v) in static_labels {
            base.push(kv(k, v));
        }
        let point = |attrs: Vec<KeyValue>, t: i64, v: u64| NumberDataPoint {
            attributes: attrs,
            start_time_unix_nano: s.start_ns.max(0) as u64,
            time_unix_nano: t.max(0) as u64,
            value: Some(number_data_point::Value::AsInt(
                v.min(i64::MAX as u64) as i64
            )),
            ..Default::default()
        };
        for (t, c) in &s.points {
            for class in StatusClass::ALL {
                if s.points.iter().any(|(_, x)| x.requests[class as usize] > 0) {
                    let mut a = base.clone();
                    a.push(kv("status_class", class.as_str()));
                    points.push((
                        *t,
                        format!("{prefix}_requests_total"),
                        point(a, *t, c.requests[class as usize]),
                    ));
                }
            }
            points.push((
                *t,
                format!("{prefix}_input_tokens_total"),
                point(base.clone(), *t, c.input),
            ));
            points.push((
                *t,
                format!("{prefix}_output_tokens_total"),
                point(base.clone(), *t, c.output),
            ));
            points.push((
                *t,
                format!("{prefix}_tokens_total"),
                point(base.clone(), *t, c.total),
            ));
            for (i, name) in extra_names.iter().enumerate() {
                let v = c.extra.get(i).copied().unwrap_or(0);
                points.push((
                    *t,
                    format!("{prefix}_{name}_tokens_total"),
                    point(base.clone(), *t, v),
                ));
            }
        }
    }
    points.sort_by_key(|p| p.0);
    let resource = Resource {
        attributes: resource.iter().map(|(k, v)| kv(k, v)).collect(),
        ..Default::default()
    };
    points
        .chunks(max_points.max(1))
        .map(|chunk| {
            let mut by_name: BTreeMap<&str, Vec<NumberDataPoint>> = BTreeMap::new();
            for (_, name, p) in chunk {
                by_name.entry(name.as_str()).or_default().push(p.clone());
            }
            let metrics = by_name
                .into_iter()
                .map(|(name, data_points)| Metric {
                    name: name.to_string(),
                    unit: if name.ends_with("requests_total") {
                        "{request}"
                    } else {
                        "{token}"
                    }
                    .into(),
                    data: Some(metric::Data::Sum(Sum {
                        data_points,
                        aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        is_monotonic: true,
                    })),
                    ..Default::default()
                })
                .collect();
            ExportMetricsServiceRequest {
                resource_metrics: vec![ResourceMetrics {
                    resource: Some(resource.clone()),
                    scope_metrics: vec![ScopeMetrics {
                        metrics,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            }
        })
        .collect()
}
