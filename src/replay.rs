//! `tokenmeter replay`: read files once from their start through the pipeline and summarise.
//!
//! Owns: the order of files, opening them all before reading any (so a missing file stops the
//! replay before anything is written), the progress bar, and the summary formats of SPEC §2.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::aggregate::{invalid_field_names, SkipReason, Snapshot, OVERFLOW_LABELS};
use crate::config::Config;
use crate::decode::physical_line_limit;
use crate::export::backfill::{Shape, StepStream, Window};
use crate::export::loki::{stream_labels, Batch, EntryShaper, LokiClient, LokiStats, PushResult};
use crate::export::openmetrics::{otlp_requests, write_openmetrics, Emitted};
use crate::export::otlp::OtlpClient;
use crate::parse::format::Format;
use crate::parse::Record;
use crate::pipeline::{EventTimes, FileCursor, LineSink, Meter};
use crate::source::{expand_inputs, open_input, AtEof, Input, InputError, LineReader, PodLabels};

/// Stands for "for ever" where `--retry-for` is too large to add to a clock reading.
const YEAR: Duration = Duration::from_secs(365 * 86_400);

/// What to do besides summarising (SPEC §2 `replay` flags).
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    pub from_ns: Option<i64>,
    pub to_ns: Option<i64>,
    /// `--step`: resolution of backfill samples.
    pub step_ns: i64,
    pub openmetrics: Option<PathBuf>,
    /// `--openmetrics` names a directory: one file per block window (bounded memory).
    pub openmetrics_dir: bool,
    /// `--block`: the window of one OpenMetrics file / one push.
    pub block_ns: i64,
    /// `--max-delay`: how far (event time) a record may come after newer ones and still land
    /// in its own step.
    pub max_delay_ns: i64,
    /// `--dense`: a sample at every step for every series.
    pub dense: bool,
    pub push: bool,
    pub loki: bool,
    /// `--loki-max-age`: lines older than this (event time against the clock) are not sent.
    pub loki_max_age_ns: i64,
    pub instance: String,
    pub progress: bool,
    /// `--jobs`: files counted at once (summaries only; backfill, Loki and `--from`/`--to`
    /// read in order on one thread).
    pub jobs: usize,
    /// `--retry-for`: how long a push to Loki or OTLP is retried before the replay gives up.
    pub retry_for: Duration,
}

impl ReplayOptions {
    fn needs_event_time(&self) -> bool {
        self.from_ns.is_some()
            || self.to_ns.is_some()
            || self.openmetrics.is_some()
            || self.push
            || self.loki
    }
}

/// What a replay read and counted.
pub struct ReplayReport {
    pub snapshot: Snapshot,
    pub files: usize,
    pub bytes_read: u64,
    pub elapsed: Duration,
    /// Backfill samples written or pushed.
    pub emitted: Option<Emitted>,
    /// `--push`: OTLP requests by outcome.
    pub pushed: Option<BTreeMap<&'static str, u64>>,
    /// `--loki`: what Loki accepted and rejected.
    pub loki: Option<LokiReport>,
    /// Records left out by `--from`/`--to`.
    pub outside_range: u64,
    /// Backfill: records older than a step already written (counted in the oldest open step).
    pub late: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct LokiReport {
    pub sent: u64,
    pub rejected: u64,
    /// Entries older than `--loki-max-age` when they would have been sent: not sent (Loki
    /// would reject them).
    pub too_old: u64,
    /// Entries not delivered: Loki could not be reached within `--retry-for`.
    pub undelivered: u64,
    /// Loki's messages for rejected batches (first 10).
    pub messages: Vec<String>,
}

/// Why a replay stopped.
#[derive(Debug)]
pub enum ReplayError {
    /// A file could not be opened; nothing was read.
    Open(InputError),
    /// Reading failed part-way (I/O error, corrupt gzip), or an output could not be written.
    Read(anyhow::Error),
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayError::Open(e) => write!(f, "cannot replay {e}"),
            ReplayError::Read(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for ReplayError {}

/// Forwards replayed lines to Loki with their original timestamps, in file order.
struct LokiReplay {
    config: Config,
    shaper: EntryShaper,
    batch: Batch,
    client: LokiClient,
    rt: tokio::runtime::Runtime,
    stats: LokiStats,
    node: String,
    labels: BTreeMap<PathBuf, String>,
    from_ns: Option<i64>,
    to_ns: Option<i64>,
    /// `--loki-max-age`.
    max_age_ns: i64,
    report: LokiReport,
    retry_for: Duration,
    /// A batch could not be delivered within `retry_for`: the rest is not tried.
    gave_up: bool,
}

impl LokiReplay {
    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        if self.gave_up {
            self.report.undelivered += batch.entries as u64;
            return;
        }
        let now = std::time::Instant::now();
        let deadline = now.checked_add(self.retry_for).unwrap_or(now + YEAR);
        let give_up = || std::time::Instant::now() >= deadline;
        let result = self
            .rt
            .block_on(self.client.push(batch.encode(), &self.stats, &give_up));
        match result {
            Some(PushResult::Accepted) => self.report.sent += batch.entries as u64,
            Some(PushResult::Rejected { status, message }) => {
                self.report.rejected += batch.entries as u64;
                tracing::warn!(
                    "Loki rejected a batch of {} entries: {status}: {}",
                    batch.entries,
                    message.trim()
                );
                if self.report.messages.len() < 10 {
                    self.report
                        .messages
                        .push(format!("{status}: {}", message.trim()));
                }
            }
            None => {
                tracing::error!(
                    "Loki could not be reached within --retry-for {}; the remaining lines are not forwarded",
                    humantime::format_duration(self.retry_for)
                );
                self.gave_up = true;
                self.report.undelivered += batch.entries as u64;
            }
        }
    }
}

impl LineSink for LokiReplay {
    fn line(&mut self, path: &Path, text: &str, event_ns: Option<i64>) {
        let t = event_ns.unwrap_or(0);
        if self.from_ns.is_some_and(|f| t < f) || self.to_ns.is_some_and(|e| t >= e) {
            return;
        }
        // Loki rejects an entry older than its `reject_old_samples_max_age` (strictly before
        // now − max age): not sent, counted.
        if t < crate::timefmt::now_ns().saturating_sub(self.max_age_ns) {
            self.report.too_old += 1;
            return;
        }
        let labels = match self.labels.get(path) {
            Some(l) => l.clone(),
            None => {
                let l = stream_labels(
                    &self.config,
                    &self.node,
                    PodLabels::from_path(path).as_ref(),
                );
                self.labels.insert(path.to_path_buf(), l.clone());
                l
            }
        };
        let shaped = self.shaper.shape(text);
        if shaped.redaction_failed {
            self.stats
                .redaction_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.batch.push(&labels, t, shaped);
        if self.batch.bytes >= self.config.loki.batch_bytes {
            self.flush();
        }
    }
}

/// Backfill and Loki together, as one sink.
struct Sinks<'a> {
    backfill: Option<&'a mut StepStream>,
    loki: Option<&'a mut LokiReplay>,
}

impl LineSink for Sinks<'_> {
    fn line(&mut self, path: &Path, text: &str, event_ns: Option<i64>) {
        if let Some(l) = self.loki.as_deref_mut() {
            l.line(path, text, event_ns);
        }
    }
    fn accept(&mut self, record: &Record<'_>, event_ns: Option<i64>) -> bool {
        match self.backfill.as_deref_mut() {
            Some(b) => b.accept(record, event_ns),
            None => true,
        }
    }
    fn counted(
        &mut self,
        store: &crate::aggregate::Store,
        series: usize,
        record: &Record<'_>,
        event_ns: Option<i64>,
    ) {
        if let Some(b) = self.backfill.as_deref_mut() {
            b.counted(store, series, record, event_ns);
        }
    }
}

/// The sinks that need the records in file order, one line at a time (so `--jobs` does not
/// apply when any is in use).
struct Ordered<'a> {
    backfill: &'a mut Option<StepStream>,
    loki: &'a mut Option<LokiReplay>,
    emitter: &'a mut Emitter,
}

