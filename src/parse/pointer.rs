//! JSON Pointers into a line (RFC 6901): member by member into objects, by index into arrays,
//! and into a string that holds a JSON object (then on in its decoded text).
//!
//! Owns: [`Val`], a value found but not yet interpreted, and the steps `member`, `element`,
//! `follow`. Must not: apply the value rules (that is [`super::read`] and [`super::values`]).

use std::borrow::Cow;

use crate::json::{JsonStr, Kind, Raw, Scanner, Value};

/// A value found in a line, not yet interpreted.
pub(super) enum Val<'a> {
    /// A JSON value in the line.
    Line(Raw),
    /// A JSON value of an object held in a string (Higress' `ai_log`), decoded.
    Embedded(Owned),
    /// A `key=value` value.
    Text(Cow<'a, str>),
}

impl Val<'_> {
    /// The value with no borrow of the text it was found in.
    pub(super) fn into_owned(self) -> Val<'static> {
        match self {
            Val::Line(raw) => Val::Line(raw),
            Val::Embedded(o) => Val::Embedded(o),
            Val::Text(t) => Val::Text(Cow::Owned(t.into_owned())),
        }
    }
}

/// A JSON value decoded out of a string.
pub(super) enum Owned {
    Str(String),
    Number(String),
    Null,
    /// A boolean, object or array: never a count, label or time.
    Other,
}

/// A value's span moved by `by` bytes (from a sub-slice to the line).
pub(super) fn shift(raw: Raw, by: usize) -> Raw {
    Raw {
        kind: raw.kind,
        start: raw.start + by,
        end: raw.end + by,
    }
}

/// The member `name` of the object at `obj` in `text` (the last, if it appears twice).
pub(super) fn member(scanner: &mut Scanner, text: &str, obj: Raw, name: &str) -> Option<Raw> {
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
pub(super) fn follow<'a>(
    scanner: &mut Scanner,
    line: &'a str,
    at: Raw,
    steps: &[String],
) -> Option<Val<'a>> {
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

pub(super) fn owned(text: &str, raw: Raw) -> Owned {
    match raw.value(text) {
        Value::Str(s) => Owned::Str(s.decode().into_owned()),
        Value::Number(n) => Owned::Number(n.to_string()),
        Value::Null => Owned::Null,
        Value::Bool(_) | Value::Object | Value::Array => Owned::Other,
    }
}
