//! The Loki forwarder: every logical line of the tailed files to Loki, at least once from
//! the file, beside metering and never in its way.
//!
//! Owns: its own place in every file ([`TailCursor`] over the registry's descriptor, so no
//! second descriptor), an explicit per-file state ([`Forwarding`]: open, parked, behind)
//! keyed by [`FileId`], fed by the registry's [`FileEvent`]s, its own reopens of files the
//! registry closed while Loki was behind (through the one rule, [`reopen`], and the
//! registry's [`FileSystem`], backing off as the registry does), the batch being filled, the
//! one request in flight, and the acknowledged offsets it publishes for the state file. A
//! file's acknowledged offset moves only when Loki answers 2xx (or 4xx: rejected, counted,
//! dropped); a failure to open or read a file never moves it.
//!
//! Must not: decide which files exist (the registry does), read the counters, or block
//! metering: it runs on its own thread, pushes on the async runtime, and keeps taking
//! events while a push is retried, so its lag covers every file.
//!
//! Shutdown: after stop it reads the files to their ends and sends what is left until the
//! deadline; a request still in flight then is cancelled (its lines are in the files and
//! the saved offsets say where to resume).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::decode::{Decoded, LogicalLine};
use crate::export::loki::{stream_labels, Batch, EntryShaper, LokiClient, LokiStats, PushResult};
use crate::shutdown::Shutdown;
use crate::source::reopen::RETRY_FIRST;
use crate::source::{
    check_open, reopen, Backoff, DescriptorCount, FileEvent, FileId, FileIdentity, FilePosition,
    FileSystem, PodLabels, RealFs, Reopened, SharedFile, TailCursor, Truncation, Verdict,
};

/// Lines read per file per round, so one busy file does not starve the others.
const LINES_PER_ROUND: usize = 2048;
/// How long the loop waits for an event when there is nothing to do.
const IDLE_WAIT: Duration = Duration::from_millis(50);

/// One file's forwarding state.
enum Forwarding {
    /// Holds the file's descriptor and reads it. `release`: the registry closed the file
    /// (idle or let go); the descriptor is dropped once everything read is delivered.
    Open {
        cursor: Box<TailCursor>,
        release: bool,
        /// Forgotten by the registry (deleted): removed once delivered.
        forgotten: bool,
    },
    /// No descriptor, and nothing the forwarder knows of is left to read: everything read
    /// was delivered up to `acked`. The registry's next `Opened` continues it.
    Parked,
    /// No descriptor, and Loki is behind on it: the registry closed it (idle, or let go
    /// after it left the globs) before everything was read. The forwarder reopens it itself
    /// through the one [`reopen`] rule, when a descriptor is free and `retry` allows, so a
    /// Loki outage never holds descriptors that metering needs. A failure to open (EACCES,
    /// EMFILE, not found for now) keeps its place and waits longer; only the registry's
    /// `Forgotten` ends it.
    Behind { retry: Backoff },
}

struct FileFwd {
    identity: FileIdentity,
    path: PathBuf,
    stream: String,
    /// Every line before it was accepted by Loki.
    acked: u64,
    /// End of the last line put into the batch being filled or in flight (a committed
    /// offset of the file; reading resumes there).
    batched: u64,
    /// Size last seen, for the lag of a file without a descriptor.
    size: u64,
    /// Bumped when the file is read again from 0, so an answer for lines of the old
    /// content does not move the new offset.
    generation: u32,
    state: Forwarding,
}

/// What the state writer and the server read.
#[derive(Default)]
pub struct ForwarderStatus {
    pub stats: LokiStats,
    positions: Mutex<Vec<FilePosition>>,
}

