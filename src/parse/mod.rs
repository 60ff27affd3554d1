//! One logical line → a borrowed [`Record`] under the rules of SPEC §3.
//!
//! Owns: what counts as an LLM record, the token value rules, the total rule, label values,
//! status class and the record's own time fields, with the key names from `[fields]`.
//! Pure, no I/O; in the common case (no escapes in the wanted values) it allocates nothing:
//! label values borrow from the line. Must not count anything: that is `aggregate`'s job.
//!
//! Deliberate rules beyond SPEC §3:
//! - Only top-level keys count; a nested `"model"` is not the model.
//! - A key that appears twice: the last one wins (as in JavaScript's and Python's JSON).

use std::borrow::Cow;

use crate::config::{Fields, MAX_EXTRA_TOKENS};
use crate::json::{JsonStr, Kind, Raw, Scanner, Value};
use crate::timefmt::parse_rfc3339_nanos;

/// Largest valid token value: 2^53, the largest integer every JSON consumer holds exactly.
pub const MAX_TOKENS: u64 = 1 << 53;
/// Label values are cut to this many bytes (on a character boundary).
pub const MAX_LABEL_BYTES: usize = 256;
/// The value of a label that is missing, null, `"-"`, `""` or not a string.
pub const UNKNOWN: &str = "unknown";

/// Status class of a record, from its response code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StatusClass {
    C2xx = 0,
    C3xx = 1,
    C4xx = 2,
    C5xx = 3,
    /// Anything else, including 0 (the client went away) and a missing code.
    Other = 4,
}

impl StatusClass {
    pub const ALL: [StatusClass; 5] = [
        StatusClass::C2xx,
        StatusClass::C3xx,
        StatusClass::C4xx,
        StatusClass::C5xx,
        StatusClass::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::C2xx => "2xx",
            StatusClass::C3xx => "3xx",
            StatusClass::C4xx => "4xx",
            StatusClass::C5xx => "5xx",
            StatusClass::Other => "other",
        }
    }

    fn from_code(code: u64) -> Self {
        match code {
            200..=299 => StatusClass::C2xx,
            300..=399 => StatusClass::C3xx,
            400..=499 => StatusClass::C4xx,
            500..=599 => StatusClass::C5xx,
            _ => StatusClass::Other,
        }
    }
}

/// A token field's value under SPEC §3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tokens {
    /// Missing, `null`, `"-"` or `""`: nothing to add.
    NotMeasured,
    Valid(u64),
    /// Present but not a valid count: adds nothing and is counted as an invalid field.
    Invalid,
}

impl Tokens {
    pub fn valid(self) -> Option<u64> {
        match self {
            Tokens::Valid(v) => Some(v),
            _ => None,
        }
    }
}

/// Token fields in the order of [`Record::invalid`]'s bits: input, output, total, then extras.
pub const INPUT_BIT: u32 = 0;
pub const OUTPUT_BIT: u32 = 1;
pub const TOTAL_BIT: u32 = 2;
pub const EXTRA_BIT0: u32 = 3;

/// One LLM record, borrowing from its line.
#[derive(Clone, Debug, PartialEq)]
pub struct Record<'a> {
    pub model: Cow<'a, str>,
    pub api_key_id: Cow<'a, str>,
    pub service_id: Cow<'a, str>,
    /// Valid values only (0 when not measured or invalid).
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The total rule applied: the total field when valid, else input + output.
    pub total_tokens: u64,
    /// `[fields.extra_tokens]` in name order; 0 when not measured or invalid.
    pub extra_tokens: [u64; MAX_EXTRA_TOKENS],
    pub status_class: StatusClass,
    pub duration_ms: Option<f64>,
    /// The start-time field as written; parsed only when the event time is needed.
    pub start_time: Option<JsonStr<'a>>,
    /// Bit per token field that held an invalid value (see `INPUT_BIT` …).
    pub invalid: u32,
    /// Bit per token field that held a valid value (same bits): which counts were measured.
    pub valid: u32,
    /// All three of input, output and total were valid and total ≠ input + output.
    pub total_mismatch: bool,
}

