//! Streaming backfill (docs/backfill.md, issue 13): counted records bucketed by `--step` as they are
//! read; a step's samples are taken once no more records can fall into it, and samples are
//! grouped in block windows (`--block`, 2 h) that are handed out as soon as they are complete.
//!
//! Owns: the open steps (the reorder window), each series' cumulative values, the samples of
//! the block window being filled, and the `late` / `untimed` / `outside` counts. Must not:
//! format or send anything (`backfill::emitter` writes each [`Window`] with the
//! `backfill::openmetrics` and `backfill::push` formatters), nor read files.
//!
//! Memory is bounded by the series × the steps of one block window (plus the deltas of the
//! steps still open), not by the history: a month of logs is written two hours at a time.
//! With an unbounded block and reorder window (single-file `--openmetrics OUT.om`) everything
//! is held until the end, as before, and the output is the same. One exception to the
//! window bound: with `--dense`, a record days after the previous one closes every step of
//! the gap at once, and all the windows of the gap are handed out together.
//!
//! Hot path (a month of 2 million records is 10 million samples): a window's samples go into
//! one block as steps close, a series' entry in the window is made while its track is at
//! hand, and the window is sorted by order keys, so handing a window out touches no series.
//!
//! Invariants (checked in tests): every step is closed once, in increasing order; a series'
//! cumulative values only grow; a window holds samples of its own time range only (sample
//! time = end of its step), each series' samples in time order; a record is counted in
//! exactly one step, its own unless that step was already closed (then the oldest open step,
//! and `late` goes up).

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::samples::{Cumulative, SeriesLabels, SeriesPoints, SeriesSamples};
use crate::aggregate::Store;
use crate::config::MAX_EXTRA_TOKENS;
use crate::parse::Record;
use crate::pipeline::LineSink;

/// Per-step additions of one series.
#[derive(Clone, Debug, Default)]
struct Delta {
    requests: [u64; 5],
    input: u64,
    output: u64,
    total: u64,
    extra: [u64; MAX_EXTRA_TOKENS],
    /// Units of 10^-12 currency.
    cost: u128,
}

/// How far beyond the first or last key a new first or last series is placed.
const END_GAP: u64 = 1 << 32;
/// Keys rewritten by respreads, per series, before the order keys are given up.
const RESPREAD_BUDGET: u64 = 64;

/// Emptied step maps kept for reuse, and the most entries one may have room for.
const SPARE_MAPS: usize = 2;
const SPARE_MAP_ENTRIES: usize = 8192;

/// How the stream is cut.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub step_ns: i64,
    /// Block window length; `i64::MAX`: one window for everything.
    pub block_ns: i64,
    /// How far behind the newest event time a record may be and still land in its own step;
    /// `i64::MAX`: every step stays open to the end.
    pub max_delay_ns: i64,
    /// Every series gets a sample at every step from its first to the end of the replay.
    pub dense: bool,
    pub from_ns: Option<i64>,
    pub to_ns: Option<i64>,
    /// The earliest event time counted (`i64::MIN`: any). TSDB blocks hold no time before
    /// 1970-01-01 (Prometheus' times are milliseconds from it, never negative), and a series'
    /// 0 lies at the start of its first value's step: `--tsdb` counts records from
    /// 1970-01-01T00:00:00Z on (their step starts there or later), the others as outside the
    /// range.
    pub earliest_ns: i64,
}

/// One block window's samples: each series' in time order. A series whose first sample is in
/// this window has `start_ns` one step before it (the 0 of docs/metrics.md "Series start times and first increments"); a
/// series continuing from an earlier window keeps its start. The series are put in label
/// order by [`Window::into_sorted`], on the writer's side (off the counting path).
pub struct Window {
    pub start_ns: i64,
    pub end_ns: i64,
    /// With their order keys (`StepStream::order_keys`), in no particular order; their
    /// `points` are still in `points`.
    series: Vec<(u64, SeriesSamples)>,
    /// Every sample of the window in time order: (index in `series`, time, values). One
    /// block for the window instead of one per series: the counting thread appends to it
    /// without an allocation or a cache miss per series.
    points: Vec<(u32, i64, Cumulative)>,
    /// Whether the keys are valid; if not, the series are sorted by comparing labels.
    keyed: bool,
}

