//! A Loki push receiver for the tests: it decodes the real wire format (raw snappy, then the
//! `logproto.PushRequest` protobuf, read field by field here from Loki's `pkg/push/push.proto`,
//! independent of the implementation's message definitions) and enforces Loki's documented
//! validation: label names `[a-zA-Z_][a-zA-Z0-9_]*` not starting with `__`, at most 15 labels
//! per stream, lines ≤ 256 KiB, entries older than 7 days (`reject_old_samples_max_age`) and
//! entries more than 1 h older than the newest of their stream rejected; valid entries of a
//! request are stored even when others are rejected, and the answer is then 400 with the
//! reasons, as Loki does. It can be told to answer 429/503/400, or to be "down"
//! (close connections at once).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One stream of a push, as far as the receiver reads it.
struct Stream {
    labels: String,
    entries: Vec<Entry>,
}

/// One entry of a stream: its time (0 when the request gave none), line and structured metadata.
struct Entry {
    ts_ns: i64,
    line: String,
    metadata: Vec<(String, String)>,
}

/// A protobuf field's value, by wire type: a varint or a length-delimited run of bytes.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// Reads a varint off the front of `b`.
fn varint(b: &mut &[u8]) -> Result<u64, String> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first().ok_or("a varint cut short")?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("a varint longer than 10 bytes".into())
}

/// The fields of one protobuf message, (number, value) in wire order; 32- and 64-bit fixed
/// fields (none in Loki's push messages) are skipped.
fn fields(mut b: &[u8]) -> Result<Vec<(u64, Field<'_>)>, String> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let value = match key & 7 {
            0 => Field::Varint(varint(&mut b)?),
            2 => {
                let len = usize::try_from(varint(&mut b)?).map_err(|e| e.to_string())?;
                if len > b.len() {
                    return Err(format!("field {} longer than its message", key >> 3));
                }
                let (bytes, rest) = b.split_at(len);
                b = rest;
                Field::Bytes(bytes)
            }
            wire @ (1 | 5) => {
                let len = if wire == 1 { 8 } else { 4 };
                b = b.get(len..).ok_or("a fixed field cut short")?;
                continue;
            }
            wire => return Err(format!("wire type {wire} of field {}", key >> 3)),
        };
        out.push((key >> 3, value));
    }
    Ok(out)
}

fn utf8(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|e| format!("a string that is not UTF-8: {e}"))
}

/// Decodes a `logproto.PushRequest` (Loki's `pkg/push/push.proto`) off the wire by field
/// number, rather than through message definitions like the exporter's (a mistake in those
/// could not then hide in both): `streams` = 1; a stream's `labels` = 1, `entries` = 2 (its
/// `hash`, 3, is not read); an entry's `timestamp` = 1 (`seconds` = 1, `nanos` = 2), `line` = 2,
/// `structured_metadata` = 3 (`name` = 1, `value` = 2).
fn decode_push(raw: &[u8]) -> Result<Vec<Stream>, String> {
    let mut streams = Vec::new();
    for (n, f) in fields(raw)? {
        let (1, Field::Bytes(s)) = (n, f) else {
            continue;
        };
        let mut stream = Stream {
            labels: String::new(),
            entries: Vec::new(),
        };
        for (n, f) in fields(s)? {
            match (n, f) {
                (1, Field::Bytes(l)) => stream.labels = utf8(l)?,
                (2, Field::Bytes(e)) => stream.entries.push(decode_entry(e)?),
                _ => {}
            }
        }
        streams.push(stream);
    }
    Ok(streams)
}

fn decode_entry(b: &[u8]) -> Result<Entry, String> {
    let mut entry = Entry {
        ts_ns: 0,
        line: String::new(),
        metadata: Vec::new(),
    };
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(t)) => {
                for (n, f) in fields(t)? {
                    match (n, f) {
                        // int64 seconds; int32 nanos (a negative int32 is sign-extended).
                        (1, Field::Varint(s)) => entry.ts_ns += s as i64 * 1_000_000_000,
                        (2, Field::Varint(ns)) => entry.ts_ns += i64::from(ns as i32),
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(l)) => entry.line = utf8(l)?,
            (3, Field::Bytes(p)) => {
                let (mut name, mut value) = (String::new(), String::new());
                for (n, f) in fields(p)? {
                    match (n, f) {
                        (1, Field::Bytes(s)) => name = utf8(s)?,
                        (2, Field::Bytes(s)) => value = utf8(s)?,
                        _ => {}
                    }
                }
                entry.metadata.push((name, value));
            }
            _ => {}
        }
    }
    Ok(entry)
}

const MAX_LINE: usize = 256 << 10;
const MAX_LABELS: usize = 15;
const MAX_AGE_NS: i64 = 7 * 24 * 3600 * 1_000_000_000;
const ORDER_WINDOW_NS: i64 = 3600 * 1_000_000_000;

/// One stored entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub labels: BTreeMap<String, String>,
    pub ts_ns: i64,
    pub line: String,
    pub metadata: BTreeMap<String, String>,
}

