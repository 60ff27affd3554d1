//! Reading one request's fields with its format's mapping: the first key that holds a value
//! wins, the hot path for mappings of top-level keys only (`read_simple`), and the docs/guarantees.md "What counts"
//! total rule that turns the counts into a [`Record`].
//!
//! Owns: field fallback (`Holds`), `read_record`, `read_simple`, what is an LLM request.
//! Must not: scan the line (the parser has) or decide its format (that is [`super::detect`]).

use std::borrow::Cow;

use super::fields::MAX_EXTRA_TOKENS;
use super::format::{Field, Format};
use super::logfmt;
use crate::json::{JsonStr, Kind, Raw, Value};
use crate::timefmt::parse_rfc3339_nanos;

use super::pointer::{follow, owned, Owned, Val};
use super::tables::{Compiled, PairValue, SimpleForm, Tables, TopKeys, Work, NO_KEY};
use super::values::{
    cut_label, digits, duration_ms, number_tokens, raw_label, raw_tokens, short_integer,
    status_class, str_tokens,
};
use super::{
    Parsed, Record, StatusClass, Tokens, EXTRA_BIT0, INPUT_BIT, OUTPUT_BIT, TOTAL_BIT, UNKNOWN,
};

/// What a field's first key must hold for the key to win over the next one.
#[derive(Clone, Copy, PartialEq)]
enum Holds {
    /// A measured count: anything but null, `""` and `"-"`.
    Count,
    /// A label: a string other than `""` and `"-"`.
    Label,
    /// Anything but null.
    Any,
}

fn holds(v: &Val<'_>, line: &str, need: Holds) -> bool {
    let text_ok = |s: &str| !s.is_empty() && s != "-";
    match (v, need) {
        (Val::Line(r), Holds::Any) => r.kind != Kind::Null,
        (Val::Line(r), Holds::Count) => match r.kind {
            Kind::Null => false,
            Kind::Str { .. } => text_ok(line.get(r.start..r.end).unwrap_or("")),
            _ => true,
        },
        (Val::Line(r), Holds::Label) => match r.value(line) {
            Value::Str(s) => text_ok(&s.decode()),
            _ => false,
        },
        (Val::Embedded(o), Holds::Any) => !matches!(o, Owned::Null),
        (Val::Embedded(o), Holds::Count) => match o {
            Owned::Null => false,
            Owned::Str(s) => text_ok(s),
            _ => true,
        },
        (Val::Embedded(o), Holds::Label) => matches!(o, Owned::Str(s) if text_ok(s)),
        (Val::Text(s), Holds::Any) => !s.is_empty(),
        (Val::Text(s), _) => text_ok(s),
    }
}

/// A field's value: the first of its paths that holds one (see [`Holds`]), else the last
/// path's value, which says whether the field is missing, null or invalid.
fn field_value<'a>(
    w: &mut Work,
    line: &'a str,
    paths: &[Compiled],
    plugin: Option<Raw>,
    need: Holds,
) -> Option<Val<'a>> {
    let mut last = None;
    for (i, path) in paths.iter().enumerate() {
        let v = match path {
            Compiled::Top(k) => w.top(*k).map(Val::Line),
            Compiled::Pointer(k, steps) => match w.top(*k) {
                None => None,
                Some(Raw {
                    kind: Kind::Str { .. },
                    ..
                }) => {
                    // Into JSON held in a top-level string: its decoded text, once per line.
                    let text = w.take_embedded(line, *k);
                    let v = match steps.split_first() {
                        Some((first, rest)) => w
                            .embedded_member(&text, first)
                            .and_then(|at| follow(&mut w.scanner, &text, at, rest))
                            .map(|v| match v {
                                Val::Line(raw) => Val::Embedded(owned(&text, raw)),
                                other => other.into_owned(),
                            }),
                        None => None,
                    };
                    w.put_embedded(text);
                    v
                }
                Some(at) => follow(&mut w.scanner, line, at, steps),
            },
            Compiled::InPlugin(steps) => {
                plugin.and_then(|p| follow(&mut w.scanner, line, p, steps))
            }
            Compiled::Pair(k) => match &w.pairs[*k] {
                PairValue::Absent => None,
                PairValue::Span(a, b) => line.get(*a..*b).map(|s| Val::Text(Cow::Borrowed(s))),
                PairValue::Owned(s) => Some(Val::Text(Cow::Owned(s.clone()))),
            },
        };
        match v {
            Some(v) if i + 1 == paths.len() || holds(&v, line, need) => return Some(v),
            Some(v) => last = Some(v),
            None => {}
        }
    }
    last
}

