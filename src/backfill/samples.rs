//! Backfill samples: one series' cumulative values at the end of each step, and how they are
//! read family by family through the schema (the same reading for the OpenMetrics text and
//! the OTLP points, so the two cannot disagree on a label set or its first 0).
//!
//! Owns: `SeriesSamples`, `SeriesLabels`, `Cumulative`, the backfill's choice of families, and
//! the per-family reader. Must not: format, write or send anything, nor know about steps and
//! windows (`backfill::windows` makes the samples).

use std::sync::Arc;

use crate::aggregate::SeriesSnapshot;
use crate::schema::{families, Family, Kind, SeriesRead, Value};

/// One series' cumulative samples: (timestamp ns = end of step, values).
pub struct SeriesSamples {
    /// Shared with the stream's series (a window hands out its labels without copying them).
    pub labels: Arc<SeriesLabels>,
    /// First event step start: the OTLP start time of the series.
    pub start_ns: i64,
    pub points: SeriesPoints,
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
    /// docs/owners.md: the team label's name and value, only with owners.
    pub team: Option<(String, String)>,
}

impl SeriesLabels {
    /// The value of label `i` of [`SeriesLabels::pairs`] (model, api_key_id, service_id, the
    /// team), without building them; "" past the end.
    pub fn value(&self, i: usize) -> &str {
        match i {
            0 => &self.model,
            1 => &self.api_key_id,
            2 => &self.service_id,
            3 => self.team.as_ref().map_or("", |(_, v)| v.as_str()),
            _ => "",
        }
    }

    /// The label pairs, in the schema's order.
    pub fn pairs(&self) -> Vec<(&str, &str)> {
        let mut l = vec![
            ("model", self.model.as_str()),
            ("api_key_id", self.api_key_id.as_str()),
            ("service_id", self.service_id.as_str()),
        ];
        l.extend(self.team.as_ref().map(|(k, v)| (k.as_str(), v.as_str())));
        l
    }
}

/// The extra token counts of one sample, by the meter's extra names: inline for up to four
/// (the usual cached / reasoning / cache-write counts), so that taking a sample allocates
/// nothing (a window holds one per series and step; their allocations and frees, on two
/// threads, were 4 % of a `--tsdb` month).
pub type ExtraCounts = smallvec::SmallVec<[u64; 4]>;

/// One series' samples in a window: inline for up to two (most series have one or two
/// samples a window; a vector each was an allocation and a free per series and window).
pub type SeriesPoints = smallvec::SmallVec<[(i64, Cumulative); 2]>;

/// Cumulative values at one step end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cumulative {
    pub requests: [u64; 5],
    pub input: u64,
    pub output: u64,
    pub total: u64,
    pub extra: ExtraCounts,
    /// Units of 10^-12 currency.
    pub cost: u128,
}

/// One label set of one series in one family: the label after the series' own and
/// `metrics.labels` (`status_class`, `currency`, or none), its first sample's time, and
/// whether it starts here (no sample in an earlier window: it then starts with a 0, docs/metrics.md
/// "First increments").
#[derive(Clone, Copy)]
pub(super) struct LabelSet<'c> {
    pub(super) own: Option<(&'static str, &'c str)>,
    pub(super) first_ns: i64,
    pub(super) starts_here: bool,
}

impl LabelSet<'_> {
    /// The 0 a label set that starts in this window has one step before its first value, so
    /// that PromQL's `increase()` sees its first increment; `None` for one that continues
    /// from an earlier window. See docs/metrics.md "Series start times and first increments".
    pub(super) fn first_zero(&self, step_ns: i64) -> Option<(i64, u128)> {
        self.starts_here
            .then_some((self.first_ns.saturating_sub(step_ns), 0))
    }
}

/// Whether two own labels are the same: by address first (the schema hands out the same
/// `&'static str` or currency string every step), then by text.
fn same_label(a: Option<(&str, &str)>, b: Option<(&str, &str)>) -> bool {
    // Short texts (a status class, a currency) compared inline: no `memcmp` call per sample.
    let same = |a: &str, b: &str| {
        a.len() == b.len()
            && (a.as_ptr() == b.as_ptr() || a.bytes().zip(b.bytes()).all(|(x, y)| x == y))
    };
    match (a, b) {
        (None, None) => true,
        (Some((ak, av)), Some((bk, bv))) => same(av, bv) && same(ak, bk),
        _ => false,
    }
}

