//! Records → the counter store of docs/metrics.md, with the cardinality guard and the self-counters.
//!
//! Owns: one counter set per (model, api_key_id, service_id, team), requests per status class, the
//! duration histogram per (model, service_id, status_class), the per-label value limits and
//! `max_series` with `__overflow__` folding, and counts of lines by result. No I/O. Exports and
//! the server read [`Snapshot`]s, never the store's internals.
//!
//! The team (docs/owners.md) is the owners table's answer for the record's api_key_id at its
//! event time; without owners it is the empty value, never exported, so the series are the
//! (model, api_key_id, service_id) ones.
//!
//! Why ids: each distinct label string is stored once and given a small integer the first time
//! it is seen; series are keyed by the id quadruple. Counting a record then costs three lookups
//! of borrowed strings and one of three integers, and allocates nothing unless a value is new.
//!
//! The parts: [`interner`] (label values ↔ ids), [`spend`] (prices and cost, docs/spend.md),
//! [`merge`] (a part counted apart joins the store), [`snapshot`] (the owned copy and the
//! restore).

mod interner;
mod merge;
mod snapshot;
mod spend;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_owners;

use std::collections::HashMap;

use hashbrown::HashTable;
use rustc_hash::{FxBuildHasher, FxHasher};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::owners::OwnerTable;
use crate::parse::{Record, StatusClass, EXTRA_BIT0, MAX_LABEL_BYTES};

use interner::Interner;
use spend::{Counted, Spend};

pub use snapshot::{HistogramSnapshot, PairSnapshot, SeriesSnapshot, Snapshot};

pub use crate::parse::OVERFLOW;

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

/// Labels that can overflow, in the order of [`SelfStats::overflows`] (the team's, only with
/// owners, is [`SelfStats::team_overflows`]).
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
    /// above its nearest priced ancestor's (docs/spend.md arithmetic). Empty without pricing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub child_exceeds: Vec<u64>,
    /// Records whose team was folded into `__overflow__` (docs/owners.md; 0 without owners).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub team_overflows: u64,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
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
    /// Teams (docs/owners.md); only the empty value while owners are off.
    teams: Interner,
    max_series: usize,
    n_extra: usize,
    series_index: HashMap<[u32; 4], u32, FxBuildHasher>,
    /// Series index by the hash of the label text, for series whose labels are not folded.
    /// Each entry holds the series index and its label ids, so confirming a probe reads the
    /// (hot, small) interners and not the series vector: the series' counters can then be
    /// fetched while the labels are compared, instead of after.
    by_text: HashTable<(u32, [u32; 4])>,
    series: Vec<([u32; 4], Counters)>,
    /// `n_extra` values per series, flat.
    extras: Vec<u64>,
    hist_index: HashMap<(u32, u32, StatusClass), u32, FxBuildHasher>,
    hists: Vec<((u32, u32, StatusClass), Histogram)>,
    stats: SelfStats,
    /// The time new series are stamped with (set by the caller between reads; 0 in replay).
    clock_ns: i64,
    /// docs/spend.md: the prices, the cost per series and the unpriced and unmetered counts.
    spend: Spend,
    /// For an [`Store::unlimited`] part: the limits of the store it is merged into (model,
    /// api_key_id, service_id and team values, series). A part beyond any of them cannot be
    /// absorbed, so it need not be counted to its end ([`Store::abandon`]).
    merge_limits: Option<[usize; 5]>,
    /// Counting stopped part way ([`Store::abandon`]): never absorbed.
    abandoned: bool,
    /// docs/owners.md: the owners table in force (`None`: owners off, no team).
    owners: Option<std::sync::Arc<OwnerTable>>,
    /// The team label's name while owners are configured (`owners.file` set).
    team_label: Option<String>,
    /// The team selected for an api_key_id text and the event-time interval it holds over.
    team_cache: HashMap<Box<str>, (u32, i64, i64), FxBuildHasher>,
}

