//! The replay's summary (docs/cli.md `--summary`): the readable text report and the one-line JSON
//! object, from a [`ReplayReport`].
//!
//! Owns: the summary formats: what they list, their keys and their alignment. Must not: count,
//! read files or change the report (it is a function of the report only).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::{LokiReport, ReplayReport};
use crate::aggregate::{invalid_field_names, SkipReason, Snapshot, OVERFLOW_LABELS};
use crate::backfill::Emitted;
use crate::parse::format::Format;

#[derive(Serialize)]
struct JsonSummary<'a> {
    lines: u64,
    records: u64,
    skipped: BTreeMap<&'static str, u64>,
    /// Records per format read (formats with none are left out).
    formats: BTreeMap<&'static str, u64>,
    series: Vec<JsonSeries<'a>>,
    /// Only with --openmetrics/--push/--from/--to.
    #[serde(skip_serializing_if = "Option::is_none")]
    emitted: Option<&'a Emitted>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outside_range: Option<u64>,
    /// Records older than a step already written, counted in the oldest open step.
    #[serde(skip_serializing_if = "Option::is_none")]
    late: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pushed: Option<&'a BTreeMap<&'static str, u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    loki: Option<&'a LokiReport>,
    /// With pricing (docs/spend.md): the currency, the total cost, and the requests that were
    /// unpriced (wholly or in part) and unmetered.
    #[serde(skip_serializing_if = "Option::is_none")]
    currency: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cost: Option<Money>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unpriced_requests: Option<u64>,
    /// The tokens (their total) of the unpriced records, as `llm_unpriced_tokens_total`.
    #[serde(skip_serializing_if = "Option::is_none")]
    unpriced_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unmetered_requests: Option<u64>,
}

/// An amount written as a JSON number in plain decimal notation from its integer units, never
/// through a float (docs/spend.md "Summaries").
struct Money(u128);

impl Serialize for Money {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw = serde_json::value::RawValue::from_string(crate::pricing::format_units(self.0))
            .map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

#[derive(Serialize)]
struct JsonSeries<'a> {
    model: &'a str,
    api_key_id: &'a str,
    service_id: &'a str,
    /// docs/owners.md: only when owners are configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    team: Option<&'a str>,
    requests: u64,
    input_tokens: u64,
    output_tokens: u64,
    total_tokens: u64,
    /// `<type>_tokens` for each extra token type this series counted any of.
    #[serde(flatten)]
    extra: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cost: Option<Money>,
}

/// The `--summary json` object of docs/cli.md (one line, then `\n`). Every skip reason is present,
/// zero or not, so scripts can rely on the keys. Backfill and Loki results are added under
/// their own keys only when those flags were given.
pub fn summary_json(r: &ReplayReport) -> String {
    let s = &r.snapshot;
    let priced = s.currency.is_some();
    let summary = JsonSummary {
        emitted: r.emitted.as_ref(),
        outside_range: r.emitted.as_ref().map(|_| r.outside_range),
        late: r.late,
        pushed: r.pushed.as_ref(),
        loki: r.loki.as_ref(),
        currency: s.currency.as_deref(),
        cost: priced.then(|| Money(total_cost(s))),
        unpriced_requests: priced.then(|| s.pairs.iter().map(|p| p.unpriced).sum()),
        unpriced_tokens: priced.then(|| {
            s.pairs
                .iter()
                .fold(0u64, |n, p| n.wrapping_add(p.unpriced_tokens))
        }),
        unmetered_requests: priced.then(|| s.pairs.iter().map(|p| p.unmetered).sum()),
        lines: s.stats.lines(),
        records: s.stats.records,
        skipped: SkipReason::ALL
            .iter()
            .map(|r| (r.as_str(), s.stats.skipped[*r as usize]))
            .collect(),
        formats: Format::ALL
            .iter()
            .map(|f| (f.name(), s.stats.records_by_format[*f as usize]))
            .filter(|(_, n)| *n > 0)
            .collect(),
        series: s
            .series
            .iter()
            .map(|x| JsonSeries {
                model: &x.model,
                api_key_id: &x.api_key_id,
                service_id: &x.service_id,
                team: s.team_label.as_ref().map(|_| x.team.as_str()),
                requests: x.requests_total(),
                input_tokens: x.input_tokens,
                output_tokens: x.output_tokens,
                total_tokens: x.total_tokens,
                extra: s
                    .extra_names
                    .iter()
                    .zip(&x.extra_tokens)
                    .filter(|(_, n)| **n > 0)
                    .map(|(name, n)| (format!("{name}_tokens"), *n))
                    .collect(),
                cost: priced.then_some(Money(x.cost_units)),
            })
            .collect(),
    };
    let mut out =
        serde_json::to_string(&summary).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    out.push('\n');
    out
}

