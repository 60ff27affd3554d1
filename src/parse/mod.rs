//! One logical line → borrowed [`Record`]s under the rules of SPEC §3, in whichever of the
//! access-log formats of [`format`] the line is written.
//!
//! Owns: telling the formats apart line by line (`detect`), reading a line with its format's
//! mapping (top-level keys, JSON Pointers into nested objects and into JSON held in strings,
//! `key=value` pairs), what counts as an LLM record, the token value rules, the total rule,
//! label values, status class and the record's own time fields. Pure, no I/O; in the common
//! case (top-level keys, no escapes in the wanted values) it allocates nothing: label values
//! borrow from the line. Must not count anything: that is `aggregate`'s job.
//!
//! Deliberate rules beyond SPEC §3:
//! - A key that appears twice: the last one wins (as in JavaScript's and Python's JSON).
//! - Where a field has two keys, the first that holds a value wins: for a token field a value
//!   other than null, `""` and `"-"` (an invalid first value does not fall back); for a label
//!   a string other than `""` and `"-"`; for the others any value but null.
//! - The skip reason depends on the line's shape only: a JSON object or a `key=value` line
//!   that is not read as a record is `not_llm`, anything else `not_json`.
//! - A pointer step into an array takes the element at that index (RFC 6901: `0` or digits
//!   without a leading zero); a step into a string that does not hold a JSON object, or past
//!   an array's end, finds nothing.

pub mod fields;
pub mod format;
mod keys;
pub mod logfmt;

use std::borrow::Cow;

use crate::json::{JsonStr, Kind, Raw, Scanner, Value};
use crate::timefmt::parse_rfc3339_nanos;
use fields::{Fields, MAX_EXTRA_TOKENS};
use format::{Field, FieldPath, Format, FormatChoice, Mapping, N_FIELDS};
use keys::KeyTable;

/// Largest valid token value: 2^53, the largest integer every JSON consumer holds exactly.
pub const MAX_TOKENS: u64 = 1 << 53;
/// Label values are cut to this many bytes (on a character boundary; SPEC §3): here when a
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
    /// Event time (SPEC §3): the envelope's timestamp, else the time the line was written,
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

/// The record part of the event time (SPEC §3): `start_time` + `duration`, else `start_time`;
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

/// A field path compiled against the parser's tables.
#[derive(Clone, Debug)]
enum Compiled {
    /// A top-level member: its index among the wanted top-level keys.
    Top(usize),
    /// A JSON Pointer: the top-level member it starts at, then the steps inside it.
    Pointer(usize, Box<[String]>),
    /// A pointer inside each Kong plugin's object.
    InPlugin(Box<[String]>),
    /// A `key=value` key: its index among the wanted logfmt keys.
    Pair(usize),
}

/// A format's mapping, compiled.
struct CompiledMapping {
    fields: [Vec<Compiled>; N_FIELDS],
    extra: Vec<Vec<Compiled>>,
    start_time_epoch_ms: bool,
    /// When every field is read from top-level keys only, at most a key and its fallback (the
    /// seed's format, `gen_ai`, `genai_v04`, most configs): the index of each field's keys and
    /// each extra type's, read straight from the line's spans (the hot path: no pointers, no
    /// [`Val`]).
    simple: Option<SimpleForm>,
}

/// Per field, then per extra type, the top-level keys it is read from, in fallback order.
struct SimpleForm {
    fields: [TopKeys; N_FIELDS],
    extra: Vec<TopKeys>,
    /// The bits of every extra type's keys: a line with none of them (most lines) has no
    /// extra counts to read.
    extra_keys: u64,
}

/// A field's top-level keys: a key and its fallback (`gen_ai`'s model), [`NO_KEY`] where
/// there is none. Two bytes, so that reading a field is a bit test and an index.
#[derive(Clone, Copy, Debug)]
struct TopKeys {
    first: u8,
    then: u8,
}

/// The `simple` form of a mapping, if it has one.
fn simple_form(
    fields: &[Vec<Compiled>; N_FIELDS],
    extra: &[Vec<Compiled>],
    format: Format,
) -> Option<SimpleForm> {
    let key = |k: usize| u8::try_from(k).ok().filter(|&k| k < NO_KEY);
    let tops = |paths: &[Compiled]| -> Option<TopKeys> {
        let (first, then) = match paths {
            [] => (NO_KEY, NO_KEY),
            [Compiled::Top(a)] => (key(*a)?, NO_KEY),
            [Compiled::Top(a), Compiled::Top(b)] => (key(*a)?, key(*b)?),
            _ => return None,
        };
        Some(TopKeys { first, then })
    };
    if !format.is_json() || format == Format::Kong {
        return None;
    }
    let mut out = [TopKeys {
        first: NO_KEY,
        then: NO_KEY,
    }; N_FIELDS];
    for (slot, paths) in out.iter_mut().zip(fields) {
        *slot = tops(paths)?;
    }
    let extra = extra.iter().map(|p| tops(p)).collect::<Option<Vec<_>>>()?;
    let extra_keys = extra
        .iter()
        .flat_map(|k| [k.first, k.then])
        .filter(|&k| k != NO_KEY)
        .fold(0, |bits, k| bits | 1 << k);
    Some(SimpleForm {
        fields: out,
        extra,
        extra_keys,
    })
}

