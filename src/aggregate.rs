//! Records → the counter store of SPEC §4, with the cardinality guard and the self-counters.
//!
//! Owns: one counter set per (model, api_key_id, service_id), requests per status class, the
//! duration histogram per (model, service_id, status_class), the per-label value limits and
//! `max_series` with `__overflow__` folding, and counts of lines by result. No I/O. Exports and
//! the server read [`Snapshot`]s, never the store's internals.
//!
//! Why ids: each distinct label string is stored once and given a small integer the first time
//! it is seen; series are keyed by the id triple. Counting a record then costs three lookups
//! of borrowed strings and one of three integers, and allocates nothing unless a value is new.

use std::collections::HashMap;
use std::sync::Arc;

use hashbrown::HashTable;
use rustc_hash::{FxBuildHasher, FxHasher};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::parse::{
    Record, StatusClass, EXTRA_BIT0, INPUT_BIT, MAX_LABEL_BYTES, OUTPUT_BIT, TOTAL_BIT,
};
use crate::pricing::{EntryId, PriceTable, TypeCounts};

/// The value a label takes past its limit.
pub const OVERFLOW: &str = "__overflow__";

/// Upper bounds (seconds) of the `request_duration_seconds` buckets; `+Inf` is implied.
/// Chosen for LLM calls: embeddings take tens of milliseconds, long generations minutes.
pub const DURATION_BUCKETS: [f64; 11] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Why a line was not counted as a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// Not a JSON object (Envoy's own log lines, truncated JSON, …).
    NotJson,
    /// A JSON object without a model or any valid token field.
    NotLlm,
    /// Longer than `source.max_line_bytes`.
    TooLong,
}

impl SkipReason {
    pub const ALL: [SkipReason; 3] = [SkipReason::NotJson, SkipReason::NotLlm, SkipReason::TooLong];

    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NotJson => "not_json",
            SkipReason::NotLlm => "not_llm",
            SkipReason::TooLong => "too_long",
        }
    }
}

/// Labels that can overflow, in the order of [`SelfStats::overflows`].
pub const OVERFLOW_LABELS: [&str; 4] = ["model", "api_key_id", "service_id", "series"];

/// Counters about the pipeline itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfStats {
    pub records: u64,
    /// Records per format, indexed like [`crate::parse::format::Format::ALL`] (absent from
    /// state files written before formats: all of those were `tokenmeter` records).
    #[serde(default)]
    pub records_by_format: [u64; crate::parse::format::N_FORMATS],
    /// Indexed like [`SkipReason::ALL`].
    pub skipped: [u64; 3],
    /// Per token field: input, output, total, then the extra fields in name order.
    pub invalid_fields: Vec<u64>,
    pub total_mismatches: u64,
    /// Records whose label was folded, indexed like [`OVERFLOW_LABELS`].
    pub overflows: [u64; 4],
    /// Per token type (input, output, total, extras): records whose count of that type was
    /// above its nearest priced ancestor's (SPEC §10 arithmetic). Empty without pricing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub child_exceeds: Vec<u64>,
}

impl SelfStats {
    /// Logical lines seen: records plus every skipped line.
    pub fn lines(&self) -> u64 {
        self.records + self.skipped.iter().sum::<u64>()
    }
}

/// A label value as it may become a series: control characters (NUL and the other C0
/// controls, DEL) replaced by U+FFFD, at most [`MAX_LABEL_BYTES`]. Borrowed when clean.
pub fn label_value(v: &str) -> std::borrow::Cow<'_, str> {
    let dirty = v.len() > MAX_LABEL_BYTES || v.bytes().any(|b| b < 0x20 || b == 0x7f);
    if !dirty {
        return std::borrow::Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len().min(MAX_LABEL_BYTES));
    for c in v.chars() {
        let c = if (c as u32) < 0x20 || c == '\u{7f}' {
            '\u{fffd}'
        } else {
            c
        };
        if out.len() + c.len_utf8() > MAX_LABEL_BYTES {
            break;
        }
        out.push(c);
    }
    std::borrow::Cow::Owned(out)
}

/// Distinct values of one label, with its limit.
struct Interner {
    ids: HashMap<Box<str>, u32, FxBuildHasher>,
    values: Vec<Box<str>>,
    limit: usize,
}

impl Interner {
    fn new(limit: usize) -> Self {
        Self {
            ids: HashMap::default(),
            values: Vec::new(),
            limit,
        }
    }

    /// The id of `v`, and whether it was folded into `__overflow__`.
    #[inline]
    fn intern(&mut self, v: &str) -> (u32, bool) {
        if let Some(&id) = self.ids.get(v) {
            return (id, false);
        }
        let clean = label_value(v);
        if let Some(&id) = self.ids.get(clean.as_ref()) {
            return (id, false);
        }
        if self.values.len() >= self.limit && clean != OVERFLOW {
            return (self.force(OVERFLOW), true);
        }
        (self.force(&clean), false)
    }

    /// Interns without checking the limit (the overflow value itself, restored state).
    fn force(&mut self, v: &str) -> u32 {
        if let Some(&id) = self.ids.get(v) {
            return id;
        }
        let id = self.values.len() as u32;
        self.values.push(v.into());
        self.ids.insert(v.into(), id);
        id
    }

    fn get(&self, id: u32) -> &str {
        &self.values[id as usize]
    }

    /// Each id's position in the sorted order of the values.
    fn ranks(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.values.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| self.values[a as usize].cmp(&self.values[b as usize]));
        let mut rank = vec![0u32; order.len()];
        for (r, id) in order.into_iter().enumerate() {
            rank[id as usize] = r as u32;
        }
        rank
    }
}

#[derive(Clone, Debug, Default)]
struct Counters {
    requests: [u64; 5],
    input: u64,
    output: u64,
    total: u64,
    /// When the series was created (the store's clock then), ns since the epoch; 0 unknown.
    start_ns: i64,
}

/// Duration histogram: per-bucket (not cumulative) counts, the last one `+Inf`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub buckets: [u64; DURATION_BUCKETS.len() + 1],
    pub sum_seconds: f64,
    pub count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        let i = DURATION_BUCKETS.partition_point(|&b| b < seconds);
        self.buckets[i] += 1;
        self.sum_seconds += seconds;
        self.count += 1;
    }

    /// Adds another histogram's observations.
    fn add(&mut self, other: &Histogram) {
        for (n, add) in self.buckets.iter_mut().zip(other.buckets) {
            *n += add;
        }
        self.sum_seconds += other.sum_seconds;
        self.count += other.count;
    }

    /// Cumulative counts per bucket, `+Inf` last, as Prometheus exposes them.
    pub fn cumulative(&self) -> [u64; DURATION_BUCKETS.len() + 1] {
        let mut out = self.buckets;
        for i in 1..out.len() {
            out[i] += out[i - 1];
        }
        out
    }
}