/// Lines between two progress updates (and checks of a parallel replay's stop flag).
const TICK_LINES: u32 = 16_384;

/// Reads one input to its end through `meter`. With `ordered`, each line also goes to the
/// backfill and Loki sinks, and the backfill windows that are complete leave after each
/// physical line. `tick` runs every [`TICK_LINES`] lines; `stop` ends the reading early
/// (in a parallel replay, another file failed).
fn read_input(
    input: Input,
    config: &Config,
    meter: &mut Meter,
    progress: Arc<AtomicU64>,
    ordered: Option<Ordered<'_>>,
    tick: &mut dyn FnMut(&Meter),
    stop: Option<&AtomicBool>,
) -> Result<(), ReplayError> {
    let (path, modified_ns) = (input.path.clone(), input.modified_ns);
    let bytes = input.into_reader(progress);
    read_bytes(
        &path,
        modified_ns,
        bytes,
        config,
        meter,
        ordered,
        tick,
        stop,
    )
}

/// [`read_input`] from its (decompressed) bytes.
#[allow(clippy::too_many_arguments)]
fn read_bytes(
    path: &Path,
    modified_ns: Option<i64>,
    bytes: Box<dyn Read + Send>,
    config: &Config,
    meter: &mut Meter,
    mut ordered: Option<Ordered<'_>>,
    tick: &mut dyn FnMut(&Meter),
    stop: Option<&AtomicBool>,
) -> Result<(), ReplayError> {
    let limit = physical_line_limit(config.source.max_line_bytes);
    let path = path.to_path_buf();
    let mut cursor = FileCursor::new(config, modified_ns);
    let mut reader = LineReader::new(bytes, 0, limit, AtEof::EmitPartial);
    let mut n = 0u32;
    loop {
        let line = reader
            .next_line()
            .with_context(|| format!("reading {} (after line {})", path.display(), cursor.line_no))
            .map_err(ReplayError::Read)?;
        let Some(line) = line else { break };
        match ordered.as_mut() {
            Some(o) => {
                let mut sinks = Sinks {
                    backfill: o.backfill.as_mut(),
                    loki: o.loki.as_mut(),
                };
                meter.physical_with(&path, &mut cursor, line, &mut sinks);
                if let Some(b) = o.backfill.as_mut() {
                    for w in b.take_ready() {
                        o.emitter.emit(w)?;
                    }
                }
            }
            None => meter.physical(&path, &mut cursor, line),
        }
        n = n.wrapping_add(1);
        if n.is_multiple_of(TICK_LINES) {
            if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
                return Ok(());
            }
            if meter.store.beyond_merge_limits() {
                // A part of a parallel replay that will be counted again in order: its memory
                // stays bounded by the limits, as counting in order keeps it.
                meter.store.abandon();
                return Ok(());
            }
            tick(meter);
        }
    }
    let mut sinks = match ordered.as_mut() {
        Some(o) => Sinks {
            backfill: o.backfill.as_mut(),
            loki: o.loki.as_mut(),
        },
        None => Sinks {
            backfill: None,
            loki: None,
        },
    };
    meter.end_of_file(&path, &mut cursor, &mut sinks);
    Ok(())
}

/// Bytes handed over from a read-ahead thread, one chunk at a time.
struct ChunkReader {
    chunks: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.chunks.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The reading thread finished the file.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Bytes of one chunk handed over by a read-ahead thread.
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks a read-ahead thread may hold per file before it waits (memory: threads × this ×
/// [`CHUNK_BYTES`]).
const CHUNKS_AHEAD: usize = 4;

/// `--jobs` for the replays that need records in order (backfill, Loki, `--from`/`--to`):
/// `threads` threads read and decompress the files ahead (gzip's inflate is most of a
/// replay's time), and this thread counts their bytes in the order given, as reading them
/// itself would.
#[allow(clippy::too_many_arguments)]
fn count_in_order_reading_ahead(
    config: &Config,
    inputs: Vec<Input>,
    threads: usize,
    meter: &mut Meter,
    progress: &Arc<AtomicU64>,
    ordered: Ordered<'_>,
    tick: &mut dyn FnMut(&Meter),
) -> Result<(), ReplayError> {
    let files: Vec<(PathBuf, Option<i64>)> = inputs
        .iter()
        .map(|i| (i.path.clone(), i.modified_ns))
        .collect();
    let mut senders = Vec::with_capacity(inputs.len());
    let mut receivers = Vec::with_capacity(inputs.len());
    for _ in 0..inputs.len() {
        let (tx, rx) = std::sync::mpsc::sync_channel(CHUNKS_AHEAD);
        senders.push(tx);
        receivers.push(rx);
    }
    let work = Mutex::new(
        inputs
            .into_iter()
            .zip(senders)
            .collect::<std::collections::VecDeque<_>>(),
    );
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                // Files are taken in order, so the one counted next is always being read.
                let next = work.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some((input, chunks)) = next else { return };
                let mut bytes = input.into_reader(progress.clone());
                loop {
                    // Read into spare capacity (not zeroed first); on an error, what was
                    // read before it is in `chunk`.
                    let mut chunk = Vec::with_capacity(CHUNK_BYTES);
                    let result = (&mut bytes)
                        .take(CHUNK_BYTES as u64)
                        .read_to_end(&mut chunk)
                        .map(|_| ());
                    let filled = chunk.len();
                    let end = filled < CHUNK_BYTES || result.is_err();
                    let sent = match result {
                        Err(e) => {
                            // What was read before the error first, as a reader in order sees it.
                            let _ = chunks.send(Ok(chunk));
                            chunks.send(Err(e))
                        }
                        Ok(()) if filled > 0 => chunks.send(Ok(chunk)),
                        Ok(()) => Ok(()),
                    };
                    // A closed channel: the replay stopped (an error in an earlier file).
                    if end || sent.is_err() {
                        break;
                    }
                }
            });
        }
        for ((path, modified_ns), chunks) in files.iter().zip(receivers) {
            let bytes = Box::new(ChunkReader {
                chunks,
                chunk: Vec::new(),
                at: 0,
            });
            let again = Ordered {
                backfill: &mut *ordered.backfill,
                loki: &mut *ordered.loki,
                emitter: &mut *ordered.emitter,
            };
            read_bytes(
                path,
                *modified_ns,
                bytes,
                config,
                meter,
                Some(again),
                tick,
                None,
            )?;
        }
        Ok(())
    })
}

