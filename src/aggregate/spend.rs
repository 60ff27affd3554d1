//! Spend (docs/spend.md) in the store: the price in force for each record (cached per series and
//! per (model, service_id) until the next `from`), its cost charged per record or per run of
//! records of one linear entry, and the unpriced (requests and tokens) and unmetered counts,
//! per (model, service_id, team).
//!
//! Owns: [`Spend`], the ledger of those, and the [`Store`] methods that keep it. Must not: read
//! prices (the [`PriceTable`] says what a record costs) or change the token counters.

use std::collections::HashMap;
use std::sync::Arc;

use rustc_hash::FxBuildHasher;

use crate::parse::{Record, StatusClass, INPUT_BIT, OUTPUT_BIT, TOTAL_BIT};
use crate::pricing::{EntryId, PriceTable, TypeCounts};

use super::{label_value, Store};

/// The spend ledger of docs/spend.md: everything the store keeps for prices and cost, beside the
/// counters. Held by [`Store`] as one field; its methods are [`Store`]'s, since charging reads
/// the series' counters.
pub(super) struct Spend {
    /// Cost per series in units of 10^-12 currency (docs/spend.md), indexed like `series`.
    pub(super) cost: Vec<u128>,
    /// The price table in force (`None`: pricing off) and its currency.
    pub(super) pricing: Option<Arc<PriceTable>>,
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
    /// Per (model, service_id, team) label ids: unpriced and unmetered requests.
    pair_index: HashMap<[u32; 3], u32, FxBuildHasher>,
    pub(super) pairs: Vec<Pair>,
    /// Cost restored from a state saved in this currency (see [`Store::restore`]).
    pub(super) currency: Option<String>,
    /// The cost of the record counted last (for backfill's per-step sums; only when cost is
    /// computed per record, see [`Store::cost_per_record`]).
    pub(super) last_cost: u128,
    /// Cost charged per run of records (the default) rather than per record.
    defer_cost: bool,
    /// Each series' open run (indexed like `series`), and its extra counters when it began
    /// (`n_extra` per series).
    runs: Vec<Option<Run>>,
    run_extras: Vec<u64>,
}

impl Spend {
    pub(super) fn new() -> Self {
        Spend {
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
        }
    }
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

/// A record just counted, as [`Store::price`] needs it.
#[derive(Clone, Copy)]
pub(super) struct Counted<'a, 'r> {
    /// The series it went to, and its (model, service_id) and team label ids.
    pub(super) idx: usize,
    pub(super) ids: [u32; 2],
    pub(super) team: u32,
    pub(super) r: &'a Record<'r>,
    /// The series' labels are the record's own text (found on the fast path), so its cached
    /// selection applies.
    pub(super) own_text: bool,
    /// A token counter of the series wrapped when `r` was added.
    pub(super) wrapped: bool,
}

/// The unpriced and unmetered counters of one (model, service_id, team).
#[derive(Clone, Debug, Default)]
pub(super) struct Pair {
    pub(super) ids: [u32; 3],
    pub(super) unpriced: u64,
    /// The tokens (the total of docs/guarantees.md "What counts") of the unpriced requests.
    pub(super) unpriced_tokens: u64,
    pub(super) unmetered: u64,
    /// When each counter first went above 0: the start of its series (see
    /// docs/metrics.md "Series start times and first increments").
    pub(super) unpriced_start_ns: i64,
    pub(super) unmetered_start_ns: i64,
}

impl Store {
    /// The cost of the record [`Store::add_at`] counted last, in units of 10^-12 currency
    /// (after [`Store::cost_per_record`]).
    pub fn last_cost(&self) -> u128 {
        debug_assert!(!self.spend.defer_cost || self.spend.pricing.is_none());
        self.spend.last_cost
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
            self.spend.currency = Some(t.currency().to_string());
        }
        self.spend.pricing = table;
        self.spend.selections.iter_mut().for_each(|s| *s = None);
        self.spend.always.iter_mut().for_each(|a| *a = 0);
        self.spend.pair_selections.clear();
    }

    pub fn pricing(&self) -> Option<&Arc<PriceTable>> {
        self.spend.pricing.as_ref()
    }

    /// The currency of the cost counters (`None`: pricing off).
    pub fn currency(&self) -> Option<&str> {
        self.spend.currency.as_deref()
    }