/// The counter store.
pub struct Store {
    models: Interner,
    keys: Interner,
    services: Interner,
    max_series: usize,
    n_extra: usize,
    series_index: HashMap<[u32; 3], u32, FxBuildHasher>,
    /// Series index by the hash of the label text, for series whose labels are not folded.
    /// Each entry holds the series index and its label ids, so confirming a probe reads the
    /// (hot, small) interners and not the series vector: the series' counters can then be
    /// fetched while the labels are compared, instead of after.
    by_text: HashTable<(u32, [u32; 3])>,
    series: Vec<([u32; 3], Counters)>,
    /// `n_extra` values per series, flat.
    extras: Vec<u64>,
    hist_index: HashMap<(u32, u32, StatusClass), u32, FxBuildHasher>,
    hists: Vec<((u32, u32, StatusClass), Histogram)>,
    stats: SelfStats,
    /// The time new series are stamped with (set by the caller between reads; 0 in replay).
    clock_ns: i64,
    /// Cost per series in units of 10^-12 currency (SPEC §10), indexed like `series`.
    cost: Vec<u128>,
    /// The price table in force (`None`: pricing off) and its currency.
    pricing: Option<Arc<PriceTable>>,
    /// The price selected for each series (indexed like `series`) and the event-time interval
    /// over which it holds (until the next `from` boundary); only for series whose labels
    /// are the records' own text (not folded).
    selections: Vec<Option<Selection>>,
    /// The same, for the series whose selection holds at every time (most): 0 not known,
    /// `ALWAYS_UNPRICED`, else the entry's index + 1. Four bytes to read per record.
    always: Vec<u32>,
    /// The same per (model, service_id) label ids, for a series' first records (most series
    /// share their model and service with many others).
    pair_selections: HashMap<[u32; 2], Selection, FxBuildHasher>,
    /// Per (model, service_id) label ids: unpriced and unmetered requests.
    pair_index: HashMap<[u32; 2], u32, FxBuildHasher>,
    pairs: Vec<Pair>,
    /// Cost restored from a state saved in this currency (see [`Store::restore`]).
    currency: Option<String>,
    /// The cost of the record counted last (for backfill's per-step sums; only when cost is
    /// computed per record, see [`Store::cost_per_record`]).
    last_cost: u128,
    /// Cost charged per run of records (the default) rather than per record.
    defer_cost: bool,
    /// Each series' open run (indexed like `series`), and its extra counters when it began
    /// (`n_extra` per series).
    runs: Vec<Option<Run>>,
    run_extras: Vec<u64>,
    /// For an [`Store::unlimited`] part: the limits of the store it is merged into (model,
    /// api_key_id and service_id values, series). A part beyond any of them cannot be
    /// absorbed, so it need not be counted to its end ([`Store::abandon`]).
    merge_limits: Option<[usize; 4]>,
    /// Counting stopped part way ([`Store::abandon`]): never absorbed.
    abandoned: bool,
}

/// [`Store::always`] of a series that no entry prices at any time.
const ALWAYS_UNPRICED: u32 = u32::MAX;

/// A cached price selection: the entry (if any) and `[from, until)` of event time.
type Selection = (Option<EntryId>, i64, i64);

/// Records of one series priced by one linear entry in a row ([`PriceTable::linear`]): their
/// cost is the entry's rates times the counts summed since the run began, so a record costs
/// a comparison, not a multiplication, and the run is charged when it ends (another entry,
/// new prices, a merge or restore) or read (a snapshot). The counters when it began:
#[derive(Clone, Copy, Debug)]
struct Run {
    entry: EntryId,
    input: u64,
    output: u64,
    total: u64,
    requests_2xx: u64,
}

/// The unpriced and unmetered counters of one (model, service_id).
#[derive(Clone, Debug, Default)]
struct Pair {
    ids: [u32; 2],
    unpriced: u64,
    unmetered: u64,
    /// When each counter first went above 0 (the start of its series, SPEC §4 "First
    /// increments").
    unpriced_start_ns: i64,
    unmetered_start_ns: i64,
}

/// The unpriced and unmetered requests of one (model, service_id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairSnapshot {
    pub model: String,
    pub service_id: String,
    #[serde(default)]
    pub unpriced: u64,
    #[serde(default)]
    pub unmetered: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unpriced_start_ns: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unmetered_start_ns: i64,
}

/// One token series in a snapshot: every counter of one (model, api_key_id, service_id).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesSnapshot {
    pub model: String,
    pub api_key_id: String,
    pub service_id: String,
    /// Indexed like [`StatusClass::ALL`].
    pub requests: [u64; 5],
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    /// In the order of [`Snapshot::extra_names`]; empty when all are 0 (most series: no
    /// allocation per series), so read it with `get(i)`, a missing value being 0.
    pub extra_tokens: Vec<u64>,
    /// When the series was created (ns since the epoch): the start of its cumulative
    /// counters, and the time of the 0 its first OTLP pushes carry. 0: unknown (a state of
    /// an older version, or replay); exporters then use the agent's start time.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_ns: i64,
    /// Cost in units of 10^-12 of the snapshot's currency (0 without pricing).
    #[serde(default, skip_serializing_if = "is_zero_units")]
    pub cost_units: u128,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn is_zero_units(n: &u128) -> bool {
    *n == 0
}

impl SeriesSnapshot {
    pub fn requests_total(&self) -> u64 {
        self.requests.iter().sum()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistogramSnapshot {
    pub model: String,
    pub service_id: String,
    pub status_class: String,
    pub histogram: Histogram,
}

/// A consistent, owned copy of the store, sorted by labels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub extra_names: Vec<String>,
    pub series: Vec<SeriesSnapshot>,
    pub durations: Vec<HistogramSnapshot>,
    pub stats: SelfStats,
    /// Unpriced and unmetered requests per (model, service_id), sorted; only pairs that have
    /// had either.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pairs: Vec<PairSnapshot>,
    /// The currency of `cost_units` when pricing is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
}

impl Store {
    pub fn new(config: &Config) -> Self {
        let lim = &config.limits;
        let n_extra = config.fields.extra_names().len();
        Store {
            models: Interner::new(lim.max_values.model),
            keys: Interner::new(lim.max_values.api_key_id),
            services: Interner::new(lim.max_values.service_id),
            max_series: lim.max_series,
            n_extra,
            series_index: HashMap::default(),
            by_text: HashTable::new(),
            series: Vec::new(),
            extras: Vec::new(),
            hist_index: HashMap::default(),
            hists: Vec::new(),
            stats: SelfStats {
                invalid_fields: vec![0; 3 + n_extra],
                ..SelfStats::default()
            },
            clock_ns: 0,
            cost: Vec::new(),
            selections: Vec::new(),
            always: Vec::new(),
            pair_selections: HashMap::default(),
            pricing: None,
            pair_index: HashMap::default(),
            pairs: Vec::new(),
            currency: None,
            last_cost: 0,
            defer_cost: true,
            runs: Vec::new(),
            run_extras: Vec::new(),
            merge_limits: None,
            abandoned: false,
        }
    }

    /// A store for one part of a replay counted on its own thread (see [`Store::absorb`]):
    /// no limits, so no series of the part is folded before the merge decides.
    pub fn unlimited(config: &Config) -> Self {
        let mut s = Store::new(config);
        s.merge_limits = Some([s.models.limit, s.keys.limit, s.services.limit, s.max_series]);
        s.models.limit = usize::MAX;
        s.keys.limit = usize::MAX;
        s.services.limit = usize::MAX;
        s.max_series = usize::MAX;
        s
    }

    /// Whether this [`Store::unlimited`] part holds more label values or series than the
    /// store it is for may: then [`Store::absorb`] refuses it whatever that store holds (its
    /// values and series would be at least the part's), so counting it further only costs
    /// memory, without bound (e.g. a key per request).
    pub fn beyond_merge_limits(&self) -> bool {
        self.merge_limits.is_some_and(|[m, k, s, n]| {
            self.models.values.len() > m
                || self.keys.values.len() > k
                || self.services.values.len() > s
                || self.series.len() > n
        })
    }

    /// Marks this part as counted only in part: [`Store::absorb`] refuses it.
    pub fn abandon(&mut self) {
        self.abandoned = true;
    }

