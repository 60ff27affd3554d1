//! Telling the formats apart line by line (docs/formats.md order: gen_ai, genai_v04, kong, higress,
//! then tokenmeter), and Kong's plugins: one request per plugin that reports usage.
//!
//! Owns: the detection flags, the choice of a JSON line's format, the list of a Kong line's
//! plugins. Must not: read fields (that is [`super::read`]).

use std::borrow::Cow;

use super::format::Format;
use crate::json::{JsonStr, Kind, Raw};

use super::pointer::{member, shift};
use super::read::read_record;
use super::tables::{Tables, Work};
use super::{Parsed, Record};

/// Detection flags, set while the top level is scanned.
const SEEN_GEN_AI: u8 = 1;
const SEEN_GENAI_V04: u8 = 2;

/// The detection flags a top-level key sets (docs/formats.md: gen_ai is "any key starting
/// `gen_ai.usage.` or `gen_ai.request.model`", genai_v04 "a key starting `genai_tokens_` or
/// `genai_model_name`").
#[inline]
pub(super) fn detect_key(name: &[u8]) -> u8 {
    if name.starts_with(b"gen_ai.usage.") || name.starts_with(b"gen_ai.request.model") {
        SEEN_GEN_AI
    } else if name.starts_with(b"genai_tokens_") || name.starts_with(b"genai_model_name") {
        SEEN_GENAI_V04
    } else {
        0
    }
}

/// The format of a JSON line, tried in the order of docs/formats.md: gen_ai, genai_v04, kong, higress, then
/// tokenmeter for any other object. Kong's plugins are found on the way.
pub(super) fn detect(t: &Tables, w: &mut Work, line: &str, seen: u8) -> Format {
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
pub(super) fn find_plugins(t: &Tables, w: &mut Work, line: &str) {
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
pub(super) fn next_plugin_record<'a>(
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
