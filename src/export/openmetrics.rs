//! Backfill (SPEC §6): the cumulative value of every series at the end of each `--step` that
//! has data, as an OpenMetrics file for `promtool tsdb create-blocks-from openmetrics` /
//! `mimirtool backfill`, or as OTLP points with historical timestamps.
//!
//! Owns: the OpenMetrics text and the OTLP backfill requests of block windows' samples
//! (`export::backfill` buckets the records into steps and windows). Output is a function of the input and flags only (sorted,
//! no wall-clock time), so the same replay always gives the same bytes.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Metric, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use crate::aggregate::SeriesSnapshot;
use crate::export::otlp::OtlpShape;
use crate::schema::{families, Family, Kind, SeriesRead, Value};

/// One series' cumulative samples: (timestamp ns = end of step, values).
pub struct SeriesSamples {
    /// Shared with the stream's series (a window hands out its labels without copying them).
    pub labels: Arc<SeriesLabels>,
    /// First event step start: the OTLP start time of the series.
    pub start_ns: i64,
    pub points: Vec<(i64, Cumulative)>,
    /// The values at the end of the previous block window, for a series that continues from
    /// one: its label sets that had a sample there do not start again with a 0.
    pub before: Option<Cumulative>,
}

/// A series' labels; ordered as the output orders series.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SeriesLabels {
    pub model: String,
    pub api_key_id: String,
    pub service_id: String,
}

impl SeriesLabels {
    /// The label pairs, in the schema's order.
    pub fn pairs(&self) -> [(&'static str, &str); 3] {
        [
            ("model", &self.model),
            ("api_key_id", &self.api_key_id),
            ("service_id", &self.service_id),
        ]
    }
}

/// Cumulative values at one step end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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
    if memchr::memchr3(b'\\', b'"', b'\n', v.as_bytes()).is_none() {
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

/// One label set of one series in one family: the label after the series' own and
/// `metrics.labels` (`status_class`, `currency`, or none), its first sample's time, and
/// whether it starts here (no sample in an earlier window: it then starts with a 0, SPEC §4
/// "First increments").
#[derive(Clone, Copy)]
struct LabelSet<'c> {
    own: Option<(&'static str, &'c str)>,
    first_ns: i64,
    starts_here: bool,
}

/// Whether two own labels are the same: by address first (the schema hands out the same
/// `&'static str` or currency string every step), then by text.
fn same_label(a: Option<(&str, &str)>, b: Option<(&str, &str)>) -> bool {
    let addr = |l: Option<(&str, &str)>| l.map(|(k, v)| (k.as_ptr(), k.len(), v.as_ptr(), v.len()));
    addr(a) == addr(b) || a == b
}

/// The samples of one per-series family for one series, read step by step through the
/// schema's [`SeriesRead`]; the buffers are reused from series to series.
struct FamilySeries<'c> {
    /// The series at one step, as the schema reads it: its counters (no labels).
    scratch: SeriesSnapshot,
    /// Label sets in the order first seen.
    sets: Vec<LabelSet<'c>>,
    /// Indices into `sets`, sorted by labels (the series' labels being equal, by the own
    /// label).
    order: Vec<usize>,
    /// (index into `sets`, time ns, value), in time order; a cost in units of 10^-12.
    samples: Vec<(usize, i64, u128)>,
    continuing: Vec<Option<(&'static str, &'c str)>>,
}

impl<'c> FamilySeries<'c> {
    fn new() -> Self {
        FamilySeries {
            scratch: SeriesSnapshot::default(),
            sets: Vec::new(),
            order: Vec::new(),
            samples: Vec::new(),
            continuing: Vec::new(),
        }
    }

    fn load(x: &mut SeriesSnapshot, c: &Cumulative) {
        x.requests = c.requests;
        x.input_tokens = c.input;
        x.output_tokens = c.output;
        x.total_tokens = c.total;
        x.extra_tokens.clone_from(&c.extra);
        x.cost_units = c.cost;
    }

    /// Reads every step of `s` through `read`. Linear in the steps; label sets are told
    /// apart by their own label alone (at most one per status class).
    fn read(&mut self, read: &SeriesRead, s: &SeriesSamples, currency: Option<&'c str>) {
        self.sets.clear();
        self.order.clear();
        self.samples.clear();
        self.continuing.clear();
        // Counters only: a per-series read does not look at labels (the formatter writes
        // them), and copying them per family and series was a cache miss each.
        let x = &mut self.scratch;
        x.start_ns = s.start_ns;
        // Label sets that had a sample in an earlier window continue (no new 0).
        if let Some(before) = &s.before {
            Self::load(x, before);
            let continuing = &mut self.continuing;
            read(x, currency, &mut |own, _| continuing.push(own));
        }
        for (t, c) in &s.points {
            Self::load(x, c);
            let (sets, samples, continuing) = (&mut self.sets, &mut self.samples, &self.continuing);
            read(x, currency, &mut |own, value| {
                let v = match value {
                    Value::Int(v) => u128::from(v),
                    Value::Cost(v) => v,
                    _ => return,
                };
                let i = match sets.iter().position(|l| same_label(l.own, own)) {
                    Some(i) => i,
                    None => {
                        sets.push(LabelSet {
                            own,
                            first_ns: *t,
                            starts_here: !continuing.contains(&own),
                        });
                        sets.len() - 1
                    }
                };
                samples.push((i, *t, v));
            });
        }
        self.order.extend(0..self.sets.len());
        let sets = &self.sets;
        self.order.sort_by_key(|&i| sets[i].own);
    }

