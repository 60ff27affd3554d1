//! `tokenmeter run`: the daemon. Wiring of the tailer, the pipeline, the state file, the HTTP
//! server and the OTLP exporter, and the shutdown order.
//!
//! Threads: one metering thread owns the tailer and is the only writer of the counters, so
//! the state it saves (offsets + counters, taken between two polls) is a consistent cut. The
//! tokio runtime serves HTTP and pushes OTLP from snapshots; a slow or dead backend never
//! blocks reading.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::aggregate::Snapshot;
use crate::config::Config;
use crate::export::loki::{
    stream_labels, Batch, EntryShaper, LokiClient, LokiCursor, LokiStats, PushResult,
};
use crate::export::otlp::{build_request, OtlpClient, OtlpShape, PushOutcome};
use crate::pipeline::{physical_line_limit, FileCursor, Meter};
use crate::source::FileHandle;
use crate::source::{FileStatus, TailOptions, Tailer};
use crate::state::{self, FileState, Loaded, StateFile, STATE_VERSION};

/// Lines per file per poll: bounds how long the counters' lock is held.
const POLL_BUDGET: usize = 4096;
/// Sleep between polls when nothing was read.
const IDLE_SLEEP: Duration = Duration::from_millis(100);

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

/// What the metering thread publishes and the server and exporters read.
pub struct Shared {
    pub config: Config,
    pub node: String,
    pub start_time_ns: i64,
    meter: Mutex<Meter>,
    files: Mutex<Vec<FileStatus>>,
    pub bytes_read: AtomicU64,
    pub checkpoints_ok: AtomicU64,
    pub checkpoints_failed: AtomicU64,
    pub otlp: ExportStats,
    pub otlp_enabled: bool,
    pub otlp_last_success_ns: AtomicU64,
    pub ready: AtomicBool,
    pub stop: AtomicBool,
    /// Set once the final pushes are done (or given up), so the last state write includes
    /// the final Loki offsets.
    pub flushed: AtomicBool,
    pub loki_enabled: bool,
    pub loki: LokiStats,
    /// Files for the Loki forwarder's own cursor, published by the metering thread. A file
    /// stays listed until the forwarder has taken it, even if the tailer let go of it first
    /// (the forwarder may be busy retrying a push for longer than the tailer's grace).
    loki_handles: Mutex<Vec<FileHandle>>,
    /// Every file the forwarder has a cursor for, by (dev, inode). One the tailer let go of
    /// (rotated away, deleted) while Loki is behind is saved from here, so a restart finds it
    /// again by identity and forwards the rest.
    loki_taken: Mutex<std::collections::HashMap<(u64, u64), FileHandle>>,
    /// (dev, inode) → offset up to which Loki accepted every line.
    loki_offsets: Mutex<std::collections::HashMap<(u64, u64), u64>>,
}

impl Shared {
    fn meter(&self) -> MutexGuard<'_, Meter> {
        // A poisoned lock means a panic mid-update on the metering thread, which aborts the
        // process anyway; reading what is there is the best a scrape can do.
        self.meter.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn snapshot(&self) -> Snapshot {
        let m = self.meter();
        m.store.snapshot(m.extra_names())
    }

    /// The self-counters alone (cheap: no copy of the series).
    pub fn stats(&self) -> crate::aggregate::SelfStats {
        self.meter().store.stats().clone()
    }

    pub fn series_count(&self) -> usize {
        self.meter().store.series_count()
    }

