//! Property tests of decode + parse:
//! - cutting a line into CRI (or docker) partials at arbitrary byte positions gives the same
//!   record as the whole line;
//! - arbitrary bytes never panic and always end in a counted result;
//! - the scanner accepts exactly the JSON objects `serde_json` accepts (apart from the
//!   documented leniencies: `\NNN`, lone surrogates, numbers beyond f64) and reads the same top-level values, over real lines mutated at
//!   random, so the fast path can never guess;
//! - with formats told apart line by line, a line in the seed's format reads exactly as with
//!   `format = "tokenmeter"`, and a line holding two formats' keys, in any order, is read by the
//!   first of them in the documented order.

use proptest::prelude::*;
use tokenmeter::config::Fields;
use tokenmeter::decode::{Decoded, Decoder};
use tokenmeter::json::{Scanner, Value};
use tokenmeter::parse::format::Format;
use tokenmeter::parse::{Parsed, Parser};

fn fixture_lines() -> Vec<String> {
    let text = include_str!("../fixtures/envoy-ai-access.jsonl");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    // A few of our own: escapes, nesting, non-ASCII, numbers in every form.
    lines.extend(
        [
            r#"{"model":"meta-llama\/L\u00e8","llm_input_token":"12","x":{"model":"n","a":[1,{"b":"\"q\""}]},"llm_output_token":1e3}"#,
            r#"{ "model" : "m" , "llm_input_token" : 5 , "api_key_id" : "ké" }"#,
            r#"{"model":"m","user-agent":"ua \377 bad","llm_total_token":-0,"response_code":"503"}"#,
            r#"{"llm_input_token":12.0,"llm_output_token":null,"duration":1.5E2,"start_time":"2026-03-17T09:14:02.113Z"}"#,
        ]
        .map(String::from),
    );
    lines
}

fn parse_owned(parser: &mut Parser, line: &str) -> String {
    format!("{:?}", parser.parse(line))
}

/// Decodes physical lines and returns the parsed logical lines, debug-printed.
fn decode_all(physical: &[Vec<u8>]) -> Vec<String> {
    let mut d = Decoder::new(1 << 20);
    let mut p = Parser::new(&Fields::default());
    let mut out = Vec::new();
    for l in physical {
        match d.decode(l) {
            Decoded::Line(l) => out.push(parse_owned(&mut p, l.text)),
            Decoded::TooLong => out.push("too_long".into()),
            Decoded::Pending | Decoded::Blank => {}
        }
    }
    out
}

