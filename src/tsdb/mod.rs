//! Prometheus TSDB blocks, written directly: one [`Block`] per time window, gathered a series
//! at a time, then written by a [`BlockWriter`] as a complete block directory
//! `DIR/<ULID>/` (`meta.json`, `index`, `chunks/000001…`, `tombstones`) that Prometheus,
//! promtool, Mimir and Thanos load as their own.
//!
//! Owns: the on-disk block format (float samples, XOR chunks) and writing a block so that it
//! appears whole or not at all: everything goes to `DIR/<ULID>.tmp-for-creation/` (the name
//! Prometheus's own compactor uses, and which Prometheus deletes at start-up if it finds one
//! left over), each file and directory is fsynced (unless the caller defers that to one
//! [`BlockWriter::sync`] at the end), then the directory is renamed to
//! `DIR/<ULID>/`. Must not know where the samples come from (the replay's windows, steps,
//! labels are the caller's): it imports nothing of the crate.
//!
//! Deterministic: no clock, no randomness. A block's ULID has the block's start as its time
//! and a hash of the block's content (index and chunk bytes) as its 80 bits of entropy, so
//! the same series and samples always give byte-identical directories under the same names,
//! and re-writing a block that exists replaces it with identical bytes.
//!
//! Memory: a [`Block`] holds its series' labels and their samples already XOR-encoded (about
//! 1–2 bytes a sample for counters); writing it builds the index in memory and streams the
//! chunks to disk. Nothing outlives [`BlockWriter::write`].
//!
//! Fidelity: where Prometheus's head would cut chunks where this writer does (at most 120
//! samples a series in a window; beyond that the head spreads samples over chunks of up to
//! 240, this writer cuts at 120), `index` and `chunks/000001` are byte-identical to what
//! Prometheus 2.53's own writer makes of the same samples (`promtool tsdb create-blocks-from
//! openmetrics`), which `tests/it/tsdb.rs` checks; so is `meta.json` but for the ULID and the
//! time range (promtool's runs from its first sample to its last + 1, here it is the window).
//!
//! For Mimir's block upload (`docs/sources/mimir/configure/configure-tsdb-block-upload.md` in
//! grafana/mimir): `minTime`/`maxTime` are never negative and `maxTime > minTime`; a 2 h
//! window from [`block_window`] never crosses a 24 h boundary; `meta.json` has no Thanos
//! section (no external labels, no downsampling); chunks lie within the block, in order, each
//! series' labels sorted and unique. A `maxTime` in the future is refused by Mimir: the
//! caller ends a window that is not over yet with [`Block::shrink_max_time`].
//!
//! The format, read from the Prometheus repository at v2.53.3 (commit
//! 1491d29fb1e8f8acbab29fd54fd4ce9be2cbd7bc), the version whose promtool and server the tests
//! run: `tsdb/docs/format/index.md`, `chunks.md`, `tombstones.md`; and the Go writers they
//! describe, which win where the docs lag: `tsdb/index/index.go`, `tsdb/chunks/chunks.go`,
//! `tsdb/chunkenc/xor.go`, `tsdb/chunkenc/bstream.go`, `tsdb/encoding/encoding.go`,
//! `tsdb/tombstones/tombstones.go`, `tsdb/block.go` (`BlockMeta`, `writeMetaFile`),
//! `tsdb/compact.go` (`LeveledCompactor.write`: level 1, sources = itself, no block for zero
//! samples, the temporary directory and rename) and `tsdb/db.go` (`isTmpDir`).

pub mod chunks;
pub mod encoding;
pub mod index;
pub mod ulid;
pub mod xor;

use encoding::ContentHash;
use hashbrown::HashTable;
use rustc_hash::{FxBuildHasher, FxHashMap};
use std::fs::{self, File};
use std::hash::BuildHasher;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use xor::{XorChunk, MAX_SAMPLES_PER_CHUNK};

/// The suffix of a block directory being written (Prometheus's `tmpForCreationBlockDirSuffix`).
pub const TMP_SUFFIX: &str = ".tmp-for-creation";
/// The suffix of a block directory being replaced (`tmpForDeletionBlockDirSuffix`).
pub const DELETE_SUFFIX: &str = ".tmp-for-deletion";

