//! Streaming backfill (SPEC §6, issue 13): counted records bucketed by `--step` as they are
//! read; a step's samples are taken once no more records can fall into it, and samples are
//! grouped in block windows (`--block`, 2 h) that are handed out as soon as they are complete.
//!
//! Owns: the open steps (the reorder window), each series' cumulative values, the samples of
//! the block window being filled, and the `late` / `untimed` / `outside` counts. Must not:
//! format or send anything (the caller writes each [`Window`] with `openmetrics`'
//! formatters), nor read files.
//!
//! Memory is bounded by the series × the steps of one block window (plus the deltas of the
//! steps still open), not by the history: a month of logs is written two hours at a time.
//! With an unbounded block and reorder window (single-file `--openmetrics OUT.om`) everything
//! is held until the end, as before, and the output is the same.
//!
//! Invariants (checked in tests): every step is closed once, in increasing order; a series'
//! cumulative values only grow; a window holds samples of its own time range only (sample
//! time = end of its step), each series' samples in time order; a record is counted in
//! exactly one step, its own unless that step was already closed (then the oldest open step,
//! and `late` goes up).

use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use crate::aggregate::Store;
use crate::config::MAX_EXTRA_TOKENS;
use crate::export::openmetrics::{Cumulative, SeriesSamples};
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
}

/// One block window's samples: each series' in time order; the series in no particular order
/// until [`Window::sort_series`] (done by whoever writes the window, off the counting path). A series whose
/// first sample is in this window has `start_ns` one step before it (the 0 of SPEC §4 "First
/// increments"); a series continuing from an earlier window keeps its start.
pub struct Window {
    pub start_ns: i64,
    pub end_ns: i64,
    pub series: Vec<SeriesSamples>,
}

impl Window {
    /// Puts the series in label order: the order of the output, which must not depend on
    /// how the records were counted.
    pub fn sort_series(&mut self) {
        self.series.sort_unstable_by(|a, b| {
            (&a.model, &a.api_key_id, &a.service_id).cmp(&(&b.model, &b.api_key_id, &b.service_id))
        });
    }
}

/// One series as the stream knows it.
struct Track {
    labels: (Arc<str>, Arc<str>, Arc<str>),
    cum: Cumulative,
    /// Start of its first step (ns): the series' start time.
    start_ns: i64,
    /// Its values at the end of the last window it had samples in.
    last_window: Option<Cumulative>,
    /// Its samples in the block window being filled, in time order.
    points: Vec<(i64, Cumulative)>,
}

pub struct StepStream {
    shape: Shape,
    n_extra: usize,
    /// Open steps: step index → deltas per series (store index).
    open: BTreeMap<i64, FxHashMap<u32, Delta>>,
    /// The newest event time counted.
    newest_ns: i64,
    /// The last step closed.
    closed: Option<i64>,
    /// Per series, by store index.
    tracks: Vec<Option<Track>>,
    /// Series that have started, in store-index order (dense mode walks them).
    started: Vec<u32>,
    /// The block window being filled, and the series with samples in it (their `points`).
    window: Option<i64>,
    in_window: Vec<u32>,
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
            newest_ns: i64::MIN,
            closed: None,
            tracks: Vec::new(),
            started: Vec::new(),
            window: None,
            in_window: Vec::new(),
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
            self.tracks[series] = Some(Track {
                labels: (m.into(), k.into(), s.into()),
                cum: Cumulative {
                    extra: vec![0; self.n_extra],
                    ..Default::default()
                },
                start_ns: i64::MIN,
                last_window: None,
                points: Vec::new(),
            });
        }
        let d = self.open.entry(step).or_default().entry(idx).or_default();
        d.requests[r.status_class as usize] += 1;
        d.input += r.input_tokens;
        d.output += r.output_tokens;
        d.total += r.total_tokens;
        for (a, b) in d.extra.iter_mut().zip(&r.extra_tokens) {
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

    /// Closes step `s` (the oldest open one): in dense mode, the empty steps before it first.
    fn close(&mut self, s: i64) {
        if self.shape.dense {
            if let Some(c) = self.closed {
                for empty in c.saturating_add(1)..s {
                    self.sample_started(empty);
                }
            }
        }
        let deltas = self.open.remove(&s).unwrap_or_default();
        let t = self.sample_time(s);
        for (idx, d) in deltas {
            let Some(track) = self.tracks.get_mut(idx as usize).and_then(Option::as_mut) else {
                continue;
            };
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
            }
            if !self.shape.dense {
                Self::sample(track, idx, t, &mut self.in_window);
            }
        }
        if self.shape.dense {
            self.sample_started(s);
        }
        self.closed = Some(s);
    }

    /// The time of step `s`'s samples (its end), after handing out the window being filled if
    /// that time is past it.
    fn sample_time(&mut self, s: i64) -> i64 {
        let t = s.saturating_add(1).saturating_mul(self.shape.step_ns);
        let w = t.div_euclid(self.shape.block_ns);
        if self.window.is_some_and(|cw| cw != w) {
            self.finish_window();
        }
        self.window = Some(w);
        t
    }

    /// Samples every started series at the end of step `s`.
    fn sample_started(&mut self, s: i64) {
        let t = self.sample_time(s);
        for &idx in &self.started {
            if let Some(track) = self.tracks.get_mut(idx as usize).and_then(Option::as_mut) {
                Self::sample(track, idx, t, &mut self.in_window);
            }
        }
    }

    /// Samples one series at time `t`, in the window being filled.
    fn sample(track: &mut Track, idx: u32, t: i64, in_window: &mut Vec<u32>) {
        if track.points.is_empty() {
            in_window.push(idx);
        }
        track.points.push((t, track.cum.clone()));
    }

    /// Hands out the window being filled (its series in no particular order).
    fn finish_window(&mut self) {
        let Some(w) = self.window.take() else {
            return;
        };
        let tracks = &mut self.tracks;
        let series: Vec<SeriesSamples> = self
            .in_window
            .drain(..)
            .filter_map(|idx| {
                let track = tracks.get_mut(idx as usize)?.as_mut()?;
                let points = std::mem::take(&mut track.points);
                let last = points.last().map(|p| p.1.clone());
                let before = std::mem::replace(&mut track.last_window, last);
                Some(SeriesSamples {
                    model: track.labels.0.clone(),
                    api_key_id: track.labels.1.clone(),
                    service_id: track.labels.2.clone(),
                    start_ns: track.start_ns,
                    points,
                    before,
                })
            })
            .collect();
        let block = self.shape.block_ns;
        self.ready.push(Window {
            start_ns: w.saturating_mul(block),
            end_ns: w.saturating_add(1).saturating_mul(block),
            series,
        });
    }
}

impl LineSink for StepStream {
    fn accept(&mut self, _record: &Record<'_>, event_ns: Option<i64>) -> bool {
        let Some(t) = event_ns else {
            return self.shape.from_ns.is_none() && self.shape.to_ns.is_none();
        };
        let inside =
            self.shape.from_ns.is_none_or(|f| t >= f) && self.shape.to_ns.is_none_or(|e| t < e);
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
