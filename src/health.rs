//! What the running agent publishes about itself: narrow handles that the metering thread,
//! the exporters and the forwarder write, and the HTTP server reads.
//!
//! Owns: the counters' handle ([`MeterHandle`]: snapshots for readers, the lock for the one
//! writer), [`AgentStatus`] (readiness, the files' statuses, checkpoint and export counts) and
//! the metering loop's [`Heartbeat`] (what `/healthz` answers from).
//! Must not: start threads or know who writes what; readers never get the daemon itself.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use crate::aggregate::{SelfStats, Snapshot};
use crate::export::otlp::PushOutcome;
use crate::pipeline::Meter;
use crate::source::{FileStatus, RegistrySummary};

/// The counters: written by the metering thread only, read as published, immutable copies by
/// everyone else, so a reader never waits on (or holds) the lock the metering thread reads
/// files under.
///
/// After every poll the metering thread publishes the cheap facts ([`Published`]: lines,
/// self-counters, series count). The full [`Snapshot`] (a copy of every series, ~10 ms at
/// 50,000 series) is built on demand: a reader that finds the published one older than the
/// counters asks for a new one and waits for the next poll (at most [`SNAPSHOT_WAIT`], then
/// takes the last one published). Every reader of the same generation shares one copy.
#[derive(Clone)]
pub struct MeterHandle {
    meter: Arc<Mutex<Meter>>,
    shared: Arc<Publication>,
}

/// How long a reader waits for the metering thread to publish a fresher snapshot before it
/// serves the last one (a poll is 100 ms apart; a slow disk can make one longer).
pub const SNAPSHOT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

struct Publication {
    facts: ArcSwap<Published>,
    snapshot: tokio::sync::watch::Sender<Arc<Snapshot>>,
    /// A reader is waiting for a snapshot of the current generation.
    wanted: AtomicBool,
    /// Reading has stopped for good (shutdown) and the last snapshot is published.
    finished: AtomicBool,
}

/// What the metering thread publishes after every poll.
#[derive(Clone, Debug, Default)]
pub struct Published {
    /// How far the counters have moved (lines counted so far): equal generations, equal
    /// snapshots.
    pub generation: u64,
    pub stats: SelfStats,
    pub series: usize,
}

impl MeterHandle {
    pub fn new(meter: Meter) -> Self {
        let facts = Published {
            generation: meter.store.stats().lines(),
            stats: meter.store.stats().clone(),
            series: meter.store.series_count(),
        };
        let snapshot = Arc::new(meter.store.snapshot(meter.extra_names()));
        MeterHandle {
            meter: Arc::new(Mutex::new(meter)),
            shared: Arc::new(Publication {
                facts: ArcSwap::from_pointee(facts),
                snapshot: tokio::sync::watch::Sender::new(snapshot),
                wanted: AtomicBool::new(false),
                finished: AtomicBool::new(false),
            }),
        }
    }

    /// The facts of the last poll (no lock).
    pub fn published(&self) -> Arc<Published> {
        self.shared.facts.load_full()
    }

    /// A snapshot of the counters as of the last poll, shared by every reader of the same
    /// generation. Waits at most [`SNAPSHOT_WAIT`] for the metering thread.
    pub async fn snapshot(&self) -> Arc<Snapshot> {
        let mut rx = self.shared.snapshot.subscribe();
        let want = self.published().generation;
        if rx.borrow_and_update().stats.lines() == want {
            return rx.borrow().clone();
        }
        // Subscribed before asking: the publication that answers is seen by `changed`.
        self.shared.wanted.store(true, Ordering::SeqCst);
        let _ = tokio::time::timeout(SNAPSHOT_WAIT, rx.changed()).await;
        let snap = rx.borrow().clone();
        snap
    }

