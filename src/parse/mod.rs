//! One logical line → borrowed [`Record`]s under the rules of docs/guarantees.md "What counts", in whichever of the
//! access-log formats of [`format`] the line is written.
//!
//! Owns: telling the formats apart line by line (`detect`), reading a line with its format's
//! mapping (top-level keys, JSON Pointers into nested objects and into JSON held in strings,
//! `key=value` pairs), what counts as an LLM record, the token value rules, the total rule,
//! label values, status class and the record's own time fields. Pure, no I/O; in the common
//! case (top-level keys, no escapes in the wanted values) it allocates nothing: label values
//! borrow from the line. Must not count anything: that is `aggregate`'s job.
//!
//! Deliberate rules beyond docs/guarantees.md "What counts":
//! - A key that appears twice: the last one wins (as in JavaScript's and Python's JSON).
//! - Where a field has two keys, the first that holds a value wins: for a token field a value
//!   other than null, `""` and `"-"` (an invalid first value does not fall back); for a label
//!   a string other than `""` and `"-"`; for the others any value but null.
//! - The skip reason depends on the line's shape only: a JSON object or a `key=value` line
//!   that is not read as a record is `not_llm`, anything else `not_json`.
//! - A pointer step into an array takes the element at that index (RFC 6901: `0` or digits
//!   without a leading zero); a step into a string that does not hold a JSON object, or past
//!   an array's end, finds nothing.

/// The label value a record's label past its limit (`limits.max_values`) is folded into by
/// the store; defined here, with the record's fields, so that the owners file can refuse it as
/// a team name.
pub const OVERFLOW: &str = "__overflow__";

pub mod fields;
pub mod format;
mod keys;
pub mod logfmt;

mod detect;
mod pointer;
mod read;
mod tables;
#[cfg(test)]
mod tests;
mod values;

use std::borrow::Cow;

use crate::json::{JsonStr, Kind, Raw, Scanner};
use crate::timefmt::parse_rfc3339_nanos;
use fields::{Fields, MAX_EXTRA_TOKENS};
use format::{FieldPath, Format, FormatChoice, Mapping, N_FIELDS};
use keys::KeyTable;

use detect::{detect, detect_key, find_plugins, next_plugin_record};
use read::read_record;
use tables::{simple_form, Compiled, CompiledMapping, PairValue, Tables, Work, NO_KEY, TOP_KEYS};

pub use values::tokens;

/// Largest valid token value: 2^53, the largest integer every JSON consumer holds exactly.
pub const MAX_TOKENS: u64 = 1 << 53;
/// Label values are cut to this many bytes (on a character boundary; docs/guarantees.md "What counts"): here when a
/// record is read, in `aggregate::label_value` for any other value that becomes a label, and
/// `pricing` warns that a longer budget key never matches. Defined once, here, the earliest
/// layer that needs it.
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

/// A token field's value under docs/guarantees.md "What counts".
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
    /// The start time when it was worked out while reading (epoch milliseconds, or a time
    /// decoded out of a string): it comes before `start_time`.
    pub start_ns: Option<i64>,
    /// The time the line says it was written (agentgateway's leading timestamp, taken at the
    /// request's end): the event time as it is, no duration added, before any start time.
    pub written_ns: Option<i64>,
    /// The format the line was read with.
    pub format: Format,
    /// The first request of its line (a Kong line may hold several): lines are counted once.
    pub first_of_line: bool,
    /// Bit per token field that held an invalid value (see `INPUT_BIT` …).
    pub invalid: u32,
    /// Bit per token field that held a valid value (same bits): which counts were measured.
    pub valid: u32,
    /// All three of input, output and total were valid and total ≠ input + output.
    pub total_mismatch: bool,
}

impl Record<'_> {
    /// Event time (docs/guarantees.md "Event time"): the envelope's timestamp, else the time the line was written,
    /// else start + duration, else start.
    pub fn event_time_ns(&self, envelope_ns: Option<i64>) -> Option<i64> {
        if envelope_ns.is_some() {
            return envelope_ns;
        }
        if self.written_ns.is_some() {
            return self.written_ns;
        }
        if let Some(start) = self.start_ns {
            return Some(plus_duration(start, self.duration_ms));
        }
        start_plus_duration(self.start_time.as_ref()?, self.duration_ms)
    }
}

