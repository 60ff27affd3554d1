//! The lenient JSON lexer of redaction: where a string or a value ends, what may follow a
//! member, whether a token is a JSON number, and escapes decoded leniently.
//!
//! Why it is separate from `crate::json`: that scanner validates a whole line and reports the
//! members of its top-level object only, rejecting anything malformed. Redaction has to find
//! keys at any depth in lines that are not valid JSON (a trailing comma, a cut line, an
//! unquoted list of addresses) and decide, value by value, whether its end is certain or only
//! a guess (then the line is withheld). These are different questions about the same text,
//! so the lexer is kept beside redaction, small, and used by nothing else.
//!
//! Owns: the lexical reading of raw text for redaction. Must not: decide what is redacted.

/// JSON's string escapes decoded leniently, for finding a field name however it is spelled:
/// `\uXXXX` (surrogate pairs joined, a lone surrogate as U+FFFD), `\"`, `\\`, `\/`, `\b`, `\f`,
/// `\n`, `\r`, `\t`; of any other backslash (not valid JSON) only the backslash is dropped, so
/// nothing that follows it is hidden.
pub(super) fn unescape_lenient(s: &str) -> String {
    fn hex4(s: &str) -> Option<u32> {
        let h = s.get(..4)?;
        if !h.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(h, 16).ok()
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let mut chars = after.chars();
        let Some(c) = chars.next() else {
            rest = after;
            break;
        };
        rest = chars.as_str();
        match c {
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'u' => match hex4(rest) {
                Some(hi @ 0xD800..=0xDBFF) => {
                    let lo = rest[4..].strip_prefix("\\u").and_then(hex4);
                    match lo {
                        Some(lo @ 0xDC00..=0xDFFF) => {
                            let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                            out.push(char::from_u32(c).unwrap_or('\u{FFFD}'));
                            rest = &rest[10..];
                        }
                        _ => {
                            out.push('\u{FFFD}');
                            rest = &rest[4..];
                        }
                    }
                }
                Some(code) => {
                    out.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
                    rest = &rest[4..];
                }
                None => out.push('u'),
            },
            other => out.push(other),
        }
    }
    out.push_str(rest);
    out
}

pub(super) fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\r' | b'\n') {
        i += 1;
    }
    i
}

/// Where the value of a listed key ends.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ValueEnd {
    /// A well-formed JSON value ending here (exclusive), followed by what may follow a
    /// member (see [`member_follows`]).
    At(usize),
    /// The line ends inside the value (an unterminated string, an unclosed container, a bare
    /// value up to the end): everything from its start is removed, so nothing is guessed.
    ToEnd,
    /// Not a well-formed JSON value (`10.1.1.1, 10.2.2.2`, `[1}`, `"a" "b"`): its end would
    /// be a guess, so the line cannot be redacted with certainty.
    Malformed,
}

/// The end of the JSON value starting at `i`.
pub(super) fn value_end(b: &[u8], i: usize) -> ValueEnd {
    let end = match b.get(i) {
        None => return ValueEnd::ToEnd,
        Some(b'"') => match string_end(b, i) {
            Some(e) => e,
            None => return ValueEnd::ToEnd,
        },
        Some(b'{' | b'[') => {
            let mut open = Vec::new();
            let mut j = i;
            loop {
                let Some(&c) = b.get(j) else {
                    return ValueEnd::ToEnd;
                };
                match c {
                    b'"' => match string_end(b, j) {
                        Some(e) => {
                            j = e;
                            continue;
                        }
                        None => return ValueEnd::ToEnd,
                    },
                    b'{' => open.push(b'}'),
                    b'[' => open.push(b']'),
                    b'}' | b']' => {
                        if open.pop() != Some(c) {
                            return ValueEnd::Malformed;
                        }
                        if open.is_empty() {
                            break j + 1;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        Some(_) => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n')
            {
                j += 1;
            }
            if j == b.len() {
                return ValueEnd::ToEnd;
            }
            let token = &b[i..j];
            if !(is_json_number(token) || matches!(token, b"true" | b"false" | b"null")) {
                return ValueEnd::Malformed;
            }
            j
        }
    };
    if member_follows(b, end) {
        ValueEnd::At(end)
    } else {
        ValueEnd::Malformed
    }
}

/// Whether what follows a member's value at `i` is what JSON allows there (or a cut or a
/// trailing comma): the end of the line, `}` or `]`, or `,` then the end, `}`, `]` or a key
/// (a string followed by `:`). Anything else (`, 10.2.2.2`, `, "10.2.2.2"}`, `x`, a string
/// cut before its `:` is seen) could still be part of the value.
fn member_follows(b: &[u8], i: usize) -> bool {
    let i = skip_ws(b, i);
    match b.get(i) {
        None | Some(b'}' | b']') => true,
        Some(b',') => {
            let i = skip_ws(b, i + 1);
            match b.get(i) {
                None | Some(b'}' | b']') => true,
                Some(b'"') => string_end(b, i).is_some_and(|e| b.get(skip_ws(b, e)) == Some(&b':')),
                Some(_) => false,
            }
        }
        Some(_) => false,
    }
}

/// Whether `t` is a number under JSON's grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_json_number(t: &[u8]) -> bool {
    fn digits(t: &[u8], mut i: usize) -> usize {
        while t.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    }
    let mut i = usize::from(t.first() == Some(&b'-'));
    match t.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(t, i),
        _ => return false,
    }
    if t.get(i) == Some(&b'.') {
        let j = digits(t, i + 1);
        if j == i + 1 {
            return false;
        }
        i = j;
    }
    if matches!(t.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(t.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let j = digits(t, i);
        if j == i {
            return false;
        }
        i = j;
    }
    i == t.len()
}

/// The end (past the closing quote) of the string starting at `i`.
pub(super) fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < b.len() {
        match b[j] {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
    None
}