    /// Adds the counts of `part`, an [`Store::unlimited`] store that counted the input read
    /// after everything counted here (the next file of a replay), with the same prices and
    /// clock, as if its records had been counted here one by one. Its series join in the
    /// order they were created in `part`, which is the order their first records came in.
    ///
    /// Refused (`false`, nothing changed) when a label value or a series of `part` would be
    /// folded here (a limit of SPEC §4 reached): folding is decided record by record, so the
    /// caller counts that input again here. Without folding every counter is a sum, so the
    /// result is the one reading in order gives — except the duration histograms' float
    /// sums, added in another order (not in replay's outputs).
    pub fn absorb(&mut self, part: &Store) -> bool {
        debug_assert_eq!(self.n_extra, part.n_extra);
        if part.abandoned {
            return false;
        }
        self.end_runs();
        // Whether everything fits: counted conservatively (a new value or series counts even
        // where the limit would have let it in, e.g. `__overflow__` itself): refusing is
        // always exact.
        let new_values = |mine: &Interner, theirs: &Interner| {
            theirs
                .values
                .iter()
                .filter(|v| !mine.ids.contains_key(v.as_ref()))
                .count()
        };
        let fits = |mine: &Interner, theirs: &Interner| {
            mine.values.len().saturating_add(new_values(mine, theirs)) <= mine.limit
        };
        if !fits(&self.models, &part.models)
            || !fits(&self.keys, &part.keys)
            || !fits(&self.services, &part.services)
        {
            return false;
        }
        let existing = |[m, k, s]: [u32; 3]| -> Option<[u32; 3]> {
            Some([
                *self.models.ids.get(part.models.get(m))?,
                *self.keys.ids.get(part.keys.get(k))?,
                *self.services.ids.get(part.services.get(s))?,
            ])
        };
        let new_series = part
            .series
            .iter()
            .filter(|(ids, _)| {
                existing(*ids).is_none_or(|ids| !self.series_index.contains_key(&ids))
            })
            .count();
        if self.series.len().saturating_add(new_series) > self.max_series {
            return false;
        }

        // Part's label ids to ours (nothing folds: checked above).
        let pair = |[m, s]: [u32; 2], store: &mut Store| {
            [
                store.models.force(part.models.get(m)),
                store.services.force(part.services.get(s)),
            ]
        };
        for (i, ([m, k, s], c)) in part.series.iter().enumerate() {
            let [m, s] = pair([*m, *s], self);
            let ids = [m, self.keys.force(part.keys.get(*k)), s];
            let idx = self.series_slot(ids);
            let mine = &mut self.series[idx].1;
            for (n, add) in mine.requests.iter_mut().zip(c.requests) {
                *n += add;
            }
            // Token counters wrap as in `add_at` (no run is open here: ended above).
            mine.input = mine.input.wrapping_add(c.input);
            mine.output = mine.output.wrapping_add(c.output);
            mine.total = mine.total.wrapping_add(c.total);
            let n = self.n_extra;
            for (slot, add) in self.extras[idx * n..(idx + 1) * n]
                .iter_mut()
                .zip(&part.extras[i * n..(i + 1) * n])
            {
                *slot = slot.wrapping_add(*add);
            }
            self.cost[idx] = self.cost[idx].saturating_add(part.series_cost(i));
        }
        for ((m, s, class), h) in &part.hists {
            let [m, s] = pair([*m, *s], self);
            let at = self.hist_slot((m, s, *class));
            self.hists[at].1.add(h);
        }
        for p in &part.pairs {
            let ids = pair(p.ids, self);
            let at = self.pair_slot(ids);
            let mine = &mut self.pairs[at];
            for (n, start, add, add_start) in [
                (
                    &mut mine.unpriced,
                    &mut mine.unpriced_start_ns,
                    p.unpriced,
                    p.unpriced_start_ns,
                ),
                (
                    &mut mine.unmetered,
                    &mut mine.unmetered_start_ns,
                    p.unmetered,
                    p.unmetered_start_ns,
                ),
            ] {
                if *n == 0 && add > 0 {
                    *start = add_start;
                }
                *n += add;
            }
        }
        let (st, theirs) = (&mut self.stats, &part.stats);
        st.records += theirs.records;
        for (n, add) in st
            .records_by_format
            .iter_mut()
            .zip(theirs.records_by_format)
        {
            *n += add;
        }
        for (n, add) in st.skipped.iter_mut().zip(theirs.skipped) {
            *n += add;
        }
        for (n, add) in st.invalid_fields.iter_mut().zip(&theirs.invalid_fields) {
            *n += add;
        }
        st.total_mismatches += theirs.total_mismatches;
        for (n, add) in st.overflows.iter_mut().zip(theirs.overflows) {
            *n += add;
        }
        if st.child_exceeds.len() < theirs.child_exceeds.len() {
            st.child_exceeds.resize(theirs.child_exceeds.len(), 0);
        }
        for (n, add) in st.child_exceeds.iter_mut().zip(&theirs.child_exceeds) {
            *n += add;
        }
        true
    }

    /// The cost of the record [`Store::add_at`] counted last, in units of 10^-12 currency
    /// (after [`Store::cost_per_record`]).
    pub fn last_cost(&self) -> u128 {
        debug_assert!(!self.defer_cost || self.pricing.is_none());
        self.last_cost
    }

    /// Sets the price table for the records counted from now on (`None`: pricing off). Cost
    /// already counted is never re-priced; cached selections are dropped.
    pub fn set_pricing(&mut self, table: Option<Arc<PriceTable>>) {
        // Runs are charged at the prices they began with.
        self.end_runs();
        let n_types = 3 + self.n_extra;
        if table.is_some() && self.stats.child_exceeds.len() < n_types {
            self.stats.child_exceeds.resize(n_types, 0);
        }
        // Pricing turned off keeps the currency of the cost counted so far: the counters are
        // kept (and saved) until prices come back.
        if let Some(t) = &table {
            self.currency = Some(t.currency().to_string());
        }
        self.pricing = table;
        self.selections.iter_mut().for_each(|s| *s = None);
        self.always.iter_mut().for_each(|a| *a = 0);
        self.pair_selections.clear();
    }

    pub fn pricing(&self) -> Option<&Arc<PriceTable>> {
        self.pricing.as_ref()
    }

    /// The currency of the cost counters (`None`: pricing off).
    pub fn currency(&self) -> Option<&str> {
        self.currency.as_deref()
    }

    /// Counts one record; returns the index of the series it went to. With pricing, the record
    /// is priced at the store's clock (see [`Store::add_at`]).
    pub fn add(&mut self, r: &Record<'_>) -> usize {
        self.add_at(r, || None)
    }

    /// Counts one record whose event time `event_ns` gives (`None`: the store's clock, the
    /// time of reading): the price in force then is the one charged. It is asked only when the
    /// price depends on it.
    pub fn add_at(&mut self, r: &Record<'_>, event_ns: impl FnOnce() -> Option<i64>) -> usize {
        self.last_cost = 0;
        let st = &mut self.stats;
        if r.first_of_line {
            st.records += 1;
            st.records_by_format[r.format as usize] += 1;
        }
        if r.invalid != 0 {
            for (i, n) in st.invalid_fields.iter_mut().enumerate() {
                *n += u64::from(r.invalid >> i & 1);
            }
        }
        st.total_mismatches += u64::from(r.total_mismatch);

        // Fast path: one probe keyed by the label text. Only series whose labels are the
        // record's own text are in this table; folded records take the slow path every time.
        let hash = text_hash(&r.model, &r.api_key_id, &r.service_id);
        let (models, keys, services) = (&self.models, &self.keys, &self.services);
        let found = self.by_text.find(hash, |&(_, [m, k, s])| {
            models.get(m) == r.model
                && keys.get(k) == r.api_key_id
                && services.get(s) == r.service_id
        });
        let fast = found.is_some();
        let idx = match found {
            Some(&(i, _)) => i as usize,
            None => self.slow_series(r, hash),
        };
        let [m, _, s] = self.series[idx].0;
        // The price depends on the model and service_id text only: a series found on the fast
        // path has the record's own text; on the slow path (new, or folded) it is compared.
        let own_text = fast
            || (self.pricing.is_some()
                && self.models.get(m) == r.model
                && self.services.get(s) == r.service_id);
        let c = &mut self.series[idx].1;
        c.requests[r.status_class as usize] += 1;
        // Token counters wrap at 2^64 (2049 records of the largest valid value); a run of
        // [`Store::run_cost`] must not span a wrap, so the price step learns of one.
        let (input, w_in) = c.input.overflowing_add(r.input_tokens);
        let (output, w_out) = c.output.overflowing_add(r.output_tokens);
        let (total, w_total) = c.total.overflowing_add(r.total_tokens);
        (c.input, c.output, c.total) = (input, output, total);
        let mut wrapped = w_in | w_out | w_total;
        // A record with no valid extra count (most) adds nothing to them.
        if self.n_extra > 0 && r.valid >> EXTRA_BIT0 != 0 {
            let e = &mut self.extras[idx * self.n_extra..(idx + 1) * self.n_extra];
            for (slot, v) in e.iter_mut().zip(&r.extra_tokens) {
                let (sum, w) = slot.overflowing_add(*v);
                *slot = sum;
                wrapped |= w;
            }
        }
        if let Some(ms) = r.duration_ms {
            let key = (m, s, r.status_class);
            let h = self.hist_slot(key);
            self.hists[h].1.observe(ms / 1000.0);
        }
        let unmetered = r.status_class == StatusClass::C2xx && r.valid == 0;
        if unmetered {
            self.count_unmetered([m, s]);
        }
        if self.pricing.is_some() {
            self.price(idx, [m, s], r, event_ns, own_text, wrapped);
        }
        idx
    }

