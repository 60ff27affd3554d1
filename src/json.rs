//! A validating JSON scanner that reports only the members of the top-level object.
//!
//! Owns: the JSON grammar (RFC 8259) plus Envoy's `\NNN` octal escape, string escape decoding,
//! and the fast path described below. Must not know about access-log fields: callers
//! get `(key, value)` pairs and decide what they mean. Pure, no I/O; the only heap use is
//! the reused vector of quote masks.
//!
//! How it is fast: one pass classifies the line in 64-byte blocks (AVX2 when the CPU has it,
//! else SSE2) into a quote mask per block, and notes whether the line holds any "special" byte
//! (backslash, control). When it holds none ("clean", nearly every access-log line), every
//! quote delimits a string, so the end of a string is the next set bit of the quote masks: a
//! shift and a `trailing_zeros`, not a search. Everything between strings is still walked and
//! validated, so truncated lines, `NaN` and trailing garbage are rejected. A line that is not
//! clean scans each string byte by byte with its escapes validated (the slow path).
//!
//! Two walkers read the top level. The compact loop takes members written the way access logs
//! write them (`"key":"value",`, `"key":123,`, no whitespace) and reports one only after the
//! byte that follows it checks out; at the first thing it does not vouch for (whitespace, a
//! container, a literal, anything invalid) the general walker takes over from that member. Only
//! the general walker ever rejects a line, so the two cannot disagree on what is valid.

use std::borrow::Cow;

/// Nesting this deep is rejected: at most 127 levels, the top-level object included, exactly
/// where serde_json's recursion limit draws the line.
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
/// quotes, for a number its text, for a literal, object or array its whole text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Raw {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
}

impl Raw {
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

/// Reusable scanner; keep one per pipeline so its quote masks are allocated once.
#[derive(Default)]
pub struct Scanner {
    quotes: Vec<u64>,
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
        let clean = index_quotes(b, &mut self.quotes);
        let mut blocks = Blocks {
            b,
            quotes: &self.quotes,
            clean,
        };
        pos = skip_ws(b, pos + 1);
        if b.get(pos) == Some(&b'}') {
            pos += 1;
        } else {
            if clean && b.get(pos) == Some(&b'"') {
                // Compact members go through the fast loop; whatever it does not vouch for
                // (whitespace, containers, literals, anything invalid) the general walk
                // takes over from that member on, so only the general walk ever rejects.
                pos = match compact_members(b, &self.quotes, pos, &mut member) {
                    Compact::Done(end) => end,
                    Compact::Resume(at) => general_members(b, at, &mut blocks, &mut member)?,
                };
            } else {
                pos = general_members(b, pos, &mut blocks, &mut member)?;
            }
        }
        if skip_ws(b, pos) != b.len() {
            return Err(ScanError::Invalid);
        }
        Ok(())
    }
}

/// How far [`compact_members`] got.
enum Compact {
    /// Every member was read and the object closed: the position just past its `}`.
    Done(usize),
    /// Members before this position were reported; the general walk continues here (at a
    /// key's opening quote, or just after a comma).
    Resume(usize),
}