impl Record<'_> {
    /// Event time (SPEC §3): the envelope's timestamp, else start + duration, else start.
    pub fn event_time_ns(&self, envelope_ns: Option<i64>) -> Option<i64> {
        envelope_ns.or_else(|| start_plus_duration(self.start_time.as_ref()?, self.duration_ms))
    }
}

/// The record part of the event time (SPEC §3): `start_time` + `duration`, else `start_time`;
/// `None` when `start_time` is not an RFC 3339 time.
pub fn start_plus_duration(start_time: &JsonStr<'_>, duration_ms: Option<f64>) -> Option<i64> {
    let start = parse_rfc3339_nanos(&start_time.decode())?;
    Some(match duration_ms {
        Some(ms) => start.saturating_add((ms * 1e6) as i64),
        None => start,
    })
}

/// What a logical line is. Not boxed: a record is the common case and must not allocate.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Parsed<'a> {
    Record(Record<'a>),
    /// A JSON object that is not an LLM record.
    NotLlm,
    /// Not a JSON object.
    NotJson,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Model = 0,
    Input,
    Output,
    Total,
    ApiKey,
    Service,
    Status,
    StartTime,
    Duration,
    Extra0,
}

const N_SLOTS: usize = Slot::Extra0 as usize + MAX_EXTRA_TOKENS;

/// Wanted keys in a small open-addressed table indexed by a hash of the key's length and first
/// 8 bytes. Most keys of a line are not wanted and stop at one empty bucket; a candidate is
/// confirmed by comparing two integers (the first and last 8 bytes), and the whole key only
/// when it is longer than 16 bytes.
struct KeyTable {
    /// Entry index + 1 per bucket; 0 is empty. Linear probing, never deleted from.
    buckets: [u8; KEY_BUCKETS],
    entries: Vec<KeyEntry>,
}

const KEY_BUCKETS: usize = 256;

struct KeyEntry {
    len: usize,
    head: u64,
    tail: u64,
    full: Box<[u8]>,
    slot: usize,
}

/// The first and last 8 bytes of `k` as integers (zero-padded when shorter).
#[inline(always)]
fn head_tail(k: &[u8]) -> (u64, u64) {
    if let (Some(head), Some(tail)) = (k.first_chunk::<8>(), k.last_chunk::<8>()) {
        (u64::from_le_bytes(*head), u64::from_le_bytes(*tail))
    } else {
        let mut pad = [0u8; 8];
        pad[..k.len()].copy_from_slice(k);
        let v = u64::from_le_bytes(pad);
        (v, v)
    }
}

