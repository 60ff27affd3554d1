//! A validating JSON scanner that reports only the members of the top-level object.
//!
//! Owns: the JSON grammar (RFC 8259) plus Envoy's `\NNN` octal escape, string escape decoding,
//! and the fast path described in `PERF-NOTES.md`. Must not know about access-log fields: callers
//! get `(key, value)` pairs and decide what they mean. Pure, no I/O, no allocation.
//!
//! How it is fast: as the scan moves forward it classifies the line in 64-byte blocks, once
//! each, into a mask of quotes and a mask of "special" bytes (backslash, control). A string
//! with no special byte before its closing quote ("clean", nearly every access-log string)
//! ends at the next quote in the mask: a `trailing_zeros`, not a byte-by-byte search.
//! Everything between strings is still walked and validated, so truncated lines, `NaN` and
//! trailing garbage are rejected. A string that is not clean is scanned byte by byte with its
//! escapes validated (the slow path); the next string is back on the fast path. Both paths
//! return the same end for the same string, so they cannot disagree on structure.

use std::borrow::Cow;

/// Nesting deeper than this is rejected (serde_json uses the same limit).
const MAX_DEPTH: u32 = 128;

/// A JSON string as it appears in the text, quotes removed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonStr<'a> {
    /// The bytes between the quotes, escapes not yet decoded.
    pub raw: &'a str,
    /// Whether `raw` holds any backslash escape.
    pub escaped: bool,
}

impl<'a> JsonStr<'a> {
    /// The decoded string; borrowed unless it holds escapes.
    pub fn decode(&self) -> Cow<'a, str> {
        if self.escaped {
            let mut out = String::with_capacity(self.raw.len());
            unescape_into(self.raw, &mut out);
            Cow::Owned(out)
        } else {
            Cow::Borrowed(self.raw)
        }
    }

    /// Whether the decoded string equals `s`, without allocating in the common case.
    pub fn eq_str(&self, s: &str) -> bool {
        if self.escaped {
            self.decode() == s
        } else {
            self.raw == s
        }
    }
}

/// A top-level member's value. Containers are validated but not reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    Str(JsonStr<'a>),
    /// The number's text, already checked against the JSON number grammar.
    Number(&'a str),
    Bool(bool),
    Null,
    Object,
    Array,
}

/// A top-level key: its bytes (escapes not decoded) and where they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key<'b> {
    pub raw: &'b [u8],
    pub start: usize,
    pub end: usize,
    pub escaped: bool,
}

/// What kind of value a member holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Str { escaped: bool },
    Number,
    True,
    False,
    Null,
    Object,
    Array,
}

/// A top-level value as a span of the scanned bytes: for a string the bytes between the
/// quotes, for a number its text, empty for the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Raw {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
}

impl Raw {
    /// A value with no text span (literals and containers).
    pub const fn empty(kind: Kind) -> Self {
        Raw {
            kind,
            start: 0,
            end: 0,
        }
    }

    /// The value, sliced from the `text` that was scanned.
    #[inline]
    pub fn value<'a>(&self, text: &'a str) -> Value<'a> {
        match self.kind {
            Kind::Str { escaped } => Value::Str(JsonStr {
                raw: text.get(self.start..self.end).unwrap_or(""),
                escaped,
            }),
            Kind::Number => Value::Number(text.get(self.start..self.end).unwrap_or("0")),
            Kind::True => Value::Bool(true),
            Kind::False => Value::Bool(false),
            Kind::Null => Value::Null,
            Kind::Object => Value::Object,
            Kind::Array => Value::Array,
        }
    }
}

/// Why a text is not a JSON object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanError {
    /// Not valid JSON (or valid JSON that is not an object).
    Invalid,
}

/// The scanner. It holds no state today; it is a type so callers keep one per pipeline and
/// the scan can gain reusable buffers without changing them.
#[derive(Default)]
pub struct Scanner {}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a value.
    Value,
    /// Just after `{`: a key or `}`.
    KeyOrClose,
    /// Just after `[`: a value or `]`.
    ValueOrClose,
    /// After `,` inside an object: a key.
    Key,
    /// After a complete value: `,` or the matching close.
    AfterValue,
}

