//! The store's tests: counting, folding, restore, merging and cost.

use super::snapshot::*;
use super::*;
use crate::config::MAX_EXTRA_TOKENS;
use crate::pricing::PriceTable;
use std::borrow::Cow;
use std::sync::Arc;

/// A 2xx record of these labels and counts, 1.5 s long (the owners tests share it).
pub(super) fn record(
    model: &str,
    key: &str,
    svc: &str,
    input: u64,
    output: u64,
) -> Record<'static> {
    Record {
        model: Cow::Owned(model.into()),
        api_key_id: Cow::Owned(key.into()),
        service_id: Cow::Owned(svc.into()),
        input_tokens: input,
        output_tokens: output,
        total_tokens: input + output,
        extra_tokens: [0; MAX_EXTRA_TOKENS],
        status_class: StatusClass::C2xx,
        duration_ms: Some(1500.0),
        start_time: None,
        start_ns: None,
        written_ns: None,
        format: crate::parse::format::Format::Tokenmeter,
        first_of_line: true,
        invalid: 0,
        valid: 0b111,
        total_mismatch: false,
    }
}

#[test]
fn unpriced_and_unmetered_series_start_when_they_first_count() {
    let mut s = Store::new(&Config::default());
    let text = "[[prices]]\nmodel = \"m\"\nper_million = { input = 1 }\n";
    let pricing = crate::pricing::Pricing {
        prices: crate::pricing::parse_price_file(text).unwrap().prices,
        ..Default::default()
    };
    let (table, _) = PriceTable::compile(&pricing, &[]).unwrap();
    s.set_pricing(Some(Arc::new(table)));
    s.set_clock(1_000);
    s.add(&record("m", "k", "s", 10, 0)); // priced: the pair exists, nothing counted
    s.set_clock(2_000);
    let mut null = record("m", "k", "s", 0, 0);
    null.valid = 0;
    null.total_tokens = 0;
    s.add(&null); // unmetered
    s.set_clock(3_000);
    s.add(&record("m", "k", "s", 10, 5)); // output unpriced
    let snap = s.snapshot(&[]);
    let p = &snap.pairs[0];
    assert_eq!((p.unmetered, p.unmetered_start_ns), (1, 2_000));
    assert_eq!((p.unpriced, p.unpriced_start_ns), (1, 3_000));
    // 20 input tokens at 1 per million: 20 × 10^6 units.
    assert_eq!(snap.series[0].cost_units, 20_000_000);
}

#[test]
fn sums_per_series() {
    let mut s = Store::new(&Config::default());
    s.add(&record("b", "k", "s", 1, 2));
    s.add(&record("a", "k", "s", 10, 20));
    s.add(&record("b", "k", "s", 100, 200));
    s.skip(SkipReason::NotJson);
    let snap = s.snapshot(&[]);
    assert_eq!(snap.series.len(), 2);
    assert_eq!(snap.series[0].model, "a");
    assert_eq!(
        (
            snap.series[1].input_tokens,
            snap.series[1].output_tokens,
            snap.series[1].total_tokens
        ),
        (101, 202, 303)
    );
    assert_eq!(snap.series[1].requests_total(), 2);
    assert_eq!(snap.stats.lines(), 4);
    assert_eq!(snap.durations.len(), 2);
    assert_eq!(snap.durations[0].histogram.count, 1);
    // 1.5 s falls in the 2.5 s bucket (index 4).
    assert_eq!(snap.durations[0].histogram.buckets[4], 1);
    assert_eq!(snap.durations[0].histogram.cumulative()[11], 1);
}

#[test]
fn value_limits_fold_into_overflow() {
    let mut c = Config::default();
    c.limits.max_values.api_key_id = 2;
    let mut s = Store::new(&c);
    for (i, key) in ["k1", "k2", "k3", "k4", "k1"].iter().enumerate() {
        s.add(&record("m", key, "s", i as u64 + 1, 0));
    }
    let snap = s.snapshot(&[]);
    let keys: Vec<_> = snap
        .series
        .iter()
        .map(|x| (x.api_key_id.as_str(), x.input_tokens))
        .collect();
    // k3 (3) and k4 (4) fold; tokens are never dropped.
    assert_eq!(keys, vec![(OVERFLOW, 7), ("k1", 1 + 5), ("k2", 2)]);
    assert_eq!(snap.stats.overflows, [0, 2, 0, 0]);
}