    pub fn files(&self) -> Vec<FileStatus> {
        self.files.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Runs the daemon until SIGTERM/SIGINT; returns after the final push and state write.
pub fn run(config: Config) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let node = config.effective_node_name();
    let state_dir = config.state_dir.clone();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("state_dir {}: cannot create", state_dir.display()))?;
    let loaded =
        state::load(&state_dir).with_context(|| format!("state_dir {}", state_dir.display()))?;
    let mut meter = Meter::new(&config, false);
    let (saved_files, start_time_ns) = match loaded {
        Loaded::Fresh => {
            tracing::info!("no state in {}: first start", state_dir.display());
            (None, now_ns())
        }
        Loaded::Resumed(s) => {
            let extra = meter.extra_names().to_vec();
            meter.store.restore(&s.counters, &extra);
            tracing::info!(
                "resumed from {}: {} files, {} series",
                state::state_path(&state_dir).display(),
                s.files.len(),
                s.counters.series.len()
            );
            (Some(s.files), s.start_time_ns)
        }
        Loaded::Corrupt { error, moved_to } => {
            tracing::error!(
                "state file {} is unusable ({error}); moved to {} and starting fresh",
                state::state_path(&state_dir).display(),
                moved_to.display()
            );
            (None, now_ns())
        }
    };
    let cursor_config = config.clone();
    let tailer: Tailer<FileCursor> = Tailer::new(
        TailOptions {
            include: config.source.include.clone(),
            exclude: config.source.exclude.clone(),
            start_at: config.source.start_at,
            glob_interval: config.source.glob_interval.0,
            max_line: physical_line_limit(config.source.max_line_bytes),
        },
        saved_files,
        move || FileCursor::new(&cursor_config, None),
    )
    .context("source.include / source.exclude")?;
    let shared = Arc::new(Shared {
        otlp_enabled: !config.otlp.endpoint.is_empty(),
        loki_enabled: !config.loki.endpoint.is_empty(),
        config,
        node,
        start_time_ns,
        meter: Mutex::new(meter),
        files: Mutex::new(Vec::new()),
        bytes_read: AtomicU64::new(0),
        checkpoints_ok: AtomicU64::new(0),
        checkpoints_failed: AtomicU64::new(0),
        otlp: ExportStats::default(),
        otlp_last_success_ns: AtomicU64::new(0),
        ready: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        flushed: AtomicBool::new(false),
        loki: LokiStats::default(),
        loki_handles: Mutex::new(Vec::new()),
        loki_taken: Mutex::new(std::collections::HashMap::new()),
        loki_offsets: Mutex::new(std::collections::HashMap::new()),
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("tokenmeter-io")
        .build()?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&shared.config.server.listen))
        .with_context(|| format!("server.listen {}: cannot bind", shared.config.server.listen))?;
    tracing::info!("serving /metrics on http://{}", shared.config.server.listen);
    let server = runtime.spawn(crate::server::serve(listener, shared.clone()));

    let metering = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("tokenmeter-meter".into())
            .spawn(move || metering_loop(tailer, &shared, state_dir))?
    };

    let exporter = shared
        .otlp_enabled
        .then(|| OtlpClient::new(&shared.config))
        .transpose()
        .context("otlp")?
        .map(Arc::new);
    let pusher = exporter
        .clone()
        .map(|client| runtime.spawn(otlp_loop(client, shared.clone())));

    let loki = if shared.loki_enabled {
        let client = LokiClient::new(&shared.config).context("loki")?;
        let (shared, rt) = (shared.clone(), runtime.handle().clone());
        Some(
            std::thread::Builder::new()
                .name("tokenmeter-loki".into())
                .spawn(move || loki_loop(&shared, &client, &rt))?,
        )
    } else {
        None
    };

    runtime.block_on(wait_for_signal());
    tracing::info!("shutting down: stop reading, push once more, write state");
    let deadline = Instant::now() + shared.config.shutdown_timeout.0;
    shared.stop.store(true, Ordering::SeqCst);
    if let Some(l) = loki {
        if l.join().is_err() {
            tracing::error!("Loki forwarder panicked");
        }
    }
    // The metering thread finishes its poll; its final state write happens after the push
    // below has had its chance (see `metering_loop`).
    if let Some(p) = pusher {
        p.abort();
    }
    if let Some(client) = exporter.filter(|_| shared.ready.load(Ordering::SeqCst)) {
        let shared2 = shared.clone();
        let left = deadline.saturating_duration_since(Instant::now());
        runtime.block_on(async move {
            let req = build_request(
                &shared2.snapshot(),
                &OtlpShape::from_config(&shared2.config, &shared2.node),
                shared2.start_time_ns,
                now_ns(),
            );
            let outcome = client.push(&req, tokio::time::Instant::now() + left).await;
            shared2.otlp.record(outcome);
            tracing::info!("final OTLP push: {}", outcome.as_str());
        });
    }
    shared.flushed.store(true, Ordering::SeqCst);
    match metering.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!("metering: {e:#}"),
        Err(_) => tracing::error!("metering thread panicked"),
    }
    server.abort();
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn otlp_loop(client: Arc<OtlpClient>, shared: Arc<Shared>) {
    let interval = shared.config.otlp.interval.0;
    while !shared.ready.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shape = OtlpShape::from_config(&shared.config, &shared.node);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let req = build_request(&shared.snapshot(), &shape, shared.start_time_ns, now_ns());
        // Retry until the next push is due: that one carries the same counts and more.
        let outcome = client
            .push(&req, tokio::time::Instant::now() + interval)
            .await;
        shared.otlp.record(outcome);
        if outcome == PushOutcome::Success {
            shared
                .otlp_last_success_ns
                .store(now_ns() as u64, Ordering::Relaxed);
        }
    }
}

