//! The TSDB block writer (`tokenmeter::tsdb`) judged by Prometheus's own tools, never by
//! itself: blocks written here must be accepted by the real `promtool tsdb analyze`/`list`,
//! read back sample for sample by `promtool tsdb dump`, and served by a real Prometheus 2.53.
//! The tools come from `TOKENMETER_BACKENDS` (scripts/install-backends.sh); a missing tool
//! fails the test, it never skips.

use crate::common;
use crate::common::{backend, Prometheus};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tokenmeter::tsdb::{Block, BlockMeta, BlockWriter};

const H: i64 = 3_600_000;
/// 2026-11-20T00:00:00Z in ms: a multiple of 2 h, as Prometheus aligns blocks.
const T0: i64 = 1_795_651_200_000;

pub(crate) type Labels = Vec<(String, String)>;
pub(crate) type Samples = Vec<(i64, f64)>;

pub(crate) fn promtool() -> PathBuf {
    backend("promtool")
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    let mut l: Labels = pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    l.sort();
    l
}

/// A small deterministic generator (xorshift), so no test depends on a random crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The series of three consecutive 2 h windows: counters with several chunks, a histogram
/// family with `le` labels, label values that need quoting or are not ASCII, gauges with
/// zero, negative, fractional and 2^53 values, and a sparse series with large gaps.
fn history() -> Vec<(Labels, Samples)> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut out = Vec::new();
    let end = T0 + 6 * H;
    // Counters: 15 s steps (1440 samples: 4 chunks a block), integer token counts.
    for (model, key) in [("gpt-4o", "k1"), ("gpt-4o", "k2"), ("llama-3", "k1")] {
        let mut v = 0.0;
        let samples = (0..1440)
            .map(|i| {
                v += (rng.next() % 5000) as f64;
                (T0 + i * 15_000, v)
            })
            .collect();
        out.push((
            labels(&[
                ("__name__", "tokenmeter_tokens_total"),
                ("job", "tokenmeter"),
                ("model", model),
                ("api_key_id", key),
            ]),
            samples,
        ));
    }
    // Cost: fractional sums, irregular times (jitter of a few ms).
    let mut cost = 0.0;
    let samples = (0..700)
        .map(|i| {
            cost += (rng.next() % 100_000) as f64 * 1e-7;
            (T0 + i * 30_000 + (rng.next() % 7) as i64, cost)
        })
        .collect();
    out.push((
        labels(&[
            ("__name__", "tokenmeter_cost_usd_total"),
            ("model", "gpt-4o"),
        ]),
        samples,
    ));
    // A histogram family: cumulative buckets, _sum and _count every minute.
    let bounds = ["0.1", "0.5", "1", "5", "+Inf"];
    let mut counts = [0u64; 5];
    let (mut sum, mut count) = (0.0f64, 0u64);
    let mut fam: Vec<Samples> = vec![Vec::new(); bounds.len() + 2];
    for i in 0..360 {
        let t = T0 + i * 60_000;
        for _ in 0..(rng.next() % 4) {
            let d = (rng.next() % 8000) as f64 / 1000.0;
            sum += d;
            count += 1;
            let limits = [0.1, 0.5, 1.0, 5.0, f64::INFINITY];
            for (c, lim) in counts.iter_mut().zip(limits) {
                if d <= lim {
                    *c += 1;
                }
            }
        }
        for (b, c) in counts.iter().enumerate() {
            fam[b].push((t, *c as f64));
        }
        fam[bounds.len()].push((t, sum));
        fam[bounds.len() + 1].push((t, count as f64));
    }
    for (b, le) in bounds.iter().enumerate() {
        out.push((
            labels(&[
                ("__name__", "tokenmeter_request_duration_seconds_bucket"),
                ("le", le),
            ]),
            fam[b].clone(),
        ));
    }
    out.push((
        labels(&[("__name__", "tokenmeter_request_duration_seconds_sum")]),
        fam[bounds.len()].clone(),
    ));
    out.push((
        labels(&[("__name__", "tokenmeter_request_duration_seconds_count")]),
        fam[bounds.len() + 1].clone(),
    ));
    // Label values that need escaping, or are not ASCII.
    for (i, v) in [
        "quote\"d",
        "back\\slash",
        "new\nline",
        "tab\there",
        "bell\u{7}",
        "модель-日本語",
        "emoji 🚀",
        "=,{}",
    ]
    .iter()
    .enumerate()
    {
        out.push((
            labels(&[("__name__", "tokenmeter_odd_labels"), ("value", v)]),
            vec![(T0 + i as i64 * 1000, i as f64), (end - 1, -(i as f64))],
        ));
    }
    // Gauges: equal values, zero and negative, up to 2^53, tiny.
    let specials = [
        0.0,
        -0.0,
        -1.5,
        9_007_199_254_740_992.0,
        9_007_199_254_740_991.0,
        1e-300,
    ];
    out.push((
        labels(&[("__name__", "tokenmeter_gauge")]),
        (0..600)
            .map(|i| (T0 + i * 36_000, specials[(i as usize / 7) % specials.len()]))
            .collect(),
    ));
    // Sparse: large gaps within and across blocks.
    out.push((
        labels(&[("__name__", "tokenmeter_sparse")]),
        vec![
            (T0, 1.0),
            (T0 + 1, 2.0),
            (T0 + 2 * H - 1, 3.0),
            (T0 + 4 * H + 123, 4.0),
            (end - 1, 5.0),
        ],
    ));
    out
}