#[inline(always)]
fn bucket(len: usize, head: u64) -> usize {
    (head
        .wrapping_add(len as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        >> 56) as usize
}

impl KeyTable {
    fn new(keys: &[(String, usize)]) -> Self {
        let mut table = KeyTable {
            buckets: [0; KEY_BUCKETS],
            entries: Vec::new(),
        };
        // At most 9 + MAX_EXTRA_TOKENS keys: the table never fills.
        for (k, slot) in keys.iter().take(KEY_BUCKETS / 2) {
            let (head, tail) = head_tail(k.as_bytes());
            table.entries.push(KeyEntry {
                len: k.len(),
                head,
                tail,
                full: k.as_bytes().into(),
                slot: *slot,
            });
            let mut h = bucket(k.len(), head);
            while table.buckets[h] != 0 {
                h = (h + 1) % KEY_BUCKETS;
            }
            table.buckets[h] = table.entries.len() as u8;
        }
        table
    }

    /// Calls `hit` with the slot of every wanted key equal to `key`.
    #[inline(always)]
    fn lookup(&self, key: &[u8], mut hit: impl FnMut(usize)) {
        let (head, tail) = head_tail(key);
        let mut h = bucket(key.len(), head);
        loop {
            let i = self.buckets[h] as usize;
            let Some(e) = i.checked_sub(1).and_then(|i| self.entries.get(i)) else {
                return;
            };
            if e.head == head
                && e.tail == tail
                && e.len == key.len()
                && (key.len() <= 16 || *e.full == *key)
            {
                hit(e.slot);
            }
            h = (h + 1) % KEY_BUCKETS;
        }
    }
}

/// Reusable parser configured with the `[fields]` names.
pub struct Parser {
    scanner: Scanner,
    /// Where each wanted key's value is in the current line (valid where `present` says so).
    slots: [Raw; N_SLOTS],
    keys: KeyTable,
    n_extra: usize,
}

impl Parser {
    pub fn new(fields: &Fields) -> Self {
        let mut keys = vec![
            (fields.model.clone(), Slot::Model as usize),
            (fields.input_tokens.clone(), Slot::Input as usize),
            (fields.output_tokens.clone(), Slot::Output as usize),
            (fields.total_tokens.clone(), Slot::Total as usize),
            (fields.api_key_id.clone(), Slot::ApiKey as usize),
            (fields.service_id.clone(), Slot::Service as usize),
            (fields.status.clone(), Slot::Status as usize),
            (fields.start_time.clone(), Slot::StartTime as usize),
            (fields.duration_ms.clone(), Slot::Duration as usize),
        ];
        let n_extra = fields.extra_tokens.len().min(MAX_EXTRA_TOKENS);
        for (i, key) in fields.extra_tokens.values().take(n_extra).enumerate() {
            keys.push((key.clone(), Slot::Extra0 as usize + i));
        }
        Parser {
            scanner: Scanner::new(),
            slots: [Raw {
                kind: Kind::Null,
                start: 0,
                end: 0,
            }; N_SLOTS],
            keys: KeyTable::new(&keys),
            n_extra,
        }
    }

    /// Parses one logical line.
    pub fn parse<'a>(&mut self, line: &'a str) -> Parsed<'a> {
        let mut present = 0u32;
        let keys = &self.keys;
        let slots = &mut self.slots;
        let scanned = self.scanner.scan(
            line.as_bytes(),
            #[inline(always)]
            |key, raw| {
                let mut put = |slot: usize| {
                    slots[slot] = raw;
                    present |= 1 << slot;
                };
                if key.escaped {
                    let decoded = JsonStr {
                        raw: line.get(key.start..key.end).unwrap_or(""),
                        escaped: true,
                    }
                    .decode();
                    keys.lookup(decoded.as_bytes(), &mut put);
                } else {
                    keys.lookup(key.raw, &mut put);
                }
            },
        );
        if scanned.is_err() {
            return Parsed::NotJson;
        }
        self.interpret(line, present)
    }

    fn interpret<'a>(&self, line: &'a str, present: u32) -> Parsed<'a> {
        let slots = &self.slots;
        let get = |s: Slot| (present >> s as usize & 1 == 1).then(|| slots[s as usize].value(line));
        let raw = |s: usize| (present >> s & 1 == 1).then(|| slots[s]);
        let model = raw_label(line, raw(Slot::Model as usize));
        let input = raw_tokens(line, raw(Slot::Input as usize));
        let output = raw_tokens(line, raw(Slot::Output as usize));
        let total = raw_tokens(line, raw(Slot::Total as usize));
        let mut extra = [0u64; MAX_EXTRA_TOKENS];
        let mut invalid = 0u32;
        let mut valid = 0u32;
        for (bit, t) in [(INPUT_BIT, input), (OUTPUT_BIT, output), (TOTAL_BIT, total)] {
            match t {
                Tokens::Valid(_) => valid |= 1 << bit,
                Tokens::Invalid => invalid |= 1 << bit,
                Tokens::NotMeasured => {}
            }
        }
        if model.is_none() && valid == 0 {
            return Parsed::NotLlm;
        }
        for (i, out) in extra.iter_mut().enumerate().take(self.n_extra) {
            let slot = Slot::Extra0 as usize + i;
            match raw_tokens(line, raw(slot)) {
                Tokens::Valid(v) => {
                    *out = v;
                    valid |= 1 << (EXTRA_BIT0 + i as u32);
                }
                Tokens::Invalid => invalid |= 1 << (EXTRA_BIT0 + i as u32),
                Tokens::NotMeasured => {}
            }
        }
        let (i, o) = (input.valid(), output.valid());
        let total_tokens = match total.valid() {
            Some(t) => t,
            None => i.unwrap_or(0) + o.unwrap_or(0),
        };
        let total_mismatch =
            matches!((i, o, total.valid()), (Some(i), Some(o), Some(t)) if i + o != t);
        Parsed::Record(Record {
            model: model.unwrap_or(Cow::Borrowed(UNKNOWN)),
            api_key_id: raw_label(line, raw(Slot::ApiKey as usize))
                .unwrap_or(Cow::Borrowed(UNKNOWN)),
            service_id: raw_label(line, raw(Slot::Service as usize))
                .unwrap_or(Cow::Borrowed(UNKNOWN)),
            input_tokens: i.unwrap_or(0),
            output_tokens: o.unwrap_or(0),
            total_tokens,
            extra_tokens: extra,
            status_class: status_class(get(Slot::Status)),
            duration_ms: duration_ms(get(Slot::Duration)),
            start_time: match get(Slot::StartTime) {
                Some(Value::Str(s)) => Some(s),
                _ => None,
            },
            invalid,
            valid,
            total_mismatch,
        })
    }
}