impl ForwarderStatus {
    /// Where Loki has accepted every line, per file: saved beside the metering offsets.
    pub fn positions(&self) -> Vec<FilePosition> {
        self.positions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Where the lines read go: the batch being filled (or, in the tests, a model of Loki).
trait Sink {
    /// No room for more lines this round.
    fn full(&self) -> bool;
    fn line(&mut self, id: FileId, stream: &str, decoded: Decoded<'_>);
}

/// An answer of Loki for a batch: the offset each file reaches once it is accepted.
type Marks = Vec<(FileId, u32, u64)>;

/// Every file the forwarder follows, each in its explicit [`Forwarding`] state, and its own
/// reopens: the part of the forwarder that reads files, apart from Loki (so the model tests
/// drive it through the registry's fault-injecting file system without a network).
struct Files {
    files: BTreeMap<FileId, FileFwd>,
    /// The registry's file system (faults are injected through it in the tests).
    fs: Box<dyn FileSystem>,
    /// The registry's descriptor count and ceiling, which the forwarder's own reopens obey.
    descriptors: DescriptorCount,
    max_open_files: usize,
    max_line_bytes: usize,
    /// Lines read per file per round ([`LINES_PER_ROUND`]; fewer in the model tests).
    lines_per_round: usize,
    /// First delay before a failed reopen is tried again (doubling, as the registry's).
    retry_first: Duration,
    config: Config,
    node: String,
    status: Arc<ForwarderStatus>,
}

/// A file the forwarder reads alone (no registry descriptor) found truncated or rewritten:
/// what Loki did not have of it is gone (returned as (path, bytes) to count lost), its
/// descriptor is let go, and never is a byte of the new content read at the old offset. If
/// the registry reads it again, its `Opened` brings the new content from where metering
/// starts, so the new content goes through the registry's one decision.
fn park_truncated(f: &mut FileFwd, why: Truncation, when: &str) -> (String, u64) {
    let read_to = match &f.state {
        Forwarding::Open { cursor, .. } => cursor.read_to(),
        Forwarding::Parked | Forwarding::Behind { .. } => f.size,
    };
    let bytes = read_to.max(f.size).saturating_sub(f.acked);
    tracing::info!(
        "{}: {} {when}; {bytes} bytes not forwarded",
        f.path.display(),
        match why {
            Truncation::Shrunk { .. } => "truncated",
            Truncation::Rewritten => "rewritten",
        },
    );
    f.acked = 0;
    f.batched = 0;
    f.size = 0;
    f.generation = f.generation.wrapping_add(1);
    f.state = Forwarding::Parked;
    (f.path.display().to_string(), bytes)
}

impl Files {
    fn new(
        config: &Config,
        node: &str,
        saved: Vec<FilePosition>,
        status: Arc<ForwarderStatus>,
        (descriptors, max_open_files): (DescriptorCount, usize),
    ) -> Files {
        let files = saved
            .into_iter()
            .map(|p| {
                let labels = PodLabels::from_path(&p.path);
                (
                    p.identity.id(),
                    FileFwd {
                        stream: stream_labels(config, node, labels.as_ref()),
                        identity: p.identity,
                        path: p.path,
                        acked: p.offset,
                        batched: p.offset,
                        size: p.offset,
                        generation: 0,
                        // The registry reopens every file of its state it finds, and its
                        // `Opened` continues this one at `acked`.
                        state: Forwarding::Parked,
                    },
                )
            })
            .collect();
        Files {
            files,
            fs: Box::new(RealFs),
            descriptors,
            max_open_files,
            max_line_bytes: config.source.max_line_bytes,
            lines_per_round: LINES_PER_ROUND,
            retry_first: RETRY_FIRST,
            config: config.clone(),
            node: node.to_string(),
            status,
        }
    }

    fn apply(&mut self, ev: FileEvent) {
        match ev {
            FileEvent::Opened {
                identity,
                path,
                labels,
                file,
                committed,
            } => self.opened(identity, path, labels, file, committed),
            FileEvent::Closed { id, left, path } => self.closed(id, left, path),
            FileEvent::Truncated { id } => {
                let Some(f) = self.files.get_mut(&id) else {
                    return;
                };
                let read_to = match &f.state {
                    Forwarding::Open { cursor, .. } => cursor.read_to(),
                    Forwarding::Parked | Forwarding::Behind { .. } => f.size,
                };
                let lost = read_to.max(f.size).saturating_sub(f.acked);
                let path = f.path.display().to_string();
                f.acked = 0;
                f.batched = 0;
                f.size = 0;
                f.generation = f.generation.wrapping_add(1);
                match &mut f.state {
                    Forwarding::Open { cursor, .. } => {
                        cursor.restart(0);
                        if let Ok(identity) = FileIdentity::read(cursor.file().file()) {
                            f.identity = identity;
                        }
                    }
                    // Nothing of the old content is left to read; the registry's `Opened`
                    // brings the new one.
                    state => *state = Forwarding::Parked,
                }
                self.lost(&path, lost);
            }
            FileEvent::Forgotten { id } => {
                let remove = match self.files.get_mut(&id) {
                    Some(FileFwd {
                        state:
                            Forwarding::Open {
                                forgotten, release, ..
                            },
                        ..
                    }) => {
                        *forgotten = true;
                        *release = true;
                        false
                    }
                    Some(_) => true,
                    None => false,
                };
                if remove {
                    self.files.remove(&id);
                }
                self.release_delivered();
            }
        }
    }

    /// The registry opened a descriptor: a file without one continues at its own place when
    /// the one rule says it is the same file ([`check_open`]), from 0 when it shrank, and as a
    /// new file (where metering starts) when its first bytes are not those it had.
    fn opened(
        &mut self,
        identity: FileIdentity,
        path: PathBuf,
        labels: Option<PodLabels>,
        file: SharedFile,
        committed: u64,
    ) {
        let id = identity.id();
        let stream = stream_labels(&self.config, &self.node, labels.as_ref());
        let max = self.max_line_bytes;
        /// Where a known file goes on.
        enum Resume {
            /// Being read already, through this same descriptor.
            Reading,
            At(u64),
            /// Not the file this place was for.
            New,
        }
        if let Some(f) = self.files.get_mut(&id) {
            let resume = match &mut f.state {
                Forwarding::Open {
                    release, forgotten, ..
                } => {
                    *release = false;
                    *forgotten = false;
                    Resume::Reading
                }
                Forwarding::Parked | Forwarding::Behind { .. } => {
                    match check_open(file.file(), &f.identity, f.batched) {
                        Verdict::Continue { .. } => Resume::At(f.batched),
                        // The registry has just confirmed it by its identity: a read that
                        // fails now is no reason to lose this place.
                        Verdict::Unreadable { .. } => Resume::At(f.batched),
                        // Shrank while no descriptor was held: what was past `acked` is
                        // unknown; the new content is read from 0.
                        Verdict::Restart {
                            why: Truncation::Shrunk { .. },
                            ..
                        } => Resume::At(0),
                        // Other first bytes (a reused inode): a new file to the forwarder.
                        Verdict::Restart { .. } | Verdict::OtherFile => Resume::New,
                    }
                }
            };
            match resume {
                Resume::Reading => {
                    f.path = path;
                    f.stream = stream;
                    f.identity = identity;
                    return;
                }
                Resume::At(at) => {
                    let lost = f.size.max(f.batched).saturating_sub(f.acked);
                    if at != f.batched {
                        f.acked = at;
                        f.batched = at;
                        f.generation = f.generation.wrapping_add(1);
                        let path = f.path.display().to_string();
                        self.lost(&path, lost);
                    }
                    let Some(f) = self.files.get_mut(&id) else {
                        return;
                    };
                    f.path = path;
                    f.stream = stream;
                    f.identity = identity;
                    f.size = file.size().unwrap_or(f.size);
                    f.state = Forwarding::Open {
                        cursor: Box::new(TailCursor::new(file, at, max)),
                        release: false,
                        forgotten: false,
                    };
                    return;
                }
                Resume::New => {}
            }
        }
        // New to the forwarder (or a reused inode): start where metering starts.
        let generation = self
            .files
            .get(&id)
            .map_or(0, |f| f.generation.wrapping_add(1));
        self.files.insert(
            id,
            FileFwd {
                identity,
                path,
                stream,
                acked: committed,
                batched: committed,
                size: committed,
                generation,
                state: Forwarding::Open {
                    cursor: Box::new(TailCursor::new(file, committed, max)),
                    release: false,
                    forgotten: false,
                },
            },
        );
    }

    fn closed(&mut self, id: FileId, left: bool, path: PathBuf) {
        let held_deleted = self.held_deleted();
        let limit = self.max_open_files / 2;
        let retry_first = self.retry_first;
        let mut lost = None;
        if let Some(f) = self.files.get_mut(&id) {
            f.path = path;
            if let Forwarding::Open {
                release, cursor, ..
            } = &mut f.state
            {
                f.size = cursor.file().size().unwrap_or(f.size);
                let deleted = left && cursor.file().links().is_ok_and(|n| n == 0);
                if deleted && f.acked < f.size && held_deleted < limit {
                    // Deleted: its descriptor is the only way left to its lines; kept until
                    // they are delivered (at most half the ceiling is held so).
                    *release = true;
                } else if deleted && f.acked < f.size {
                    lost = Some((f.path.display().to_string(), f.size - f.acked));
                    f.acked = f.size;
                    f.batched = f.size;
                    f.state = Forwarding::Parked;
                } else if f.batched < f.size {
                    // Closed to free a descriptor, or let go while it still exists, before
                    // everything was read: give the descriptor back now and reopen it by
                    // identity later, so a Loki outage never holds descriptors metering needs.
                    f.state = Forwarding::Behind {
                        retry: Backoff::new(retry_first),
                    };
                } else {
                    f.state = Forwarding::Parked;
                }
            }
        }
        if let Some((path, bytes)) = lost {
            tracing::warn!(
                "{path}: deleted before Loki had {bytes} bytes of it, and too many deleted files are held already; counted as lost"
            );
            self.lost(&path, bytes);
        }
        self.release_delivered();
    }

    /// Deleted files whose descriptor the forwarder holds to deliver the rest.
    fn held_deleted(&self) -> usize {
        self.files
            .values()
            .filter(|f| {
                matches!(&f.state, Forwarding::Open { release: true, cursor, .. }
                    if cursor.file().links().is_ok_and(|n| n == 0))
            })
            .count()
    }

    fn lost(&self, path: &str, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut lost = self
            .status
            .stats
            .lost_bytes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let n = lost.entry(path.to_string()).or_insert(0);
        *n = n.saturating_add(bytes);
    }

    /// Drops the descriptors the registry closed once everything in them is delivered.
    fn release_delivered(&mut self) {
        let mut remove = Vec::new();
        for (id, f) in self.files.iter_mut() {
            let Forwarding::Open {
                cursor,
                release: true,
                forgotten,
            } = &f.state
            else {
                continue;
            };
            if cursor.at_end() && f.acked == f.batched && cursor.committed() == f.batched {
                f.size = cursor.file().size().unwrap_or(f.size);
                if *forgotten {
                    remove.push(*id);
                } else {
                    f.state = Forwarding::Parked;
                }
            }
        }
        for id in remove {
            self.files.remove(&id);
        }
    }

    /// Reopens, through the one [`reopen`] rule, files the registry closed while Loki was
    /// behind on them, as long as descriptors are free under the ceiling and their backoff
    /// allows.
    fn reopen_behind(&mut self) {
        let max = self.max_line_bytes;
        let now = Instant::now();
        // At most a quarter of the ceiling is held by the forwarder's own reopens, so even
        // while a push keeps failing metering keeps the rest.
        let share = (self.max_open_files / 4).max(1);
        let mut own = self
            .files
            .values()
            .filter(|f| matches!(f.state, Forwarding::Open { release: true, .. }))
            .count();
        let mut wanted = 0;
        let mut lost = Vec::new();
        for f in self.files.values_mut() {
            let Forwarding::Behind { retry } = &mut f.state else {
                continue;
            };
            if own >= share {
                break;
            }
            if !retry.due(now) {
                continue;
            }
            if self.descriptors.open() >= self.max_open_files {
                // The registry closes idle files for us at its next scan.
                wanted += 1;
                continue;
            }
            let mut found = reopen(self.fs.as_ref(), &f.path, &f.identity, f.batched);
            if let Reopened::Moved(path) = found {
                // Renamed beside its path (rotated again): follow it there.
                f.path = path;
                found = reopen(self.fs.as_ref(), &f.path, &f.identity, f.batched);
            }
            match found {
                Reopened::Continue { file, len } => {
                    let file = SharedFile::new(file, &self.descriptors);
                    own += 1;
                    f.size = len;
                    f.state = Forwarding::Open {
                        cursor: Box::new(TailCursor::new(file, f.batched, max)),
                        release: true,
                        forgotten: false,
                    };
                }
                Reopened::Restart { why, .. } => {
                    // Truncated or rewritten while no one held it: what Loki did not have is
                    // gone, and never is a byte of another content read at this offset.
                    lost.push(park_truncated(f, why, "while closed"));
                }
                // Cannot tell now, or not found for now: its place is kept, and it is tried
                // again later, less often while it keeps failing. Whether it is gone is the
                // registry's word (`Forgotten`).
                Reopened::Moved(_) | Reopened::NotThere => retry.failed(),
                Reopened::Unreadable { op, error } => {
                    tracing::debug!("{}: Loki reader: {op}: {error}; retried", f.path.display());
                    retry.failed();
                }
            }
        }
        self.descriptors.set_wanted(wanted);
        for (path, bytes) in lost {
            self.lost(&path, bytes);
        }
    }

    /// Reads lines into `sink` until it is full or every open file is read. Returns whether
    /// any line was read.
    fn read(&mut self, sink: &mut dyn Sink) -> bool {
        self.reopen_behind();
        // A file read through the forwarder's own descriptor (the registry let it go) has no
        // registry watching it: the one truncation rule is checked before reading on, or a
        // file truncated and grown past the offset again would be read from the middle of its
        // new content (found by the model test).
        let mut lost = Vec::new();
        for f in self.files.values_mut() {
            let Forwarding::Open {
                cursor,
                release: true,
                ..
            } = &f.state
            else {
                continue;
            };
            if let Ok(Some(why)) = cursor.truncation(&f.identity) {
                lost.push(park_truncated(f, why, "after the registry let it go"));
            }
        }
        for (path, bytes) in lost {
            self.lost(&path, bytes);
        }
        let mut any = false;
        for (id, f) in self.files.iter_mut() {
            if sink.full() {
                break;
            }
            let Forwarding::Open { cursor, .. } = &mut f.state else {
                continue;
            };
            let stream = &f.stream;
            let result = cursor.read(self.lines_per_round, |_, d| sink.line(*id, stream, d));
            match result {
                Ok(n) => any |= n > 0,
                Err(e) => tracing::warn!("{}: Loki reader: {e}", f.path.display()),
            }
            f.batched = cursor.committed();
        }
        any
    }

    fn all_read(&self) -> bool {
        self.files.values().all(|f| match &f.state {
            Forwarding::Open { cursor, .. } => cursor.at_end(),
            // Not reopened at shutdown: saved offsets say where to resume.
            Forwarding::Parked | Forwarding::Behind { .. } => true,
        })
    }

    /// The offset each file with lines in the batch reaches when Loki accepts it.
    fn marks(&self) -> Marks {
        self.files
            .iter()
            .filter(|(_, f)| f.batched != f.acked)
            .map(|(id, f)| (*id, f.generation, f.batched))
            .collect()
    }

    /// Loki accepted (or rejected for good) the batch these marks were taken for.
    fn acknowledge(&mut self, marks: Marks) {
        for (id, generation, end) in marks {
            if let Some(file) = self.files.get_mut(&id) {
                if file.generation == generation {
                    file.acked = file.acked.max(end);
                }
            }
        }
        self.release_delivered();
    }

    /// The acknowledged offsets, and the lag: every undelivered byte in the files.
    fn positions(&self) -> (Vec<FilePosition>, Vec<(String, u64)>) {
        let mut positions = Vec::with_capacity(self.files.len());
        let mut lag = Vec::with_capacity(self.files.len());
        for f in self.files.values() {
            let size = match &f.state {
                Forwarding::Open { cursor, .. } => cursor.file().size().unwrap_or(f.size),
                Forwarding::Parked | Forwarding::Behind { .. } => f.size,
            };
            positions.push(FilePosition {
                path: f.path.clone(),
                identity: f.identity.clone(),
                offset: f.acked,
                let_go_ns: None,
                unopened: false,
                align: false,
            });
            lag.push((f.path.display().to_string(), size.saturating_sub(f.acked)));
        }
        (positions, lag)
    }
}

/// A request on its way: the task, and the offset each file reaches when it is accepted.
struct InFlight {
    task: tokio::task::JoinHandle<Option<PushResult>>,
    entries: usize,
    bytes: usize,
    marks: Marks,
}

pub struct Forwarder {
    files: Files,
    events: Receiver<FileEvent>,
    status: Arc<ForwarderStatus>,
    client: Arc<LokiClient>,
    shaper: EntryShaper,
    config: Config,
    batch: Batch,
    in_flight: Option<InFlight>,
}

/// The batch being filled, as the [`Files`] see it.
struct BatchSink<'a> {
    shaper: &'a mut EntryShaper,
    batch: &'a mut Batch,
    stats: &'a LokiStats,
    batch_bytes: usize,
    now: i64,
}

impl Sink for BatchSink<'_> {
    fn full(&self) -> bool {
        self.batch.bytes >= self.batch_bytes
    }

    fn line(&mut self, _: FileId, stream: &str, d: Decoded<'_>) {
        if let Decoded::Line(LogicalLine { text, time_ns, .. }) = d {
            let shaped = self.shaper.shape(text);
            if shaped.truncated {
                self.stats.lines_truncated.fetch_add(1, Ordering::Relaxed);
            }
            if shaped.redaction_failed {
                self.stats
                    .redaction_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
            // docs/guarantees.md "Event time"; `run` falls back to the time of reading.
            let t = time_ns.or(shaped.record_time_ns).unwrap_or(self.now);
            self.batch.push(stream, t, shaped);
        }
    }
}

impl Forwarder {
    /// `saved`: the acknowledged offsets of the state file; `descriptors` and
    /// `max_open_files`: the registry's, shared.
    pub fn new(
        config: &Config,
        node: &str,
        client: LokiClient,
        events: Receiver<FileEvent>,
        saved: Vec<FilePosition>,
        status: Arc<ForwarderStatus>,
        descriptors: (DescriptorCount, usize),
    ) -> Self {
        Forwarder {
            files: Files::new(config, node, saved, status.clone(), descriptors),
            events,
            status,
            client: Arc::new(client),
            shaper: EntryShaper::new(config),
            config: config.clone(),
            batch: Batch::default(),
            in_flight: None,
        }
    }

    /// Replaces the file-system calls of the forwarder's own reopens (the registry's, so
    /// faults injected there reach both).
    pub fn with_fs(mut self, fs: Box<dyn FileSystem>) -> Self {
        self.files.fs = fs;
        self
    }

    /// Runs until shutdown is complete (everything delivered or the deadline passed).
    pub fn run(mut self, shutdown: &Shutdown, rt: &tokio::runtime::Handle) {
        let mut last_publish = Instant::now() - Duration::from_secs(1);
        loop {
            let stopping = shutdown.stopping();
            let mut busy = self.take_events();
            busy |= self.finish_push(rt);
            if stopping && shutdown.deadline_passed() {
                if let Some(f) = self.in_flight.take() {
                    f.task.abort();
                    tracing::warn!(
                        "shutdown deadline: a Loki batch of {} entries was not confirmed; it is sent again after the restart",
                        f.entries
                    );
                }
                self.publish();
                return;
            }
            if self.in_flight.is_none() {
                busy |= self.fill();
                let full = self.batch.bytes >= self.config.loki.batch_bytes;
                let old = self
                    .batch
                    .started
                    .is_some_and(|t| t.elapsed() >= self.config.loki.batch_wait.0);
                if !self.batch.is_empty() && (full || old || stopping) {
                    self.send(rt);
                    busy = true;
                } else if stopping && self.batch.is_empty() && self.files.all_read() {
                    self.publish();
                    return;
                }
            }
            if last_publish.elapsed() >= Duration::from_millis(200) || stopping {
                self.publish();
                last_publish = Instant::now();
            }
            if !busy {
                match self.events.recv_timeout(IDLE_WAIT) {
                    Ok(ev) => self.files.apply(ev),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => std::thread::sleep(IDLE_WAIT),
                }
            }
        }
    }

    fn take_events(&mut self) -> bool {
        let mut any = false;
        while let Ok(ev) = self.events.try_recv() {
            self.files.apply(ev);
            any = true;
        }
        any
    }

    /// Reads lines into the batch until it is full or every file is read.
    fn fill(&mut self) -> bool {
        let mut sink = BatchSink {
            shaper: &mut self.shaper,
            batch: &mut self.batch,
            stats: &self.status.stats,
            batch_bytes: self.config.loki.batch_bytes,
            now: crate::timefmt::now_ns(),
        };
        self.files.read(&mut sink)
    }

    fn send(&mut self, rt: &tokio::runtime::Handle) {
        let batch = std::mem::take(&mut self.batch);
        let body = batch.encode();
        let marks = self.files.marks();
        let client = self.client.clone();
        let status = self.status.clone();
        let bytes = body.len();
        let task = rt.spawn(async move { client.push(body, &status.stats, &|| false).await });
        self.in_flight = Some(InFlight {
            task,
            entries: batch.entries,
            bytes,
            marks,
        });
    }

    /// Applies the answer to the request in flight, once there is one.
    fn finish_push(&mut self, rt: &tokio::runtime::Handle) -> bool {
        if !self
            .in_flight
            .as_ref()
            .is_some_and(|f| f.task.is_finished())
        {
            return false;
        }
        let Some(f) = self.in_flight.take() else {
            return false;
        };
        let stats = &self.status.stats;
        match rt.block_on(f.task) {
            Ok(Some(PushResult::Accepted)) => {
                stats
                    .entries_sent
                    .fetch_add(f.entries as u64, Ordering::Relaxed);
                stats
                    .bytes_sent
                    .fetch_add(f.bytes as u64, Ordering::Relaxed);
                stats.batches_sent.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Some(PushResult::Rejected { status, message })) => {
                tracing::error!(
                    "Loki rejected a batch of {} entries: {status}: {}",
                    f.entries,
                    message.trim().chars().take(1000).collect::<String>()
                );
                stats
                    .entries_dropped_rejected
                    .fetch_add(f.entries as u64, Ordering::Relaxed);
            }
            Ok(None) | Err(_) => return true, // cancelled: nothing acknowledged
        }
        self.files.acknowledge(f.marks);
        true
    }

    /// Publishes the acknowledged offsets and the lag: every undelivered byte in the files.
    fn publish(&self) {
        let (positions, lag) = self.files.positions();
        *self
            .status
            .positions
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = positions;
        *self
            .status
            .stats
            .lag
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = lag;
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod model;
