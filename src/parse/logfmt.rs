//! `key=value` lines: agentgateway's default text log (`2025-08-13T20:51:06.054Z info request
//! gateway=… llm.request.model=gpt-4o llm.request.tokens=39 … duration=1207ms`) and any line
//! of that shape.
//!
//! Owns: splitting a line into pairs (values bare up to the next space, or double-quoted with
//! backslash escapes), the leading timestamp, and durations written as `1207ms` / `1.2s`.
//! Must not know which keys matter: `parse` asks for them.

use std::borrow::Cow;

/// Where one `key=value` pair is in its line: the key, and the value as written (quotes
/// included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairSpan {
    pub key: std::ops::Range<usize>,
    pub value: std::ops::Range<usize>,
}

/// The `key=value` pairs of a line, in order, as spans. Words without `=` (the timestamp, the
/// level, the message) are passed over; a key is a run of bytes other than space, `=` and `"`.
/// The one tokenizer every reader of `key=value` lines uses (parsing, Loki's redaction).
pub struct Spans<'a> {
    line: &'a str,
    pos: usize,
}

pub fn spans(line: &str) -> Spans<'_> {
    Spans { line, pos: 0 }
}

impl Iterator for Spans<'_> {
    type Item = PairSpan;

    fn next(&mut self) -> Option<PairSpan> {
        let b = self.line.as_bytes();
        loop {
            while b.get(self.pos).is_some_and(|c| is_space(*c)) {
                self.pos += 1;
            }
            let start = self.pos;
            if start >= b.len() {
                return None;
            }
            // A word: up to a space, or to `=` (then a value follows).
            if b[start] == b'"' {
                // A quoted word without a key (a message): skip it whole.
                self.pos = quoted_end(b, start);
                continue;
            }
            // A quote inside a word (`can"t`) is an ordinary byte.
            let mut i = start;
            while i < b.len() && !is_space(b[i]) && b[i] != b'=' {
                i += 1;
            }
            if b.get(i) != Some(&b'=') || i == start {
                // A bare word, or `=` with no key: not a pair.
                self.pos = skip_word(b, i);
                continue;
            }
            let vstart = i + 1;
            let vend = if b.get(vstart) == Some(&b'"') {
                quoted_end(b, vstart)
            } else {
                let mut end = vstart;
                while end < b.len() && !is_space(b[end]) {
                    end += 1;
                }
                end
            };
            self.pos = vend;
            return Some(PairSpan {
                key: start..i,
                value: vstart..vend,
            });
        }
    }
}

/// The `key=value` pairs of a line, in order, values unquoted.
pub fn pairs(line: &str) -> impl Iterator<Item = (&str, Cow<'_, str>)> {
    spans(line).map(move |p| {
        let key = line.get(p.key).unwrap_or("");
        let raw = line.get(p.value).unwrap_or("");
        (key, unquote(raw))
    })
}