impl CompiledMapping {
    fn get(&self, field: Field) -> &[Compiled] {
        &self.fields[field as usize]
    }
}

/// What the parser knows before any line: the formats' mappings and the keys they want.
struct Tables {
    choice: FormatChoice,
    /// Indexed like [`Format::ALL`].
    mappings: Vec<CompiledMapping>,
    /// Top-level keys of every JSON format → index into `Work::tops`.
    top_keys: KeyTable,
    /// How many top-level keys the mappings name: below [`NO_KEY`], or the last are never
    /// found.
    #[cfg_attr(not(test), allow(dead_code))]
    wanted_top_keys: usize,
    /// `ai` (Kong) and `ai_log` (Higress): what detection looks at.
    ai: usize,
    ai_log: usize,
    /// `key=value` keys of the logfmt mapping → index into `Work::pairs`.
    pair_keys: KeyTable,
    n_extra: usize,
}

/// Where a logfmt value is: a span of the line, or unescaped out of quotes.
#[derive(Clone, Debug, Default)]
enum PairValue {
    #[default]
    Absent,
    Span(usize, usize),
    Owned(String),
}

/// Most wanted top-level keys: every format's keys, and a config's overrides and extra token
/// types, fit far below it (`Parser::new` checks). Index [`NO_KEY`] is never present.
const TOP_KEYS: usize = 64;
const NO_KEY: u8 = (TOP_KEYS - 1) as u8;

/// Per-line scratch, reused.
struct Work {
    scanner: Scanner,
    /// Where each wanted top-level key's value is in the current line, valid where its bit in
    /// `present` is set (so nothing is cleared between lines but one integer).
    tops: Box<[Raw; TOP_KEYS]>,
    present: u64,
    pairs: Vec<PairValue>,
    /// Spans of the Kong plugins (`ai.<plugin>` objects holding `usage`) of the current line,
    /// and the next one to read.
    plugins: Vec<Raw>,
    next_plugin: usize,
    members: Vec<Raw>,
    /// The decoded text of a top-level string that holds JSON (Higress' `ai_log`), and the
    /// key it was decoded from in the current line. Decoded once per line, however many
    /// fields point into it.
    embedded: String,
    embedded_for: Option<usize>,
    /// The top-level members of `embedded` when it is a JSON object (key span, value span):
    /// one scan, however many fields read it.
    embedded_members: Vec<(std::ops::Range<usize>, bool, Raw)>,
    embedded_is_object: bool,
}

impl Work {
    /// Wanted top-level key `i`'s value in the current line, if the line has it.
    #[inline(always)]
    fn top(&self, i: usize) -> Option<Raw> {
        let i = i % TOP_KEYS;
        (self.present >> i & 1 == 1).then(|| self.tops[i])
    }

    /// The decoded text of top-level string `k` of `line` (decoded once per line), taken out
    /// of `self` to be handed back with [`Work::put_embedded`].
    fn take_embedded(&mut self, line: &str, k: usize) -> String {
        let mut text = std::mem::take(&mut self.embedded);
        if self.embedded_for != Some(k) {
            text.clear();
            let raw = self.tops[k % TOP_KEYS];
            let body = line.get(raw.start..raw.end).unwrap_or("");
            match raw.kind {
                Kind::Str { escaped: true } => crate::json::unescape_into(body, &mut text),
                _ => text.push_str(body),
            }
            self.embedded_for = Some(k);
            let members = &mut self.embedded_members;
            members.clear();
            self.embedded_is_object = self
                .scanner
                .scan(text.as_bytes(), |key, raw| {
                    members.push((key.start..key.end, key.escaped, raw))
                })
                .is_ok();
        }
        text
    }

    /// Member `name` of the embedded object (the last, if it appears twice).
    fn embedded_member(&self, text: &str, name: &str) -> Option<Raw> {
        if !self.embedded_is_object {
            return None;
        }
        self.embedded_members
            .iter()
            .rev()
            .find(|(key, escaped, _)| {
                let raw = text.get(key.clone()).unwrap_or("");
                if *escaped {
                    JsonStr { raw, escaped: true }.decode() == name
                } else {
                    raw == name
                }
            })
            .map(|(_, _, raw)| *raw)
    }

    fn put_embedded(&mut self, text: String) {
        self.embedded = text;
    }
}

/// A value found in a line, not yet interpreted.
enum Val<'a> {
    /// A JSON value in the line.
    Line(Raw),
    /// A JSON value of an object held in a string (Higress' `ai_log`), decoded.
    Embedded(Owned),
    /// A `key=value` value.
    Text(Cow<'a, str>),
}