/// [`label`] straight from a value's span: an unescaped string (nearly every label) is
/// sliced from the line without building a [`Value`].
#[inline(always)]
fn raw_label(line: &str, raw: Option<Raw>) -> Option<Cow<'_, str>> {
    let raw = raw?;
    if raw.kind != (Kind::Str { escaped: false }) {
        return label(Some(raw.value(line)));
    }
    let s = line.get(raw.start..raw.end)?;
    if s.is_empty() || s == "-" {
        return None;
    }
    Some(cut_label(Cow::Borrowed(s)))
}

/// [`tokens`] straight from a value's span: a plain integer of up to 15 digits (far below
/// 2^53), as a number or an unescaped string, is read in one pass.
#[inline(always)]
fn raw_tokens(line: &str, raw: Option<Raw>) -> Tokens {
    let Some(raw) = raw else {
        return Tokens::NotMeasured;
    };
    let text = line.as_bytes().get(raw.start..raw.end).unwrap_or_default();
    if matches!(raw.kind, Kind::Number | Kind::Str { escaped: false })
        && (1..=15).contains(&text.len())
    {
        let mut v = 0u64;
        let mut plain = true;
        for &c in text {
            let d = c.wrapping_sub(b'0');
            plain &= d <= 9;
            v = v.wrapping_mul(10).wrapping_add(u64::from(d));
        }
        if plain {
            return Tokens::Valid(v);
        }
    }
    tokens(Some(raw.value(line)))
}

/// A label value: the string, cut to 256 bytes; `None` for missing, null, `"-"`, `""` or a
/// non-string (the caller writes `unknown`).
fn label(v: Option<Value<'_>>) -> Option<Cow<'_, str>> {
    let Some(Value::Str(s)) = v else {
        return None;
    };
    let s = s.decode();
    if s.is_empty() || s == "-" {
        return None;
    }
    Some(cut_label(s))
}

fn cut_label(s: Cow<'_, str>) -> Cow<'_, str> {
    if s.len() <= MAX_LABEL_BYTES {
        return s;
    }
    let mut end = MAX_LABEL_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(&b[..end]),
        Cow::Owned(mut o) => {
            o.truncate(end);
            Cow::Owned(o)
        }
    }
}

/// The token value rules of SPEC §3.
pub fn tokens(v: Option<Value<'_>>) -> Tokens {
    match v {
        None | Some(Value::Null) => Tokens::NotMeasured,
        Some(Value::Number(n)) => number_tokens(n),
        Some(Value::Str(s)) => {
            let s = s.decode();
            if s.is_empty() || s == "-" {
                Tokens::NotMeasured
            } else if s.bytes().all(|c| c.is_ascii_digit()) {
                digits(&s).map_or(Tokens::Invalid, Tokens::Valid)
            } else {
                Tokens::Invalid
            }
        }
        Some(Value::Bool(_) | Value::Object | Value::Array) => Tokens::Invalid,
    }
}

/// A non-empty string of ASCII digits as a count ≤ 2^53.
#[inline]
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    // 2^53 has 16 digits; longer is too large unless it is leading zeros.
    let s = if s.len() > 16 {
        let t = s.trim_start_matches('0');
        if t.is_empty() {
            return Some(0);
        }
        if t.len() > 16 {
            return None;
        }
        t
    } else {
        s
    };
    let mut v: u64 = 0;
    for c in s.bytes() {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v * 10 + d as u64;
    }
    (v <= MAX_TOKENS).then_some(v)
}

