//! A validating JSON scanner that reports only the members of the top-level object.
//!
//! Owns: the JSON grammar (RFC 8259) plus Envoy's `\NNN` octal escape, string escape decoding,
//! and the fast path described in `PERF-NOTES.md`. Must not know about access-log fields: callers
//! get `(key, value)` pairs and decide what they mean. Pure, no I/O; the only heap use is a
//! reused vector of quote positions.
//!
//! How it is fast: one pass over the line classifies every byte in 16-byte blocks and records
//! where the quotes are. When the line holds no backslash and no control byte ("clean", nearly
//! every access-log line), every quote delimits a string, so the end of a string is the next
//! recorded quote: an array read instead of a byte-by-byte search. Everything between strings
//! is still walked and validated, so truncated lines, `NaN` and trailing garbage are rejected.
//! Lines that are not clean take the slow path, which scans strings byte by byte and validates
//! escapes. Both paths share the same walker, so they cannot disagree on structure.

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

/// Why a text is not a JSON object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanError {
    /// Not valid JSON (or valid JSON that is not an object).
    Invalid,
}

/// Reusable scanner; keep one per pipeline so the quote vector is allocated once.
#[derive(Default)]
pub struct Scanner {
    quotes: Vec<u32>,
}

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
        let b = text.as_bytes();
        let mut pos = skip_ws(b, 0);
        if b.get(pos) != Some(&b'{') {
            return Err(ScanError::Invalid);
        }
        let clean = self.classify(b);
        let mut qi = 0usize; // next unread entry of `quotes` (clean lines only)
                             // Bit i of `stack` is 1 when nesting level i+1 is an object.
        let mut stack: u128 = 1;
        let mut depth: u32 = 1;
        pos += 1;
        let mut state = State::KeyOrClose;
        // The current top-level key, set when depth == 1 and a key is read.
        let mut key = JsonStr {
            raw: "",
            escaped: false,
        };

        loop {
            pos = skip_ws(b, pos);
            let c = *b.get(pos).ok_or(ScanError::Invalid)?;
            match state {
                State::KeyOrClose | State::Key => {
                    if c == b'}' && state == State::KeyOrClose {
                        pos += 1;
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                        if depth == 1 {
                            member(key, Value::Object);
                        }
                        state = State::AfterValue;
                        continue;
                    }
                    if c != b'"' {
                        return Err(ScanError::Invalid);
                    }
                    let (end, escaped) = self.string_end(b, pos, clean, &mut qi)?;
                    if depth == 1 {
                        key = JsonStr {
                            raw: &text[pos + 1..end],
                            escaped,
                        };
                    }
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
                        if depth == 1 {
                            member(key, Value::Array);
                        }
                        state = State::AfterValue;
                        continue;
                    }
                    let value = match c {
                        b'"' => {
                            let (end, escaped) = self.string_end(b, pos, clean, &mut qi)?;
                            let raw = &text[pos + 1..end];
                            pos = end + 1;
                            Value::Str(JsonStr { raw, escaped })
                        }
                        b'{' | b'[' => {
                            if depth >= MAX_DEPTH {
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
                        b'-' | b'0'..=b'9' => {
                            let end = number_end(b, pos)?;
                            let n = &text[pos..end];
                            pos = end;
                            Value::Number(n)
                        }
                        b't' => {
                            pos = literal(b, pos, b"true")?;
                            Value::Bool(true)
                        }
                        b'f' => {
                            pos = literal(b, pos, b"false")?;
                            Value::Bool(false)
                        }
                        b'n' => {
                            pos = literal(b, pos, b"null")?;
                            Value::Null
                        }
                        _ => return Err(ScanError::Invalid),
                    };
                    if depth == 1 {
                        member(key, value);
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
                                break;
                            }
                            if depth == 1 {
                                member(key, Value::Object);
                            }
                        }
                        b']' if !in_object => {
                            pos += 1;
                            depth -= 1;
                            if depth == 1 {
                                member(key, Value::Array);
                            }
                        }
                        _ => return Err(ScanError::Invalid),
                    }
                }
            }
        }
        if skip_ws(b, pos) != b.len() {
            return Err(ScanError::Invalid);
        }
        Ok(())
    }

    /// Records the quote positions of `b` and returns whether the line is clean (no backslash,
    /// no byte below 0x20), in which case every quote delimits a string.
    fn classify(&mut self, b: &[u8]) -> bool {
        self.quotes.clear();
        if b.len() > u32::MAX as usize {
            return false;
        }
        classify_blocks(b, &mut self.quotes)
    }

    /// Given `b[pos] == '"'`, returns the index of the closing quote and whether the string
    /// holds escapes.
    #[inline]
    fn string_end(
        &self,
        b: &[u8],
        pos: usize,
        clean: bool,
        qi: &mut usize,
    ) -> Result<(usize, bool), ScanError> {
        if clean {
            // Every quote seen so far was consumed as a delimiter, so `pos` is quotes[qi].
            match (self.quotes.get(*qi), self.quotes.get(*qi + 1)) {
                (Some(&open), Some(&close)) if open as usize == pos => {
                    *qi += 2;
                    Ok((close as usize, false))
                }
                _ => Err(ScanError::Invalid),
            }
        } else {
            slow_string_end(b, pos)
        }
    }
}