#[test]
fn max_series_folds_whole_series() {
    let mut c = Config::default();
    c.limits.max_series = 2;
    let mut s = Store::new(&c);
    s.add(&record("a", "k", "s", 1, 0));
    s.add(&record("b", "k", "s", 2, 0));
    s.add(&record("c", "k", "s", 4, 0));
    s.add(&record("d", "k", "s", 8, 0));
    s.add(&record("a", "k", "s", 16, 0));
    let snap = s.snapshot(&[]);
    let got: Vec<_> = snap
        .series
        .iter()
        .map(|x| (x.model.as_str(), x.input_tokens))
        .collect();
    assert_eq!(got, vec![(OVERFLOW, 12), ("a", 17), ("b", 2)]);
    assert_eq!(snap.stats.overflows[3], 2);
}

#[test]
fn restore_continues_the_counters() {
    let mut c = Config::default();
    c.limits.max_values.api_key_id = 2;
    let mut s = Store::new(&c);
    s.add(&record("m", "k1", "s", 1, 2));
    s.add(&record("m", "k2", "s", 3, 4));
    s.add(&record("m", "k3", "s", 5, 6)); // folded
    let snap = s.snapshot(&[]);
    let mut t = Store::new(&c);
    t.restore(&snap, &[]);
    assert_eq!(t.snapshot(&[]), snap);
    t.add(&record("m", "k1", "s", 10, 0));
    t.add(&record("m", "k4", "s", 100, 0)); // still past the limit: folded
    let after = t.snapshot(&[]);
    let get = |k: &str| {
        after
            .series
            .iter()
            .find(|x| x.api_key_id == k)
            .unwrap()
            .input_tokens
    };
    assert_eq!((get("k1"), get(OVERFLOW)), (11, 105));
    assert_eq!(after.stats.overflows[1], 2);
}

#[test]
fn invalid_fields_and_mismatches_are_counted() {
    let mut s = Store::new(&Config::default());
    let mut r = record("m", "k", "s", 1, 1);
    r.invalid = 0b101;
    r.total_mismatch = true;
    s.add(&r);
    // input, output, total, then the three built-in extra types.
    assert_eq!(s.stats().invalid_fields, vec![1, 0, 1, 0, 0, 0]);
    assert_eq!(s.stats().total_mismatches, 1);
}

#[test]
fn label_values_never_carry_control_characters_or_unbounded_length() {
    assert_eq!(label_value("gpt-4o"), "gpt-4o");
    assert_eq!(
        label_value("a\u{0}b\nc\u{7f}"),
        "a\u{fffd}b\u{fffd}c\u{fffd}"
    );
    let long = "é".repeat(200);
    let v = label_value(&long);
    assert!(v.len() <= MAX_LABEL_BYTES && v.chars().all(|c| c == 'é'));
    // In the store: a NUL in a model becomes U+FFFD, the same series as the clean text.
    let config = Config::default();
    let mut store = Store::new(&config);
    let mut parser = crate::parse::Parser::new(&config.fields);
    for line in [
        r#"{"model":"m\u0000x","api_key_id":"k","aim_service_id":"s","llm_input_token":1,"response_code":200}"#,
        r#"{"model":"m\u0000x","api_key_id":"k","aim_service_id":"s","llm_input_token":2,"response_code":200}"#,
    ] {
        if let crate::parse::Parsed::Record(r) = parser.parse(line) {
            store.add(&r);
        }
    }
    let snap = store.snapshot(&[]);
    assert_eq!(snap.series.len(), 1);
    assert_eq!(snap.series[0].model, "m\u{fffd}x");
    assert_eq!(snap.series[0].input_tokens, 3);
}

/// What a store counted, histogram sums aside (float sums depend on the order of
/// additions; they are not in replay's outputs).
fn counted(s: &Store) -> Snapshot {
    let mut snap = s.snapshot(&[]);
    for d in &mut snap.durations {
        d.histogram.sum_seconds = 0.0;
    }
    snap
}