/// What the threads of a parallel replay share: each file's counts as they finish, and how
/// far the merge has come.
/// One file counted by a worker: its counts, and another handle on it to count it again in
/// order if need be.
type Part = Result<(Meter, Result<Input, InputError>), ReplayError>;

struct Parts {
    done: Vec<Option<Part>>,
    /// The next file to start.
    next: usize,
    /// Files merged so far (in order).
    merged: usize,
    /// A file failed or the merge stopped: start no more.
    stopped: bool,
}

/// `--jobs`: counts the files on `jobs` threads, each file into a [`Meter::part`] of its own,
/// and merges them here in the order given, so the result is the one reading them in order
/// gives (see [`Store::absorb`]; a file whose series would fold is counted again here).
/// At most `2 × jobs` files are read ahead of the merge (memory). The first error in file
/// order is the one returned, as reading in order would.
#[allow(clippy::too_many_arguments)]
fn count_in_parallel(
    config: &Config,
    inputs: Vec<Input>,
    jobs: usize,
    meter: &mut Meter,
    event_times: EventTimes,
    progress: &Arc<AtomicU64>,
    tick: &mut dyn FnMut(&Meter),
) -> Result<(), ReplayError> {
    let files = inputs.len();
    let inputs: Vec<Mutex<Option<Input>>> =
        inputs.into_iter().map(|i| Mutex::new(Some(i))).collect();
    let parts = Mutex::new(Parts {
        done: (0..files).map(|_| None).collect(),
        next: 0,
        merged: 0,
        stopped: false,
    });
    let changed = Condvar::new();
    let stop = AtomicBool::new(false);
    let prices = meter.store.pricing().cloned();
    let ahead = jobs.saturating_mul(2);
    let lock = || {
        parts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(files) {
            scope.spawn(|| loop {
                let i = {
                    let mut p = lock();
                    loop {
                        if p.stopped || p.next >= files {
                            return;
                        }
                        if p.next < p.merged + ahead {
                            p.next += 1;
                            break p.next - 1;
                        }
                        p = changed
                            .wait(p)
                            .unwrap_or_else(|poisoned| poisoned.into_inner());
                    }
                };
                let input = inputs[i].lock().unwrap_or_else(|p| p.into_inner()).take();
                let result = match input {
                    Some(input) => {
                        let mut part = Meter::part(config, event_times);
                        part.store.set_pricing(prices.clone());
                        // The file as opened, not whatever its path names by the merge.
                        let again = input.try_clone();
                        read_input(
                            input,
                            config,
                            &mut part,
                            progress.clone(),
                            None,
                            &mut |_| {},
                            Some(&stop),
                        )
                        .map(|()| (part, again))
                    }
                    None => Err(ReplayError::Read(anyhow::anyhow!("file {i} taken twice"))),
                };
                let mut p = lock();
                if result.is_err() {
                    // Files after this one are not needed; those before it are already read.
                    p.stopped = true;
                }
                p.done[i] = Some(result);
                changed.notify_all();
            });
        }
        let mut outcome = Ok(());
        for i in 0..files {
            let part = loop {
                let mut p = lock();
                if let Some(part) = p.done[i].take() {
                    break part;
                }
                drop(changed.wait_timeout(p, Duration::from_millis(250)));
                tick(meter);
            };
            let merged = match part {
                Err(e) => Err(e),
                Ok((part, _)) if meter.absorb(&part) => Ok(()),
                Ok((part, again)) => {
                    // A limit reached: folding is decided record by record, so this file is
                    // counted again here, in order (its bytes not counted twice), from the
                    // handle opened with the others: by now its path may name another file
                    // (rotated) or none.
                    drop(part);
                    again
                        .and_then(Input::rewind)
                        .map_err(ReplayError::Open)
                        .and_then(|input| {
                            let uncounted = Arc::new(AtomicU64::new(0));
                            read_input(input, config, meter, uncounted, None, tick, None)
                        })
                }
            };
            let mut p = lock();
            p.merged = i + 1;
            if let Err(e) = merged {
                p.stopped = true;
                stop.store(true, Ordering::Relaxed);
                changed.notify_all();
                outcome = Err(e);
                break;
            }
            changed.notify_all();
        }
        outcome
    })
}

/// The device and inode of standard input (a pipe, a FIFO, a file it was redirected from).
fn stdin_identity() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let fd = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
    let meta = std::fs::File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Replays `args` (files, directories, globs) in order, with the backfill and forwarding