fn val_tokens(line: &str, v: Option<Val<'_>>) -> Tokens {
    match v {
        None => Tokens::NotMeasured,
        Some(Val::Line(raw)) => raw_tokens(line, Some(raw)),
        Some(Val::Embedded(Owned::Str(s))) | Some(Val::Text(Cow::Owned(s))) => str_tokens(&s),
        Some(Val::Text(Cow::Borrowed(s))) => str_tokens(s),
        Some(Val::Embedded(Owned::Number(n))) => number_tokens(&n),
        Some(Val::Embedded(Owned::Null)) => Tokens::NotMeasured,
        Some(Val::Embedded(Owned::Other)) => Tokens::Invalid,
    }
}

fn val_label<'a>(line: &'a str, v: Option<Val<'a>>) -> Option<Cow<'a, str>> {
    match v? {
        Val::Line(raw) => raw_label(line, Some(raw)),
        Val::Embedded(Owned::Str(s)) => text_label(Cow::Owned(s)),
        Val::Text(s) => text_label(s),
        Val::Embedded(_) => None,
    }
}

fn text_label(s: Cow<'_, str>) -> Option<Cow<'_, str>> {
    if s.is_empty() || s == "-" {
        return None;
    }
    Some(cut_label(s))
}

fn val_status(line: &str, v: Option<Val<'_>>) -> StatusClass {
    match v {
        Some(Val::Line(raw)) => status_class(Some(raw.value(line))),
        Some(Val::Embedded(Owned::Number(n))) => status_class(Some(Value::Number(&n))),
        Some(Val::Embedded(Owned::Str(s))) | Some(Val::Text(Cow::Owned(s))) => {
            status_class(Some(Value::Str(JsonStr {
                raw: &s,
                escaped: false,
            })))
        }
        Some(Val::Text(Cow::Borrowed(s))) => status_class(Some(Value::Str(JsonStr {
            raw: s,
            escaped: false,
        }))),
        _ => StatusClass::Other,
    }
}

fn val_duration(line: &str, v: Option<Val<'_>>) -> Option<f64> {
    match v? {
        Val::Line(raw) => duration_ms(Some(raw.value(line))),
        Val::Embedded(Owned::Number(n)) => duration_ms(Some(Value::Number(&n))),
        Val::Embedded(Owned::Str(s)) => duration_ms(Some(Value::Str(JsonStr {
            raw: &s,
            escaped: false,
        }))),
        Val::Text(s) => logfmt::duration_ms(&s),
        Val::Embedded(_) => None,
    }
}

/// The start time: kept as written when it is RFC 3339 text in the line (parsed only if the
/// event time is needed), else worked out now.
#[inline]
fn val_start<'a>(
    line: &'a str,
    v: Option<Val<'a>>,
    epoch_ms: bool,
) -> (Option<JsonStr<'a>>, Option<i64>) {
    match v {
        // A string is RFC 3339 in every format (a key configured for Kong may name one).
        Some(Val::Line(raw)) => match raw.value(line) {
            Value::Str(s) => (Some(s), None),
            Value::Number(n) if epoch_ms => (None, epoch_ms_ns(n)),
            _ => (None, None),
        },
        Some(Val::Embedded(Owned::Str(s))) => (None, parse_rfc3339_nanos(&s)),
        Some(Val::Embedded(Owned::Number(n))) if epoch_ms => (None, epoch_ms_ns(&n)),
        Some(Val::Text(Cow::Borrowed(s))) => (
            Some(JsonStr {
                raw: s,
                escaped: false,
            }),
            None,
        ),
        Some(Val::Text(Cow::Owned(s))) => (None, parse_rfc3339_nanos(&s)),
        _ => (None, None),
    }
}

/// Epoch milliseconds (a JSON number) as nanoseconds; `None` when negative or out of range.
fn epoch_ms_ns(n: &str) -> Option<i64> {
    // Integer milliseconds (what Kong writes) exactly; anything else through a float.
    if let Some(ms) = digits(n) {
        return i64::try_from(ms).ok()?.checked_mul(1_000_000);
    }
    let ms: f64 = n.parse().ok()?;
    (0.0..9.2e12).contains(&ms).then_some((ms * 1e6) as i64)
}

