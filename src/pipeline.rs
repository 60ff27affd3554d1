//! The per-line chain shared by `replay` and `run`: physical line → `decode` → `parse` →
//! `aggregate`, with bad input counted by reason and logged at a rate-limited level.
//!
//! Owns: the order of the stages and the per-file event-time fallback. Must not read files
//! (sources hand it lines) nor export anything (exports read the store's snapshots).

use std::path::Path;
use std::time::Duration;

use crate::aggregate::{invalid_field_names, SkipReason, Store};
use crate::config::Config;
use crate::decode::{Decoded, Decoder, LogicalLine};
use crate::parse::{Parsed, Parser, Record};
use crate::ratelog::RateLimited;
use crate::source::Line;

/// Per-file reading context: the decoder's partials and the event-time fallback.
pub struct FileCursor {
    pub decoder: Decoder,
    /// Physical lines read so far (1-based number of the last one), for messages.
    pub line_no: u64,
    /// Event time of the previous record (docs/guarantees.md "Event time" fallback), initially the file's mtime.
    fallback: Fallback,
}

impl FileCursor {
    pub fn new(config: &Config, fallback_time_ns: Option<i64>) -> Self {
        Self {
            decoder: Decoder::new(config.source.max_line_bytes),
            line_no: 0,
            fallback: Fallback::new(fallback_time_ns),
        }
    }
}

/// When a meter works out event times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventTimes {
    /// Never (`run`): a record without one is priced at the time of reading.
    Off,
    /// Only when a record's price depends on it (`replay` with a `from` in the price table):
    /// the other records' time fields are kept unparsed until a record needs them.
    OnDemand,
    /// For every line (backfill, Loki, `--from`/`--to`).
    Every,
}

/// Records kept unparsed before the newest of them is worked out anyway (bounds the memory
/// of [`Fallback`]: one parse per this many records at most).
const MAX_UNPARSED: usize = 64;

/// Longest `start_time` kept unparsed (RFC 3339 with nanoseconds and an offset is 35 bytes);
/// a longer one is parsed at once.
const MAX_UNPARSED_BYTES: usize = 40;

/// A record's time fields, unparsed.
#[derive(Clone, Copy)]
struct Unparsed {
    start_time: [u8; MAX_UNPARSED_BYTES],
    len: u8,
    escaped: bool,
    duration_ms: Option<f64>,
}

/// The fallback of docs/guarantees.md "Event time" for one file: the event time of its latest record that had one. Kept
/// as the unparsed time fields of the records since the last worked-out time, so that a
/// replay whose prices depend on time parses timestamps only for the records whose price
/// needs them (parsing is a tenth of a line's cost).
///
/// Invariant: the fallback is the event time of the newest entry of `unparsed` that has one,
/// else `known`.
struct Fallback {
    known: Option<i64>,
    /// Oldest first.
    unparsed: Vec<Unparsed>,
}

impl Fallback {
    fn new(known: Option<i64>) -> Self {
        Self {
            known,
            unparsed: Vec::new(),
        }
    }

    /// The fallback, working out the kept records' times (newest first) if need be.
    fn get(&mut self) -> Option<i64> {
        if !self.unparsed.is_empty() {
            let newest_with_time = self.unparsed.iter().rev().find_map(|u| {
                let raw = u.start_time.get(..usize::from(u.len))?;
                let start_time = crate::json::JsonStr {
                    raw: std::str::from_utf8(raw).ok()?,
                    escaped: u.escaped,
                };
                crate::parse::start_plus_duration(&start_time, u.duration_ms)
            });
            self.known = newest_with_time.or(self.known);
            self.unparsed.clear();
        }
        self.known
    }

    /// A record's own event time was worked out: `None` (it has none) leaves the fallback.
    fn record_time(&mut self, own: Option<i64>) {
        if own.is_some() {
            self.known = own;
            self.unparsed.clear();
        }
    }

    /// A record whose event time was not worked out: its time fields are kept.
    fn defer(&mut self, envelope_ns: Option<i64>, r: &Record<'_>) {
        if envelope_ns.is_some() {
            return self.record_time(envelope_ns);
        }
        if r.start_ns.is_some() || r.written_ns.is_some() {
            // Worked out while reading (epoch milliseconds, a time inside a string, the time
            // a logfmt line starts with).
            return self.record_time(r.event_time_ns(None));
        }
        let Some(start_time) = &r.start_time else {
            // No time of its own: the fallback stays.
            return;
        };
        let bytes = start_time.raw.as_bytes();
        if bytes.len() > MAX_UNPARSED_BYTES {
            return self.record_time(crate::parse::start_plus_duration(start_time, r.duration_ms));
        }
        if self.unparsed.len() >= MAX_UNPARSED {
            self.get();
        }
        let mut kept = Unparsed {
            start_time: [0; MAX_UNPARSED_BYTES],
            len: bytes.len() as u8,
            escaped: start_time.escaped,
            duration_ms: r.duration_ms,
        };
        kept.start_time[..bytes.len()].copy_from_slice(bytes);
        self.unparsed.push(kept);
    }
}