/// options of SPEC §2. The progress bar is drawn on stderr only when it is a terminal.
pub fn replay(
    config: &Config,
    args: &[PathBuf],
    opts: &ReplayOptions,
) -> Result<ReplayReport, ReplayError> {
    let started = Instant::now();
    let paths = expand_inputs(args).map_err(ReplayError::Open)?;
    // A stream is read once: named twice (under any name: `a.fifo` and `./a.fifo` are one
    // FIFO), the second would get what the first left.
    let mut streams = std::collections::HashSet::new();
    for p in &paths {
        use std::os::unix::fs::MetadataExt;
        let stream = if p.as_os_str() == crate::source::input::STDIN {
            // Standard input is what descriptor 0 is (the pipe `/dev/stdin` names too).
            Some(stdin_identity().unwrap_or((0, 0)))
        } else {
            std::fs::metadata(p)
                .ok()
                .filter(|m| !m.is_file() && !m.is_dir())
                .map(|m| (m.dev(), m.ino()))
        };
        if stream.is_some_and(|id| !streams.insert(id)) {
            return Err(ReplayError::Open(crate::source::InputError {
                path: p.clone(),
                error: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a stream (standard input, a FIFO) can be read only once: name it once",
                ),
            }));
        }
    }
    let inputs = paths
        .iter()
        .map(|p| open_input(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ReplayError::Open)?;
    let mut loki = if opts.loki {
        if config.loki.endpoint.is_empty() {
            return Err(ReplayError::Read(anyhow::anyhow!(
                "--loki needs loki.endpoint in the config"
            )));
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        Some(LokiReplay {
            config: config.clone(),
            shaper: EntryShaper::new(config),
            batch: Batch::default(),
            client: LokiClient::new(config).map_err(ReplayError::Read)?,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| ReplayError::Read(e.into()))?,
            stats: LokiStats::default(),
            node: config.effective_node_name(),
            labels: BTreeMap::new(),
            from_ns: opts.from_ns,
            to_ns: opts.to_ns,
            max_age_ns: opts.loki_max_age_ns,
            report: LokiReport::default(),
            retry_for: opts.retry_for,
            gave_up: false,
        })
    } else {
        None
    };
    if opts.push && config.otlp.endpoint.is_empty() {
        return Err(ReplayError::Read(anyhow::anyhow!(
            "--push needs otlp.endpoint in the config"
        )));
    }
    let total: u64 = inputs.iter().map(|i| i.size).sum();
    let bar = if opts.progress && std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{bar:32} {bytes}/{total_bytes} {msg} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    let prices = config
        .price_table()
        .map_err(|e| ReplayError::Read(anyhow::anyhow!("{e}")))?;
    // Each record is priced at its own event time: when a price has a `from`, event times
    // are tracked (SPEC §3's fallback to the previous record needs every record's).
    let time_dependent = prices.as_ref().is_some_and(|t| t.time_dependent());
    let event_times = if opts.needs_event_time() {
        EventTimes::Every
    } else if time_dependent {
        EventTimes::OnDemand
    } else {
        EventTimes::Off
    };
    let mut meter = Meter::new(config, event_times);
    meter.store.set_pricing(prices);
    let wants_backfill =
        opts.from_ns.is_some() || opts.to_ns.is_some() || opts.openmetrics.is_some() || opts.push;
    // One OpenMetrics file must group each series' samples together, so it holds everything
    // until the end; a directory of window files (and the push) stream.
    let single_file = opts.openmetrics.is_some() && !opts.openmetrics_dir;
    let shape = Shape {
        step_ns: opts.step_ns,
        block_ns: if single_file { i64::MAX } else { opts.block_ns },
        max_delay_ns: if single_file {
            i64::MAX
        } else {
            opts.max_delay_ns
        },
        dense: opts.dense,
        from_ns: opts.from_ns,
        to_ns: opts.to_ns,
    };
    if wants_backfill {
        // Each record's cost goes into its step.
        meter.store.cost_per_record();
    }
    let mut backfill = wants_backfill.then(|| StepStream::new(shape, meter.extra_names().len()));
    let mut emitter = Emitter::new(config, opts, &meter)?;
    let read = Arc::new(AtomicU64::new(0));
    let files = inputs.len();
    let mut tick = |m: &Meter| {
        if !bar.is_hidden() {
            update_bar(
                &bar,
                read.load(Ordering::Relaxed),
                m.store.stats().lines(),
                started,
            );
        }
    };
    // A stream (standard input, a FIFO) is read once, in order: a file counted on a thread
    // may have to be read again.
    let streams = inputs.iter().any(|i| !i.seekable);
    if opts.jobs > 1 && files > 1 && event_times != EventTimes::Every && !streams {
        count_in_parallel(
            config,
            inputs,
            opts.jobs,
            &mut meter,
            event_times,
            &read,
            &mut tick,
        )?;
    } else if opts.jobs > 1 && inputs.iter().any(|i| i.gzip) {
        // Reading ahead pays for inflating; a plain file is read as fast here as a thread
        // could copy it over (the kernel reads ahead on its own).
        let ordered = Ordered {
            backfill: &mut backfill,
            loki: &mut loki,
            emitter: &mut emitter,
        };
        let threads = (opts.jobs - 1).min(files);
        count_in_order_reading_ahead(
            config, inputs, threads, &mut meter, &read, ordered, &mut tick,
        )?;
    } else {
        for input in inputs {
            let ordered = Ordered {
                backfill: &mut backfill,
                loki: &mut loki,
                emitter: &mut emitter,
            };
            read_input(
                input,
                config,
                &mut meter,
                read.clone(),
                Some(ordered),
                &mut tick,
                None,
            )?;
        }
    }
    update_bar(
        &bar,
        read.load(Ordering::Relaxed),
        meter.store.stats().lines(),
        started,
    );
    bar.finish_and_clear();

    let mut emitted = None;
    let mut pushed = None;
    let mut outside_range = 0;
    let mut late = None;
    if let Some(b) = backfill.as_mut() {
        b.finish();
        for w in b.take_ready() {
            emitter.emit(w)?;
        }
        let written = emitter.finish()?;
        outside_range = b.outside;
        late = Some(b.late);
        pushed = written.outcomes.clone();
        emitted = Some(emitter.emitted(b.series_started(), &written));
    }
    let loki_report = loki.as_mut().map(|l| {
        l.flush();
        l.report.clone()
    });
    // With --from/--to the summary covers the records inside the range.
    Ok(ReplayReport {
        snapshot: meter.store.snapshot(meter.extra_names()),
        files,
        bytes_read: read.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        emitted,
        pushed,
        loki: loki_report,
        outside_range,
        late,
    })
}

/// Where finished block windows go: an OpenMetrics file (the single file, or one per window
/// in a directory) and/or OTLP pushes, and what was emitted, for the summary. The windows
/// are formatted and written by a [`WindowWriter`]: on a thread of its own with `--jobs` ≥ 2,
/// so that formatting overlaps counting. The hand-over is a rendezvous: at most two windows
/// are held, the one being written and the one being filled (or handed over).
struct Emitter {
    /// Shared with the writer: set before its channel is closed.
    closing: Arc<AtomicBool>,
    writer: Writer,
    windows: usize,
}

/// What the writer wrote: samples, the first and last sample times (ns), push outcomes.
struct Written {
    samples: usize,
    first: Option<i64>,
    last: Option<i64>,
    outcomes: Option<PushOutcomes>,
}

enum Writer {
    Inline(WindowWriter),
    Thread {
        /// `None` once finished.
        to: Option<std::sync::mpsc::SyncSender<Window>>,
        done: Option<std::thread::JoinHandle<Result<WindowWriter, ReplayError>>>,
    },
    /// The writer's result, once taken from it.
    Finished(WindowWriter),
}

/// Formats and writes or pushes windows: owns the output file names, the OTLP client and the
/// samples written.
struct WindowWriter {
    prefix: String,
    static_labels: BTreeMap<String, String>,
    instance: String,
    step_ns: i64,
    extra_names: Vec<String>,
    currency: Option<String>,
    /// `--openmetrics`: the path, and whether it is a directory of window files.
    openmetrics: Option<(PathBuf, bool)>,
    push: Option<Pusher>,
    samples: usize,
    /// The first and last sample times written (ns).
    first: Option<i64>,
    last: Option<i64>,
    /// Set when the replay stops handing over windows (at the end, or on an error; at once
    /// when the writer runs inline).
    closing: Arc<AtomicBool>,
}

/// OTLP requests per outcome (`success`, `rejected`, `failed`).
type PushOutcomes = BTreeMap<&'static str, u64>;

