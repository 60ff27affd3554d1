//! Micro-benchmarks of the per-line hot path: the JSON scanner, the parser (one line of each
//! JSON format), and counting a record into the store (with and without pricing).
//!
//! `cargo bench --bench hot_path` (the `bench` profile: the release one). The access-log lines
//! are `benches/gen-access-log.py`'s (seed 42), the one generator of the project's benchmarks,
//! run once at the start; Kong and Higress lines are the first lines of
//! `tests/fixtures/formats/`. Setup checks that every line parses as a record
//! of the format it is named after, so a benchmark cannot silently measure a rejected line.

use std::process::Command;
use std::sync::{Arc, OnceLock};

use divan::counter::{BytesCount, ItemsCount};
use divan::{black_box, Bencher};
use tokenmeter::aggregate::Store;
use tokenmeter::config::Config;
use tokenmeter::json::Scanner;
use tokenmeter::parse::format::Format;
use tokenmeter::parse::{Parsed, Parser, Record};
use tokenmeter::pricing::{parse_price_file, PriceTable, Pricing};

fn main() {
    // 500 samples of 1,000 iterations each (0.1-1.5 s per benchmark). Left to itself divan
    // takes samples of 1-16 iterations here, and between two samples its own bookkeeping
    // evicts the store's and the parser's cache lines (a single `Store::add_at` measured
    // 2-3x slower than in a batch). `--sample-count` / `--sample-size` override these.
    divan::Divan::default()
        .sample_count(500)
        .sample_size(1000)
        .config_with_args()
        .main();
}

/// Distinct lines the rotating benchmarks cycle through (more than a branch predictor or the
/// L1 cache can learn; the store benchmarks get 13,712 series from them).
const ROTATING: usize = 50_000;

const KONG: &str = include_str!("../tests/fixtures/formats/kong.jsonl");
const HIGRESS: &str = include_str!("../tests/fixtures/formats/higress.jsonl");

fn first_line(file: &'static str) -> &'static str {
    file.lines().next().expect("fixture has a first line")
}

// ---------------------------------------------------------------------------------------------
// Lines of benches/gen-access-log.py
// ---------------------------------------------------------------------------------------------

/// Which keys the lines carry: the seed's (`model`, `llm_input_token`, ...) or Envoy AI
/// Gateway ≥ v0.6's `gen_ai.*` (`--keys gen_ai` of the script; same values).
#[derive(Clone, Copy)]
enum Keys {
    Seed,
    GenAi,
}

/// The first `ROTATING` lines of `python3 benches/gen-access-log.py -s 42 [--keys gen_ai]`
/// (~3 % error lines with null counts, ~1 % with counts as strings), without their newlines:
/// the generator of BENCHMARKS.md's whole-process figures, run once per key set for the whole
/// run (records borrow from the lines, so they are kept to its end).
fn lines(keys: Keys) -> &'static [&'static str] {
    static SEED: OnceLock<Vec<&'static str>> = OnceLock::new();
    static GEN_AI: OnceLock<Vec<&'static str>> = OnceLock::new();
    let (cell, extra): (_, &[&str]) = match keys {
        Keys::Seed => (&SEED, &[]),
        Keys::GenAi => (&GEN_AI, &["--keys", "gen_ai"]),
    };
    cell.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/gen-access-log.py");
        let out = Command::new("python3")
            .arg(script)
            .args(["-n", &ROTATING.to_string(), "-s", "42"])
            .args(extra)
            .output()
            .expect("python3 runs benches/gen-access-log.py");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text: &'static str = String::from_utf8(out.stdout).unwrap().leak();
        text.lines().collect()
    })
}

/// Benches `f` over `lines` in turn, one line an iteration (as in a log file), bytes counted.
fn rotating<O>(bencher: Bencher, lines: &'static [&'static str], f: impl FnMut(&'static str) -> O) {
    let mut i = 0;
    bencher
        .with_inputs(|| {
            i = (i + 1) % lines.len();
            lines[i]
        })
        .input_counter(BytesCount::of_str)
        .bench_local_values(f);
}

fn parser() -> Parser {
    Parser::new(&Config::default().fields)
}