/// Writes `history` as one block per 2 h window under `dir` (the middle block with tiny
/// chunk segments, so promtool reads a block spread over many segment files).
fn write_blocks(dir: &Path, history: &[(Labels, Samples)]) -> Vec<BlockMeta> {
    write_blocks_with(dir, history, Some(1024))
}

/// Writes `history` as one block per 2 h window under `dir`, the middle one with chunk
/// segments of `middle_segment` bytes if given (else Prometheus's 512 MiB).
fn write_blocks_with(
    dir: &Path,
    history: &[(Labels, Samples)],
    middle_segment: Option<u64>,
) -> Vec<BlockMeta> {
    let mut metas = Vec::new();
    for w in 0..3 {
        let (mint, maxt) = (T0 + w * 2 * H, T0 + (w + 1) * 2 * H);
        let mut block = Block::new(mint, maxt).unwrap();
        for (l, s) in history {
            let window = s.iter().copied().filter(|(t, _)| *t >= mint && *t < maxt);
            block
                .add_series(l.iter().map(|(n, v)| (n, v)), window)
                .unwrap();
        }
        let mut writer = BlockWriter::new(dir).unwrap();
        if let (1, Some(size)) = (w, middle_segment) {
            writer = writer.with_segment_size(size).unwrap();
        }
        // A window without samples gets no block.
        metas.extend(writer.write(block).unwrap());
    }
    metas
}

pub(crate) fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Reverses Go's `strconv.Quote` (which `labels.String()` uses for values): the escapes it
/// writes are `\a \b \f \n \r \t \v \\ \"`, `\xHH`, `\uHHHH` and `\UHHHHHHHH`.
fn go_unquote(s: &str) -> (String, &str) {
    let mut chars = s.char_indices();
    assert_eq!(chars.next().map(|c| c.1), Some('"'), "{s}");
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return (out, &s[i + 1..]),
            '\\' => {
                let (_, e) = chars.next().unwrap();
                let mut hex = |n: usize| {
                    let h: String = (0..n).map(|_| chars.next().unwrap().1).collect();
                    u32::from_str_radix(&h, 16).unwrap()
                };
                out.push(match e {
                    'a' => '\u{7}',
                    'b' => '\u{8}',
                    'f' => '\u{c}',
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    'v' => '\u{b}',
                    'x' => char::from_u32(hex(2)).unwrap(),
                    'u' => char::from_u32(hex(4)).unwrap(),
                    'U' => char::from_u32(hex(8)).unwrap(),
                    other => other,
                });
            }
            c => out.push(c),
        }
    }
    panic!("unterminated {s}");
}

/// Parses `promtool tsdb dump` lines: `{a="b", c="d"} <%g value> <ms>`.
pub(crate) fn parse_dump(text: &str) -> BTreeMap<Labels, Samples> {
    let mut out: BTreeMap<Labels, Samples> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let mut rest = line.strip_prefix('{').unwrap();
        let mut l = Labels::new();
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            rest = rest.strip_prefix(", ").unwrap_or(rest);
            let (name, r) = rest.split_once('=').unwrap();
            let (value, r) = go_unquote(r);
            l.push((name.to_string(), value));
            rest = r;
        }
        let mut parts = rest.split_whitespace();
        let v: f64 = parts.next().unwrap().parse().unwrap();
        let t: i64 = parts.next().unwrap().parse().unwrap();
        out.entry(l).or_default().push((t, v));
    }
    out
}