/// `--push`: the client, the request shape, and one `--retry-for` for all requests.
struct Pusher {
    client: OtlpClient,
    rt: tokio::runtime::Runtime,
    shape: crate::export::otlp::OtlpShape,
    deadline: tokio::time::Instant,
    outcomes: PushOutcomes,
}

impl Emitter {
    fn new(config: &Config, opts: &ReplayOptions, meter: &Meter) -> Result<Self, ReplayError> {
        let push = if opts.push {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let now = tokio::time::Instant::now();
            Some(Pusher {
                client: OtlpClient::new(config).map_err(ReplayError::Read)?,
                rt: tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| ReplayError::Read(e.into()))?,
                // The resource as a live agent sends it, with the replay's instance as its
                // identity.
                shape: crate::export::otlp::OtlpShape::from_config(config, &opts.instance),
                deadline: now.checked_add(opts.retry_for).unwrap_or(now + YEAR),
                outcomes: BTreeMap::new(),
            })
        } else {
            None
        };
        if let Some(dir) = opts.openmetrics.as_ref().filter(|_| opts.openmetrics_dir) {
            std::fs::create_dir_all(dir).map_err(|e| {
                ReplayError::Read(anyhow::anyhow!("creating {}: {e}", dir.display()))
            })?;
        }
        let writer = WindowWriter {
            prefix: config.metrics.prefix.clone(),
            static_labels: config.metrics.labels.clone(),
            instance: opts.instance.clone(),
            step_ns: opts.step_ns,
            extra_names: meter.extra_names().to_vec(),
            currency: meter.store.currency().map(str::to_string),
            openmetrics: opts
                .openmetrics
                .clone()
                .map(|path| (path, opts.openmetrics_dir)),
            push,
            samples: 0,
            first: None,
            last: None,
            closing: Arc::new(AtomicBool::new(false)),
        };
        let closing = writer.closing.clone();
        let writer = if opts.jobs > 1 {
            let (to, from) = std::sync::mpsc::sync_channel::<Window>(0);
            let done = std::thread::Builder::new()
                .name("tokenmeter-backfill-writer".into())
                .spawn(move || {
                    let mut writer = writer;
                    for w in from {
                        writer.write(w)?;
                    }
                    Ok(writer)
                })
                .map_err(|e| ReplayError::Read(anyhow::anyhow!("starting a writer thread: {e}")))?;
            Writer::Thread {
                to: Some(to),
                done: Some(done),
            }
        } else {
            // Inline, a window is written before the next is counted: nothing is handed over.
            writer.closing.store(true, Ordering::Relaxed);
            Writer::Inline(writer)
        };
        Ok(Emitter {
            closing,
            writer,
            windows: 0,
        })
    }

    fn emit(&mut self, w: Window) -> Result<(), ReplayError> {
        if w.is_empty() {
            return Ok(());
        }
        self.windows += 1;
        match &mut self.writer {
            Writer::Inline(writer) => writer.write(w),
            Writer::Thread { to: Some(to), .. } => {
                if to.send(w).is_err() {
                    // The writer stopped on an error: it is the replay's.
                    self.join()?;
                }
                Ok(())
            }
            Writer::Thread { to: None, .. } | Writer::Finished(_) => Err(ReplayError::Read(
                anyhow::anyhow!("a window after the end of the backfill"),
            )),
        }
    }

    /// Waits for the writer thread (after closing its channel) and keeps its result.
    fn join(&mut self) -> Result<(), ReplayError> {
        if let Writer::Thread { to, done } = &mut self.writer {
            if let Some(to) = to.take() {
                self.closing.store(true, Ordering::Relaxed);
                drop(to);
            }
            let Some(done) = done.take() else {
                return Ok(());
            };
            let writer = done.join().map_err(|_| {
                ReplayError::Read(anyhow::anyhow!("the backfill writer thread panicked"))
            })??;
            self.writer = Writer::Finished(writer);
        }
        Ok(())
    }

    /// Writes what is left and makes the window files durable; returns what was written.
    fn finish(&mut self) -> Result<Written, ReplayError> {
        self.join()?;
        let (Writer::Inline(writer) | Writer::Finished(writer)) = &self.writer else {
            return Err(ReplayError::Read(anyhow::anyhow!(
                "the backfill writer did not finish"
            )));
        };
        writer.finish()?;
        Ok(Written {
            samples: writer.samples,
            first: writer.first,
            last: writer.last,
            outcomes: writer.push.as_ref().map(|p| p.outcomes.clone()),
        })
    }

    fn emitted(&self, series: usize, written: &Written) -> Emitted {
        Emitted {
            series,
            samples: written.samples,
            windows: self.windows,
            first_sample: written.first.map(crate::timefmt::format_rfc3339_millis),
            last_sample: written.last.map(crate::timefmt::format_rfc3339_millis),
        }
    }
}