    /// docs/spend.md per record: the price in force at its event time, its cost, unpriced and
    /// child-above-parent counts, for the record `at` says was counted.
    pub(super) fn price(&mut self, at: Counted<'_, '_>, event_ns: impl FnOnce() -> Option<i64>) {
        // Taken out and put back (no reference count touched per record).
        let Some(table) = self.spend.pricing.take() else {
            return;
        };
        self.charge(at, event_ns, &table);
        self.spend.pricing = Some(table);
    }

    fn charge(
        &mut self,
        at: Counted<'_, '_>,
        event_ns: impl FnOnce() -> Option<i64>,
        table: &PriceTable,
    ) {
        let Counted {
            idx,
            ids,
            team,
            r,
            own_text,
            wrapped,
        } = at;
        let unpriced = [ids[0], ids[1], team];
        // The series' own cached selection, when it holds at every time, needs nothing else:
        // the common case, kept free of writes and of the event time.
        let entry = match self.spend.always.get(idx) {
            Some(&ALWAYS_UNPRICED) if own_text => None,
            Some(&n) if own_text && n != 0 => Some(EntryId(n - 1)),
            _ => {
                let series_cached = self.spend.selections.get(idx).copied().flatten();
                self.select(at, event_ns, table, series_cached)
            }
        };
        let core = [r.input_tokens, r.output_tokens, r.total_tokens];
        let extra = &r.extra_tokens[..self.n_extra];
        // The total of docs/guarantees.md "What counts" is valid when its field is, or when input or output is.
        let counts = || {
            let mut valid = u64::from(r.valid);
            if valid & (1 << INPUT_BIT | 1 << OUTPUT_BIT) != 0 {
                valid |= 1 << TOTAL_BIT;
            }
            TypeCounts { core, extra, valid }
        };
        if self.spend.defer_cost {
            let open = self.spend.runs.get(idx).copied().flatten();
            if let (Some(entry), Some(linear)) = (entry, entry.and_then(|e| table.linear(e))) {
                // A run ends where a counter wraps: it spans no wrap, so the counts since it
                // began (differences of the counters) are below 2^64 and exact.
                if wrapped || open.map(|run| run.entry) != Some(entry) {
                    self.end_run(idx, table, Some(r));
                    self.start_run(idx, entry, r);
                }
                if linear.may_be_incomplete() && linear.incomplete(&counts()) {
                    self.count_unpriced(unpriced, r.total_tokens);
                }
                return;
            }
            if open.is_some() {
                self.end_run(idx, table, Some(r));
            }
        }
        let Some(entry) = entry else {
            if core.iter().chain(extra).any(|&c| c > 0) {
                self.count_unpriced(unpriced, r.total_tokens);
            }
            return;
        };
        let charge = table.charge(entry, &counts(), r.status_class == StatusClass::C2xx);
        self.spend.cost[idx] = self.spend.cost[idx].saturating_add(charge.units);
        self.spend.last_cost = charge.units;
        if charge.incomplete {
            self.count_unpriced(unpriced, r.total_tokens);
        }
        if charge.child_exceeds != 0 {
            for (i, n) in self.stats.child_exceeds.iter_mut().enumerate() {
                *n += charge.child_exceeds >> i & 1;
            }
        }
    }