/// Tails, counts, publishes file statuses and writes the state; on stop, writes it once more.
fn metering_loop(
    mut tailer: Tailer<FileCursor>,
    shared: &Shared,
    state_dir: PathBuf,
) -> anyhow::Result<()> {
    let interval = shared.config.state.interval.0;
    let mut last_save = Instant::now();
    let mut last_publish = Instant::now() - Duration::from_secs(1);
    let mut first = true;
    loop {
        let stopping = shared.stop.load(Ordering::SeqCst);
        if !stopping {
            let n = {
                let mut meter = shared.meter();
                tailer.poll(POLL_BUDGET, |meta, cursor, line| {
                    meter.physical(&meta.path, cursor, line);
                    !cursor.decoder.is_pending()
                })
            };
            shared
                .bytes_read
                .store(tailer.bytes_read(), Ordering::Relaxed);
            if first || last_publish.elapsed() >= Duration::from_millis(200) {
                *shared.files.lock().unwrap_or_else(|e| e.into_inner()) = tailer.statuses();
                if shared.loki_enabled {
                    publish_handles(shared, tailer.handles());
                }
                last_publish = Instant::now();
            }
            // Ready once every file has been read to its end once: after a restart the
            // counters then include everything the previous run had exported, so nothing
            // exported ever goes backwards (the state may be up to state.interval old).
            if first && n == 0 {
                shared.ready.store(true, Ordering::SeqCst);
                tracing::info!(
                    "caught up with {} files; serving counters",
                    tailer.files_watched()
                );
                first = false;
            }
            if last_save.elapsed() >= interval {
                save_state(&mut tailer, shared, &state_dir);
                last_save = Instant::now();
            }
            if n == 0 {
                std::thread::sleep(IDLE_SLEEP);
            }
            continue;
        }
        // Stop reading; let the final push (on the runtime) take its turn, bounded by
        // shutdown_timeout, then write the state.
        let wait = shared
            .config
            .shutdown_timeout
            .0
            .min(Duration::from_millis(200));
        std::thread::sleep(wait);
        save_state(&mut tailer, shared, &state_dir);
        return Ok(());
    }
}

/// Publishes the tailer's files for the Loki forwarder, keeping those it has not taken yet.
fn publish_handles(shared: &Shared, mut handles: Vec<FileHandle>) {
    let taken = shared.loki_taken.lock().unwrap_or_else(|e| e.into_inner());
    let mut published = shared
        .loki_handles
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    for h in published.drain(..) {
        let listed = handles.iter().any(|n| (n.dev, n.ino) == (h.dev, h.ino));
        if !listed && !taken.contains_key(&(h.dev, h.ino)) {
            handles.push(h);
        }
    }
    *published = handles;
}

fn save_state(tailer: &mut Tailer<FileCursor>, shared: &Shared, dir: &std::path::Path) {
    // Between two polls on this thread: the offsets are exactly those of the counted lines.
    let mut files = tailer.positions();
    if shared.loki_enabled {
        let loki = shared
            .loki_offsets
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for f in &mut files {
            // Files the forwarder has not opened yet keep where it would start (their saved
            // Loki offset, else where metering started them).
            if let Some(o) = loki.get(&(f.identity.dev, f.identity.ino)) {
                f.loki_offset = Some(*o);
            }
        }
        // Files the tailer let go of while the forwarder is still behind: metering is done
        // (offset = size), forwarding resumes from what Loki accepted.
        let taken = shared.loki_taken.lock().unwrap_or_else(|e| e.into_inner());
        for (id, h) in taken.iter() {
            if files
                .iter()
                .any(|f| (f.identity.dev, f.identity.ino) == *id)
            {
                continue;
            }
            let Ok(meta) = h.file.metadata() else {
                continue;
            };
            let acked = loki.get(id).copied().unwrap_or(h.start);
            if acked < meta.len() {
                files.push(FileState {
                    path: h.meta.path.clone(),
                    identity: h.identity.clone(),
                    offset: meta.len(),
                    loki_offset: Some(acked),
                });
            }
        }
    } else {
        for f in &mut files {
            f.loki_offset = None;
        }
    }
    let state = StateFile {
        version: STATE_VERSION,
        saved_at_ns: now_ns(),
        start_time_ns: shared.start_time_ns,
        files,
        counters: shared.snapshot(),
    };
    match state::save(dir, &state) {
        Ok(()) => {
            shared.checkpoints_ok.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            shared.checkpoints_failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!("cannot write state in {}: {e}", dir.display());
        }
    }
}

