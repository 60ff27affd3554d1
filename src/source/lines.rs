//! Splits a byte stream into physical lines with a fixed, reused buffer.
//!
//! Owns: the read buffer, `\n` search (`memchr`), absolute end offsets, and the physical line
//! limit. A line longer than the limit is not buffered whole: its bytes are dropped as they
//! arrive and it is reported once as [`Line::TooLong`], so memory stays bounded whatever the
//! input. Nothing is allocated per line.

use std::io::{self, Read};

/// Initial (and usual) buffer size; it grows only to hold a line longer than this, up to the
/// limit, and shrinks back afterwards.
const BUF_SIZE: usize = 1 << 17;

/// One physical line.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// The line without its `\n`; `end` is the absolute offset just past the `\n` (or past
    /// the last byte, for a final line without one).
    Complete { bytes: &'a [u8], end: u64 },
    /// A line longer than the limit, skipped; `end` as above.
    TooLong { end: u64 },
}

/// What to do with bytes after the last `\n` when the input ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtEof {
    /// A finished file (replay): the unterminated last line is a line.
    EmitPartial,
    /// A file still being written (tail): keep it until its `\n` arrives.
    KeepPartial,
}

pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Absolute offset of `buf[0]`.
    base: u64,
    max_line: usize,
    /// Dropping the rest of a line that passed the limit.
    skipping: bool,
    eof: bool,
    at_eof: AtEof,
    bytes_read: u64,
}

impl<R: Read> LineReader<R> {
    /// `offset` is the absolute position of the first byte `inner` will return.
    pub fn new(inner: R, offset: u64, max_line: usize, at_eof: AtEof) -> Self {
        Self {
            inner,
            buf: vec![0; BUF_SIZE.min(max_line.saturating_add(1)).max(4096)],
            start: 0,
            end: 0,
            base: offset,
            max_line,
            skipping: false,
            eof: false,
            at_eof,
            bytes_read: 0,
        }
    }

    /// Bytes read from `inner` so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Offset just past the last line handed out: where a restart would resume.
    pub fn offset(&self) -> u64 {
        self.base + self.start as u64
    }

    /// Bytes buffered after the last complete line (a line still being written).
    pub fn pending_bytes(&self) -> usize {
        self.end - self.start
    }

    /// Whether a complete line is buffered, not handed out yet (a caller's budget ended the
    /// read before it): the bytes are out of the file, the line is not.
    pub fn holds_line(&self) -> bool {
        memchr::memchr(b'\n', &self.buf[self.start..self.end]).is_some()
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The inner reader, e.g. to reposition it; call [`LineReader::reset`] after.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Forgets buffered bytes and restarts at `offset` (after a truncation or seek).
    pub fn reset(&mut self, offset: u64) {
        self.start = 0;
        self.end = 0;
        self.base = offset;
        self.skipping = false;
        self.eof = false;
    }

    /// Clears the end-of-input mark so a tailer can read bytes appended since.
    pub fn clear_eof(&mut self) {
        self.eof = false;
    }

    /// The next physical line, or `None` at the end of the input (for now, when tailing).
    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        let mut searched = 0; // bytes of buf[start..end] known to hold no '\n'
        loop {
            let hay = &self.buf[self.start + searched..self.end];
            if let Some(i) = memchr::memchr(b'\n', hay) {
                let line_start = self.start;
                let nl = self.start + searched + i;
                self.start = nl + 1;
                let end = self.base + self.start as u64;
                if std::mem::take(&mut self.skipping) || nl - line_start > self.max_line {
                    return Ok(Some(Line::TooLong { end }));
                }
                return Ok(Some(Line::Complete {
                    bytes: &self.buf[line_start..nl],
                    end,
                }));
            }
            searched = self.end - self.start;
            if self.skipping || searched > self.max_line {
                // Too long: drop what we have, keep dropping until the '\n'.
                self.skipping = true;
                self.start = self.end;
                searched = 0;
            }
            if self.eof {
                return Ok(self.finish());
            }
            self.fill()?;
        }
    }