/// What to do with the next request instead of ingesting it.
#[derive(Clone, Debug)]
pub enum Behavior {
    Status(u16),
    /// 429 with this `Retry-After` header value.
    RetryAfter(&'static str),
}

#[derive(Default)]
struct State {
    entries: Vec<Received>,
    script: VecDeque<Behavior>,
    newest: HashMap<String, i64>,
    requests: u64,
    rejected: Vec<String>,
    /// The receiver's clock (ns); `None`: the real clock.
    now_ns: Option<i64>,
}

pub struct LokiReceiver {
    pub addr: String,
    state: Arc<Mutex<State>>,
    down: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl LokiReceiver {
    pub fn start() -> LokiReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let down = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (state, down, stop) = (state.clone(), down.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    if down.load(Ordering::SeqCst) {
                        drop(conn); // connection closed without an answer
                        continue;
                    }
                    let state = state.clone();
                    std::thread::spawn(move || handle(conn, &state));
                }
            });
        }
        LokiReceiver {
            addr,
            state,
            down,
            stop,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}/loki/api/v1/push", self.addr)
    }

    pub fn script(&self, b: Behavior) {
        self.state.lock().unwrap().script.push_back(b);
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    pub fn set_now_ns(&self, now: i64) {
        self.state.lock().unwrap().now_ns = Some(now);
    }

    pub fn entries(&self) -> Vec<Received> {
        self.state.lock().unwrap().entries.clone()
    }

    pub fn requests(&self) -> u64 {
        self.state.lock().unwrap().requests
    }

    pub fn rejections(&self) -> Vec<String> {
        self.state.lock().unwrap().rejected.clone()
    }
}

impl Drop for LokiReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
    }
}

fn respond(conn: &mut TcpStream, status: u16, extra: &str, body: &str) {
    let reason = match status {
        204 => "No Content",
        400 => "Bad Request",
        429 => "Too Many Requests",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    );
}

fn handle(mut conn: TcpStream, state: &Mutex<State>) {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 65536];
    let header_end = loop {
        match conn.read(&mut tmp) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    while buf.len() < header_end + len {
        match conn.read(&mut tmp) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    let body = &buf[header_end..header_end + len];
    let behavior = {
        let mut s = state.lock().unwrap();
        s.requests += 1;
        s.script.pop_front()
    };
    match behavior {
        Some(Behavior::Status(429)) => {
            return respond(&mut conn, 429, "Retry-After: 1\r\n", "rate limited\n")
        }
        Some(Behavior::Status(code)) => return respond(&mut conn, code, "", "scripted failure\n"),
        Some(Behavior::RetryAfter(v)) => {
            return respond(
                &mut conn,
                429,
                &format!("Retry-After: {v}\r\n"),
                "rate limited\n",
            )
        }
        None => {}
    }
    if !head.contains("content-type: application/x-protobuf") {
        return respond(&mut conn, 415, "", "unsupported content type\n");
    }
    let raw = match snap::raw::Decoder::new().decompress_vec(body) {
        Ok(r) => r,
        Err(e) => return respond(&mut conn, 400, "", &format!("snappy: {e}\n")),
    };
    let streams = match decode_push(&raw) {
        Ok(r) => r,
        Err(e) => return respond(&mut conn, 400, "", &format!("protobuf: {e}\n")),
    };
    let mut errors = Vec::new();
    let mut s = state.lock().unwrap();
    let now = s.now_ns.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64
    });
    for stream in streams {
        let labels = match parse_labels(&stream.labels) {
            Ok(l) => l,
            Err(e) => {
                errors.push(format!("stream {}: {e}", stream.labels));
                continue;
            }
        };
        for e in stream.entries {
            let ts = e.ts_ns;
            if e.line.len() > MAX_LINE {
                errors.push(format!("line too long ({} bytes)", e.line.len()));
                continue;
            }
            if ts < now - MAX_AGE_NS {
                errors.push(format!(
                    "entry for stream {} has timestamp too old: {ts}",
                    stream.labels
                ));
                continue;
            }
            let newest = s.newest.get(&stream.labels).copied().unwrap_or(i64::MIN);
            if ts < newest.saturating_sub(ORDER_WINDOW_NS) {
                errors.push(format!("entry too far behind for stream {}", stream.labels));
                continue;
            }
            s.newest.insert(stream.labels.clone(), newest.max(ts));
            s.entries.push(Received {
                labels: labels.clone(),
                ts_ns: ts,
                line: e.line,
                metadata: e.metadata.into_iter().collect(),
            });
        }
    }
    if errors.is_empty() {
        drop(s);
        respond(&mut conn, 204, "", "");
    } else {
        let msg = errors.join("\n");
        s.rejected.push(msg.clone());
        drop(s);
        respond(&mut conn, 400, "", &msg);
    }
}

fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let inner = s
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .ok_or("not a {…} selector")?;
    let mut out = BTreeMap::new();
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").ok_or("expected name=\"value\"")?;
        let name = name.trim().trim_start_matches(',').trim();
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !name.starts_with("__");
        if !valid {
            return Err(format!("invalid label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(n);
                    }
                }
                '"' => {
                    end = Some(i + 1);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.ok_or("unterminated value")?;
        out.insert(name.to_string(), value);
        rest = after[end..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
    if out.len() > MAX_LABELS {
        return Err(format!("{} labels, more than {MAX_LABELS}", out.len()));
    }
    Ok(out)
}