impl Val<'_> {
    /// The value with no borrow of the text it was found in.
    fn into_owned(self) -> Val<'static> {
        match self {
            Val::Line(raw) => Val::Line(raw),
            Val::Embedded(o) => Val::Embedded(o),
            Val::Text(t) => Val::Text(Cow::Owned(t.into_owned())),
        }
    }
}

/// A JSON value decoded out of a string.
enum Owned {
    Str(String),
    Number(String),
    Null,
    /// A boolean, object or array: never a count, label or time.
    Other,
}

/// Detection flags, set while the top level is scanned.
const SEEN_GEN_AI: u8 = 1;
const SEEN_GENAI_V04: u8 = 2;

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

/// The detection flags a top-level key sets (SPEC §3: gen_ai is "any key starting
/// `gen_ai.usage.` or `gen_ai.request.model`", genai_v04 "a key starting `genai_tokens_` or
/// `genai_model_name`").
#[inline]
fn detect_key(name: &[u8]) -> u8 {
    if name.starts_with(b"gen_ai.usage.") || name.starts_with(b"gen_ai.request.model") {
        SEEN_GEN_AI
    } else if name.starts_with(b"genai_tokens_") || name.starts_with(b"genai_model_name") {
        SEEN_GENAI_V04
    } else {
        0
    }
}

/// The format of a JSON line, tried in SPEC order: gen_ai, genai_v04, kong, higress, then
/// tokenmeter for any other object. Kong's plugins are found on the way.
fn detect(t: &Tables, w: &mut Work, line: &str, seen: u8) -> Format {
    if seen & SEEN_GEN_AI != 0 {
        return Format::GenAi;
    }
    if seen & SEEN_GENAI_V04 != 0 {
        return Format::GenaiV04;
    }
    if w.top(t.ai).is_some_and(|ai| ai.kind == Kind::Object) {
        find_plugins(t, w, line);
        if !w.plugins.is_empty() {
            return Format::Kong;
        }
    }
    if let Some(ai_log) = w.top(t.ai_log) {
        if let Kind::Str { .. } = ai_log.kind {
            let text = w.take_embedded(line, t.ai_log);
            let holds_object = w.embedded_is_object;
            w.put_embedded(text);
            if holds_object {
                return Format::Higress;
            }
        }
    }
    Format::Tokenmeter
}

/// Kong's plugins: the members of the top-level `ai` object that are objects holding a
/// `usage` object.
fn find_plugins(t: &Tables, w: &mut Work, line: &str) {
    w.plugins.clear();
    let Some(ai) = w.top(t.ai).filter(|ai| ai.kind == Kind::Object) else {
        return;
    };
    w.members.clear();
    // Every member with its key; a key that appears twice: the last one wins (and only an
    // object is a plugin).
    let mut keyed: Vec<(Cow<'_, str>, Raw)> = Vec::new();
    let _ = w.scanner.scan(
        line.as_bytes().get(ai.start..ai.end).unwrap_or_default(),
        |key, raw| {
            let raw_key = line
                .get(ai.start + key.start..ai.start + key.end)
                .unwrap_or("");
            let name = JsonStr {
                raw: raw_key,
                escaped: key.escaped,
            }
            .decode();
            keyed.push((name, shift(raw, ai.start)));
        },
    );
    // Each key at its last occurrence, in the order of those occurrences (one pass from the
    // end: a line of many members costs linear time, not quadratic).
    let mut seen = std::collections::HashSet::with_capacity(keyed.len());
    let mut last: Vec<Raw> = keyed
        .iter()
        .rev()
        .filter(|(k, _)| seen.insert(k.clone()))
        .filter(|(_, r)| r.kind == Kind::Object)
        .map(|(_, r)| *r)
        .collect();
    last.reverse();
    w.members.extend(last);
    for i in 0..w.members.len() {
        let plugin = w.members[i];
        if let Some(usage) = member(&mut w.scanner, line, plugin, "usage") {
            if usage.kind == Kind::Object {
                w.plugins.push(plugin);
            }
        }
    }
}

/// The next Kong plugin of the line that makes a request (a model or a valid count).
fn next_plugin_record<'a>(
    t: &Tables,
    w: &mut Work,
    line: &'a str,
    first: bool,
) -> Option<Record<'a>> {
    while w.next_plugin < w.plugins.len() {
        let plugin = w.plugins[w.next_plugin];
        w.next_plugin += 1;
        if let Parsed::Record(r) = read_record(t, w, line, Format::Kong, Some(plugin), first) {
            return Some(r);
        }
    }
    None
}

/// A value's span moved by `by` bytes (from a sub-slice to the line).
fn shift(raw: Raw, by: usize) -> Raw {
    Raw {
        kind: raw.kind,
        start: raw.start + by,
        end: raw.end + by,
    }
}