impl Store {
    pub fn new(config: &Config) -> Self {
        let lim = &config.limits;
        let n_extra = config.fields.extra_names().len();
        Store {
            models: Interner::new(lim.max_values.model),
            keys: Interner::new(lim.max_values.api_key_id),
            services: Interner::new(lim.max_values.service_id),
            teams: Interner::new(lim.max_values.team),
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
            spend: Spend::new(),
            merge_limits: None,
            abandoned: false,
            owners: None,
            team_label: (!config.owners.file.is_empty()).then(|| config.owners.label.clone()),
            team_cache: HashMap::default(),
        }
    }

    /// A store for one part of a replay counted on its own thread (see [`Store::absorb`]):
    /// no limits, so no series of the part is folded before the merge decides.
    pub fn unlimited(config: &Config) -> Self {
        let mut s = Store::new(config);
        s.merge_limits = Some([
            s.models.limit,
            s.keys.limit,
            s.services.limit,
            s.teams.limit,
            s.max_series,
        ]);
        s.models.limit = usize::MAX;
        s.keys.limit = usize::MAX;
        s.services.limit = usize::MAX;
        s.teams.limit = usize::MAX;
        s.max_series = usize::MAX;
        s
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
        // Asked at most once, by whichever of the team and the price needs it first.
        let mut ask = Some(event_ns);
        let mut asked: Option<Option<i64>> = None;
        let mut event = move || *asked.get_or_insert_with(|| ask.take().and_then(|f| f()));
        let owners = self.owners.take();
        let team = match &owners {
            Some(table) => self.team_of(table, &r.api_key_id, &mut event),
            None => "",
        };
        let idx = self.add_with_team(r, team, &mut event);
        self.owners = owners;
        idx
    }