/// A JSON number (grammar already checked) as a count: an integer ≥ 0 or a number with no
/// fractional part (`1e3`, `12.0`), at most 2^53.
fn number_tokens(n: &str) -> Tokens {
    if n.bytes().all(|c| c.is_ascii_digit()) {
        return digits(n).map_or(Tokens::Invalid, Tokens::Valid);
    }
    match n.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 && x.fract() == 0.0 && x <= MAX_TOKENS as f64 => {
            Tokens::Valid(x as u64)
        }
        _ => Tokens::Invalid,
    }
}

fn status_class(v: Option<Value<'_>>) -> StatusClass {
    let code = match v {
        Some(Value::Number(n)) => digits(n),
        Some(Value::Str(s))
            if !s.escaped && !s.raw.is_empty() && s.raw.bytes().all(|c| c.is_ascii_digit()) =>
        {
            digits(s.raw)
        }
        _ => None,
    };
    code.map_or(StatusClass::Other, StatusClass::from_code)
}

fn duration_ms(v: Option<Value<'_>>) -> Option<f64> {
    let text = match v {
        Some(Value::Number(n)) => n,
        Some(Value::Str(s)) if !s.escaped => s.raw,
        _ => return None,
    };
    if let Some(ms) = digits(text) {
        return Some(ms as f64); // the usual integer milliseconds, without a float parse
    }
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Some(x),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parser() -> Parser {
        let mut f = Fields::default();
        f.extra_tokens
            .insert("cached_input".into(), "llm_cached_input_token".into());
        f.extra_tokens
            .insert("reasoning".into(), "llm_reasoning_token".into());
        Parser::new(&f)
    }

    fn rec(line: &str) -> Record<'static> {
        let line: &'static str = Box::leak(line.to_string().into_boxed_str());
        match parser().parse(line) {
            Parsed::Record(r) => r,
            other => panic!("{line}: {other:?}"),
        }
    }

    fn kind(line: &str) -> &'static str {
        match parser().parse(line) {
            Parsed::Record(_) => "record",
            Parsed::NotLlm => "not_llm",
            Parsed::NotJson => "not_json",
        }
    }

    #[test]
    fn plain_record() {
        let r = rec(
            r#"{"model":"gpt-4o-mini","llm_input_token":15,"llm_output_token":7,"llm_total_token":22,"api_key_id":"k","aim_service_id":"s","response_code":200,"duration":812,"start_time":"2026-03-17T09:14:02.113Z"}"#,
        );
        assert_eq!(
            (
                r.model.as_ref(),
                r.api_key_id.as_ref(),
                r.service_id.as_ref()
            ),
            ("gpt-4o-mini", "k", "s")
        );
        assert_eq!(
            (r.input_tokens, r.output_tokens, r.total_tokens),
            (15, 7, 22)
        );
        assert_eq!(r.status_class, StatusClass::C2xx);
        assert_eq!(r.invalid, 0);
        assert!(!r.total_mismatch);
        assert!(
            matches!(r.model, Cow::Borrowed(_)),
            "no allocation for clean values"
        );
        assert_eq!(
            r.event_time_ns(None),
            Some(parse_rfc3339_nanos("2026-03-17T09:14:02.925Z").unwrap())
        );
        assert_eq!(r.event_time_ns(Some(7)), Some(7));
    }

    #[test]
    fn what_is_a_record() {
        assert_eq!(kind(r#"{"model":"m"}"#), "record");
        assert_eq!(kind(r#"{"llm_input_token":3}"#), "record");
        assert_eq!(kind(r#"{"model":null,"llm_total_token":"5"}"#), "record");
        assert_eq!(kind(r#"{"model":null,"llm_input_token":null}"#), "not_llm");
        assert_eq!(kind(r#"{"model":"-","llm_input_token":"-"}"#), "not_llm");
        assert_eq!(kind(r#"{"model":"","llm_input_token":""}"#), "not_llm");
        assert_eq!(kind(r#"{"model":7}"#), "not_llm");
        assert_eq!(kind(r#"{"llm_input_token":-1}"#), "not_llm");
        assert_eq!(kind(r#"{}"#), "not_llm");
        assert_eq!(kind(r#"{"other":{"model":"nested"}}"#), "not_llm");
        assert_eq!(
            kind("[2026-03-17 09:14:01.202][1][warning][main] text"),
            "not_json"
        );
        assert_eq!(kind(r#"[{"model":"m"}]"#), "not_json");
        assert_eq!(kind(r#"{"model":"m","llm_input_token":12"#), "not_json");
        assert_eq!(kind(r#"{"model":"m","llm_input_token":NaN}"#), "not_json");
        assert_eq!(kind(r#""model""#), "not_json");
        assert_eq!(kind(r#"{"model":"m"} trailing"#), "not_json");
    }

    #[test]
    fn token_value_rules() {
        use Tokens::*;
        let t = |json: &str| {
            let line = format!("{{\"v\":{json}}}");
            let mut got = None;
            Scanner::new()
                .scan_object(&line, |_, v| got = Some(tokens(Some(v))))
                .unwrap();
            got.unwrap()
        };
        assert_eq!(t("12"), Valid(12));
        assert_eq!(t("0"), Valid(0));
        assert_eq!(t("1e3"), Valid(1000));
        assert_eq!(t("1E+3"), Valid(1000));
        assert_eq!(t("12.0"), Valid(12));
        assert_eq!(t("\"123\""), Valid(123));
        assert_eq!(t("9007199254740992"), Valid(MAX_TOKENS));
        assert_eq!(t("9007199254740993"), Invalid);
        assert_eq!(t("\"9007199254740993\""), Invalid);
        assert_eq!(t("\"00000000000000000042\""), Valid(42));
        assert_eq!(t("\"00000000000000000000\""), Valid(0));
        assert_eq!(t("99999999999999999999999"), Invalid);
        assert_eq!(t("1e300"), Invalid);
        assert_eq!(t("1e400"), Invalid); // beyond f64: still a JSON number, not a count
        assert_eq!(t("-1"), Invalid);
        assert_eq!(t("1.5"), Invalid);
        assert_eq!(t("\"12.5\""), Invalid);
        assert_eq!(t("\" 12\""), Invalid);
        assert_eq!(t("\"-5\""), Invalid);
        assert_eq!(t("\"abc\""), Invalid);
        assert_eq!(t("true"), Invalid);
        assert_eq!(t("{}"), Invalid);
        assert_eq!(t("[1]"), Invalid);
        assert_eq!(t("null"), NotMeasured);
        assert_eq!(t("\"-\""), NotMeasured);
        assert_eq!(t("\"\""), NotMeasured);
    }

    #[test]
    fn total_rule_and_mismatch() {
        let r = rec(r#"{"model":"m","llm_input_token":10,"llm_output_token":5}"#);
        assert_eq!(r.total_tokens, 15);
        let r = rec(
            r#"{"model":"m","llm_input_token":10,"llm_output_token":"x","llm_total_token":null}"#,
        );
        assert_eq!(r.total_tokens, 10);
        assert_eq!(r.invalid, 1 << OUTPUT_BIT);
        let r =
            rec(r#"{"model":"m","llm_input_token":10,"llm_output_token":5,"llm_total_token":20}"#);
        assert_eq!(r.total_tokens, 20, "the gateway's total is the one counted");
        assert!(r.total_mismatch);
        let r = rec(r#"{"model":"m","llm_input_token":10,"llm_total_token":20}"#);
        assert!(!r.total_mismatch, "only when all three are valid");
        let r = rec(r#"{"model":"m","llm_total_token":-3}"#);
        assert_eq!((r.total_tokens, r.invalid), (0, 1 << TOTAL_BIT));
    }

    #[test]
    fn labels() {
        let r = rec(r#"{"model":"m","api_key_id":null,"aim_service_id":"-"}"#);
        assert_eq!(
            (r.api_key_id.as_ref(), r.service_id.as_ref()),
            (UNKNOWN, UNKNOWN)
        );
        let r = rec(r#"{"model":"m","api_key_id":42,"aim_service_id":""}"#);
        assert_eq!(
            (r.api_key_id.as_ref(), r.service_id.as_ref()),
            (UNKNOWN, UNKNOWN)
        );
        let r = rec(r#"{"llm_input_token":1}"#);
        assert_eq!(r.model, UNKNOWN);
        // Cut to 256 bytes on a character boundary: 255 ASCII bytes + a 2-byte char.
        let long = format!("{}é{}", "a".repeat(255), "b".repeat(10));
        let r = rec(&format!("{{\"model\":\"{long}\"}}"));
        assert_eq!(r.model.len(), 255);
        let r = rec(&format!("{{\"model\":\"{}\"}}", "x".repeat(300)));
        assert_eq!(r.model.len(), 256);
    }

    #[test]
    fn escapes_and_invalid_utf8_in_values() {
        let r = rec(
            r#"{"model":"meta-llama\/Llama-3.1-8B","api_key_id":"caf\u00e8","llm_input_token":1}"#,
        );
        assert_eq!(r.model, "meta-llama/Llama-3.1-8B");
        assert_eq!(r.api_key_id, "cafè");
        // Envoy's octal escape for a byte that is not UTF-8, in a label and elsewhere.
        let r = rec(r#"{"model":"gpt\377x","user-agent":"bad\377\376","llm_input_token":4}"#);
        assert_eq!(r.model, "gpt\u{FFFD}x");
        assert_eq!(r.input_tokens, 4);
        // Replaced invalid UTF-8 (decode's job) arrives as U+FFFD and is kept.
        let r = rec("{\"model\":\"m\u{FFFD}\",\"llm_input_token\":1}");
        assert_eq!(r.model, "m\u{FFFD}");
    }

    #[test]
    fn duplicate_keys_last_wins() {
        let r = rec(r#"{"model":"a","llm_input_token":1,"model":"b","llm_input_token":2}"#);
        assert_eq!((r.model.as_ref(), r.input_tokens), ("b", 2));
    }

    #[test]
    fn status_classes() {
        let c =
            |code: &str| rec(&format!("{{\"model\":\"m\",\"response_code\":{code}}}")).status_class;
        assert_eq!(c("200"), StatusClass::C2xx);
        assert_eq!(c("301"), StatusClass::C3xx);
        assert_eq!(c("429"), StatusClass::C4xx);
        assert_eq!(c("503"), StatusClass::C5xx);
        assert_eq!(c("0"), StatusClass::Other);
        assert_eq!(c("\"404\""), StatusClass::C4xx);
        assert_eq!(c("null"), StatusClass::Other);
        assert_eq!(c("700"), StatusClass::Other);
    }

    #[test]
    fn extra_tokens() {
        let r = rec(r#"{"model":"m","llm_cached_input_token":4511,"llm_reasoning_token":"x"}"#);
        assert_eq!(r.extra_tokens[0], 4511);
        assert_eq!(r.extra_tokens[1], 0);
        assert_eq!(r.invalid, 1 << (EXTRA_BIT0 + 1));
    }

    #[test]
    fn event_time_fallbacks() {
        let r = rec(r#"{"model":"m","start_time":"2026-03-17T09:14:02.113Z"}"#);
        assert_eq!(
            r.event_time_ns(None),
            parse_rfc3339_nanos("2026-03-17T09:14:02.113Z")
        );
        let r = rec(r#"{"model":"m","start_time":"bogus","duration":5}"#);
        assert_eq!(r.event_time_ns(None), None);
    }
}
