//! Micro-benchmarks of the TSDB block writer (`tokenmeter::tsdb`): gathering one 2 h window's
//! series into a `Block` (XOR-encoding every sample), and writing it as a block directory
//! (index, chunks, meta.json, tombstones, fsyncs and the rename).
//!
//! `cargo bench --bench tsdb`. Blocks are written under a temp dir (`$TMPDIR`): the figures
//! include the page cache, the file system there and its fsyncs, not a disk's speed.

use divan::counter::ItemsCount;
use divan::{black_box, Bencher};
use tokenmeter::tsdb::{Block, BlockWriter};

fn main() {
    divan::Divan::default()
        .min_time(std::time::Duration::from_secs(1))
        .config_with_args()
        .main();
}

/// 2026-11-20T00:00:00Z in ms, a multiple of 2 h.
const T0: i64 = 1_795_651_200_000;
const WINDOW: i64 = 2 * 3_600_000;

/// One series: its labels and its samples.
type Series = (Vec<(String, String)>, Vec<(i64, f64)>);

/// Series of a replay window as `--step 1m` gives them: a token counter per key, model and
/// type, 120 samples each (every step of the 2 h window).
fn series(n: usize) -> Vec<Series> {
    (0..n)
        .map(|i| {
            let labels = vec![
                (
                    "__name__".to_string(),
                    "tokenmeter_tokens_total".to_string(),
                ),
                ("api_key_id".to_string(), format!("key-{:05}", i / 6)),
                ("instance".to_string(), "node-1".to_string()),
                ("job".to_string(), "tokenmeter".to_string()),
                ("model".to_string(), format!("model-{}", i % 3)),
                ("type".to_string(), ["input", "output"][i % 2].to_string()),
            ];
            let mut v = 0.0;
            let samples = (0..120)
                .map(|k| {
                    v += ((i * 31 + k as usize * 17) % 500) as f64;
                    (T0 + k * 60_000, v)
                })
                .collect();
            (labels, samples)
        })
        .collect()
}

fn gather(series: &[Series]) -> Block {
    let mut block = Block::new(T0, T0 + WINDOW).unwrap_or_else(|e| panic!("{e}"));
    for (l, s) in series {
        block
            .add_series(l.iter().map(|(n, v)| (n, v)), s.iter().copied())
            .unwrap_or_else(|e| panic!("{e}"));
    }
    block
}

/// Adding a window's series to a block, per sample.
#[divan::bench(args = [1_000, 10_000])]
fn add_series(bencher: Bencher, n: usize) {
    let input = series(n);
    bencher
        .counter(ItemsCount::new(n * 120))
        .bench(|| black_box(gather(&input)));
}

/// Writing a gathered block to disk, per sample.
#[divan::bench(args = [1_000, 10_000])]
fn write_block(bencher: Bencher, n: usize) {
    let input = series(n);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let writer = BlockWriter::new(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    bencher
        .counter(ItemsCount::new(n * 120))
        .with_inputs(|| gather(&input))
        .bench_values(|block| black_box(writer.write(block).unwrap_or_else(|e| panic!("{e}"))));
}
