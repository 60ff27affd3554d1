//! Where a backfill's block windows go: an OpenMetrics file (the single file, or one file per
//! window in a directory), TSDB blocks and/or OTLP pushes, written on a thread of their own
//! with `--jobs` ≥ 2.
//!
//! Owns: the hand-over of windows to the writer, the window file names, writing each file
//! through a temp file and a rename, the final sync, and what was written (for the summary).
//! Must not: read input or count records (`replay` hands it the windows `backfill::windows`
//! completes), nor format the samples itself (`backfill::openmetrics`, `backfill::push`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::openmetrics::write_openmetrics;
use super::push::{PushOutcomes, Pusher};
use super::samples::SeriesSamples;
use super::tsdb::{BlockLabels, TsdbSink};
use super::windows::Window;
use crate::config::Config;

/// Where the windows go (`replay`'s flags).
#[derive(Clone, Debug, Default)]
pub struct Output {
    /// `--openmetrics`: the path, and whether it is a directory of window files.
    pub openmetrics: Option<(PathBuf, bool)>,
    /// `--tsdb`: the directory of the blocks.
    pub tsdb: Option<PathBuf>,
    /// `--push`.
    pub push: bool,
    /// `--instance`: the `instance` label, and the pushed resource's identity.
    pub instance: String,
    /// `--step`: a series starting in a window has its 0 one step before its first value.
    pub step_ns: i64,
    /// Windows are formatted and written on a thread of their own (`--jobs` ≥ 2), overlapping
    /// the counting.
    pub threaded: bool,
    /// `--retry-for`: one budget for every OTLP request.
    pub retry_for: Duration,
}

/// What was emitted, for the summary.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Emitted {
    pub series: usize,
    pub samples: usize,
    /// Block windows written or pushed (files with `--openmetrics DIR`).
    pub windows: usize,
    /// `--tsdb`: blocks written (a window's first 0s may make one more).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocks: Option<usize>,
    pub first_sample: Option<String>,
    pub last_sample: Option<String>,
}

/// Where finished block windows go: an OpenMetrics file (the single file, or one per window
/// in a directory) and/or OTLP pushes, and what was emitted, for the summary. The windows
/// are formatted and written by a [`WindowWriter`]: on a thread of its own with `--jobs` ≥ 2,
/// so that formatting overlaps counting. The hand-over is a rendezvous: at most two windows
/// are held, the one being written and the one being filled (or handed over).
pub struct Emitter {
    /// Shared with the writer: set before its channel is closed.
    closing: Arc<AtomicBool>,
    writer: Writer,
    windows: usize,
}

/// What the writer wrote: samples, the first and last sample times (ns), push outcomes.
pub struct Written {
    samples: usize,
    first: Option<i64>,
    last: Option<i64>,
    blocks: Option<usize>,
    pub outcomes: Option<PushOutcomes>,
}

