//! `tokenmeter run`: the daemon. Wiring of the registry, the pipeline, the state file, the
//! HTTP server, the OTLP exporter and the Loki forwarder, and the shutdown order.
//!
//! Threads: one metering thread owns the [`Registry`] and is the only writer of the counters,
//! so the state it saves (offsets + counters, taken between two reads) is a consistent cut.
//! The Loki forwarder runs on its own thread, fed by the registry's file events. The tokio
//! runtime serves HTTP and pushes OTLP from snapshots; a slow or dead backend never blocks
//! reading.
//!
//! Shutdown (two phases, one deadline = `shutdown_timeout` from the first signal):
//! 1. reading stops and the state is written at once, so a SIGKILL during the flush costs
//!    nothing;
//! 2. the OTLP push in flight is dropped (the final push carries newer cumulative values) and
//!    the final push gets what is left of the deadline; the Loki forwarder sends what is left
//!    in the files until the deadline and cancels its request in flight then (its lines are
//!    still in the files, its saved offsets say where to resume); then the state is written
//!    again with the forwarder's final offsets. A second signal moves the deadline to now.
//!    Exit 1 if that last write failed.
//!
//! Liveness: the metering loop beats [`crate::health::Heartbeat`] once per poll, and `/healthz`
//! fails once the last beat is older than `server.liveness_timeout`. A panic on any thread ends
//! the process (`panic = "abort"` in the release profile, and [`abort_on_panic`] for every
//! build), so a dead metering thread restarts the pod instead of leaving frozen counters
//! behind a green probe. Debug builds have a fault hook for the tests ([`injected_fault`]).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::Config;
use crate::export::loki::LokiClient;
use crate::export::otlp::{counter_points, OtlpClient, OtlpShape, PushOutcome, Requests, ZeroBook};
use crate::forwarder::{Forwarder, ForwarderStatus};
use crate::health::{agent_view, AgentStatus, MeterHandle};
use crate::pipeline::{EventTimes, Meter};
use crate::schema::View;
use crate::server::ServerContext;
use crate::shutdown::Shutdown;
use crate::source::{FilePosition, Registry, RegistryOptions};
use crate::state::{self, Loaded, StateFile, STATE_VERSION};
use crate::timefmt::now_ns;

/// Lines per file per read: bounds how long the counters' lock is held.
const POLL_BUDGET: usize = 4096;
/// Sleep between reads when nothing was read.
const IDLE_SLEEP: Duration = Duration::from_millis(100);
/// How often file statuses are published for `/status` and the metrics while idle.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// The forwarder's name in the state file.
const LOKI: &str = "loki";