    /// The last snapshot after reading stopped (shutdown): waits until the metering thread
    /// has published it, at most until `deadline`, so the final push carries every line
    /// counted, the last poll's included.
    pub async fn final_snapshot(&self, deadline: tokio::time::Instant) -> Arc<Snapshot> {
        let mut rx = self.shared.snapshot.subscribe();
        while !self.shared.finished.load(Ordering::SeqCst) {
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                // The deadline passed (or the publisher is gone): the last one published.
                _ => break,
            }
        }
        let snap = rx.borrow().clone();
        snap
    }

    /// For the metering thread once reading has stopped: publishes the final snapshot.
    pub(crate) fn publish_final(&self, m: &Meter) {
        self.publish(m, true);
        self.shared.finished.store(true, Ordering::SeqCst);
        self.shared.snapshot.send_modify(|_| ());
    }

    /// For the one writer (the metering thread).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Meter> {
        // A poisoned lock means a panic mid-update on the metering thread, which aborts the
        // process anyway; reading what is there is the best a scrape can do.
        self.meter.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// For the metering thread, after a poll: publishes the cheap facts and, when a reader
    /// asked, a snapshot (`force`: whether or not anyone asked, e.g. when the counters first
    /// become servable).
    pub(crate) fn publish(&self, m: &Meter, force: bool) {
        let generation = m.store.stats().lines();
        if self.shared.facts.load().generation != generation || force {
            self.shared.facts.store(Arc::new(Published {
                generation,
                stats: m.store.stats().clone(),
                series: m.store.series_count(),
            }));
        }
        if self.shared.wanted.swap(false, Ordering::SeqCst) || force {
            let fresh = self.shared.snapshot.borrow().stats.lines() == generation;
            if fresh && !force {
                // Wake the readers: what is published is already current.
                self.shared.snapshot.send_modify(|_| ());
            } else {
                let snap = Arc::new(m.store.snapshot(m.extra_names()));
                self.shared.snapshot.send_replace(snap);
            }
        }
    }

    /// The counters as they are now, for the metering thread itself (the state file): the
    /// published snapshot when it is current, else a new one, which is published too.
    pub(crate) fn snapshot_now(&self) -> Arc<Snapshot> {
        let m = self.lock();
        let generation = m.store.stats().lines();
        let published = self.shared.snapshot.borrow().clone();
        if published.stats.lines() == generation {
            return published;
        }
        let snap = Arc::new(m.store.snapshot(m.extra_names()));
        self.shared.snapshot.send_replace(snap.clone());
        snap
    }
}

/// Counts of export attempts by outcome.
#[derive(Default)]
pub struct ExportStats {
    pub success: AtomicU64,
    pub rejected: AtomicU64,
    pub failed: AtomicU64,
}