    /// SPEC §10 per record: the price in force at its event time, its cost, unpriced and
    /// child-above-parent counts. `own_text`: the series' labels are the record's own text
    /// (found on the fast path), so its cached selection applies. `wrapped`: a token counter
    /// of the series wrapped when `r` was added.
    fn price(
        &mut self,
        idx: usize,
        ids: [u32; 2],
        r: &Record<'_>,
        event_ns: impl FnOnce() -> Option<i64>,
        own_text: bool,
        wrapped: bool,
    ) {
        // Taken out and put back (no reference count touched per record).
        let Some(table) = self.pricing.take() else {
            return;
        };
        self.charge(idx, ids, r, event_ns, own_text, wrapped, &table);
        self.pricing = Some(table);
    }

    #[allow(clippy::too_many_arguments)]
    fn charge(
        &mut self,
        idx: usize,
        ids: [u32; 2],
        r: &Record<'_>,
        event_ns: impl FnOnce() -> Option<i64>,
        own_text: bool,
        wrapped: bool,
        table: &PriceTable,
    ) {
        // The series' own cached selection, when it holds at every time, needs nothing else:
        // the common case, kept free of writes and of the event time.
        let entry = match self.always.get(idx) {
            Some(&ALWAYS_UNPRICED) if own_text => None,
            Some(&n) if own_text && n != 0 => Some(EntryId(n - 1)),
            _ => {
                let series_cached = self.selections.get(idx).copied().flatten();
                self.select(idx, ids, r, event_ns, own_text, table, series_cached)
            }
        };
        let core = [r.input_tokens, r.output_tokens, r.total_tokens];
        let extra = &r.extra_tokens[..self.n_extra];
        // The total of SPEC §3 is valid when its field is, or when input or output is.
        let counts = || {
            let mut valid = u64::from(r.valid);
            if valid & (1 << INPUT_BIT | 1 << OUTPUT_BIT) != 0 {
                valid |= 1 << TOTAL_BIT;
            }
            TypeCounts { core, extra, valid }
        };
        if self.defer_cost {
            let open = self.runs.get(idx).copied().flatten();
            if let (Some(entry), Some(linear)) = (entry, entry.and_then(|e| table.linear(e))) {
                // A run ends where a counter wraps: it spans no wrap, so the counts since it
                // began (differences of the counters) are below 2^64 and exact.
                if wrapped || open.map(|run| run.entry) != Some(entry) {
                    self.end_run(idx, table, Some(r));
                    self.start_run(idx, entry, r);
                }
                if linear.may_be_incomplete() && linear.incomplete(&counts()) {
                    self.count_unpriced(ids);
                }
                return;
            }
            if open.is_some() {
                self.end_run(idx, table, Some(r));
            }
        }
        let Some(entry) = entry else {
            if core.iter().chain(extra).any(|&c| c > 0) {
                self.count_unpriced(ids);
            }
            return;
        };
        let charge = table.charge(entry, &counts(), r.status_class == StatusClass::C2xx);
        self.cost[idx] = self.cost[idx].saturating_add(charge.units);
        self.last_cost = charge.units;
        if charge.incomplete {
            self.count_unpriced(ids);
        }
        if charge.child_exceeds != 0 {
            for (i, n) in self.stats.child_exceeds.iter_mut().enumerate() {
                *n += charge.child_exceeds >> i & 1;
            }
        }
    }

    /// The entry in force for a record whose series has no selection cached for all times:
    /// the series' (when `from` ≤ t < `until`), else its (model, service_id)'s, else matched.
    #[allow(clippy::too_many_arguments)]
    fn select(
        &mut self,
        idx: usize,
        ids: [u32; 2],
        r: &Record<'_>,
        event_ns: impl FnOnce() -> Option<i64>,
        own_text: bool,
        table: &PriceTable,
        series_cached: Option<Selection>,
    ) -> Option<EntryId> {
        let cached = if own_text {
            series_cached.or_else(|| self.pair_selections.get(&ids).copied())
        } else {
            None
        };
        if let Some(sel @ (entry, i64::MIN, i64::MAX)) = cached {
            // A price that holds at every time: no event time needed.
            self.remember_selection(idx, sel);
            return entry;
        }
        let t = event_ns().unwrap_or(self.clock_ns);
        match cached {
            Some(sel @ (entry, from, until)) if from <= t && t < until => {
                if series_cached.is_none() {
                    self.remember_selection(idx, sel);
                }
                entry
            }
            _ => {
                // Matched on the label values (after the 256-byte cut), before folding.
                let model = label_value(&r.model);
                let service = label_value(&r.service_id);
                let (entry, from, until) = table.select(&model, &service, t);
                if own_text {
                    self.remember_selection(idx, (entry, from, until));
                    self.pair_selections.insert(ids, (entry, from, until));
                }
                entry
            }
        }
    }

    /// Opens series `idx`'s run of `entry` with record `r` (already in the counters) as its
    /// first record.
    fn start_run(&mut self, idx: usize, entry: EntryId, r: &Record<'_>) {
        if self.runs.len() <= idx {
            self.runs.resize(idx + 1, None);
            self.run_extras.resize((idx + 1) * self.n_extra, 0);
        }
        let c = &self.series[idx].1;
        let ok = u64::from(r.status_class == StatusClass::C2xx);
        self.runs[idx] = Some(Run {
            entry,
            input: c.input.wrapping_sub(r.input_tokens),
            output: c.output.wrapping_sub(r.output_tokens),
            total: c.total.wrapping_sub(r.total_tokens),
            requests_2xx: c.requests[StatusClass::C2xx as usize].wrapping_sub(ok),
        });
        let n = self.n_extra;
        for j in 0..n {
            self.run_extras[idx * n + j] = self.extras[idx * n + j].wrapping_sub(r.extra_tokens[j]);
        }
    }

