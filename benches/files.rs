//! Micro-benchmarks that touch files: the daemon's registry poll over 2,000 tailed files with
//! nothing new to read, and writing one backfill block window as an OpenMetrics file.
//!
//! `cargo bench --bench files`. Everything is written under a temp dir (`$TMPDIR`), so the
//! figures include the page cache and the file system there, not a disk's speed.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use divan::counter::BytesCount;
use divan::{black_box, Bencher};
use tokenmeter::backfill::openmetrics::write_openmetrics;
use tokenmeter::backfill::{Cumulative, SeriesLabels, SeriesSamples};
use tokenmeter::config::StartAt;
use tokenmeter::source::{Registry, RegistryOptions};

fn main() {
    // At least a second per benchmark (divan's default stops after 100 samples, a fraction of
    // a second here): this VM's noise needs more. `--min-time` / `DIVAN_MIN_TIME` override it.
    divan::Divan::default()
        .min_time(std::time::Duration::from_secs(1))
        .config_with_args()
        .main();
}

// ---------------------------------------------------------------------------------------------
// The registry
// ---------------------------------------------------------------------------------------------

/// `Registry::poll` (what the daemon's metering thread calls: `maintain` then `read`) over
/// 2,000 small log files, all read to their end once in setup: every iteration finds nothing
/// new. The daemon rescans the globs once per `source.glob_interval` (1 s) and reads every
/// 100 ms while idle; a file is "dormant" once it had no new line for 10 s (its descriptor is
/// then looked at only by the rescan).
mod registry_poll {
    use super::*;

    const FILES: usize = 2_000;

    /// A line like a container runtime writes of an access log, ~400 bytes.
    fn log_line(i: usize) -> String {
        format!(
            "{{\"start_time\":\"2026-11-26T10:00:{:02}.{:03}Z\",\"method\":\"POST\",\"response_code\":200,\
             \"duration\":{},\"model\":\"gpt-4o-mini\",\"llm_input_token\":{},\"llm_output_token\":{},\
             \"llm_total_token\":{},\"api_key_id\":\"key-{:05}\",\"aim_service_id\":\"svc-{:02}\",\
             \"x-request-id\":\"{:032x}\",\"user-agent\":\"OpenAI/Python 1.54.0\"}}\n",
            i % 60,
            i % 1000,
            100 + i % 900,
            10 + i % 700,
            1 + i % 300,
            11 + i % 700 + i % 300,
            i,
            i % 15 + 1,
            i * 7919
        )
    }

    fn make_files(dir: &Path) {
        for i in 0..FILES {
            fs::write(dir.join(format!("pod-{i:04}.log")), log_line(i))
                .expect("writing a bench log file");
        }
    }

    /// A registry over `FILES` files in a temp dir, every line read.
    fn registry(glob_interval: Duration, dormant_after: Duration) -> (tempfile::TempDir, Registry) {
        let dir = tempfile::tempdir().expect("temp dir for the registry bench");
        make_files(dir.path());
        let opts = RegistryOptions {
            include: vec![format!("{}/*.log", dir.path().display())],
            exclude: Vec::new(),
            start_at: StartAt::Beginning,
            glob_interval,
            max_line_bytes: 1 << 20,
            max_open_files: 2 * FILES,
            remember_for: Duration::from_secs(3600),
            let_go_after: Duration::from_secs(3600),
            retry_first: Duration::from_millis(500),
            dormant_after,
        };
        let mut registry = Registry::new(opts, None, None).expect("registry globs compile");
        let mut lines = 0;
        // The first poll opens and reads every file; a second makes sure all are at rest.
        for _ in 0..2 {
            registry.poll(4096, |_, _, _| lines += 1);
        }
        assert_eq!(lines, FILES, "every bench file read once in setup");
        assert_eq!(registry.files_watched(), FILES);
        (dir, registry)
    }

    fn run(bencher: Bencher, glob_interval: Duration, dormant_after: Duration) {
        let (_dir, mut registry) = registry(glob_interval, dormant_after);
        bencher.bench_local(|| {
            let n = registry.poll(4096, |_, _, d| {
                black_box(d);
            });
            debug_assert_eq!(n, 0);
            n
        });
    }