impl Scanner {
    pub fn new() -> Self {
        Self::default()
    }

    /// Scans `text` as one JSON object and calls `member` for each top-level member, in order.
    ///
    /// Members are reported as soon as their value is complete, so a caller may see members of
    /// an object that turns out to be invalid later; it must discard them when this returns
    /// an error.
    pub fn scan_object<'a, F>(&mut self, text: &'a str, mut member: F) -> Result<(), ScanError>
    where
        F: FnMut(JsonStr<'a>, Value<'a>),
    {
        self.scan(text.as_bytes(), |key, raw| {
            let key = JsonStr {
                raw: &text[key.start..key.end],
                escaped: key.escaped,
            };
            member(key, raw.value(text))
        })
    }

    /// The byte-level scan behind [`Scanner::scan_object`]: members come as spans into `b`, so
    /// a caller that wants a few keys slices only their values. `b` need not be valid UTF-8
    /// (bytes ≥ 0x80 pass through strings untouched).
    pub fn scan<F>(&mut self, b: &[u8], mut member: F) -> Result<(), ScanError>
    where
        F: FnMut(Key<'_>, Raw),
    {
        let mut pos = skip_ws(b, 0);
        if b.get(pos) != Some(&b'{') {
            return Err(ScanError::Invalid);
        }
        let mut blocks = Blocks::new(b);
        pos = skip_ws(b, pos + 1);
        if b.get(pos) == Some(&b'}') {
            pos += 1;
        } else {
            // The top level, written out straight: key, colon, value, comma. Nesting below it
            // goes to the general walker in `skip_container`.
            loop {
                if b.get(pos) != Some(&b'"') {
                    return Err(ScanError::Invalid);
                }
                let (key_end, key_escaped) = blocks.string_end(pos)?;
                let key_start = pos + 1;
                pos = skip_ws(b, key_end + 1);
                if b.get(pos) != Some(&b':') {
                    return Err(ScanError::Invalid);
                }
                pos = skip_ws(b, pos + 1);
                let c = *b.get(pos).ok_or(ScanError::Invalid)?;
                let raw = match c {
                    b'"' => {
                        let (end, escaped) = blocks.string_end(pos)?;
                        let raw = Raw {
                            kind: Kind::Str { escaped },
                            start: pos + 1,
                            end,
                        };
                        pos = end + 1;
                        raw
                    }
                    b'-' | b'0'..=b'9' => {
                        let end = number_end(b, pos)?;
                        let raw = Raw {
                            kind: Kind::Number,
                            start: pos,
                            end,
                        };
                        pos = end;
                        raw
                    }
                    b't' => {
                        pos = literal(b, pos, b"true")?;
                        Raw::empty(Kind::True)
                    }
                    b'f' => {
                        pos = literal(b, pos, b"false")?;
                        Raw::empty(Kind::False)
                    }
                    b'n' => {
                        pos = literal(b, pos, b"null")?;
                        Raw::empty(Kind::Null)
                    }
                    b'{' | b'[' => {
                        pos = skip_container(b, pos, &mut blocks)?;
                        Raw::empty(if c == b'{' { Kind::Object } else { Kind::Array })
                    }
                    _ => return Err(ScanError::Invalid),
                };
                member(
                    Key {
                        raw: &b[key_start..key_end],
                        start: key_start,
                        end: key_end,
                        escaped: key_escaped,
                    },
                    raw,
                );
                pos = skip_ws(b, pos);
                match b.get(pos) {
                    Some(b',') => pos = skip_ws(b, pos + 1),
                    Some(b'}') => {
                        pos += 1;
                        break;
                    }
                    _ => return Err(ScanError::Invalid),
                }
            }
        }
        if skip_ws(b, pos) != b.len() {
            return Err(ScanError::Invalid);
        }
        Ok(())
    }
}