/// The Loki forwarder: its own cursor per file, batches by size and age, one request in
/// flight, offsets advanced only when Loki answers. Runs until stop, then tries the batch in
/// hand once more (bounded by shutdown_timeout).
fn loki_loop(shared: &Shared, client: &LokiClient, rt: &tokio::runtime::Handle) {
    let cfg = &shared.config;
    let mut shaper = EntryShaper::new(cfg);
    let mut cursors: Vec<LokiCursor> = Vec::new();
    let batch_bytes = cfg.loki.batch_bytes;
    let batch_wait = cfg.loki.batch_wait.0;
    let stats = &shared.loki;
    loop {
        // Follow the tailer's files; a file it let go stays until it is delivered.
        let handles = shared
            .loki_handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for c in &mut cursors {
            c.present = handles
                .iter()
                .any(|h| (h.dev, h.ino) == (c.handle.dev, c.handle.ino));
        }
        for h in handles {
            if !cursors
                .iter()
                .any(|c| (c.handle.dev, c.handle.ino) == (h.dev, h.ino))
            {
                shared
                    .loki_taken
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((h.dev, h.ino), h.clone());
                let labels = stream_labels(cfg, &shared.node, h.meta.labels.as_ref());
                cursors.push(LokiCursor::new(h, labels, cfg.source.max_line_bytes));
            }
        }
        cursors.retain(|c| {
            let keep = c.present || !(c.at_end() && c.acked == c.batched);
            if !keep {
                let id = (c.handle.dev, c.handle.ino);
                shared
                    .loki_taken
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                shared
                    .loki_offsets
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
            }
            keep
        });
        publish_loki(shared, &cursors);

        let stopping = shared.stop.load(Ordering::SeqCst);
        let mut batch = Batch::default();
        loop {
            let before = batch.entries;
            for c in &mut cursors {
                c.fill(&mut batch, &mut shaper, stats, batch_bytes, 2048, now_ns());
            }
            let full = batch.bytes >= batch_bytes;
            let old = batch.started.is_some_and(|t| t.elapsed() >= batch_wait);
            if full || old || stopping || shared.stop.load(Ordering::SeqCst) {
                break;
            }
            if batch.entries == before {
                if batch.is_empty() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if batch.is_empty() {
            if stopping {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        let body = batch.encode();
        let deadline = Instant::now() + cfg.shutdown_timeout.0;
        let give_up =
            || shared.stop.load(Ordering::SeqCst) && (stopping || Instant::now() >= deadline);
        let result = rt.block_on(client.push(body.clone(), stats, &give_up));
        match result {
            Some(PushResult::Accepted) => {
                stats
                    .entries_sent
                    .fetch_add(batch.entries as u64, Ordering::Relaxed);
                stats
                    .bytes_sent
                    .fetch_add(body.len() as u64, Ordering::Relaxed);
                stats.batches_sent.fetch_add(1, Ordering::Relaxed);
            }
            Some(PushResult::Rejected { status, message }) => {
                tracing::error!(
                    "Loki rejected a batch of {} entries: {status}: {}",
                    batch.entries,
                    message.trim().chars().take(1000).collect::<String>()
                );
                stats
                    .entries_dropped_rejected
                    .fetch_add(batch.entries as u64, Ordering::Relaxed);
            }
            None => {
                tracing::warn!("shutting down with {} entries not delivered to Loki; they are sent after the restart", batch.entries);
                return;
            }
        }
        for c in &mut cursors {
            c.acked = c.batched;
        }
        publish_loki(shared, &cursors);
        if stopping {
            return;
        }
    }
}

fn publish_loki(shared: &Shared, cursors: &[LokiCursor]) {
    let mut offsets = shared
        .loki_offsets
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    for c in cursors {
        offsets.insert((c.handle.dev, c.handle.ino), c.acked);
    }
    drop(offsets);
    *shared.loki.lag.lock().unwrap_or_else(|e| e.into_inner()) = cursors
        .iter()
        .map(|c| {
            (
                c.handle.meta.path.display().to_string(),
                c.size().saturating_sub(c.acked),
            )
        })
        .collect();
}