#[inline]
fn skip_ws(b: &[u8], mut pos: usize) -> usize {
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
#[inline]
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
    let b = raw.as_bytes();
    let mut i = 0;
    let mut run = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        out.push_str(&raw[run..i]);
        let esc = b.get(i + 1).copied().unwrap_or(b'\\');
        i += 2;
        match esc {
            b'b' => out.push('\u{8}'),
            b'f' => out.push('\u{c}'),
            b'n' => out.push('\n'),
            b'r' => out.push('\r'),
            b't' => out.push('\t'),
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
                out.push(c.unwrap_or('\u{FFFD}'));
            }
            b'0'..=b'7' => {
                i += 2;
                out.push('\u{FFFD}');
            }
            other => out.push(other as char),
        }
        run = i.min(b.len());
    }
    out.push_str(&raw[run.min(b.len())..]);
}

fn hex4(b: &[u8], i: usize) -> Option<u32> {
    let s = b.get(i..i + 4)?;
    let mut v = 0u32;
    for &c in s {
        v = v * 16 + (c as char).to_digit(16)?;
    }
    Some(v)
}

/// Pushes the position of every `"` in `b` onto `quotes`; returns false when `b` holds a
/// backslash or a byte below 0x20.
fn classify_blocks(b: &[u8], quotes: &mut Vec<u32>) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SSE2 is part of the x86_64 baseline.
        sse2::classify(b, quotes)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let mut clean = true;
        for (i, &c) in b.iter().enumerate() {
            if c == b'"' {
                quotes.push(i as u32);
            } else if c == b'\\' || c < 0x20 {
                clean = false;
            }
        }
        clean
    }
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::*;

    pub fn classify(b: &[u8], quotes: &mut Vec<u32>) -> bool {
        let mut special = 0u32;
        let mut base = 0usize;
        let mut chunks = b.chunks_exact(16);
        for chunk in &mut chunks {
            let (q, s) = block(chunk);
            special |= s;
            push_bits(q, base, quotes);
            base += 16;
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut pad = [b' '; 16];
            pad[..rest.len()].copy_from_slice(rest);
            let (q, s) = block(&pad);
            special |= s;
            push_bits(q, base, quotes);
        }
        special == 0
    }

    #[inline(always)]
    fn block(chunk: &[u8]) -> (u32, u32) {
        debug_assert!(chunk.len() >= 16);
        // SAFETY: `chunk` holds at least 16 bytes (chunks_exact or the padded array), the load
        // is unaligned, and SSE2 is always available on x86_64.
        unsafe {
            let v = _mm_loadu_si128(chunk.as_ptr() as *const __m128i);
            let q = _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8))) as u32;
            let bs = _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8))) as u32;
            // v <= 0x1f (unsigned) exactly when max(v, 0x1f) == 0x1f.
            let lim = _mm_set1_epi8(0x1f);
            let ctl = _mm_movemask_epi8(_mm_cmpeq_epi8(_mm_max_epu8(v, lim), lim)) as u32;
            (q, bs | ctl)
        }
    }

    #[inline(always)]
    fn push_bits(mut bits: u32, base: usize, quotes: &mut Vec<u32>) {
        while bits != 0 {
            quotes.push((base + bits.trailing_zeros() as usize) as u32);
            bits &= bits - 1;
        }
    }
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
