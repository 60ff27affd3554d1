//! One physical line → one logical line: the container-runtime envelope removed, partials
//! joined, the envelope's timestamp kept, invalid UTF-8 replaced.
//!
//! Owns: detecting CRI (`<RFC3339Nano> <stdout|stderr> <P|F>[:tags] <content>`), docker
//! json-file (`{"log":"…","stream":…,"time":…}`) and plain lines, per line; joining partials
//! per stream (CRI `P…F`, docker `log` without a final `\n`); `max_line_bytes`. Pure, no I/O;
//! knows nothing of access-log fields. Buffers are reused, so a plain or CRI line that needs no
//! joining and is valid UTF-8 is returned borrowed, without copying.

use crate::json::{Kind, Scanner};
use crate::timefmt::parse_rfc3339_nanos;

/// Which output stream of the container wrote the line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    /// A plain file: no envelope.
    Plain,
}

/// A logical line: envelope removed, partials joined, valid UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogicalLine<'a> {
    pub text: &'a str,
    /// The envelope's timestamp (ns since the epoch), when the line had one.
    pub time_ns: Option<i64>,
    pub stream: Stream,
}

/// What one physical line amounted to.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    Line(LogicalLine<'a>),
    /// A logical line longer than `max_line_bytes`; its content is gone.
    TooLong,
    /// A partial was buffered; the line completes later.
    Pending,
    /// Empty or whitespace only: ignored and not counted.
    Blank,
}

/// A partial line being joined for one stream.
#[derive(Default)]
struct Partial {
    buf: Vec<u8>,
    active: bool,
    /// The joined length passed `max_line_bytes`; the rest is discarded until the final part.
    overflowed: bool,
    time_ns: Option<i64>,
}

impl Partial {
    fn push(&mut self, chunk: &[u8], time_ns: Option<i64>, max: usize) {
        if !self.active {
            self.active = true;
            self.overflowed = false;
            self.buf.clear();
            self.time_ns = time_ns;
        }
        if self.overflowed {
            return;
        }
        if self.buf.len() + chunk.len() > max {
            self.overflowed = true;
            self.buf = Vec::new(); // give a huge line's memory back
        } else {
            self.buf.extend_from_slice(chunk);
        }
    }

    fn reset(&mut self) {
        self.active = false;
        self.overflowed = false;
        self.buf.clear();
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::new();
        }
    }
}

/// Per-file decoder: keeps the partials of each stream between calls.
pub struct Decoder {
    max_line_bytes: usize,
    stdout: Partial,
    stderr: Partial,
    /// The joined line handed out by the last call (partials are reset before returning).
    joined: Vec<u8>,
    /// Docker `log` value, unescaped.
    docker: Vec<u8>,
    /// A lossily repaired copy when the line is not valid UTF-8.
    repaired: String,
    scanner: Scanner,
}

impl Decoder {
    pub fn new(max_line_bytes: usize) -> Self {
        Self {
            max_line_bytes,
            stdout: Partial::default(),
            stderr: Partial::default(),
            joined: Vec::new(),
            docker: Vec::new(),
            repaired: String::new(),
            scanner: Scanner::new(),
        }
    }

    /// Whether a partial line is waiting for its final part. A reader that checkpoints offsets
    /// must only commit an offset while this is false.
    pub fn is_pending(&self) -> bool {
        self.stdout.active || self.stderr.active
    }

    /// Forgets any buffered partial (e.g. the file was truncated).
    pub fn reset(&mut self) {
        self.stdout.reset();
        self.stderr.reset();
    }

    /// Decodes one physical line (without its `\n`).
    pub fn decode<'a>(&'a mut self, physical: &'a [u8]) -> Decoded<'a> {
        let physical = physical.strip_suffix(b"\r").unwrap_or(physical);
        if let Some(cri) = parse_cri(physical) {
            return self.finish_envelope(cri.content, cri.time_ns, cri.stream, cri.partial);
        }
        if physical.starts_with(b"{\"log\":") {
            if let Some((time_ns, stream, partial)) = self.parse_docker(physical) {
                // `self.docker` is moved out and back so its buffer is reused.
                let log = std::mem::take(&mut self.docker);
                let out = self.finish_owned_envelope(log, time_ns, stream, partial);
                return out;
            }
        }
        if physical.len() > self.max_line_bytes {
            return Decoded::TooLong;
        }
        self.emit(physical, None, Stream::Plain)
    }