    /// The cost of series `idx`'s open run (0 when none): its entry's rates times the counts
    /// since it began, without `except`'s (a record counted but not of the run). Counters
    /// only grow (wrapping, like the counters themselves), so the differences are the sums.
    fn run_cost(&self, idx: usize, table: &PriceTable, except: Option<&Record<'_>>) -> u128 {
        let Some(Some(run)) = self.runs.get(idx) else {
            return 0;
        };
        let Some(linear) = table.linear(run.entry) else {
            return 0;
        };
        let c = &self.series[idx].1;
        let ok = |r: &Record<'_>| u64::from(r.status_class == StatusClass::C2xx);
        let core = [
            c.input
                .wrapping_sub(run.input)
                .wrapping_sub(except.map_or(0, |r| r.input_tokens)),
            c.output
                .wrapping_sub(run.output)
                .wrapping_sub(except.map_or(0, |r| r.output_tokens)),
            c.total
                .wrapping_sub(run.total)
                .wrapping_sub(except.map_or(0, |r| r.total_tokens)),
        ];
        let requests_2xx = c.requests[StatusClass::C2xx as usize]
            .wrapping_sub(run.requests_2xx)
            .wrapping_sub(except.map_or(0, ok));
        let n = self.n_extra;
        let mut extra = [0u64; crate::config::MAX_EXTRA_TOKENS];
        for (j, e) in extra.iter_mut().enumerate().take(n) {
            *e = self.extras[idx * n + j]
                .wrapping_sub(self.run_extras[idx * n + j])
                .wrapping_sub(except.map_or(0, |r| r.extra_tokens[j]));
        }
        // Sums of counts that were 0 where not measured: every type counts as measured.
        let counts = TypeCounts {
            core,
            extra: &extra[..n],
            valid: u64::MAX,
        };
        linear.cost(&counts, requests_2xx)
    }

    /// Charges and closes series `idx`'s open run (before `except`, see [`Store::run_cost`]).
    fn end_run(&mut self, idx: usize, table: &PriceTable, except: Option<&Record<'_>>) {
        let units = self.run_cost(idx, table, except);
        self.cost[idx] = self.cost[idx].saturating_add(units);
        if let Some(run) = self.runs.get_mut(idx) {
            *run = None;
        }
    }

    /// Charges and closes every open run: before the counters change other than by
    /// [`Store::add_at`] (a merge, a restore) and before the price table does.
    fn end_runs(&mut self) {
        let Some(table) = self.pricing.take() else {
            return;
        };
        for idx in 0..self.runs.len() {
            self.end_run(idx, &table, None);
        }
        self.pricing = Some(table);
    }

    /// The cost counted for series `idx`, its open run included.
    fn series_cost(&self, idx: usize) -> u128 {
        let run = self
            .pricing
            .as_ref()
            .map_or(0, |table| self.run_cost(idx, table, None));
        self.cost[idx].saturating_add(run)
    }

    /// Cost computed per record (for [`Store::last_cost`]: backfill's per-step sums) instead
    /// of per run of records.
    pub fn cost_per_record(&mut self) {
        self.end_runs();
        self.defer_cost = false;
    }

    fn remember_selection(&mut self, idx: usize, sel: Selection) {
        if self.selections.len() <= idx {
            self.selections.resize(idx + 1, None);
            self.always.resize(idx + 1, 0);
        }
        self.selections[idx] = Some(sel);
        self.always[idx] = match sel {
            (None, i64::MIN, i64::MAX) => ALWAYS_UNPRICED,
            (Some(EntryId(e)), i64::MIN, i64::MAX) if e < ALWAYS_UNPRICED - 1 => e + 1,
            _ => 0,
        };
    }

    fn count_unpriced(&mut self, ids: [u32; 2]) {
        self.count_pair(ids, |p| (&mut p.unpriced, &mut p.unpriced_start_ns));
    }

    fn count_unmetered(&mut self, ids: [u32; 2]) {
        self.count_pair(ids, |p| (&mut p.unmetered, &mut p.unmetered_start_ns));
    }

    /// Adds 1 to one counter of a (model, service_id); its series starts when it first counts.
    fn count_pair(&mut self, ids: [u32; 2], which: fn(&mut Pair) -> (&mut u64, &mut i64)) {
        let clock = self.clock_ns;
        let pair = self.pair_slot(ids);
        let (n, start_ns) = which(&mut self.pairs[pair]);
        if *n == 0 {
            *start_ns = clock;
        }
        *n += 1;
    }

    /// The histogram of (model, service_id, status class), created empty when new.
    fn hist_slot(&mut self, key: (u32, u32, StatusClass)) -> usize {
        if let Some(&i) = self.hist_index.get(&key) {
            return i as usize;
        }
        self.hists.push((key, Histogram::default()));
        self.hist_index.insert(key, (self.hists.len() - 1) as u32);
        self.hists.len() - 1
    }

    fn pair_slot(&mut self, ids: [u32; 2]) -> usize {
        if let Some(&i) = self.pair_index.get(&ids) {
            return i as usize;
        }
        self.pairs.push(Pair {
            ids,
            ..Pair::default()
        });
        let i = self.pairs.len() - 1;
        self.pair_index.insert(ids, i as u32);
        i
    }

    /// The labels of series `idx` (as [`Store::add`] returned it).
    pub fn series_labels(&self, idx: usize) -> Option<(&str, &str, &str)> {
        let [m, k, s] = self.series.get(idx)?.0;
        Some((self.models.get(m), self.keys.get(k), self.services.get(s)))
    }

    /// Interns the labels under their limits, folds past `max_series`, and finds or creates
    /// the series. A series that needed no folding joins the fast-path table.
    #[cold]
    fn slow_series(&mut self, r: &Record<'_>, hash: u64) -> usize {
        let st = &mut self.stats;
        let (mut m, of_m) = self.models.intern(&r.model);
        let (mut k, of_k) = self.keys.intern(&r.api_key_id);
        let (mut s, of_s) = self.services.intern(&r.service_id);
        st.overflows[0] += u64::from(of_m);
        st.overflows[1] += u64::from(of_k);
        st.overflows[2] += u64::from(of_s);
        let mut folded = of_m || of_k || of_s;
        if !self.series_index.contains_key(&[m, k, s]) && self.series.len() >= self.max_series {
            // Fold the whole series; the folded series itself may exceed the limit by one.
            st.overflows[3] += 1;
            m = self.models.force(OVERFLOW);
            k = self.keys.force(OVERFLOW);
            s = self.services.force(OVERFLOW);
            folded = true;
        }
        let idx = self.series_slot([m, k, s]);
        if !folded {
            let (models, keys, services) = (&self.models, &self.keys, &self.services);
            self.by_text
                .insert_unique(hash, (idx as u32, [m, k, s]), |&(_, [m, k, s])| {
                    text_hash(models.get(m), keys.get(k), services.get(s))
                });
        }
        idx
    }

    fn series_slot(&mut self, ids: [u32; 3]) -> usize {
        if let Some(&i) = self.series_index.get(&ids) {
            return i as usize;
        }
        self.series.push((
            ids,
            Counters {
                start_ns: self.clock_ns,
                ..Counters::default()
            },
        ));
        self.extras.resize(self.extras.len() + self.n_extra, 0);
        self.cost.push(0);
        let i = self.series.len() - 1;
        self.series_index.insert(ids, i as u32);
        i
    }

    /// The time new series are stamped with from now on (the daemon calls it between reads;
    /// one clock read per read, not per record).
    pub fn set_clock(&mut self, now_ns: i64) {
        self.clock_ns = now_ns;
    }