proptest::proptest! {
    /// `replay --jobs`: files counted apart into unlimited stores and absorbed in order
    /// (or counted again in order where absorbing is refused) give exactly what counting
    /// every record in order gives, with small limits that fold values and series,
    /// unpriced and unmetered records, status classes and durations.
    #[test]
    fn absorbing_parts_in_order_equals_counting_in_order(
        records in proptest::collection::vec(
            (0usize..4, 0usize..6, 0usize..3, 0u64..1000, 0usize..5, proptest::bool::weighted(0.1)),
            0..80,
        ),
        cuts in proptest::collection::vec(0usize..80, 0..4),
        max_series in 1usize..14,
        max_models in 1usize..5,
        max_keys in 1usize..7,
    ) {
        let mut config = Config::default();
        config.limits.max_series = max_series;
        config.limits.max_values.model = max_models;
        config.limits.max_values.api_key_id = max_keys;
        let text = "[[prices]]\nmodel = \"m0\"\nper_million = { input = 1 }\n\
                    [[prices]]\nmodel = \"m1\"\nper_request = 0.5\nper_million = { output = 3 }\n";
        let pricing = crate::pricing::Pricing {
            prices: crate::pricing::parse_price_file(text).unwrap().prices,
            ..Default::default()
        };
        let table = Arc::new(PriceTable::compile(&pricing, &[]).unwrap().0);
        let make = |(m, k, sv, tokens, class, null): &(usize, usize, usize, u64, usize, bool)| {
            let mut r = record(&format!("m{m}"), &format!("k{k}"), &format!("s{sv}"), *tokens, tokens / 2);
            r.status_class = StatusClass::ALL[*class];
            r.duration_ms = (tokens % 3 != 0).then_some(*tokens as f64);
            if *null {
                r.valid = 0;
                r.input_tokens = 0;
                r.output_tokens = 0;
                r.total_tokens = 0;
            }
            r
        };
        let mut in_order = Store::new(&config);
        in_order.set_pricing(Some(table.clone()));
        for r in &records {
            in_order.add(&make(r));
        }
        let mut bounds: Vec<usize> = cuts.into_iter().map(|c| c.min(records.len())).collect();
        bounds.push(0);
        bounds.push(records.len());
        bounds.sort_unstable();
        let mut merged = Store::new(&config);
        merged.set_pricing(Some(table.clone()));
        for part_records in bounds.windows(2).map(|w| &records[w[0]..w[1]]) {
            let mut part = Store::unlimited(&config);
            part.set_pricing(Some(table.clone()));
            for r in part_records {
                part.add(&make(r));
            }
            if !merged.absorb(&part) {
                for r in part_records {
                    merged.add(&make(r));
                }
            }
        }
        proptest::prop_assert_eq!(counted(&merged), counted(&in_order));
    }
}

fn table_of(text: &str, extras: &[&str]) -> Arc<PriceTable> {
    let file = crate::pricing::parse_price_file(text).unwrap();
    let pricing = crate::pricing::Pricing {
        prices: file.prices,
        included_in: file
            .included_in
            .unwrap_or_else(|| crate::pricing::Pricing::default().included_in),
        ..Default::default()
    };
    let extras: Vec<String> = extras.iter().map(|e| e.to_string()).collect();
    Arc::new(PriceTable::compile(&pricing, &extras).unwrap().0)
}

