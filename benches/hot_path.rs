//! Micro-benchmarks of the per-line hot path: the JSON scanner, the parser (one line of each
//! JSON format), and counting a record into the store (with and without pricing).
//!
//! `cargo bench --bench hot_path` (the `bench` profile: the release one). Lines are made here
//! in the shape of `benches/gen-access-log.py` (the same 25 keys in the same order, ~830 bytes;
//! models, keys, services and counts drawn from a fixed seed), Kong and Higress lines are the
//! first lines of `tests/fixtures/formats/`. Setup checks that every line parses as a record
//! of the format it is named after, so a benchmark cannot silently measure a rejected line.

use std::sync::Arc;

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
/// L1 cache can learn; the store benchmarks get 17,218 series from them).
const ROTATING: usize = 50_000;

const KONG: &str = include_str!("../tests/fixtures/formats/kong.jsonl");
const HIGRESS: &str = include_str!("../tests/fixtures/formats/higress.jsonl");

fn first_line(file: &'static str) -> &'static str {
    file.lines().next().expect("fixture has a first line")
}

// ---------------------------------------------------------------------------------------------
// Lines in the shape of benches/gen-access-log.py
// ---------------------------------------------------------------------------------------------

const MODELS: [&str; 20] = [
    "meta-llama/Llama-3.1-8B-Instruct",
    "meta-llama/Llama-3.1-70B-Instruct",
    "meta-llama/Llama-3.3-70B-Instruct",
    "meta-llama/Llama-3.2-3B-Instruct",
    "mistralai/Mistral-7B-Instruct-v0.3",
    "mistralai/Mixtral-8x7B-Instruct-v0.1",
    "mistralai/Mistral-Small-24B-Instruct-2501",
    "Qwen/Qwen2.5-7B-Instruct",
    "Qwen/Qwen2.5-72B-Instruct",
    "Qwen/Qwen2.5-Coder-32B-Instruct",
    "google/gemma-2-9b-it",
    "google/gemma-2-27b-it",
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
    "deepseek-ai/DeepSeek-V3",
    "ibm-granite/granite-3.1-8b-instruct",
    "microsoft/Phi-3.5-mini-instruct",
    "gpt-4o-mini",
    "gpt-4.1",
    "BAAI/bge-large-en-v1.5",
    "intfloat/e5-mistral-7b-instruct",
];

const USER_AGENTS: [&str; 8] = [
    "OpenAI/Python 1.54.0",
    "OpenAI/Python 1.58.1",
    "OpenAI/JS 4.73.0",
    "python-requests/2.32.3",
    "curl/8.5.0",
    "langchain-openai/0.2.14",
    "Go-http-client/1.1",
    "litellm/1.55.3",
];

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// In [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Index in 0..n, small ones far more often (roughly the script's Zipf weights).
    fn skewed(&mut self, n: u64) -> u64 {
        ((self.unit().powi(3)) * n as f64) as u64
    }
}

/// Which keys the lines carry: the seed's (`model`, `llm_input_token`, ...) or Envoy AI
/// Gateway ≥ v0.6's `gen_ai.*` (`--keys gen_ai` of the script; same values).
#[derive(Clone, Copy)]
enum Keys {
    Seed,
    GenAi,
}