    /// At the end of a replayed file, hands out a partial that never got its final part (the
    /// writer stopped mid-line); call until it returns `None`.
    pub fn flush_pending(&mut self) -> Option<Decoded<'_>> {
        let which = if self.stdout.active {
            Stream::Stdout
        } else if self.stderr.active {
            Stream::Stderr
        } else {
            return None;
        };
        Some(self.complete(&[], which))
    }

    fn finish_envelope<'a>(
        &'a mut self,
        content: &'a [u8],
        time_ns: Option<i64>,
        stream: Stream,
        partial: bool,
    ) -> Decoded<'a> {
        let max = self.max_line_bytes;
        let p = self.partial_mut(stream);
        if partial {
            p.push(content, time_ns, max);
            return Decoded::Pending;
        }
        if p.active {
            return self.complete(content, stream);
        }
        if content.len() > max {
            return Decoded::TooLong;
        }
        let content = content.strip_suffix(b"\r").unwrap_or(content);
        self.emit(content, time_ns, stream)
    }

    fn finish_owned_envelope(
        &mut self,
        log: Vec<u8>,
        time_ns: Option<i64>,
        stream: Stream,
        partial: bool,
    ) -> Decoded<'_> {
        let max = self.max_line_bytes;
        let p = self.partial_mut(stream);
        if partial || p.active {
            p.push(&log, time_ns, max);
            self.docker = log;
            if partial {
                return Decoded::Pending;
            }
            return self.complete(&[], stream);
        }
        if log.len() > max {
            self.docker = log;
            return Decoded::TooLong;
        }
        self.joined.clear();
        self.joined.extend_from_slice(&log);
        self.docker = log;
        let joined = std::mem::take(&mut self.joined);
        self.emit_joined(joined, time_ns, stream)
    }

    /// Appends the final part to the stream's partial and hands out the joined line.
    fn complete(&mut self, last: &[u8], stream: Stream) -> Decoded<'_> {
        let max = self.max_line_bytes;
        let p = self.partial_mut(stream);
        p.push(last, None, max);
        let overflowed = p.overflowed;
        let time_ns = p.time_ns;
        let mut joined = std::mem::take(&mut self.joined);
        joined.clear();
        let p = self.partial_mut(stream);
        if !overflowed {
            std::mem::swap(&mut joined, &mut p.buf);
        }
        p.reset();
        if overflowed {
            self.joined = joined;
            return Decoded::TooLong;
        }
        if joined.ends_with(b"\r") {
            joined.pop();
        }
        self.emit_joined(joined, time_ns, stream)
    }

    /// Hands out a line held in an owned buffer, which becomes `self.joined`.
    fn emit_joined(
        &mut self,
        joined: Vec<u8>,
        time_ns: Option<i64>,
        stream: Stream,
    ) -> Decoded<'_> {
        self.joined = joined;
        let Self {
            joined, repaired, ..
        } = self;
        emit_into(joined, repaired, time_ns, stream)
    }

    fn emit<'a>(
        &'a mut self,
        bytes: &'a [u8],
        time_ns: Option<i64>,
        stream: Stream,
    ) -> Decoded<'a> {
        emit_into(bytes, &mut self.repaired, time_ns, stream)
    }

    fn partial_mut(&mut self, stream: Stream) -> &mut Partial {
        match stream {
            Stream::Stderr => &mut self.stderr,
            _ => &mut self.stdout,
        }
    }

    /// Parses a docker json-file envelope into `self.docker`; `None` if it is not one.
    /// Works on bytes: a `log` cut inside a multi-byte character is joined before it is
    /// checked as UTF-8.
    fn parse_docker(&mut self, physical: &[u8]) -> Option<(Option<i64>, Stream, bool)> {
        let mut log = None;
        let mut stream = Stream::Stdout;
        let mut time = None;
        self.scanner
            .scan(physical, |k, v| match (k.raw, v.kind) {
                (b"log", Kind::Str { escaped }) => log = Some((v.start, v.end, escaped)),
                (b"stream", Kind::Str { .. }) if &physical[v.start..v.end] == b"stderr" => {
                    stream = Stream::Stderr
                }
                (b"time", Kind::Str { .. }) => time = Some((v.start, v.end)),
                _ => {}
            })
            .ok()?;
        let (start, end, escaped) = log?;
        let time_ns = time
            .and_then(|(s, e)| std::str::from_utf8(&physical[s..e]).ok())
            .and_then(parse_rfc3339_nanos);
        self.docker.clear();
        if escaped {
            crate::json::unescape_bytes(&physical[start..end], &mut self.docker);
        } else {
            self.docker.extend_from_slice(&physical[start..end]);
        }
        let partial = !self.docker.ends_with(b"\n");
        if !partial {
            self.docker.pop();
        }
        Some((time_ns, stream, partial))
    }
}