/// Validates the object or array starting at `b[pos]` (a `{` or `[` one level below the top)
/// and returns the position just past its end.
fn skip_container(b: &[u8], mut pos: usize, blocks: &mut Blocks<'_>) -> Result<usize, ScanError> {
    // Bit i of `stack` is 1 when nesting level i is an object; level 0 is this container.
    let mut stack: u128 = 0;
    let mut depth: u32 = 0;
    let mut state = State::Value;
    loop {
        pos = skip_ws(b, pos);
        let c = *b.get(pos).ok_or(ScanError::Invalid)?;
        match state {
            State::KeyOrClose | State::Key => {
                if c == b'}' && state == State::KeyOrClose {
                    pos += 1;
                    depth -= 1;
                    if depth == 0 {
                        return Ok(pos);
                    }
                    state = State::AfterValue;
                    continue;
                }
                if c != b'"' {
                    return Err(ScanError::Invalid);
                }
                let (end, _) = blocks.string_end(pos)?;
                pos = skip_ws(b, end + 1);
                if b.get(pos) != Some(&b':') {
                    return Err(ScanError::Invalid);
                }
                pos += 1;
                state = State::Value;
            }
            State::Value | State::ValueOrClose => {
                if c == b']' && state == State::ValueOrClose {
                    pos += 1;
                    depth -= 1;
                    if depth == 0 {
                        return Ok(pos);
                    }
                    state = State::AfterValue;
                    continue;
                }
                match c {
                    b'"' => pos = blocks.string_end(pos)?.0 + 1,
                    b'{' | b'[' => {
                        // The top-level object is one level above this container.
                        if depth + 2 > MAX_DEPTH {
                            return Err(ScanError::Invalid);
                        }
                        let is_object = c == b'{';
                        if is_object {
                            stack |= 1u128 << depth;
                        } else {
                            stack &= !(1u128 << depth);
                        }
                        depth += 1;
                        pos += 1;
                        state = if is_object {
                            State::KeyOrClose
                        } else {
                            State::ValueOrClose
                        };
                        continue;
                    }
                    b'-' | b'0'..=b'9' => pos = number_end(b, pos)?,
                    b't' => pos = literal(b, pos, b"true")?,
                    b'f' => pos = literal(b, pos, b"false")?,
                    b'n' => pos = literal(b, pos, b"null")?,
                    _ => return Err(ScanError::Invalid),
                }
                state = State::AfterValue;
            }
            State::AfterValue => {
                let in_object = stack & (1u128 << (depth - 1)) != 0;
                match c {
                    b',' => {
                        pos += 1;
                        state = if in_object { State::Key } else { State::Value };
                    }
                    b'}' if in_object => {
                        pos += 1;
                        depth -= 1;
                        if depth == 0 {
                            return Ok(pos);
                        }
                    }
                    b']' if !in_object => {
                        pos += 1;
                        depth -= 1;
                        if depth == 0 {
                            return Ok(pos);
                        }
                    }
                    _ => return Err(ScanError::Invalid),
                }
            }
        }
    }
}

/// Classification of the line in aligned 64-byte blocks, computed lazily as the scan moves
/// forward: where the quotes are, and where a backslash or control byte is.
struct Blocks<'b> {
    b: &'b [u8],
    /// Start of the classified block; `usize::MAX` before the first.
    base: usize,
    quote: u64,
    special: u64,
}

impl<'b> Blocks<'b> {
    fn new(b: &'b [u8]) -> Self {
        Blocks {
            b,
            base: usize::MAX,
            quote: 0,
            special: 0,
        }
    }

    #[inline(always)]
    fn load(&mut self, base: usize) {
        if self.base != base {
            let (q, s) = classify64(self.b, base);
            self.base = base;
            self.quote = q;
            self.special = s;
        }
    }

    /// Given `b[pos] == '"'`, the index of the closing quote and whether the string holds
    /// escapes. A string with neither backslash nor control byte ends at the next quote: one
    /// mask lookup. Anything else is scanned byte by byte, with escapes validated.
    #[inline(always)]
    fn string_end(&mut self, pos: usize) -> Result<(usize, bool), ScanError> {
        let mut from = pos + 1;
        loop {
            if from >= self.b.len() {
                return Err(ScanError::Invalid);
            }
            let base = from & !63;
            self.load(base);
            let shift = from - base;
            let q = self.quote >> shift;
            let sp = self.special >> shift;
            if q != 0 {
                let n = q.trailing_zeros();
                if sp & ((1u64 << n) - 1) == 0 {
                    return Ok((from + n as usize, false));
                }
                return slow_string_end(self.b, pos);
            }
            if sp != 0 {
                return slow_string_end(self.b, pos);
            }
            from = base + 64;
        }
    }
}