    /// Continues from a saved snapshot (the daemon's state after a restart), so exported
    /// counters do not reset. Values come back as they were saved, folded ones included; the
    /// limits apply to what comes next. Extra token counters are matched by name.
    pub fn restore(&mut self, snap: &Snapshot, extra_names: &[String]) {
        self.end_runs();
        // With pricing off, the saved cost is kept in its currency (and saved again).
        if self.currency.is_none() {
            self.currency.clone_from(&snap.currency);
        }
        let extra_map: Vec<Option<usize>> = snap
            .extra_names
            .iter()
            .map(|n| extra_names.iter().position(|m| m == n))
            .collect();
        for x in &snap.series {
            let ids = [
                self.models.force(&x.model),
                self.keys.force(&x.api_key_id),
                self.services.force(&x.service_id),
            ];
            let idx = self.series_slot(ids);
            let c = &mut self.series[idx].1;
            for (a, b) in c.requests.iter_mut().zip(x.requests) {
                *a += b;
            }
            c.input += x.input_tokens;
            c.output += x.output_tokens;
            c.total += x.total_tokens;
            if x.start_ns != 0 {
                c.start_ns = x.start_ns;
            }
            // Cost continues only in the currency it was counted in (kept while pricing is off).
            if snap.currency.is_some()
                && (self.currency.is_none() || snap.currency == self.currency)
            {
                self.cost[idx] = self.cost[idx].saturating_add(x.cost_units);
            }
            for (i, v) in x.extra_tokens.iter().enumerate() {
                if let Some(Some(j)) = extra_map.get(i) {
                    self.extras[idx * self.n_extra + j] += v;
                }
            }
        }
        for h in &snap.durations {
            let Some(class) = StatusClass::ALL
                .iter()
                .find(|c| c.as_str() == h.status_class)
            else {
                continue;
            };
            let key = (
                self.models.force(&h.model),
                self.services.force(&h.service_id),
                *class,
            );
            let i = self.hist_slot(key);
            self.hists[i].1.add(&h.histogram);
        }
        let st = &snap.stats;
        self.stats.records += st.records;
        for (a, b) in self
            .stats
            .records_by_format
            .iter_mut()
            .zip(st.records_by_format)
        {
            *a += b;
        }
        // A state written before formats has records and no formats: all of them were read
        // with the keys of the `tokenmeter` format.
        let unattributed = st
            .records
            .saturating_sub(st.records_by_format.iter().sum::<u64>());
        self.stats.records_by_format[crate::parse::format::Format::Tokenmeter as usize] +=
            unattributed;
        for (a, b) in self.stats.skipped.iter_mut().zip(st.skipped) {
            *a += b;
        }
        for (a, b) in self.stats.invalid_fields.iter_mut().zip(&st.invalid_fields) {
            *a += b;
        }
        self.stats.total_mismatches += st.total_mismatches;
        for (a, b) in self.stats.overflows.iter_mut().zip(st.overflows) {
            *a += b;
        }
        for (a, b) in self.stats.child_exceeds.iter_mut().zip(&st.child_exceeds) {
            *a += b;
        }
        for p in &snap.pairs {
            let ids = [
                self.models.force(&p.model),
                self.services.force(&p.service_id),
            ];
            let i = self.pair_slot(ids);
            let dst = &mut self.pairs[i];
            dst.unpriced += p.unpriced;
            dst.unmetered += p.unmetered;
            if p.unpriced_start_ns != 0 {
                dst.unpriced_start_ns = p.unpriced_start_ns;
            }
            if p.unmetered_start_ns != 0 {
                dst.unmetered_start_ns = p.unmetered_start_ns;
            }
        }
    }

    /// Counts a line that is not a record.
    pub fn skip(&mut self, reason: SkipReason) {
        self.stats.skipped[reason as usize] += 1;
    }

    pub fn stats(&self) -> &SelfStats {
        &self.stats
    }

    /// Number of token series (distinct label triples).
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// An owned copy, series sorted by (model, api_key_id, service_id).
    pub fn snapshot(&self, extra_names: &[String]) -> Snapshot {
        // Sort by each label's rank among its values: integer compares, not string compares.
        let (rm, rk, rs) = (
            self.models.ranks(),
            self.keys.ranks(),
            self.services.ranks(),
        );
        let mut order: Vec<usize> = (0..self.series.len()).collect();
        order.sort_unstable_by_key(|&i| {
            let [m, k, s] = self.series[i].0;
            (rm[m as usize], rk[k as usize], rs[s as usize])
        });
        let series: Vec<SeriesSnapshot> = order
            .into_iter()
            .map(|i| {
                let ([m, k, s], c) = &self.series[i];
                SeriesSnapshot {
                    model: self.models.get(*m).to_string(),
                    api_key_id: self.keys.get(*k).to_string(),
                    service_id: self.services.get(*s).to_string(),
                    requests: c.requests,
                    input_tokens: c.input,
                    output_tokens: c.output,
                    total_tokens: c.total,
                    extra_tokens: match &self.extras[i * self.n_extra..(i + 1) * self.n_extra] {
                        e if e.iter().all(|&n| n == 0) => Vec::new(),
                        e => e.to_vec(),
                    },
                    start_ns: c.start_ns,
                    cost_units: self.series_cost(i),
                }
            })
            .collect();
        let mut durations: Vec<HistogramSnapshot> = self
            .hists
            .iter()
            .map(|((m, s, c), h)| HistogramSnapshot {
                model: self.models.get(*m).to_string(),
                service_id: self.services.get(*s).to_string(),
                status_class: c.as_str().to_string(),
                histogram: h.clone(),
            })
            .collect();
        durations.sort_by(|a, b| {
            (&a.model, &a.service_id, &a.status_class).cmp(&(
                &b.model,
                &b.service_id,
                &b.status_class,
            ))
        });
        let mut pairs: Vec<_> = self
            .pairs
            .iter()
            .filter(|p| p.unpriced > 0 || p.unmetered > 0)
            .map(|p| {
                let [m, s] = p.ids;
                let snap = PairSnapshot {
                    model: self.models.get(m).to_string(),
                    service_id: self.services.get(s).to_string(),
                    unpriced: p.unpriced,
                    unmetered: p.unmetered,
                    unpriced_start_ns: p.unpriced_start_ns,
                    unmetered_start_ns: p.unmetered_start_ns,
                };
                (rm[m as usize], rs[s as usize], snap)
            })
            .collect();
        pairs.sort_unstable_by_key(|p| (p.0, p.1));
        Snapshot {
            extra_names: extra_names.to_vec(),
            series,
            durations,
            stats: self.stats.clone(),
            pairs: pairs.into_iter().map(|p| p.2).collect(),
            currency: self.currency.clone(),
        }
    }
}

/// Hash of a label triple's text; the 0xff separators cannot occur in UTF-8.
#[inline]
fn text_hash(model: &str, key: &str, service: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = FxHasher::default();
    h.write(model.as_bytes());
    h.write_u8(0xff);
    h.write(key.as_bytes());
    h.write_u8(0xff);
    h.write(service.as_bytes());
    h.finish()
}

/// The field name of each bit of [`Record::invalid`], for `tokenmeter_invalid_fields_total`.
pub fn invalid_field_names(extra_names: &[String]) -> Vec<String> {
    let mut v = vec![
        "input_tokens".to_string(),
        "output_tokens".into(),
        "total_tokens".into(),
    ];
    v.extend(extra_names.iter().map(|n| format!("{n}_tokens")));
    debug_assert_eq!(EXTRA_BIT0 as usize, 3);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MAX_EXTRA_TOKENS;
    use std::borrow::Cow;

    fn record(model: &str, key: &str, svc: &str, input: u64, output: u64) -> Record<'static> {
        Record {
            model: Cow::Owned(model.into()),
            api_key_id: Cow::Owned(key.into()),
            service_id: Cow::Owned(svc.into()),
            input_tokens: input,
            output_tokens: output,
            total_tokens: input + output,
            extra_tokens: [0; MAX_EXTRA_TOKENS],
            status_class: StatusClass::C2xx,
            duration_ms: Some(1500.0),
            start_time: None,
            start_ns: None,
            written_ns: None,
            format: crate::parse::format::Format::Tokenmeter,
            first_of_line: true,
            invalid: 0,
            valid: 0b111,
            total_mismatch: false,
        }
    }

    #[test]
    fn unpriced_and_unmetered_series_start_when_they_first_count() {
        let mut s = Store::new(&Config::default());
        let text = "[[prices]]\nmodel = \"m\"\nper_million = { input = 1 }\n";
        let pricing = crate::pricing::Pricing {
            prices: crate::pricing::parse_price_file(text).unwrap().prices,
            ..Default::default()
        };
        let (table, _) = PriceTable::compile(&pricing, &[]).unwrap();
        s.set_pricing(Some(Arc::new(table)));
        s.set_clock(1_000);
        s.add(&record("m", "k", "s", 10, 0)); // priced: the pair exists, nothing counted
        s.set_clock(2_000);
        let mut null = record("m", "k", "s", 0, 0);
        null.valid = 0;
        null.total_tokens = 0;
        s.add(&null); // unmetered
        s.set_clock(3_000);
        s.add(&record("m", "k", "s", 10, 5)); // output unpriced
        let snap = s.snapshot(&[]);
        let p = &snap.pairs[0];
        assert_eq!((p.unmetered, p.unmetered_start_ns), (1, 2_000));
        assert_eq!((p.unpriced, p.unpriced_start_ns), (1, 3_000));
        // 20 input tokens at 1 per million: 20 × 10^6 units.
        assert_eq!(snap.series[0].cost_units, 20_000_000);
    }