/// Reads one request of `line` with `format`'s mapping (for Kong, of one plugin); `NotLlm`
/// when it is not an LLM request (no model and no valid count). Returns a [`Parsed`] rather
/// than an `Option`, so that the record is built where the caller returns it.
pub(super) fn read_record<'a>(
    t: &Tables,
    w: &mut Work,
    line: &'a str,
    format: Format,
    plugin: Option<Raw>,
    first_of_line: bool,
) -> Parsed<'a> {
    let m = &t.mappings[format as usize];
    if let Some(simple) = &m.simple {
        return read_simple(t, w, line, format, simple, m.start_time_epoch_ms);
    }
    let mut get = |field: Field, need| field_value(w, line, m.get(field), plugin, need);
    let model = val_label(line, get(Field::Model, Holds::Label));
    let input = val_tokens(line, get(Field::Input, Holds::Count));
    let output = val_tokens(line, get(Field::Output, Holds::Count));
    let total = val_tokens(line, get(Field::Total, Holds::Count));
    let Some(c) = counts(model.is_some(), input, output, total, t.n_extra, |i| {
        let paths = m.extra.get(i).map_or(&[][..], Vec::as_slice);
        val_tokens(line, field_value(w, line, paths, plugin, Holds::Count))
    }) else {
        return Parsed::NotLlm;
    };
    let mut get = |field: Field, need| field_value(w, line, m.get(field), plugin, need);
    let api_key_id = val_label(line, get(Field::ApiKey, Holds::Label));
    let service_id = val_label(line, get(Field::Service, Holds::Label));
    let status = val_status(line, get(Field::Status, Holds::Any));
    let duration = val_duration(line, get(Field::Duration, Holds::Any));
    let (mut start_time, mut start_ns, mut written_ns) = (None, None, None);
    if format == Format::Logfmt && m.get(Field::StartTime).is_empty() {
        // agentgateway's line starts with the time it was written: the event time itself.
        written_ns = parse_rfc3339_nanos(logfmt::first_word(line));
    } else {
        (start_time, start_ns) = val_start(
            line,
            get(Field::StartTime, Holds::Any),
            m.start_time_epoch_ms,
        );
    }
    let mut r = c.record(
        [model, api_key_id, service_id],
        status,
        duration,
        (start_time, start_ns),
        format,
        first_of_line,
    );
    r.written_ns = written_ns;
    Parsed::Record(r)
}

/// [`read_record`] of a mapping whose every field is at most one top-level key: each value is
/// read from its span in the line, as the seed's single-format parser did.
#[inline]
fn read_simple<'a>(
    t: &Tables,
    w: &Work,
    line: &'a str,
    format: Format,
    simple: &SimpleForm,
    epoch_ms: bool,
) -> Parsed<'a> {
    let raw = |f: Field, need: Holds| pick(w, line, simple.fields[f as usize], need);
    let model = raw_label(line, raw(Field::Model, Holds::Label));
    let input = raw_tokens(line, raw(Field::Input, Holds::Count));
    let output = raw_tokens(line, raw(Field::Output, Holds::Count));
    let total = raw_tokens(line, raw(Field::Total, Holds::Count));
    let n_extra = if w.present & simple.extra_keys == 0 {
        0
    } else {
        t.n_extra
    };
    let Some(c) = counts(
        model.is_some(),
        input,
        output,
        total,
        n_extra,
        |i| match simple
            .extra
            .get(i)
            .and_then(|keys| pick(w, line, *keys, Holds::Count))
        {
            Some(r) => raw_tokens(line, Some(r)),
            None => Tokens::NotMeasured,
        },
    ) else {
        return Parsed::NotLlm;
    };
    let start = match raw(Field::StartTime, Holds::Any) {
        Some(Raw {
            kind: Kind::Str { escaped },
            start,
            end,
        }) => (
            line.get(start..end).map(|raw| JsonStr { raw, escaped }),
            None,
        ),
        other => val_start(line, other.map(Val::Line), epoch_ms),
    };
    Parsed::Record(c.record(
        [
            model,
            raw_label(line, raw(Field::ApiKey, Holds::Label)),
            raw_label(line, raw(Field::Service, Holds::Label)),
        ],
        raw_status(line, raw(Field::Status, Holds::Any)),
        raw_duration(line, raw(Field::Duration, Holds::Any)),
        start,
        format,
        true,
    ))
}