enum Writer {
    Inline(WindowWriter),
    Thread {
        /// `None` once finished.
        to: Option<std::sync::mpsc::SyncSender<Window>>,
        done: Option<std::thread::JoinHandle<anyhow::Result<WindowWriter>>>,
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
    tsdb: Option<TsdbSink>,
    push: Option<Pusher>,
    samples: usize,
    /// The first and last sample times written (ns).
    first: Option<i64>,
    last: Option<i64>,
    /// Set when the replay stops handing over windows (at the end, or on an error; at once
    /// when the writer runs inline).
    closing: Arc<AtomicBool>,
}

impl Emitter {
    /// Starts the writer (on a thread of its own when `output.threaded`), creating the
    /// window directory first; `extra_names` and `currency` are the meter's.
    pub fn new(
        config: &Config,
        output: &Output,
        extra_names: &[String],
        currency: Option<&str>,
    ) -> anyhow::Result<Self> {
        let push = match output.push {
            true => Some(Pusher::new(config, &output.instance, output.retry_for)?),
            false => None,
        };
        if let Some((dir, true)) = &output.openmetrics {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        }
        let tsdb = match &output.tsdb {
            Some(dir) => Some(TsdbSink::new(dir)?),
            None => None,
        };
        let writer = WindowWriter {
            prefix: config.metrics.prefix.clone(),
            static_labels: config.metrics.labels.clone(),
            instance: output.instance.clone(),
            step_ns: output.step_ns,
            extra_names: extra_names.to_vec(),
            currency: currency.map(str::to_string),
            openmetrics: output.openmetrics.clone(),
            tsdb,
            push,
            samples: 0,
            first: None,
            last: None,
            closing: Arc::new(AtomicBool::new(false)),
        };
        let closing = writer.closing.clone();
        let writer = if output.threaded {
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
                .map_err(|e| anyhow::anyhow!("starting a writer thread: {e}"))?;
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

    pub fn emit(&mut self, w: Window) -> anyhow::Result<()> {
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
            Writer::Thread { to: None, .. } | Writer::Finished(_) => {
                Err(anyhow::anyhow!("a window after the end of the backfill"))
            }
        }
    }

    /// Waits for the writer thread (after closing its channel) and keeps its result.
    fn join(&mut self) -> anyhow::Result<()> {
        if let Writer::Thread { to, done } = &mut self.writer {
            if let Some(to) = to.take() {
                self.closing.store(true, Ordering::Relaxed);
                drop(to);
            }
            let Some(done) = done.take() else {
                return Ok(());
            };
            let writer = done
                .join()
                .map_err(|_| anyhow::anyhow!("the backfill writer thread panicked"))??;
            self.writer = Writer::Finished(writer);
        }
        Ok(())
    }

    /// Stops taking windows (a replay interrupted): waits for the writer to finish the one
    /// it has; its error, if it failed.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.join()
    }

    /// Writes what is left and makes the window files durable; returns what was written.
    pub fn finish(&mut self) -> anyhow::Result<Written> {
        self.join()?;
        let (Writer::Inline(writer) | Writer::Finished(writer)) = &mut self.writer else {
            return Err(anyhow::anyhow!("the backfill writer did not finish"));
        };
        writer.finish()?;
        Ok(Written {
            samples: writer.samples,
            first: writer.first,
            last: writer.last,
            blocks: writer.tsdb.as_ref().map(|t| t.blocks),
            outcomes: writer.push.as_ref().map(|p| p.outcomes.clone()),
        })
    }

    pub fn emitted(&self, series: usize, written: &Written) -> Emitted {
        Emitted {
            series,
            samples: written.samples,
            windows: self.windows,
            first_sample: written.first.map(crate::timefmt::format_rfc3339_millis),
            last_sample: written.last.map(crate::timefmt::format_rfc3339_millis),
            blocks: written.blocks,
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
    fn write(&mut self, w: Window) -> anyhow::Result<()> {
        let name = window_file_name(&w);
        let range = (w.start_ns, w.end_ns);
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
        if let Some(sink) = self.tsdb.as_mut() {
            let with = BlockLabels {
                prefix: &self.prefix,
                extra_names: &self.extra_names,
                currency: self.currency.as_deref(),
                static_labels: &self.static_labels,
                instance: &self.instance,
                step_ns: self.step_ns,
            };
            let n = sink.write(range, &series, &with)?;
            if self.openmetrics.is_none() {
                self.samples += n;
            }
        }
        if let Some(p) = self.push.as_mut() {
            p.push(&series, &self.extra_names, self.currency.as_deref());
            if self.openmetrics.is_none() && self.tsdb.is_none() {
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
        series: &[SeriesSamples],
    ) -> anyhow::Result<Emitted> {
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
            anyhow::anyhow!("writing {}: {e}", out.display())
        })
    }

    /// Writes the last block and makes the window files and blocks durable (they were written
    /// without a sync each).
    fn finish(&mut self) -> anyhow::Result<()> {
        if let Some(sink) = self.tsdb.as_mut() {
            sink.finish()?;
        }
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
        sync().map_err(|e| anyhow::anyhow!("syncing {}: {e}", dir.display()))
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