    #[test]
    fn sums_per_series() {
        let mut s = Store::new(&Config::default());
        s.add(&record("b", "k", "s", 1, 2));
        s.add(&record("a", "k", "s", 10, 20));
        s.add(&record("b", "k", "s", 100, 200));
        s.skip(SkipReason::NotJson);
        let snap = s.snapshot(&[]);
        assert_eq!(snap.series.len(), 2);
        assert_eq!(snap.series[0].model, "a");
        assert_eq!(
            (
                snap.series[1].input_tokens,
                snap.series[1].output_tokens,
                snap.series[1].total_tokens
            ),
            (101, 202, 303)
        );
        assert_eq!(snap.series[1].requests_total(), 2);
        assert_eq!(snap.stats.lines(), 4);
        assert_eq!(snap.durations.len(), 2);
        assert_eq!(snap.durations[0].histogram.count, 1);
        // 1.5 s falls in the 2.5 s bucket (index 4).
        assert_eq!(snap.durations[0].histogram.buckets[4], 1);
        assert_eq!(snap.durations[0].histogram.cumulative()[11], 1);
    }

    #[test]
    fn value_limits_fold_into_overflow() {
        let mut c = Config::default();
        c.limits.max_values.api_key_id = 2;
        let mut s = Store::new(&c);
        for (i, key) in ["k1", "k2", "k3", "k4", "k1"].iter().enumerate() {
            s.add(&record("m", key, "s", i as u64 + 1, 0));
        }
        let snap = s.snapshot(&[]);
        let keys: Vec<_> = snap
            .series
            .iter()
            .map(|x| (x.api_key_id.as_str(), x.input_tokens))
            .collect();
        // k3 (3) and k4 (4) fold; tokens are never dropped.
        assert_eq!(keys, vec![(OVERFLOW, 7), ("k1", 1 + 5), ("k2", 2)]);
        assert_eq!(snap.stats.overflows, [0, 2, 0, 0]);
    }

    #[test]
    fn max_series_folds_whole_series() {
        let mut c = Config::default();
        c.limits.max_series = 2;
        let mut s = Store::new(&c);
        s.add(&record("a", "k", "s", 1, 0));
        s.add(&record("b", "k", "s", 2, 0));
        s.add(&record("c", "k", "s", 4, 0));
        s.add(&record("d", "k", "s", 8, 0));
        s.add(&record("a", "k", "s", 16, 0));
        let snap = s.snapshot(&[]);
        let got: Vec<_> = snap
            .series
            .iter()
            .map(|x| (x.model.as_str(), x.input_tokens))
            .collect();
        assert_eq!(got, vec![(OVERFLOW, 12), ("a", 17), ("b", 2)]);
        assert_eq!(snap.stats.overflows[3], 2);
    }

    #[test]
    fn restore_continues_the_counters() {
        let mut c = Config::default();
        c.limits.max_values.api_key_id = 2;
        let mut s = Store::new(&c);
        s.add(&record("m", "k1", "s", 1, 2));
        s.add(&record("m", "k2", "s", 3, 4));
        s.add(&record("m", "k3", "s", 5, 6)); // folded
        let snap = s.snapshot(&[]);
        let mut t = Store::new(&c);
        t.restore(&snap, &[]);
        assert_eq!(t.snapshot(&[]), snap);
        t.add(&record("m", "k1", "s", 10, 0));
        t.add(&record("m", "k4", "s", 100, 0)); // still past the limit: folded
        let after = t.snapshot(&[]);
        let get = |k: &str| {
            after
                .series
                .iter()
                .find(|x| x.api_key_id == k)
                .unwrap()
                .input_tokens
        };
        assert_eq!((get("k1"), get(OVERFLOW)), (11, 105));
        assert_eq!(after.stats.overflows[1], 2);
    }

    #[test]
    fn invalid_fields_and_mismatches_are_counted() {
        let mut s = Store::new(&Config::default());
        let mut r = record("m", "k", "s", 1, 1);
        r.invalid = 0b101;
        r.total_mismatch = true;
        s.add(&r);
        // input, output, total, then the three built-in extra types.
        assert_eq!(s.stats().invalid_fields, vec![1, 0, 1, 0, 0, 0]);
        assert_eq!(s.stats().total_mismatches, 1);
    }

    #[test]
    fn label_values_never_carry_control_characters_or_unbounded_length() {
        assert_eq!(label_value("gpt-4o"), "gpt-4o");
        assert_eq!(
            label_value("a\u{0}b\nc\u{7f}"),
            "a\u{fffd}b\u{fffd}c\u{fffd}"
        );
        let long = "é".repeat(200);
        let v = label_value(&long);
        assert!(v.len() <= MAX_LABEL_BYTES && v.chars().all(|c| c == 'é'));
        // In the store: a NUL in a model becomes U+FFFD, the same series as the clean text.
        let config = Config::default();
        let mut store = Store::new(&config);
        let mut parser = crate::parse::Parser::new(&config.fields);
        for line in [
            r#"{"model":"m\u0000x","api_key_id":"k","aim_service_id":"s","llm_input_token":1,"response_code":200}"#,
            r#"{"model":"m\u0000x","api_key_id":"k","aim_service_id":"s","llm_input_token":2,"response_code":200}"#,
        ] {
            if let crate::parse::Parsed::Record(r) = parser.parse(line) {
                store.add(&r);
            }
        }
        let snap = store.snapshot(&[]);
        assert_eq!(snap.series.len(), 1);
        assert_eq!(snap.series[0].model, "m\u{fffd}x");
        assert_eq!(snap.series[0].input_tokens, 3);
    }

    /// What a store counted, histogram sums aside (float sums depend on the order of
    /// additions; they are not in replay's outputs).
    fn counted(s: &Store) -> Snapshot {
        let mut snap = s.snapshot(&[]);
        for d in &mut snap.durations {
            d.histogram.sum_seconds = 0.0;
        }
        snap
    }