/// [`status_class`] straight from a value's span: a three-digit number without building a
/// [`Value`].
#[inline(always)]
fn raw_status(line: &str, raw: Option<Raw>) -> StatusClass {
    let Some(raw) = raw else {
        return StatusClass::Other;
    };
    if let (Kind::Number, Some(&[a, b, c])) = (raw.kind, line.as_bytes().get(raw.start..raw.end)) {
        let [a, b, c] = [a, b, c].map(|d| d.wrapping_sub(b'0'));
        if a <= 9 && b <= 9 && c <= 9 {
            return StatusClass::from_code(u64::from(a) * 100 + u64::from(b) * 10 + u64::from(c));
        }
    }
    status_class(Some(raw.value(line)))
}

/// [`duration_ms`] straight from a value's span: integer milliseconds of up to 15 digits
/// without building a [`Value`].
#[inline(always)]
fn raw_duration(line: &str, raw: Option<Raw>) -> Option<f64> {
    let raw = raw?;
    if raw.kind == Kind::Number {
        if let Some(ms) = short_integer(line, raw) {
            return Some(ms as f64);
        }
    }
    duration_ms(Some(raw.value(line)))
}

/// A request's counts under the rules of docs/guarantees.md "What counts": which token fields were valid or invalid,
/// the extra types, and the total rule.
struct Counts {
    input: Option<u64>,
    output: Option<u64>,
    total: u64,
    total_mismatch: bool,
    pub(super) extra: [u64; MAX_EXTRA_TOKENS],
    valid: u32,
    invalid: u32,
}

/// The counts of a request, `None` when it is no LLM request (no model and no valid input,
/// output or total). `extra(i)` reads extra type `i` (asked only for an LLM request).
#[inline(always)]
fn counts(
    has_model: bool,
    input: Tokens,
    output: Tokens,
    total: Tokens,
    n_extra: usize,
    mut extra: impl FnMut(usize) -> Tokens,
) -> Option<Counts> {
    let mut invalid = 0u32;
    let mut valid = 0u32;
    for (bit, tok) in [(INPUT_BIT, input), (OUTPUT_BIT, output), (TOTAL_BIT, total)] {
        match tok {
            Tokens::Valid(_) => valid |= 1 << bit,
            Tokens::Invalid => invalid |= 1 << bit,
            Tokens::NotMeasured => {}
        }
    }
    if !has_model && valid == 0 {
        return None;
    }
    let mut extras = [0u64; MAX_EXTRA_TOKENS];
    for (i, slot) in extras.iter_mut().enumerate().take(n_extra) {
        let bit = EXTRA_BIT0 + i as u32;
        match extra(i) {
            Tokens::Valid(v) => {
                *slot = v;
                valid |= 1 << bit;
            }
            Tokens::Invalid => invalid |= 1 << bit,
            Tokens::NotMeasured => {}
        }
    }
    let (i, o) = (input.valid(), output.valid());
    Some(Counts {
        input: i,
        output: o,
        total: total.valid().unwrap_or(i.unwrap_or(0) + o.unwrap_or(0)),
        total_mismatch: matches!((i, o, total.valid()), (Some(i), Some(o), Some(t)) if i + o != t),
        extra: extras,
        valid,
        invalid,
    })
}

impl Counts {
    /// The record of these counts with its labels (model, api_key_id, service_id; `unknown`
    /// where missing) and the rest of its fields.
    #[inline(always)]
    fn record<'a>(
        self,
        [model, api_key_id, service_id]: [Option<Cow<'a, str>>; 3],
        status_class: StatusClass,
        duration_ms: Option<f64>,
        (start_time, start_ns): (Option<JsonStr<'a>>, Option<i64>),
        format: Format,
        first_of_line: bool,
    ) -> Record<'a> {
        let known = |v: Option<Cow<'a, str>>| v.unwrap_or(Cow::Borrowed(UNKNOWN));
        Record {
            model: known(model),
            api_key_id: known(api_key_id),
            service_id: known(service_id),
            input_tokens: self.input.unwrap_or(0),
            output_tokens: self.output.unwrap_or(0),
            total_tokens: self.total,
            extra_tokens: self.extra,
            status_class,
            duration_ms,
            start_time,
            start_ns,
            written_ns: None,
            format,
            first_of_line,
            invalid: self.invalid,
            valid: self.valid,
            total_mismatch: self.total_mismatch,
        }
    }
}

/// A field's value from its top-level keys: the first that holds a value (see [`Holds`]), else
/// the last one present.
#[inline(always)]
fn pick(w: &Work, line: &str, keys: TopKeys, need: Holds) -> Option<Raw> {
    match w.top(keys.first.into()) {
        Some(r) if keys.then == NO_KEY || holds(&Val::Line(r), line, need) => Some(r),
        first => w.top(keys.then.into()).or(first),
    }
}