impl ExportStats {
    pub fn record(&self, o: PushOutcome) {
        let c = match o {
            PushOutcome::Success => &self.success,
            PushOutcome::Rejected => &self.rejected,
            PushOutcome::Failed => &self.failed,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// The metering loop's heartbeat: beaten once per poll iteration (whether or not a line was
/// read, so an idle node is alive), read by `/healthz`. A loop that stops making progress (a
/// hung read, a deadlock, a dead thread) stops beating, and `/healthz` fails once the last beat
/// is older than `server.liveness_timeout`, so the kubelet restarts the pod.
pub struct Heartbeat {
    base: std::time::Instant,
    /// Milliseconds from `base` to the last beat.
    last_ms: AtomicU64,
}

impl Heartbeat {
    pub fn new() -> Self {
        Heartbeat {
            base: std::time::Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// For the metering loop: one iteration done.
    pub fn beat(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// How long ago the last beat was (monotonic clock).
    pub fn since_last(&self) -> std::time::Duration {
        let last = self.last_ms.load(Ordering::Relaxed);
        std::time::Duration::from_millis(self.now_ms().saturating_sub(last))
    }
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self::new()
    }
}

/// The agent's published status.
pub struct AgentStatus {
    pub node: String,
    pub start_time_ns: i64,
    /// State loaded and every file read to its end once: counters may be served.
    pub ready: AtomicBool,
    /// Shared, so a reader takes it without copying thousands of paths.
    files: Mutex<(Arc<Vec<FileStatus>>, RegistrySummary)>,
    formats: Mutex<Arc<HashMap<PathBuf, u8>>>,
    pub checkpoints_ok: AtomicU64,
    pub checkpoints_failed: AtomicU64,
    pub otlp: ExportStats,
    pub otlp_last_success_ns: AtomicU64,
    /// `pricing.file` reloads: applied, refused (the prices in force stayed).
    pub pricing_reloads: [AtomicU64; 2],
    /// Whether `pricing.file` is set: only then are its reloads exported (from 0).
    pub pricing_file: bool,
    /// `owners.file` reloads: applied, refused (the owners in force stayed).
    pub owners_reloads: [AtomicU64; 2],
    /// Whether `owners.file` is set: only then are its reloads exported (from 0).
    pub owners_file: bool,
    /// Beaten by the metering loop once per poll.
    pub heartbeat: Heartbeat,
}

impl AgentStatus {
    pub fn new(node: String, start_time_ns: i64) -> Self {
        AgentStatus {
            node,
            start_time_ns,
            ready: AtomicBool::new(false),
            files: Mutex::new((Arc::new(Vec::new()), RegistrySummary::default())),
            formats: Mutex::new(Arc::new(HashMap::new())),
            checkpoints_ok: AtomicU64::new(0),
            checkpoints_failed: AtomicU64::new(0),
            otlp: ExportStats::default(),
            otlp_last_success_ns: AtomicU64::new(0),
            pricing_reloads: Default::default(),
            pricing_file: false,
            owners_reloads: Default::default(),
            owners_file: false,
            heartbeat: Heartbeat::new(),
        }
    }

    /// This status with `pricing.file` and `owners.file` set or not: their reload counters are
    /// exported, from 0, only while they are.
    pub fn watching(mut self, pricing_file: bool, owners_file: bool) -> Self {
        self.pricing_file = pricing_file;
        self.owners_file = owners_file;
        self
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn publish_files(&self, files: Vec<FileStatus>, summary: RegistrySummary) {
        *self.files.lock().unwrap_or_else(|e| e.into_inner()) = (Arc::new(files), summary);
    }

    /// The formats records were read in, per file path (a bit per
    /// [`crate::parse::format::Format`]), for `/status`.
    pub fn publish_formats(&self, formats: HashMap<PathBuf, u8>) {
        *self.formats.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(formats);
    }

    pub fn formats(&self) -> Arc<HashMap<PathBuf, u8>> {
        self.formats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn files(&self) -> (Arc<Vec<FileStatus>>, RegistrySummary) {
        self.files.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The self-metrics' view of the agent, taken once per scrape or push.
pub fn agent_view(
    status: &AgentStatus,
    loki: Option<&crate::forwarder::ForwarderStatus>,
) -> crate::schema::AgentView {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (files, registry) = status.files();
    crate::schema::AgentView {
        files,
        registry,
        otlp: [
            load(&status.otlp.success),
            load(&status.otlp.rejected),
            load(&status.otlp.failed),
        ],
        checkpoints: [
            load(&status.checkpoints_ok),
            load(&status.checkpoints_failed),
        ],
        owners_reloads: status.owners_file.then(|| {
            [
                load(&status.owners_reloads[0]),
                load(&status.owners_reloads[1]),
            ]
        }),
        pricing_reloads: status.pricing_file.then(|| {
            [
                load(&status.pricing_reloads[0]),
                load(&status.pricing_reloads[1]),
            ]
        }),
        loki: loki.map(|l| {
            let s = &l.stats;
            let mut lag = std::collections::BTreeMap::new();
            for (p, n) in s.lag.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let slot: &mut u64 = lag.entry(p.clone()).or_insert(0);
                *slot = slot.saturating_add(*n);
            }
            crate::schema::LokiView {
                entries_sent: load(&s.entries_sent),
                entries_rejected: load(&s.entries_dropped_rejected),
                bytes_sent: load(&s.bytes_sent),
                retries: load(&s.retries),
                lines_truncated: load(&s.lines_truncated),
                redaction_failures: load(&s.redaction_failures),
                lost_bytes: s
                    .lost_bytes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
                lag,
            }
        }),
    }
}