/// Runs the daemon until SIGTERM/SIGINT; returns after the final state write.
pub fn run(config: Config) -> anyhow::Result<()> {
    abort_on_panic();
    tune_allocator();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let node = config.effective_node_name();
    let state_dir = config.state_dir.clone();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("state_dir {}: cannot create", state_dir.display()))?;
    let _lock = state::lock(&state_dir)?;
    let loaded =
        state::load(&state_dir).with_context(|| format!("state_dir {}", state_dir.display()))?;
    let mut meter = Meter::new(&config, EventTimes::Off);
    // Prices first: restored cost continues only in the currency it was counted in. The
    // price file's version is taken before it is read, so a change in between is reloaded.
    let price_watch = PriceFileWatch::new(&config);
    let prices = config.price_table().context("pricing")?;
    // Owners the same way (docs/owners.md), before the state: restored teams need them on.
    let owners_watch = OwnersFileWatch::new(&config);
    let owners = config.owner_table().context("owners")?;
    if let Some(t) = &owners {
        tracing::info!("owners: {} teams from {}", t.teams(), config.owners.file);
    }
    meter.store.set_owners(owners);
    if let Some(t) = &prices {
        tracing::info!(
            "pricing: {} price entries in {}{}",
            t.entries(),
            t.currency(),
            price_source(&config)
        );
    }
    meter.store.set_pricing(prices);
    let (saved, start_time_ns) = match loaded {
        Loaded::Fresh => {
            tracing::info!("no state in {}: first start", state_dir.display());
            (None, now_ns())
        }
        Loaded::Resumed(s) => {
            let extra = meter.extra_names().to_vec();
            if s.counters.currency.is_some()
                && meter.store.currency().is_some()
                && s.counters.currency.as_deref() != meter.store.currency()
            {
                tracing::warn!(
                    "the saved cost is in {} and pricing.currency is now {}: cost counters restart",
                    s.counters.currency.as_deref().unwrap_or("-"),
                    meter.store.currency().unwrap_or("(pricing off)")
                );
            }
            meter.store.restore(&s.counters, &extra);
            tracing::info!(
                "resumed from {}: {} files, {} series",
                state::state_path(&state_dir).display(),
                s.files.len(),
                s.counters.series.len()
            );
            let start = s.start_time_ns;
            (Some(*s), start)
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
    let (saved_files, mut saved_forwarders) = match saved {
        Some(s) => (Some(s.files), s.forwarders),
        None => (None, Default::default()),
    };
    // A forwarder's position is only worth keeping for a file the registry still knows: the
    // others were forgotten (deleted, or remembered long enough) and can never be read again.
    if let Some(files) = &saved_files {
        let known: std::collections::HashSet<_> = files.iter().map(|f| f.identity.id()).collect();
        for positions in saved_forwarders.values_mut() {
            positions.retain(|p| known.contains(&p.identity.id()));
        }
    }

    let soft_limit = raise_nofile_limit();
    let max_open_files = config.source.effective_max_open_files(soft_limit);
    tracing::info!(
        "descriptor limit {soft_limit}: at most {max_open_files} log files open at once"
    );
    let loki_enabled = !config.loki.endpoint.is_empty();
    let (events_tx, events_rx) = mpsc::channel();
    let registry = Registry::new(
        RegistryOptions {
            include: config.source.include.clone(),
            exclude: config.source.exclude.clone(),
            start_at: config.source.start_at,
            glob_interval: config.source.glob_interval.0,
            max_line_bytes: config.source.max_line_bytes,
            max_open_files,
            remember_for: config.source.remember_for.0,
            let_go_after: (config.source.glob_interval.0 * 2).max(Duration::from_secs(2)),
            retry_first: crate::source::reopen::RETRY_FIRST,
            dormant_after: Duration::from_secs(10),
        },
        saved_files,
        loki_enabled.then_some(events_tx),
    )
    .context("source.include / source.exclude")?;

    let descriptors = (registry.descriptors(), max_open_files);
    let meter = MeterHandle::new(meter);
    let status = Arc::new(AgentStatus::new(node.clone(), start_time_ns).watching(
        !config.pricing.file.is_empty(),
        !config.owners.file.is_empty(),
    ));
    let shutdown = Arc::new(Shutdown::default());
    let loki_status = loki_enabled.then(|| Arc::new(ForwarderStatus::default()));

    // Two I/O workers: one can be busy writing an 18 MB /metrics body into slow sockets while
    // the other answers /healthz and pushes (p99 of /healthz under 16 scrapers: 46–52 ms with
    // one worker, 23 ms with two; BENCHMARKS.md). Reading and counting have their own thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("tokenmeter-io")
        .build()?;
    // Listened to from here on: a SIGTERM during start-up is not the default (abrupt) exit.
    let mut signals = runtime.block_on(async { Signals::new() });
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&config.server.listen))
        .with_context(|| format!("server.listen {}: cannot bind", config.server.listen))?;
    tracing::info!("serving /metrics on http://{}", config.server.listen);
    let server = runtime.spawn(crate::server::serve(
        listener,
        ServerContext {
            meter: meter.clone(),
            status: status.clone(),
            loki: loki_status.clone(),
            metrics: config.metrics.clone(),
            otlp_endpoint: crate::endpoint::display_endpoint(&config.otlp.endpoint),
            loki_endpoint: crate::endpoint::display_endpoint(&config.loki.endpoint),
            budgets: crate::schema::budget_views(&config.budgets),
            liveness_timeout: config.server.liveness_timeout.0,
        },
    ));

    let flushed = Arc::new(AtomicBool::new(false));
    let metering = {
        let watches = Watches {
            prices: price_watch,
            owners: owners_watch,
        };
        let saver = StateSaver {
            dir: state_dir,
            meter: meter.clone(),
            status: status.clone(),
            loki: loki_status.clone(),
        };
        let (status, shutdown, flushed) = (status.clone(), shutdown.clone(), flushed.clone());
        let interval = config.state.interval.0;
        std::thread::Builder::new()
            .name("tokenmeter-meter".into())
            .spawn(move || {
                metering_loop(
                    registry, watches, &saver, &status, &shutdown, &flushed, interval,
                )
            })?
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let pusher = if config.otlp.endpoint.is_empty() {
        None
    } else {
        let client = OtlpClient::new(&config).context("otlp")?;
        let source = OtlpSource {
            meter: meter.clone(),
            status: status.clone(),
            loki: loki_status.clone(),
            shape: OtlpShape::from_config(&config, &node),
            budgets: crate::schema::budget_views(&config.budgets),
            self_metrics: config.otlp.self_metrics,
            zeros: Default::default(),
        };
        Some(runtime.spawn(otlp_loop(
            client,
            source,
            config.otlp.interval.0,
            shutdown.clone(),
            stop_rx,
        )))
    };

    let forwarder = match &loki_status {
        Some(loki_status) => {
            let client = LokiClient::new(&config).context("loki")?;
            let forwarder = Forwarder::new(
                &config,
                &node,
                client,
                events_rx,
                saved_forwarders.remove(LOKI).unwrap_or_default(),
                loki_status.clone(),
                descriptors,
            );
            let (shutdown, rt) = (shutdown.clone(), runtime.handle().clone());
            Some(
                std::thread::Builder::new()
                    .name("tokenmeter-loki".into())
                    .spawn(move || forwarder.run(&shutdown, &rt))?,
            )
        }
        None => None,
    };

    runtime.block_on(signals.next());
    let timeout = config.shutdown_timeout.0;
    tracing::info!(
        "shutting down: reading stops, exports flush within {}",
        humantime::format_duration(timeout)
    );
    shutdown.begin(timeout);
    let _ = stop_tx.send(true);
    {
        let shutdown = shutdown.clone();
        runtime.spawn(async move {
            signals.next().await;
            tracing::warn!("second signal: writing the state and exiting now");
            shutdown.begin(Duration::ZERO);
        });
    }
    // Phase 2: the exports, bounded by the deadline.
    if let Some(p) = pusher {
        while !p.is_finished() && !shutdown.deadline_passed() {
            std::thread::sleep(Duration::from_millis(10));
        }
        p.abort();
    }
    if let Some(f) = forwarder {
        if f.join().is_err() {
            tracing::error!("Loki forwarder panicked");
        }
    }
    flushed.store(true, Ordering::SeqCst);
    let final_write = metering.join();
    server.abort();
    runtime.shutdown_background();
    match final_write {
        Ok(true) => Ok(()),
        Ok(false) => anyhow::bail!("the final state could not be written (see above)"),
        Err(_) => anyhow::bail!("the metering thread panicked; the state is the last one written"),
    }
}