impl Window {
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// The series in label order (the output's), each with its points.
    pub fn into_sorted(self) -> Vec<SeriesSamples> {
        let Window {
            mut series,
            points,
            keyed,
            ..
        } = self;
        // The order as (key, index) pairs: sorting 16-byte pairs moves far less than sorting
        // the series themselves (a series is ten times that).
        let mut order: Vec<(u64, u32)> = series
            .iter()
            .enumerate()
            .map(|(i, (key, _))| (*key, i as u32))
            .collect();
        if keyed {
            order.sort_unstable();
        } else {
            order.sort_unstable_by(|a, b| {
                series[a.1 as usize]
                    .1
                    .labels
                    .cmp(&series[b.1 as usize].1.labels)
            });
        }
        // Each series' place in the output, and its number of points there.
        let mut rank = vec![0u32; series.len()];
        for (r, &(_, i)) in order.iter().enumerate() {
            rank[i as usize] = r as u32;
        }
        let mut counts = vec![0usize; series.len()];
        for (slot, _, _) in &points {
            if let Some(&r) = rank.get(*slot as usize) {
                counts[r as usize] += 1;
            }
        }
        let mut out = Vec::with_capacity(series.len());
        for (&(_, i), n) in order.iter().zip(counts) {
            let s = &mut series[i as usize].1;
            out.push(SeriesSamples {
                labels: Arc::clone(&s.labels),
                start_ns: s.start_ns,
                points: SeriesPoints::with_capacity(n),
                before: s.before.take(),
            });
        }
        for (slot, t, c) in points {
            if let Some(&r) = rank.get(slot as usize) {
                out[r as usize].points.push((t, c));
            }
        }
        out
    }
}

/// One series as the stream knows it.
struct Track {
    labels: Arc<SeriesLabels>,
    cum: Cumulative,
    /// Start of its first step (ns): the series' start time; `i64::MIN` until its first
    /// step closes.
    start_ns: i64,
    /// The block window it last had samples in, and its entry in `filling` while that
    /// window is the one being filled.
    window: Option<(i64, u32)>,
}

pub struct StepStream {
    shape: Shape,
    n_extra: usize,
    /// Open steps: step index → deltas per series (store index).
    open: BTreeMap<i64, FxHashMap<u32, Delta>>,
    /// Maps of closed steps, emptied, for the next steps to open (no allocation and no
    /// growing per step).
    spare: Vec<FxHashMap<u32, Delta>>,
    /// The newest event time counted.
    newest_ns: i64,
    /// The last step closed.
    closed: Option<i64>,
    /// Per series, by store index.
    tracks: Vec<Option<Track>>,
    /// Series that have started, in store-index order (dense mode walks them).
    started: Vec<u32>,
    /// The block window being filled, and the series with samples in it, in the order of
    /// their first sample there, with their order keys. A series' entry is made while its
    /// step is closed (its track at hand), so handing out a window touches no track.
    window: Option<i64>,
    filling: Vec<(u64, SeriesSamples)>,
    /// The samples of the window being filled (see [`Window`]'s `points`).
    filling_points: Vec<(u32, i64, Cumulative)>,
    /// Every series by its labels: the output's order.
    by_labels: BTreeMap<Arc<SeriesLabels>, u32>,
    /// Per series (by store index), a key that sorts like its labels: a window's series are
    /// sorted by it instead of by comparing labels. A new first or last series is placed
    /// `END_GAP` beyond its neighbour, others halfway between their neighbours; when there
    /// is no room left all keys are spread out again. Should new series keep landing where
    /// there is no room, spreading would cost more than comparing labels: after
    /// `RESPREAD_BUDGET` × the series in respreads, the keys are dropped (`keyed` false) and
    /// windows are sorted by labels.
    order_keys: Vec<u64>,
    keyed: bool,
    /// Keys rewritten by respreads so far.
    respread_work: u64,
    ready: Vec<Window>,
    /// Records older than a step already closed (counted in the oldest open step).
    pub late: u64,
    /// Records without any event time (cannot be placed; should not happen in replay).
    pub untimed: u64,
    /// Records left out by --from/--to.
    pub outside: u64,
}