/// The samples of one per-series family for one series, read step by step through the
/// schema's [`SeriesRead`]; the buffers are reused from series to series.
pub(super) struct FamilySeries<'c> {
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
    pub(super) fn new() -> Self {
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
        x.extra_tokens.clear();
        x.extra_tokens.extend_from_slice(&c.extra);
        x.cost_units = c.cost;
    }

    /// Reads every step of `s` through `read`. Linear in the steps; label sets are told
    /// apart by their own label alone (at most one per status class).
    pub(super) fn read(&mut self, read: &SeriesRead, s: &SeriesSamples, currency: Option<&'c str>) {
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
    pub(super) fn each(
        &self,
    ) -> impl Iterator<Item = (LabelSet<'c>, impl Iterator<Item = (i64, u128)> + '_)> {
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

/// Whether `family` can have a sample in `series`: false for an extra token family whose
/// type every series counts 0 (its read gives nothing then; see [`Family::extra_index`]).
/// Most gateways log no extra token type, and reading the series of those families step by
/// step was three of the seven families' reads.
pub(super) fn may_have_samples(family: &Family, series: &[SeriesSamples]) -> bool {
    let Some(k) = family.extra_index else {
        return true;
    };
    let counts = |c: &Cumulative| c.extra.get(k).is_some_and(|&n| n > 0);
    series
        .iter()
        .any(|s| s.before.as_ref().is_some_and(counts) || s.points.iter().any(|(_, c)| counts(c)))
}

/// Whether a family's values are money (the schema's unit says so).
pub(super) fn is_money(family: &Family) -> bool {
    family.unit == "{cost}"
}

/// The per-series token counters of the schema: backfill has no histogram, no self-metrics
/// and no per-(model, service_id) counters (unpriced/unmetered are in the summary), and cost
/// only with pricing.
pub(super) fn backfill_families(
    prefix: &str,
    extra_names: &[String],
    currency: Option<&str>,
) -> Vec<Family> {
    families(prefix, extra_names)
        .into_iter()
        .filter(|f| f.token && f.kind == Kind::Counter && f.series.is_some())
        .filter(|f| currency.is_some() || !is_money(f))
        .collect()
}

/// One series of `points` steps of 60 s from 2023-11-14T22:13:20Z (tests of the formatters).
#[cfg(test)]
pub(super) fn one_series(points: usize) -> SeriesSamples {
    let step = 60_000_000_000i64;
    SeriesSamples {
        labels: Arc::new(SeriesLabels {
            model: "m".into(),
            api_key_id: "k".into(),
            service_id: "s".into(),
            team: None,
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
                        extra: ExtraCounts::new(),
                        cost: 0,
                    },
                )
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `one_series(3)` with its extra counts at each step (and before the window) set.
    fn with_extras(before: Option<&[u64]>, steps: &[&[u64]]) -> SeriesSamples {
        let mut s = one_series(steps.len());
        for ((_, c), extra) in s.points.iter_mut().zip(steps) {
            c.extra = ExtraCounts::from_slice(extra);
        }
        s.before = before.map(|extra| Cumulative {
            extra: ExtraCounts::from_slice(extra),
            ..Cumulative::default()
        });
        s
    }

    /// How many samples reading `family` over `series` gives, through the schema's own read.
    fn samples_read(family: &Family, series: &[SeriesSamples]) -> usize {
        let mut reader = FamilySeries::new();
        let read = family.series.as_ref().expect("a per-series family");
        series
            .iter()
            .map(|s| {
                reader.read(read, s, None);
                reader
                    .each()
                    .map(|(_, samples)| samples.count())
                    .sum::<usize>()
            })
            .sum()
    }

    #[test]
    fn an_extra_family_is_skipped_exactly_where_reading_it_gives_no_sample() {
        let names = ["cached_input".to_string(), "reasoning".to_string()];
        let families = backfill_families("llm", &names, None);
        let cases: Vec<Vec<SeriesSamples>> = vec![
            vec![],
            vec![with_extras(None, &[&[], &[]])],
            vec![with_extras(None, &[&[0, 0], &[0, 0]])],
            vec![
                with_extras(None, &[&[0, 0], &[0, 0]]),
                with_extras(None, &[&[0, 0], &[7, 0]]),
            ],
            vec![with_extras(None, &[&[0, 1], &[0, 1]])],
            vec![with_extras(Some(&[3, 0]), &[&[3, 0]])],
        ];
        for (i, series) in cases.iter().enumerate() {
            for family in &families {
                let read = samples_read(family, series);
                let may = may_have_samples(family, series);
                match family.extra_index {
                    // Skipped only where the read gives nothing, and read wherever it does.
                    Some(_) => assert_eq!(may, read > 0, "case {i}, {}", family.name),
                    None => assert!(may, "case {i}, {}", family.name),
                }
            }
        }
    }
}