/// What the history should read back as: series with samples only, in Prometheus's order.
fn expected(history: &[(Labels, Samples)], mint: i64, maxt: i64) -> BTreeMap<Labels, Samples> {
    history
        .iter()
        .map(|(l, s)| {
            let s: Samples = s
                .iter()
                .copied()
                .filter(|(t, _)| *t >= mint && *t <= maxt)
                .collect();
            (l.clone(), s)
        })
        .filter(|(_, s)| !s.is_empty())
        .collect()
}

pub(crate) fn assert_same(got: &BTreeMap<Labels, Samples>, want: &BTreeMap<Labels, Samples>) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "series differ"
    );
    for (l, w) in want {
        let g = &got[l];
        assert_eq!(g.len(), w.len(), "{l:?}: sample count");
        for (a, b) in g.iter().zip(w) {
            assert_eq!(a.0, b.0, "{l:?}: timestamp");
            assert!(
                a.1.to_bits() == b.1.to_bits(),
                "{l:?} at {}: dumped {} wrote {}",
                a.0,
                a.1,
                b.1
            );
        }
    }
}

#[test]
fn promtool_analyzes_every_block_and_dumps_back_every_sample_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("blocks");
    let history = history();
    let metas = write_blocks(&dir, &history);
    assert!(
        std::fs::read_dir(dir.join(&metas[1].ulid).join("chunks"))
            .unwrap()
            .count()
            > 3,
        "the middle block spans several chunk segments"
    );

    // analyze --extended reads the index (postings, label indices) and every chunk.
    for m in &metas {
        let window = expected(&history, m.min_time, m.max_time - 1);
        let pairs: std::collections::BTreeSet<&(String, String)> =
            window.keys().flatten().collect();
        let names: std::collections::BTreeSet<&String> = pairs.iter().map(|p| &p.0).collect();
        let entries: usize = window.keys().map(Vec::len).sum();
        let text = run(Command::new(promtool())
            .args(["tsdb", "analyze", "--extended"])
            .arg(&dir)
            .arg(&m.ulid));
        assert!(text.contains(&format!("Block ID: {}", m.ulid)), "{text}");
        assert!(
            text.contains(&format!("Total Series: {}", m.num_series)),
            "{text}"
        );
        assert!(
            text.contains(&format!("Label names: {}\n", names.len())),
            "{text}"
        );
        assert!(
            text.contains(&format!("Postings (unique label pairs): {}\n", pairs.len())),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "Postings entries (total label pairs): {entries}\n"
            )),
            "{text}"
        );
        let per_chunk = text
            .lines()
            .find_map(|l| l.strip_prefix("samples per float chunk (min/avg/max): "))
            .unwrap_or_else(|| panic!("no chunk analysis: {text}"));
        let max: usize = per_chunk.rsplit('/').next().unwrap().parse().unwrap();
        assert!(max <= 120, "{per_chunk}");
    }
    // list reads every meta.json.
    let list = run(Command::new(promtool()).args(["tsdb", "list"]).arg(&dir));
    for m in &metas {
        let row = list
            .lines()
            .find(|l| l.starts_with(&m.ulid))
            .unwrap_or_else(|| panic!("{} not listed:\n{list}", m.ulid));
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert!(cols.contains(&m.num_samples.to_string().as_str()), "{row}");
        assert!(cols.contains(&m.num_series.to_string().as_str()), "{row}");
    }

    // The whole history, then one window cut across block boundaries.
    let sandbox = tmp.path().join("sandbox");
    std::fs::create_dir(&sandbox).unwrap();
    for (mint, maxt) in [(T0, T0 + 6 * H - 1), (T0 + H + 17, T0 + 4 * H + 123)] {
        let text = dump(&dir, &sandbox, mint, maxt);
        assert_same(&parse_dump(&text), &expected(&history, mint, maxt));
    }
    let total: u64 = metas.iter().map(|m| m.num_samples).sum();
    let written: usize = history.iter().map(|(_, s)| s.len()).sum();
    assert_eq!(total, written as u64);
}