/// The member `name` of the object at `obj` in `text` (the last, if it appears twice).
fn member(scanner: &mut Scanner, text: &str, obj: Raw, name: &str) -> Option<Raw> {
    let bytes = text.as_bytes().get(obj.start..obj.end)?;
    let mut found = None;
    scanner
        .scan(bytes, |key, raw| {
            let same = if key.escaped {
                JsonStr {
                    raw: std::str::from_utf8(key.raw).unwrap_or(""),
                    escaped: true,
                }
                .decode()
                    == name
            } else {
                key.raw == name.as_bytes()
            };
            if same {
                found = Some(shift(raw, obj.start));
            }
        })
        .ok()?;
    found
}

/// Follows pointer `steps` from the value at `at` in the line: into objects, and into a string
/// that holds a JSON object (then on in its decoded text).
fn follow<'a>(scanner: &mut Scanner, line: &'a str, at: Raw, steps: &[String]) -> Option<Val<'a>> {
    let mut cur = at;
    let mut embedded: Option<String> = None;
    for step in steps {
        let text: &str = embedded.as_deref().unwrap_or(line);
        match cur.kind {
            Kind::Object => cur = member(scanner, text, cur, step)?,
            Kind::Str { escaped } => {
                let inner = JsonStr {
                    raw: text.get(cur.start..cur.end)?,
                    escaped,
                }
                .decode()
                .into_owned();
                let whole = Raw {
                    kind: Kind::Object,
                    start: 0,
                    end: inner.len(),
                };
                cur = member(scanner, &inner, whole, step)?;
                embedded = Some(inner);
            }
            Kind::Array => {
                cur = shift(element(text.get(cur.start..cur.end)?, step)?, cur.start);
            }
            _ => return None,
        }
    }
    Some(match embedded {
        None => Val::Line(cur),
        Some(text) => Val::Embedded(owned(&text, cur)),
    })
}

/// Where `part` (a sub-slice of `whole`) starts in it.
fn cur_start(part: &str, whole: &str) -> usize {
    (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize)
}

/// The element at RFC 6901 array index `step` (`0`, or digits without a leading zero) of the
/// JSON array `array`, as a span of it. A pointer into an array is rare and never on the hot
/// path, so the array is parsed with serde_json rather than by the scanner.
fn element(array: &str, step: &str) -> Option<Raw> {
    let digits_ok = step == "0"
        || (!step.starts_with('0') && !step.is_empty() && step.bytes().all(|b| b.is_ascii_digit()));
    if !digits_ok {
        return None;
    }
    let index: usize = step.parse().ok()?;
    let items: Vec<&serde_json::value::RawValue> = serde_json::from_str(array).ok()?;
    let item = items.get(index)?.get();
    let start = cur_start(item, array);
    let end = start + item.len();
    let kind = match item.as_bytes().first()? {
        b'"' => Kind::Str {
            escaped: item.contains('\\'),
        },
        b'{' => Kind::Object,
        b'[' => Kind::Array,
        b't' => Kind::True,
        b'f' => Kind::False,
        b'n' => Kind::Null,
        _ => Kind::Number,
    };
    Some(match kind {
        // A string's span is the bytes between its quotes.
        Kind::Str { .. } => Raw {
            kind,
            start: start + 1,
            end: end.saturating_sub(1),
        },
        _ => Raw { kind, start, end },
    })
}

fn owned(text: &str, raw: Raw) -> Owned {
    match raw.value(text) {
        Value::Str(s) => Owned::Str(s.decode().into_owned()),
        Value::Number(n) => Owned::Number(n.to_string()),
        Value::Null => Owned::Null,
        Value::Bool(_) | Value::Object | Value::Array => Owned::Other,
    }
}

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
fn read_record<'a>(
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

