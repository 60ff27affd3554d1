//! Fuzzes decode + parse: any bytes, split into physical lines, through the CRI/docker/plain
//! decoder (partials included) and the record parser in every format (auto detection, each
//! format pinned, JSON Pointer overrides), every request of a line (Kong), and Loki's
//! redaction with plain keys, pointers and `key=value` lines. Nothing may panic, and what the
//! scanner accepts as a JSON object must also be accepted by serde_json (minus the documented
//! leniencies: Envoy's `\NNN` escape, lone surrogates, and numbers beyond f64's range).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenmeter::config::Fields;
use tokenmeter::decode::{Decoded, Decoder};
use tokenmeter::export::loki::redact;
use tokenmeter::json::Scanner;
use tokenmeter::parse::format::Format;
use tokenmeter::parse::{Parsed, Parser};

fn parsers() -> Vec<Parser> {
    let mut fields = vec![Fields::default()];
    for f in Format::ALL {
        fields.push(Fields {
            format: f.name().to_string(),
            ..Fields::default()
        });
    }
    // Pointers into nested objects and into JSON held in strings, in every format.
    fields.push(Fields {
        model: Some("/ai_log/model".into()),
        api_key_id: Some("/consumer/username".into()),
        input_tokens: Some("/usage/a~1b/0".into()),
        ..Fields::default()
    });
    fields.iter().map(Parser::new).collect()
}

fn every_request(parser: &mut Parser, text: &str) {
    if let Parsed::Record(_) = parser.parse(text) {
        let mut n = 0;
        while parser.next_request(text).is_some() {
            n += 1;
            assert!(n <= text.len(), "more requests than bytes");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::new(4096);
    let mut parsers = parsers();
    let mut scanner = Scanner::new();
    let redacted: Vec<String> = ["x-forwarded-for", "/ai_log/consumer", "api_key_id"]
        .map(String::from)
        .to_vec();
    for physical in data.split(|&b| b == b'\n') {
        if let Decoded::Line(l) = decoder.decode(physical) {
            for p in parsers.iter_mut() {
                every_request(p, l.text);
            }
            let _ = redact(l.text, &redacted);
            let ours = scanner.scan_object(l.text, |_, _| {}).is_ok();
            let lenient = l.text.contains('\\');
            if ours && !lenient {
                match serde_json::from_str::<serde_json::Value>(l.text) {
                    Ok(serde_json::Value::Object(_)) => {}
                    // RFC 8259 allows any number size; serde_json refuses what f64 cannot hold.
                    Err(e) if e.to_string().starts_with("number out of range") => {}
                    other => panic!("scanner accepted {:?}, serde_json: {other:?}", l.text),
                }
            }
        }
    }
    while let Some(Decoded::Line(l)) = decoder.flush_pending() {
        for p in parsers.iter_mut() {
            every_request(p, l.text);
        }
    }
});