impl StepStream {
    pub fn new(shape: Shape, n_extra: usize) -> Self {
        StepStream {
            shape: Shape {
                step_ns: shape.step_ns.max(1_000_000_000),
                block_ns: shape.block_ns.max(1),
                max_delay_ns: shape.max_delay_ns.max(0),
                ..shape
            },
            n_extra,
            open: BTreeMap::new(),
            spare: Vec::new(),
            newest_ns: i64::MIN,
            closed: None,
            tracks: Vec::new(),
            started: Vec::new(),
            window: None,
            filling: Vec::new(),
            filling_points: Vec::new(),
            by_labels: BTreeMap::new(),
            order_keys: Vec::new(),
            keyed: true,
            respread_work: 0,
            ready: Vec::new(),
            late: 0,
            untimed: 0,
            outside: 0,
        }
    }

    /// Series that have had a sample.
    pub fn series_started(&self) -> usize {
        self.started.len()
    }

    /// Block windows completed since the last call, oldest first.
    pub fn take_ready(&mut self) -> Vec<Window> {
        std::mem::take(&mut self.ready)
    }

    /// At the end of the input: closes every step and the last window.
    pub fn finish(&mut self) {
        while let Some((&s, _)) = self.open.first_key_value() {
            self.close(s);
        }
        self.finish_window();
    }

    fn count(&mut self, store: &Store, series: usize, r: &Record<'_>, t: i64, cost: u128) {
        let step_ns = self.shape.step_ns;
        let mut step = t.div_euclid(step_ns);
        if let Some(closed) = self.closed.filter(|&c| step <= c) {
            // Its step is written: the oldest open one takes it (totals stay exact).
            self.late += 1;
            step = self.open.first_key_value().map_or(closed + 1, |(&s, _)| s);
        }
        let idx = series as u32;
        if self.tracks.len() <= series {
            self.tracks.resize_with(series + 1, || None);
        }
        if self.tracks[series].is_none() {
            let (m, k, s) = store.series_labels(series).unwrap_or(("", "", ""));
            let team = store.series_team(series).filter(|t| !t.is_empty());
            let labels = Arc::new(SeriesLabels {
                model: m.to_string(),
                api_key_id: k.to_string(),
                service_id: s.to_string(),
                team: store
                    .team_label()
                    .zip(team)
                    .map(|(name, t)| (name.to_string(), t.to_string())),
            });
            self.add_order_key(&labels, idx);
            self.tracks[series] = Some(Track {
                labels,
                cum: Cumulative {
                    extra: smallvec::smallvec![0; self.n_extra],
                    ..Default::default()
                },
                start_ns: i64::MIN,
                window: None,
            });
        }
        let spare = &mut self.spare;
        let d = self
            .open
            .entry(step)
            .or_insert_with(|| spare.pop().unwrap_or_default())
            .entry(idx)
            .or_default();
        d.requests[r.status_class as usize] += 1;
        d.input += r.input_tokens;
        d.output += r.output_tokens;
        d.total += r.total_tokens;
        for (a, b) in d.extra.iter_mut().zip(&r.extra_tokens).take(self.n_extra) {
            *a += b;
        }
        d.cost = d.cost.saturating_add(cost);
        self.newest_ns = self.newest_ns.max(t);
        // Close what no record can fall into any more: steps that ended more than
        // `max_delay` before the newest event.
        while let Some((&s, _)) = self.open.first_key_value() {
            let end = s.saturating_add(1).saturating_mul(step_ns);
            if end.saturating_add(self.shape.max_delay_ns) > self.newest_ns {
                break;
            }
            self.close(s);
        }
    }