/// The fast loop over the top-level members of a clean line written compactly, as access
/// logs are: `"key":"value",` or `"key":123,` then `}`. On a clean line every quote
/// delimits a string, so a string ends at the next quote bit. A member is reported only after
/// the byte following it (`,` or `}`) is checked, so the general walk never sees it twice.
#[inline(always)]
fn compact_members<F>(b: &[u8], quotes: &[u64], mut pos: usize, member: &mut F) -> Compact
where
    F: FnMut(Key<'_>, Raw),
{
    // Invariant: b[pos] == '"', a key's opening quote.
    loop {
        let key_start = pos + 1;
        let Some(key_end) = next_quote(quotes, key_start) else {
            return Compact::Resume(pos);
        };
        let (raw, after) = match b.get(key_end + 1..key_end + 3) {
            Some([b':', b'"']) => {
                let start = key_end + 3;
                let Some(end) = next_quote(quotes, start) else {
                    return Compact::Resume(pos);
                };
                let raw = Raw {
                    kind: Kind::Str { escaped: false },
                    start,
                    end,
                };
                (raw, end + 1)
            }
            Some([b':', b'-' | b'0'..=b'9']) => {
                let start = key_end + 2;
                let Ok(end) = number_end(b, start) else {
                    return Compact::Resume(pos);
                };
                let raw = Raw {
                    kind: Kind::Number,
                    start,
                    end,
                };
                (raw, end)
            }
            _ => return Compact::Resume(pos),
        };
        let last = match b.get(after) {
            Some(b',') => false,
            Some(b'}') => true,
            _ => return Compact::Resume(pos),
        };
        member(
            Key {
                raw: &b[key_start..key_end],
                start: key_start,
                end: key_end,
                escaped: false,
            },
            raw,
        );
        pos = after + 1;
        if last {
            return Compact::Done(pos);
        }
        if b.get(pos) != Some(&b'"') {
            return Compact::Resume(pos);
        }
    }
}

/// Index of the first quote at or after `from`, from a clean line's quote masks.
#[inline(always)]
fn next_quote(quotes: &[u64], from: usize) -> Option<usize> {
    let mut k = from >> 6;
    let mut q = quotes.get(k)? >> (from & 63);
    let mut at = from;
    while q == 0 {
        k += 1;
        q = *quotes.get(k)?;
        at = k << 6;
    }
    Some(at + q.trailing_zeros() as usize)
}

/// The general walk of the top-level members from `pos` (a key, whitespace allowed before
/// it) to the object's closing `}`; returns the position just past it. Nesting below the top
/// level goes to [`skip_container`].
fn general_members<F>(
    b: &[u8],
    mut pos: usize,
    blocks: &mut Blocks<'_>,
    member: &mut F,
) -> Result<usize, ScanError>
where
    F: FnMut(Key<'_>, Raw),
{
    pos = skip_ws(b, pos);
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
            b't' | b'f' | b'n' => {
                let (word, kind): (&[u8], _) = match c {
                    b't' => (b"true", Kind::True),
                    b'f' => (b"false", Kind::False),
                    _ => (b"null", Kind::Null),
                };
                let start = pos;
                pos = literal(b, pos, word)?;
                Raw {
                    kind,
                    start,
                    end: pos,
                }
            }
            b'{' | b'[' => {
                let start = pos;
                pos = skip_container(b, pos, blocks)?;
                Raw {
                    kind: if c == b'{' { Kind::Object } else { Kind::Array },
                    start,
                    end: pos,
                }
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
            Some(b'}') => return Ok(pos + 1),
            _ => return Err(ScanError::Invalid),
        }
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
                        // This opens level depth + 2 (the top-level object is level 1).
                        if depth + 2 >= MAX_DEPTH {
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

/// Where the strings of a line end. On a clean line (no backslash, no control byte: nearly
/// every access-log line) every quote delimits a string, so a string ends at the next quote
/// bit of the line's quote masks: a shift and a `trailing_zeros`. Other lines scan each string
/// byte by byte.
struct Blocks<'b> {
    b: &'b [u8],
    /// Bit i of `quotes[k]` is set when `b[64 * k + i]` is a quote (clean lines only).
    quotes: &'b [u64],
    clean: bool,
}

impl<'b> Blocks<'b> {
    /// Given `b[pos] == '"'`, the index of the closing quote and whether the string holds
    /// escapes.
    #[inline(always)]
    fn string_end(&mut self, pos: usize) -> Result<(usize, bool), ScanError> {
        if !self.clean {
            return slow_string_end(self.b, pos);
        }
        next_quote(self.quotes, pos + 1)
            .map(|end| (end, false))
            .ok_or(ScanError::Invalid)
    }
}

/// Classifies `b` in 64-byte blocks into quote masks (written into `masks`, grown to fit);
/// returns whether the line is clean (no backslash, no byte below 0x20).
fn index_quotes(b: &[u8], masks: &mut Vec<u64>) -> bool {
    masks.clear();
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { x86::index_avx2(b, masks) };
        }
        x86::index_sse2(b, masks)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let mut clean = true;
        for chunk in b.chunks(64) {
            let mut q = 0u64;
            for (i, &c) in chunk.iter().enumerate() {
                q |= u64::from(c == b'"') << i;
                clean &= c != b'\\' && c >= 0x20;
            }
            masks.push(q);
        }
        clean
    }
}

/// The 64-byte block at `b[start..]`, space-padded past the end of `b`.
#[inline(always)]
fn tail_block(b: &[u8], start: usize) -> [u8; 64] {
    let rest = &b[start..];
    let mut pad = [b' '; 64];
    pad[..rest.len()].copy_from_slice(rest);
    pad
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::tail_block;
    use std::arch::x86_64::*;

    /// SSE2 (the x86_64 baseline): four 16-byte loads per block. The special bytes are only
    /// OR-ed into a vector; one movemask at the end says whether the line is clean.
    pub(super) fn index_sse2(b: &[u8], masks: &mut Vec<u64>) -> bool {
        // SAFETY: SSE2 is part of the x86_64 baseline; every load reads 16 bytes inside a
        // 64-byte slice (`chunks_exact` or the padded tail).
        unsafe {
            let quote = _mm_set1_epi8(b'"' as i8);
            let backslash = _mm_set1_epi8(b'\\' as i8);
            let lim = _mm_set1_epi8(0x1f);
            let mut special = _mm_setzero_si128();
            let mut block = |p: *const u8, special: &mut __m128i| {
                let mut q = 0u64;
                for i in 0..4 {
                    let v = _mm_loadu_si128(p.add(i * 16) as *const __m128i);
                    q |= (_mm_movemask_epi8(_mm_cmpeq_epi8(v, quote)) as u16 as u64) << (i * 16);
                    // v <= 0x1f (unsigned) exactly when max(v, 0x1f) == 0x1f.
                    let ctl = _mm_cmpeq_epi8(_mm_max_epu8(v, lim), lim);
                    *special =
                        _mm_or_si128(*special, _mm_or_si128(ctl, _mm_cmpeq_epi8(v, backslash)));
                }
                masks.push(q);
            };
            let mut chunks = b.chunks_exact(64);
            for chunk in &mut chunks {
                block(chunk.as_ptr(), &mut special);
            }
            if !chunks.remainder().is_empty() {
                let pad = tail_block(b, b.len() - chunks.remainder().len());
                block(pad.as_ptr(), &mut special);
            }
            _mm_movemask_epi8(special) == 0
        }
    }

    /// AVX2: two 32-byte loads per block.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn index_avx2(b: &[u8], masks: &mut Vec<u64>) -> bool {
        let quote = _mm256_set1_epi8(b'"' as i8);
        let backslash = _mm256_set1_epi8(b'\\' as i8);
        let lim = _mm256_set1_epi8(0x1f);
        let mut special = _mm256_setzero_si256();
        let block = |p: *const u8, special: &mut __m256i| {
            // SAFETY: `p` points at 64 readable bytes (a full chunk or the padded tail).
            let (v0, v1) = unsafe {
                (
                    _mm256_loadu_si256(p as *const __m256i),
                    _mm256_loadu_si256(p.add(32) as *const __m256i),
                )
            };
            let q0 = _mm256_movemask_epi8(_mm256_cmpeq_epi8(v0, quote)) as u32 as u64;
            let q1 = _mm256_movemask_epi8(_mm256_cmpeq_epi8(v1, quote)) as u32 as u64;
            let s0 = _mm256_or_si256(
                _mm256_cmpeq_epi8(_mm256_max_epu8(v0, lim), lim),
                _mm256_cmpeq_epi8(v0, backslash),
            );
            let s1 = _mm256_or_si256(
                _mm256_cmpeq_epi8(_mm256_max_epu8(v1, lim), lim),
                _mm256_cmpeq_epi8(v1, backslash),
            );
            *special = _mm256_or_si256(*special, _mm256_or_si256(s0, s1));
            q0 | (q1 << 32)
        };
        // Sized once, written in place: a `push` per block costs more than the block.
        masks.resize(b.len().div_ceil(64), 0);
        let mut chunks = b.chunks_exact(64);
        let mut out = masks.iter_mut();
        for (chunk, m) in (&mut chunks).zip(&mut out) {
            *m = block(chunk.as_ptr(), &mut special);
        }
        if let Some(m) = out.next() {
            let pad = tail_block(b, b.len() - chunks.remainder().len());
            *m = block(pad.as_ptr(), &mut special);
        }
        _mm256_movemask_epi8(special) == 0
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
    fn nesting_limit_matches_serde_json() {
        // serde_json accepts 127 levels and rejects 128; the scanner must draw the same line.
        for levels in [126usize, 127, 128, 129] {
            let text = format!(
                "{{\"a\":{}{}}}",
                "[".repeat(levels - 1),
                "]".repeat(levels - 1)
            );
            let theirs = serde_json::from_str::<serde_json::Value>(&text).is_ok();
            assert_eq!(members(&text).is_ok(), theirs, "{levels} levels");
        }
    }

    #[test]
    fn out_of_range_numbers_are_valid_json() {
        // RFC 8259 puts no limit on a number's size; serde_json refuses what f64 cannot hold,
        // the scanner accepts it (and `parse` calls it an invalid token count).
        assert!(members(r#"{"a":1e400,"b":-1e99999}"#).is_ok());
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