/// The index after the string quoted at `open` (a `"`): after its closing quote, or the
/// line's end when it has none (an unclosed quote runs to the end of the line).
fn quoted_end(b: &[u8], open: usize) -> usize {
    let mut i = open + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

fn is_space(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

fn skip_word(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && !is_space(b[i]) {
        i += 1;
    }
    i
}

/// A value as written, unquoted: `"…"` loses its quotes and `\\"` and `\\\\` their backslash
/// (any other backslash is kept as written); an unclosed quote runs to the end.
fn unquote(raw: &str) -> Cow<'_, str> {
    let Some(inner) = raw.strip_prefix('"') else {
        return Cow::Borrowed(raw);
    };
    let inner = match inner.strip_suffix('"') {
        // `"a\"` ends with an escaped quote only when an odd run of backslashes precedes it.
        Some(body) if body.bytes().rev().take_while(|&c| c == b'\\').count() % 2 == 0 => body,
        _ => inner,
    };
    if !inner.contains('\\') {
        return Cow::Borrowed(inner);
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('"') => out.push('"'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    Cow::Owned(out)
}

/// Whether the line has a `key=value` pair whose key starts with `llm.` (agentgateway up to
/// v0.9) or `gen_ai.` (from v0.10): what makes a line agentgateway's.
pub fn has_llm_key(line: &str) -> bool {
    let b = line.as_bytes();
    (memchr::memmem::find(b, b"llm.").is_some() || memchr::memmem::find(b, b"gen_ai.").is_some())
        && pairs(line).any(|(k, _)| k.starts_with("llm.") || k.starts_with("gen_ai."))
}

/// The line's first word: its timestamp, when it is one (checked by the caller).
pub fn first_word(line: &str) -> &str {
    let t = line.trim_start_matches([' ', '\t']);
    let end = t.find([' ', '\t']).unwrap_or(t.len());
    &t[..end]
}

/// A duration as agentgateway writes it (Go's `time.Duration`: `1207ms`, `1.2s`, `250µs`,
/// `1m2.5s`, `3h`), in milliseconds; a plain number is milliseconds. `None` for anything else.
pub fn duration_ms(text: &str) -> Option<f64> {
    if text.is_empty() {
        return None;
    }
    if let Ok(ms) = text.parse::<f64>() {
        return (ms.is_finite() && ms >= 0.0).then_some(ms);
    }
    let mut rest = text;
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let per_ms = match &rest[..unit_end] {
            "ns" => 1e-6,
            "us" | "µs" | "μs" => 1e-3,
            "ms" => 1.0,
            "s" => 1e3,
            "m" => 60e3,
            "h" => 3600e3,
            _ => return None,
        };
        total += value * per_ms;
        rest = &rest[unit_end..];
    }
    total.is_finite().then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(line: &str) -> Vec<(String, String)> {
        pairs(line)
            .map(|(k, v)| (k.to_string(), v.into_owned()))
            .collect()
    }

    #[test]
    fn agentgateway_lines_split_into_pairs_and_bare_words_are_passed_over() {
        let line = "2025-08-13T20:51:06.054107Z info request gateway=default/bind/3000 http.status=200 llm.request.model=gpt-4o llm.request.tokens=39 duration=1207ms";
        assert_eq!(
            all(line),
            [
                ("gateway", "default/bind/3000"),
                ("http.status", "200"),
                ("llm.request.model", "gpt-4o"),
                ("llm.request.tokens", "39"),
                ("duration", "1207ms"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert!(has_llm_key(line));
        assert_eq!(first_word(line), "2025-08-13T20:51:06.054107Z");
    }

    #[test]
    fn quoted_values_keep_spaces_and_unescape_quotes() {
        assert_eq!(
            all(r#"msg="a \"b\" c\\d" k=v "a quoted = word" x="#),
            [("msg", "a \"b\" c\\d"), ("k", "v"), ("x", "")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        // An unterminated quote runs to the end of the line.
        assert_eq!(
            all(r#"k="open value"#),
            [("k".to_string(), "open value".to_string())]
        );
        assert_eq!(all("=v bare ==x"), Vec::<(String, String)>::new());
        assert!(!has_llm_key("a=b llm.x"), "a bare word is not a key");
    }

    #[test]
    fn durations_as_go_writes_them() {
        assert_eq!(duration_ms("1207ms"), Some(1207.0));
        assert_eq!(duration_ms("1.5s"), Some(1500.0));
        assert_eq!(duration_ms("250us"), Some(0.25));
        assert_eq!(duration_ms("250µs"), Some(0.25));
        assert_eq!(duration_ms("1m2.5s"), Some(62_500.0));
        assert_eq!(duration_ms("812"), Some(812.0));
        assert_eq!(duration_ms("2h"), Some(7_200_000.0));
        for bad in ["", "ms", "1x", "-3ms", "1.2.3s", "NaN"] {
            assert_eq!(duration_ms(bad), None, "{bad}");
        }
    }
}