fn total_cost(s: &Snapshot) -> u128 {
    s.series
        .iter()
        .fold(0u128, |a, x| a.saturating_add(x.cost_units))
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
    for format in Format::ALL {
        let n = st.records_by_format[format as usize];
        if n > 0 {
            let _ = writeln!(out, "  {:<10}{:>13}", format.name(), n);
        }
    }
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
    // The extra types counted (a type no line had is not listed), each a row of its own (a
    // type is part of input or of output, as `included_in` says, so not indented under any
    // row), its number ending in the same column as the others' when the name fits.
    for (i, name) in s.extra_names.iter().enumerate() {
        let sum: u64 = s
            .series
            .iter()
            .map(|x| x.extra_tokens.get(i).copied().unwrap_or(0))
            .sum();
        if sum > 0 {
            let width = 24usize.saturating_sub(name.len()).max(1);
            let _ = writeln!(out, "{name} {sum:>width$} tokens");
        }
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
    let unmetered: u64 = s.pairs.iter().map(|p| p.unmetered).sum();
    if unmetered > 0 {
        let _ = writeln!(
            out,
            "unmetered  {unmetered:>14} 2xx requests without any valid token count"
        );
    }
    if let Some(currency) = &s.currency {
        let unpriced: u64 = s.pairs.iter().map(|p| p.unpriced).sum();
        let _ = writeln!(
            out,
            "cost       {:>14} {currency}",
            crate::pricing::format_units(total_cost(s))
        );
        let _ = writeln!(
            out,
            "unpriced   {unpriced:>14} requests (no price, or only part priced)"
        );
    }
    if let Some(e) = &r.emitted {
        let _ = writeln!(
            out,
            "backfill: {} series, {} samples in {} window(s), {} .. {} ({} records outside --from/--to, or before 1970 with --tsdb, {} late)",
            e.series,
            e.samples,
            e.windows,
            e.first_sample.as_deref().unwrap_or("-"),
            e.last_sample.as_deref().unwrap_or("-"),
            r.outside_range,
            r.late.unwrap_or(0)
        );
        if let Some(blocks) = e.blocks {
            let _ = writeln!(out, "TSDB blocks written: {blocks}");
        }
    }
    if let Some(p) = &r.pushed {
        let _ = writeln!(out, "OTLP push requests: {p:?}");
    }
    if let Some(l) = &r.loki {
        let _ = writeln!(
            out,
            "Loki: {} entries accepted, {} rejected, {} older than --loki-max-age not sent",
            l.sent, l.rejected, l.too_old
        );
        for m in &l.messages {
            let _ = writeln!(out, "  rejected: {m}");
        }
    }
    type LabelOf = fn(&crate::aggregate::SeriesSnapshot) -> &str;
    let mut tops: Vec<(&str, LabelOf)> = vec![
        ("model", |x| &x.model),
        ("api_key_id", |x| &x.api_key_id),
        ("service_id", |x| &x.service_id),
    ];
    // docs/owners.md: by team too, under the team label's name.
    if let Some(name) = s.team_label.as_deref() {
        tops.push((name, |x| &x.team));
    }
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
    if let Some(currency) = &s.currency {
        spend_tables(&mut out, s, currency);
    }
    out
}

/// docs/spend.md: spend by API key and by model (every row, largest first), and where requests
/// were unpriced or unmetered.
fn spend_tables(out: &mut String, s: &Snapshot, currency: &str) {
    type LabelOf = fn(&crate::aggregate::SeriesSnapshot) -> &str;
    let mut by_label: Vec<(&str, LabelOf)> =
        vec![("api_key_id", |x| &x.api_key_id), ("model", |x| &x.model)];
    if let Some(name) = s.team_label.as_deref() {
        by_label.push((name, |x| &x.team));
    }
    for (title, label) in by_label {
        let mut by: BTreeMap<&str, (u64, u128)> = BTreeMap::new();
        for x in &s.series {
            let e = by.entry(label(x)).or_default();
            e.0 += x.requests_total();
            e.1 = e.1.saturating_add(x.cost_units);
        }
        let mut rows: Vec<_> = by.into_iter().collect();
        rows.sort_by(|a, b| b.1 .1.cmp(&a.1 .1).then(a.0.cmp(b.0)));
        let width = rows
            .iter()
            .map(|r| r.0.chars().count())
            .max()
            .unwrap_or(0)
            .max(title.len());
        let _ = writeln!(out, "\nspend by {title} ({currency}):");
        let _ = writeln!(out, "  {title:<width$}  {:>10} {:>22}", "requests", "cost");
        for (name, (rq, cost)) in rows {
            let cost = crate::pricing::format_units(cost);
            let _ = writeln!(out, "  {name:<width$}  {rq:>10} {cost:>22}");
        }
    }
    let flagged: Vec<_> = s
        .pairs
        .iter()
        .filter(|p| p.unpriced > 0 || p.unmetered > 0)
        .collect();
    if !flagged.is_empty() {
        // docs/owners.md: the counters are per (model, service_id, team) with owners, so the
        // team is on each line (else two teams' lines would read as one pair counted twice).
        match s.team_label.as_deref() {
            Some(team) => {
                let _ = writeln!(
                    out,
                    "\nunpriced and unmetered requests by model, service_id and {team}:"
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "\nunpriced and unmetered requests by model and service_id:"
                );
            }
        }
        for p in flagged {
            let team = match s.team_label {
                Some(_) => format!(" / {}", p.team),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "  {} / {}{team}: {} unpriced, {} unmetered",
                p.model, p.service_id, p.unpriced, p.unmetered
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::pipeline::{EventTimes, Meter};
    use std::time::Duration;

    #[test]
    fn the_text_summary_lists_the_extra_types_counted_aligned_and_not_the_others() {
        let config = Config::default();
        let mut meter = Meter::new(&config, EventTimes::Off);
        let mut parser = crate::parse::Parser::new(&config.fields);
        let line = r#"{"model":"m","llm_input_token":5000,"llm_output_token":700,"llm_cache_creation_input_token":1234,"llm_cached_input_token":7}"#;
        let crate::parse::Parsed::Record(r) = parser.parse(line) else {
            panic!("a record")
        };
        meter.store.add(&r);
        let report = ReplayReport {
            snapshot: meter.store.snapshot(&config.fields.extra_names()),
            files: 1,
            bytes_read: line.len() as u64,
            elapsed: Duration::from_secs(1),
            emitted: None,
            pushed: None,
            loki: None,
            outside_range: 0,
            late: None,
        };
        let text = summary_text(&report);
        let lines: Vec<&str> = text.lines().collect();
        let at = |prefix: &str| {
            lines
                .iter()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("{prefix:?} in\n{text}"))
                .to_string()
        };
        let total = at("total ");
        let cached = at("cached_input ");
        let creation = at("cache_creation_input ");
        assert!(total.ends_with(" 5700 tokens"), "{text}");
        assert!(cached.ends_with(" 7 tokens"), "{text}");
        assert!(creation.ends_with(" 1234 tokens"), "{text}");
        // The numbers end in one column.
        assert_eq!(total.len(), cached.len(), "{text}");
        assert_eq!(total.len(), creation.len(), "{text}");
        assert!(
            !text.contains("reasoning"),
            "no line had reasoning tokens:\n{text}"
        );
    }
}