/// The record part of the event time (docs/guarantees.md "Event time"): `start_time` + `duration`, else `start_time`;
/// `None` when `start_time` is not an RFC 3339 time.
pub fn start_plus_duration(start_time: &JsonStr<'_>, duration_ms: Option<f64>) -> Option<i64> {
    let start = parse_rfc3339_nanos(&start_time.decode())?;
    Some(plus_duration(start, duration_ms))
}

fn plus_duration(start: i64, duration_ms: Option<f64>) -> i64 {
    match duration_ms {
        Some(ms) => start.saturating_add((ms * 1e6) as i64),
        None => start,
    }
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

/// Reusable parser for every format under the `[fields]` config.
pub struct Parser {
    tables: Tables,
    work: Work,
}

impl Parser {
    pub fn new(fields: &Fields) -> Self {
        let choice = fields.format_choice();
        let mappings = Mapping::all(fields);
        // `ai` (Kong) and `ai_log` (Higress) are what detection looks at.
        let (ai, ai_log) = (0, 1);
        let mut top_names: Vec<String> = vec!["ai".into(), "ai_log".into()];
        let mut pair_names: Vec<String> = Vec::new();
        let index_of = |names: &mut Vec<String>, name: &str| -> usize {
            match names.iter().position(|n| n == name) {
                Some(i) => i,
                None => {
                    names.push(name.to_string());
                    names.len() - 1
                }
            }
        };
        let mut compile = |m: &Mapping, path: &FieldPath| -> Option<Compiled> {
            if !m.format.is_json() {
                // A logfmt key; a pointer names the key after its `/` (no nesting in a line
                // of pairs).
                let key = match path {
                    FieldPath::Key(k) => k.clone(),
                    FieldPath::Pointer(steps) => steps.join("/"),
                    FieldPath::InPlugin(_) => return None,
                };
                return Some(Compiled::Pair(index_of(&mut pair_names, &key)));
            }
            // A key past the table's size is never found (`every_config_fits_the_key_table`
            // shows none is).
            let mut top_index = |name: &str| index_of(&mut top_names, name).min(NO_KEY.into());
            Some(match path {
                FieldPath::Key(k) => Compiled::Top(top_index(k)),
                FieldPath::Pointer(steps) => {
                    let (first, rest) = steps.split_first()?;
                    let top = top_index(first);
                    if rest.is_empty() {
                        Compiled::Top(top)
                    } else {
                        Compiled::Pointer(top, rest.into())
                    }
                }
                FieldPath::InPlugin(steps) => Compiled::InPlugin(steps.clone().into()),
            })
        };
        let mut compiled = Vec::new();
        for m in &mappings {
            let fields: [Vec<Compiled>; N_FIELDS] =
                std::array::from_fn(|i| m.fields[i].iter().filter_map(|p| compile(m, p)).collect());
            let extra: Vec<Vec<Compiled>> = m
                .extra
                .iter()
                .take(MAX_EXTRA_TOKENS)
                .map(|paths| paths.iter().filter_map(|p| compile(m, p)).collect())
                .collect();
            let simple = simple_form(&fields, &extra, m.format);
            compiled.push(CompiledMapping {
                fields,
                extra,
                start_time_epoch_ms: m.start_time_epoch_ms,
                simple,
            });
        }
        let wanted_top_keys = top_names.len();
        top_names.truncate(NO_KEY.into());
        let table = |names: &[String]| {
            KeyTable::new(
                &names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| (n.clone(), i))
                    .collect::<Vec<_>>(),
            )
        };
        Parser {
            tables: Tables {
                choice,
                mappings: compiled,
                top_keys: table(&top_names),
                wanted_top_keys,
                ai,
                ai_log,
                pair_keys: table(&pair_names),
                n_extra: fields.extra_names().len(),
            },
            work: Work {
                scanner: Scanner::new(),
                tops: Box::new(
                    [Raw {
                        kind: Kind::Null,
                        start: 0,
                        end: 0,
                    }; TOP_KEYS],
                ),
                present: 0,
                pairs: vec![PairValue::Absent; pair_names.len()],
                plugins: Vec::new(),
                next_plugin: 0,
                members: Vec::new(),
                embedded: String::new(),
                embedded_for: None,
                embedded_members: Vec::new(),
                embedded_is_object: false,
            },
        }
    }

    /// Parses one logical line; a record is its first request. A Kong line may hold more:
    /// [`Parser::next_request`] gives them.
    pub fn parse<'a>(&mut self, line: &'a str) -> Parsed<'a> {
        let t = &self.tables;
        let w = &mut self.work;
        w.plugins.clear();
        w.next_plugin = 0;
        w.embedded_for = None;
        let mut seen = 0u8;
        let mut present = 0u64;
        let auto = t.choice == FormatChoice::Auto;
        let tops = &mut w.tops;
        let scanned = w.scanner.scan(
            line.as_bytes(),
            #[inline(always)]
            |key, raw| {
                let mut put = |i: usize| {
                    let i = i % TOP_KEYS;
                    tops[i] = raw;
                    present |= 1 << i;
                };
                let decoded;
                let name: &[u8] = if key.escaped {
                    decoded = JsonStr {
                        raw: line.get(key.start..key.end).unwrap_or(""),
                        escaped: true,
                    }
                    .decode();
                    decoded.as_bytes()
                } else {
                    key.raw
                };
                let head = t.top_keys.lookup(name, &mut put);
                // Every key detection looks for starts with `gen` (the lookup has read the
                // key's first bytes already).
                if auto && head & 0xFF_FFFF == u64::from_le_bytes(*b"gen\0\0\0\0\0") {
                    seen |= detect_key(name);
                }
            },
        );
        w.present = present;
        if scanned.is_err() {
            return self.parse_text(line);
        }
        if t.choice == FormatChoice::Pinned(Format::Logfmt) {
            return Parsed::NotLlm;
        }
        let format = match t.choice {
            FormatChoice::Pinned(f) => f,
            FormatChoice::Auto => detect(t, w, line, seen),
        };
        if format == Format::Kong {
            if t.choice != FormatChoice::Auto {
                find_plugins(t, w, line);
            }
            return match next_plugin_record(t, w, line, true) {
                Some(r) => Parsed::Record(r),
                None => Parsed::NotLlm,
            };
        }
        read_record(t, w, line, format, None, true)
    }

    /// The next request of the line last given to [`Parser::parse`] (the same `line`): more
    /// than one only for a Kong line with several plugins reporting usage.
    pub fn next_request<'a>(&mut self, line: &'a str) -> Option<Record<'a>> {
        next_plugin_record(&self.tables, &mut self.work, line, false)
    }

    /// A line that is not a JSON object: a logfmt record, or skipped by its shape.
    fn parse_text<'a>(&mut self, line: &'a str) -> Parsed<'a> {
        let t = &self.tables;
        let w = &mut self.work;
        let has_pairs = logfmt::pairs(line).next().is_some();
        let read_as_logfmt = match t.choice {
            FormatChoice::Auto => has_pairs && logfmt::has_llm_key(line),
            FormatChoice::Pinned(f) => has_pairs && f == Format::Logfmt,
        };
        if read_as_logfmt {
            w.pairs.iter_mut().for_each(|p| *p = PairValue::Absent);
            let base = line.as_ptr() as usize;
            for (key, value) in logfmt::pairs(line) {
                let pairs = &mut w.pairs;
                t.pair_keys.lookup(key.as_bytes(), |i| {
                    pairs[i] = match &value {
                        Cow::Borrowed(v) => {
                            let start = v.as_ptr() as usize - base;
                            PairValue::Span(start, start + v.len())
                        }
                        Cow::Owned(v) => PairValue::Owned(v.clone()),
                    }
                });
            }
            return read_record(t, w, line, Format::Logfmt, None, true);
        }
        if has_pairs {
            Parsed::NotLlm
        } else {
            Parsed::NotJson
        }
    }
}