fn cut_points(len: usize, raw: Vec<usize>) -> Vec<usize> {
    let mut cuts: Vec<usize> = raw.into_iter().map(|c| c % (len + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn cri_partials_at_any_byte_give_the_same_record(
        idx in 0usize..64,
        raw_cuts in proptest::collection::vec(0usize..100_000, 0..6),
    ) {
        let lines = fixture_lines();
        let line = &lines[idx % lines.len()];
        let bytes = line.as_bytes();
        let cuts = cut_points(bytes.len(), raw_cuts);
        let mut physical = Vec::new();
        let mut start = 0;
        for &c in &cuts {
            let mut p = b"2026-03-17T09:14:08.896007972Z stdout P ".to_vec();
            p.extend_from_slice(&bytes[start..c]);
            physical.push(p);
            start = c;
        }
        let mut last = b"2026-03-17T09:14:09Z stdout F ".to_vec();
        last.extend_from_slice(&bytes[start..]);
        physical.push(last);
        let whole = decode_all(&[bytes.to_vec()]);
        prop_assert_eq!(decode_all(&physical), whole);
    }

    #[test]
    fn docker_partials_at_any_char_give_the_same_record(
        idx in 0usize..64,
        raw_cuts in proptest::collection::vec(0usize..100_000, 0..6),
    ) {
        let lines = fixture_lines();
        let line = &lines[idx % lines.len()];
        let chars: Vec<char> = line.chars().collect();
        let cuts = cut_points(chars.len(), raw_cuts);
        let mut physical = Vec::new();
        let mut start = 0;
        let piece = |s: &[char], nl: bool| {
            let mut log: String = s.iter().collect();
            if nl { log.push('\n'); }
            serde_json::json!({"log": log, "stream": "stdout", "time": "2026-03-17T09:14:08.1Z"})
                .to_string()
                .into_bytes()
        };
        for &c in &cuts {
            physical.push(piece(&chars[start..c], false));
            start = c;
        }
        physical.push(piece(&chars[start..], true));
        prop_assert_eq!(decode_all(&physical), decode_all(&[line.as_bytes().to_vec()]));
    }

    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut d = Decoder::new(256);
        let mut p = Parser::new(&Fields::default());
        for physical in input.split(|&b| b == b'\n') {
            if let Decoded::Line(l) = d.decode(physical) {
                let _ = p.parse(l.text);
            }
        }
        while let Some(Decoded::Line(l)) = d.flush_pending() {
            let _ = p.parse(l.text);
        }
    }

    #[test]
    fn json_like_input_never_panics(s in r#"[{}\[\]",:0-9a-z\\ .eE+-]{0,80}"#) {
        let mut p = Parser::new(&Fields::default());
        let _ = p.parse(&s);
        let _ = p.parse(&format!("{{\"model\":{s}}}"));
    }

    #[test]
    fn scanner_agrees_with_serde_json(
        idx in 0usize..64,
        edits in proptest::collection::vec((0usize..100_000, 0usize..12, any::<bool>()), 0..4),
    ) {
        const INSERTS: [&str; 12] = ["\"", "{", "}", "[", "]", ",", ":", "\\", "0", "-", " ", "\u{1}"];
        let lines = fixture_lines();
        let mut line = lines[idx % lines.len()].clone();
        for (pos, what, delete) in edits {
            let mut at = pos % (line.len() + 1);
            while !line.is_char_boundary(at) { at -= 1; }
            if delete && at < line.len() {
                let mut end = at + 1;
                while !line.is_char_boundary(end) { end += 1; }
                line.replace_range(at..end, "");
            } else {
                line.insert_str(at, INSERTS[what]);
            }
        }
        // Documented leniencies: Envoy's \NNN escape and lone surrogates (both become U+FFFD).
        let lenient = line
            .as_bytes()
            .windows(2)
            .any(|w| w[0] == b'\\' && matches!(w[1], b'0'..=b'3' | b'u'));
        let serde: Result<serde_json::Value, _> = serde_json::from_str(&line);
        let serde_obj = match &serde { Ok(serde_json::Value::Object(m)) => Some(m.clone()), _ => None };
        let mut ours = Vec::new();
        let scanned = Scanner::new().scan_object(&line, |k, v| ours.push((k.decode().into_owned(), view(v))));
        if !lenient {
            prop_assert_eq!(scanned.is_ok(), serde_obj.is_some(), "line: {}", line);
        }
        if let (Ok(()), Some(m)) = (scanned, serde_obj) {
            // Last occurrence wins, as in serde_json's map.
            let mut last = std::collections::BTreeMap::new();
            for (k, v) in ours { last.insert(k, v); }
            prop_assert_eq!(last.len(), m.len());
            for (k, v) in &m {
                prop_assert_eq!(last.get(k), Some(&serde_view(v)), "key {}", k);
            }
        }
    }
}

/// A comparable view of a value: strings decoded, numbers as f64, containers by kind.
#[derive(Debug, PartialEq)]
enum View {
    S(String),
    N(f64),
    B(bool),
    Null,
    Obj,
    Arr,
}

fn view(v: Value<'_>) -> View {
    match v {
        Value::Str(s) => View::S(s.decode().into_owned()),
        Value::Number(n) => View::N(n.parse().unwrap()),
        Value::Bool(b) => View::B(b),
        Value::Null => View::Null,
        Value::Object => View::Obj,
        Value::Array => View::Arr,
    }
}

fn serde_view(v: &serde_json::Value) -> View {
    match v {
        serde_json::Value::String(s) => View::S(s.clone()),
        serde_json::Value::Number(n) => View::N(n.as_f64().unwrap()),
        serde_json::Value::Bool(b) => View::B(*b),
        serde_json::Value::Null => View::Null,
        serde_json::Value::Object(_) => View::Obj,
        serde_json::Value::Array(_) => View::Arr,
    }
}

#[test]
fn every_fixture_line_is_a_json_object() {
    let mut p = Parser::new(&Fields::default());
    for line in fixture_lines() {
        let ours = matches!(p.parse(&line), Parsed::Record(_) | Parsed::NotLlm);
        assert!(ours, "{line}");
    }
}

// --- formats (docs/formats.md): auto detection never changes how a seed-format line reads,
// and a line holding the keys of two formats is read by the first in the documented order.

/// A value of a seed-format field: valid, not measured, or invalid, in every JSON spelling.
fn field_value() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..100_000).prop_map(|n| n.to_string()),
        (0u64..100_000).prop_map(|n| format!("\"{n}\"")),
        Just("null".to_string()),
        Just("\"-\"".to_string()),
        Just("\"\"".to_string()),
        Just("-4".to_string()),
        Just("1.5".to_string()),
        "[a-z]{1,8}".prop_map(|s| format!("\"{s}\"")),
        Just("{\"model\":\"nested\"}".to_string()),
    ]
}

