//! Instruction-count probe for the hot path (run under callgrind): `scanprobe MODE FILE`.
//! MODE: read | index | scan | parse.
use std::io::Read;
use tokenmeter::config::Fields;
use tokenmeter::json::Scanner;
use tokenmeter::parse::Parser;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut data = Vec::new();
    std::fs::File::open(&args[2])
        .unwrap()
        .read_to_end(&mut data)
        .unwrap();
    let text = std::str::from_utf8(&data).unwrap();
    let mut scanner = Scanner::new();
    let mut parser = Parser::new(&Fields::default());
    let mut n = 0u64;
    for line in text.lines() {
        match args[1].as_str() {
            "read" => n += line.len() as u64,
            "scan" => {
                let _ = scanner.scan(line.as_bytes(), |_, r| n += r.end as u64);
            }
            "parse" => {
                if let tokenmeter::parse::Parsed::Record(r) = parser.parse(line) {
                    n += r.total_tokens;
                }
            }
            _ => {}
        }
    }
    println!("{n}");
}