/// `n` access-log lines like `gen-access-log.py -s SEED` writes (~3 % error lines with null
/// counts, ~1 % with counts as strings), without the trailing newline.
fn access_log_lines(n: usize, keys: Keys) -> Vec<String> {
    let (k_model, k_in, k_out, k_total, k_svc) = match keys {
        Keys::Seed => (
            "model",
            "llm_input_token",
            "llm_output_token",
            "llm_total_token",
            "aim_service_id",
        ),
        Keys::GenAi => (
            "gen_ai.request.model",
            "gen_ai.usage.input_tokens",
            "gen_ai.usage.output_tokens",
            "gen_ai.usage.total_tokens",
            "gen_ai.provider.name",
        ),
    };
    let mut rng = Rng(42);
    let mut t_ms: i64 = 1_795_687_200_000; // 2026-11-26T10:00:00.000Z
    (0..n)
        .map(|_| {
            t_ms += rng.below(4) as i64;
            let ts = tokenmeter::timefmt::format_rfc3339_millis(t_ms * 1_000_000);
            let mi = rng.skewed(MODELS.len() as u64) as usize;
            let model = MODELS[mi];
            let embed = mi >= 18;
            let svc = format!("svc-{:02}", mi % 15 + 1);
            let cluster = format!("httproute/workbench/aim-{mi}/rule/0");
            let key = format!("key-{:05}", rng.skewed(2000));
            let client = format!(
                "10.{}.{}.{}",
                rng.below(9) + 1,
                rng.below(256),
                rng.below(254) + 1
            );
            let rid = format!(
                "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
                rng.next() as u32,
                rng.next() as u16,
                rng.next() & 0xfff,
                rng.next() as u16,
                rng.next() & 0xffff_ffff_ffff
            );
            let r = rng.unit();
            let (code, flags, details, tokens, bytes_in, bytes_out, dur);
            if r < 0.03 {
                (code, flags, details) = (503, "UF", "upstream_reset_before_response_started");
                tokens = ["null".to_string(), "null".into(), "null".into()];
                (bytes_in, bytes_out, dur) = (rng.below(5800) + 200, rng.below(340) + 60, 30);
            } else {
                (code, flags, details) = (200, "-", "via_upstream");
                let it = (rng.unit().powi(2) * 7800.0) as u64 + 12;
                let ot = if embed {
                    0
                } else {
                    (rng.unit().powi(3) * 2000.0) as u64 + 1
                };
                tokens = if r > 0.99 {
                    [format!("\"{it}\""), format!("\"{ot}\""), format!("\"{}\"", it + ot)]
                } else {
                    [it.to_string(), ot.to_string(), (it + ot).to_string()]
                };
                bytes_in = it * 4 + rng.below(280) + 120;
                bytes_out = ot * 4 + rng.below(350) + 250;
                dur = rng.below(520) + 80 + ot * (rng.below(17) + 8);
            }
            let path = if embed {
                "/v1/embeddings"
            } else {
                "/v1/chat/completions"
            };
            format!(
                concat!(
                    r#"{{"start_time":"{ts}","method":"POST","x-envoy-origin-path":"{path}","protocol":"HTTP/1.1","#,
                    r#""response_code":{code},"response_flags":"{flags}","response_code_details":"{details}","#,
                    r#""bytes_received":{bin},"bytes_sent":{bout},"duration":{dur},"x-envoy-upstream-service-time":"{ust}","#,
                    r#""x-forwarded-for":"{client}","user-agent":"{ua}","x-request-id":"{rid}","authority":"ai.example.com","#,
                    r#""upstream_host":"10.0.{host}.{hosti}:8000","upstream_cluster":"{cluster}","route_name":"{cluster}/match/0/ai_example_com","#,
                    r#""downstream_remote_address":"{client}:{port}","{k_model}":"{model}","{k_in}":{it},"#,
                    r#""{k_out}":{ot},"{k_total}":{tt},"api_key_id":"{key}","{k_svc}":"{svc}"}}"#
                ),
                ts = ts,
                path = path,
                code = code,
                flags = flags,
                details = details,
                bin = bytes_in,
                bout = bytes_out,
                dur = dur,
                ust = dur.saturating_sub(3),
                client = client,
                ua = USER_AGENTS[rng.below(8) as usize],
                rid = rid,
                host = mi + 1,
                hosti = rng.below(3) + 2,
                cluster = cluster,
                port = rng.below(64_000) + 1024,
                k_model = k_model,
                model = model,
                k_in = k_in,
                it = tokens[0],
                k_out = k_out,
                ot = tokens[1],
                k_total = k_total,
                tt = tokens[2],
                key = key,
                k_svc = k_svc,
                svc = svc,
            )
        })
        .collect()
}

/// The lines, kept for the whole run (records borrow from them).
fn leaked_lines(n: usize, keys: Keys) -> Vec<&'static str> {
    access_log_lines(n, keys)
        .into_iter()
        .map(|l| &*Box::leak(l.into_boxed_str()))
        .collect()
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
        let line = leaked_lines(1, Keys::Seed)[0];
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
        let lines = leaked_lines(ROTATING, Keys::Seed);
        let mut scanner = Scanner::new();
        let mut i = 0;
        bencher
            .with_inputs(|| {
                i = (i + 1) % lines.len();
                lines[i]
            })
            .input_counter(BytesCount::of_str)
            .bench_local_values(|line: &str| {
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
        one(bencher, leaked_lines(1, Keys::Seed)[0], Format::Tokenmeter);
    }

    /// The seed's format, 50,000 distinct lines in turn.
    #[divan::bench]
    fn seed_format_rotating(bencher: Bencher) {
        let lines = leaked_lines(ROTATING, Keys::Seed);
        let mut parser = parser();
        let mut i = 0;
        bencher
            .with_inputs(|| {
                i = (i + 1) % lines.len();
                lines[i]
            })
            .input_counter(BytesCount::of_str)
            .bench_local_values(|line: &'static str| parser.parse(line));
    }

    /// The same line with Envoy AI Gateway ≥ v0.6's `gen_ai.*` keys (docs/formats.md).
    #[divan::bench]
    fn gen_ai(bencher: Bencher) {
        one(bencher, leaked_lines(1, Keys::GenAi)[0], Format::GenAi);
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

/// `Store::add_at` of parsed records (50,000 distinct lines of the seed's format, 17,218
/// series), every series already made: the steady state of a long run.
mod store_add {
    use super::*;

    /// A few entries of the kinds a price table has: globs, an exact model, a price that
    /// changes at a date (so the event time is asked), a per-request fee; models without a
    /// price are counted as unpriced.
    const PRICES: &str = r#"
[[prices]]
model = "meta-llama/*"
per_million = { input = 0.20, output = 0.60 }

[[prices]]
model = "Qwen/*"
per_million = { input = 0.15, output = 0.45 }

[[prices]]
model = "gpt-4o-mini"
per_million = { input = 0.15, output = 0.60 }

[[prices]]
model = "mistralai/*"
from = "2026-11-01T00:00:00Z"
per_million = { input = 0.25, output = 0.75 }

[[prices]]
model = "mistralai/*"
from = "2026-11-26T10:00:30Z"
per_million = { input = 0.20, output = 0.70 }
per_request = 0.0001
"#;

    fn records() -> Vec<Record<'static>> {
        let mut parser = parser();
        leaked_lines(ROTATING, Keys::Seed)
            .into_iter()
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