    /// The team of api_key_id `key` at the record's event time (docs/owners.md), through the
    /// cache of each key's selection and the interval it holds over.
    fn team_of<'t>(
        &mut self,
        table: &'t OwnerTable,
        key: &str,
        event: &mut impl FnMut() -> Option<i64>,
    ) -> &'t str {
        let t = match self.team_cache.get(key) {
            Some(&(team, i64::MIN, i64::MAX)) => return table.team(team),
            Some(&(team, from, until)) => {
                let t = event().unwrap_or(self.clock_ns);
                if from <= t && t < until {
                    return table.team(team);
                }
                t
            }
            None if table.time_dependent() => event().unwrap_or(self.clock_ns),
            None => self.clock_ns,
        };
        // Matched on the label value (after the 256-byte cut), before folding.
        let (team, from, until) = table.select_id(&label_value(key), t);
        if self.team_cache.len() >= TEAM_CACHE_MAX {
            self.team_cache.clear();
        }
        self.team_cache.insert(key.into(), (team, from, until));
        table.team(team)
    }

    fn add_with_team(
        &mut self,
        r: &Record<'_>,
        team: &str,
        event_ns: &mut impl FnMut() -> Option<i64>,
    ) -> usize {
        self.spend.last_cost = 0;
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
        let hash = text_hash(&r.model, &r.api_key_id, &r.service_id, team);
        let (models, keys, services, teams) =
            (&self.models, &self.keys, &self.services, &self.teams);
        let found = self.by_text.find(hash, |&(_, [m, k, s, t])| {
            models.get(m) == r.model
                && keys.get(k) == r.api_key_id
                && services.get(s) == r.service_id
                && teams.get(t) == team
        });
        let fast = found.is_some();
        let idx = match found {
            Some(&(i, _)) => i as usize,
            None => self.slow_series(r, team, hash),
        };
        let [m, _, s, t] = self.series[idx].0;
        // The price depends on the model and service_id text only: a series found on the fast
        // path has the record's own text; on the slow path (new, or folded) it is compared.
        let own_text = fast
            || (self.spend.pricing.is_some()
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
            self.count_unmetered([m, s, t]);
        }
        if self.spend.pricing.is_some() {
            let at = Counted {
                idx,
                ids: [m, s],
                team: t,
                r,
                own_text,
                wrapped,
            };
            self.price(at, event_ns);
        }
        idx
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

    /// The labels of series `idx` (as [`Store::add`] returned it).
    pub fn series_labels(&self, idx: usize) -> Option<(&str, &str, &str)> {
        let [m, k, s, _] = self.series.get(idx)?.0;
        Some((self.models.get(m), self.keys.get(k), self.services.get(s)))
    }

    /// The team of series `idx` (empty without owners).
    pub fn series_team(&self, idx: usize) -> Option<&str> {
        let [_, _, _, t] = self.series.get(idx)?.0;
        Some(self.teams.get(t))
    }

    /// Sets the owners table for the records counted from now on (`None`: none in force;
    /// records then go to no team). Series already counted keep their team.
    pub fn set_owners(&mut self, table: Option<std::sync::Arc<OwnerTable>>) {
        self.owners = table;
        self.team_cache.clear();
    }

    /// The team label's name while owners are configured.
    pub fn team_label(&self) -> Option<&str> {
        self.team_label.as_deref()
    }

    pub fn owners(&self) -> Option<&std::sync::Arc<OwnerTable>> {
        self.owners.as_ref()
    }

    /// Interns the labels under their limits, folds past `max_series`, and finds or creates
    /// the series. A series that needed no folding joins the fast-path table.
    #[cold]
    fn slow_series(&mut self, r: &Record<'_>, team: &str, hash: u64) -> usize {
        let st = &mut self.stats;
        let (mut m, of_m) = self.models.intern(&r.model);
        let (mut k, of_k) = self.keys.intern(&r.api_key_id);
        let (mut s, of_s) = self.services.intern(&r.service_id);
        // Without owners the team is the empty value, which never folds.
        let (mut t, of_t) = if team.is_empty() {
            (self.teams.force(""), false)
        } else {
            self.teams.intern(team)
        };
        st.overflows[0] += u64::from(of_m);
        st.overflows[1] += u64::from(of_k);
        st.overflows[2] += u64::from(of_s);
        st.team_overflows += u64::from(of_t);
        let mut folded = of_m || of_k || of_s || of_t;
        if !self.series_index.contains_key(&[m, k, s, t]) && self.series.len() >= self.max_series {
            // Fold the whole series; the folded series itself may exceed the limit by one.
            st.overflows[3] += 1;
            m = self.models.force(OVERFLOW);
            k = self.keys.force(OVERFLOW);
            s = self.services.force(OVERFLOW);
            if !team.is_empty() {
                t = self.teams.force(OVERFLOW);
            }
            folded = true;
        }
        let idx = self.series_slot([m, k, s, t]);
        if !folded {
            let (models, keys, services, teams) =
                (&self.models, &self.keys, &self.services, &self.teams);
            self.by_text
                .insert_unique(hash, (idx as u32, [m, k, s, t]), |&(_, [m, k, s, t])| {
                    text_hash(models.get(m), keys.get(k), services.get(s), teams.get(t))
                });
        }
        idx
    }

    fn series_slot(&mut self, ids: [u32; 4]) -> usize {
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
        self.spend.cost.push(0);
        let i = self.series.len() - 1;
        self.series_index.insert(ids, i as u32);
        i
    }

    /// The time new series are stamped with from now on (the daemon calls it between reads;
    /// one clock read per read, not per record).
    pub fn set_clock(&mut self, now_ns: i64) {
        self.clock_ns = now_ns;
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
}

/// Hash of a series' labels' text; the 0xff separators cannot occur in UTF-8.
#[inline]
fn text_hash(model: &str, key: &str, service: &str, team: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = FxHasher::default();
    h.write(model.as_bytes());
    h.write_u8(0xff);
    h.write(key.as_bytes());
    h.write_u8(0xff);
    h.write(service.as_bytes());
    // Without owners every team is empty: nothing to mix in (and no cost on the hot path).
    if !team.is_empty() {
        h.write_u8(0xff);
        h.write(team.as_bytes());
    }
    h.finish()
}

/// The most api_key_id texts whose team is cached (then the cache starts over): bounds its
/// memory when keys are unbounded (the keys past `limits.max_values.api_key_id` fold, but
/// their text is still looked up).
const TEAM_CACHE_MAX: usize = 100_000;

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
