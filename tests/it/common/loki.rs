//! A Loki push receiver for the tests: it decodes the real wire format (raw snappy, then the
//! `logproto.PushRequest` protobuf, with message definitions written here from Loki's
//! `pkg/push/push.proto`, independent of the implementation's) and enforces Loki's documented
//! validation: label names `[a-zA-Z_][a-zA-Z0-9_]*` not starting with `__`, at most 15 labels
//! per stream, lines ≤ 256 KiB, entries older than 7 days (`reject_old_samples_max_age`) and
//! entries more than 1 h older than the newest of their stream rejected; valid entries of a
//! request are stored even when others are rejected, and the answer is then 400 with the
//! reasons, as Loki does. It can be told to answer 429/503/400, to hang, or to be "down"
//! (close connections at once).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;

#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<StreamAdapter>,
}
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamAdapter {
    #[prost(string, tag = "1")]
    pub labels: String,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<EntryAdapter>,
    #[prost(uint64, tag = "3")]
    pub hash: u64,
}
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryAdapter {
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<Timestamp>,
    #[prost(string, tag = "2")]
    pub line: String,
    #[prost(message, repeated, tag = "3")]
    pub structured_metadata: Vec<LabelPairAdapter>,
}
#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelPairAdapter {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
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
    Hang(Duration),
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
        Some(Behavior::Hang(d)) => {
            std::thread::sleep(d);
            return;
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
    let req = match PushRequest::decode(&raw[..]) {
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
    for stream in req.streams {
        let labels = match parse_labels(&stream.labels) {
            Ok(l) => l,
            Err(e) => {
                errors.push(format!("stream {}: {e}", stream.labels));
                continue;
            }
        };
        for e in stream.entries {
            let ts = e
                .timestamp
                .map(|t| t.seconds * 1_000_000_000 + t.nanos as i64)
                .unwrap_or(0);
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
                metadata: e
                    .structured_metadata
                    .into_iter()
                    .map(|p| (p.name, p.value))
                    .collect(),
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
