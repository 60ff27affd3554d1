//! Instruction-count probe for the parse stage, to run under callgrind:
//! `scanprobe read|scan|parse FILE`. `read` is the baseline (load + split lines), `scan` adds
//! the JSON scanner, `parse` the whole record parser; the differences per line are what each
//! stage costs.
use std::io::Read;
use tokenmeter::config::Fields;
use tokenmeter::json::Scanner;
use tokenmeter::parse::{Parsed, Parser};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(path)) = (args.get(1), args.get(2)) else {
        return Err("usage: scanprobe read|scan|parse FILE".into());
    };
    let mut data = Vec::new();
    std::fs::File::open(path)?.read_to_end(&mut data)?;
    let text = std::str::from_utf8(&data)?;
    let mut scanner = Scanner::new();
    let mut parser = Parser::new(&Fields::default());
    let mut n = 0u64;
    for line in text.lines() {
        match mode.as_str() {
            "read" => n += line.len() as u64,
            "scan" => {
                let _ = scanner.scan(line.as_bytes(), |_, r| n += r.end as u64);
            }
            "parse" => {
                if let Parsed::Record(r) = parser.parse(line) {
                    n += r.total_tokens;
                }
            }
            other => return Err(format!("unknown mode {other}").into()),
        }
    }
    println!("{n}");
    Ok(())
}