/// Prometheus's default block range: 2 h (`DefaultBlockDuration`).
pub const DEFAULT_BLOCK_RANGE_MS: i64 = 2 * 3_600_000;

/// The block window `[start, start + range)` holding `t_ms`, aligned as Prometheus aligns its
/// blocks: `start` a multiple of `range` since the epoch (`rangeForTimestamp`, floored for
/// times before 1970). `None` for a range that is not positive or a window past `i64`.
pub fn block_window(t_ms: i64, range_ms: i64) -> Option<(i64, i64)> {
    if range_ms <= 0 {
        return None;
    }
    let start = t_ms.checked_sub(t_ms.rem_euclid(range_ms))?;
    Some((start, start.checked_add(range_ms)?))
}

/// Removes what interrupted writes left in `dir`: directories named `<ULID>.tmp-for-creation`
/// or `<ULID>.tmp-for-deletion` (exactly what Prometheus itself removes at start-up, so that
/// an upload of `dir/*` to Mimir or Thanos never meets a half block). Returns how many.
pub fn remove_stale_temporaries(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let stem = name
            .strip_suffix(TMP_SUFFIX)
            .or_else(|| name.strip_suffix(DELETE_SUFFIX));
        if stem.is_some_and(ulid::is_ulid) {
            fs::remove_dir_all(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// An I/O error of `path`, its kind kept and the path in its message: a full disk names the
/// file it stopped (`…/01J….tmp-for-creation/index: No space left on device`).
fn of_path(path: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// One encoded chunk of a series: its time range and its bytes in [`Block::data`].
#[derive(Clone, Copy, Debug)]
struct Chunk {
    min_time: i64,
    max_time: i64,
    start: usize,
    len: usize,
}

/// One series: ranges into the block's label and chunk lists.
#[derive(Clone, Copy, Debug)]
struct Series {
    labels: (usize, usize),
    chunks: (usize, usize),
}

/// A label pair interned in one [`Block`] by [`Block::label`], for
/// [`Block::add_series_refs`]: valid for that block only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelRef(u32);

/// A label name interned in one [`Block`] by [`Block::name`], for [`Block::label_named`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabelName(u32);

/// No label (as for an empty value).
impl Default for LabelRef {
    fn default() -> Self {
        LabelRef::ABSENT
    }
}

impl LabelRef {
    /// A pair with an empty value: left out of the series, as Prometheus treats it as absent.
    const ABSENT: LabelRef = LabelRef(u32::MAX);
}

/// One block's contents: the series of one time window `[min_time, max_time)`, each added
/// once, in any order. Label names and values are interned once a block (each distinct
/// string and each distinct pair once), series hold their pairs' numbers, and chunk bytes are
/// kept in one growing buffer: no allocation per series.
#[derive(Debug)]
pub struct Block {
    min_time: i64,
    max_time: i64,
    /// Distinct label names and values: their text back to back (one buffer, not an
    /// allocation each), each symbol's range in it by number, and the numbers by text.
    symbol_text: String,
    symbols: Vec<(usize, usize)>,
    symbol_ids: HashTable<u32>,
    /// Distinct label pairs (name, value) as symbol numbers, by number.
    pairs: Vec<(u32, u32)>,
    pair_ids: FxHashMap<(u32, u32), u32>,
    /// Every series' pairs, back to back.
    labels: Vec<u32>,
    /// Every chunk's bytes, back to back.
    data: Vec<u8>,
    chunks: Vec<Chunk>,
    series: Vec<Series>,
    num_samples: u64,
    /// The earliest and latest sample time added.
    sample_range: Option<(i64, i64)>,
    /// The chunk being appended to, reused.
    scratch: XorChunk,
    /// The pairs of a series being added by name, reused.
    scratch_refs: Vec<LabelRef>,
}

impl Block {
    /// An empty block for samples with `min_time <= t < max_time` (milliseconds). The start
    /// becomes the ULID's time, so it must lie in `0 .. 2^48`.
    pub fn new(min_time: i64, max_time: i64) -> io::Result<Block> {
        if max_time <= min_time {
            return Err(invalid(format!(
                "block range [{min_time}, {max_time}) is empty"
            )));
        }
        if min_time < 0 || min_time as u64 > ulid::MAX_TIME {
            return Err(invalid(format!(
                "block start {min_time} ms is outside 0 .. 2^48 ms"
            )));
        }
        Ok(Block {
            min_time,
            max_time,
            symbol_text: String::new(),
            symbols: Vec::new(),
            symbol_ids: HashTable::new(),
            pairs: Vec::new(),
            pair_ids: FxHashMap::default(),
            labels: Vec::new(),
            data: Vec::new(),
            chunks: Vec::new(),
            series: Vec::new(),
            num_samples: 0,
            sample_range: None,
            scratch: XorChunk::new(),
            scratch_refs: Vec::new(),
        })
    }

    pub fn min_time(&self) -> i64 {
        self.min_time
    }

    /// Makes room for as many symbols, label pairs, series, labels and chunk bytes as `other` holds (a block of
    /// the window before is a good guess) and a quarter more, so that adding them grows no
    /// buffer, nor doubles one (a copy of the whole) for a block a little larger.
    pub fn reserve_like(&mut self, other: &Block) {
        let more = |n: usize| n.saturating_add(n / 4);
        self.symbol_text.reserve(more(other.symbol_text.len()));
        self.symbols.reserve(more(other.symbols.len()));
        let (text, spans) = (&self.symbol_text, &self.symbols);
        self.symbol_ids.reserve(more(other.symbols.len()), |&id| {
            symbol_hash(text, spans, id)
        });
        self.pairs.reserve(more(other.pairs.len()));
        self.pair_ids.reserve(more(other.pairs.len()));
        self.labels.reserve(more(other.labels.len()));
        self.data.reserve(more(other.data.len()));
        self.chunks.reserve(more(other.chunks.len()));
        self.series.reserve(more(other.series.len()));
    }

    pub fn max_time(&self) -> i64 {
        self.max_time
    }

    /// Series added with at least one sample.
    pub fn num_series(&self) -> usize {
        self.series.len()
    }

    pub fn num_samples(&self) -> u64 {
        self.num_samples
    }

    /// The earliest and the latest sample time added, if any.
    pub fn sample_range(&self) -> Option<(i64, i64)> {
        self.sample_range
    }

    /// Ends the block earlier, at `max_time` (exclusive), for a last window that is not over
    /// yet: Mimir refuses a block whose `maxTime` is in the future. Fails if a sample added
    /// is at or after `max_time`, or if the range would be empty or grow.
    pub fn shrink_max_time(&mut self, max_time: i64) -> io::Result<()> {
        let last = self.sample_range.map_or(self.min_time, |r| r.1);
        if max_time <= self.min_time || max_time > self.max_time || max_time <= last {
            return Err(invalid(format!(
                "cannot end block [{}, {}) at {max_time} (last sample at {last})",
                self.min_time, self.max_time
            )));
        }
        self.max_time = max_time;
        Ok(())
    }

    /// The text of label pair `p`.
    fn pair_text(&self, p: u32) -> (&str, &str) {
        let (n, v) = self.pairs[p as usize];
        (self.symbol_str(n), self.symbol_str(v))
    }

    /// The label pairs of series `s`, as added.
    #[cfg(test)]
    fn series_labels(&self, s: &Series) -> Vec<(&str, &str)> {
        self.labels[s.labels.0..s.labels.1]
            .iter()
            .map(|&p| self.pair_text(p))
            .collect()
    }

    /// The text of symbol `id`.
    fn symbol_str(&self, id: u32) -> &str {
        symbol_at(&self.symbol_text, &self.symbols, id)
    }

    fn symbol(&mut self, s: &str) -> io::Result<u32> {
        let hash = FxBuildHasher.hash_one(s);
        let (text, spans) = (&self.symbol_text, &self.symbols);
        if let Some(&id) = self
            .symbol_ids
            .find(hash, |&id| symbol_at(text, spans, id) == s)
        {
            return Ok(id);
        }
        let id = u32::try_from(self.symbols.len())
            .ok()
            .filter(|&id| id < u32::MAX)
            .ok_or_else(|| invalid("more than 2^32 label names and values in one block".into()))?;
        let start = self.symbol_text.len();
        self.symbol_text.push_str(s);
        self.symbols.push((start, self.symbol_text.len()));
        let (text, spans) = (&self.symbol_text, &self.symbols);
        self.symbol_ids
            .insert_unique(hash, id, |&id| symbol_hash(text, spans, id));
        Ok(id)
    }

    /// Interns the label pair `name="value"` for [`Block::add_series_refs`]. A pair with an
    /// empty value stands for no label at all (as Prometheus treats it); an empty name is
    /// refused.
    pub fn label(&mut self, name: &str, value: &str) -> io::Result<LabelRef> {
        if name.is_empty() {
            return Err(invalid("a label name is empty".into()));
        }
        if value.is_empty() {
            return Ok(LabelRef::ABSENT);
        }
        let pair = (self.symbol(name)?, self.symbol(value)?);
        self.pair(pair)
    }

    /// Interns a label name once, for [`Block::label_named`] (a caller that interns many
    /// values of the same names saves a look-up of the name each time).
    pub fn name(&mut self, name: &str) -> io::Result<LabelName> {
        if name.is_empty() {
            return Err(invalid("a label name is empty".into()));
        }
        Ok(LabelName(self.symbol(name)?))
    }

    /// [`Block::label`] with a name from [`Block::name`] of this block.
    pub fn label_named(&mut self, name: LabelName, value: &str) -> io::Result<LabelRef> {
        if value.is_empty() {
            return Ok(LabelRef::ABSENT);
        }
        let pair = (name.0, self.symbol(value)?);
        self.pair(pair)
    }

    fn pair(&mut self, pair: (u32, u32)) -> io::Result<LabelRef> {
        if let Some(&id) = self.pair_ids.get(&pair) {
            return Ok(LabelRef(id));
        }
        let id = u32::try_from(self.pairs.len())
            .ok()
            .filter(|&id| id < u32::MAX)
            .ok_or_else(|| invalid("more than 2^32 label pairs in one block".into()))?;
        self.pairs.push(pair);
        self.pair_ids.insert(pair, id);
        Ok(LabelRef(id))
    }

    /// Adds one series by its label pairs from [`Block::label`] of this block, in any order
    /// (absent pairs are left out), and its samples as [`Block::add_series`] takes them. A
    /// name given twice is reported by [`BlockWriter::write`], as a label set added twice.
    pub fn add_series_refs(
        &mut self,
        labels: &[LabelRef],
        samples: impl IntoIterator<Item = (i64, f64)>,
    ) -> io::Result<()> {
        self.add_refs(labels, samples)
    }

    /// Adds one series: its labels as `(name, value)` pairs sorted by name, `__name__`
    /// included (a pair with an empty value is left out, as Prometheus treats it as absent),
    /// and its samples `(t_ms, value)` in strictly increasing time within the block's range.
    /// Samples are encoded at once, [`MAX_SAMPLES_PER_CHUNK`] to a chunk. A series without
    /// samples is not added. On an error nothing of the series is kept.
    ///
    /// Adding the same label set twice is reported by [`BlockWriter::write`].
    pub fn add_series<N, V>(
        &mut self,
        labels: impl IntoIterator<Item = (N, V)>,
        samples: impl IntoIterator<Item = (i64, f64)>,
    ) -> io::Result<()>
    where
        N: AsRef<str>,
        V: AsRef<str>,
    {
        let mut refs = std::mem::take(&mut self.scratch_refs);
        refs.clear();
        let res = self.intern_sorted(labels, &mut refs);
        let res = res.and_then(|()| self.add_refs(&refs, samples));
        self.scratch_refs = refs;
        res
    }

    /// Interns labels given by name, checking that names are non-empty and strictly
    /// increasing.
    fn intern_sorted<N, V>(
        &mut self,
        labels: impl IntoIterator<Item = (N, V)>,
        refs: &mut Vec<LabelRef>,
    ) -> io::Result<()>
    where
        N: AsRef<str>,
        V: AsRef<str>,
    {
        let mut prev: Option<String> = None;
        for (n, v) in labels {
            let (n, v) = (n.as_ref(), v.as_ref());
            if n.is_empty() {
                return Err(invalid("a label name is empty".into()));
            }
            if let Some(prev) = &prev {
                if prev.as_str() >= n {
                    return Err(invalid(format!(
                        "label names not strictly increasing: {prev:?} then {n:?}"
                    )));
                }
            }
            prev = Some(n.to_owned());
            refs.push(self.label(n, v)?);
        }
        Ok(())
    }

    /// Adds a series of checked label pairs; on an error (or without samples) nothing of it
    /// is kept.
    fn add_refs(
        &mut self,
        labels: &[LabelRef],
        samples: impl IntoIterator<Item = (i64, f64)>,
    ) -> io::Result<()> {
        let marks = (self.labels.len(), self.data.len(), self.chunks.len());
        let res = self.add_refs_inner(labels, samples);
        if res.is_err() || self.chunks.len() == marks.2 {
            self.labels.truncate(marks.0);
            self.data.truncate(marks.1);
            self.chunks.truncate(marks.2);
        }
        res
    }

    fn add_refs_inner(
        &mut self,
        labels: &[LabelRef],
        samples: impl IntoIterator<Item = (i64, f64)>,
    ) -> io::Result<()> {
        let first_label = self.labels.len();
        self.labels.extend(
            labels
                .iter()
                .filter(|l| **l != LabelRef::ABSENT)
                .map(|l| l.0),
        );
        let label_range = (first_label, self.labels.len());
        if label_range.0 == label_range.1 {
            return Err(invalid("a series has no label with a value".into()));
        }
        let first_chunk = self.chunks.len();
        let mut first: Option<i64> = None;
        let mut last: Option<i64> = None;
        let mut count = 0u64;
        self.scratch.reset();
        for (t, v) in samples {
            if t < self.min_time || t >= self.max_time {
                return Err(invalid(format!(
                    "sample at {t} ms is outside the block [{}, {}) ({})",
                    self.min_time,
                    self.max_time,
                    self.describe(label_range)
                )));
            }
            if let Some(prev) = last {
                if t <= prev {
                    return Err(invalid(format!(
                        "sample times not increasing: {prev} then {t} ({})",
                        self.describe(label_range)
                    )));
                }
            }
            last = Some(t);
            first.get_or_insert(t);
            if self.scratch.num_samples() >= MAX_SAMPLES_PER_CHUNK {
                self.seal();
            }
            self.scratch.append(t, v);
            count = count.saturating_add(1);
        }
        if count == 0 {
            return Ok(());
        }
        self.seal();
        self.num_samples = self.num_samples.saturating_add(count);
        if let (Some(f), Some(l)) = (first, last) {
            self.sample_range = Some(match self.sample_range {
                Some((a, b)) => (a.min(f), b.max(l)),
                None => (f, l),
            });
        }
        self.series.push(Series {
            labels: label_range,
            chunks: (first_chunk, self.chunks.len()),
        });
        Ok(())
    }

    /// Moves the scratch chunk's bytes into `data` and starts a new one.
    fn seal(&mut self) {
        let start = self.data.len();
        self.data.extend_from_slice(self.scratch.bytes());
        self.chunks.push(Chunk {
            min_time: self.scratch.min_time(),
            max_time: self.scratch.max_time(),
            start,
            len: self.data.len() - start,
        });
        self.scratch.reset();
    }

    /// `{a="b", …}` of a label range, for error messages.
    fn describe(&self, range: (usize, usize)) -> String {
        let labels: Vec<(&str, &str)> = self.labels[range.0..range.1]
            .iter()
            .map(|&p| self.pair_text(p))
            .collect();
        describe(&labels)
    }
}

/// Symbol `id`'s text in a block's symbol buffer.
fn symbol_at<'t>(text: &'t str, spans: &[(usize, usize)], id: u32) -> &'t str {
    let (a, b) = spans[id as usize];
    &text[a..b]
}

/// The hash a symbol is found by (of its text, as [`Block::symbol`] hashes a look-up).
fn symbol_hash(text: &str, spans: &[(usize, usize)], id: u32) -> u64 {
    FxBuildHasher.hash_one(symbol_at(text, spans, id))
}

/// `{a="b", …}` for error messages.
fn describe(labels: &[(&str, &str)]) -> String {
    let inner: Vec<String> = labels.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

/// What a written block holds, as its `meta.json` says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockMeta {
    pub ulid: String,
    /// `DIR/<ULID>`.
    pub dir: PathBuf,
    pub min_time: i64,
    pub max_time: i64,
    pub num_samples: u64,
    pub num_series: u64,
    pub num_chunks: u64,
    /// Bytes of all its files.
    pub bytes: u64,
}

/// Writes blocks into one directory (a Prometheus data directory, or one to upload from).
#[derive(Clone, Debug)]
pub struct BlockWriter {
    dir: PathBuf,
    segment_size: u64,
    fsync: bool,
}

impl BlockWriter {
    /// A writer into `dir`, created if missing.
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<BlockWriter> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(BlockWriter {
            dir,
            segment_size: chunks::DEFAULT_SEGMENT_SIZE,
            fsync: true,
        })
    }

    /// Whether each block's files and directories are fsynced before its rename (the
    /// default, as Prometheus does: a block is whole even after a power loss). Without, a
    /// block still appears only once complete to anything that reads the directory, and an
    /// interrupted process still leaves no half block; only an OS crash or power loss during
    /// the run could leave a renamed block whose files never reached the disk. That saves
    /// 7 fsyncs a block (measured here: 100 small blocks in 2.6 s with them, 0.05 s without,
    /// then 0.01 s for one [`BlockWriter::sync`]: ~9 s over a month of 2 h blocks); call
    /// [`BlockWriter::sync`] once at the end to make everything durable.
    pub fn with_fsync(mut self, fsync: bool) -> BlockWriter {
        self.fsync = fsync;
        self
    }

    /// Makes everything written so far durable at once: `syncfs(2)` of the file system that
    /// holds the directory.
    pub fn sync(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let dir = File::open(&self.dir)?;
        // SAFETY: `syncfs` takes a file descriptor, which `dir` keeps open for the call.
        let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Chunk segment files of at most `bytes` (512 MiB by default, as Prometheus); for tests
    /// that want several segments from little data. Must be within 9 B .. 4 GiB.
    pub fn with_segment_size(mut self, bytes: u64) -> io::Result<BlockWriter> {
        chunks::Layout::new(bytes)?;
        self.segment_size = bytes;
        Ok(self)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `block` as `DIR/<ULID>/`, or nothing when it holds no sample (as Prometheus
    /// writes no empty block): `Ok(None)`. On an error no `DIR/<ULID>` is created or changed
    /// and the temporary directory is removed.
    pub fn write(&self, block: Block) -> io::Result<Option<BlockMeta>> {
        if block.num_samples == 0 {
            return Ok(None);
        }
        let (min_time, max_time, num_samples) = (block.min_time, block.max_time, block.num_samples);
        let Block {
            symbol_text,
            symbols,
            pairs,
            labels,
            data,
            chunks,
            series,
            ..
        } = &block;

        // The symbols and pairs the series use (interned ones may belong to series left out),
        // sorted: their ranks order label sets as their text does.
        let mut pair_used = vec![false; pairs.len()];
        for &p in labels.iter() {
            pair_used[p as usize] = true;
        }
        let mut sym_used = vec![false; symbols.len()];
        for (p, _) in pair_used.iter().enumerate().filter(|u| *u.1) {
            let (n, v) = pairs[p];
            sym_used[n as usize] = true;
            sym_used[v as usize] = true;
        }
        let mut sym_order: Vec<u32> = (0..symbols.len() as u32)
            .filter(|&i| sym_used[i as usize])
            .collect();
        let text = |i: u32| symbol_at(symbol_text, symbols, i);
        sym_order.sort_unstable_by(|&a, &b| text(a).cmp(text(b)));
        // The empty string first, as in every block Prometheus writes (see `index`).
        let mut sorted_symbols: Vec<&str> = Vec::with_capacity(sym_order.len() + 1);
        sorted_symbols.push("");
        let mut sym_rank = vec![0u32; symbols.len()];
        for (r, &i) in sym_order.iter().enumerate() {
            sym_rank[i as usize] = r as u32 + 1;
            sorted_symbols.push(text(i));
        }
        let mut pair_order: Vec<u32> = (0..pairs.len() as u32)
            .filter(|&p| pair_used[p as usize])
            .collect();
        let ranked = |p: u32| {
            let (n, v) = pairs[p as usize];
            (sym_rank[n as usize], sym_rank[v as usize])
        };
        pair_order.sort_unstable_by_key(|&p| ranked(p));
        let mut pair_rank = vec![0u32; pairs.len()];
        let sorted_pairs: Vec<(u32, u32)> = pair_order
            .iter()
            .enumerate()
            .map(|(r, &p)| {
                pair_rank[p as usize] = r as u32;
                ranked(p)
            })
            .collect();
        // Every series' pairs as ranks, sorted by name (ranks sort pairs by name first).
        let mut keys: Vec<u32> = labels.iter().map(|&p| pair_rank[p as usize]).collect();
        for s in series.iter() {
            let k = &mut keys[s.labels.0..s.labels.1];
            if !k.is_sorted() {
                k.sort_unstable();
            }
            if let Some(w) = k
                .windows(2)
                .find(|w| sorted_pairs[w[0] as usize].0 == sorted_pairs[w[1] as usize].0)
            {
                return Err(invalid(format!(
                    "label name {:?} twice in series {}",
                    sorted_symbols[sorted_pairs[w[0] as usize].0 as usize],
                    block.describe(s.labels)
                )));
            }
        }
        let key = |s: &Series| &keys[s.labels.0..s.labels.1];
        let mut order: Vec<&Series> = series.iter().collect();
        // Stable and adaptive (runs are found and merged): a caller that adds series in order
        // but for a few at the end pays next to nothing for the sort.
        order.sort_by(|a, b| key(a).cmp(key(b)));
        if let Some(w) = order.windows(2).find(|w| key(w[0]) == key(w[1])) {
            return Err(invalid(format!(
                "series {} added twice to the block",
                block.describe(w[0].labels)
            )));
        }

        // Plan where every chunk goes, then build the index on those references.
        let mut layout = chunks::Layout::new(self.segment_size)?;
        let mut metas = Vec::with_capacity(chunks.len());
        let mut hash = ContentHash::new();
        hash.update(&min_time.to_be_bytes());
        hash.update(&max_time.to_be_bytes());
        // Chunks that lie back to back in `data` are hashed at once (series added in order).
        let mut run = (0, 0);
        for s in &order {
            for c in &chunks[s.chunks.0..s.chunks.1] {
                let (reference, _) = layout.place(c.len)?;
                metas.push(index::ChunkMeta {
                    min_time: c.min_time,
                    max_time: c.max_time,
                    reference,
                });
                if c.start != run.1 {
                    hash.update(&data[run.0..run.1]);
                    run.0 = c.start;
                }
                run.1 = c.start + c.len;
            }
        }
        hash.update(&data[run.0..run.1]);
        let num_chunks = metas.len() as u64;
        let mut index_series = Vec::with_capacity(order.len());
        let mut at = 0;
        for s in &order {
            let n = s.chunks.1 - s.chunks.0;
            index_series.push(index::IndexSeries {
                labels: key(s),
                chunks: &metas[at..at + n],
            });
            at += n;
        }
        let index_bytes = index::build(&sorted_symbols, &sorted_pairs, &index_series)?;
        hash.update(&index_bytes);
        let (hi, lo) = hash.finish();
        let entropy = (u128::from(hi) << 16) | u128::from(lo & 0xffff);
        let id = ulid::encode(min_time, entropy)?;

        let final_dir = self.dir.join(&id);
        let tmp = self.dir.join(format!("{id}{TMP_SUFFIX}"));
        remove_if_present(&tmp)?;
        let guard = RemoveOnDrop(Some(tmp.clone()));

        fs::create_dir(&tmp).map_err(of_path(&tmp))?;
        let chunks_dir = tmp.join("chunks");
        fs::create_dir(&chunks_dir).map_err(of_path(&chunks_dir))?;
        fail_point("chunks")?;
        let mut seg = chunks::SegmentWriter::new(&chunks_dir, self.segment_size, self.fsync)
            .map_err(of_path(&chunks_dir))?;
        let placed = order.iter().flat_map(|s| &chunks[s.chunks.0..s.chunks.1]);
        for (c, m) in placed.zip(&metas) {
            seg.write(&data[c.start..c.start + c.len], m.reference)
                .map_err(of_path(&chunks_dir))?;
        }
        let (_, chunk_bytes) = seg.finish().map_err(of_path(&chunks_dir))?;
        self.sync_dir(&chunks_dir)?;
        let num_series = index_series.len() as u64;
        drop(index_series);
        drop(order);
        drop(block);

        fail_point("index")?;
        self.write_file(&tmp.join("index"), &index_bytes)?;
        let meta = BlockMeta {
            ulid: id.clone(),
            dir: final_dir.clone(),
            min_time,
            max_time,
            num_samples,
            num_series,
            num_chunks,
            bytes: 0,
        };
        let meta_json = meta_json(&meta);
        fail_point("meta")?;
        self.write_file(&tmp.join("meta.json"), meta_json.as_bytes())?;
        let tombstones = empty_tombstones();
        self.write_file(&tmp.join("tombstones"), &tombstones)?;
        self.sync_dir(&tmp)?;
        fail_point("rename")?;

        // Make it visible: a block of the same name (the same content, by construction) is
        // moved aside first, as Prometheus's `fileutil.Replace` would remove it.
        if final_dir.exists() {
            let aside = self.dir.join(format!("{id}{DELETE_SUFFIX}"));
            remove_if_present(&aside)?;
            fs::rename(&final_dir, &aside)?;
            if let Err(e) = fs::rename(&tmp, &final_dir) {
                // Put the old one back: an error leaves `DIR/<ULID>` as it was.
                let _ = fs::rename(&aside, &final_dir);
                return Err(e);
            }
            // The new block is in place (and equal to the old one); a failure to delete the
            // old copy is still reported, and Prometheus removes `*.tmp-for-deletion` itself.
            fs::remove_dir_all(&aside)?;
        } else {
            fs::rename(&tmp, &final_dir).map_err(of_path(&final_dir))?;
        }
        guard.disarm();
        self.sync_dir(&self.dir)?;

        let bytes = chunk_bytes
            .saturating_add(index_bytes.len() as u64)
            .saturating_add(meta_json.len() as u64)
            .saturating_add(tombstones.len() as u64);
        Ok(Some(BlockMeta { bytes, ..meta }))
    }
}

/// `meta.json` as Go's `json.MarshalIndent(meta, "", "\t")` writes a fresh level-1 block:
/// stats, compaction level 1 with the block itself as its only source, version 1.
fn meta_json(m: &BlockMeta) -> String {
    format!(
        "{{\n\t\"ulid\": \"{id}\",\n\t\"minTime\": {mint},\n\t\"maxTime\": {maxt},\n\t\"stats\": {{\n\t\t\"numSamples\": {ns},\n\t\t\"numSeries\": {nser},\n\t\t\"numChunks\": {nc}\n\t}},\n\t\"compaction\": {{\n\t\t\"level\": 1,\n\t\t\"sources\": [\n\t\t\t\"{id}\"\n\t\t]\n\t}},\n\t\"version\": 1\n}}",
        id = m.ulid,
        mint = m.min_time,
        maxt = m.max_time,
        ns = m.num_samples,
        nser = m.num_series,
        nc = m.num_chunks,
    )
}

/// An empty `tombstones` file: magic `0x0130BA30`, version 1, then the CRC32-C of nothing
/// (the version byte is left out of the checksum, `tombstones.WriteFile`): 9 bytes.
fn empty_tombstones() -> Vec<u8> {
    let mut b = Vec::with_capacity(9);
    b.extend_from_slice(&0x0130_BA30u32.to_be_bytes());
    b.push(1);
    b.extend_from_slice(&encoding::crc32c(&[]).to_be_bytes());
    b
}

impl BlockWriter {
    fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let write = || -> io::Result<()> {
            let mut f = File::create(path)?;
            f.write_all(bytes)?;
            if self.fsync {
                f.sync_all()?;
            }
            Ok(())
        };
        write().map_err(of_path(path))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.fsync {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(of_path(dir))?;
        }
        Ok(())
    }
}

fn remove_if_present(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
thread_local! {
    /// The stage at which the tests make [`BlockWriter::write`] fail.
    static FAIL_AT: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// A failure injected by the tests at `stage` (nothing outside tests).
fn fail_point(stage: &str) -> io::Result<()> {
    #[cfg(test)]
    if FAIL_AT.with(|f| f.get()) == Some(stage) {
        return Err(io::Error::other(format!("injected failure at {stage}")));
    }
    let _ = stage;
    Ok(())
}

/// Removes a temporary block directory when writing it fails half-way.
struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_dir_all(p);
        }
    }
}

#[cfg(test)]
mod tests;