proptest::proptest! {
    /// Cost charged per run of records (the default) equals cost charged record by
    /// record (`cost_per_record`, what backfill uses), series by series, with entries that
    /// are linear and entries that are not (tiers, a priced type inside another), a `from`
    /// that switches a model between them, records without a price, a price reload half
    /// way, snapshots taken in between (reading open runs) and merged parts.
    #[test]
    fn cost_per_run_equals_cost_per_record(
        records in proptest::collection::vec(
            (0usize..5, 0usize..3, 0u64..5000, 0u64..3000, 0u64..800, 0usize..5, 0i64..4, proptest::bool::weighted(0.1)),
            0..120,
        ),
        reload_at in 0usize..130,
        snapshot_at in 0usize..130,
        merge_from in 0usize..130,
    ) {
        let mut config = Config::default();
        config.fields.extra_tokens.insert("cached_input".into(), "llm_cached_input_token".into());
        let first = table_of(r#"
included_in = { cached_input = "input" }
[[prices]]
model = "m0"
per_request = 0.001
per_million = { input = 1.5, output = 6, cached_input = 0 }
[[prices]]
model = "m0"
service_id = "s1"
per_million = { input = 1.5, cached_input = 0.75 }
[[prices]]
model = "m1"
per_million = { input = 1, output = 2 }
tiers = [{ above_input = 2000, per_million = { input = 2, output = 4 } }]
[[prices]]
model = "m2"
per_million = { total = 3 }
[[prices]]
model = "m3"
per_million = { input = 1, output = 2 }
[[prices]]
model = "m3"
from = "1970-01-01T00:00:02Z"
per_million = { input = 1, output = 2 }
tiers = [{ above_input = 100, per_million = { input = 5 } }]
[[prices]]
model = "m3"
from = "1970-01-01T00:00:03Z"
per_million = { input = 7, output = 1 }
"#, &["cached_input"]);
        let second = table_of(r#"
[[prices]]
model = "m*"
per_million = { input = 2, output = 3 }
[[prices]]
model = "m1"
per_million = { total = 1 }
"#, &["cached_input"]);
        let make = |&(m, sv, input, output, cached, class, _, null): &(usize, usize, u64, u64, u64, usize, i64, bool)| {
            let mut r = record(&format!("m{m}"), "k", &format!("s{sv}"), input, output);
            r.extra_tokens[0] = cached;
            r.valid = 0b1111;
            r.status_class = StatusClass::ALL[class];
            if null {
                r.valid = 0;
                r.input_tokens = 0;
                r.output_tokens = 0;
                r.total_tokens = 0;
                r.extra_tokens[0] = 0;
            }
            r
        };
        let mut per_run = Store::new(&config);
        let mut per_record = Store::new(&config);
        per_record.cost_per_record();
        let mut part = Store::unlimited(&config);
        for s in [&mut per_run, &mut per_record, &mut part] {
            s.set_pricing(Some(first.clone()));
        }
        // Records from `merge_from` on are counted apart and merged at the end.
        for (i, rec) in records.iter().enumerate() {
            if i == reload_at {
                for s in [&mut per_run, &mut per_record, &mut part] {
                    s.set_pricing(Some(second.clone()));
                }
            }
            if i == snapshot_at {
                let _ = per_run.snapshot(&["cached_input".into()]);
            }
            let r = make(rec);
            let t = rec.6 * 1_000_000_000;
            per_record.add_at(&r, || Some(t));
            if i >= merge_from {
                part.add_at(&r, || Some(t));
            } else {
                per_run.add_at(&r, || Some(t));
            }
        }
        proptest::prop_assert!(per_run.absorb(&part));
        let names = ["cached_input".to_string()];
        proptest::prop_assert_eq!(counted_with(&per_run, &names), counted_with(&per_record, &names));
    }
}

/// A series whose token counters wrap (2^64 tokens: 2049 records of 2^53, the largest valid
/// value, as hostile input can write) is still charged what each record costs: a run's
/// counts are differences of the counters, so a run must not span a wrap.
#[test]
fn cost_per_run_survives_counters_that_wrap() {
    let table = table_of(
        "[[prices]]\nmodel = \"m\"\nper_request = 0.5\nper_million = { input = 1, output = 3 }\n",
        &[],
    );
    let config = Config::default();
    let mut per_run = Store::new(&config);
    let mut per_record = Store::new(&config);
    per_record.cost_per_record();
    // The first half counted here, the second apart and merged (`replay --jobs`).
    let (mut merged, mut part) = (Store::new(&config), Store::unlimited(&config));
    for s in [&mut per_run, &mut per_record, &mut merged, &mut part] {
        s.set_pricing(Some(table.clone()));
    }
    let big = 1u64 << 53;
    let n = 2 * 2049u64;
    for i in 0..n {
        let r = record("m", "k", "s", big, if i % 2 == 0 { big } else { 7 });
        per_run.add(&r);
        per_record.add(&r);
        if i < n / 2 + 3 {
            merged.add(&r);
        } else {
            part.add(&r);
        }
        if i == n / 2 {
            // Read mid-run, as a state write does.
            let _ = per_run.snapshot(&[]);
        }
    }
    // 10^6 units per input token, 3·10^6 per output token, 0.5 per 2xx request.
    let outputs = u128::from(n / 2) * u128::from(big) + u128::from(n / 2) * 7;
    let expected = u128::from(n) * u128::from(big) * 1_000_000
        + outputs * 3_000_000
        + u128::from(n) * 500_000_000_000;
    assert_eq!(per_record.snapshot(&[]).series[0].cost_units, expected);
    assert_eq!(per_run.snapshot(&[]).series[0].cost_units, expected);
    assert!(merged.absorb(&part));
    assert_eq!(counted(&merged), counted(&per_record));
}

fn counted_with(s: &Store, names: &[String]) -> Snapshot {
    let mut snap = s.snapshot(names);
    for d in &mut snap.durations {
        d.histogram.sum_seconds = 0.0;
    }
    snap
}
