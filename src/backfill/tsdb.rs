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

use super::samples::{backfill_families, is_money, may_have_samples, FamilySeries, SeriesSamples};
use crate::tsdb::{Block, BlockWriter, LabelRef};

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
        if let Some(p) = &self.pending {
            block.reserve_like(p);
        }
        let mut earlier: Vec<BlockSeries> = Vec::new();
        let samples =
            add_window(&mut block, &mut earlier, series, with).map_err(|e| self.err(e))?;
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
                self.flush(false)?;
                let block_ms = (end_ms - start_ms).max(step_ms);
                let from = first.div_euclid(block_ms).saturating_mul(block_ms);
                self.pending = Some(
                    Block::new(from, start_ms.min(from.saturating_add(block_ms)))
                        .map_err(|e| self.err(e))?,
                );
            }
            let dir = self.writer.dir().display().to_string();
            if let Some(p) = self.pending.as_mut() {
                for (labels, points) in earlier {
                    p.add_series(labels, points)
                        .map_err(|e| anyhow::anyhow!("writing TSDB blocks in {dir}: {e}"))?;
                }
            }
        }
        self.flush(false)?;
        self.pending = Some(block);
        Ok(samples)
    }

    /// Writes the block held back, if any.
    /// Writes the pending block. The last block of the replay (`last`) ends just after its
    /// last sample, as promtool ends its blocks, so that the same input gives the same bytes
    /// whenever it is replayed; an earlier block whose window is not over yet (a record dated
    /// in the future closed it) ends there too: Mimir refuses a block that ends in the future.
    fn flush(&mut self, last: bool) -> anyhow::Result<()> {
        if let Some(mut block) = self.pending.take() {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            if let Some((_, last_sample)) = block.sample_range() {
                let end = last_sample.saturating_add(1);
                if (last || block.max_time() > now_ms) && end < block.max_time() {
                    block.shrink_max_time(end).map_err(|e| self.err(e))?;
                }
            }
            if self.writer.write(block).map_err(|e| self.err(e))?.is_some() {
                self.blocks += 1;
            }
        }
        Ok(())
    }

    /// Writes the last block and makes every block durable.
    pub fn finish(&mut self) -> anyhow::Result<()> {
        self.flush(true)?;
        self.writer
            .sync()
            .map_err(|e| io("syncing", self.writer.dir(), e))
    }

    fn err(&self, e: std::io::Error) -> anyhow::Error {
        io("writing TSDB blocks in", self.writer.dir(), e)
    }
}

/// A count as f64 (hardware conversion); not inlined so that the caller's u128 branch is not
/// merged with it into one software u128 conversion (`__floatuntidf`, ~36 instructions).
#[inline(never)]
fn u64_to_f64(v: u64) -> f64 {
    v as f64
}

/// Where a label's value comes from, for every label set of a window but the family's name
/// and own label.
#[derive(Clone, Copy)]
enum Source<'a> {
    Series(usize),
    Fixed(&'a str),
}