struct LineCtx<'p> {
    path: &'p Path,
    line_no: u64,
}

/// What a replay or exporter does with lines besides counting them. Event times are `None`
/// unless the meter tracks them.
pub trait LineSink {
    /// Every logical line, record or not, in file order.
    fn line(&mut self, _path: &Path, _text: &str, _event_ns: Option<i64>) {}
    /// Whether to count this record (`replay --from/--to`).
    fn accept(&mut self, _record: &Record<'_>, _event_ns: Option<i64>) -> bool {
        true
    }
    /// The record was counted into `store`'s series `series` (its labels and the record's cost,
    /// [`Store::last_cost`], are there).
    fn counted(
        &mut self,
        _store: &Store,
        _series: usize,
        _record: &Record<'_>,
        _event_ns: Option<i64>,
    ) {
    }
}

/// Counts only.
pub struct NoSink;
impl LineSink for NoSink {}

/// The one event-time rule (docs/guarantees.md "Event time"): the envelope's timestamp when there is one, else the
/// record's `start_time` + `duration`, else its `start_time`. `None` leaves the fallback to the
/// caller: `run` takes the time of reading, `replay` the previous record's event time.
#[inline]
pub fn event_time_ns(envelope_ns: Option<i64>, record: Option<&Record<'_>>) -> Option<i64> {
    envelope_ns.or_else(|| record.and_then(|r| r.event_time_ns(None)))
}

/// Parser, store and warnings: everything that turns lines into counts.
pub struct Meter {
    parser: Parser,
    pub store: Store,
    extra_names: Vec<String>,
    invalid_names: Vec<String>,
    warn: RateLimited,
    /// The format of the last record line fed in (taken by [`Meter::decoded`]'s caller).
    last_format: Option<crate::parse::format::Format>,
    /// When to work out event times (backfill and Loki need every one; a summary none, or
    /// only those its prices depend on: parsing timestamps is a tenth of the per-line cost).
    event_times: EventTimes,
}

impl Meter {
    pub fn new(config: &Config, event_times: EventTimes) -> Self {
        let extra_names: Vec<String> = config.fields.extra_names();
        Self {
            parser: Parser::new(&config.fields),
            store: Store::new(config),
            invalid_names: invalid_field_names(&extra_names),
            extra_names,
            warn: RateLimited::new(Duration::from_secs(10)),
            last_format: None,
            event_times,
        }
    }

    /// A meter for one part of a replay counted on its own thread, to be merged with
    /// [`Meter::absorb`]: an [`Store::unlimited`] store, no prices yet.
    pub fn part(config: &Config, event_times: EventTimes) -> Self {
        let mut m = Self::new(config, event_times);
        m.store = Store::unlimited(config);
        m
    }

    /// Adds what `part` counted (input read after everything counted here); `false` when it
    /// cannot be added exactly (see [`Store::absorb`]) and must be counted again here.
    pub fn absorb(&mut self, part: &Meter) -> bool {
        self.store.absorb(&part.store)
    }

    pub fn extra_names(&self) -> &[String] {
        &self.extra_names
    }

    /// Feeds one physical line of `path`.
    pub fn physical(&mut self, path: &Path, cursor: &mut FileCursor, line: Line<'_>) {
        self.physical_with(path, cursor, line, &mut NoSink);
    }

    /// [`Meter::physical`], showing every logical line and record to `sink`.
    pub fn physical_with(
        &mut self,
        path: &Path,
        cursor: &mut FileCursor,
        line: Line<'_>,
        sink: &mut dyn LineSink,
    ) {
        cursor.line_no += 1;
        match line {
            Line::TooLong { .. } => self.skip(path, cursor.line_no, SkipReason::TooLong),
            Line::Complete { bytes, .. } => match cursor.decoder.decode(bytes) {
                Decoded::Line(l) => {
                    let ctx = LineCtx {
                        path,
                        line_no: cursor.line_no,
                    };
                    self.logical(&ctx, l, &mut cursor.fallback, sink);
                }
                Decoded::TooLong => self.skip(path, cursor.line_no, SkipReason::TooLong),
                Decoded::Pending | Decoded::Blank => {}
            },
        }
    }

    /// Feeds one line as a tailed file's cursor hands it out (already decoded). Tailing does
    /// not track event times (counters only). Returns the format a record line was read in.
    pub fn decoded(
        &mut self,
        path: &Path,
        line_no: u64,
        decoded: Decoded<'_>,
    ) -> Option<crate::parse::format::Format> {
        self.last_format = None;
        match decoded {
            Decoded::Line(l) => {
                let ctx = LineCtx { path, line_no };
                debug_assert_eq!(self.event_times, EventTimes::Off);
                self.logical(&ctx, l, &mut Fallback::new(None), &mut NoSink);
            }
            Decoded::TooLong => self.skip(path, line_no, SkipReason::TooLong),
            Decoded::Pending | Decoded::Blank => {}
        }
        self.last_format.take()
    }