#[inline(always)]
fn skip_ws(b: &[u8], mut pos: usize) -> usize {
    // Compact JSON has no whitespace: one comparison decides the common case.
    match b.get(pos) {
        Some(&c) if c > b' ' => return pos,
        None => return pos,
        _ => {}
    }
    while let Some(&c) = b.get(pos) {
        if c == b' ' || c == b'\t' || c == b'\n' || c == b'\r' {
            pos += 1;
        } else {
            break;
        }
    }
    pos
}

fn literal(b: &[u8], pos: usize, word: &[u8]) -> Result<usize, ScanError> {
    if b.len() >= pos + word.len() && &b[pos..pos + word.len()] == word {
        Ok(pos + word.len())
    } else {
        Err(ScanError::Invalid)
    }
}

/// End of the JSON number starting at `pos`: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
#[inline(always)]
fn number_end(b: &[u8], mut pos: usize) -> Result<usize, ScanError> {
    let digit = |b: &[u8], p: usize| b.get(p).is_some_and(u8::is_ascii_digit);
    if b.get(pos) == Some(&b'-') {
        pos += 1;
    }
    match b.get(pos) {
        Some(b'0') => pos += 1,
        Some(b'1'..=b'9') => {
            pos += 1;
            while digit(b, pos) {
                pos += 1;
            }
        }
        _ => return Err(ScanError::Invalid),
    }
    if b.get(pos) == Some(&b'.') {
        pos += 1;
        if !digit(b, pos) {
            return Err(ScanError::Invalid);
        }
        while digit(b, pos) {
            pos += 1;
        }
    }
    if matches!(b.get(pos), Some(b'e' | b'E')) {
        pos += 1;
        if matches!(b.get(pos), Some(b'+' | b'-')) {
            pos += 1;
        }
        if !digit(b, pos) {
            return Err(ScanError::Invalid);
        }
        while digit(b, pos) {
            pos += 1;
        }
    }
    Ok(pos)
}

/// Byte-by-byte string scan for lines that are not clean; validates escapes and rejects raw
/// control bytes.
fn slow_string_end(b: &[u8], pos: usize) -> Result<(usize, bool), ScanError> {
    let mut i = pos + 1;
    let mut escaped = false;
    loop {
        // Jump to the next byte that needs attention.
        let rest = b.get(i..).ok_or(ScanError::Invalid)?;
        let off = rest
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
            .ok_or(ScanError::Invalid)?;
        i += off;
        match b[i] {
            b'"' => return Ok((i, escaped)),
            b'\\' => {
                escaped = true;
                match b.get(i + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                    Some(b'u') => {
                        let hex = b.get(i + 2..i + 6).ok_or(ScanError::Invalid)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return Err(ScanError::Invalid);
                        }
                        i += 6;
                    }
                    // Envoy writes a byte that is not valid UTF-8 as `\NNN` (octal).
                    Some(b'0'..=b'3') => {
                        let oct = b.get(i + 2..i + 4).ok_or(ScanError::Invalid)?;
                        if !oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                            return Err(ScanError::Invalid);
                        }
                        i += 4;
                    }
                    _ => return Err(ScanError::Invalid),
                }
            }
            _ => return Err(ScanError::Invalid),
        }
    }
}

/// Decodes the escapes of a string already validated by the scanner. Lone surrogates and
/// Envoy's `\NNN` become U+FFFD: one bad byte must not lose a request.
pub fn unescape_into(raw: &str, out: &mut String) {
    let mut bytes = Vec::with_capacity(raw.len());
    unescape_bytes(raw.as_bytes(), &mut bytes);
    // Valid UTF-8 in, valid UTF-8 out: escapes decode to whole characters.
    out.push_str(&String::from_utf8_lossy(&bytes));
}