/// Adds every label set of `series` in every backfill family to `block`, with its samples
/// (the first 0 included) as the OpenMetrics text of the same window has them; samples before
/// the block's start (a first 0) go to `earlier`. Returns the samples. Label sets are added
/// in the block's own order (label pairs sorted by name, compared in turn) as far as the
/// labels allow, so the block's sort finds them in order; each label pair is interned in the
/// block once a window (a series' own labels once for all families), and a label set is
/// added as their numbers, with no allocation.
fn add_window<'s>(
    block: &mut Block,
    earlier: &mut Vec<BlockSeries>,
    series: &'s [SeriesSamples],
    with: &BlockLabels<'s>,
) -> std::io::Result<usize> {
    let start_ms = block.min_time();
    // The labels every label set has besides `__name__` and its own, sorted by name.
    let mut common: Vec<(&str, Source<'s>)> = vec![
        ("model", Source::Series(0)),
        ("api_key_id", Source::Series(1)),
        ("service_id", Source::Series(2)),
        ("job", Source::Fixed("tokenmeter")),
        ("instance", Source::Fixed(with.instance)),
    ];
    // docs/owners.md: the team label, which every series has when owners are configured.
    if let Some((name, _)) = series.first().and_then(|s| s.labels.team.as_ref()) {
        if series.iter().all(|s| s.labels.team.is_some()) {
            common.push((name.as_str(), Source::Series(3)));
        }
    }
    common.extend(
        with.static_labels
            .iter()
            .map(|(k, v)| (k.as_str(), Source::Fixed(v.as_str()))),
    );
    common.sort_by_key(|&(name, _)| name);
    let value = |s: &'s SeriesSamples, source: Source<'s>| -> &'s str {
        match source {
            Source::Series(i) => s.labels.value(i),
            Source::Fixed(v) => v,
        }
    };
    // Every series' values in name order, back to back (`width` a series), and the series in
    // the order of those values.
    let width = common.len();
    // Sized up front: collected from a `flat_map`, they grew by doubling, copied each time.
    let mut keys: Vec<&str> = Vec::with_capacity(series.len() * width);
    keys.extend(
        series
            .iter()
            .flat_map(|s| common.iter().map(move |&(_, src)| value(s, src))),
    );
    let key = |i: usize| &keys[i * width..(i + 1) * width];
    // Sorted by the values that differ between series alone: a fixed value is the same for
    // all, and comparing it was a `memcmp` call in most comparisons.
    let varying: Vec<usize> = (0..width)
        .filter(|&k| matches!(common[k].1, Source::Series(_)))
        .collect();
    let n_varying = varying.len();
    let mut sort_keys: Vec<&str> = Vec::with_capacity(series.len() * n_varying);
    sort_keys.extend(
        keys.chunks_exact(width.max(1))
            .flat_map(|row| varying.iter().map(move |&k| row[k])),
    );
    let sort_key = |i: usize| &sort_keys[i * n_varying..(i + 1) * n_varying];
    let mut order: Vec<usize> = (0..series.len()).collect();
    order.sort_by(|&a, &b| sort_key(a).cmp(sort_key(b)));
    // The same pairs interned in the block, for all families; a fixed value once.
    let mut fixed: Vec<Option<LabelRef>> = Vec::with_capacity(width);
    for &(n, src) in &common {
        fixed.push(match src {
            Source::Fixed(v) => Some(block.label(n, v)?),
            Source::Series(_) => None,
        });
    }
    // Series in order: a value equal to the previous series' at its position (as sorted
    // neighbours' mostly are) takes its pair without a look-up.
    // The names interned once, not looked up again with every value.
    let names = common
        .iter()
        .map(|&(n, _)| block.name(n))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut refs: Vec<LabelRef> = vec![LabelRef::default(); keys.len()];
    let mut prev: Option<usize> = None;
    for &i in &order {
        for (k, (&n, f)) in names.iter().zip(&fixed).enumerate() {
            let v = keys[i * width + k];
            refs[i * width + k] = match (f, prev) {
                (Some(r), _) => *r,
                (None, Some(p)) if keys[p * width + k] == v => refs[p * width + k],
                (None, _) => block.label_named(n, v)?,
            };
        }
        prev = Some(i);
    }
    let refs_of = |i: usize| &refs[i * width..(i + 1) * width];
    // Own labels seen, by address (the schema hands out the same strings every time).
    type Address = (usize, usize, usize, usize);
    let mut own_refs: Vec<(Address, LabelRef)> = Vec::new();
    let mut set_refs: Vec<LabelRef> = Vec::with_capacity(width + 2);
    let mut families = backfill_families(with.prefix, with.extra_names, with.currency);
    families.sort_by_key(|f| f.full_name());
    let mut reader = FamilySeries::new();
    let mut points: Vec<(i64, f64)> = Vec::new();
    let mut samples = 0;
    for family in &families {
        let Some(read) = family.series.as_ref() else {
            continue;
        };
        if !may_have_samples(family, series) {
            continue;
        }
        let name = family.full_name();
        let money = is_money(family);
        let as_f64 = |v: u128| -> f64 {
            if money {
                // As promtool reads the decimal text (correctly rounded).
                crate::pricing::format_units(v).parse().unwrap_or(f64::NAN)
            } else if let Ok(v) = u64::try_from(v) {
                // The same rounding, without the software u128 conversion (kept apart, or
                // LLVM folds both branches back into the u128 conversion).
                u64_to_f64(v)
            } else {
                v as f64
            }
        };
        let name_ref = block.label("__name__", &name)?;
        let mut labels: Vec<(&str, &str)> = Vec::with_capacity(width + 2);
        for &i in &order {
            let s = &series[i];
            reader.read(read, s, with.currency);
            for (set, set_samples) in reader.each() {
                set_refs.clear();
                set_refs.push(name_ref);
                set_refs.extend_from_slice(refs_of(i));
                if let Some((n, v)) = set.own {
                    let at = (n.as_ptr() as usize, n.len(), v.as_ptr() as usize, v.len());
                    let found = own_refs.iter().find(|(a, _)| *a == at).map(|r| r.1);
                    let r = match found {
                        Some(r) => r,
                        None => {
                            let r = block.label(n, v)?;
                            own_refs.push((at, r));
                            r
                        }
                    };
                    set_refs.push(r);
                }
                points.clear();
                points.extend(
                    set.first_zero(with.step_ns)
                        .into_iter()
                        .chain(set_samples)
                        .map(|(t, v)| (sample_ms(t), as_f64(v))),
                );
                samples += points.len();
                // Only a first 0 can come before the window (a step before its first value).
                let cut = points.partition_point(|&(t, _)| t < start_ms);
                if cut > 0 {
                    labels.clear();
                    labels.push(("__name__", &name));
                    labels.extend(common.iter().zip(key(i)).map(|(&(n, _), &v)| (n, v)));
                    labels.extend(set.own);
                    labels.sort_unstable_by_key(|&(n, _)| n);
                    let owned = labels
                        .iter()
                        .map(|&(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                    earlier.push((owned, points[..cut].to_vec()));
                }
                block.add_series_refs(&set_refs, points[cut..].iter().copied())?;
            }
        }
    }
    Ok(samples)
}