    fn finish(&mut self) -> Option<Line<'_>> {
        if self.at_eof == AtEof::KeepPartial {
            return None;
        }
        if self.skipping {
            self.skipping = false;
            self.start = self.end;
            return Some(Line::TooLong {
                end: self.base + self.end as u64,
            });
        }
        if self.start == self.end {
            return None;
        }
        let line_start = self.start;
        self.start = self.end;
        Some(Line::Complete {
            bytes: &self.buf[line_start..self.end],
            end: self.base + self.end as u64,
        })
    }

    /// Reads more bytes, first moving unconsumed bytes to the front (or growing the buffer
    /// for a long line).
    fn fill(&mut self) -> io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.base += self.start as u64;
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let grown = (self.buf.len() * 2)
                .min(self.max_line.saturating_add(2))
                .max(self.end + 1);
            self.buf.resize(grown, 0);
        } else if self.end < BUF_SIZE / 2 && self.buf.len() > BUF_SIZE {
            // A long line is gone: give the memory back.
            self.buf.truncate(BUF_SIZE);
            self.buf.shrink_to_fit();
        }
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.end += n;
                    self.bytes_read += n as u64;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(input: &[u8], max: usize, at_eof: AtEof) -> Vec<(String, u64)> {
        // A reader that returns 3 bytes at a time exercises refills mid-line.
        struct Slow<'a>(&'a [u8]);
        impl Read for Slow<'_> {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(3).min(out.len());
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut r = LineReader::new(Slow(input), 100, max, at_eof);
        let mut out = Vec::new();
        while let Some(l) = r.next_line().unwrap() {
            out.push(match l {
                Line::Complete { bytes, end } => (String::from_utf8_lossy(bytes).into_owned(), end),
                Line::TooLong { end } => ("<too long>".into(), end),
            });
        }
        out
    }

    #[test]
    fn splits_with_absolute_offsets() {
        let got = collect(b"ab\n\ncde\nf", 100, AtEof::EmitPartial);
        assert_eq!(
            got,
            vec![
                ("ab".into(), 103),
                ("".into(), 104),
                ("cde".into(), 108),
                ("f".into(), 109)
            ]
        );
    }

    #[test]
    fn keeps_partial_when_tailing() {
        let got = collect(b"ab\ncd", 100, AtEof::KeepPartial);
        assert_eq!(got, vec![("ab".into(), 103)]);
    }

    #[test]
    fn long_lines_are_skipped_with_bounded_memory() {
        let mut input = b"ok\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 50_000));
        input.extend_from_slice(b"\nafter\n");
        input.extend(std::iter::repeat_n(b'y', 20));
        let got = collect(&input, 10, AtEof::EmitPartial);
        assert_eq!(
            got,
            vec![
                ("ok".into(), 103),
                ("<too long>".into(), 103 + 50_001),
                ("after".into(), 103 + 50_007),
                ("<too long>".into(), 103 + 50_027),
            ]
        );
        // Exactly at the limit is fine.
        assert_eq!(
            collect(b"0123456789\n", 10, AtEof::EmitPartial)[0].0,
            "0123456789"
        );
    }

    #[test]
    fn lines_longer_than_the_initial_buffer() {
        let long = vec![b'z'; BUF_SIZE * 2 + 17];
        let mut input = long.clone();
        input.push(b'\n');
        input.extend_from_slice(b"tail\n");
        let mut r = LineReader::new(&input[..], 0, 4 * BUF_SIZE, AtEof::EmitPartial);
        match r.next_line().unwrap() {
            Some(Line::Complete { bytes, end }) => {
                assert_eq!(bytes, &long[..]);
                assert_eq!(end, long.len() as u64 + 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            r.next_line().unwrap(),
            Some(Line::Complete { bytes: b"tail", .. })
        ));
        assert!(r.next_line().unwrap().is_none());
    }
}