    /// At the end of a finished file: a partial line that never got its final part counts
    /// as it is.
    pub fn end_of_file(&mut self, path: &Path, cursor: &mut FileCursor, sink: &mut dyn LineSink) {
        loop {
            let line_no = cursor.line_no;
            let Some(d) = cursor.decoder.flush_pending() else {
                break;
            };
            match d {
                Decoded::Line(l) => {
                    let ctx = LineCtx { path, line_no };
                    self.logical(&ctx, l, &mut cursor.fallback, sink);
                }
                Decoded::TooLong => self.store.skip(SkipReason::TooLong),
                Decoded::Pending | Decoded::Blank => {}
            }
        }
    }

    /// Parses and counts one logical line. Only records move the file's event-time
    /// `fallback`.
    #[inline]
    fn logical(
        &mut self,
        ctx: &LineCtx<'_>,
        line: LogicalLine<'_>,
        fallback: &mut Fallback,
        sink: &mut dyn LineSink,
    ) {
        match self.parser.parse(line.text) {
            Parsed::Record(ref r) => {
                self.last_format = Some(r.format);
                self.request(ctx, &line, r, fallback, sink);
                // A Kong line may report several LLM calls: each counts as a request.
                while let Some(r) = self.parser.next_request(line.text) {
                    self.request(ctx, &line, &r, fallback, sink);
                }
            }
            parsed => {
                let event = match self.event_times {
                    EventTimes::Every => line.time_ns.or_else(|| fallback.get()),
                    EventTimes::Off | EventTimes::OnDemand => None,
                };
                sink.line(ctx.path, line.text, event);
                if parsed == Parsed::NotLlm {
                    self.store.skip(SkipReason::NotLlm);
                } else {
                    self.store.skip(SkipReason::NotJson);
                    if let Some(suppressed) = self.warn.allow("not_json") {
                        tracing::debug!(
                            "{}:{}: not a JSON object, skipped{}",
                            ctx.path.display(),
                            ctx.line_no,
                            suppressed_note(suppressed)
                        );
                    }
                }
            }
        }
    }

    /// Counts one request of a record line (the line's first, or a further call of a Kong
    /// line: shown to `sink.line` once, with the first).
    fn request(
        &mut self,
        ctx: &LineCtx<'_>,
        line: &LogicalLine<'_>,
        r: &Record<'_>,
        fallback: &mut Fallback,
        sink: &mut dyn LineSink,
    ) {
        let event = match self.event_times {
            EventTimes::Every => {
                let own = event_time_ns(line.time_ns, Some(r));
                fallback.record_time(own);
                own.or_else(|| fallback.get())
            }
            EventTimes::Off | EventTimes::OnDemand => None,
        };
        if r.first_of_line {
            sink.line(ctx.path, line.text, event);
        }
        if !sink.accept(r, event) {
            if self.event_times == EventTimes::OnDemand {
                fallback.defer(line.time_ns, r);
            }
            return;
        }
        if r.invalid != 0 {
            if let Some(suppressed) = self.warn.allow("invalid_field") {
                let fields: Vec<&str> = self
                    .invalid_names
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| r.invalid >> i & 1 == 1)
                    .map(|(_, n)| n.as_str())
                    .collect();
                tracing::warn!(
                    "{}:{}: invalid token value in {}; the record counts without it{}",
                    ctx.path.display(),
                    ctx.line_no,
                    fields.join(", "),
                    suppressed_note(suppressed)
                );
            }
        }
        // Priced at its event time, worked out only if the price depends on it; in
        // `run` (no fallback) a record without one is priced at the time of reading.
        let series = match self.event_times {
            EventTimes::Every => self.store.add_at(r, || event),
            EventTimes::Off => self
                .store
                .add_at(r, || event_time_ns(line.time_ns, Some(r))),
            EventTimes::OnDemand => {
                let mut asked = false;
                let series = self.store.add_at(r, || {
                    asked = true;
                    let own = event_time_ns(line.time_ns, Some(r));
                    fallback.record_time(own);
                    own.or_else(|| fallback.get())
                });
                if !asked {
                    fallback.defer(line.time_ns, r);
                }
                series
            }
        };
        sink.counted(&self.store, series, r, event);
    }

    fn skip(&mut self, path: &Path, line_no: u64, reason: SkipReason) {
        self.store.skip(reason);
        if reason == SkipReason::TooLong {
            if let Some(suppressed) = self.warn.allow("too_long") {
                tracing::warn!(
                    "{}:{line_no}: line longer than source.max_line_bytes, skipped{}",
                    path.display(),
                    suppressed_note(suppressed)
                );
            }
        }
    }
}

fn suppressed_note(suppressed: u64) -> String {
    if suppressed == 0 {
        String::new()
    } else {
        format!(" ({suppressed} similar warnings suppressed)")
    }
}