    proptest::proptest! {
        /// `replay --jobs`: files counted apart into unlimited stores and absorbed in order
        /// (or counted again in order where absorbing is refused) give exactly what counting
        /// every record in order gives, with small limits that fold values and series,
        /// unpriced and unmetered records, status classes and durations.
        #[test]
        fn absorbing_parts_in_order_equals_counting_in_order(
            records in proptest::collection::vec(
                (0usize..4, 0usize..6, 0usize..3, 0u64..1000, 0usize..5, proptest::bool::weighted(0.1)),
                0..80,
            ),
            cuts in proptest::collection::vec(0usize..80, 0..4),
            max_series in 1usize..14,
            max_models in 1usize..5,
            max_keys in 1usize..7,
        ) {
            let mut config = Config::default();
            config.limits.max_series = max_series;
            config.limits.max_values.model = max_models;
            config.limits.max_values.api_key_id = max_keys;
            let text = "[[prices]]\nmodel = \"m0\"\nper_million = { input = 1 }\n\
                        [[prices]]\nmodel = \"m1\"\nper_request = 0.5\nper_million = { output = 3 }\n";
            let pricing = crate::pricing::Pricing {
                prices: crate::pricing::parse_price_file(text).unwrap().prices,
                ..Default::default()
            };
            let table = Arc::new(PriceTable::compile(&pricing, &[]).unwrap().0);
            let make = |(m, k, sv, tokens, class, null): &(usize, usize, usize, u64, usize, bool)| {
                let mut r = record(&format!("m{m}"), &format!("k{k}"), &format!("s{sv}"), *tokens, tokens / 2);
                r.status_class = StatusClass::ALL[*class];
                r.duration_ms = (tokens % 3 != 0).then_some(*tokens as f64);
                if *null {
                    r.valid = 0;
                    r.input_tokens = 0;
                    r.output_tokens = 0;
                    r.total_tokens = 0;
                }
                r
            };
            let mut in_order = Store::new(&config);
            in_order.set_pricing(Some(table.clone()));
            for r in &records {
                in_order.add(&make(r));
            }
            let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c.min(records.len())).collect();
            bounds.push(0);
            bounds.push(records.len());
            bounds.sort_unstable();
            let mut merged = Store::new(&config);
            merged.set_pricing(Some(table.clone()));
            for part_records in bounds.windows(2).map(|w| &records[w[0]..w[1]]) {
                let mut part = Store::unlimited(&config);
                part.set_pricing(Some(table.clone()));
                for r in part_records {
                    part.add(&make(r));
                }
                if !merged.absorb(&part) {
                    for r in part_records {
                        merged.add(&make(r));
                    }
                }
            }
            proptest::prop_assert_eq!(counted(&merged), counted(&in_order));
        }
    }

    fn table_of(text: &str, extras: &[&str]) -> Arc<PriceTable> {
        let file = crate::pricing::parse_price_file(text).unwrap();
        let pricing = crate::pricing::Pricing {
            prices: file.prices,
            included_in: file
                .included_in
                .unwrap_or_else(|| crate::pricing::Pricing::default().included_in),
            ..Default::default()
        };
        let extras: Vec<String> = extras.iter().map(|e| e.to_string()).collect();
        Arc::new(PriceTable::compile(&pricing, &extras).unwrap().0)
    }

    proptest::proptest! {
        /// Cost charged per run of records (the default) equals cost charged record by
        /// record (`cost_per_record`, what backfill uses), series by series, with entries that
        /// are linear and entries that are not (tiers, a priced type inside another), a `from`
        /// that switches a model between them, records without a price, a price reload half
        /// way, snapshots taken in between (reading open runs) and merged parts.
        #[test]
        fn cost_per_run_equals_cost_per_record(
            records in proptest::collection::vec(
                (0usize..5, 0usize..3, 0u64..5000, 0u64..3000, 0u64..800, 0usize..5, 0i64..4, proptest::bool::weighted(0.1)),
                0..120,
            ),
            reload_at in 0usize..130,
            snapshot_at in 0usize..130,
            merge_from in 0usize..130,
        ) {
            let mut config = Config::default();
            config.fields.extra_tokens.insert("cached_input".into(), "llm_cached_input_token".into());
            let first = table_of(r#"
included_in = { cached_input = "input" }
[[prices]]
model = "m0"
per_request = 0.001
per_million = { input = 1.5, output = 6, cached_input = 0 }
[[prices]]
model = "m0"
service_id = "s1"
per_million = { input = 1.5, cached_input = 0.75 }
[[prices]]
model = "m1"
per_million = { input = 1, output = 2 }
tiers = [{ above_input = 2000, per_million = { input = 2, output = 4 } }]
[[prices]]
model = "m2"
per_million = { total = 3 }
[[prices]]
model = "m3"
per_million = { input = 1, output = 2 }
[[prices]]
model = "m3"
from = "1970-01-01T00:00:02Z"
per_million = { input = 1, output = 2 }
tiers = [{ above_input = 100, per_million = { input = 5 } }]
[[prices]]
model = "m3"
from = "1970-01-01T00:00:03Z"
per_million = { input = 7, output = 1 }
"#, &["cached_input"]);
            let second = table_of(r#"
[[prices]]
model = "m*"
per_million = { input = 2, output = 3 }
[[prices]]
model = "m1"
per_million = { total = 1 }
"#, &["cached_input"]);
            let make = |&(m, sv, input, output, cached, class, _, null): &(usize, usize, u64, u64, u64, usize, i64, bool)| {
                let mut r = record(&format!("m{m}"), "k", &format!("s{sv}"), input, output);
                r.extra_tokens[0] = cached;
                r.valid = 0b1111;
                r.status_class = StatusClass::ALL[class];
                if null {
                    r.valid = 0;
                    r.input_tokens = 0;
                    r.output_tokens = 0;
                    r.total_tokens = 0;
                    r.extra_tokens[0] = 0;
                }
                r
            };
            let mut per_run = Store::new(&config);
            let mut per_record = Store::new(&config);
            per_record.cost_per_record();
            let mut part = Store::unlimited(&config);
            for s in [&mut per_run, &mut per_record, &mut part] {
                s.set_pricing(Some(first.clone()));
            }
            // Records from `merge_from` on are counted apart and merged at the end.
            for (i, rec) in records.iter().enumerate() {
                if i == reload_at {
                    for s in [&mut per_run, &mut per_record, &mut part] {
                        s.set_pricing(Some(second.clone()));
                    }
                }
                if i == snapshot_at {
                    let _ = per_run.snapshot(&["cached_input".into()]);
                }
                let r = make(rec);
                let t = rec.6 * 1_000_000_000;
                per_record.add_at(&r, || Some(t));
                if i >= merge_from {
                    part.add_at(&r, || Some(t));
                } else {
                    per_run.add_at(&r, || Some(t));
                }
            }
            proptest::prop_assert!(per_run.absorb(&part));
            let names = ["cached_input".to_string()];
            proptest::prop_assert_eq!(counted_with(&per_run, &names), counted_with(&per_record, &names));
        }
    }

    /// A series whose token counters wrap (2^64 tokens: 2049 records of 2^53, the largest valid
    /// value, as hostile input can write) is still charged what each record costs: a run's
    /// counts are differences of the counters, so a run must not span a wrap.
    #[test]
    fn cost_per_run_survives_counters_that_wrap() {
        let table = table_of(
            "[[prices]]\nmodel = \"m\"\nper_request = 0.5\nper_million = { input = 1, output = 3 }\n",
            &[],
        );
        let config = Config::default();
        let mut per_run = Store::new(&config);
        let mut per_record = Store::new(&config);
        per_record.cost_per_record();
        // The first half counted here, the second apart and merged (`replay --jobs`).
        let (mut merged, mut part) = (Store::new(&config), Store::unlimited(&config));
        for s in [&mut per_run, &mut per_record, &mut merged, &mut part] {
            s.set_pricing(Some(table.clone()));
        }
        let big = 1u64 << 53;
        let n = 2 * 2049u64;
        for i in 0..n {
            let r = record("m", "k", "s", big, if i % 2 == 0 { big } else { 7 });
            per_run.add(&r);
            per_record.add(&r);
            if i < n / 2 + 3 {
                merged.add(&r);
            } else {
                part.add(&r);
            }
            if i == n / 2 {
                // Read mid-run, as a state write does.
                let _ = per_run.snapshot(&[]);
            }
        }
        // 10^6 units per input token, 3·10^6 per output token, 0.5 per 2xx request.
        let outputs = u128::from(n / 2) * u128::from(big) + u128::from(n / 2) * 7;
        let expected = u128::from(n) * u128::from(big) * 1_000_000
            + outputs * 3_000_000
            + u128::from(n) * 500_000_000_000;
        assert_eq!(per_record.snapshot(&[]).series[0].cost_units, expected);
        assert_eq!(per_run.snapshot(&[]).series[0].cost_units, expected);
        assert!(merged.absorb(&part));
        assert_eq!(counted(&merged), counted(&per_record));
    }

    fn counted_with(s: &Store, names: &[String]) -> Snapshot {
        let mut snap = s.snapshot(names);
        for d in &mut snap.durations {
            d.histogram.sum_seconds = 0.0;
        }
        snap
    }
}
