//! Fuzzes decode + parse: any bytes, split into physical lines, through the CRI/docker/plain
//! decoder (partials included) and the record parser. Nothing may panic, and what the scanner
//! accepts as a JSON object must also be accepted by serde_json (minus the documented
//! leniencies: Envoy's `\NNN` escape, lone surrogates, and numbers beyond f64's range).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenmeter::config::Fields;
use tokenmeter::decode::{Decoded, Decoder};
use tokenmeter::json::Scanner;
use tokenmeter::parse::Parser;

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::new(4096);
    let mut parser = Parser::new(&Fields::default());
    let mut scanner = Scanner::new();
    for physical in data.split(|&b| b == b'\n') {
        if let Decoded::Line(l) = decoder.decode(physical) {
            let _ = parser.parse(l.text);
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
        let _ = parser.parse(l.text);
    }
});