/// Keys a seed-format line may hold: its own, and others an access log has. None of them is
/// another format's (those would rightly change the format).
const SEED_KEYS: [&str; 14] = [
    "model",
    "llm_input_token",
    "llm_output_token",
    "llm_total_token",
    "llm_cached_input_token",
    "llm_reasoning_token",
    "api_key_id",
    "aim_service_id",
    "response_code",
    "start_time",
    "duration",
    "user-agent",
    "x-request-id",
    "method",
];

/// The members that make a line of each JSON format, in the documented order of detection.
fn signature(format: Format, n: u64) -> Vec<(String, String)> {
    let m = |k: &str, v: String| (k.to_string(), v);
    match format {
        Format::GenAi => vec![
            m("gen_ai.request.model", "\"g\"".into()),
            m("gen_ai.usage.input_tokens", n.to_string()),
        ],
        Format::GenaiV04 => vec![
            m("genai_model_name", "\"v\"".into()),
            m("genai_tokens_input", n.to_string()),
        ],
        Format::Kong => vec![m(
            "ai",
            format!("{{\"proxy\":{{\"usage\":{{\"prompt_tokens\":{n}}},\"meta\":{{\"request_model\":\"k\"}}}}}}"),
        )],
        Format::Higress => vec![m(
            "ai_log",
            format!("\"{{\\\"model\\\":\\\"h\\\",\\\"input_token\\\":{n}}}\""),
        )],
        Format::Tokenmeter | Format::Logfmt => vec![
            m("model", "\"t\"".into()),
            m("llm_input_token", n.to_string()),
        ],
    }
}

const JSON_FORMATS: [Format; 5] = [
    Format::GenAi,
    Format::GenaiV04,
    Format::Kong,
    Format::Higress,
    Format::Tokenmeter,
];

fn object(members: &[(String, String)]) -> String {
    let body: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("{}:{v}", serde_json::to_string(k).unwrap()))
        .collect();
    format!("{{{}}}", body.join(","))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn auto_reads_any_seed_format_line_exactly_as_the_seed_format_does(
        members in proptest::collection::vec((0..SEED_KEYS.len(), field_value()), 0..10),
    ) {
        let members: Vec<(String, String)> =
            members.into_iter().map(|(k, v)| (SEED_KEYS[k].to_string(), v)).collect();
        let line = object(&members);
        let mut auto = Parser::new(&Fields::default());
        let mut seed = Parser::new(&Fields { format: "tokenmeter".into(), ..Fields::default() });
        prop_assert_eq!(parse_owned(&mut auto, &line), parse_owned(&mut seed, &line), "{}", line);
    }

    #[test]
    fn keys_of_a_later_format_added_in_any_order_leave_a_line_to_the_first_format(
        first in 0..JSON_FORMATS.len() - 1,
        later in 1..JSON_FORMATS.len(),
        n in 0u64..1_000_000,
        order in proptest::collection::vec(any::<u32>(), 4),
    ) {
        prop_assume!(later > first);
        let mut members = signature(JSON_FORMATS[first], n);
        members.extend(signature(JSON_FORMATS[later], n + 1));
        // Any order of the members.
        let mut keyed: Vec<(u32, (String, String))> =
            order.iter().copied().chain(std::iter::repeat(0)).zip(members).collect();
        keyed.sort_by_key(|(o, _)| *o);
        let members: Vec<(String, String)> = keyed.into_iter().map(|(_, m)| m).collect();
        let line = object(&members);
        let mut auto = Parser::new(&Fields::default());
        match auto.parse(&line) {
            Parsed::Record(r) => {
                prop_assert_eq!(r.format, JSON_FORMATS[first], "{}", line);
                prop_assert_eq!(r.input_tokens, n, "{}", line);
            }
            other => prop_assert!(false, "{line}: {other:?}"),
        }
    }
}
