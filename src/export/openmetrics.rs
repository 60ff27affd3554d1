//! Backfill (SPEC §6): the cumulative value of every series at the end of each `--step` that
//! has data, as an OpenMetrics file for `promtool tsdb create-blocks-from openmetrics` /
//! `mimirtool backfill`, or as OTLP points with historical timestamps.
//!
//! Owns: the OpenMetrics text and the OTLP backfill requests of block windows' samples
//! (`export::backfill` buckets the records into steps and windows). Output is a function of the input and flags only (sorted,
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

use crate::aggregate::{SelfStats, SeriesSnapshot, Snapshot};
use crate::export::otlp::OtlpShape;
use crate::schema::{families, Family, Kind, Value, View};

/// One series' cumulative samples: (timestamp ns = end of step, values).
pub struct SeriesSamples {
    pub model: String,
    pub api_key_id: String,
    pub service_id: String,
    /// First event step start: the OTLP start time of the series.
    pub start_ns: i64,
    pub points: Vec<(i64, Cumulative)>,
    /// The values at the end of the previous block window, for a series that continues from
    /// one: its label sets that had a sample there do not start again with a 0.
    pub before: Option<Cumulative>,
}

/// Cumulative values at one step end.
#[derive(Clone, Debug, Default)]
pub struct Cumulative {
    pub requests: [u64; 5],
    pub input: u64,
    pub output: u64,
    pub total: u64,
    pub extra: Vec<u64>,
    /// Units of 10^-12 currency.
    pub cost: u128,
}

/// What was emitted, for the summary.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Emitted {
    pub series: usize,
    pub samples: usize,
    /// Block windows written or pushed (files with `--openmetrics DIR`).
    pub windows: usize,
    pub first_sample: Option<String>,
    pub last_sample: Option<String>,
}