/// `history` with every timestamp cut to whole seconds (OpenMetrics carries seconds, and
/// promtool truncates `seconds × 1000`, which can lose a millisecond), repeats dropped.
fn whole_seconds(history: &[(Labels, Samples)]) -> Vec<(Labels, Samples)> {
    history
        .iter()
        .map(|(l, s)| {
            let mut out: Samples = Vec::new();
            for &(t, v) in s {
                let t = t - t.rem_euclid(1000);
                if out.last().is_none_or(|p| p.0 < t) {
                    out.push((t, v));
                }
            }
            (l.clone(), out)
        })
        .collect()
}

/// The history as an OpenMetrics file, one family after another.
fn openmetrics(history: &[(Labels, Samples)]) -> String {
    let esc = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let mut by_name: BTreeMap<&str, Vec<&(Labels, Samples)>> = BTreeMap::new();
    for s in history {
        let name = &s.0.iter().find(|(n, _)| n == "__name__").unwrap().1;
        by_name.entry(name).or_default().push(s);
    }
    let mut out = String::new();
    for (name, series) in by_name {
        out.push_str(&format!("# TYPE {name} unknown\n"));
        for (l, samples) in series {
            let inner: Vec<String> = l
                .iter()
                .filter(|(n, _)| n != "__name__")
                .map(|(n, v)| format!("{n}=\"{}\"", esc(v)))
                .collect();
            for (t, v) in samples {
                out.push_str(&format!(
                    "{name}{{{}}} {v:?} {}\n",
                    inner.join(","),
                    t / 1000
                ));
            }
        }
    }
    out.push_str("# EOF\n");
    out
}

/// `promtool tsdb dump` of `dir` between `mint` and `maxt` (ms, inclusive).
///
/// promtool 2.53 opens the directory as a database and fails ("read WAL: find last
/// checkpoint") when it has no `wal/` — with its own `create-blocks-from` output as with
/// these blocks — unless something (`tsdb analyze`) made one; an empty one is made here.
pub(crate) fn dump(dir: &Path, sandbox: &Path, mint: i64, maxt: i64) -> String {
    std::fs::create_dir_all(dir.join("wal")).unwrap();
    run(Command::new(promtool())
        .args(["tsdb", "dump"])
        .arg(format!("--sandbox-dir-root={}", sandbox.display()))
        .arg(format!("--min-time={mint}"))
        .arg(format!("--max-time={maxt}"))
        .arg(dir))
}

/// The same samples through promtool's own path (OpenMetrics → `create-blocks-from
/// openmetrics`) and through this writer dump to the same text, line for line.
#[test]
fn promtool_dumps_the_same_text_from_these_blocks_as_from_its_own_blocks_of_the_same_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let history = whole_seconds(&history());
    let om = tmp.path().join("history.om");
    std::fs::write(&om, openmetrics(&history)).unwrap();
    let theirs = tmp.path().join("promtool");
    run(Command::new(promtool())
        .args(["tsdb", "create-blocks-from", "openmetrics", "--quiet"])
        .arg(&om)
        .arg(&theirs));
    let ours = tmp.path().join("ours");
    write_blocks(&ours, &history);
    let sandbox = tmp.path().join("sandbox");
    std::fs::create_dir(&sandbox).unwrap();
    let (a, b) = (
        dump(&theirs, &sandbox, i64::MIN, i64::MAX),
        dump(&ours, &sandbox, i64::MIN, i64::MAX),
    );
    assert_eq!(
        a.lines().count(),
        history.iter().map(|(_, s)| s.len()).sum::<usize>()
    );
    if a != b {
        let diff = a
            .lines()
            .zip(b.lines())
            .find(|(x, y)| x != y)
            .map(|(x, y)| format!("promtool's: {x}\nours:       {y}"));
        panic!(
            "the dumps differ ({} vs {} lines); first difference:\n{diff:?}",
            a.lines().count(),
            b.lines().count()
        );
    }
}