/// Every panic ends the process, after the default hook has printed it: the same in debug
/// builds (tests) as with the release profile's `panic = "abort"`. A thread that died while the
/// others go on would leave frozen counters behind a healthy-looking agent; a restart resumes
/// from the last state file instead (nothing counted twice, nothing lost).
fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        eprintln!("tokenmeter: a thread panicked; aborting so the agent restarts");
        std::process::abort();
    }));
}

/// Debug builds only: faults the tests inject into the metering loop.
/// `TOKENMETER_FAULT_METERING=<file>`: while `<file>` holds `stall`, the loop stops making
/// progress (no reading, no heartbeat); when it holds `panic`, the metering thread panics.
#[cfg(debug_assertions)]
fn injected_fault(shutdown: &Shutdown) {
    let Some(path) = std::env::var_os("TOKENMETER_FAULT_METERING") else {
        return;
    };
    let read = || std::fs::read_to_string(&path).unwrap_or_default();
    match read().trim() {
        "panic" => panic!("injected fault: TOKENMETER_FAULT_METERING=panic"),
        "stall" => {
            tracing::warn!("injected fault: the metering loop stalls");
            while read().trim() == "stall" && !shutdown.stopping() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        _ => {}
    }
}

#[cfg(not(debug_assertions))]
fn injected_fault(_: &Shutdown) {}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (as most agents do) and returns it.
fn raise_nofile_limit() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
    }
    rl.rlim_cur
}

