//! Redaction of `loki.redact` fields (docs/otlp-and-loki.md) before a line leaves: every listed key's value
//! masked wherever it is — nested, spelled with escapes, in JSON held in a string, in a
//! `key=value` line, in a malformed or cut line — or, when that cannot be done with
//! certainty, the whole line withheld (it fails closed).
//!
//! Owns: [`redact`] and [`REDACTION_PLACEHOLDER`]. Must not: shape entries, read metadata or
//! send anything (that is the parent module's).

use super::lexer::{skip_ws, string_end, unescape_lenient, value_end, ValueEnd};

/// What goes to Loki instead of a line whose redaction could not be done with certainty.
pub const REDACTION_PLACEHOLDER: &str = "[line withheld: redaction of loki.redact fields failed]";

/// Replaces the value of every `"<field>": <value>` of `fields`, wherever it appears (nested,
/// or in a line that is not valid JSON: a trailing comma, a cut line), with `"[REDACTED]"`,
/// by a lexical scan of the raw text: every string followed by `:` is a key, compared with
/// the fields after decoding its escapes (`"x\u002dforwarded-for"` is `x-forwarded-for`), so
/// keys at any depth, however spelled, and every duplicate are found. A value the line ends
/// inside (an unterminated string, an unclosed container, a cut bare value) is removed to the
/// end of the line.
///
/// Returns `None` when it cannot be certain that no listed field is left: a value that is not
/// well-formed JSON (its end would be a guess), or a field name still appearing anywhere in
/// the line but the keys just masked — in the raw text or with every escape of the line
/// decoded (a string value holding the name, a key without `:`, quotes out of step). Fails
/// closed: the caller then sends a placeholder.
///
/// Every format's lines: a field given as a JSON Pointer (`/consumer/username`) masks its last
/// key wherever that key is (the same key elsewhere in the line too: over-masking is safe); a
/// string value that holds a JSON object (Higress' `ai_log`) is redacted inside and written
/// back as a string; a line that is not a JSON object is redacted as `key=value` pairs.
pub fn redact(line: &str, fields: &[String]) -> Option<String> {
    let names: Vec<String> = fields.iter().map(|f| redacted_key(f)).collect();
    let json_like = line.trim_start().starts_with(['{', '[']);
    if !json_like && crate::parse::logfmt::spans(line).next().is_some() {
        redact_pairs(line, &names)
    } else {
        // JSON, or text of no known shape: the lexical scan finds any `"key":` in it.
        redact_json(line, &names)
    }
}

/// The key a `loki.redact` entry masks: a plain key as written, a JSON Pointer's last step.
pub(super) fn redacted_key(field: &str) -> String {
    match crate::parse::format::FieldPath::parse(field) {
        crate::parse::format::FieldPath::Pointer(steps) => {
            steps.last().cloned().unwrap_or_default()
        }
        _ => field.to_string(),
    }
}

/// [`redact`] of a `key=value` line (agentgateway's text log): each listed key's value, quoted
/// or not, becomes `[REDACTED]`; `None` when a listed name is still anywhere in the line.
fn redact_pairs(line: &str, names: &[String]) -> Option<String> {
    let mut out = String::with_capacity(line.len());
    let mut rest = String::with_capacity(line.len());
    let mut copied = 0;
    for pair in crate::parse::logfmt::spans(line) {
        let key = line.get(pair.key.clone())?;
        if names.iter().any(|n| n == key) {
            out.push_str(line.get(copied..pair.value.start)?);
            out.push_str("[REDACTED]");
            rest.push_str(line.get(copied..pair.key.start)?);
            // Text glued to a closing quote (`k="a"b`) goes with the value.
            let b = line.as_bytes();
            let mut end = pair.value.end;
            while end < b.len() && b[end] != b' ' && b[end] != b'\t' {
                end += 1;
            }
            copied = end;
        }
    }
    out.push_str(line.get(copied..)?);
    rest.push_str(line.get(copied..)?);
    // Fails closed as the JSON scan does: a listed name left anywhere, as written or spelled
    // with escapes (JSON inside a value, a line that only looks like pairs).
    if names_left(&rest, names) {
        return None;
    }
    Some(out)
}