/// The judge is strict: one flipped bit in a chunk's data or in a series entry of the index
/// makes `promtool tsdb analyze --extended` (which reads every series entry and every chunk)
/// fail on its checksum, so its accepting the blocks above vouches for the CRCs this writer
/// computes, not just for the layout. (`tsdb dump` is no judge of chunk checksums: 2.53's
/// `formatSeriesSet` returns the series set's error, nil, on an iterator's error, so a bad
/// chunk only cuts the dump short — which the sample-for-sample comparisons would catch.)
#[test]
fn promtool_refuses_a_block_with_one_flipped_bit_in_a_chunk_or_in_the_index() {
    let tmp = tempfile::tempdir().unwrap();
    let history = history();
    for target in ["chunk", "series"] {
        let dir = tmp.path().join(target);
        let metas = write_blocks(&dir, &history);
        let block = dir.join(&metas[0].ulid);
        let (file, at) = match target {
            // The first chunk record: header 8, length, encoding, then data.
            "chunk" => (block.join("chunks/000001"), 8 + 2 + 5),
            _ => {
                let index = std::fs::read(block.join("index")).unwrap();
                let toc = index.len() - 52;
                let series = u64::from_be_bytes(index[toc + 8..toc + 16].try_into().unwrap());
                // The first entry (16-aligned): its length, then the label count.
                (block.join("index"), (series as usize).div_ceil(16) * 16 + 2)
            }
        };
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[at] ^= 0x10;
        std::fs::write(&file, bytes).unwrap();
        let out = Command::new(promtool())
            .args(["tsdb", "analyze", "--extended"])
            .arg(&dir)
            .arg(&metas[0].ulid)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{target}: promtool took the corrupt block"
        );
        assert!(err.contains("checksum"), "{target}: {err}");
    }
}

/// With at most 120 samples a series in each 2 h window (so Prometheus's head cuts no chunk
/// either), the `index`, `chunks/000001` and `tombstones` that promtool's own writer makes
/// from the same samples are byte-identical to these, and `meta.json` is but for the ULID
/// and the time range: the strongest check of the format there is.
#[test]
fn block_files_are_byte_identical_to_those_promtool_writes_for_the_same_samples() {
    let tmp = tempfile::tempdir().unwrap();
    // Every 90 s: 80 samples a window; the sparse and odd-label series as they are.
    let history: Vec<(Labels, Samples)> = whole_seconds(&history())
        .into_iter()
        .map(|(l, s)| {
            let mut kept: Samples = Vec::new();
            for (t, v) in s {
                if kept.last().is_none_or(|p| t - p.0 >= 90_000) {
                    kept.push((t, v));
                }
            }
            (l, kept)
        })
        .collect();
    for w in 0..3 {
        let (mint, maxt) = (T0 + w * 2 * H, T0 + (w + 1) * 2 * H);
        for (l, s) in &history {
            let n = s.iter().filter(|(t, _)| *t >= mint && *t < maxt).count();
            assert!(n <= 120, "{l:?}: {n} samples in window {w}");
        }
    }
    assert_eq!(byte_compare_with_promtool(tmp.path(), &history), 3);
}

/// Writes `history` through promtool (OpenMetrics → `create-blocks-from`) and through this
/// writer (one block per 2 h window), and asserts every block's files are the same bytes
/// (`meta.json` but for the ULID and the time range). Returns how many blocks it compared.
fn byte_compare_with_promtool(tmp: &Path, history: &[(Labels, Samples)]) -> usize {
    let om = tmp.join("history.om");
    std::fs::write(&om, openmetrics(history)).unwrap();
    let theirs = tmp.join("promtool");
    run(Command::new(promtool())
        .args(["tsdb", "create-blocks-from", "openmetrics", "--quiet"])
        .arg(&om)
        .arg(&theirs));
    let ours = tmp.join("ours");
    let metas = write_blocks_with(&ours, history, None);
    let mut compared = 0;
    for entry in std::fs::read_dir(&theirs).unwrap() {
        let block = entry.unwrap().path();
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(block.join("meta.json")).unwrap()).unwrap();
        let min = meta["minTime"].as_i64().unwrap();
        let mine = metas
            .iter()
            .find(|m| m.min_time <= min && min < m.max_time)
            .unwrap_or_else(|| panic!("no block of ours holds {min}"));
        for file in ["index", "chunks/000001"] {
            let (a, b) = (
                std::fs::read(block.join(file)).unwrap(),
                std::fs::read(mine.dir.join(file)).unwrap(),
            );
            if a != b {
                let at = a.iter().zip(&b).position(|(x, y)| x != y);
                panic!(
                    "{file} of the block from {min}: {} bytes (promtool) vs {} (ours), first difference at {at:?}",
                    a.len(),
                    b.len()
                );
            }
        }
        // meta.json: the same text but for the ULID and the time range.
        let theirs_text = std::fs::read_to_string(block.join("meta.json")).unwrap();
        let their_id = meta["ulid"].as_str().unwrap();
        let max = meta["maxTime"].as_i64().unwrap();
        let expected_text = theirs_text
            .replace(their_id, &mine.ulid)
            .replace(
                &format!("\"minTime\": {min},"),
                &format!("\"minTime\": {},", mine.min_time),
            )
            .replace(
                &format!("\"maxTime\": {max},"),
                &format!("\"maxTime\": {},", mine.max_time),
            );
        assert_eq!(
            std::fs::read_to_string(mine.dir.join("meta.json")).unwrap(),
            expected_text
        );
        assert_eq!(
            std::fs::read(block.join("tombstones")).unwrap(),
            std::fs::read(mine.dir.join("tombstones")).unwrap()
        );
        compared += 1;
    }
    compared
}