/// A request's counts under the rules of SPEC §3: which token fields were valid or invalid,
/// the extra types, and the total rule.
struct Counts {
    input: Option<u64>,
    output: Option<u64>,
    total: u64,
    total_mismatch: bool,
    extra: [u64; MAX_EXTRA_TOKENS],
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

/// The token rules for a string value (digits, or not measured when `""`/`"-"`).
fn str_tokens(s: &str) -> Tokens {
    if s.is_empty() || s == "-" {
        Tokens::NotMeasured
    } else if s.bytes().all(|c| c.is_ascii_digit()) {
        digits(s).map_or(Tokens::Invalid, Tokens::Valid)
    } else {
        Tokens::Invalid
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
    if matches!(raw.kind, Kind::Number | Kind::Str { escaped: false }) {
        if let Some(v) = short_integer(line, raw) {
            return Tokens::Valid(v);
        }
    }
    tokens(Some(raw.value(line)))
}

/// A value's span when it is 1 to 15 ASCII digits (far below 2^53), read in one pass.
#[inline(always)]
fn short_integer(line: &str, raw: Raw) -> Option<u64> {
    let len = raw.end.wrapping_sub(raw.start);
    if (1..=8).contains(&len) {
        // The 8 bytes that end where the value ends, when the line has them (it has for any
        // value past its first 8 bytes): all the digits at once.
        if let Some(word) = raw
            .end
            .checked_sub(8)
            .and_then(|s| line.as_bytes().get(s..raw.end))
        {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(word);
            return eight_digits(u64::from_le_bytes(bytes), len);
        }
    }
    let text = line.as_bytes().get(raw.start..raw.end)?;
    if !(1..=15).contains(&text.len()) {
        return None;
    }
    let mut v = 0u64;
    let mut plain = true;
    for &c in text {
        let d = c.wrapping_sub(b'0');
        plain &= d <= 9;
        v = v.wrapping_mul(10).wrapping_add(u64::from(d));
    }
    plain.then_some(v)
}

/// The number written by the last `len` (1 to 8) bytes of `word` (read little-endian: the
/// first byte is the lowest), `None` unless they are all ASCII digits: SWAR, a few
/// multiplications instead of a loop per digit.
#[inline(always)]
fn eight_digits(word: u64, len: usize) -> Option<u64> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    // The bytes before the value are the low ones: zeroed, they read as leading zeros.
    let mask = u64::MAX.checked_shl(8 * (8 - len as u32))?;
    let digits = word & mask;
    let zeros = (b'0' as u64 * ONES) & mask;
    // Each byte in '0'..='9': its high nibble is 3, and adding 6 leaves it 3.
    let plain = digits & (0xF0 * ONES) & mask == zeros
        && (digits.wrapping_add(6 * ONES) & (0xF0 * ONES) & mask) == zeros;
    if !plain {
        return None;
    }
    let d = digits - zeros;
    // Pairs, then fours, then eight (the lowest byte is the first, most significant, digit).
    let d = d.wrapping_mul(10).wrapping_add(d >> 8) & 0x00FF_00FF_00FF_00FF;
    let d = d.wrapping_mul(100).wrapping_add(d >> 16) & 0x0000_FFFF_0000_FFFF;
    let d = d.wrapping_mul(10_000).wrapping_add(d >> 32) & 0xFFFF_FFFF;
    Some(d)
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

#[inline]
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

/// A duration: milliseconds as a number or digit string, or a string in Go's duration form
/// (`"2488ms"`, as agentgateway's JSON log writes it).
#[inline]
fn duration_ms(v: Option<Value<'_>>) -> Option<f64> {
    let (text, is_str) = match v {
        Some(Value::Number(n)) => (n, false),
        Some(Value::Str(s)) if !s.escaped => (s.raw, true),
        _ => return None,
    };
    if let Some(ms) = digits(text) {
        return Some(ms as f64); // the usual integer milliseconds, without a float parse
    }
    if is_str {
        return logfmt::duration_ms(text);
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
        // Types in name order: cache_creation_input, cached_input, reasoning.
        let r = rec(r#"{"model":"m","llm_cached_input_token":4511,"llm_reasoning_token":"x"}"#);
        assert_eq!(r.extra_tokens[..3], [0, 4511, 0]);
        assert_eq!(r.invalid, 1 << (EXTRA_BIT0 + 2));
        // Without [fields.extra_tokens], each format's own keys (configured ones, as in
        // `parser()`, would be read in every format).
        let line = r#"{"gen_ai.request.model":"m","gen_ai.usage.cache_read.input_tokens":7,"gen_ai.usage.reasoning_tokens":null,"gen_ai.usage.reasoning.output_tokens":"9"}"#;
        let Parsed::Record(r) = Parser::new(&Fields::default()).parse(line) else {
            panic!("record")
        };
        assert_eq!(
            r.extra_tokens[..3],
            [0, 7, 9],
            "reasoning falls back to its second key"
        );
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

    // --- formats: each expectation below is read off the line by hand.

    /// Every request of `line` under `fields`: (format, model, key, service, in, out, total,
    /// first of its line).
    type Row = (Format, String, String, String, u64, u64, u64, bool);

    fn requests_with(fields: &Fields, line: &str) -> Result<Vec<Row>, &'static str> {
        let mut p = Parser::new(fields);
        let row = |r: Record<'_>| -> Row {
            (
                r.format,
                r.model.into_owned(),
                r.api_key_id.into_owned(),
                r.service_id.into_owned(),
                r.input_tokens,
                r.output_tokens,
                r.total_tokens,
                r.first_of_line,
            )
        };
        let first = match p.parse(line) {
            Parsed::Record(r) => row(r),
            Parsed::NotLlm => return Err("not_llm"),
            Parsed::NotJson => return Err("not_json"),
        };
        let mut all = vec![first];
        while let Some(r) = p.next_request(line) {
            all.push(row(r));
        }
        Ok(all)
    }

    fn requests(line: &str) -> Result<Vec<Row>, &'static str> {
        requests_with(&Fields::default(), line)
    }

    fn one(f: Format, m: &str, k: &str, s: &str, i: u64, o: u64, t: u64) -> Row {
        (f, m.into(), k.into(), s.into(), i, o, t, true)
    }

    #[test]
    fn gen_ai_keys_are_read_as_gen_ai_even_beside_the_seed_keys() {
        let line = r#"{"start_time":"2025-08-30T16:51:37.894Z","response_code":200,"duration":1526,"gen_ai.request.model":"gpt-4o-mini","gen_ai.provider.name":"openai","gen_ai.usage.input_tokens":15,"gen_ai.usage.output_tokens":7,"gen_ai.usage.total_tokens":22,"model":"seed","llm_input_token":999}"#;
        assert_eq!(
            requests(line),
            Ok(vec![one(
                Format::GenAi,
                "gpt-4o-mini",
                "unknown",
                "openai",
                15,
                7,
                22
            )])
        );
        // The response model when the request model holds no value; a usage key alone makes
        // the line gen_ai.
        let line = r#"{"gen_ai.request.model":"-","gen_ai.response.model":"gpt-4o-2024-08-06","gen_ai.usage.input_tokens":"3","http.status":429}"#;
        assert_eq!(
            requests(line),
            Ok(vec![one(
                Format::GenAi,
                "gpt-4o-2024-08-06",
                "unknown",
                "unknown",
                3,
                0,
                3
            )])
        );
        let mut p = parser();
        let Parsed::Record(r) = p.parse(line) else {
            panic!("record")
        };
        assert_eq!(
            r.status_class,
            StatusClass::C4xx,
            "http.status when no response_code"
        );
    }

    #[test]
    fn genai_v04_keys() {
        let line = r#"{"genai_model_name":"llama-3","genai_backend_name":"vllm","genai_tokens_input":"10","genai_tokens_output":5,"genai_tokens_total":15,"api_key_id":"k1"}"#;
        assert_eq!(
            requests(line),
            Ok(vec![one(
                Format::GenaiV04,
                "llama-3",
                "k1",
                "vllm",
                10,
                5,
                15
            )])
        );
    }

    #[test]
    fn a_kong_line_is_one_request_per_plugin_that_reports_usage() {
        let line = r#"{"started_at":1756572697894,"response":{"status":200},"consumer":{"id":"c-1","username":"alice"},"service":{"name":"openai-svc"},"latencies":{"request":812},"ai":{"ai-request-transformer":{"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7},"meta":{"request_model":"gpt-4"}},"cache":{"meta":{"request_model":"x"}},"empty":{"usage":{"prompt_tokens":null}},"proxy":{"usage":{"prompt_token":28,"completion_token":14},"meta":{"request_model":"","response_model":"gpt-4-0613"}}}}"#;
        let mut second = one(
            Format::Kong,
            "gpt-4-0613",
            "alice",
            "openai-svc",
            28,
            14,
            42,
        );
        second.7 = false;
        assert_eq!(
            requests(line),
            Ok(vec![
                one(Format::Kong, "gpt-4", "alice", "openai-svc", 3, 4, 7),
                second
            ])
        );
        let mut p = parser();
        let Parsed::Record(r) = p.parse(line) else {
            panic!("record")
        };
        assert_eq!(
            r.event_time_ns(None),
            Some((1_756_572_697_894 + 812) * 1_000_000),
            "started_at (epoch ms) + latencies.request"
        );
        // A start time named by `fields.start_time` is still epoch milliseconds when a number
        // (Kong's way), and RFC 3339 when a string, as in every format.
        let kong = |start: &str| {
            format!(
                r#"{{"ts":{start},"ai":{{"proxy":{{"usage":{{"prompt_tokens":1}},"meta":{{"request_model":"m"}}}}}}}}"#
            )
        };
        let fields = Fields {
            start_time: Some("ts".into()),
            ..Fields::default()
        };
        let mut p = Parser::new(&fields);
        for (start, want) in [
            ("1756572697894", Some(1_756_572_697_894 * 1_000_000)),
            (
                r#""2025-08-30T16:51:37.894Z""#,
                parse_rfc3339_nanos("2025-08-30T16:51:37.894Z"),
            ),
            (r#""1756572697894""#, None),
        ] {
            let line = kong(start);
            let Parsed::Record(r) = p.parse(&line) else {
                panic!("record: {line}")
            };
            assert_eq!(r.format, Format::Kong, "{line}");
            assert_eq!(r.event_time_ns(None), want, "{line}");
        }
        // The consumer's id when it has no username; no plugin with usage: not Kong.
        let line = r#"{"consumer":{"id":"c-1"},"ai":{"proxy":{"usage":{"total_tokens":5}}}}"#;
        assert_eq!(
            requests(line),
            Ok(vec![one(
                Format::Kong,
                "unknown",
                "c-1",
                "unknown",
                0,
                0,
                5
            )])
        );
        assert_eq!(
            requests(r#"{"ai":{"proxy":{"meta":{"request_model":"m"}}}}"#),
            Err("not_llm")
        );
    }

    #[test]
    fn higress_reads_the_object_inside_ai_log() {
        let line = r#"{"start_time":"2025-08-30T16:51:37.894Z","response_code":200,"ai_log":"{\"model\":\"qwen-max\",\"input_token\":\"12\",\"output_token\":30,\"consumer\":\"bob\",\"llm_service_duration\":900}"}"#;
        assert_eq!(
            requests(line),
            Ok(vec![one(
                Format::Higress,
                "qwen-max",
                "bob",
                "unknown",
                12,
                30,
                42
            )])
        );
        let mut p = parser();
        let Parsed::Record(r) = p.parse(line) else {
            panic!("record")
        };
        assert_eq!(
            r.event_time_ns(None),
            parse_rfc3339_nanos("2025-08-30T16:51:38.794Z")
        );
        // ai_log that does not hold an object: the line is read with the seed's keys.
        assert_eq!(requests(r#"{"ai_log":"plain text"}"#), Err("not_llm"));
    }

    #[test]
    fn agentgateway_text_lines_are_read_as_logfmt() {
        let line = "2025-08-13T20:51:06.054107Z info request gateway=default/bind/3000 http.status=200 llm.provider=openai llm.request.model=gpt-3.5-turbo llm.request.tokens=39 llm.response.model=gpt-3.5-turbo-0125 llm.response.tokens=9 duration=1207ms";
        assert_eq!(
            requests(line),
            Ok(vec![one(
                Format::Logfmt,
                "gpt-3.5-turbo",
                "unknown",
                "openai",
                39,
                9,
                48
            )])
        );
        let mut p = parser();
        let Parsed::Record(r) = p.parse(line) else {
            panic!("record")
        };
        assert_eq!(r.status_class, StatusClass::C2xx);
        // The leading time is when the line was written, at the request's end: the event
        // time as it is, the duration not added to it.
        assert_eq!(
            r.event_time_ns(None),
            parse_rfc3339_nanos("2025-08-13T20:51:06.054107Z")
        );
        assert_eq!(r.duration_ms, Some(1207.0));
        // A key=value line of no format is not_llm; other text not_json.
        assert_eq!(requests("level=info msg=\"started\""), Err("not_llm"));
        assert_eq!(
            requests("llm.request.model=- llm.request.tokens=-"),
            Err("not_llm")
        );
        assert_eq!(
            requests("[2026-11-26 10:00:00.000][1][info] text"),
            Err("not_json")
        );
    }

    #[test]
    fn short_integers_are_read_as_digit_by_digit() {
        // Against the plain reading, for every length, with and without 8 bytes before the
        // value, and with each byte in turn made a non-digit (the neighbours of '0' and '9'
        // in ASCII, and bytes whose high nibble is 3).
        let reference = |t: &str| -> Option<u64> {
            (!t.is_empty() && t.len() <= 15 && t.bytes().all(|c| c.is_ascii_digit()))
                .then(|| t.parse().ok())
                .flatten()
        };
        let mut checked = 0;
        for len in 1..=15 {
            for seed in [0u64, 1, 7, 42, 99_999, 12_345_678_901, u64::MAX / 3] {
                let digits: String = (0..len)
                    .map(|i| char::from(b'0' + ((seed >> (i % 60)) % 10) as u8))
                    .collect();
                let mut values = vec![digits.clone()];
                for at in 0..len {
                    for bad in ['/', ':', ';', '?', 'a', 'é', ' '] {
                        let mut v: Vec<char> = digits.chars().collect();
                        v[at] = bad;
                        values.push(v.into_iter().collect());
                    }
                }
                for value in values {
                    for before in ["", "{\"a\":", "{\"a_much_longer_key\":"] {
                        let line = format!("{before}{value},");
                        let raw = Raw {
                            kind: Kind::Number,
                            start: before.len(),
                            end: before.len() + value.len(),
                        };
                        assert_eq!(short_integer(&line, raw), reference(&value), "{line}");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 1_000);
    }

    #[test]
    fn every_config_fits_the_key_table() {
        // The most top-level keys a config can name: every format's keys, and a key of its own
        // for every extra type it may add (a field set in the config replaces the formats'
        // keys for it, so setting fields names fewer).
        let mut extras_only = Fields::default();
        for i in 0..MAX_EXTRA_TOKENS {
            extras_only
                .extra_tokens
                .insert(format!("extra{i:02}"), format!("own_extra{i:02}"));
        }
        let every_field = Fields {
            model: Some("own_model".into()),
            input_tokens: Some("own_input".into()),
            output_tokens: Some("own_output".into()),
            total_tokens: Some("own_total".into()),
            api_key_id: Some("own_key".into()),
            service_id: Some("own_service".into()),
            status: Some("own_status".into()),
            start_time: Some("/own/start".into()),
            duration_ms: Some("own_duration".into()),
            ..extras_only.clone()
        };
        // An extra type adds at most one key.
        let most = Parser::new(&Fields::default()).tables.wanted_top_keys + MAX_EXTRA_TOKENS;
        assert!(most < usize::from(NO_KEY), "{most} top-level keys");
        assert!(Parser::new(&extras_only).tables.wanted_top_keys <= most);
        assert!(Parser::new(&every_field).tables.wanted_top_keys <= most);
    }

    #[test]
    fn json_pointers_reach_array_elements_and_the_empty_key_as_rfc_6901_says() {
        let model_at = |pointer: &str, line: &str| -> Result<String, &'static str> {
            let fields = Fields {
                model: Some(pointer.into()),
                ..Fields::default()
            };
            requests_with(&fields, line).map(|rows| rows[0].1.clone())
        };
        let choices = r#"{"choices":[{"model":"a"},{"model":"b"}],"llm_input_token":1}"#;
        assert_eq!(model_at("/choices/1/model", choices), Ok("b".into()));
        assert_eq!(model_at("/choices/0/model", choices), Ok("a".into()));
        // Past the end, a leading zero, a sign or a name: no element (the label is unknown).
        for step in ["2", "01", "-1", "+1", "x", ""] {
            let pointer = format!("/choices/{step}/model");
            assert_eq!(
                model_at(&pointer, choices),
                Ok("unknown".into()),
                "{pointer}"
            );
        }
        // A string element with escapes, arrays in arrays, whitespace between elements.
        let line = r#"{"l":[ ["x", "a\"b" ] ],"llm_input_token":1}"#;
        assert_eq!(model_at("/l/0/1", line), Ok("a\"b".into()));
        // Into an array inside a string that holds a JSON object.
        let line = r#"{"x":"{\"l\":[\"q\"]}","llm_input_token":1}"#;
        assert_eq!(model_at("/x/l/0", line), Ok("q".into()));
        // The empty reference token is the member named "" (`/` is the top-level one).
        let line = r#"{"":"top","a":{"":"inner"},"llm_input_token":1}"#;
        assert_eq!(model_at("/", line), Ok("top".into()));
        assert_eq!(model_at("/a/", line), Ok("inner".into()));
        // A count in an array.
        let fields = Fields {
            input_tokens: Some("/usage/1".into()),
            ..Fields::default()
        };
        let line = r#"{"model":"m","usage":[7, 12, "x"]}"#;
        assert_eq!(
            requests_with(&fields, line),
            Ok(vec![one(
                Format::Tokenmeter,
                "m",
                "unknown",
                "unknown",
                12,
                0,
                12
            )])
        );
    }

    #[test]
    fn agentgateway_json_lines_of_v0_9_keys_are_read_with_the_documented_fields() {
        // Without config such a line is of no format (no model key of any): not_llm, as
        // docs/formats.md says; the [fields] it gives read it.
        let line = r#"{"time":"2025-08-13T20:51:06.054107Z","http.status":200,"llm.provider":"openai","llm.request.model":"gpt-4o","llm.request.tokens":39,"llm.response.tokens":9,"duration":"1207ms"}"#;
        assert_eq!(requests(line), Err("not_llm"));
        let fields = Fields {
            model: Some("llm.request.model".into()),
            input_tokens: Some("llm.request.tokens".into()),
            output_tokens: Some("llm.response.tokens".into()),
            service_id: Some("llm.provider".into()),
            ..Fields::default()
        };
        assert_eq!(
            requests_with(&fields, line),
            Ok(vec![one(
                Format::Tokenmeter,
                "gpt-4o",
                "unknown",
                "openai",
                39,
                9,
                48
            )])
        );
    }

    #[test]
    fn a_configured_key_or_pointer_overrides_every_format_and_a_pinned_format_reads_all_lines() {
        let fields = Fields {
            api_key_id: Some("/consumer/custom_id".into()),
            ..Fields::default()
        };
        let line = r#"{"gen_ai.request.model":"m","gen_ai.usage.input_tokens":1,"consumer":{"custom_id":"team-a"}}"#;
        assert_eq!(
            requests_with(&fields, line),
            Ok(vec![one(Format::GenAi, "m", "team-a", "unknown", 1, 0, 1)])
        );
        // A pointer step may go into a string that holds an object, and `~1` is a `/`.
        let fields = Fields {
            model: Some("/meta/a~1b".into()),
            ..Fields::default()
        };
        let line = r#"{"meta":"{\"a/b\":\"inner\"}","llm_input_token":2}"#;
        assert_eq!(
            requests_with(&fields, line),
            Ok(vec![one(
                Format::Tokenmeter,
                "inner",
                "unknown",
                "unknown",
                2,
                0,
                2
            )])
        );
        let pinned = Fields {
            format: "tokenmeter".into(),
            ..Fields::default()
        };
        let gen_ai = r#"{"gen_ai.request.model":"m","gen_ai.usage.input_tokens":1}"#;
        assert_eq!(requests_with(&pinned, gen_ai), Err("not_llm"));
        let logfmt = "llm.request.model=m llm.request.tokens=1";
        assert_eq!(requests_with(&pinned, logfmt), Err("not_llm"));
        let pinned = Fields {
            format: "logfmt".into(),
            ..Fields::default()
        };
        assert_eq!(requests_with(&pinned, gen_ai), Err("not_llm"));
        assert_eq!(
            requests_with(&pinned, logfmt),
            Ok(vec![one(
                Format::Logfmt,
                "m",
                "unknown",
                "unknown",
                1,
                0,
                1
            )])
        );
    }
}
