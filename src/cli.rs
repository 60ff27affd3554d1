//! The command line of docs/cli.md. Wiring only: parse arguments, load the config, call the
//! command, map errors to exit codes (2 for usage/config errors, 1 for runtime failures).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::replay::{replay, summary_json, summary_text, ReplayOptions};

const ABOUT: &str = "Meters LLM token usage and spend from AI gateway access logs.

tokenmeter reads access-log lines of Envoy AI Gateway, agentgateway, Kong and Higress (plain
files, Kubernetes CRI or docker json-file pod logs), counts requests, tokens and cost per
model, API key and service, and exports the counters (OTLP, /metrics, backfill); the lines can
go to Loki.";

/// `tokenmeter --version`: the release and the git commit it was built from (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("TOKENMETER_GIT_COMMIT"),
    ")"
);

#[derive(Parser, Debug)]
#[command(name = "tokenmeter", version = VERSION, about = ABOUT, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of the `replay` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// The daemon: tail the access logs, aggregate, export, serve /metrics.
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Read files once from their start and summarise (or backfill) their token usage.
    ///
    /// Each FILE may be plain, CRI or docker json-file, or gzip-compressed (detected by its
    /// magic bytes, multi-member included). Files are read in the order given. A progress bar
    /// is drawn on stderr when stderr is a terminal.
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        /// Only records with an event time at or after this instant (RFC 3339).
        #[arg(long, value_name = "RFC3339")]
        from: Option<String>,
        /// Only records with an event time before this instant (RFC 3339), or `live`: before
        /// the start time of the live agent's counters, read from the state file in the
        /// config's `state_dir`, so backfilled and live series never count a request twice.
        #[arg(long, value_name = "RFC3339|live")]
        to: Option<String>,
        /// Resolution of emitted samples (default 60s). With `--tsdb` it must divide `--block`
        /// (for `--step 1d`, `--block 24h`; with `--dense --step 1h`, `--block 24h` keeps the
        /// blocks small).
        #[arg(long, value_name = "DURATION")]
        step: Option<String>,
        /// Write OpenMetrics backfill for `promtool tsdb create-blocks-from openmetrics` or
        /// `mimirtool backfill`. OUT a directory (existing, or ending in `/`): one file per
        /// block window, `OUT/<start>-<end>.om`, memory bounded by series × steps of one
        /// window (use this for large inputs). OUT a file: one file, every sample held in
        /// memory until the end (small inputs).
        #[arg(long, value_name = "OUT")]
        openmetrics: Option<PathBuf>,
        /// Write Prometheus TSDB blocks into DIR (created if missing): the samples of
        /// `--openmetrics`, one block per `--block` window as it closes (memory: one window),
        /// each `DIR/<ULID>/` complete before it appears. Serve DIR with Prometheus, or upload
        /// it with `mimirtool backfill` / `thanos tools bucket upload-blocks`
        /// (docs/backfill.md). The same input and flags give the same bytes.
        #[arg(long, value_name = "DIR")]
        tsdb: Option<PathBuf>,
        /// Length of one window of backfill (one OpenMetrics file in a directory, one TSDB
        /// block, or one round of `--push`). Blocks for Mimir must not cross a UTC day: use a
        /// divisor of 24h (the default 2h is).
        #[arg(long, value_name = "DURATION", default_value = "2h")]
        block: String,
        /// How far (in event time) a record may come after newer ones and still land in its
        /// own step; an older one is counted in the oldest step not yet written (totals stay
        /// exact, only its time shifts) and reported as `late`.
        #[arg(long, value_name = "DURATION", default_value = "5m")]
        max_delay: String,
        /// A sample at every step for every series, from one step before its first value to
        /// the end of the replay, as a live agent's series would have: `increase()` then
        /// reads backfilled chargeback right at the edges (more samples; see docs/backfill.md).
        #[arg(long)]
        dense: bool,
        /// Files counted at once, each on its own thread, merged in the order given (the
        /// summary is the same as with 1). Default: the number of cores. Backfill
        /// (`--openmetrics`, `--tsdb`, `--push`), `--loki` and `--from`/`--to` need the records in
        /// order and read on one thread.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
        jobs: Option<u16>,
        /// Push the series over OTLP with their historical timestamps.
        #[arg(long)]
        push: bool,
        /// Forward the lines to Loki with their original timestamps.
        #[arg(long)]
        loki: bool,
        /// With `--loki`: lines older than this (event time, against the clock when they are
        /// sent) are not sent, as Loki would reject them (its `reject_old_samples_max_age`,
        /// 7d by default); the summary counts them as `too_old`. Raise it to what the Loki
        /// in use accepts.
        #[arg(long, value_name = "DURATION", default_value = "7d")]
        loki_max_age: String,
        /// The `instance` label of replayed series.
        #[arg(long, value_name = "NAME")]
        instance: Option<String>,
        /// How long `--push` and `--loki` retry a backend that does not answer before giving
        /// up (exit 1; the summary says what was delivered).
        #[arg(long, value_name = "DURATION", default_value = "5m")]
        retry_for: String,
        /// Summary printed on stdout: a readable table, or one JSON object.
        #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
        summary: SummaryFormat,
        /// Access-log files to read.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Validate the config and print the effective config (defaults filled in, ${ENV} expanded).
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
        /// Print header values and endpoint credentials as they are (masked by default).
        #[arg(long)]
        show_secrets: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct ConfigArg {
    /// Config file (TOML), or a directory of `*.toml` files read in name order. Give it
    /// several times to layer files (`-c base.toml -c conf.d/`): a later file overrides the
    /// keys it sets (tables merge, other values and arrays are replaced). Default:
    /// $TOKENMETER_CONFIG (one file or directory), else built-in defaults.
    #[arg(long, short = 'c', value_name = "FILE|DIR", action = clap::ArgAction::Append)]
    pub config: Vec<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SummaryFormat {
    Text,
    Json,
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // --help and --version exit 0, usage errors 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    init_logging();
    run(cli)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOKENMETER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

fn load(arg: &ConfigArg) -> Result<Config, ExitCode> {
    Config::load(&arg.config).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

/// Writes `text` to standard output. A reader that went away (`tokenmeter replay … | head`)
/// is no error: the output is simply not wanted any more (and `print!` would panic). Any
/// other write error is reported, with exit code 1.
fn print_out(text: &str) -> Result<(), ExitCode> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => {
            eprintln!("error: writing to standard output: {e}");
            Err(ExitCode::from(1))
        }
    }
}

fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::CheckConfig {
            config,
            show_secrets,
        } => match load(&config) {
            Ok(c) => {
                let shown = if show_secrets { c.clone() } else { c.masked() };
                let mut text = shown.to_toml();
                // docs/owners.md: what the owners file holds (it was read and checked by load).
                if let Ok(Some(owners)) = c.owner_table() {
                    text.push_str(&format!(
                        "# owners.file {}: {}\n",
                        c.owners.file,
                        owners.describe()
                    ));
                }
                text.push_str(&crate::parse::format::describe_mappings(&c.fields));
                if let Err(code) = print_out(&text) {
                    return code;
                }
                // A warning, not an error: the pods may simply not be there yet.
                if let Ok(globs) =
                    crate::source::discover::Globs::new(&c.source.include, &c.source.exclude)
                {
                    let scan = globs.scan(&crate::source::RealFs);
                    for i in globs.unmatched(&scan.paths) {
                        eprintln!(
                            "warning: source.include[{i}] {:?} matches no file on this machine",
                            c.source.include[i]
                        );
                    }
                }
                // Rates that rounding to 10^-12 currency units changed (docs/spend.md).
                if let Ok((_, warnings)) = c.price_table_with_warnings() {
                    for w in warnings {
                        eprintln!("warning: {}: {}", w.key, w.message);
                    }
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run { config } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match crate::daemon::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    // Another agent on the same state_dir is a setup error, not a failure.
                    let held = matches!(
                        e.downcast_ref::<crate::state::LockError>(),
                        Some(crate::state::LockError::Held { .. })
                    );
                    ExitCode::from(if held { 2 } else { 1 })
                }
            }
        }
        Command::Replay {
            config,
            from,
            to,
            step,
            openmetrics,
            tsdb,
            block,
            max_delay,
            dense,
            jobs,
            push,
            loki,
            loki_max_age,
            instance,
            retry_for,
            summary,
            files,
        } => {
            let duration = |flag: &str, v: &str, min_secs: u64| -> Result<i64, ExitCode> {
                match humantime::parse_duration(v.trim()) {
                    Ok(d) if d.as_secs() >= min_secs && d.as_secs() <= 10 * 365 * 86_400 => {
                        Ok(d.as_nanos() as i64)
                    }
                    _ => {
                        eprintln!("error: {flag} {v:?} must be a duration such as \"5m\" or \"2h\" (at least {min_secs}s, at most 10 years)");
                        Err(ExitCode::from(2))
                    }
                }
            };
            let (block_ns, max_delay_ns, loki_max_age_ns) = match (
                duration("--block", &block, 1),
                duration("--max-delay", &max_delay, 0),
                duration("--loki-max-age", &loki_max_age, 1),
            ) {
                (Ok(b), Ok(d), Ok(a)) => (b, d, a),
                (Err(c), _, _) | (_, Err(c), _) | (_, _, Err(c)) => return c,
            };
            let openmetrics_dir = openmetrics
                .as_ref()
                .is_some_and(|p| p.is_dir() || p.as_os_str().to_string_lossy().ends_with('/'));
            if tsdb.is_some() && 86_400_000_000_000 % block_ns != 0 {
                eprintln!("error: --block {block:?} must divide 24h with --tsdb: Mimir refuses a block that crosses a UTC midnight (e.g. 1h, 2h, 6h, 24h)");
                return ExitCode::from(2);
            }
            if let Some(dir) = tsdb.as_ref().filter(|d| d.exists() && !d.is_dir()) {
                eprintln!(
                    "error: --tsdb {}: is not a directory (the blocks are directories inside it)",
                    dir.display()
                );
                return ExitCode::from(2);
            }
            if tsdb.is_some() && openmetrics.is_some() && !openmetrics_dir {
                eprintln!("error: --tsdb writes one block per --block window; --openmetrics FILE holds everything in one file: give --openmetrics a directory (ending in /) to write both");
                return ExitCode::from(2);
            }
            let retry_for = match humantime::parse_duration(retry_for.trim()) {
                // Bounded: it is added to the clock.
                Ok(d) if !d.is_zero() && d <= crate::config::MAX_DURATION => d,
                _ => {
                    eprintln!("error: --retry-for {retry_for:?} must be a duration such as \"30s\" or \"5m\" (at most 365d)");
                    return ExitCode::from(2);
                }
            };
            let parse_time = |flag: &str, v: &Option<String>| -> Result<Option<i64>, ExitCode> {
                match v {
                    None => Ok(None),
                    Some(t) => crate::timefmt::parse_rfc3339_nanos(t).map(Some).ok_or_else(|| {
                        eprintln!("error: {flag} {t:?} is not an RFC 3339 time such as 2026-11-26T10:00:00Z");
                        ExitCode::from(2)
                    }),
                }
            };
            // `--to live` is read from the state file once the config is loaded.
            let to_live = to.as_deref().map(str::trim) == Some("live");
            let to_time = if to_live {
                Ok(None)
            } else {
                parse_time("--to", &to)
            };
            let (from_ns, to_ns) = match (parse_time("--from", &from), to_time) {
                (Ok(f), Ok(t)) => (f, t),
                (Err(c), _) | (_, Err(c)) => return c,
            };
            let step_ns = match step.as_deref().map(|s| humantime::parse_duration(s.trim())) {
                None => 60_000_000_000,
                Some(Ok(d)) if d.as_secs() >= 1 => d.as_nanos() as i64,
                Some(_) => {
                    eprintln!("error: --step {:?} must be a duration of at least 1s, such as \"60s\" or \"5m\"", step.unwrap_or_default());
                    return ExitCode::from(2);
                }
            };
            // A series' first 0 lies one step before its first value: with a step that does not
            // divide the block, its block would not be a --block window (it could overlap the
            // others, cross a UTC midnight or outlast 24h, all refused by Mimir).
            if tsdb.is_some() && block_ns % step_ns != 0 {
                eprintln!("error: --step {:?} must divide --block {block:?} with --tsdb (every block is one --block window); for a daily step use --block 24h", step.unwrap_or_default());
                return ExitCode::from(2);
            }
            let config_path = config.config.clone();
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let to_ns = if to_live {
                match live_start(&config, &config_path) {
                    Ok(t) => Some(t),
                    Err(message) => {
                        eprintln!("error: --to live: {message}");
                        return ExitCode::from(2);
                    }
                }
            } else {
                to_ns
            };
            if let (Some(f), Some(t)) = (from_ns, to_ns) {
                if f >= t {
                    if to_live {
                        eprintln!(
                            "error: --from {} is not before the live agent's start {} (--to live)",
                            from.as_deref().unwrap_or_default(),
                            crate::timefmt::format_rfc3339_millis(t)
                        );
                    } else {
                        eprintln!("error: --from must be before --to");
                    }
                    return ExitCode::from(2);
                }
            }
            let opts = ReplayOptions {
                from_ns,
                to_ns,
                step_ns,
                openmetrics,
                openmetrics_dir,
                tsdb,
                block_ns,
                max_delay_ns,
                dense,
                push,
                loki,
                loki_max_age_ns,
                instance: instance.unwrap_or_else(|| "replay".into()),
                progress: true,
                jobs: jobs.map_or_else(
                    || std::thread::available_parallelism().map_or(1, |n| n.get().min(256)),
                    usize::from,
                ),
                retry_for,
            };
            if let Err(e) = crate::replay::stop_on_signals() {
                eprintln!("error: installing the SIGINT/SIGTERM handlers: {e}");
                return ExitCode::from(1);
            }
            match replay(&config, &files, &opts) {
                Ok(report) => {
                    let out = match summary {
                        SummaryFormat::Json => summary_json(&report),
                        SummaryFormat::Text => summary_text(&report),
                    };
                    if let Err(code) = print_out(&out) {
                        return code;
                    }
                    let push_failed = report
                        .pushed
                        .as_ref()
                        .is_some_and(|p| p.keys().any(|k| *k != "success"));
                    if push_failed {
                        eprintln!(
                            "error: some OTLP pushes did not succeed: {:?}",
                            report.pushed
                        );
                        return ExitCode::from(1);
                    }
                    if let Some(l) = report.loki.as_ref().filter(|l| l.undelivered > 0) {
                        eprintln!(
                            "error: {} lines were not delivered to Loki ({} were)",
                            l.undelivered, l.sent
                        );
                        return ExitCode::from(1);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    e.exit()
                }
            }
        }
    }
}