/// Parses `line` and checks it is a record of `format`.
fn expect_record(parser: &mut Parser, line: &'static str, format: Format) -> Record<'static> {
    match parser.parse(line) {
        Parsed::Record(r) if r.format == format => r,
        other => panic!("expected a {format:?} record, got {other:?} from {line}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The JSON scanner
// ---------------------------------------------------------------------------------------------

/// `Scanner::scan` over one access-log line: quote masks, the top-level walk, a callback per
/// member (here it only keeps the spans alive).
mod scan {
    use super::*;

    /// The same line every iteration (its branches learnt: a best case).
    #[divan::bench]
    fn one_line(bencher: Bencher) {
        let line = lines(Keys::Seed)[0];
        let mut scanner = Scanner::new();
        bencher.counter(BytesCount::of_str(line)).bench_local(|| {
            let mut members = 0usize;
            let r = scanner.scan(black_box(line.as_bytes()), |key, raw| {
                members += 1;
                black_box((key.start, raw.end));
            });
            debug_assert!(r.is_ok());
            members
        });
    }

    /// 50,000 distinct lines in turn (as in a log file).
    #[divan::bench]
    fn rotating(bencher: Bencher) {
        let mut scanner = Scanner::new();
        super::rotating(bencher, lines(Keys::Seed), |line| {
            let mut members = 0usize;
            let _ = scanner.scan(line.as_bytes(), |key, raw| {
                members += 1;
                black_box((key.start, raw.end));
            });
            members
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The parser
// ---------------------------------------------------------------------------------------------

/// `Parser::parse` under the default config (`fields.format = "auto"`): detection, key
/// matching, SPEC §3 rules, a borrowed record.
mod parse {
    use super::*;

    fn one(bencher: Bencher, line: &'static str, format: Format) {
        let mut parser = parser();
        expect_record(&mut parser, line, format);
        bencher
            .counter(BytesCount::of_str(line))
            .bench_local(|| parser.parse(black_box(line)));
    }

    /// The seed's format (`model`, `llm_*_token`, `aim_service_id`), one line.
    #[divan::bench]
    fn seed_format(bencher: Bencher) {
        one(bencher, lines(Keys::Seed)[0], Format::Tokenmeter);
    }

    /// The seed's format, 50,000 distinct lines in turn.
    #[divan::bench]
    fn seed_format_rotating(bencher: Bencher) {
        let mut parser = parser();
        rotating(bencher, lines(Keys::Seed), |line| parser.parse(line));
    }

    /// The same line with Envoy AI Gateway ≥ v0.6's `gen_ai.*` keys (docs/formats.md).
    #[divan::bench]
    fn gen_ai(bencher: Bencher) {
        one(bencher, lines(Keys::GenAi)[0], Format::GenAi);
    }

    /// Kong's log plugin: the usage inside `ai.<plugin>` (2 KiB, nested objects).
    #[divan::bench]
    fn kong(bencher: Bencher) {
        one(bencher, first_line(KONG), Format::Kong);
    }

    /// Higress: `ai_log`, a JSON object inside a string, scanned a second time.
    #[divan::bench]
    fn higress(bencher: Bencher) {
        one(bencher, first_line(HIGRESS), Format::Higress);
    }
}

// ---------------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------------

/// `Store::add_at` of parsed records (50,000 distinct lines of the seed's format, 13,712
/// series), every series already made: the steady state of a long run.
mod store_add {
    use super::*;

    /// A few entries of the kinds a price table has: globs, an exact model, a price that
    /// changes at a date (so the event time is asked), a per-request fee; models without a
    /// price are counted as unpriced.
    const PRICES: &str = include_str!("prices.toml");

    fn records() -> Vec<Record<'static>> {
        let mut parser = parser();
        lines(Keys::Seed)
            .iter()
            .filter_map(|line| match parser.parse(line) {
                Parsed::Record(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    fn price_table() -> Arc<PriceTable> {
        let file = parse_price_file(PRICES).expect("bench price table parses");
        let pricing = Pricing {
            prices: file.prices,
            ..Pricing::default()
        };
        let (table, _) = PriceTable::compile(&pricing, &[]).expect("bench price table compiles");
        Arc::new(table)
    }

    fn run(bencher: Bencher, pricing: bool, per_record: bool) {
        let records = records();
        let mut store = Store::new(&Config::default());
        if pricing {
            store.set_pricing(Some(price_table()));
        }
        if per_record {
            store.cost_per_record();
        }
        store.set_clock(1_795_687_200_000_000_000);
        for r in &records {
            store.add_at(r, || r.event_time_ns(None));
        }
        let mut i = 0;
        bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
            i = (i + 1) % records.len();
            let r = &records[i];
            store.add_at(black_box(r), || r.event_time_ns(None))
        });
    }

    /// Pricing off.
    #[divan::bench]
    fn unpriced(bencher: Bencher) {
        run(bencher, false, false);
    }

    /// With the price table above, cost charged per run of records (replay, the daemon).
    #[divan::bench]
    fn priced(bencher: Bencher) {
        run(bencher, true, false);
    }

    /// With the price table above, cost computed for each record (backfill's per-step sums).
    #[divan::bench]
    fn priced_per_record(bencher: Bencher) {
        run(bencher, true, true);
    }
}