/// [`unescape_into`] over bytes, for text that may not be valid UTF-8 yet (a docker `log`
/// split inside a character); bytes ≥ 0x80 are copied as they are.
pub fn unescape_bytes(raw: &[u8], out: &mut Vec<u8>) {
    let b = raw;
    let mut i = 0;
    let mut run = 0;
    let mut utf8 = [0u8; 4];
    while let Some(off) = memchr::memchr(b'\\', &b[i..]) {
        i += off;
        out.extend_from_slice(&b[run..i]);
        let esc = b.get(i + 1).copied().unwrap_or(b'\\');
        i += 2;
        let c = match esc {
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = hex4(b, i);
                i += 4;
                let c = match hi {
                    Some(h @ 0xD800..=0xDBFF) => {
                        let lo = if b.get(i) == Some(&b'\\') && b.get(i + 1) == Some(&b'u') {
                            hex4(b, i + 2)
                        } else {
                            None
                        };
                        match lo {
                            Some(l @ 0xDC00..=0xDFFF) => {
                                i += 6;
                                char::from_u32(0x10000 + ((h - 0xD800) << 10) + (l - 0xDC00))
                            }
                            _ => None,
                        }
                    }
                    Some(h) => char::from_u32(h),
                    None => None,
                };
                c.unwrap_or('\u{FFFD}')
            }
            b'0'..=b'7' => {
                i += 2;
                '\u{FFFD}'
            }
            other => other as char,
        };
        out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
        i = i.min(b.len());
        run = i;
    }
    out.extend_from_slice(&b[run..]);
}

fn hex4(b: &[u8], i: usize) -> Option<u32> {
    let s = b.get(i..i + 4)?;
    let mut v = 0u32;
    for &c in s {
        v = v * 16 + (c as char).to_digit(16)?;
    }
    Some(v)
}