/// `replay --to live`: where live counting began for the agent of `config` — the start time
/// of its counters (`start_time_ns` of the state file in `state_dir`: its very first start,
/// kept across restarts). With `source.start_at = "end"` (the default) the agent counted only
/// lines written after that moment, so records with an earlier event time are the backfill's
/// and later ones the agent's. With `start_at = "beginning"` it also counted the history in
/// the files present at its first start, so no instant separates the two: refused.
fn live_start(config: &Config, config_paths: &[PathBuf]) -> Result<i64, String> {
    let mut paths = config_paths.to_vec();
    if paths.is_empty() {
        paths.extend(
            std::env::var_os("TOKENMETER_CONFIG")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
        );
    }
    let from = if paths.is_empty() {
        "the built-in default config".to_string()
    } else {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        format!("config {}", names.join(" + "))
    };
    let dir = &config.state_dir;
    if config.source.start_at == crate::config::StartAt::Beginning {
        return Err(format!(
            "source.start_at = \"beginning\" in {from}: the live agent also counted the lines already in its files at its first start, so its start time does not separate backfill from live counting; give --to RFC3339 (the event time of the first line those files held)"
        ));
    }
    match crate::state::read_start_time(dir) {
        Ok(t) => {
            eprintln!(
                "--to live: {} (start of the live agent's counters, {})",
                crate::timefmt::format_rfc3339_millis(t),
                crate::state::state_path(dir).display()
            );
            Ok(t)
        }
        Err(crate::state::StartTimeError::Missing { path }) => Err(format!(
            "no state file {} (state_dir {} of {from}): the live agent has not run with this state_dir on this machine; run the replay where the agent runs, or give --to RFC3339",
            path.display(),
            dir.display()
        )),
        Err(e) => Err(format!("{e} (state_dir {} of {from})", dir.display())),
    }
}
