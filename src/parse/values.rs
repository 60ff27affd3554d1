//! The value rules of docs/guarantees.md "What counts" on one JSON value: token counts (digits, at most 2^53, a number
//! with no fraction), labels (cut to [`MAX_LABEL_BYTES`]), the status class and durations,
//! with fast paths that read them straight from a value's span.
//!
//! Owns: number reading and the value rules. Must not: know keys, formats or pointers.

use std::borrow::Cow;

use super::logfmt;
use crate::json::{Kind, Raw, Value};

use super::{StatusClass, Tokens, MAX_LABEL_BYTES, MAX_TOKENS};

/// The token rules for a string value (digits, or not measured when `""`/`"-"`).
pub(super) fn str_tokens(s: &str) -> Tokens {
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
pub(super) fn raw_label(line: &str, raw: Option<Raw>) -> Option<Cow<'_, str>> {
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
pub(super) fn raw_tokens(line: &str, raw: Option<Raw>) -> Tokens {
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
pub(super) fn short_integer(line: &str, raw: Raw) -> Option<u64> {
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

pub(super) fn cut_label(s: Cow<'_, str>) -> Cow<'_, str> {
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

/// The token value rules of docs/guarantees.md "What counts".
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
pub(super) fn digits(s: &str) -> Option<u64> {
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
pub(super) fn number_tokens(n: &str) -> Tokens {
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
pub(super) fn status_class(v: Option<Value<'_>>) -> StatusClass {
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
pub(super) fn duration_ms(v: Option<Value<'_>>) -> Option<f64> {
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