    /// Gives a new series its order key (see `order_keys`).
    fn add_order_key(&mut self, labels: &Arc<SeriesLabels>, idx: u32) {
        use std::ops::Bound::{Excluded, Unbounded};
        if !self.keyed {
            return;
        }
        let key_of = |i: &u32| self.order_keys.get(*i as usize).copied();
        let below = self
            .by_labels
            .range::<SeriesLabels, _>((Unbounded, Excluded(&**labels)))
            .next_back()
            .and_then(|(_, i)| key_of(i));
        let above = self
            .by_labels
            .range::<SeriesLabels, _>((Excluded(&**labels), Unbounded))
            .next()
            .and_then(|(_, i)| key_of(i));
        self.by_labels.insert(labels.clone(), idx);
        if self.order_keys.len() <= idx as usize {
            self.order_keys.resize(idx as usize + 1, u64::MAX);
        }
        let key = match (below, above) {
            (None, None) => Some(u64::MAX / 2),
            // Past the ends: a fixed step, so series arriving in label order (new keys
            // numbered upwards) never run out of room.
            (Some(b), None) => b.checked_add(END_GAP).filter(|&k| k < u64::MAX),
            (None, Some(a)) => a.checked_sub(END_GAP).filter(|&k| k > 0),
            (Some(b), Some(a)) => (a.saturating_sub(b) >= 2).then(|| b + (a - b) / 2),
        };
        if let Some(key) = key {
            self.order_keys[idx as usize] = key;
            return;
        }
        let n = self.by_labels.len() as u64;
        self.respread_work = self.respread_work.saturating_add(n);
        if self.respread_work > RESPREAD_BUDGET.saturating_mul(n).saturating_add(1 << 16) {
            // Comparing labels per window is cheaper from here on.
            self.keyed = false;
            self.by_labels.clear();
            self.order_keys = Vec::new();
            return;
        }
        // No room between the neighbours: spread every key out evenly again.
        let gap = u64::MAX / (n + 1);
        for (rank, &i) in self.by_labels.values().enumerate() {
            if let Some(k) = self.order_keys.get_mut(i as usize) {
                *k = (rank as u64 + 1).saturating_mul(gap);
            }
        }
    }

    /// Closes step `s` (the oldest open one): in dense mode, the empty steps before it first.
    fn close(&mut self, s: i64) {
        if self.shape.dense {
            if let Some(c) = self.closed {
                for empty in c.saturating_add(1)..s {
                    self.sample_started(empty);
                }
            }
        }
        let mut deltas = self.open.remove(&s).unwrap_or_default();
        let (t, w) = self.sample_time(s);
        for (&idx, d) in &deltas {
            let Some(track) = self.tracks.get_mut(idx as usize).and_then(Option::as_mut) else {
                continue;
            };
            // Its entry in this window, with its values before this step.
            let slot = Self::enter(track, idx, w, &self.order_keys, &mut self.filling);
            let c = &mut track.cum;
            for (a, b) in c.requests.iter_mut().zip(d.requests) {
                *a += b;
            }
            c.input += d.input;
            c.output += d.output;
            c.total += d.total;
            for (a, b) in c.extra.iter_mut().zip(&d.extra) {
                *a += b;
            }
            c.cost = c.cost.saturating_add(d.cost);
            if track.start_ns == i64::MIN {
                track.start_ns = s.saturating_mul(self.shape.step_ns);
                self.started.push(idx);
                self.filling[slot].1.start_ns = track.start_ns;
            }
            if !self.shape.dense {
                self.filling_points
                    .push((slot as u32, t, track.cum.clone()));
            }
        }
        // Kept only a few, and only small ones: memory stays that of the open steps.
        if self.spare.len() < SPARE_MAPS && deltas.capacity() <= SPARE_MAP_ENTRIES {
            deltas.clear();
            self.spare.push(deltas);
        }
        if self.shape.dense {
            self.sample_started(s);
        }
        self.closed = Some(s);
    }