/// SIGTERM and SIGINT, listened to from the start: a signal that comes while the daemon is
/// between two waits (e.g. a second one right after the first) is kept, not lost.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    async fn next(&mut self) {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = recv(&mut self.term) => {}
            _ = recv(&mut self.int) => {}
        }
    }
}

/// glibc's malloc keeps the memory of big, short-lived buffers (a 17 MB `/metrics` body, a
/// snapshot of 50,000 series) in per-thread arenas, and raises its mmap threshold each time
/// such a buffer is freed, so later ones come from the heap and stay there: the RSS ratchets
/// up under concurrent scrapes (measured at 50,000 series and 16 scrapers: 111 MiB peak
/// without this, 84 MiB with it; BENCHMARKS.md). Two arenas and a fixed 256 KiB threshold give
/// big buffers back to the kernel when freed. `MALLOC_ARENA_MAX` / `MALLOC_MMAP_THRESHOLD_` in
/// the environment still win.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: mallopt only sets malloc parameters; called before any thread starts.
            unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            // SAFETY: as above.
            unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024) };
        }
    }
}

/// Where the prices came from, for the log.
fn price_source(config: &Config) -> String {
    if config.pricing.file.is_empty() {
        String::new()
    } else {
        format!(" from {}", config.pricing.file)
    }
}

/// A file the metering thread checks every `source.glob_interval` (`pricing.file`,
/// `owners.file`): its version is (modification time, length, content hash), taken before it
/// is read, so a change in between is seen at the next check.
struct FileWatch {
    path: PathBuf,
    /// The version in force or last refused; `None` while the file cannot be read.
    seen: Option<(Option<std::time::SystemTime>, u64, u64)>,
    every: Duration,
    last_check: Instant,
}

/// What a check of a [`FileWatch`] found.
enum FileChange {
    /// Not checked yet, or the same version.
    Unchanged,
    /// It could be read before and cannot now (removed, unreadable): reported once.
    Gone,
    /// A new version (its content hash, for the log).
    Changed(u64),
}

impl FileWatch {
    fn new(path: &str, every: Duration) -> Self {
        let mut w = FileWatch {
            path: PathBuf::from(path),
            seen: None,
            every,
            last_check: Instant::now(),
        };
        w.seen = w.version();
        w
    }

    fn version(&self) -> Option<(Option<std::time::SystemTime>, u64, u64)> {
        let meta = std::fs::metadata(&self.path).ok()?;
        let text = std::fs::read(&self.path).ok()?;
        let hash = {
            use std::hash::Hasher;
            let mut h = rustc_hash::FxHasher::default();
            h.write(&text);
            h.finish()
        };
        Some((meta.modified().ok(), meta.len(), hash))
    }

    fn check(&mut self) -> FileChange {
        if self.last_check.elapsed() < self.every {
            return FileChange::Unchanged;
        }
        self.last_check = Instant::now();
        let now = self.version();
        match now {
            None if self.seen.is_some() => {
                self.seen = None;
                FileChange::Gone
            }
            None => FileChange::Unchanged,
            Some(_) if now == self.seen => FileChange::Unchanged,
            Some(v) => {
                self.seen = now;
                FileChange::Changed(v.2)
            }
        }
    }
}

/// `pricing.file`, watched by the metering thread: when its content changes, the new prices
/// apply to the records counted from then on. A file that cannot be read or is invalid keeps
/// the prices in force and is reported (log and `tokenmeter_pricing_reloads_total`), never
/// stopping metering.
struct PriceFileWatch {
    config: Config,
    file: FileWatch,
}