    /// The globs rescanned (a directory listing and a `stat` per path), files dormant (an
    /// `fstat` each to see whether it grew): the daemon's once-a-second scan of quiet files.
    #[divan::bench]
    fn rescan_dormant(bencher: Bencher) {
        run(bencher, Duration::ZERO, Duration::ZERO);
    }

    /// The globs rescanned, files active (also checked for truncation, and each `fstat`-ed
    /// by the read): a scan within 10 s of the files' last lines.
    #[divan::bench]
    fn rescan_active(bencher: Bencher) {
        run(bencher, Duration::ZERO, Duration::MAX);
    }

    /// No rescan due, files active: one `fstat` per file (the 100 ms poll after traffic).
    #[divan::bench]
    fn read_active(bencher: Bencher) {
        run(bencher, Duration::from_secs(3600), Duration::MAX);
    }

    /// No rescan due, files dormant: no system call per file (the 100 ms idle poll).
    #[divan::bench]
    fn read_dormant(bencher: Bencher) {
        run(bencher, Duration::from_secs(3600), Duration::ZERO);
    }
}

// ---------------------------------------------------------------------------------------------
// The backfill window writer
// ---------------------------------------------------------------------------------------------

/// One block window (2 h at the default `--step 60s`) of N series, 12 samples each, written
/// with `write_openmetrics` to a new file in a temp dir: what `replay --openmetrics DIR`'s
/// window writer does per window (the writer itself is private; it adds the temp-file rename
/// and a write-back hint, and leaves the sync to the end). Pricing on (a cost family in
/// `USD`), 2xx and 4xx requests.
mod backfill_window {
    use super::*;

    const STEP_NS: i64 = 60_000_000_000;
    const WINDOW_START_NS: i64 = 1_795_687_200_000_000_000; // 2026-11-26T10:00:00Z
    const POINTS: usize = 12;

    fn window(n: usize) -> Vec<SeriesSamples> {
        let mut series: Vec<SeriesSamples> = (0..n)
            .map(|i| {
                let labels = Arc::new(SeriesLabels {
                    model: format!("model-{:02}/instruct", i % 20),
                    api_key_id: format!("key-{i:05}"),
                    service_id: format!("svc-{:02}", i % 15 + 1),
                    team: None,
                });
                let mut cum = Cumulative::default();
                let points = (0..POINTS)
                    .map(|p| {
                        // Every 10th step of the window, staggered per series.
                        let step = (p * 10 + i % 10) as i64;
                        cum.requests[0] += 3 + (i % 5) as u64;
                        if (p + i) % 7 == 0 {
                            cum.requests[2] += 1;
                        }
                        cum.input += 1_200 + 37 * i as u64;
                        cum.output += 300 + 11 * p as u64;
                        cum.total = cum.input + cum.output;
                        cum.cost += 420_000_000 + 1_000 * i as u128;
                        (WINDOW_START_NS + (step + 1) * STEP_NS, cum.clone())
                    })
                    .collect();
                SeriesSamples {
                    labels,
                    start_ns: WINDOW_START_NS + (i % 10) as i64 * STEP_NS,
                    points,
                    before: None,
                }
            })
            .collect();
        series.sort_by(|a, b| a.labels.cmp(&b.labels));
        series
    }

    fn write(path: &Path, series: &[SeriesSamples], statics: &BTreeMap<String, String>) -> usize {
        let mut f = fs::File::create(path).expect("creating the window file");
        let e = write_openmetrics(
            &mut f,
            series,
            "llm",
            &[],
            Some("USD"),
            statics,
            "bench",
            STEP_NS,
        )
        .expect("writing the window file");
        e.samples
    }

    #[divan::bench(args = [100, 1_000, 10_000], sample_count = 20)]
    fn write_window(bencher: Bencher, n: usize) {
        let dir = tempfile::tempdir().expect("temp dir for the backfill bench");
        let path = dir.path().join("20261126T100000Z-20261126T120000Z.om");
        let series = window(n);
        let statics = BTreeMap::new();
        let samples = write(&path, &series, &statics);
        assert!(samples > n * POINTS, "every series written");
        let bytes = fs::metadata(&path).expect("window file written").len();
        bencher
            .counter(BytesCount::new(bytes))
            .bench_local(|| write(&path, black_box(&series), &statics));
    }
}
