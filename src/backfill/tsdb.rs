//! Backfill as Prometheus TSDB blocks (`replay --tsdb DIR`): the label sets and samples the
//! OpenMetrics text of the same replay holds — read through the same [`FamilySeries`], with
//! the same first 0 — gathered into one [`Block`] per block window and written by the
//! [`BlockWriter`] of [`crate::tsdb`].
//!
//! Owns: a block's label sets (the schema's labels, `metrics.labels`, the family's own label,
//! `job`, `instance`; sorted by name), values as promtool reads the OpenMetrics text (counts
//! exactly, money through its decimal text), timestamps in whole seconds as the text writes
//! them, and the one-window delay that puts a series' first 0 into the block of its time: a
//! series whose first value is at the very start of a window has its 0 one step earlier, in
//! the previous window's range. Must not: choose windows or steps, read input, or know the
//! block format (`crate::tsdb` does).

use std::collections::BTreeMap;
use std::path::Path;

use super::samples::{backfill_families, is_money, FamilySeries, SeriesSamples};
use crate::tsdb::{Block, BlockWriter};

/// One series of a block: labels sorted by name, samples `(t_ms, value)` in time order.
type BlockSeries = (Vec<(String, String)>, Vec<(i64, f64)>);

/// What the blocks are built from besides the samples: the replay's labels and step.
pub struct BlockLabels<'a> {
    pub prefix: &'a str,
    pub extra_names: &'a [String],
    pub currency: Option<&'a str>,
    pub static_labels: &'a BTreeMap<String, String>,
    pub instance: &'a str,
    pub step_ns: i64,
}

/// Writes block windows as TSDB blocks under one directory.
pub struct TsdbSink {
    writer: BlockWriter,
    /// The previous window's block, written when the next window comes (or at the end).
    pending: Option<Block>,
    /// Blocks written.
    pub blocks: usize,
}

/// Milliseconds of a sample time, cut to whole seconds as the OpenMetrics text writes it (so
/// both backfills hold the same samples).
fn sample_ms(t_ns: i64) -> i64 {
    t_ns.div_euclid(1_000_000_000).saturating_mul(1000)
}

fn io(what: &str, dir: &Path, e: std::io::Error) -> anyhow::Error {
    anyhow::anyhow!("{what} {}: {e}", dir.display())
}

impl TsdbSink {
    /// A sink into `dir` (created if missing); temporary directories a killed replay left
    /// there are removed first. Blocks are written without an fsync each and made durable
    /// together by [`TsdbSink::finish`].
    pub fn new(dir: &Path) -> anyhow::Result<TsdbSink> {
        let writer = BlockWriter::new(dir)
            .map_err(|e| io("creating", dir, e))?
            .with_fsync(false);
        crate::tsdb::remove_stale_temporaries(dir)
            .map_err(|e| io("removing unfinished blocks in", dir, e))?;
        Ok(TsdbSink {
            writer,
            pending: None,
            blocks: 0,
        })
    }

