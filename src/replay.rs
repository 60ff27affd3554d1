//! `tokenmeter replay`: read files once from their start through the pipeline and summarise.
//!
//! Owns: the order of files, opening them all before reading any (so a missing file stops the
//! replay before anything is written), which sinks get the records (backfill, Loki), reading in
//! order or in parallel, the progress bar, and (in `summary`) the summary formats of docs/cli.md.
//! Must not: bucket, format or send backfill samples (`backfill` does, handed the records and
//! the windows).

mod summary;

pub use summary::{summary_json, summary_text};

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::aggregate::Snapshot;
use crate::backfill::{Emitted, Emitter, Output, Shape, StepStream};
use crate::config::Config;
use crate::decode::physical_line_limit;
use crate::export::loki::{stream_labels, Batch, EntryShaper, LokiClient, LokiStats, PushResult};
use crate::parse::Record;
use crate::pipeline::{EventTimes, FileCursor, LineSink, Meter};
use crate::source::{expand_inputs, open_input, AtEof, Input, InputError, LineReader, PodLabels};

/// Stands for "for ever" where `--retry-for` is too large to add to a clock reading.
const YEAR: Duration = Duration::from_secs(365 * 86_400);

/// What to do besides summarising (docs/cli.md `replay` flags).
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    pub from_ns: Option<i64>,
    pub to_ns: Option<i64>,
    /// `--step`: resolution of backfill samples.
    pub step_ns: i64,
    pub openmetrics: Option<PathBuf>,
    /// `--openmetrics` names a directory: one file per block window (bounded memory).
    pub openmetrics_dir: bool,
    /// `--tsdb`: the directory of the TSDB blocks.
    pub tsdb: Option<PathBuf>,
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
            || self.tsdb.is_some()
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
    /// SIGINT or SIGTERM (the signal's number) stopped the reading between two lines; the
    /// writer finished what it had been handed.
    Interrupted(i32),
}

/// The signal that asked the replay to stop (0: none). Set by the handlers
/// [`stop_on_signals`] installs; the reading loop checks it at every line.
static INTERRUPTED: std::sync::LazyLock<Arc<std::sync::atomic::AtomicUsize>> =
    std::sync::LazyLock::new(|| Arc::new(std::sync::atomic::AtomicUsize::new(0)));

/// Makes SIGINT and SIGTERM stop a replay between two lines instead of killing it: the
/// windows and blocks handed to the writer are finished and renamed, so no temporary file
/// or block directory is left (docs/backfill.md). A second signal takes its default action
/// at once.
pub fn stop_on_signals() -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let asked = Arc::new(AtomicBool::new(false));
    for signal in [SIGINT, SIGTERM] {
        // Registered first, so it runs before `asked` is set: the first signal only asks.
        signal_hook::flag::register_conditional_default(signal, asked.clone())?;
        signal_hook::flag::register_usize(signal, INTERRUPTED.clone(), signal as usize)?;
        signal_hook::flag::register(signal, asked.clone())?;
    }
    Ok(())
}

/// The signal that asked the replay to stop, if one did.
fn interrupted() -> Option<i32> {
    match INTERRUPTED.load(Ordering::Relaxed) {
        0 => None,
        signal => Some(i32::try_from(signal).unwrap_or(i32::MAX)),
    }
}