/// Thousands of series and symbols, series crossing a window's end: the index's symbol table
/// and postings offset table are far longer than the 32 entries Prometheus's reader steps
/// by, and the files are still Prometheus's own bytes.
#[test]
fn blocks_of_thousands_of_series_are_byte_identical_to_promtool_s_too() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = Rng(42);
    let mut history = Vec::new();
    for key in 0..1500 {
        for model in ["gpt-4o", "gpt-4o-mini", "llama-3"] {
            if rng.next().is_multiple_of(3) {
                continue;
            }
            let start = T0 + (rng.next() % 10_800) as i64 * 1000;
            let mut v = 0.0;
            let samples = (0..(1 + rng.next() % 40) as i64)
                .map(|i| {
                    v += (rng.next() % 900) as f64;
                    (start + i * 60_000, v)
                })
                .collect();
            history.push((
                labels(&[
                    ("__name__", "tokenmeter_tokens_total"),
                    ("api_key_id", &format!("key-{key:04}-{}", rng.next() % 1000)),
                    ("model", model),
                    ("job", "tokenmeter"),
                ]),
                samples,
            ));
        }
    }
    assert_eq!(byte_compare_with_promtool(tmp.path(), &history), 2);
}

#[test]
fn prometheus_2_53_serves_the_final_value_of_every_series_from_the_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let history = history();
    write_blocks(&dir, &history);
    let prom = Prometheus::start_on_blocks(&dir);
    // It loaded the blocks (possibly compacted already: that reads every chunk too) and
    // refused none.
    let (_, metrics) = common::get(&prom.addr, "/metrics").unwrap();
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from Prometheus's /metrics"))
    };
    assert!(metric("prometheus_tsdb_blocks_loaded") >= 1.0);
    assert_eq!(metric("prometheus_tsdb_reloads_failures_total"), 0.0);
    // At the end of the history every series' last sample is within the 5 min lookback only
    // for those written then; query each at its own last sample instead.
    for (l, s) in &history {
        let &(t, v) = s.last().unwrap();
        let name = &l.iter().find(|(n, _)| n == "__name__").unwrap().1;
        // Prometheus takes the time in seconds with a fraction: t exactly.
        let at = format!("{}.{:03}", t.div_euclid(1000), t.rem_euclid(1000));
        let body = format!("query={}&time={at}", common::urlencode(name));
        let results = common::instant_query(&prom.addr, &body, name);
        let want: BTreeMap<String, String> = l.iter().cloned().collect();
        let got = results
            .iter()
            .find(|(m, _)| {
                // The result drops __name__ only for functions; a bare selector keeps it.
                m == &want
            })
            .unwrap_or_else(|| panic!("{want:?} not served at {t}: {results:?}"));
        assert_eq!(got.1.to_bits(), v.to_bits(), "{want:?} at {t}");
    }
    // And a range function over the counters: increase over the first hour of one key.
    let (l, s) = &history[0];
    let at = (T0 + H) / 1000;
    let first_hour: Vec<&(i64, f64)> = s.iter().filter(|(t, _)| *t <= T0 + H).collect();
    let raw = first_hour.last().unwrap().1 - first_hour[0].1;
    let key = &l.iter().find(|(n, _)| n == "api_key_id").unwrap().1;
    let model = &l.iter().find(|(n, _)| n == "model").unwrap().1;
    let q =
        format!("increase(tokenmeter_tokens_total{{model=\"{model}\",api_key_id=\"{key}\"}}[1h])");
    let r = prom.query_at(&q, at);
    assert_eq!(r.len(), 1, "{r:?}");
    // increase() extrapolates to the window's edges: within one step's share of the raw rise.
    assert!(
        r[0].1 >= raw && r[0].1 <= raw * 1.01,
        "increase {} vs raw rise {raw}",
        r[0].1
    );
}