/// Masks of the quotes and of the special bytes (backslash, bytes below 0x20) in
/// `b[base..base + 64]`; bytes past the end count as neither.
#[inline(always)]
fn classify64(b: &[u8], base: usize) -> (u64, u64) {
    let rest = &b[base.min(b.len())..];
    if rest.len() >= 64 {
        classify_full(&rest[..64])
    } else {
        let mut pad = [b' '; 64];
        pad[..rest.len()].copy_from_slice(rest);
        classify_full(&pad)
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn classify_full(block: &[u8]) -> (u64, u64) {
    use std::arch::x86_64::*;
    assert!(block.len() >= 64);
    let mut q = 0u64;
    let mut sp = 0u64;
    // SAFETY: `block` holds at least 64 bytes (asserted), each load reads 16 of them
    // unaligned, and SSE2 is part of the x86_64 baseline.
    unsafe {
        let quote = _mm_set1_epi8(b'"' as i8);
        let backslash = _mm_set1_epi8(b'\\' as i8);
        let lim = _mm_set1_epi8(0x1f);
        for i in 0..4 {
            let v = _mm_loadu_si128(block.as_ptr().add(i * 16) as *const __m128i);
            let qm = _mm_movemask_epi8(_mm_cmpeq_epi8(v, quote)) as u16 as u64;
            let bs = _mm_movemask_epi8(_mm_cmpeq_epi8(v, backslash)) as u16 as u64;
            // v <= 0x1f (unsigned) exactly when max(v, 0x1f) == 0x1f.
            let ctl = _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_max_epu8(v, lim), lim)) as u16 as u64;
            q |= qm << (i * 16);
            sp |= (bs | ctl) << (i * 16);
        }
    }
    (q, sp)
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn classify_full(block: &[u8]) -> (u64, u64) {
    let mut q = 0u64;
    let mut sp = 0u64;
    for (i, &c) in block[..64].iter().enumerate() {
        q |= u64::from(c == b'"') << i;
        sp |= u64::from(c == b'\\' || c < 0x20) << i;
    }
    (q, sp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(text: &str) -> Result<Vec<(String, String)>, ScanError> {
        let mut out = Vec::new();
        Scanner::new().scan_object(text, |k, v| {
            let v = match v {
                Value::Str(s) => format!("s:{}", s.decode()),
                Value::Number(n) => format!("n:{n}"),
                Value::Bool(b) => format!("b:{b}"),
                Value::Null => "null".into(),
                Value::Object => "{}".into(),
                Value::Array => "[]".into(),
            };
            out.push((k.decode().into_owned(), v));
        })?;
        Ok(out)
    }

    #[test]
    fn top_level_members_only() {
        let m = members(r#"{"a":{"model":"x","b":[1,{"c":"d"}]},"model":"m","n":-1.5e3}"#).unwrap();
        assert_eq!(
            m,
            vec![
                ("a".into(), "{}".into()),
                ("model".into(), "s:m".into()),
                ("n".into(), "n:-1.5e3".into())
            ]
        );
    }

    #[test]
    fn rejects_invalid_json() {
        for bad in [
            "",
            "[]",
            "[1,2]",
            "42",
            "\"s\"",
            "{",
            "{\"a\":1",
            "{\"a\":1,}",
            "{\"a\" 1}",
            "{\"a\":NaN}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":1e}",
            "{\"a\":tru}",
            "{\"a\":1} x",
            "{\"a\":1}}",
            "{\"a\":[1,2}",
            "{\"a\":{\"b\":1]}",
            "{\"a\":\"unterminated}",
            "{\"a\":\"bad \\x escape\"}",
            "{\"a\":\"ctl \u{1} byte\"}",
            "{a:1}",
            "{\"a\":1 \"b\":2}",
            "{\"a\":\"\\u12\"}",
            "{\"a\":\"\\400\"}",
        ] {
            assert_eq!(members(bad), Err(ScanError::Invalid), "{bad:?}");
        }
    }

    #[test]
    fn accepts_edge_cases() {
        assert_eq!(members("{}").unwrap(), vec![]);
        assert_eq!(members(" \t{ } \r\n").unwrap(), vec![]);
        let m =
            members("{\"a\" : [ ] , \"b\":{ },\"c\":-0,\"d\":1E+2,\"e\":true,\"f\":null}").unwrap();
        assert_eq!(m.len(), 6);
        assert_eq!(m[4].1, "b:true");
        assert_eq!(m[3].1, "n:1E+2");
    }

    #[test]
    fn escapes_decode() {
        let m = members(r#"{"p":"a\/b","u":"\u00e8\ud83d\ude80","q":"say \"hi\"\\","o":"x\377y","lone":"\ud800z"}"#)
            .unwrap();
        assert_eq!(m[0].1, "s:a/b");
        assert_eq!(m[1].1, "s:è🚀");
        assert_eq!(m[2].1, "s:say \"hi\"\\");
        assert_eq!(m[3].1, "s:x\u{FFFD}y");
        assert_eq!(m[4].1, "s:\u{FFFD}z");
    }

    #[test]
    fn escaped_key_matches() {
        let mut found = false;
        Scanner::new()
            .scan_object(r#"{"mod\u0065l":"m"}"#, |k, _| found = k.eq_str("model"))
            .unwrap();
        assert!(found);
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(members(&deep), Err(ScanError::Invalid));
        let ok = format!("{{\"a\":{}{}}}", "[".repeat(100), "]".repeat(100));
        assert!(members(&ok).is_ok());
    }

    #[test]
    fn clean_and_slow_paths_agree() {
        // Same structure, once clean, once forced onto the slow path by an escape.
        let clean = r#"{"a":"x","b":[{"c":"d"},"e"],"model":"m"}"#;
        let slow = r#"{"a":"\u0078","b":[{"c":"d"},"e"],"model":"m"}"#;
        assert_eq!(members(clean).unwrap(), members(slow).unwrap());
    }

    #[test]
    fn long_lines_cross_many_blocks() {
        let pad = "z".repeat(1000);
        let text = format!("{{\"pad\":\"{pad}\",\"model\":\"m\"}}");
        let m = members(&text).unwrap();
        assert_eq!(m[1], ("model".into(), "s:m".into()));
    }
}