    /// The time of step `s`'s samples (its end) and its block window, after handing out the
    /// window being filled if that time is past it.
    fn sample_time(&mut self, s: i64) -> (i64, i64) {
        let t = s.saturating_add(1).saturating_mul(self.shape.step_ns);
        let w = t.div_euclid(self.shape.block_ns);
        if self.window.is_some_and(|cw| cw != w) {
            self.finish_window();
        }
        self.window = Some(w);
        (t, w)
    }

    /// A series' entry in window `w` (made on its first sample there): its index in
    /// `filling`. A series that had samples before continues with its values as they are
    /// now: they change only when a step closes, and each change is a sample.
    fn enter(
        track: &mut Track,
        idx: u32,
        w: i64,
        order_keys: &[u64],
        filling: &mut Vec<(u64, SeriesSamples)>,
    ) -> usize {
        if let Some((tw, slot)) = track.window {
            if tw == w {
                return slot as usize;
            }
        }
        let slot = filling.len();
        let key = order_keys.get(idx as usize).copied().unwrap_or(u64::MAX);
        filling.push((
            key,
            SeriesSamples {
                labels: track.labels.clone(),
                start_ns: track.start_ns,
                points: SeriesPoints::new(),
                before: (track.start_ns != i64::MIN).then(|| track.cum.clone()),
            },
        ));
        track.window = Some((w, slot as u32));
        slot
    }

    /// Samples every started series at the end of step `s`.
    fn sample_started(&mut self, s: i64) {
        let (t, w) = self.sample_time(s);
        for &idx in &self.started {
            if let Some(track) = self.tracks.get_mut(idx as usize).and_then(Option::as_mut) {
                let slot = Self::enter(track, idx, w, &self.order_keys, &mut self.filling);
                self.filling_points
                    .push((slot as u32, t, track.cum.clone()));
            }
        }
    }

    /// Hands out the window being filled.
    fn finish_window(&mut self) {
        let Some(w) = self.window.take() else {
            return;
        };
        // The next window starts with room for as many series and a quarter more (no growing
        // entry by entry, nor by doubling, each a copy of the whole, for a window a little
        // larger).
        let more = |n: usize| n.saturating_add(n / 4);
        let room = (more(self.filling.len()), more(self.filling_points.len()));
        let series = std::mem::replace(&mut self.filling, Vec::with_capacity(room.0));
        let points = std::mem::replace(&mut self.filling_points, Vec::with_capacity(room.1));
        let block = self.shape.block_ns;
        self.ready.push(Window {
            start_ns: w.saturating_mul(block),
            end_ns: w.saturating_add(1).saturating_mul(block),
            series,
            points,
            keyed: self.keyed,
        });
    }
}

impl LineSink for StepStream {
    fn accept(&mut self, _record: &Record<'_>, event_ns: Option<i64>) -> bool {
        let Some(t) = event_ns else {
            return self.shape.from_ns.is_none() && self.shape.to_ns.is_none();
        };
        let inside = t >= self.shape.earliest_ns
            && self.shape.from_ns.is_none_or(|f| t >= f)
            && self.shape.to_ns.is_none_or(|e| t < e);
        if !inside {
            self.outside += 1;
        }
        inside
    }

