//! What the running agent publishes about itself: narrow handles that the metering thread,
//! the exporters and the forwarder write, and the HTTP server reads.
//!
//! Owns: the counters' handle ([`MeterHandle`]: snapshots for readers, the lock for the one
//! writer), and [`AgentStatus`] (readiness, the files' statuses, checkpoint and export counts).
//! Must not: start threads or know who writes what; readers never get the daemon itself.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::aggregate::{SelfStats, Snapshot};
use crate::export::otlp::PushOutcome;
use crate::pipeline::Meter;
use crate::source::{FileStatus, RegistrySummary};

/// The counters: written by the metering thread only, read as snapshots by everyone else.
/// Readers share one immutable snapshot while the counters have not moved, so concurrent
/// scrapes and pushes do not each copy every series.
#[derive(Clone)]
pub struct MeterHandle(Arc<Mutex<Meter>>, Arc<Mutex<SharedSnapshot>>);

/// The last snapshot handed out, with the generation it was taken at.
type SharedSnapshot = Option<(u64, Arc<Snapshot>)>;

impl MeterHandle {
    pub fn new(meter: Meter) -> Self {
        MeterHandle(Arc::new(Mutex::new(meter)), Arc::new(Mutex::new(None)))
    }

    /// How far the counters have moved (lines counted so far): equal generations, equal
    /// snapshots.
    pub fn generation(&self) -> u64 {
        self.lock().store.stats().lines()
    }

    /// A snapshot shared by every reader of the same generation.
    pub fn shared_snapshot(&self) -> Arc<Snapshot> {
        let m = self.lock();
        let generation = m.store.stats().lines();
        let mut cached = self.1.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((g, s)) = cached.as_ref() {
            if *g == generation {
                return s.clone();
            }
        }
        let s = Arc::new(m.store.snapshot(m.extra_names()));
        *cached = Some((generation, s.clone()));
        s
    }

    /// For the one writer (the metering thread).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Meter> {
        // A poisoned lock means a panic mid-update on the metering thread, which aborts the
        // process anyway; reading what is there is the best a scrape can do.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot(&self) -> Snapshot {
        let m = self.lock();
        m.store.snapshot(m.extra_names())
    }

    /// The self-counters alone (cheap: no copy of the series).
    pub fn stats(&self) -> SelfStats {
        self.lock().store.stats().clone()
    }

    pub fn series_count(&self) -> usize {
        self.lock().store.series_count()
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

/// The agent's published status.
pub struct AgentStatus {
    pub node: String,
    pub start_time_ns: i64,
    /// State loaded and every file read to its end once: counters may be served.
    pub ready: AtomicBool,
    /// Shared, so a reader takes it without copying thousands of paths.
    files: Mutex<(Arc<Vec<FileStatus>>, RegistrySummary)>,
    pub checkpoints_ok: AtomicU64,
    pub checkpoints_failed: AtomicU64,
    pub otlp: ExportStats,
    pub otlp_last_success_ns: AtomicU64,
}

impl AgentStatus {
    pub fn new(node: String, start_time_ns: i64) -> Self {
        AgentStatus {
            node,
            start_time_ns,
            ready: AtomicBool::new(false),
            files: Mutex::new((Arc::new(Vec::new()), RegistrySummary::default())),
            checkpoints_ok: AtomicU64::new(0),
            checkpoints_failed: AtomicU64::new(0),
            otlp: ExportStats::default(),
            otlp_last_success_ns: AtomicU64::new(0),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn publish_files(&self, files: Vec<FileStatus>, summary: RegistrySummary) {
        *self.files.lock().unwrap_or_else(|e| e.into_inner()) = (Arc::new(files), summary);
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