fn redact_json(line: &str, fields: &[String]) -> Option<String> {
    const MASK: &str = "\"[REDACTED]\"";
    let b = line.as_bytes();
    let mut out = String::with_capacity(line.len());
    // The line less the masked keys and values: no listed field may be left in it.
    let mut rest = String::with_capacity(line.len());
    let mut copied = 0;
    let mut i = 0;
    while let Some(off) = memchr::memchr(b'"', &b[i..]) {
        let start = i + off;
        let Some(end) = string_end(b, start) else {
            break; // an unterminated string runs to the end: no key after it
        };
        let colon = skip_ws(b, end);
        let key = &line[start + 1..end - 1];
        if b.get(colon) != Some(&b':') {
            // A string value. One with escaped quotes may hold a JSON object (Higress'
            // `ai_log`), whose keys may be spelled with escapes of their own: it is redacted
            // at its own level and, when something was masked, written back as a string.
            if key.contains("\\\"") {
                let inner = unescape_lenient(key);
                if inner.trim_start().starts_with('{') {
                    let clean = redact_json(&inner, fields)?;
                    if clean == inner {
                        i = end;
                        continue;
                    }
                    out.push_str(&line[copied..start]);
                    out.push_str(&serde_json::to_string(&clean).ok()?);
                    rest.push_str(&line[copied..start]);
                    rest.push_str("\"\"");
                    copied = end;
                }
            }
            i = end;
            continue;
        }
        if !fields.iter().any(|f| decodes_to(key, f)) {
            i = end;
            continue;
        }
        let v = skip_ws(b, colon + 1);
        // A well-formed value ends before an ASCII delimiter: on a char boundary.
        let value_end = match value_end(b, v) {
            ValueEnd::At(e) => e,
            ValueEnd::ToEnd => b.len(),
            ValueEnd::Malformed => return None,
        };
        out.push_str(&line[copied..v]);
        out.push_str(MASK);
        rest.push_str(&line[copied..start]);
        rest.push_str("\"\"");
        rest.push_str(&line[end..v]);
        copied = value_end;
        i = value_end;
    }
    out.push_str(&line[copied..]);
    rest.push_str(&line[copied..]);
    if names_left(&rest, fields) {
        return None;
    }
    Some(out)
}

/// Whether any of `names` is in `text`, as written or with the line's escapes decoded (a
/// string value holding JSON is checked at its own level, when it is redacted inside).
fn names_left(text: &str, names: &[String]) -> bool {
    if names.iter().any(|n| text.contains(n.as_str())) {
        return true;
    }
    text.contains('\\') && {
        let decoded = unescape_lenient(text);
        names.iter().any(|n| decoded.contains(n.as_str()))
    }
}

