//! `tokenmeter replay`: read files once from their start through the pipeline and summarise.
//!
//! Owns: the order of files, opening them all before reading any (so a missing file stops the
//! replay before anything is written), the progress bar, and the summary formats of SPEC §2.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::aggregate::{invalid_field_names, SkipReason, Snapshot, OVERFLOW_LABELS};
use crate::config::Config;
use crate::pipeline::{physical_line_limit, FileCursor, Meter};
use crate::source::{open_input, AtEof, InputError, LineReader};

/// What a replay read and counted.
pub struct ReplayReport {
    pub snapshot: Snapshot,
    pub files: usize,
    pub bytes_read: u64,
    pub elapsed: Duration,
}

/// Why a replay stopped.
#[derive(Debug)]
pub enum ReplayError {
    /// A file could not be opened; nothing was read.
    Open(InputError),
    /// Reading failed part-way (I/O error, corrupt gzip).
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

/// Replays `paths` in order. `progress` draws a bar on stderr (only when it is a terminal).
pub fn replay(
    config: &Config,
    paths: &[PathBuf],
    progress: bool,
) -> Result<ReplayReport, ReplayError> {
    let started = Instant::now();
    let inputs = paths
        .iter()
        .map(|p| open_input(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ReplayError::Open)?;
    let total: u64 = inputs.iter().map(|i| i.size).sum();
    let bar = if progress && std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{bar:32} {bytes}/{total_bytes} {msg} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    let mut meter = Meter::new(config, false);
    let read = Rc::new(Cell::new(0u64));
    let limit = physical_line_limit(config.source.max_line_bytes);
    let files = inputs.len();
    for input in inputs {
        let path = input.path.clone();
        let mut cursor = FileCursor::new(config, input.modified_ns);
        let mut reader = LineReader::new(
            input.into_reader(read.clone()),
            0,
            limit,
            AtEof::EmitPartial,
        );
        let mut n = 0u32;
        loop {
            let line = reader
                .next_line()
                .with_context(|| {
                    format!("reading {} (after line {})", path.display(), cursor.line_no)
                })
                .map_err(ReplayError::Read)?;
            let Some(line) = line else { break };
            meter.physical(&path, &mut cursor, line);
            n = n.wrapping_add(1);
            if n.is_multiple_of(16384) && !bar.is_hidden() {
                update_bar(&bar, read.get(), meter.store.stats().lines(), started);
            }
        }
        meter.end_of_file(&path, &mut cursor);
    }
    update_bar(&bar, read.get(), meter.store.stats().lines(), started);
    bar.finish_and_clear();
    Ok(ReplayReport {
        snapshot: meter.store.snapshot(meter.extra_names()),
        files,
        bytes_read: read.get(),
        elapsed: started.elapsed(),
    })
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
    series: Vec<JsonSeries<'a>>,
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
}

/// The `--summary json` object of SPEC §2 (one line, then `\n`). Every skip reason is present,
/// zero or not, so scripts can rely on the keys.
pub fn summary_json(s: &Snapshot) -> String {
    let summary = JsonSummary {
        lines: s.stats.lines(),
        records: s.stats.records,
        skipped: SkipReason::ALL
            .iter()
            .map(|r| (r.as_str(), s.stats.skipped[*r as usize]))
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
            })
            .collect(),
    };
    let mut out =
        serde_json::to_string(&summary).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    out.push('\n');
    out
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
    for (i, name) in s.extra_names.iter().enumerate() {
        let sum: u64 = s.series.iter().map(|x| x.extra_tokens[i]).sum();
        let _ = writeln!(out, "{:<11}{sum:>14} tokens", name);
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
    out
}
