//! Backfill as OpenMetrics text (docs/backfill.md): the cumulative value of every series at the end of
//! each `--step` that has data, for `promtool tsdb create-blocks-from openmetrics` /
//! `mimirtool backfill`.
//!
//! Owns: the OpenMetrics text of a block window's samples. Must not: choose file names or
//! write files (`backfill::emitter` does), nor bucket records (`backfill::windows`). Output is
//! a function of the input and flags only (sorted, no wall-clock time), so the same replay
//! always gives the same bytes.

use std::collections::BTreeMap;
use std::io::{self, Write};

use super::samples::{
    backfill_families, is_money, may_have_samples, Cumulative, FamilySeries, SeriesSamples,
};
use super::Emitted;

/// Appends `v` as an OpenMetrics label value (without quotes).
fn push_escaped(out: &mut String, v: &str) {
    if memchr::memchr3(b'\\', b'"', b'\n', v.as_bytes()).is_none() {
        return out.push_str(v);
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    push_escaped(&mut out, v);
    out
}

/// Writes the OpenMetrics text: per metric family of the schema a `# TYPE` and `# HELP` line,
/// each series' samples in time order with timestamps in seconds, `job="tokenmeter"` and
/// `instance`, then `# EOF`. Each series starts with a 0 one step before its first value, so
/// PromQL's `increase()` sees its first increment (docs/metrics.md "Series start times and first increments").
#[allow(clippy::too_many_arguments)]
pub fn write_openmetrics(
    out: &mut dyn Write,
    series: &[SeriesSamples],
    prefix: &str,
    extra_names: &[String],
    currency: Option<&str>,
    static_labels: &BTreeMap<String, String>,
    instance: &str,
    step_ns: i64,
) -> io::Result<Emitted> {
    let mut emitted = Emitted::default();
    let tail = format!(",job=\"tokenmeter\",instance=\"{}\"}} ", escape(instance));
    let mut first = i64::MAX;
    let mut last = i64::MIN;
    let mut reader = FamilySeries::new();
    // Lines are built in one buffer and written in large pieces (formatting and writing 10 M
    // lines was most of a backfill's time).
    let mut buf: Vec<u8> = Vec::with_capacity(FLUSH_AT + 4096);
    // Each series' labels and `metrics.labels`, escaped once for all families.
    let statics: Vec<(&str, &str)> = static_labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let series_labels: Vec<String> = series
        .iter()
        .map(|s| {
            let mut l = String::with_capacity(128);
            for (i, &(k, v)) in s.labels.pairs().iter().chain(&statics).enumerate() {
                if i > 0 {
                    l.push(',');
                }
                push_label(&mut l, k, v);
            }
            l
        })
        .collect();
    let mut series_start = String::new();
    let mut line_start = String::new();
    for family in backfill_families(prefix, extra_names, currency) {
        let Some(read) = family.series.as_ref() else {
            continue;
        };
        writeln!(buf, "# TYPE {} counter", family.name)?;
        writeln!(buf, "# HELP {} {}", family.name, family.help)?;
        if !may_have_samples(&family, series) {
            continue;
        }
        let name = family.full_name();
        let money = is_money(&family);
        for (i, (s, labels)) in series.iter().zip(&series_labels).enumerate() {
            // A window's points are cold by now, a heap block per series: ask for the ones
            // a few series ahead while this one is written.
            if let Some(ahead) = series.get(i + PREFETCH_AHEAD) {
                prefetch(&ahead.points);
            }
            reader.read(read, s, currency);
            // The labels every line of this series and family starts with: written once.
            series_start.clear();
            series_start.push_str(&name);
            series_start.push('{');
            series_start.push_str(labels);
            for (set, samples) in reader.each() {
                line_start.clone_from(&series_start);
                if let Some((k, v)) = set.own {
                    line_start.push(',');
                    push_label(&mut line_start, k, v);
                }
                line_start.push_str(&tail);
                for (t, v) in set.first_zero(step_ns).into_iter().chain(samples) {
                    emitted.samples += 1;
                    first = first.min(t);
                    last = last.max(t);
                    buf.extend_from_slice(line_start.as_bytes());
                    // Money exactly, in decimal (docs/spend.md: divided only when written).
                    if money {
                        buf.extend_from_slice(crate::pricing::format_units(v).as_bytes());
                    } else {
                        match u64::try_from(v) {
                            Ok(n) => push_decimal(&mut buf, n, false),
                            Err(_) => buf.extend_from_slice(v.to_string().as_bytes()),
                        }
                    }
                    buf.push(b' ');
                    // Timestamps in seconds: promtool and mimirtool read OpenMetrics seconds.
                    let secs = t / 1_000_000_000;
                    push_decimal(&mut buf, secs.unsigned_abs(), secs < 0);
                    buf.push(b'\n');
                    if buf.len() >= FLUSH_AT {
                        out.write_all(&buf)?;
                        buf.clear();
                    }
                }
            }
        }
    }
    writeln!(buf, "# EOF")?;
    out.write_all(&buf)?;
    emitted.series = series.len();
    if emitted.samples > 0 {
        emitted.first_sample = Some(crate::timefmt::format_rfc3339_millis(first));
        emitted.last_sample = Some(crate::timefmt::format_rfc3339_millis(last));
    }
    Ok(emitted)
}

/// How many series ahead the formatter asks for their points.
const PREFETCH_AHEAD: usize = 4;

/// Asks the CPU to start loading the first two points of `points` (a hint; no effect on
/// what is computed).
fn prefetch(points: &[(i64, Cumulative)]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        for p in points.iter().take(2) {
            let at = (p as *const (i64, Cumulative)).cast::<i8>();
            // SAFETY: SSE is part of x86_64; a prefetch never faults, whatever the address.
            unsafe {
                _mm_prefetch::<_MM_HINT_T0>(at);
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(64));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = points;
}

/// Lines are handed to the writer in pieces of about this size.
const FLUSH_AT: usize = 256 * 1024;

/// Appends `k="v"` (`v` escaped).
fn push_label(out: &mut String, k: &str, v: &str) {
    out.push_str(k);
    out.push_str("=\"");
    push_escaped(out, v);
    out.push('"');
}

/// Appends `n` in decimal (with a `-` when `negative`).
fn push_decimal(out: &mut Vec<u8>, n: u64, negative: bool) {
    let mut digits = [0u8; 20];
    let at = crate::pricing::write_digits_backwards(&mut digits, n, 1);
    if negative {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backfill::samples::one_series;

    #[test]
    fn openmetrics_golden_for_one_small_series() {
        let s = one_series(2);
        let mut out = Vec::new();
        let mut labels = BTreeMap::new();
        labels.insert("cluster".to_string(), "c1".to_string());
        write_openmetrics(
            &mut out,
            &[s],
            "llm",
            &[],
            None,
            &labels,
            "node-a",
            60_000_000_000,
        )
        .unwrap();
        let want = "\
# TYPE llm_requests counter
# HELP llm_requests LLM requests by status class.
llm_requests_total{model=\"m\",api_key_id=\"k\",service_id=\"s\",cluster=\"c1\",status_class=\"2xx\",job=\"tokenmeter\",instance=\"node-a\"} 0 1700000000
llm_requests_total{model=\"m\",api_key_id=\"k\",service_id=\"s\",cluster=\"c1\",status_class=\"2xx\",job=\"tokenmeter\",instance=\"node-a\"} 1 1700000060
llm_requests_total{model=\"m\",api_key_id=\"k\",service_id=\"s\",cluster=\"c1\",status_class=\"2xx\",job=\"tokenmeter\",instance=\"node-a\"} 2 1700000120
# TYPE llm_input_tokens counter
# HELP llm_input_tokens Input (prompt) tokens.
llm_input_tokens_total{model=\"m\",api_key_id=\"k\",service_id=\"s\",cluster=\"c1\",job=\"tokenmeter\",instance=\"node-a\"} 0 1700000000
llm_input_tokens_total{model=\"m\",api_key_id=\"k\",service_id=\"s\",cluster=\"c1\",job=\"tokenmeter\",instance=\"node-a\"} 0 1700000060
llm_input_tokens_total{model=\"m\",api_key_id=\"k\",service_id=\"s\",cluster=\"c1\",job=\"tokenmeter\",instance=\"node-a\"} 10 1700000120
# TYPE llm_output_tokens counter
# HELP llm_output_tokens Output (completion) tokens.
llm_output_tokens_total{model=\"m\",api_key_id=\"k\",service_id=\"s\",cluster=\"c1\",job=\"tokenmeter\",instance=\"node-a\"} 0 1700000000
llm_output_tokens_total{model=\"m\",api_key_id=\"k\",service_id=\"s\",cluster=\"c1\",job=\"tokenmeter\",instance=\"node-a\"} 0 1700000060
llm_output_tokens_total{model=\"m\",api_key_id=\"k\",service_id=\"s\",cluster=\"c1\",job=\"tokenmeter\",instance=\"node-a\"} 1 1700000120
# TYPE llm_tokens counter
# HELP llm_tokens Total tokens.
llm_tokens_total{model=\"m\",api_key_id=\"k\",service_id=\"s\",cluster=\"c1\",job=\"tokenmeter\",instance=\"node-a\"} 0 1700000000
llm_tokens_total{model=\"m\",api_key_id=\"k\",service_id=\"s\",cluster=\"c1\",job=\"tokenmeter\",instance=\"node-a\"} 0 1700000060
llm_tokens_total{model=\"m\",api_key_id=\"k\",service_id=\"s\",cluster=\"c1\",job=\"tokenmeter\",instance=\"node-a\"} 11 1700000120
# EOF
";
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }
}