impl ReplayError {
    /// Ends the process for this error: exit 1, or, for an interruption, death by the same
    /// signal (its default action), so that a shell loop or a supervisor sees the signal and
    /// stops too, as it would for a command without handlers.
    pub fn exit(&self) -> std::process::ExitCode {
        if let ReplayError::Interrupted(signal) = self {
            // Returns only if the signal's default action does not end the process.
            let _ = signal_hook::low_level::emulate_default_handler(*signal);
        }
        std::process::ExitCode::from(1)
    }
}

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayError::Open(e) => write!(f, "cannot replay {e}"),
            ReplayError::Read(e) => write!(f, "{e:#}"),
            ReplayError::Interrupted(signal) => {
                let name = match *signal {
                    signal_hook::consts::SIGINT => "SIGINT",
                    signal_hook::consts::SIGTERM => "SIGTERM",
                    _ => "a signal",
                };
                write!(
                    f,
                    "interrupted by {name}: stopped before the end of the input; the window files \
                     and blocks written are whole, none is left temporary, and the windows not \
                     yet written were not: replay the same input again to finish"
                )
            }
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
        if let Some(signal) = interrupted() {
            return Err(ReplayError::Interrupted(signal));
        }
        match ordered.as_mut() {
            Some(o) => {
                let mut sinks = Sinks {
                    backfill: o.backfill.as_mut(),
                    loki: o.loki.as_mut(),
                };
                meter.physical_with(&path, &mut cursor, line, &mut sinks);
                if let Some(b) = o.backfill.as_mut() {
                    for w in b.take_ready() {
                        o.emitter.emit(w).map_err(ReplayError::Read)?;
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
    // An input that ended because its writer was stopped by the same Ctrl-C (`kubectl logs
    // … | tokenmeter replay -`) is not a complete input.
    if let Some(signal) = interrupted() {
        return Err(ReplayError::Interrupted(signal));
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
                if interrupted().is_some() {
                    return;
                }
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
                    // A closed channel: the replay stopped (an error, a signal), and reading
                    // the files after this one would be for nothing.
                    if sent.is_err() {
                        return;
                    }
                    if end {
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
    let owners = meter.store.owners().cloned();
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
                        part.store.set_owners(owners.clone());
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
/// options of docs/cli.md. The progress bar is drawn on stderr only when it is a terminal.
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
    let owners = config
        .owner_table()
        .map_err(|e| ReplayError::Read(anyhow::anyhow!("{e}")))?;
    // Each record is priced (and given its team, docs/owners.md) at its own event time: when
    // a price or an owner has a `from`, event times are tracked (the fallback of
    // docs/guarantees.md "Event time" to the previous record needs every record's).
    let time_dependent = prices.as_ref().is_some_and(|t| t.time_dependent())
        || owners.as_ref().is_some_and(|t| t.time_dependent());
    let event_times = if opts.needs_event_time() {
        EventTimes::Every
    } else if time_dependent {
        EventTimes::OnDemand
    } else {
        EventTimes::Off
    };
    let mut meter = Meter::new(config, event_times);
    meter.store.set_pricing(prices);
    meter.store.set_owners(owners);
    let wants_backfill = opts.from_ns.is_some()
        || opts.to_ns.is_some()
        || opts.openmetrics.is_some()
        || opts.tsdb.is_some()
        || opts.push;
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
        earliest_ns: match opts.tsdb {
            Some(_) => 0,
            None => i64::MIN,
        },
    };
    if wants_backfill {
        // Each record's cost goes into its step.
        meter.store.cost_per_record();
    }
    let mut backfill = wants_backfill.then(|| StepStream::new(shape, meter.extra_names().len()));
    let output = Output {
        openmetrics: opts.openmetrics.clone().map(|p| (p, opts.openmetrics_dir)),
        tsdb: opts.tsdb.clone(),
        push: opts.push,
        instance: opts.instance.clone(),
        step_ns: opts.step_ns,
        threaded: opts.jobs > 1,
        retry_for: opts.retry_for,
    };
    let mut emitter = Emitter::new(config, &output, meter.extra_names(), meter.store.currency())
        .map_err(ReplayError::Read)?;
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
    let reading = if opts.jobs > 1 && files > 1 && event_times != EventTimes::Every && !streams {
        count_in_parallel(
            config,
            inputs,
            opts.jobs,
            &mut meter,
            event_times,
            &read,
            &mut tick,
        )
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
        )
    } else {
        inputs.into_iter().try_for_each(|input| {
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
            )
        })
    };
    // A signal that came after the last line still stops the replay before its last windows:
    // it exits as interrupted, never as a success with part of what the input holds.
    let reading =
        reading.and_then(|()| interrupted().map_or(Ok(()), |s| Err(ReplayError::Interrupted(s))));
    if let Err(e) = reading {
        bar.finish_and_clear();
        if matches!(e, ReplayError::Interrupted(_)) {
            // The writer finishes what it was handed; if that failed, its error is the one
            // to report (a full disk), not the interruption.
            emitter.stop().map_err(ReplayError::Read)?;
        }
        return Err(e);
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
            emitter.emit(w).map_err(ReplayError::Read)?;
        }
        let written = emitter.finish().map_err(ReplayError::Read)?;
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

fn update_bar(bar: &ProgressBar, bytes: u64, lines: u64, started: Instant) {
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    bar.set_position(bytes);
    bar.set_message(format!("{lines} lines, {:.0} lines/s", lines as f64 / secs));
}

#[cfg(test)]
mod tests {
    use super::*;

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