/// Debug builds only: `TOKENMETER_FAULT_WINDOW_WRITER=hold-first` makes the writer hold its
/// first window file, before the rename, until the replay stops handing over windows, so a
/// test can make a replay fail while a window is being written.
#[cfg(debug_assertions)]
fn injected_writer_fault(first: bool, closing: &AtomicBool) {
    if first && std::env::var("TOKENMETER_FAULT_WINDOW_WRITER").is_ok_and(|v| v == "hold-first") {
        while !closing.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[cfg(not(debug_assertions))]
fn injected_writer_fault(_: bool, _: &AtomicBool) {}

impl Drop for Emitter {
    /// A replay that stops on an error still waits for the windows already handed over:
    /// they are finished and renamed, as `--jobs 1` would have written them before reading
    /// further, so no temp file is left and the same files exist with any `--jobs`.
    fn drop(&mut self) {
        let _ = self.join();
    }
}

impl WindowWriter {
    fn write(&mut self, w: Window) -> Result<(), ReplayError> {
        let name = window_file_name(&w);
        let series = w.into_sorted();
        for s in &series {
            if let (Some(a), Some(b)) = (s.points.first(), s.points.last()) {
                // A series starting in this window starts with its 0 one step earlier.
                let a = if s.before.is_none() {
                    a.0 - self.step_ns
                } else {
                    a.0
                };
                self.first = Some(self.first.map_or(a, |f| f.min(a)));
                self.last = Some(self.last.map_or(b.0, |l| l.max(b.0)));
            }
        }
        if let Some((out, dir)) = &self.openmetrics {
            let path = if *dir { out.join(&name) } else { out.clone() };
            let e = self.write_file(&path, *dir, &series)?;
            self.samples += e.samples;
        }
        if let Some(p) = self.push.as_mut() {
            let requests = otlp_requests(
                &series,
                &self.extra_names,
                self.currency.as_deref(),
                &p.shape,
                5000,
            );
            for req in &requests {
                // Once `--retry-for` is spent the rest is not tried: reported as failed.
                let o = if tokio::time::Instant::now() >= p.deadline {
                    crate::export::otlp::PushOutcome::Failed
                } else {
                    p.rt.block_on(p.client.push(req, p.deadline))
                };
                *p.outcomes.entry(o.as_str()).or_insert(0) += 1;
            }
            if self.openmetrics.is_none() {
                self.samples += series.iter().map(|s| s.points.len()).sum::<usize>();
            }
        }
        Ok(())
    }

    /// Writes one OpenMetrics file through a temp file and a rename (the temp file removed
    /// if that fails): a failed replay never leaves half a file behind.
    fn write_file(
        &self,
        out: &Path,
        in_dir: bool,
        series: &[crate::export::openmetrics::SeriesSamples],
    ) -> Result<Emitted, ReplayError> {
        let tmp = out.with_extension("tmp-tokenmeter");
        let write = || -> std::io::Result<Emitted> {
            let mut f = std::fs::File::create(&tmp)?;
            let e = write_openmetrics(
                &mut f,
                series,
                &self.prefix,
                &self.extra_names,
                self.currency.as_deref(),
                &self.static_labels,
                &self.instance,
                self.step_ns,
            )?;
            injected_writer_fault(self.samples == 0, &self.closing);
            if in_dir {
                // A window file is synced with all the others at the end (one syncfs, not one
                // fsync per file: a month of 2 h windows is 360 files). Its write-back starts
                // now, without waiting, so the end waits only for the last windows.
                use std::os::fd::AsRawFd;
                // SAFETY: a hint on a descriptor we own; errors are the syncfs's to report.
                unsafe {
                    libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
                }
            } else {
                f.sync_all()?;
            }
            std::fs::rename(&tmp, out)?;
            Ok(e)
        };
        write().map_err(|e| {
            // Nothing half-written stays behind.
            let _ = std::fs::remove_file(&tmp);
            ReplayError::Read(anyhow::anyhow!("writing {}: {e}", out.display()))
        })
    }

    /// Makes the window files durable (they were written without a sync each).
    fn finish(&self) -> Result<(), ReplayError> {
        let Some((dir, true)) = &self.openmetrics else {
            return Ok(());
        };
        let sync = || -> std::io::Result<()> {
            let d = std::fs::File::open(dir)?;
            use std::os::fd::AsRawFd;
            // SAFETY: syncfs on a descriptor we own; it only flushes the filesystem.
            if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        sync().map_err(|e| ReplayError::Read(anyhow::anyhow!("syncing {}: {e}", dir.display())))
    }
}

/// `<start>-<end>.om` in compact UTC (`20261120T000000Z-20261120T020000Z.om`): sorts in time
/// order.
fn window_file_name(w: &Window) -> String {
    let compact = |t: i64| {
        crate::timefmt::format_rfc3339_millis(t)
            .replace(".000", "")
            .replace(['-', ':'], "")
    };
    format!("{}-{}.om", compact(w.start_ns), compact(w.end_ns))
}

fn update_bar(bar: &ProgressBar, bytes: u64, lines: u64, started: Instant) {
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    bar.set_position(bytes);
    bar.set_message(format!("{lines} lines, {:.0} lines/s", lines as f64 / secs));
}

#[derive(Serialize)]
struct JsonSummary<'a> {
    lines: u64,
    records: u64,
    skipped: BTreeMap<&'static str, u64>,
    /// Records per format read (formats with none are left out).
    formats: BTreeMap<&'static str, u64>,
    series: Vec<JsonSeries<'a>>,
    /// Only with --openmetrics/--push/--from/--to.
    #[serde(skip_serializing_if = "Option::is_none")]
    emitted: Option<&'a Emitted>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outside_range: Option<u64>,
    /// Records older than a step already written, counted in the oldest open step.
    #[serde(skip_serializing_if = "Option::is_none")]
    late: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pushed: Option<&'a BTreeMap<&'static str, u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    loki: Option<&'a LokiReport>,
    /// With pricing (SPEC §10): the currency, the total cost, and the requests that were
    /// unpriced (wholly or in part) and unmetered.
    #[serde(skip_serializing_if = "Option::is_none")]
    currency: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cost: Option<Money>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unpriced_requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unmetered_requests: Option<u64>,
}

/// An amount written as a JSON number in plain decimal notation from its integer units, never
/// through a float (SPEC §10 "Summary").
struct Money(u128);

impl Serialize for Money {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw = serde_json::value::RawValue::from_string(crate::pricing::format_units(self.0))
            .map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

#[derive(Serialize)]
struct JsonSeries<'a> {
    model: &'a str,
    api_key_id: &'a str,
    service_id: &'a str,
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    total_tokens: u64,
    /// `<type>_tokens` for each extra token type this series counted any of.
    #[serde(flatten)]
    extra: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cost: Option<Money>,
}

/// The `--summary json` object of SPEC §2 (one line, then `\n`). Every skip reason is present,
/// zero or not, so scripts can rely on the keys. Backfill and Loki results are added under
/// their own keys only when those flags were given.
pub fn summary_json(r: &ReplayReport) -> String {
    let s = &r.snapshot;
    let priced = s.currency.is_some();
    let summary = JsonSummary {
        emitted: r.emitted.as_ref(),
        outside_range: r.emitted.as_ref().map(|_| r.outside_range),
        late: r.late,
        pushed: r.pushed.as_ref(),
        loki: r.loki.as_ref(),
        currency: s.currency.as_deref(),
        cost: priced.then(|| Money(total_cost(s))),
        unpriced_requests: priced.then(|| s.pairs.iter().map(|p| p.unpriced).sum()),
        unmetered_requests: priced.then(|| s.pairs.iter().map(|p| p.unmetered).sum()),
        lines: s.stats.lines(),
        records: s.stats.records,
        skipped: SkipReason::ALL
            .iter()
            .map(|r| (r.as_str(), s.stats.skipped[*r as usize]))
            .collect(),
        formats: Format::ALL
            .iter()
            .map(|f| (f.name(), s.stats.records_by_format[*f as usize]))
            .filter(|(_, n)| *n > 0)
            .collect(),
        series: s
            .series
            .iter()
            .map(|x| JsonSeries {
                model: &x.model,
                api_key_id: &x.api_key_id,
                service_id: &x.service_id,
                requests: x.requests_total(),
                input_tokens: x.input_tokens,
                output_tokens: x.output_tokens,
                total_tokens: x.total_tokens,
                extra: s
                    .extra_names
                    .iter()
                    .zip(&x.extra_tokens)
                    .filter(|(_, n)| **n > 0)
                    .map(|(name, n)| (format!("{name}_tokens"), *n))
                    .collect(),
                cost: priced.then_some(Money(x.cost_units)),
            })
            .collect(),
    };
    let mut out =
        serde_json::to_string(&summary).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    out.push('\n');
    out
}

fn total_cost(s: &Snapshot) -> u128 {
    s.series
        .iter()
        .fold(0u128, |a, x| a.saturating_add(x.cost_units))
}

/// The readable `--summary text` report: totals, top models, keys and services, skipped lines.
pub fn summary_text(r: &ReplayReport) -> String {
    let s = &r.snapshot;
    let st = &s.stats;
    let mut out = String::new();
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    let _ = writeln!(
        out,
        "replayed {} file(s), {} bytes, {} lines in {:.2}s ({:.0} lines/s)\n",
        r.files,
        r.bytes_read,
        st.lines(),
        secs,
        st.lines() as f64 / secs
    );
    let (mut req, mut inp, mut outp, mut tot) = (0u64, 0u64, 0u64, 0u64);
    for x in &s.series {
        req += x.requests_total();
        inp += x.input_tokens;
        outp += x.output_tokens;
        tot += x.total_tokens;
    }
    let _ = writeln!(out, "lines      {:>14}", st.lines());
    let _ = writeln!(out, "records    {:>14}", st.records);
    for format in Format::ALL {
        let n = st.records_by_format[format as usize];
        if n > 0 {
            let _ = writeln!(out, "  {:<10}{:>13}", format.name(), n);
        }
    }
    let _ = writeln!(out, "skipped    {:>14}", st.lines() - st.records);
    for reason in SkipReason::ALL {
        let n = st.skipped[reason as usize];
        if n > 0 {
            let _ = writeln!(out, "  {:<9}{:>14}", reason.as_str(), n);
        }
    }
    let _ = writeln!(out, "series     {:>14}", s.series.len());
    let _ = writeln!(out, "requests   {req:>14}");
    let _ = writeln!(out, "input      {inp:>14} tokens");
    let _ = writeln!(out, "output     {outp:>14} tokens");
    let _ = writeln!(out, "total      {tot:>14} tokens");
    // The extra types counted (a type no line had is not listed), under the total they are
    // part of, their numbers ending in the same column as the others' when the name fits.
    for (i, name) in s.extra_names.iter().enumerate() {
        let sum: u64 = s
            .series
            .iter()
            .map(|x| x.extra_tokens.get(i).copied().unwrap_or(0))
            .sum();
        if sum > 0 {
            let width = 22usize.saturating_sub(name.len()).max(1);
            let _ = writeln!(out, "  {name} {sum:>width$} tokens");
        }
    }
    let names = invalid_field_names(&s.extra_names);
    for (i, n) in st.invalid_fields.iter().enumerate() {
        if *n > 0 {
            let _ = writeln!(out, "invalid {:<14}{n:>7} records", names[i]);
        }
    }
    if st.total_mismatches > 0 {
        let _ = writeln!(
            out,
            "total != input + output in {} records",
            st.total_mismatches
        );
    }
    for (i, n) in st.overflows.iter().enumerate() {
        if *n > 0 {
            let _ = writeln!(
                out,
                "overflow {:<11}{n:>9} records folded into __overflow__",
                OVERFLOW_LABELS[i]
            );
        }
    }
    let unmetered: u64 = s.pairs.iter().map(|p| p.unmetered).sum();
    if unmetered > 0 {
        let _ = writeln!(
            out,
            "unmetered  {unmetered:>14} 2xx requests without any valid token count"
        );
    }
    if let Some(currency) = &s.currency {
        let unpriced: u64 = s.pairs.iter().map(|p| p.unpriced).sum();
        let _ = writeln!(
            out,
            "cost       {:>14} {currency}",
            crate::pricing::format_units(total_cost(s))
        );
        let _ = writeln!(
            out,
            "unpriced   {unpriced:>14} requests (no price, or only part priced)"
        );
    }
    if let Some(e) = &r.emitted {
        let _ = writeln!(
            out,
            "backfill: {} series, {} samples in {} window(s), {} .. {} ({} records outside --from/--to, {} late)",
            e.series,
            e.samples,
            e.windows,
            e.first_sample.as_deref().unwrap_or("-"),
            e.last_sample.as_deref().unwrap_or("-"),
            r.outside_range,
            r.late.unwrap_or(0)
        );
    }
    if let Some(p) = &r.pushed {
        let _ = writeln!(out, "OTLP push requests: {p:?}");
    }
    if let Some(l) = &r.loki {
        let _ = writeln!(
            out,
            "Loki: {} entries accepted, {} rejected, {} older than --loki-max-age not sent",
            l.sent, l.rejected, l.too_old
        );
        for m in &l.messages {
            let _ = writeln!(out, "  rejected: {m}");
        }
    }
    type LabelOf = fn(&crate::aggregate::SeriesSnapshot) -> &str;
    let tops: [(&str, LabelOf); 3] = [
        ("model", |x| &x.model),
        ("api_key_id", |x| &x.api_key_id),
        ("service_id", |x| &x.service_id),
    ];
    for (title, label) in tops {
        let mut by: BTreeMap<&str, (u64, u64, u64, u64)> = BTreeMap::new();
        for x in &s.series {
            let e = by.entry(label(x)).or_default();
            e.0 += x.requests_total();
            e.1 += x.input_tokens;
            e.2 += x.output_tokens;
            e.3 += x.total_tokens;
        }
        let mut rows: Vec<_> = by.into_iter().collect();
        rows.sort_by(|a, b| b.1 .3.cmp(&a.1 .3).then(a.0.cmp(b.0)));
        let _ = writeln!(
            out,
            "\ntop {title} by total tokens ({} of {}):",
            rows.len().min(10),
            rows.len()
        );
        let width = rows
            .iter()
            .take(10)
            .map(|r| r.0.chars().count())
            .max()
            .unwrap_or(0)
            .max(title.len());
        let _ = writeln!(
            out,
            "  {title:<width$}  {:>10} {:>14} {:>14} {:>14}",
            "requests", "input", "output", "total"
        );
        for (name, (rq, i, o, t)) in rows.iter().take(10) {
            let _ = writeln!(out, "  {name:<width$}  {rq:>10} {i:>14} {o:>14} {t:>14}");
        }
    }
    if let Some(currency) = &s.currency {
        spend_tables(&mut out, s, currency);
    }
    out
}

/// SPEC §10: spend by API key and by model (every row, largest first), and where requests
/// were unpriced or unmetered.
fn spend_tables(out: &mut String, s: &Snapshot, currency: &str) {
    type LabelOf = fn(&crate::aggregate::SeriesSnapshot) -> &str;
    let by_label: [(&str, LabelOf); 2] =
        [("api_key_id", |x| &x.api_key_id), ("model", |x| &x.model)];
    for (title, label) in by_label {
        let mut by: BTreeMap<&str, (u64, u128)> = BTreeMap::new();
        for x in &s.series {
            let e = by.entry(label(x)).or_default();
            e.0 += x.requests_total();
            e.1 = e.1.saturating_add(x.cost_units);
        }
        let mut rows: Vec<_> = by.into_iter().collect();
        rows.sort_by(|a, b| b.1 .1.cmp(&a.1 .1).then(a.0.cmp(b.0)));
        let width = rows
            .iter()
            .map(|r| r.0.chars().count())
            .max()
            .unwrap_or(0)
            .max(title.len());
        let _ = writeln!(out, "\nspend by {title} ({currency}):");
        let _ = writeln!(out, "  {title:<width$}  {:>10} {:>22}", "requests", "cost");
        for (name, (rq, cost)) in rows {
            let cost = crate::pricing::format_units(cost);
            let _ = writeln!(out, "  {name:<width$}  {rq:>10} {cost:>22}");
        }
    }
    let flagged: Vec<_> = s
        .pairs
        .iter()
        .filter(|p| p.unpriced > 0 || p.unmetered > 0)
        .collect();
    if !flagged.is_empty() {
        let _ = writeln!(
            out,
            "\nunpriced and unmetered requests by model and service_id:"
        );
        for p in flagged {
            let _ = writeln!(
                out,
                "  {} / {}: {} unpriced, {} unmetered",
                p.model, p.service_id, p.unpriced, p.unmetered
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_summary_lists_the_extra_types_counted_aligned_and_not_the_others() {
        let config = Config::default();
        let mut meter = Meter::new(&config, EventTimes::Off);
        let mut parser = crate::parse::Parser::new(&config.fields);
        let line = r#"{"model":"m","llm_input_token":5000,"llm_output_token":700,"llm_cache_creation_input_token":12,"llm_cached_input_token":7}"#;
        let crate::parse::Parsed::Record(r) = parser.parse(line) else {
            panic!("a record")
        };
        meter.store.add(&r);
        let report = ReplayReport {
            snapshot: meter.store.snapshot(&config.fields.extra_names()),
            files: 1,
            bytes_read: line.len() as u64,
            elapsed: Duration::from_secs(1),
            emitted: None,
            pushed: None,
            loki: None,
            outside_range: 0,
            late: None,
        };
        let text = summary_text(&report);
        let lines: Vec<&str> = text.lines().collect();
        let at = |prefix: &str| {
            lines
                .iter()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("{prefix:?} in\n{text}"))
                .to_string()
        };
        let total = at("total ");
        let cached = at("  cached_input ");
        let creation = at("  cache_creation_input ");
        assert!(total.ends_with(" 5700 tokens"), "{text}");
        assert!(cached.ends_with(" 7 tokens"), "{text}");
        assert!(creation.ends_with(" 12 tokens"), "{text}");
        // The numbers end in one column.
        assert_eq!(total.len(), cached.len(), "{text}");
        assert_eq!(total.len(), creation.len(), "{text}");
        assert!(
            !text.contains("reasoning"),
            "no line had reasoning tokens:\n{text}"
        );
    }

    /// `--jobs`: a file counted again in order (its series would fold) is read from the handle
    /// opened with the others, as `--jobs 1` reads it, not from whatever its path names by
    /// then (a log rotated or replaced while the replay runs).
    #[test]
    fn a_file_counted_again_is_the_file_opened_not_its_path_now() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.log"), dir.path().join("b.log"));
        std::fs::write(&a, "{\"model\":\"m1\",\"llm_input_token\":10}\n").unwrap();
        std::fs::write(&b, "{\"model\":\"m2\",\"llm_input_token\":5}\n").unwrap();
        let mut config = Config::default();
        // b's series folds: absorbing it is refused and it is counted again.
        config.limits.max_series = 1;
        let inputs: Vec<Input> = [&a, &b].iter().map(|p| open_input(p).unwrap()).collect();
        // Rotated after opening: b.log is now another file.
        std::fs::rename(&b, dir.path().join("b.log.1")).unwrap();
        std::fs::write(&b, "{\"model\":\"m3\",\"llm_input_token\":1000}\n").unwrap();

        let count = |inputs: Vec<Input>| {
            let mut meter = Meter::new(&config, EventTimes::Off);
            let progress = Arc::new(AtomicU64::new(0));
            count_in_parallel(
                &config,
                inputs,
                2,
                &mut meter,
                EventTimes::Off,
                &progress,
                &mut |_| {},
            )
            .unwrap();
            let snap = meter.store.snapshot(&[]);
            let input: u64 = snap.series.iter().map(|s| s.input_tokens).sum();
            (snap.stats.records, input, snap.stats.overflows[3])
        };
        assert_eq!(count(inputs), (2, 15, 1));

        // Removed after opening: still read.
        let inputs: Vec<Input> = [&a, &b].iter().map(|p| open_input(p).unwrap()).collect();
        std::fs::remove_file(&b).unwrap();
        let (records, input, _) = count(inputs);
        assert_eq!((records, input), (2, 1010));
    }

    /// A part with more series than the limits allow is refused by the merge anyway: it stops
    /// being counted (its memory bounded by the limits plus one tick's lines, as in order)
    /// and is counted again in order, with the result of `--jobs 1`.
    #[test]
    fn a_part_beyond_the_limits_stops_and_is_counted_again_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let lines = 3 * TICK_LINES as usize;
        let mut text = String::new();
        for i in 0..lines {
            text.push_str(&format!(
                "{{\"model\":\"m\",\"api_key_id\":\"key-{i}\",\"llm_input_token\":1}}\n"
            ));
        }
        let paths: Vec<PathBuf> = ["a.log", "b.log", "c.log"]
            .iter()
            .map(|name| dir.path().join(name))
            .collect();
        for p in &paths {
            std::fs::write(p, &text).unwrap();
        }
        let mut config = Config::default();
        config.limits.max_series = 100;
        config.limits.max_values.api_key_id = 50;

        let mut part = Meter::part(&config, EventTimes::Off);
        let progress = Arc::new(AtomicU64::new(0));
        read_input(
            open_input(&paths[0]).unwrap(),
            &config,
            &mut part,
            progress.clone(),
            None,
            &mut |_| {},
            None,
        )
        .unwrap();
        assert!(part.store.series_count() <= TICK_LINES as usize);

        let mut in_order = Meter::new(&config, EventTimes::Off);
        for p in &paths {
            let input = open_input(p).unwrap();
            read_input(
                input,
                &config,
                &mut in_order,
                progress.clone(),
                None,
                &mut |_| {},
                None,
            )
            .unwrap();
        }
        let mut parallel = Meter::new(&config, EventTimes::Off);
        let inputs = paths.iter().map(|p| open_input(p).unwrap()).collect();
        count_in_parallel(
            &config,
            inputs,
            2,
            &mut parallel,
            EventTimes::Off,
            &progress,
            &mut |_| {},
        )
        .unwrap();
        let (a, b) = (in_order.store.snapshot(&[]), parallel.store.snapshot(&[]));
        assert_eq!(b.stats.records, 3 * lines as u64);
        assert_eq!((a.series, a.stats), (b.series, b.stats));
    }
}