/// Whether the raw text of a JSON string (between its quotes) decodes to `field`.
fn decodes_to(raw: &str, field: &str) -> bool {
    if raw.contains('\\') {
        unescape_lenient(raw) == field
    } else {
        raw == field
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::export::loki::EntryShaper;
    use proptest::prelude::*;

    fn fields() -> Vec<String> {
        vec!["x-forwarded-for".to_string(), "authorization".to_string()]
    }

    fn r(line: &str) -> Option<String> {
        redact(line, &fields())
    }

    #[test]
    fn redaction_reaches_every_format_pointers_embedded_json_and_key_value_lines() {
        let red = |line: &str, fields: &[&str]| {
            redact(
                line,
                &fields.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
            )
        };
        // A pointer masks its last key (Kong's consumer).
        assert_eq!(
            red(
                r#"{"consumer":{"id":"c1","username":"alice"},"ai":{}}"#,
                &["/consumer/username"]
            )
            .as_deref(),
            Some(r#"{"consumer":{"id":"c1","username":"[REDACTED]"},"ai":{}}"#)
        );
        // Inside JSON held in a string (Higress' ai_log): redacted there, still a string whose
        // text is a JSON object.
        let line =
            r#"{"ai_log":"{\"model\":\"qwen\",\"consumer\":\"bob\"}","response_code":"200"}"#;
        let out = red(line, &["/ai_log/consumer"]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let inner: serde_json::Value = serde_json::from_str(v["ai_log"].as_str().unwrap()).unwrap();
        assert_eq!(
            inner,
            serde_json::json!({"model": "qwen", "consumer": "[REDACTED]"})
        );
        assert!(!out.contains("bob"), "{out}");
        // JSON held in a string with nothing listed in it is left exactly as written.
        // (`\/` would come back as `/` if it were written again.)
        let untouched = r#"{"ai_log":"{\"path\":\"a\/b\"}","x":1}"#;
        assert_eq!(
            red(untouched, &["/ai_log/consumer"]).as_deref(),
            Some(untouched)
        );
        // A string naming the key that is not an object: not sure, withheld.
        assert_eq!(red(r#"{"msg":"consumer \"bob\""}"#, &["consumer"]), None);
        // key=value lines (agentgateway): quoted or bare values.
        let line = "2026-11-26T10:04:15.902117Z\tinfo\trequest src.addr=10.0.3.44:60871 llm.request.model=m api_key_id=\"team search\" duration=1ms";
        assert_eq!(
            red(line, &["src.addr", "api_key_id"]).as_deref(),
            Some("2026-11-26T10:04:15.902117Z\tinfo\trequest src.addr=[REDACTED] llm.request.model=m api_key_id=[REDACTED] duration=1ms")
        );
        // Text glued to the closing quote goes with the value.
        assert_eq!(
            red(r#"a=1 api_key_id="SEC"RETE b=2"#, &["api_key_id"]).as_deref(),
            Some("a=1 api_key_id=[REDACTED] b=2")
        );
        // A key spelled with escapes inside JSON held in a string: found at its own level.
        assert_eq!(
            red(
                r#"{"ai_log":"{\"consum\\u0065r\":\"SECRET\"}"}"#,
                &["/ai_log/consumer"]
            )
            .as_deref(),
            Some(r#"{"ai_log":"{\"consum\\u0065r\":\"[REDACTED]\"}"}"#)
        );
        // The name left elsewhere in the line (a message): withheld.
        assert_eq!(
            red(r#"error="bad api_key_id" api_key_id=k"#, &["api_key_id"]),
            None
        );
    }

    #[test]
    fn redaction_on_valid_malformed_nested_and_cut_lines() {
        assert_eq!(
            r(r#"{"a":1,"x-forwarded-for":"10.1.2.3","b":2}"#).as_deref(),
            Some(r#"{"a":1,"x-forwarded-for":"[REDACTED]","b":2}"#)
        );
        // Trailing comma: not JSON, still redacted.
        assert_eq!(
            r(r#"{"x-forwarded-for" : "10.1.2.3",}"#).as_deref(),
            Some(r#"{"x-forwarded-for" : "[REDACTED]",}"#)
        );
        // Nested, and every value type.
        assert_eq!(
            r(r#"{"h":{"authorization":{"k":["s3cret"]}},"x-forwarded-for":123}"#).as_deref(),
            Some(r#"{"h":{"authorization":"[REDACTED]"},"x-forwarded-for":"[REDACTED]"}"#)
        );
        // Cut inside the value: removed to the end of the line.
        assert_eq!(
            r(r#"{"a":1,"x-forwarded-for":"10.1.2"#).as_deref(),
            Some(r#"{"a":1,"x-forwarded-for":"[REDACTED]""#)
        );
        // A key spelled with an escape is decoded.
        assert_eq!(
            r(r#"{"x\u002dforwarded-for":"10.1.2.3"}"#).as_deref(),
            Some(r#"{"x\u002dforwarded-for":"[REDACTED]"}"#)
        );
        // Not sure: the name elsewhere.
        assert_eq!(r(r#"{"path":"/x-forwarded-for"}"#), None);
        // Nothing listed: unchanged.
        assert_eq!(r(r#"{"a":"b"}"#).as_deref(), Some(r#"{"a":"b"}"#));
    }

    #[test]
    fn keys_spelled_with_escapes_are_redacted_at_any_depth() {
        for (line, masked) in [
            (
                r#"{"h":{"x\u002dforwarded-for":"10.9.9.9"}}"#,
                r#"{"h":{"x\u002dforwarded-for":"[REDACTED]"}}"#,
            ),
            (
                r#"{"h":[{"\u0078-forwarded-for":"10.9.9.9"}]}"#,
                r#"{"h":[{"\u0078-forwarded-for":"[REDACTED]"}]}"#,
            ),
            (
                r#"{"x\u002Dforwarded-for":"10.9.9.9","auth\u006frization" : ["10.9.9.9"]}"#,
                r#"{"x\u002Dforwarded-for":"[REDACTED]","auth\u006frization" : "[REDACTED]"}"#,
            ),
            // Duplicate keys, however spelled: every one.
            (
                r#"{"x-forwarded-for":"10.9.9.9","x\u002dforwarded-for":"10.9.9.9","x-forwarded-for":1}"#,
                r#"{"x-forwarded-for":"[REDACTED]","x\u002dforwarded-for":"[REDACTED]","x-forwarded-for":"[REDACTED]"}"#,
            ),
            // Not JSON (a trailing comma), nested and escaped.
            (
                r#"{"a":[{"\u0078\u002d\u0066orwarded-for":"10.9.9.9",},]"#,
                r#"{"a":[{"\u0078\u002d\u0066orwarded-for":"[REDACTED]",},]"#,
            ),
            // An escaped backslash is not an escape: this key is `x\u002dforwarded-for`.
            (
                r#"{"x\\u002dforwarded-for":"ok"}"#,
                r#"{"x\\u002dforwarded-for":"ok"}"#,
            ),
        ] {
            assert_eq!(r(line).as_deref(), Some(masked), "{line}");
        }
        // Fields with characters JSON escapes: `\"`, `\\`, `\/`, a surrogate pair.
        let odd: Vec<String> = ["a/b", "q\"k", "back\\slash", "\u{1F600}key"]
            .map(String::from)
            .to_vec();
        for key in [
            r#""a\/b""#,
            r#""q\"k""#,
            r#""back\\slash""#,
            r#""\ud83d\ude00key""#,
            r#""\uD83D\uDE00k\u0065y""#,
        ] {
            let line = format!(r#"{{"n":{{{key}:"10.9.9.9"}}}}"#);
            let out = redact(&line, &odd);
            assert_eq!(
                out.as_deref(),
                Some(format!(r#"{{"n":{{{key}:"[REDACTED]"}}}}"#).as_str()),
                "{line}"
            );
        }
        // Not sure where the key is: the decoded name elsewhere, or quotes out of step.
        for line in [
            r#"{"a":"x\u002dforwarded-for","b":"10.9.9.9"}"#,
            r#"{"x\u002dforwarded-for" "10.9.9.9"}"#,
            r#"abc" {"x\u002dforwarded-for":"10.9.9.9"}"#,
            r#"{"a":1,"x\u002dforwarded-for"#,
        ] {
            assert_eq!(r(line), None, "{line}");
        }
    }

    #[test]
    fn a_value_that_is_not_well_formed_json_fails_closed() {
        // Where such a value ends is a guess: the part after a comma or a space would leave.
        for line in [
            r#"{"x-forwarded-for": 10.1.1.1, 10.2.2.2}"#,
            r#"{"x-forwarded-for":10.1.1.1,10.2.2.2}"#,
            r#"{"x-forwarded-for": 10.1.1.1 10.2.2.2, "a": 1}"#,
            r#"{"x-forwarded-for": 12 34}"#,
            r#"{"x-forwarded-for": "10.1.1.1" "10.2.2.2"}"#,
            r#"{"x-forwarded-for": "10.1.1.1", 10.2.2.2"}"#,
            r#"{"x-forwarded-for": "10.1.1.1", "10.2.2.2"}"#,
            r#"{"x-forwarded-for": 10, 10.2.2.2}"#,
            // Cut lines: what follows the comma may still be part of the value.
            r#"{"x-forwarded-for": "10.1.1.1", "10.2.2.2"#,
            r#"{"x-forwarded-for": "10.1.1.1", "10.2.2.2""#,
            r#"{"x-forwarded-for": ["10.1.1.1"}, "10.2.2.2"]"#,
            r#"{"x-forwarded-for": {"a": 1]], "b": "10.2.2.2"}"#,
            r#"{"x-forwarded-for": nul, "a": "10.2.2.2"}"#,
            r#"{"x-forwarded-for":,"10.2.2.2"}"#,
        ] {
            assert_eq!(r(line), None, "{line}");
        }
        // Well-formed values of every kind are masked, whatever follows them.
        for (line, masked) in [
            (
                r#"{"x-forwarded-for": -1.5e3 , "a":1}"#,
                r#"{"x-forwarded-for": "[REDACTED]" , "a":1}"#,
            ),
            (
                r#"[{"x-forwarded-for":true},{"x-forwarded-for":null}]"#,
                r#"[{"x-forwarded-for":"[REDACTED]"},{"x-forwarded-for":"[REDACTED]"}]"#,
            ),
            (
                r#"{"x-forwarded-for":[{"a":"]"},[1,2]]}"#,
                r#"{"x-forwarded-for":"[REDACTED]"}"#,
            ),
            // Cut inside a bare value or a container: removed to the end of the line.
            (
                r#"{"x-forwarded-for": 10.1."#,
                r#"{"x-forwarded-for": "[REDACTED]""#,
            ),
            (
                r#"{"x-forwarded-for": ["10.1.1.1", 10.2"#,
                r#"{"x-forwarded-for": "[REDACTED]""#,
            ),
            (
                r#"{"x-forwarded-for":"#,
                r#"{"x-forwarded-for":"[REDACTED]""#,
            ),
        ] {
            assert_eq!(r(line).as_deref(), Some(masked), "{line}");
        }
    }

    #[test]
    fn a_line_that_cannot_be_redacted_becomes_a_placeholder_with_metadata() {
        let mut config = Config::default();
        config.loki.redact = fields();
        config.loki.structured_metadata = vec!["model".into(), "x-forwarded-for".into()];
        let mut shaper = EntryShaper::new(&config);
        // Valid JSON, but the name also appears in a value: which one is the key is not sure.
        let shaped = shaper.shape(
            r#"{"model":"m","llm_input_token":1,"note":"x-forwarded-for","x-forwarded-for":"10.9.9.9"}"#,
        );
        assert!(shaped.redaction_failed);
        assert_eq!(shaped.line, REDACTION_PLACEHOLDER);
        assert!(shaped
            .metadata
            .iter()
            .any(|m| m.name == "redaction_failed" && m.value == "true"));
        assert!(shaped.metadata.iter().all(|m| m.name != "x-forwarded-for"));
        assert!(shaped
            .metadata
            .iter()
            .any(|m| m.name == "model" && m.value == "m"));
        // A value that is not well-formed JSON too.
        let shaped = shaper
            .shape(r#"{"model":"m","llm_input_token":1,"x-forwarded-for":10.9.9.9, 10.8.8.8}"#);
        assert_eq!(shaped.line, REDACTION_PLACEHOLDER);
    }

    #[test]
    fn metadata_read_from_a_redacted_field_is_never_sent() {
        let mut config = Config::default();
        config.fields.api_key_id = Some("authorization".into());
        config.loki.redact = vec!["authorization".into()];
        config.loki.structured_metadata = vec!["model".into(), "api_key_id".into()];
        let mut shaper = EntryShaper::new(&config);
        let line = r#"{"model":"m","authorization":"Bearer sk-123","llm_input_token":1}"#;
        let shaped = shaper.shape(line);
        assert_eq!(
            shaped.line,
            r#"{"model":"m","authorization":"[REDACTED]","llm_input_token":1}"#
        );
        let names: Vec<&str> = shaped.metadata.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["model"], "api_key_id comes from a redacted field");
        assert!(shaped.metadata.iter().all(|m| !m.value.contains("sk-123")));
        // Its source is what counts, not its name: a metadata entry named like a listed field
        // but read from another one is still sent.
        let mut config = Config::default();
        config.fields.api_key_id = Some("x-api-key".into());
        config.loki.redact = vec!["api_key_id".into()];
        config.loki.structured_metadata = vec!["api_key_id".into()];
        let shaped = EntryShaper::new(&config)
            .shape(r#"{"model":"m","x-api-key":"team-a","llm_input_token":1}"#);
        assert_eq!(shaped.metadata.len(), 1);
        assert_eq!(shaped.metadata[0].value, "team-a");
        // With formats: a redact entry masks its last key wherever it is, so a pointer's step
        // (Kong's /consumer/username) or a pointer naming a plain key keeps the metadata home.
        for redact in ["username", "/consumer/username", "/api_key_id"] {
            let mut config = Config::default();
            config.loki.redact = vec![redact.into()];
            config.loki.structured_metadata = vec!["api_key_id".into()];
            let mut shaper = EntryShaper::new(&config);
            for line in [
                r#"{"consumer":{"username":"SECRETC"},"ai":{"proxy":{"usage":{"prompt_tokens":1}}}}"#,
                r#"{"gen_ai.request.model":"m","gen_ai.usage.input_tokens":1,"api_key_id":"SECRETC"}"#,
            ] {
                let shaped = shaper.shape(line);
                assert!(
                    shaped.metadata.iter().all(|m| !m.value.contains("SECRETC")),
                    "{redact}: {line}: {:?}",
                    shaped.metadata
                );
            }
        }
    }

    proptest! {
        /// Arbitrary text around a listed field: the value never leaves, whatever the line
        /// looks like and wherever Loki's cut falls.
        #[test]
        fn a_listed_fields_value_never_leaves(
            prefix in ".{0,40}",
            suffix in ".{0,40}",
            secret in "[A-Za-z0-9]{12}",
            ws in "[ \t]{0,2}",
            quoted in any::<bool>(),
            max_line in 1usize..200,
        ) {
            let value = if quoted { format!("\"{secret}\"") } else { secret.clone() };
            let line = format!("{prefix}\"x-forwarded-for\"{ws}:{ws}{value}{suffix}");
            prop_assume!(!prefix.contains(&secret) && !suffix.contains(&secret));
            let mut config = Config::default();
            config.loki.redact = fields();
            config.loki.max_line_bytes = max_line;
            let shaped = EntryShaper::new(&config).shape(&line);
            prop_assert!(!shaped.line.contains(&secret), "{:?} -> {:?}", line, shaped.line);
            for m in &shaped.metadata {
                prop_assert!(!m.value.contains(&secret));
            }
        }

        /// Generated lines, JSON or nearly: listed fields at any depth in objects and arrays,
        /// duplicated, their keys with characters randomly `\u`-escaped, their values
        /// well-formed or not (bare, a list with commas and spaces, junk after a string,
        /// unterminated, brackets that do not match), malformed tails, arbitrary text around,
        /// sometimes cut anywhere;
        /// a listed field may also be the source of structured metadata. The value never
        /// leaves, in the line or in the metadata.
        #[test]
        fn a_listed_fields_value_never_leaves_nested_escaped_or_malformed(
            doc in doc(),
            listed in listed_member(),
            wrap in prop::collection::vec(any::<bool>(), 0..4),
            at in any::<prop::sample::Index>(),
            tail in prop_oneof![3 => Just(""), 1 => prop::sample::select(TAILS)],
            prefix in prop_oneof![3 => Just(String::new()), 1 => ".{0,20}"],
            suffix in prop_oneof![3 => Just(String::new()), 1 => ".{0,20}"],
            secret in "[A-Z0-9]{12}",
            api_key_from_authorization in any::<bool>(),
            record in any::<bool>(),
            cut in prop::option::weighted(0.25, any::<prop::sample::Index>()),
            max_line in 1usize..400,
        ) {
            prop_assume!(!prefix.contains(&secret) && !suffix.contains(&secret));
            // One listed member for sure, nested in objects (`{"h":…}`) and arrays (`[…]`).
            let mut member = String::new();
            render_member(&listed, &secret, &mut member);
            for in_array in wrap {
                member = if in_array {
                    format!("\"h\":[{{{member}}}]")
                } else {
                    format!("\"h\":{{{member}}}")
                };
            }
            let Node::Obj(members) = &doc else { unreachable!() };
            let mut parts: Vec<String> = members
                .iter()
                .map(|m| {
                    let mut s = String::new();
                    render_member(m, &secret, &mut s);
                    s
                })
                .collect();
            parts.insert(at.index(parts.len() + 1), member);
            if record {
                // An LLM record, so that structured metadata is read from it.
                parts.insert(0, r#""model":"m","llm_input_token":1"#.to_string());
            }
            let mut line = format!("{prefix}{{{}}}{tail}{suffix}", parts.join(","));
            if let Some(cut) = cut {
                // A line cut before it reached the agent (the tailer's max_line_bytes).
                let mut at = cut.index(line.len() + 1);
                while !line.is_char_boundary(at) {
                    at -= 1;
                }
                line.truncate(at);
            }

            let mut config = Config::default();
            config.loki.redact = fields();
            config.loki.max_line_bytes = max_line;
            if api_key_from_authorization {
                config.fields.api_key_id = Some("authorization".into());
            }
            config.loki.structured_metadata = ["model", "api_key_id", "service_id", "x-forwarded-for"]
                .map(String::from)
                .to_vec();
            let shaped = EntryShaper::new(&config).shape(&line);
            prop_assert!(!shaped.line.contains(&secret), "{:?} -> {:?}", line, shaped.line);
            for m in &shaped.metadata {
                prop_assert!(!m.value.contains(&secret), "{:?}: {}={}", line, m.name, m.value);
            }
            // Not by withholding everything: a JSON line whose keys hold no listed name but
            // as a key is redacted, every listed key (as decoded) holding "[REDACTED]".
            let json = serde_json::from_str::<serde_json::Value>(&line).is_ok();
            if json && !line.contains("x-forwarded-for-port") {
                let out = redact(&line, &fields());
                prop_assert!(out.is_some(), "{:?} withheld", line);
                let out: serde_json::Value = serde_json::from_str(&out.unwrap()).unwrap();
                prop_assert!(all_listed_redacted(&out), "{:?} -> {}", line, out);
            }
        }
    }

    /// A generated JSON-ish value; the secret appears only as the value of [`Key::Listed`].
    #[derive(Clone, Debug)]
    enum Node {
        Obj(Vec<(Key, Node)>),
        Arr(Vec<Node>),
        Word(String),
        Num(u32),
        Lit(usize),
    }

    #[derive(Clone, Debug)]
    enum Key {
        /// A listed field (an index into `fields()`), each character `\u`-escaped where its
        /// bit in `escapes` is set; its value is the secret written as `SECRET_FORMS[form]`.
        Listed {
            field: usize,
            escapes: u64,
            upper_hex: bool,
            form: usize,
            ws: usize,
        },
        Other(usize),
    }

    /// Keys that are not listed (some close to the listed ones, some the parser reads).
    const OTHER_KEYS: &[&str] = &[
        "model",
        "llm_input_token",
        "api_key_id",
        "aim_service_id",
        "h",
        "note",
        "forwarded-for",
        "Authorization",
        "x-forwarded-for-port",
    ];
    /// How a listed field's value is written (`S` is the secret): the first `WELL_FORMED`
    /// are JSON, the others not.
    const SECRET_FORMS: &[&str] = &[
        r#""S""#,
        r#"["a", "S"]"#,
        r#"{"k": "S", "n": [1, {"m": "S"}]}"#,
        r#""a\"S""#,
        "S",
        "10.1.1.1, S",
        "10.1.1.1 S",
        r#""10.1.1.1" S"#,
        r#""10.1.1.1" "S""#,
        r#""10.1.1.1", "S""#,
        r#"{"k": "S", "n": [1, {"m": S}]}"#,
        r#""S"#,
        "[S}",
        r#"{"a": ["S"}"#,
        "-1.5e3, S",
        "true S",
    ];
    const WELL_FORMED: usize = 4;
    const TAILS: &[&str] = &[
        "",
        ",",
        ",}",
        "}",
        " x",
        "\"",
        ",\"x-forwarded-for\":",
        ", 10.9.9.9",
        "]",
    ];
    const WS: &[&str] = &["", " ", "\t", "  "];

    /// A listed key: mostly (5 in 6) with a well-formed value, so that whole lines are JSON
    /// often enough to check that they are redacted rather than withheld.
    fn listed_key() -> impl Strategy<Value = Key> {
        let form = prop_oneof![5 => 0..WELL_FORMED, 1 => WELL_FORMED..SECRET_FORMS.len()];
        (0..2usize, any::<u64>(), any::<bool>(), form, 0..WS.len()).prop_map(
            |(field, escapes, upper_hex, form, ws)| Key::Listed {
                field,
                escapes,
                upper_hex,
                form,
                ws,
            },
        )
    }

    fn key() -> impl Strategy<Value = Key> {
        prop_oneof![
            1 => listed_key(),
            3 => (0..OTHER_KEYS.len()).prop_map(Key::Other),
        ]
    }

    fn listed_member() -> impl Strategy<Value = (Key, Node)> {
        listed_key().prop_map(|key| (key, Node::Lit(0)))
    }

    /// A top-level object of up to 6 members, nested up to 4 levels.
    fn doc() -> impl Strategy<Value = Node> {
        let leaf = prop_oneof![
            "[a-z ]{0,6}".prop_map(Node::Word),
            any::<u32>().prop_map(Node::Num),
            (0..3usize).prop_map(Node::Lit),
        ];
        let value = leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec((key(), inner.clone()), 0..4).prop_map(Node::Obj),
                prop::collection::vec(inner, 0..4).prop_map(Node::Arr),
            ]
        });
        prop::collection::vec((key(), value), 0..6).prop_map(Node::Obj)
    }

    fn all_listed_redacted(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(m) => m.iter().all(|(k, v)| {
                if fields().contains(k) {
                    v == "[REDACTED]"
                } else {
                    all_listed_redacted(v)
                }
            }),
            serde_json::Value::Array(a) => a.iter().all(all_listed_redacted),
            _ => true,
        }
    }

    fn render_member((key, value): &(Key, Node), secret: &str, out: &mut String) {
        match key {
            Key::Listed {
                field,
                escapes,
                upper_hex,
                form,
                ws,
            } => {
                out.push('"');
                for (i, c) in fields()[*field].chars().enumerate() {
                    if escapes >> (i % 64) & 1 == 1 {
                        if *upper_hex {
                            out.push_str(&format!("\\u{:04X}", c as u32));
                        } else {
                            out.push_str(&format!("\\u{:04x}", c as u32));
                        }
                    } else {
                        out.push(c);
                    }
                }
                let ws = WS[*ws];
                out.push_str(&format!("\"{ws}:{ws}"));
                out.push_str(&SECRET_FORMS[*form].replace('S', secret));
            }
            Key::Other(k) => {
                out.push_str(&format!("\"{}\":", OTHER_KEYS[*k]));
                render(value, secret, out);
            }
        }
    }

    fn render(node: &Node, secret: &str, out: &mut String) {
        match node {
            Node::Obj(members) => {
                out.push('{');
                for (i, m) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    render_member(m, secret, out);
                }
                out.push('}');
            }
            Node::Arr(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    render(v, secret, out);
                }
                out.push(']');
            }
            Node::Word(w) => out.push_str(&format!("\"{w}\"")),
            Node::Num(n) => out.push_str(&n.to_string()),
            Node::Lit(l) => out.push_str(["true", "false", "null"][*l]),
        }
    }
}
