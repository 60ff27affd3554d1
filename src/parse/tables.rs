//! What the parser holds: each format's mapping compiled against the wanted keys (top-level
//! keys, pointers, Kong plugin pointers, `key=value` keys), the key tables, and the per-line
//! scratch that says where each wanted key's value is in the current line.
//!
//! Owns: the compiled shapes and the scratch, and the decoding (once per line) of JSON held in
//! a top-level string. Must not: interpret a value (that is [`super::read`] and
//! [`super::values`]) or choose a format (that is [`super::detect`]).

use super::format::{Field, Format, FormatChoice, N_FIELDS};
use super::keys::KeyTable;
use crate::json::{JsonStr, Kind, Raw, Scanner};

/// A field path compiled against the parser's tables.
#[derive(Clone, Debug)]
pub(super) enum Compiled {
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
pub(super) struct CompiledMapping {
    pub(super) fields: [Vec<Compiled>; N_FIELDS],
    pub(super) extra: Vec<Vec<Compiled>>,
    pub(super) start_time_epoch_ms: bool,
    /// When every field is read from top-level keys only, at most a key and its fallback (the
    /// seed's format, `gen_ai`, `genai_v04`, most configs): the index of each field's keys and
    /// each extra type's, read straight from the line's spans (the hot path: no pointers, no
    /// [`Val`]).
    pub(super) simple: Option<SimpleForm>,
}

/// Per field, then per extra type, the top-level keys it is read from, in fallback order.
pub(super) struct SimpleForm {
    pub(super) fields: [TopKeys; N_FIELDS],
    pub(super) extra: Vec<TopKeys>,
    /// The bits of every extra type's keys: a line with none of them (most lines) has no
    /// extra counts to read.
    pub(super) extra_keys: u64,
}

/// A field's top-level keys: a key and its fallback (`gen_ai`'s model), [`NO_KEY`] where
/// there is none. Two bytes, so that reading a field is a bit test and an index.
#[derive(Clone, Copy, Debug)]
pub(super) struct TopKeys {
    pub(super) first: u8,
    pub(super) then: u8,
}

/// The `simple` form of a mapping, if it has one.
pub(super) fn simple_form(
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
    pub(super) fn get(&self, field: Field) -> &[Compiled] {
        &self.fields[field as usize]
    }
}

/// What the parser knows before any line: the formats' mappings and the keys they want.
pub(super) struct Tables {
    pub(super) choice: FormatChoice,
    /// Indexed like [`Format::ALL`].
    pub(super) mappings: Vec<CompiledMapping>,
    /// Top-level keys of every JSON format → index into `Work::tops`.
    pub(super) top_keys: KeyTable,
    /// How many top-level keys the mappings name: below [`NO_KEY`], or the last are never
    /// found.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) wanted_top_keys: usize,
    /// `ai` (Kong) and `ai_log` (Higress): what detection looks at.
    pub(super) ai: usize,
    pub(super) ai_log: usize,
    /// `key=value` keys of the logfmt mapping → index into `Work::pairs`.
    pub(super) pair_keys: KeyTable,
    pub(super) n_extra: usize,
}

/// Where a logfmt value is: a span of the line, or unescaped out of quotes.
#[derive(Clone, Debug, Default)]
pub(super) enum PairValue {
    #[default]
    Absent,
    Span(usize, usize),
    Owned(String),
}

/// Most wanted top-level keys: every format's keys, and a config's overrides and extra token
/// types, fit far below it (`Parser::new` checks). Index [`NO_KEY`] is never present.
pub(super) const TOP_KEYS: usize = 64;
pub(super) const NO_KEY: u8 = (TOP_KEYS - 1) as u8;

/// Per-line scratch, reused.
pub(super) struct Work {
    pub(super) scanner: Scanner,
    /// Where each wanted top-level key's value is in the current line, valid where its bit in
    /// `present` is set (so nothing is cleared between lines but one integer).
    pub(super) tops: Box<[Raw; TOP_KEYS]>,
    pub(super) present: u64,
    pub(super) pairs: Vec<PairValue>,
    /// Spans of the Kong plugins (`ai.<plugin>` objects holding `usage`) of the current line,
    /// and the next one to read.
    pub(super) plugins: Vec<Raw>,
    pub(super) next_plugin: usize,
    pub(super) members: Vec<Raw>,
    /// The decoded text of a top-level string that holds JSON (Higress' `ai_log`), and the
    /// key it was decoded from in the current line. Decoded once per line, however many
    /// fields point into it.
    pub(super) embedded: String,
    pub(super) embedded_for: Option<usize>,
    /// The top-level members of `embedded` when it is a JSON object (key span, value span):
    /// one scan, however many fields read it.
    pub(super) embedded_members: Vec<(std::ops::Range<usize>, bool, Raw)>,
    pub(super) embedded_is_object: bool,
}

impl Work {
    /// Wanted top-level key `i`'s value in the current line, if the line has it.
    #[inline(always)]
    pub(super) fn top(&self, i: usize) -> Option<Raw> {
        let i = i % TOP_KEYS;
        (self.present >> i & 1 == 1).then(|| self.tops[i])
    }

    /// The decoded text of top-level string `k` of `line` (decoded once per line), taken out
    /// of `self` to be handed back with [`Work::put_embedded`].
    pub(super) fn take_embedded(&mut self, line: &str, k: usize) -> String {
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
    pub(super) fn embedded_member(&self, text: &str, name: &str) -> Option<Raw> {
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

    pub(super) fn put_embedded(&mut self, text: String) {
        self.embedded = text;
    }
}