    /// The block window `[start_ns, end_ns)` with these series: its samples into a block of
    /// its own, a 0 before its start into the previous window's block. Returns the samples.
    pub fn write(
        &mut self,
        (start_ns, end_ns): (i64, i64),
        series: &[SeriesSamples],
        with: &BlockLabels<'_>,
    ) -> anyhow::Result<usize> {
        let (start_ms, end_ms) = (sample_ms(start_ns), sample_ms(end_ns));
        let mut block = Block::new(start_ms, end_ms).map_err(|e| self.err(e))?;
        let mut earlier: Vec<BlockSeries> = Vec::new();
        let mut samples = 0;
        for (labels, points) in block_series(series, with) {
            samples += points.len();
            // Only a first 0 can come before the window (a step before its first value).
            let cut = points.partition_point(|&(t, _)| t < start_ms);
            if cut > 0 {
                earlier.push((labels.clone(), points[..cut].to_vec()));
            }
            block
                .add_series(labels, points[cut..].iter().copied())
                .map_err(|e| self.err(e))?;
        }
        if !earlier.is_empty() {
            let step_ms = sample_ms(with.step_ns).max(1);
            let first = earlier.iter().map(|s| s.1[0].0).min().unwrap_or(start_ms);
            // The 0s go into the previous window's block when it is the one before this
            // (it is still open), else into a block of their own window.
            let adjacent = self
                .pending
                .as_ref()
                .is_some_and(|p| p.max_time() == start_ms && p.min_time() <= first);
            if !adjacent {
                self.flush()?;
                let block_ms = (end_ms - start_ms).max(step_ms);
                let from = first.div_euclid(block_ms).saturating_mul(block_ms);
                self.pending = Some(
                    Block::new(from, start_ms.min(from.saturating_add(block_ms)))
                        .map_err(|e| self.err(e))?,
                );
            }
            if let Some(p) = self.pending.as_mut() {
                for (labels, points) in earlier {
                    p.add_series(labels, points).map_err(|e| {
                        anyhow::anyhow!(
                            "writing TSDB blocks in {}: {e}",
                            self.writer.dir().display()
                        )
                    })?;
                }
            }
        }
        self.flush()?;
        self.pending = Some(block);
        Ok(samples)
    }

    /// Writes the block held back, if any.
    fn flush(&mut self) -> anyhow::Result<()> {
        if let Some(block) = self.pending.take() {
            if self.writer.write(block).map_err(|e| self.err(e))?.is_some() {
                self.blocks += 1;
            }
        }
        Ok(())
    }

    /// Writes the last block and makes every block durable.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        // The last window may not be over (`--to live`): it ends just after its last sample,
        // as Mimir refuses a block that ends in the future.
        if let Some(p) = self.pending.as_mut() {
            if let Some((_, last)) = p.sample_range() {
                if last.saturating_add(1) < p.max_time() {
                    p.shrink_max_time(last + 1).map_err(|e| {
                        anyhow::anyhow!(
                            "writing TSDB blocks in {}: {e}",
                            self.writer.dir().display()
                        )
                    })?;
                }
            }
        }
        self.flush()?;
        self.writer
            .sync()
            .map_err(|e| io("syncing", self.writer.dir(), e))
    }

    fn err(&self, e: std::io::Error) -> anyhow::Error {
        io("writing TSDB blocks in", self.writer.dir(), e)
    }
}

/// Every label set of `series` in every backfill family, with its samples (the first 0
/// included), as the OpenMetrics text of the same window has them.
fn block_series(series: &[SeriesSamples], with: &BlockLabels<'_>) -> Vec<BlockSeries> {
    let mut out = Vec::new();
    let mut reader = FamilySeries::new();
    for family in backfill_families(with.prefix, with.extra_names, with.currency) {
        let Some(read) = family.series.as_ref() else {
            continue;
        };
        let name = family.full_name();
        let money = is_money(&family);
        for s in series {
            reader.read(read, s, with.currency);
            for (set, samples) in reader.each() {
                let mut labels: Vec<(String, String)> = vec![("__name__".into(), name.clone())];
                labels.extend(s.labels.pairs().iter().map(|&(k, v)| (k.into(), v.into())));
                labels.extend(
                    with.static_labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone())),
                );
                labels.extend(set.own.map(|(k, v)| (k.to_string(), v.to_string())));
                labels.push(("job".into(), "tokenmeter".into()));
                labels.push(("instance".into(), with.instance.to_string()));
                labels.sort();
                let value = |v: u128| -> f64 {
                    if money {
                        // As promtool reads the decimal text (correctly rounded).
                        crate::pricing::format_units(v).parse().unwrap_or(f64::NAN)
                    } else {
                        v as f64
                    }
                };
                let points: Vec<(i64, f64)> = set
                    .first_zero(with.step_ns)
                    .into_iter()
                    .chain(samples)
                    .map(|(t, v)| (sample_ms(t), value(v)))
                    .collect();
                out.push((labels, points));
            }
        }
    }
    out
}