fn emit_into<'a>(
    bytes: &'a [u8],
    repaired: &'a mut String,
    time_ns: Option<i64>,
    stream: Stream,
) -> Decoded<'a> {
    if bytes.iter().all(|&c| c == b' ' || c == b'\t') {
        return Decoded::Blank;
    }
    let text = match simdutf8::basic::from_utf8(bytes) {
        Ok(s) => s,
        Err(_) => {
            repaired.clear();
            repaired.push_str(&String::from_utf8_lossy(bytes));
            repaired.as_str()
        }
    };
    Decoded::Line(LogicalLine {
        text,
        time_ns,
        stream,
    })
}

struct Cri<'a> {
    time_ns: Option<i64>,
    stream: Stream,
    partial: bool,
    content: &'a [u8],
}

/// `<RFC3339Nano> <stdout|stderr> <P|F>[:tags] <content>`
fn parse_cri(line: &[u8]) -> Option<Cri<'_>> {
    if !line.first()?.is_ascii_digit() {
        return None;
    }
    // An RFC3339Nano timestamp is at most 35 bytes.
    let sp = memchr::memchr(b' ', &line[..line.len().min(40)])?;
    let ts = std::str::from_utf8(&line[..sp]).ok()?;
    let time_ns = parse_rfc3339_nanos(ts)?;
    let rest = &line[sp + 1..];
    let (stream, rest) = if let Some(r) = rest.strip_prefix(b"stdout ") {
        (Stream::Stdout, r)
    } else if let Some(r) = rest.strip_prefix(b"stderr ") {
        (Stream::Stderr, r)
    } else {
        return None;
    };
    let partial = match rest.first()? {
        b'P' => true,
        b'F' => false,
        _ => return None,
    };
    // Tags end at the first space; the content is everything after it (possibly empty).
    let tag_end = memchr::memchr(b' ', rest).unwrap_or(rest.len());
    let tag = &rest[..tag_end];
    if tag.len() > 1 && tag[1] != b':' {
        return None;
    }
    let content = rest.get(tag_end + 1..).unwrap_or(&[]);
    Some(Cri {
        time_ns: Some(time_ns),
        stream,
        partial,
        content,
    })
}