    /// The entry in force for a record whose series has no selection cached for all times:
    /// the series' (when `from` ≤ t < `until`), else its (model, service_id)'s, else matched.
    fn select(
        &mut self,
        at: Counted<'_, '_>,
        event_ns: impl FnOnce() -> Option<i64>,
        table: &PriceTable,
        series_cached: Option<Selection>,
    ) -> Option<EntryId> {
        let Counted {
            idx,
            ids,
            r,
            own_text,
            ..
        } = at;
        let cached = if own_text {
            series_cached.or_else(|| self.spend.pair_selections.get(&ids).copied())
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
                    self.spend.pair_selections.insert(ids, (entry, from, until));
                }
                entry
            }
        }
    }

    /// Opens series `idx`'s run of `entry` with record `r` (already in the counters) as its
    /// first record.
    fn start_run(&mut self, idx: usize, entry: EntryId, r: &Record<'_>) {
        if self.spend.runs.len() <= idx {
            self.spend.runs.resize(idx + 1, None);
            self.spend.run_extras.resize((idx + 1) * self.n_extra, 0);
        }
        let c = &self.series[idx].1;
        let ok = u64::from(r.status_class == StatusClass::C2xx);
        self.spend.runs[idx] = Some(Run {
            entry,
            input: c.input.wrapping_sub(r.input_tokens),
            output: c.output.wrapping_sub(r.output_tokens),
            total: c.total.wrapping_sub(r.total_tokens),
            requests_2xx: c.requests[StatusClass::C2xx as usize].wrapping_sub(ok),
        });
        let n = self.n_extra;
        for j in 0..n {
            self.spend.run_extras[idx * n + j] =
                self.extras[idx * n + j].wrapping_sub(r.extra_tokens[j]);
        }
    }

    /// The cost of series `idx`'s open run (0 when none): its entry's rates times the counts
    /// since it began, without `except`'s (a record counted but not of the run). Counters
    /// only grow (wrapping, like the counters themselves), so the differences are the sums.
    fn run_cost(&self, idx: usize, table: &PriceTable, except: Option<&Record<'_>>) -> u128 {
        let Some(Some(run)) = self.spend.runs.get(idx) else {
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
                .wrapping_sub(self.spend.run_extras[idx * n + j])
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
        self.spend.cost[idx] = self.spend.cost[idx].saturating_add(units);
        if let Some(run) = self.spend.runs.get_mut(idx) {
            *run = None;
        }
    }

    /// Charges and closes every open run: before the counters change other than by
    /// [`Store::add_at`] (a merge, a restore) and before the price table does.
    pub(super) fn end_runs(&mut self) {
        let Some(table) = self.spend.pricing.take() else {
            return;
        };
        for idx in 0..self.spend.runs.len() {
            self.end_run(idx, &table, None);
        }
        self.spend.pricing = Some(table);
    }

    /// The cost counted for series `idx`, its open run included.
    pub(super) fn series_cost(&self, idx: usize) -> u128 {
        let run = self
            .spend
            .pricing
            .as_ref()
            .map_or(0, |table| self.run_cost(idx, table, None));
        self.spend.cost[idx].saturating_add(run)
    }

    /// Cost computed per record (for [`Store::last_cost`]: backfill's per-step sums) instead
    /// of per run of records.
    pub fn cost_per_record(&mut self) {
        self.end_runs();
        self.spend.defer_cost = false;
    }

    fn remember_selection(&mut self, idx: usize, sel: Selection) {
        if self.spend.selections.len() <= idx {
            self.spend.selections.resize(idx + 1, None);
            self.spend.always.resize(idx + 1, 0);
        }
        self.spend.selections[idx] = Some(sel);
        self.spend.always[idx] = match sel {
            (None, i64::MIN, i64::MAX) => ALWAYS_UNPRICED,
            (Some(EntryId(e)), i64::MIN, i64::MAX) if e < ALWAYS_UNPRICED - 1 => e + 1,
            _ => 0,
        };
    }

    /// Counts an unpriced request and its `tokens` (its unpriced-tokens series starts with it).
    fn count_unpriced(&mut self, ids: [u32; 3], tokens: u64) {
        let pair = self.count_pair(ids, |p| (&mut p.unpriced, &mut p.unpriced_start_ns));
        let p = &mut self.spend.pairs[pair];
        p.unpriced_tokens = p.unpriced_tokens.wrapping_add(tokens);
    }

    pub(super) fn count_unmetered(&mut self, ids: [u32; 3]) {
        self.count_pair(ids, |p| (&mut p.unmetered, &mut p.unmetered_start_ns));
    }

    /// Adds 1 to one counter of a (model, service_id, team); its series starts when it first
    /// counts. Returns the pair's index.
    fn count_pair(&mut self, ids: [u32; 3], which: fn(&mut Pair) -> (&mut u64, &mut i64)) -> usize {
        let clock = self.clock_ns;
        let pair = self.pair_slot(ids);
        let (n, start_ns) = which(&mut self.spend.pairs[pair]);
        if *n == 0 {
            *start_ns = clock;
        }
        *n += 1;
        pair
    }

    pub(super) fn pair_slot(&mut self, ids: [u32; 3]) -> usize {
        if let Some(&i) = self.spend.pair_index.get(&ids) {
            return i as usize;
        }
        self.spend.pairs.push(Pair {
            ids,
            ..Pair::default()
        });
        let i = self.spend.pairs.len() - 1;
        self.spend.pair_index.insert(ids, i as u32);
        i
    }
}