impl PriceFileWatch {
    fn new(config: &Config) -> Option<Self> {
        if config.pricing.file.is_empty() {
            return None;
        }
        Some(PriceFileWatch {
            config: config.clone(),
            file: FileWatch::new(&config.pricing.file, config.source.glob_interval.0),
        })
    }

    /// Checked every `source.glob_interval`; returns new prices when the file changed and
    /// is valid.
    fn poll(&mut self, status: &AgentStatus) -> Option<Option<Arc<crate::pricing::PriceTable>>> {
        let version = match self.file.check() {
            FileChange::Unchanged => return None,
            FileChange::Gone => {
                status.pricing_reloads[1].fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "pricing.file {}: cannot read; the prices in force stay",
                    self.config.pricing.file
                );
                return None;
            }
            FileChange::Changed(version) => version,
        };
        match self.config.price_table() {
            Ok(None) => {
                // Most likely a file caught half-written, or a ConfigMap key left empty:
                // turning cost off by accident would lose the cost of what follows.
                status.pricing_reloads[1].fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "pricing.file {} has no prices; the prices in force stay (remove pricing.file from the config to turn pricing off)",
                    self.config.pricing.file
                );
                None
            }
            Ok(table) => {
                status.pricing_reloads[0].fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    "pricing.file {} changed (version {version:016x}): {} price entries now in force",
                    self.config.pricing.file,
                    table.as_ref().map_or(0, |t| t.entries())
                );
                Some(table)
            }
            Err(e) => {
                status.pricing_reloads[1].fetch_add(1, Ordering::Relaxed);
                tracing::error!("{e}; the prices in force stay");
                None
            }
        }
    }
}

/// The files the metering thread reloads.
struct Watches {
    prices: Option<PriceFileWatch>,
    owners: Option<OwnersFileWatch>,
}

/// `owners.file` (docs/owners.md), watched like `pricing.file`: a valid new version applies to
/// the records counted from then on (and its budgets to the gauges); an invalid, unreadable
/// or removed file keeps the owners in force and is reported (log and
/// `tokenmeter_owners_reloads_total`).
struct OwnersFileWatch {
    config: Config,
    file: FileWatch,
}

impl OwnersFileWatch {
    fn new(config: &Config) -> Option<Self> {
        if config.owners.file.is_empty() {
            return None;
        }
        Some(OwnersFileWatch {
            config: config.clone(),
            file: FileWatch::new(&config.owners.file, config.source.glob_interval.0),
        })
    }

    /// Checked every `source.glob_interval`; returns the new owners when the file changed and
    /// is valid.
    fn poll(&mut self, status: &AgentStatus) -> Option<Arc<crate::owners::OwnerTable>> {
        let version = match self.file.check() {
            FileChange::Unchanged => return None,
            FileChange::Gone => {
                status.owners_reloads[1].fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "owners.file {}: cannot read; the owners in force stay",
                    self.config.owners.file
                );
                return None;
            }
            FileChange::Changed(version) => version,
        };
        match self.config.owner_table() {
            Ok(Some(table)) => {
                status.owners_reloads[0].fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    "owners.file {} changed (version {version:016x}): {} teams now in force",
                    self.config.owners.file,
                    table.teams()
                );
                Some(table)
            }
            Ok(None) => None,
            Err(e) => {
                status.owners_reloads[1].fetch_add(1, Ordering::Relaxed);
                tracing::error!("{e}; the owners in force stay");
                None
            }
        }
    }
}

/// What an OTLP push reads: the counters, the agent's status for the self-metrics, and the
/// request shape.
struct OtlpSource {
    meter: MeterHandle,
    status: Arc<AgentStatus>,
    loki: Option<Arc<ForwarderStatus>>,
    shape: OtlpShape,
    budgets: Vec<crate::schema::BudgetView>,
    self_metrics: bool,
    /// Which counter points carry a 0 (`export::otlp::ZeroBook`): its baseline is taken when
    /// the agent is ready, before the first push. Held for a whole push (an async lock), so a
    /// push dropped at shutdown leaves it as it was.
    zeros: tokio::sync::Mutex<Option<ZeroBook>>,
}