/// The physical line limit for a logical limit: envelopes (a CRI prefix, docker's JSON
/// escaping) make physical lines longer than their content.
pub fn physical_line_limit(max_line_bytes: usize) -> usize {
    max_line_bytes.saturating_mul(2).saturating_add(64 << 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(d: &mut Decoder, input: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        for l in input {
            match d.decode(l) {
                Decoded::Line(l) => out.push(l.text.to_string()),
                Decoded::TooLong => out.push("<too long>".into()),
                Decoded::Pending | Decoded::Blank => {}
            }
        }
        out
    }

    #[test]
    fn plain_and_crlf_and_blank() {
        let mut d = Decoder::new(100);
        assert_eq!(
            lines(&mut d, &[b"{\"a\":1}\r", b"", b"   ", b"x"]),
            vec!["{\"a\":1}", "x"]
        );
    }

    #[test]
    fn cri_full_and_partials() {
        let mut d = Decoder::new(100);
        let got = lines(
            &mut d,
            &[
                b"2026-03-17T09:14:08.896007972Z stdout P {\"a\":",
                b"2026-03-17T09:14:08.9Z stderr F warn",
                b"2026-03-17T09:14:08.91Z stdout P 1,",
                b"2026-03-17T09:14:08.92Z stdout F \"b\":2}",
                b"2026-03-17T09:14:09Z stdout F:tag1 tagged",
                b"2026-03-17T09:14:09Z stdout F ",
            ],
        );
        assert_eq!(got, vec!["warn", "{\"a\":1,\"b\":2}", "tagged"]);
    }

    #[test]
    fn cri_keeps_envelope_time_of_first_partial() {
        let mut d = Decoder::new(100);
        assert_eq!(
            d.decode(b"2026-03-17T09:14:08.5Z stdout P ab"),
            Decoded::Pending
        );
        assert!(d.is_pending());
        match d.decode(b"2026-03-17T09:14:09Z stdout F c") {
            Decoded::Line(l) => {
                assert_eq!(l.text, "abc");
                assert_eq!(l.time_ns, parse_rfc3339_nanos("2026-03-17T09:14:08.5Z"));
                assert_eq!(l.stream, Stream::Stdout);
            }
            other => panic!("{other:?}"),
        }
        assert!(!d.is_pending());
    }

    #[test]
    fn partial_split_inside_multibyte_char() {
        let s = "é🚀".as_bytes();
        let mut d = Decoder::new(100);
        let mut first = b"2026-03-17T09:14:08Z stdout P ".to_vec();
        first.extend_from_slice(&s[..1]);
        let mut second = b"2026-03-17T09:14:08Z stdout P ".to_vec();
        second.extend_from_slice(&s[1..4]);
        let mut last = b"2026-03-17T09:14:08Z stdout F ".to_vec();
        last.extend_from_slice(&s[4..]);
        assert_eq!(lines(&mut d, &[&first, &second, &last]), vec!["é🚀"]);
    }

    #[test]
    fn docker_json_file_and_partials() {
        let mut d = Decoder::new(100);
        let got = lines(
            &mut d,
            &[
                br#"{"log":"{\"model\":\"m\"}\n","stream":"stdout","time":"2026-03-17T09:14:08.1Z"}"#,
                br#"{"log":"{\"a\":","stream":"stdout","time":"2026-03-17T09:14:08.2Z"}"#,
                br#"{"log":"err\n","stream":"stderr","time":"2026-03-17T09:14:08.2Z"}"#,
                br#"{"log":"1}\n","stream":"stdout","time":"2026-03-17T09:14:08.3Z"}"#,
                br#"{"log":"\u00e8\n","stream":"stdout","time":"2026-03-17T09:14:08.3Z"}"#,
            ],
        );
        assert_eq!(got, vec!["{\"model\":\"m\"}", "err", "{\"a\":1}", "è"]);
    }

    #[test]
    fn too_long_lines() {
        let mut d = Decoder::new(10);
        let long = vec![b'x'; 11];
        assert_eq!(d.decode(&long), Decoded::TooLong);
        assert_eq!(lines(&mut d, &[b"0123456789"]), vec!["0123456789"]);
        // Joined partials over the limit: one too_long, then decoding goes on.
        let got = lines(
            &mut d,
            &[
                b"2026-03-17T09:14:08Z stdout P 012345",
                b"2026-03-17T09:14:08Z stdout P 6789ab",
                b"2026-03-17T09:14:08Z stdout F cd",
                b"2026-03-17T09:14:08Z stdout F ok",
            ],
        );
        assert_eq!(got, vec!["<too long>", "ok"]);
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let mut d = Decoder::new(100);
        let got = lines(&mut d, &[b"{\"model\":\"g\xffpt\"}"]);
        assert_eq!(got, vec!["{\"model\":\"g\u{FFFD}pt\"}"]);
    }

    #[test]
    fn not_quite_cri_is_plain() {
        let mut d = Decoder::new(100);
        let got = lines(
            &mut d,
            &[
                b"2026-03-17 09:14:01 some log",
                b"2026-03-17T09:14:08Z stdout X y",
            ],
        );
        assert_eq!(
            got,
            vec![
                "2026-03-17 09:14:01 some log",
                "2026-03-17T09:14:08Z stdout X y"
            ]
        );
    }

    #[test]
    fn flush_pending_at_end_of_file() {
        let mut d = Decoder::new(100);
        assert_eq!(
            d.decode(b"2026-03-17T09:14:08Z stdout P half"),
            Decoded::Pending
        );
        match d.flush_pending() {
            Some(Decoded::Line(l)) => assert_eq!(l.text, "half"),
            other => panic!("{other:?}"),
        }
        assert!(d.flush_pending().is_none());
    }
}
