//! The store's tests with owners (docs/owners.md): the team in each series' key, chosen at the
//! record's event time, folded past `limits.max_values.team`, restored from a state, and the
//! unpriced tokens. Expected values are worked out by hand from the records written here.

use super::*;
use crate::owners::{parse_owners_file, OwnerTable};
use crate::pricing::PriceTable;
use std::borrow::Cow;
use std::sync::Arc;

fn record(key: &str, input: u64, output: u64) -> Record<'static> {
    Record {
        duration_ms: None,
        ..super::tests::record("m", key, "s", input, output)
    }
}

fn owners_config(max_teams: usize) -> Config {
    let mut c = Config::default();
    c.owners.file = "owners.toml".into();
    c.limits.max_values.team = max_teams;
    c
}

fn owners(text: &str) -> Arc<OwnerTable> {
    let file = parse_owners_file(text).expect("test owners file parses");
    Arc::new(OwnerTable::compile(&file, "unassigned").expect("compiles"))
}

/// (api_key_id, team, requests, total tokens) of each series, in snapshot order.
fn teams(s: &Store) -> Vec<(String, String, u64, u64)> {
    s.snapshot(&[])
        .series
        .iter()
        .map(|x| {
            (
                x.api_key_id.clone(),
                x.team.clone(),
                x.requests_total(),
                x.total_tokens,
            )
        })
        .collect()
}

const T: i64 = 1_000_000_000_000;

#[test]
fn a_key_that_changes_team_makes_a_second_series_from_the_from_instant_on() {
    let mut s = Store::new(&owners_config(1000));
    // `from` 1970-01-01T00:16:40Z is T ns.
    s.set_owners(Some(owners(
        "[[owners]]\napi_key_id = \"k*\"\nteam = \"a\"\n\
         [[owners]]\napi_key_id = \"k*\"\nteam = \"b\"\nfrom = \"1970-01-01T00:16:40Z\"\n",
    )));
    s.add_at(&record("k1", 1, 0), || Some(T - 1));
    s.add_at(&record("k1", 2, 0), || Some(T));
    s.add_at(&record("k1", 4, 0), || Some(T - 1)); // late record: back to a
    s.add_at(&record("x", 8, 0), || Some(T));
    assert_eq!(
        teams(&s),
        [
            ("k1".into(), "a".into(), 2, 5),
            ("k1".into(), "b".into(), 1, 2),
            ("x".into(), "unassigned".into(), 1, 8),
        ]
    );
    assert_eq!(s.snapshot(&[]).team_label.as_deref(), Some("team"));
}

#[test]
fn the_event_time_is_asked_only_when_a_team_depends_on_it() {
    let mut s = Store::new(&owners_config(1000));
    s.set_owners(Some(owners(
        "[[owners]]\napi_key_id = \"k\"\nteam = \"a\"\n",
    )));
    s.add_at(&record("k", 1, 0), || {
        panic!("no `from`: no event time needed")
    });
    assert_eq!(teams(&s), [("k".into(), "a".into(), 1, 1)]);
}

#[test]
fn teams_past_the_limit_fold_into_overflow_and_are_counted() {
    let mut s = Store::new(&owners_config(2));
    s.set_owners(Some(owners(
        "[[owners]]\napi_key_id = \"k1\"\nteam = \"t1\"\n\
         [[owners]]\napi_key_id = \"k2\"\nteam = \"t2\"\n\
         [[owners]]\napi_key_id = \"k3\"\nteam = \"t3\"\n",
    )));
    for (key, n) in [("k1", 1), ("k2", 2), ("k3", 4), ("k3", 8), ("k1", 16)] {
        s.add(&record(key, n, 0));
    }
    assert_eq!(
        teams(&s),
        [
            ("k1".into(), "t1".into(), 2, 17),
            ("k2".into(), "t2".into(), 1, 2),
            ("k3".into(), OVERFLOW.into(), 2, 12),
        ]
    );
    assert_eq!(s.stats().team_overflows, 2);
    assert_eq!(s.stats().overflows, [0; 4]);
}

#[test]
fn teams_are_restored_with_owners_and_dropped_without() {
    let mut s = Store::new(&owners_config(1000));
    s.set_owners(Some(owners(
        "[[owners]]\napi_key_id = \"k\"\nteam = \"a\"\n",
    )));
    s.add(&record("k", 3, 0));
    let saved = s.snapshot(&[]);
    let text = serde_json::to_string(&saved).expect("serializes");
    let back: Snapshot = serde_json::from_str(&text).expect("reads back");
    assert_eq!(back.series[0].team, "a");

    let mut with = Store::new(&owners_config(1000));
    with.restore(&back, &[]);
    with.set_owners(Some(owners(
        "[[owners]]\napi_key_id = \"k\"\nteam = \"a\"\n",
    )));
    with.add(&record("k", 4, 0));
    assert_eq!(teams(&with), [("k".into(), "a".into(), 2, 7)]);

    // Owners off: the team is dropped, the counts continue in the series without it.
    let mut without = Store::new(&Config::default());
    without.restore(&back, &[]);
    without.add(&record("k", 4, 0));
    assert_eq!(teams(&without), [("k".into(), String::new(), 2, 7)]);
    assert_eq!(without.snapshot(&[]).team_label, None);

    // A state of an older version (no team) reads as the empty team.
    let old = text.replace(",\"team\":\"a\"", "");
    assert!(!old.contains("\"team\""), "{old}");
    let old: Snapshot = serde_json::from_str(&old).expect("reads");
    assert_eq!(old.series[0].team, "");
}

#[test]
fn unpriced_records_count_their_total_tokens_per_team() {
    let mut s = Store::new(&owners_config(1000));
    s.set_owners(Some(owners(
        "[[owners]]\napi_key_id = \"k1\"\nteam = \"a\"\n",
    )));
    let text = "[[prices]]\nmodel = \"priced\"\nper_million = { input = 1 }\n";
    let pricing = crate::pricing::Pricing {
        prices: crate::pricing::parse_price_file(text).unwrap().prices,
        ..Default::default()
    };
    let (table, _) = PriceTable::compile(&pricing, &[]).unwrap();
    s.set_pricing(Some(Arc::new(table)));
    s.add(&record("k1", 10, 5)); // model "m": no price, 15 tokens, team a
    s.add(&record("k1", 1, 2)); // 3 more
    s.add(&record("k2", 7, 0)); // 7, the default team
    let mut priced = record("k1", 100, 0);
    priced.model = Cow::Borrowed("priced");
    s.add(&priced); // fully priced: not unpriced
    let snap = s.snapshot(&[]);
    let got: Vec<(&str, &str, u64, u64)> = snap
        .pairs
        .iter()
        .map(|p| {
            (
                p.model.as_str(),
                p.team.as_str(),
                p.unpriced,
                p.unpriced_tokens,
            )
        })
        .collect();
    assert_eq!(got, [("m", "a", 2, 18), ("m", "unassigned", 1, 7)]);
}