impl OtlpSource {
    /// One push: a snapshot, sent as requests of bounded size one after the other (each
    /// encoded just before it is sent). A failed request ends the push (the next one carries
    /// the same cumulative values); a rejected one is counted and the others still go.
    async fn push(
        &self,
        client: &OtlpClient,
        deadline: tokio::time::Instant,
        last: bool,
    ) -> PushOutcome {
        let mut zeros = self.zeros.lock().await;
        // Taken before the snapshot: a point not in it was 0 at this time.
        let taken_ns = now_ns();
        let snap = if last {
            self.meter.final_snapshot(deadline).await
        } else {
            self.meter.snapshot().await
        };
        let agent = agent_view(&self.status, self.loki.as_deref());
        let view =
            View::new(&snap, &self.shape.static_labels, Some(&agent)).with_budgets(&self.budgets);
        let book = zeros.get_or_insert_with(|| {
            // The first push: every point there now was there when the agent became ready.
            ZeroBook::baseline(
                counter_points(&view, &self.shape, self.self_metrics),
                taken_ns,
            )
        });
        let start = self.status.start_time_ns;
        let mut outcome = PushOutcome::Success;
        let mut outcomes = Vec::new();
        let requests = Requests::new(&view, &self.shape, start, now_ns(), self.self_metrics, book);
        for (req, offered) in requests {
            let pushed = client.push(&req, deadline).await;
            outcomes.push((offered, pushed == PushOutcome::Success));
            match pushed {
                PushOutcome::Success => {}
                PushOutcome::Rejected => outcome = PushOutcome::Rejected,
                PushOutcome::Failed => {
                    outcome = PushOutcome::Failed;
                    break;
                }
            }
        }
        for (offered, accepted) in &outcomes {
            book.outcome(offered, *accepted);
        }
        book.pushed(taken_ns, now_ns());
        outcome
    }
}