    fn counted(&mut self, store: &Store, series: usize, r: &Record<'_>, event_ns: Option<i64>) {
        let Some(t) = event_ns else {
            self.untimed += 1;
            return;
        };
        self.count(store, series, r, t, store.last_cost());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(model: &str, key: &str) -> Arc<SeriesLabels> {
        Arc::new(SeriesLabels {
            model: model.to_string(),
            api_key_id: key.to_string(),
            service_id: "s".to_string(),
            team: None,
        })
    }

    fn shape() -> Shape {
        Shape {
            step_ns: 60_000_000_000,
            block_ns: i64::MAX,
            max_delay_ns: 0,
            dense: false,
            from_ns: None,
            to_ns: None,
            earliest_ns: i64::MIN,
        }
    }

    /// The window's series order is read from the keys: it must be the labels' order after
    /// any sequence of new series, including the ones that leave no room between two keys.
    fn assert_keys_sort_like_labels(stream: &StepStream) {
        assert!(stream.keyed);
        let mut by_key: Vec<(u64, &SeriesLabels)> = stream
            .by_labels
            .iter()
            .map(|(l, &i)| (stream.order_keys[i as usize], &**l))
            .collect();
        by_key.sort();
        let by_label: Vec<&SeriesLabels> = stream.by_labels.keys().map(|l| &**l).collect();
        let keyed: Vec<&SeriesLabels> = by_key.iter().map(|(_, l)| *l).collect();
        assert_eq!(keyed, by_label);
        let mut keys: Vec<u64> = by_key.iter().map(|(k, _)| *k).collect();
        keys.dedup();
        assert_eq!(
            keys.len(),
            stream.by_labels.len(),
            "order keys are distinct"
        );
    }

    #[test]
    fn order_keys_sort_like_labels_when_every_new_series_lands_in_the_same_gap() {
        // Each new series goes between the first and the previous one: the gap halves every
        // time, so the keys run out of room after about 64 series and are spread out again.
        let mut stream = StepStream::new(shape(), 0);
        stream.add_order_key(&labels("m", "a"), 0);
        stream.add_order_key(&labels("m", "b"), 1);
        for i in 2..300u32 {
            // "a" < "a~~…" (more tildes each time) < every earlier one < "b".
            let key = format!("a{}", "~".repeat(300 - i as usize));
            stream.add_order_key(&labels("m", &key), i);
            assert_keys_sort_like_labels(&stream);
        }
    }

    #[test]
    fn series_arriving_in_label_order_never_need_a_respread() {
        for descending in [false, true] {
            let mut stream = StepStream::new(shape(), 0);
            for i in 0..20_000u32 {
                let n = if descending { 20_000 - i } else { i };
                stream.add_order_key(&labels("m", &format!("key-{n:07}")), i);
            }
            assert_eq!(stream.respread_work, 0, "descending: {descending}");
            assert_keys_sort_like_labels(&stream);
        }
    }

    #[test]
    fn series_that_keep_landing_in_one_gap_give_up_the_keys_within_the_budget() {
        // Every new series between "a" and the previous new one: no room every ~60 series,
        // each respread rewriting every key. The work stays within the budget, then windows
        // are sorted by labels.
        let mut stream = StepStream::new(shape(), 0);
        stream.add_order_key(&labels("m", "a"), 0);
        stream.add_order_key(&labels("m", "b"), 1);
        let n = 20_000u32;
        for i in 2..n {
            stream.add_order_key(&labels("m", &format!("a{:07}", n - i)), i);
        }
        assert!(!stream.keyed);
        let budget = RESPREAD_BUDGET * u64::from(n) + (1 << 16) + u64::from(n);
        assert!(stream.respread_work <= budget, "{}", stream.respread_work);
    }

    #[test]
    fn a_window_without_keys_is_sorted_by_labels() {
        let names = ["k3", "k1", "k2", "k0"];
        let series = names
            .iter()
            .map(|k| {
                let s = SeriesSamples {
                    labels: labels("m", k),
                    start_ns: 0,
                    points: SeriesPoints::new(),
                    before: None,
                };
                (0, s)
            })
            .collect();
        let w = Window {
            start_ns: 0,
            end_ns: 1,
            series,
            points: Vec::new(),
            keyed: false,
        };
        let sorted: Vec<String> = w
            .into_sorted()
            .iter()
            .map(|s| s.labels.api_key_id.clone())
            .collect();
        assert_eq!(sorted, ["k0", "k1", "k2", "k3"]);
    }

    proptest::proptest! {
        #[test]
        fn order_keys_sort_like_labels_for_any_arrival_order(
            names in proptest::collection::vec((0u8..4, 0u16..400), 1..400)
        ) {
            let mut stream = StepStream::new(shape(), 0);
            let mut seen = std::collections::BTreeSet::new();
            for (m, k) in names {
                if seen.insert((m, k)) {
                    let idx = seen.len() as u32 - 1;
                    stream.add_order_key(&labels(&format!("model-{m}"), &format!("key-{k}")), idx);
                }
            }
            assert_keys_sort_like_labels(&stream);
        }
    }
}