    /// The label sets in label order, each with its samples in time order.
    fn each(&self) -> impl Iterator<Item = (LabelSet<'c>, impl Iterator<Item = (i64, u128)> + '_)> {
        self.order.iter().map(move |&i| {
            let samples = self
                .samples
                .iter()
                .filter(move |(j, _, _)| *j == i)
                .map(|&(_, t, v)| (t, v));
            (self.sets[i], samples)
        })
    }
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
        .filter(|f| f.token && f.kind == Kind::Counter && f.series.is_some())
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
    let tail = format!(",job=\"tokenmeter\",instance=\"{}\"}} ", escape(instance));
    let mut first = i64::MAX;
    let mut last = i64::MIN;
    let mut reader = FamilySeries::new();
    // Lines are built in one buffer and written in large pieces (formatting and writing 10 M
    // lines was most of a backfill's time).
    let mut buf: Vec<u8> = Vec::with_capacity(FLUSH_AT + 4096);
    // Each series' labels and `metrics.labels`, escaped once for all families.
    let statics: Vec<(&str, &str)> = static_labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let series_labels: Vec<String> = series
        .iter()
        .map(|s| {
            let mut l = String::with_capacity(128);
            for (i, &(k, v)) in s.labels.pairs().iter().chain(&statics).enumerate() {
                if i > 0 {
                    l.push(',');
                }
                push_label(&mut l, k, v);
            }
            l
        })
        .collect();
    let mut series_start = String::new();
    let mut line_start = String::new();
    for family in backfill_families(prefix, extra_names, currency) {
        let Some(read) = family.series.as_ref() else {
            continue;
        };
        writeln!(buf, "# TYPE {} counter", family.name)?;
        writeln!(buf, "# HELP {} {}", family.name, family.help)?;
        let name = family.full_name();
        let money = is_money(&family);
        for (i, (s, labels)) in series.iter().zip(&series_labels).enumerate() {
            // A window's points are cold by now, a heap block per series: ask for the ones
            // a few series ahead while this one is written.
            if let Some(ahead) = series.get(i + PREFETCH_AHEAD) {
                prefetch(&ahead.points);
            }
            reader.read(read, s, currency);
            // The labels every line of this series and family starts with: written once.
            series_start.clear();
            series_start.push_str(&name);
            series_start.push('{');
            series_start.push_str(labels);
            for (set, samples) in reader.each() {
                line_start.clone_from(&series_start);
                if let Some((k, v)) = set.own {
                    line_start.push(',');
                    push_label(&mut line_start, k, v);
                }
                line_start.push_str(&tail);
                let zero = set.starts_here.then_some((set.first_ns - step_ns, 0));
                for (t, v) in zero.into_iter().chain(samples) {
                    emitted.samples += 1;
                    first = first.min(t);
                    last = last.max(t);
                    buf.extend_from_slice(line_start.as_bytes());
                    // Money exactly, in decimal (SPEC §10: divided only when written).
                    if money {
                        buf.extend_from_slice(crate::pricing::format_units(v).as_bytes());
                    } else {
                        match u64::try_from(v) {
                            Ok(n) => push_decimal(&mut buf, n, false),
                            Err(_) => buf.extend_from_slice(v.to_string().as_bytes()),
                        }
                    }
                    buf.push(b' ');
                    // Timestamps in seconds: promtool and mimirtool read OpenMetrics seconds.
                    let secs = t / 1_000_000_000;
                    push_decimal(&mut buf, secs.unsigned_abs(), secs < 0);
                    buf.push(b'\n');
                    if buf.len() >= FLUSH_AT {
                        out.write_all(&buf)?;
                        buf.clear();
                    }
                }
            }
        }
    }
    writeln!(buf, "# EOF")?;
    out.write_all(&buf)?;
    emitted.series = series.len();
    if emitted.samples > 0 {
        emitted.first_sample = Some(crate::timefmt::format_rfc3339_millis(first));
        emitted.last_sample = Some(crate::timefmt::format_rfc3339_millis(last));
    }
    Ok(emitted)
}

/// How many series ahead the formatter asks for their points.
const PREFETCH_AHEAD: usize = 4;

/// Asks the CPU to start loading the first two points of `points` (a hint; no effect on
/// what is computed).
fn prefetch(points: &[(i64, Cumulative)]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        for p in points.iter().take(2) {
            let at = (p as *const (i64, Cumulative)).cast::<i8>();
            // SAFETY: SSE is part of x86_64; a prefetch never faults, whatever the address.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(at);
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(64));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = points;
}

/// Lines are handed to the writer in pieces of about this size.
const FLUSH_AT: usize = 256 * 1024;

/// Appends `k="v"` (`v` escaped).
fn push_label(out: &mut String, k: &str, v: &str) {
    out.push_str(k);
    out.push_str("=\"");
    push_escaped(out, v);
    out.push('"');
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
            labels: Arc::new(SeriesLabels {
                model: "m".into(),
                api_key_id: "k".into(),
                service_id: "s".into(),
            }),
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