/// Pushes every `interval` once ready. On stop, the push in flight is dropped and one final
/// push gets what is left of the shutdown deadline.
async fn otlp_loop(
    client: OtlpClient,
    source: OtlpSource,
    interval: Duration,
    shutdown: Arc<Shutdown>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let status = source.status.clone();
    while !status.is_ready() {
        if shutdown.stopping() {
            return; // never caught up: partial counters must not be pushed
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        // Retry until the next push is due: that one carries the same counts and more.
        let push = source.push(&client, tokio::time::Instant::now() + interval, false);
        tokio::select! {
            outcome = push => {
                status.otlp.record(outcome);
                if outcome == PushOutcome::Success {
                    status
                        .otlp_last_success_ns
                        .store(now_ns().max(0) as u64, Ordering::Relaxed);
                }
            }
            _ = stop.changed() => break,
        }
    }
    let deadline = tokio::time::Instant::now() + shutdown.remaining();
    match tokio::time::timeout_at(deadline, source.push(&client, deadline, true)).await {
        Ok(outcome) => {
            status.otlp.record(outcome);
            tracing::info!("final OTLP push: {}", outcome.as_str());
        }
        Err(_) => {
            status.otlp.record(PushOutcome::Failed);
            tracing::warn!(
                "final OTLP push cancelled at the shutdown deadline; the next start pushes the same counts"
            );
        }
    }
}

/// Writes the consistent cut: the registry's positions and the counters, taken on the
/// metering thread between two reads, plus the forwarder's acknowledged offsets.
struct StateSaver {
    dir: PathBuf,
    meter: MeterHandle,
    status: Arc<AgentStatus>,
    loki: Option<Arc<ForwarderStatus>>,
}

impl StateSaver {
    fn save(&self, files: Vec<FilePosition>) -> bool {
        let mut forwarders = std::collections::BTreeMap::new();
        if let Some(loki) = &self.loki {
            forwarders.insert(LOKI.to_string(), loki.positions());
        }
        let state = StateFile {
            version: STATE_VERSION,
            saved_at_ns: now_ns(),
            start_time_ns: self.status.start_time_ns,
            files,
            forwarders,
            counters: self.meter.snapshot_now(),
        };
        match state::save(&self.dir, &state) {
            Ok(()) => {
                self.status.checkpoints_ok.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.status
                    .checkpoints_failed
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!("cannot write state in {}: {e}", self.dir.display());
                false
            }
        }
    }
}

/// Reads, counts, publishes file statuses and writes the state; on stop, writes it at once,
/// and again once the exports are flushed (or the deadline passed). Returns whether that
/// last write succeeded.
fn metering_loop(
    mut registry: Registry,
    mut watches: Watches,
    saver: &StateSaver,
    status: &AgentStatus,
    shutdown: &Shutdown,
    flushed: &AtomicBool,
    interval: Duration,
) -> bool {
    let mut last_save = Instant::now();
    let mut last_publish: Option<Instant> = None;
    // The formats each file's records were read in (a bit per format), for /status.
    let mut formats: HashMap<PathBuf, u8> = HashMap::new();
    let mut formats_changed = false;
    while !shutdown.stopping() {
        injected_fault(shutdown);
        status.heartbeat.beat();
        registry.maintain();
        if let Some(table) = watches.prices.as_mut().and_then(|w| w.poll(status)) {
            saver.meter.lock().store.set_pricing(table);
        }
        if let Some(table) = watches.owners.as_mut().and_then(|w| w.poll(status)) {
            let mut meter = saver.meter.lock();
            meter.store.set_owners(Some(table));
            // The owners file's budgets are in the snapshot: readers see them now, not at
            // the next line read.
            if status.is_ready() {
                saver.meter.publish(&meter, true);
            }
        }
        let n = {
            let mut meter = saver.meter.lock();
            meter.store.set_clock(now_ns());
            let n = registry.read(POLL_BUDGET, |file, line_no, decoded| {
                if let Some(format) = meter.decoded(&file.path, line_no, decoded) {
                    let bits = 1u8 << format as u8;
                    match formats.get_mut(&file.path) {
                        Some(seen) if *seen & bits == bits => {}
                        Some(seen) => {
                            *seen |= bits;
                            formats_changed = true;
                        }
                        None => {
                            formats.insert(file.path.clone(), bits);
                            formats_changed = true;
                        }
                    }
                }
            });
            saver.meter.publish(&meter, false);
            n
        };
        if last_publish.is_none_or(|t| t.elapsed() >= PUBLISH_EVERY) {
            let statuses = registry.statuses();
            // Paths no longer watched are forgotten (the map stays as large as the files).
            let watched: HashSet<&PathBuf> = statuses.iter().map(|s| &s.path).collect();
            let before = formats.len();
            formats.retain(|path, _| watched.contains(path));
            if formats_changed || formats.len() != before {
                status.publish_formats(formats.clone());
                formats_changed = false;
            }
            status.publish_files(statuses, registry.summary());
            last_publish = Some(Instant::now());
        }
        // Ready once every file has been read to its end once: after a restart the
        // counters then include everything the previous run had exported, so nothing
        // exported ever goes backwards (the state may be up to state.interval old).
        if !status.is_ready() && n == 0 && !registry.restoring() {
            // The first snapshot readers may serve is the caught-up one.
            saver.meter.publish(&saver.meter.lock(), true);
            status.ready.store(true, Ordering::SeqCst);
            tracing::info!(
                "caught up with {} files; serving counters",
                registry.files_watched()
            );
        }
        if last_save.elapsed() >= interval {
            saver.save(registry.positions());
            last_save = Instant::now();
        }
        if n == 0 {
            std::thread::sleep(IDLE_SLEEP);
        }
    }
    // Phase 1: reading has stopped; the final push may take the last snapshot, and the
    // state is saved now, so a SIGKILL during the flush costs nothing.
    saver.meter.publish_final(&saver.meter.lock());
    saver.save(registry.positions());
    status.publish_files(registry.statuses(), registry.summary());
    while !flushed.load(Ordering::SeqCst) && !shutdown.deadline_passed() {
        status.heartbeat.beat();
        std::thread::sleep(Duration::from_millis(10));
    }
    saver.save(registry.positions())
}