/// Appends `v` as an OpenMetrics label value (without quotes).
fn push_escaped(out: &mut String, v: &str) {
    if !v.contains(['\\', '"', '\n']) {
        return out.push_str(v);
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    push_escaped(&mut out, v);
    out
}

/// One series at one step end, as the schema reads it.
fn step_snapshot(
    s: &SeriesSamples,
    c: &Cumulative,
    extra_names: &[String],
    currency: Option<&str>,
) -> Snapshot {
    Snapshot {
        extra_names: extra_names.to_vec(),
        series: vec![SeriesSnapshot {
            model: s.model.clone(),
            api_key_id: s.api_key_id.clone(),
            service_id: s.service_id.clone(),
            requests: c.requests,
            input_tokens: c.input,
            output_tokens: c.output,
            total_tokens: c.total,
            extra_tokens: c.extra.clone(),
            start_ns: s.start_ns,
            cost_units: c.cost,
        }],
        durations: Vec::new(),
        stats: SelfStats::default(),
        pairs: Vec::new(),
        currency: currency.map(str::to_string),
    }
}

/// One label set's samples: its labels, its (time ns, value) pairs in time order (a cost in
/// units of 10^-12 currency), and whether it starts here (no sample in an earlier window: it
/// then starts with a 0, SPEC §4 "First increments").
type LabelSamples = (Vec<(String, String)>, Vec<(i64, u128)>, bool);

/// The points of one token counter family for one series over all its steps, grouped by
/// label set (each group in time order, groups sorted by labels): (labels, [(time ns, value)]).
/// Linear in the steps: one snapshot per series, label sets told apart by a hash and copied
/// once.
fn family_series(
    family: &Family,
    s: &SeriesSamples,
    extra_names: &[String],
    currency: Option<&str>,
    static_labels: &BTreeMap<String, String>,
) -> Vec<LabelSamples> {
    let mut groups: rustc_hash::FxHashMap<u64, LabelSamples> = Default::default();
    let Some((_, first)) = s.points.first() else {
        return Vec::new();
    };
    // One snapshot per series, its counters overwritten step by step (labels cloned once).
    let mut snap = step_snapshot(s, first, extra_names, currency);
    let set = |snap: &mut Snapshot, c: &Cumulative| {
        let x = &mut snap.series[0];
        x.requests = c.requests;
        x.input_tokens = c.input;
        x.output_tokens = c.output;
        x.total_tokens = c.total;
        x.extra_tokens.clone_from(&c.extra);
        x.cost_units = c.cost;
    };
    // Label sets that had a sample in an earlier window continue (no new 0).
    let mut continuing = rustc_hash::FxHashSet::default();
    if let Some(before) = &s.before {
        set(&mut snap, before);
        let view = View::tokens(&snap, static_labels);
        family.points(&view, &mut |p| {
            continuing.insert(crate::export::otlp::series_key("", &p.labels));
        });
    }
    for (t, c) in &s.points {
        let x = &mut snap.series[0];
        x.requests = c.requests;
        x.input_tokens = c.input;
        x.output_tokens = c.output;
        x.total_tokens = c.total;
        x.extra_tokens.clone_from(&c.extra);
        x.cost_units = c.cost;
        let view = View::tokens(&snap, static_labels);
        family.points(&view, &mut |p| {
            let v = match p.value {
                Value::Int(v) => u128::from(v),
                Value::Cost(v) => v,
                _ => return,
            };
            {
                let key = crate::export::otlp::series_key("", &p.labels);
                groups
                    .entry(key)
                    .or_insert_with(|| {
                        let labels = p.labels.iter().map(|(k, v)| (k.to_string(), v.to_string()));
                        (labels.collect(), Vec::new(), !continuing.contains(&key))
                    })
                    .1
                    .push((*t, v));
            }
        });
    }
    let mut out: Vec<LabelSamples> = groups.into_values().collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Whether a family's values are money (the schema's unit says so).
fn is_money(family: &Family) -> bool {
    family.unit == "{cost}"
}

/// The per-series token counters of the schema: backfill has no histogram, no self-metrics
/// and no per-(model, service_id) counters (unpriced/unmetered are in the summary), and cost
/// only with pricing.
fn backfill_families(prefix: &str, extra_names: &[String], currency: Option<&str>) -> Vec<Family> {
    families(prefix, extra_names)
        .into_iter()
        .filter(|f| f.token && f.kind == Kind::Counter)
        .filter(|f| f.labels.starts_with(&["model", "api_key_id", "service_id"]))
        .filter(|f| currency.is_some() || !is_money(f))
        .collect()
}

/// Writes the OpenMetrics text: per metric family of the schema a `# TYPE` and `# HELP` line,
/// each series' samples in time order with timestamps in seconds, `job="tokenmeter"` and
/// `instance`, then `# EOF`. Each series starts with a 0 one step before its first value, so
/// PromQL's `increase()` sees its first increment (SPEC §4 "First increments").
#[allow(clippy::too_many_arguments)]
pub fn write_openmetrics(
    out: &mut dyn Write,
    series: &[SeriesSamples],
    prefix: &str,
    extra_names: &[String],
    currency: Option<&str>,
    static_labels: &BTreeMap<String, String>,
    instance: &str,
    step_ns: i64,
) -> io::Result<Emitted> {
    let mut emitted = Emitted::default();
    let tail = format!(",job=\"tokenmeter\",instance=\"{}\"", escape(instance));
    let mut first = i64::MAX;
    let mut last = i64::MIN;
    let mut line_start = String::new();
    for family in backfill_families(prefix, extra_names, currency) {
        writeln!(out, "# TYPE {} counter", family.name)?;
        writeln!(out, "# HELP {} {}", family.name, family.help)?;
        let name = family.full_name();
        let money = is_money(&family);
        for s in series {
            for (labels, samples, starts_here) in
                family_series(&family, s, extra_names, currency, static_labels)
            {
                // The same start for every sample of this label set: written once, then copied
                // (formatting was most of a backfill's time).
                line_start.clear();
                line_start.push_str(&name);
                line_start.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        line_start.push(',');
                    }
                    line_start.push_str(k);
                    line_start.push_str("=\"");
                    push_escaped(&mut line_start, v);
                    line_start.push('"');
                }
                line_start.push_str(&tail);
                line_start.push_str("} ");
                let zero = samples
                    .first()
                    .filter(|_| starts_here)
                    .map(|(t, _)| t - step_ns);
                let mut line = Vec::with_capacity(line_start.len() + 64);
                for (t, v) in zero.map(|t| (t, 0)).into_iter().chain(samples) {
                    emitted.samples += 1;
                    first = first.min(t);
                    last = last.max(t);
                    line.clear();
                    line.extend_from_slice(line_start.as_bytes());
                    // Money exactly, in decimal (SPEC §10: divided only when written).
                    if money {
                        line.extend_from_slice(crate::pricing::format_units(v).as_bytes());
                    } else {
                        match u64::try_from(v) {
                            Ok(n) => push_decimal(&mut line, n, false),
                            Err(_) => line.extend_from_slice(v.to_string().as_bytes()),
                        }
                    }
                    line.push(b' ');
                    // Timestamps in seconds: promtool and mimirtool read OpenMetrics seconds.
                    let secs = t / 1_000_000_000;
                    push_decimal(&mut line, secs.unsigned_abs(), secs < 0);
                    line.push(b'\n');
                    out.write_all(&line)?;
                }
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

/// Appends `n` in decimal (with a `-` when `negative`).
fn push_decimal(out: &mut Vec<u8>, n: u64, negative: bool) {
    let mut digits = [0u8; 20];
    let at = crate::pricing::write_digits_backwards(&mut digits, n, 1);
    if negative {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
}

/// The same samples as OTLP requests, in time order, at most `max_points` points each; every
/// point carries its series' start time so the backend sees one continuous counter, and each
/// series starts with a 0 at that start. `shape` carries the resource attributes (built in
/// one place for live pushes and backfill) and `metrics.labels`. Linear in the points.
pub fn otlp_requests(
    series: &[SeriesSamples],
    extra_names: &[String],
    currency: Option<&str>,
    shape: &OtlpShape,
    max_points: usize,
) -> Vec<ExportMetricsServiceRequest> {
    let kv = |k: &str, v: &str| KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_string())),
        }),
    };
    let families = backfill_families(&shape.prefix, extra_names, currency);
    // (time, family index, point), sorted by time so each request moves forward in time.
    let mut points: Vec<(i64, usize, NumberDataPoint)> = Vec::new();
    for (fi, family) in families.iter().enumerate() {
        let money = is_money(family);
        for s in series {
            let samples = family_series(family, s, extra_names, currency, &shape.static_labels);
            for (labels, samples, starts_here) in samples {
                let attrs: Vec<KeyValue> = labels.iter().map(|(k, v)| kv(k, v)).collect();
                let start = u64::try_from(s.start_ns).unwrap_or(0);
                // The 0 at the series' start, in the window where the label set starts.
                let zero = starts_here.then_some((s.start_ns, 0));
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
    let resource = Resource {
        attributes: shape.resource.iter().map(|(k, v)| kv(k, v)).collect(),
        ..Default::default()
    };
    let mut requests = Vec::new();
    let mut rest = points.into_iter().peekable();
    while rest.peek().is_some() {
        let mut by_family: BTreeMap<usize, Vec<NumberDataPoint>> = BTreeMap::new();
        for (_, fi, p) in rest.by_ref().take(max_points.max(1)) {
            by_family.entry(fi).or_default().push(p);
        }
        let metrics = by_family
            .into_iter()
            .map(|(fi, data_points)| Metric {
                name: families[fi].full_name(),
                description: families[fi].help.to_string(),
                unit: families[fi].unit.to_string(),
                data: Some(metric::Data::Sum(Sum {
                    data_points,
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                })),
                ..Default::default()
            })
            .collect();
        requests.push(ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        });
    }
    requests
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_series(points: usize) -> SeriesSamples {
        let step = 60_000_000_000i64;
        SeriesSamples {
            model: "m".into(),
            api_key_id: "k".into(),
            service_id: "s".into(),
            start_ns: 1_700_000_000_000_000_000,
            before: None,
            points: (0..points as i64)
                .map(|i| {
                    (
                        1_700_000_000_000_000_000 + (i + 1) * step,
                        Cumulative {
                            requests: [i as u64 + 1, 0, 0, 0, 0],
                            input: 10 * i as u64,
                            output: i as u64,
                            total: 11 * i as u64,
                            extra: vec![],
                            cost: 0,
                        },
                    )
                })
                .collect(),
        }
    }

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

    #[test]
    fn openmetrics_golden_for_one_small_series() {
        let s = one_series(2);
        let mut out = Vec::new();
        let mut labels = BTreeMap::new();
        labels.insert("cluster".to_string(), "c1".to_string());
        write_openmetrics(
            &mut out,
            &[s],
            "llm",
            &[],
            None,
            &labels,
            "node-a",
            60_000_000_000,
        )
        .unwrap();
        let want = "\
# TYPE llm_requests counter
# HELP llm_requests LLM requests by status class.
llm_requests_total{model=\"m\",api_key_id=\"k\",service_id=\"s\",cluster=\"c1\",status_class=\"2xx\",job=\"tokenmeter\",instance=\"node-a\"} 0 1700000000
llm_requests_total{model=\"m\",api_key_id=\"k\",service_id=\"s\",cluster=\"c1\",status_class=\"2xx\",job=\"tokenmeter\",instance=\"node-a\"} 1 1700000060
llm_requests_total{model=\"m\",api_key_id=\"k\",service_id=\"s\",cluster=\"c1\",status_class=\"2xx\",job=\"tokenmeter\",instance=\"node-a\"} 2 1700000120
# TYPE llm_input_tokens counter
# HELP llm_input_tokens Input (prompt) tokens.
llm_input_tokens_total{model=\"m\",api_key_id=\"k\",service_id=\"s\",cluster=\"c1\",job=\"tokenmeter\",instance=\"node-a\"} 0 1700000000
llm_input_tokens_total{model=\"m\",api_key_id=\"k\",service_id=\"s\",cluster=\"c1\",job=\"tokenmeter\",instance=\"node-a\"} 0 1700000060
llm_input_tokens_total{model=\"m\",api_key_id=\"k\",service_id=\"s\",cluster=\"c1\",job=\"tokenmeter\",instance=\"node-a\"} 10 1700000120
# TYPE llm_output_tokens counter
# HELP llm_output_tokens Output (completion) tokens.
llm_output_tokens_total{model=\"m\",api_key_id=\"k\",service_id=\"s\",cluster=\"c1\",job=\"tokenmeter\",instance=\"node-a\"} 0 1700000000
llm_output_tokens_total{model=\"m\",api_key_id=\"k\",service_id=\"s\",cluster=\"c1\",job=\"tokenmeter\",instance=\"node-a\"} 0 1700000060
llm_output_tokens_total{model=\"m\",api_key_id=\"k\",service_id=\"s\",cluster=\"c1\",job=\"tokenmeter\",instance=\"node-a\"} 1 1700000120
# TYPE llm_tokens counter
# HELP llm_tokens Total tokens.
llm_tokens_total{model=\"m\",api_key_id=\"k\",service_id=\"s\",cluster=\"c1\",job=\"tokenmeter\",instance=\"node-a\"} 0 1700000000
llm_tokens_total{model=\"m\",api_key_id=\"k\",service_id=\"s\",cluster=\"c1\",job=\"tokenmeter\",instance=\"node-a\"} 0 1700000060
llm_tokens_total{model=\"m\",api_key_id=\"k\",service_id=\"s\",cluster=\"c1\",job=\"tokenmeter\",instance=\"node-a\"} 11 1700000120
# EOF
";
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }
}
