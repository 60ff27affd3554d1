//! One reader's place in one tailed file, and the facts every reader of a tailed file shares:
//! what a file's identity is, how a descriptor is shared and counted, which offset may be
//! saved, and when a file counts as truncated.
//!
//! Owns: [`FileId`] and [`FileIdentity`] (device, inode, fingerprint of the first bytes), the
//! [`SharedFile`] descriptor (one per file, whoever reads it; counted while open so the
//! registry can keep a ceiling), and [`TailCursor`]: positional line reading, the envelope
//! decoder, and the commit rule (an offset is committed only while no partial line is
//! pending, so a resumed reader never counts half a line). Both the metering reader and the
//! Loki forwarder read through a `TailCursor`, so they cannot disagree on these rules.
//! Must not decide which files are read (the registry does) nor what a line means (parse).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::lines::{AtEof, Line, LineReader};
use crate::decode::{Decoded, Decoder};

/// Bytes hashed for a file's fingerprint (fewer while the file is shorter).
pub const FINGERPRINT_BYTES: usize = 256;

/// Device and inode: the key of a file while it exists. An inode can be reused after a
/// delete, so [`FileIdentity`] adds a fingerprint before an offset is trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(meta: &std::fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// A file's identity: device and inode, plus its birth time (where the file system keeps
/// one) and a fingerprint of its first bytes, so a reused inode is not mistaken for the old
/// file. The birth time settles what the fingerprint cannot: a file that was still empty.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    /// Hash of the first `fingerprint_len` bytes (FNV-1a, 64 bit).
    pub fingerprint: u64,
    pub fingerprint_len: u32,
    /// Creation time (`statx` btime) in ns since the epoch, when the file system has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub born_ns: Option<i64>,
}

impl FileIdentity {
    /// Birth time from `statx`, where the file system keeps one.
    pub fn born_ns(meta: &std::fs::Metadata) -> Option<i64> {
        let t = meta.created().ok()?;
        let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
        i64::try_from(d.as_nanos()).ok()
    }

    /// The identity of a file seen but not opened: device, inode and birth time; the
    /// fingerprint (of nothing yet) is taken when it is opened.
    pub fn unopened(meta: &std::fs::Metadata) -> FileIdentity {
        FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            fingerprint: fingerprint(&[]),
            fingerprint_len: 0,
            born_ns: Self::born_ns(meta),
        }
    }

    pub fn id(&self) -> FileId {
        FileId {
            dev: self.dev,
            ino: self.ino,
        }
    }

    /// Reads the identity of an open file.
    pub fn read(file: &File) -> io::Result<FileIdentity> {
        let meta = file.metadata()?;
        let (fingerprint, len) = read_fingerprint(file, FINGERPRINT_BYTES)?;
        Ok(FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            fingerprint,
            fingerprint_len: len as u32,
            born_ns: Self::born_ns(&meta),
        })
    }

    /// Whether `file` is this identity: same device and inode, the same birth time where
    /// both are known, and the same first bytes. The one rule every reader uses before it
    /// trusts a saved offset.
    pub fn matches(&self, file: &File) -> bool {
        self.check(file).unwrap_or(false)
    }

    /// [`FileIdentity::matches`], telling "cannot read it now" (an error: retry) from "not
    /// this file" (`false`), so a transient read error is never taken for a rewrite.
    pub fn check(&self, file: &File) -> io::Result<bool> {
        let meta = file.metadata()?;
        if (meta.dev(), meta.ino()) != (self.dev, self.ino) {
            return Ok(false);
        }
        if let (Some(saved), Some(now)) = (self.born_ns, Self::born_ns(&meta)) {
            if saved != now {
                return Ok(false);
            }
        }
        let (fp, len) = read_fingerprint(file, self.fingerprint_len as usize)?;
        Ok(len == self.fingerprint_len as usize && fp == self.fingerprint)
    }

    /// Extends a short fingerprint once the file has grown past it (a file created empty is
    /// fingerprinted on its first bytes, then on more as they arrive).
    pub fn refresh(&mut self, file: &File, size: u64) {
        if (self.fingerprint_len as usize) < FINGERPRINT_BYTES && size > self.fingerprint_len as u64
        {
            if let Ok((fp, len)) = read_fingerprint(file, FINGERPRINT_BYTES) {
                self.fingerprint = fp;
                self.fingerprint_len = len as u32;
            }
        }
    }
}

/// FNV-1a over `bytes`: a cheap, stable fingerprint (not a security measure).
pub fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn read_fingerprint(file: &File, n: usize) -> io::Result<(u64, usize)> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match file.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((fingerprint(&buf[..got]), got))
}

/// Counts the descriptors of tailed files that are open, whoever holds them, and how many
/// more another reader (the Loki forwarder) is waiting for: the registry, which keeps the
/// ceiling, closes that many idle files for it.
#[derive(Clone, Debug, Default)]
pub struct DescriptorCount(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    open: AtomicUsize,
    wanted: AtomicUsize,
}

impl DescriptorCount {
    pub fn open(&self) -> usize {
        self.0.open.load(Ordering::Relaxed)
    }

    /// Descriptors another reader is waiting for.
    pub fn wanted(&self) -> usize {
        self.0.wanted.load(Ordering::Relaxed)
    }

    pub fn set_wanted(&self, n: usize) {
        self.0.wanted.store(n, Ordering::Relaxed);
    }
}

struct CountedFile {
    file: File,
    count: DescriptorCount,
}

impl Drop for CountedFile {
    fn drop(&mut self) {
        self.count.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The one descriptor of a tailed file, shared by its readers (positional reads, so no
/// reader moves another's position). Closed when the last reader drops it.
#[derive(Clone)]
pub struct SharedFile(Arc<CountedFile>);

impl std::fmt::Debug for SharedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SharedFile").field(&self.0.file).finish()
    }
}

impl SharedFile {
    pub fn open(path: &Path, count: &DescriptorCount) -> io::Result<SharedFile> {
        Ok(SharedFile::new(File::open(path)?, count))
    }

    /// Takes an open file, counting its descriptor until the last reader drops it.
    pub fn new(file: File, count: &DescriptorCount) -> SharedFile {
        count.0.open.fetch_add(1, Ordering::Relaxed);
        SharedFile(Arc::new(CountedFile {
            file,
            count: count.clone(),
        }))
    }

    pub fn file(&self) -> &File {
        &self.0.file
    }

    /// Current size through the descriptor (valid after a rename or delete).
    pub fn size(&self) -> io::Result<u64> {
        Ok(self.0.file.metadata()?.len())
    }

    /// Links to the file: 0 once it is deleted (it can never come back).
    pub fn links(&self) -> io::Result<u64> {
        Ok(self.0.file.metadata()?.nlink())
    }
}

/// A `Read` over a shared descriptor at its own position (`pread`).
pub struct PositionalReader {
    file: SharedFile,
    pos: u64,
}

impl Read for PositionalReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.file().read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Why a file must be read again from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Truncation {
    /// Shorter than what was read (copytruncate).
    Shrunk { size: u64 },
    /// Its first bytes changed (rewritten in place).
    Rewritten,
}

/// One reader's place in one file: positional line reader, envelope decoder, committed
/// offset.
///
/// Invariant: `committed` is the end of a physical line after which no partial line was
/// pending, so every logical line before it has been handed out whole and none after it
/// has; resuming at `committed` with a fresh decoder hands out exactly the rest.
pub struct TailCursor {
    file: SharedFile,
    reader: LineReader<PositionalReader>,
    decoder: Decoder,
    committed: u64,
    /// Physical lines handed out since the cursor was (re)started, for messages.
    line_no: u64,
    max_line_bytes: usize,
}

impl TailCursor {
    /// Starts at `offset`, which must be a committed offset (a line boundary with no
    /// partial pending).
    pub fn new(file: SharedFile, offset: u64, max_line_bytes: usize) -> Self {
        TailCursor {
            reader: Self::reader(&file, offset, max_line_bytes),
            file,
            decoder: Decoder::new(max_line_bytes),
            committed: offset,
            line_no: 0,
            max_line_bytes,
        }
    }

    fn reader(file: &SharedFile, offset: u64, max: usize) -> LineReader<PositionalReader> {
        LineReader::new(
            PositionalReader {
                file: file.clone(),
                pos: offset,
            },
            offset,
            crate::decode::physical_line_limit(max),
            AtEof::KeepPartial,
        )
    }

    pub fn file(&self) -> &SharedFile {
        &self.file
    }

    /// Every logical line before this offset has been handed out; none after it.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// How far the file has been read (including a line still being written).
    pub fn read_to(&self) -> u64 {
        self.reader.offset() + self.reader.pending_bytes() as u64
    }

    /// Bytes read from the file by this cursor.
    pub fn bytes_read(&self) -> u64 {
        self.reader.bytes_read()
    }

    /// Whether everything in the file has been handed out (but a line still being written).
    /// Bytes read from the file are not enough: a read that ended on its budget leaves
    /// complete lines in the buffer, and a file closed or let go then would never hand them
    /// out (found by the forwarder's model test).
    pub fn at_end(&self) -> bool {
        !self.reader.holds_line() && self.file.size().is_ok_and(|len| self.read_to() >= len)
    }

    /// Hands out up to `budget` lines to `on_line(line_no, decoded, end)`; a physical line
    /// over the limit arrives as [`Decoded::TooLong`]. Returns how many physical lines were
    /// read; an I/O error ends the call (what was read before it stays handed out).
    pub fn read<F>(&mut self, budget: usize, mut on_line: F) -> io::Result<usize>
    where
        F: FnMut(u64, Decoded<'_>),
    {
        let mut n = 0;
        while n < budget {
            let line = match self.reader.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => {
                    self.reader.clear_eof();
                    break;
                }
                Err(e) => {
                    self.reader.clear_eof();
                    return Err(e);
                }
            };
            n += 1;
            self.line_no += 1;
            let end = match line {
                Line::Complete { bytes, end } => {
                    on_line(self.line_no, self.decoder.decode(bytes));
                    end
                }
                Line::TooLong { end } => {
                    on_line(self.line_no, Decoded::TooLong);
                    end
                }
            };
            if !self.decoder.is_pending() {
                self.committed = end;
            }
        }
        Ok(n)
    }

    /// The one truncation rule: the file is shorter than what was read, or its first bytes
    /// are no longer those of `identity`.
    pub fn truncation(&self, identity: &FileIdentity) -> io::Result<Option<Truncation>> {
        let size = self.file.size()?;
        let read_to = self.read_to();
        if size < read_to.max(self.committed) {
            return Ok(Some(Truncation::Shrunk { size }));
        }
        let (fp, len) = read_fingerprint(self.file.file(), identity.fingerprint_len as usize)?;
        if len < identity.fingerprint_len as usize || fp != identity.fingerprint {
            return Ok(Some(Truncation::Rewritten));
        }
        Ok(None)
    }

    /// Starts again at `offset` (0 after a truncation) with a fresh decoder.
    pub fn restart(&mut self, offset: u64) {
        self.reader = Self::reader(&self.file, offset, self.max_line_bytes);
        self.decoder.reset();
        self.committed = offset;
        self.line_no = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn commits_only_past_complete_logical_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let p1 = "2026-11-30T10:00:00.000000000Z stdout P {\"a\":\n";
        let f1 = "2026-11-30T10:00:00.000000000Z stdout F 1}\n";
        std::fs::write(&path, format!("{p1}{f1}")).unwrap();
        let count = DescriptorCount::default();
        let file = SharedFile::open(&path, &count).unwrap();
        assert_eq!(count.open(), 1);
        let mut c = TailCursor::new(file, 0, 1 << 20);
        let mut seen = Vec::new();
        c.read(1, |_, d| seen.push(format!("{d:?}"))).unwrap();
        assert_eq!(c.committed(), 0, "a partial is pending");
        c.read(10, |_, d| {
            if let Decoded::Line(l) = d {
                seen.push(l.text.to_string())
            }
        })
        .unwrap();
        assert_eq!(c.committed(), (p1.len() + f1.len()) as u64);
        assert_eq!(seen.last().map(String::as_str), Some("{\"a\":1}"));
        drop(c);
        assert_eq!(
            count.open(),
            0,
            "the descriptor is closed with its last reader"
        );
    }

    #[test]
    fn a_read_that_ended_on_its_budget_is_not_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, "one\ntwo\nthree\npart").unwrap();
        let file = SharedFile::open(&path, &DescriptorCount::default()).unwrap();
        let mut c = TailCursor::new(file, 0, 1 << 20);
        assert_eq!(c.read(1, |_, _| {}).unwrap(), 1);
        assert_eq!(c.read_to(), 18, "every byte is out of the file");
        assert!(!c.at_end(), "but two lines are still to be handed out");
        assert_eq!(c.read(10, |_, _| {}).unwrap(), 2);
        assert!(c.at_end(), "a line still being written does not count");
    }

    #[test]
    fn truncation_rules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        std::fs::write(&path, "line one\nline two\n").unwrap();
        let file = SharedFile::open(&path, &DescriptorCount::default()).unwrap();
        let id = FileIdentity::read(file.file()).unwrap();
        assert!(id.matches(file.file()));
        let mut c = TailCursor::new(file, 0, 1 << 20);
        c.read(10, |_, _| {}).unwrap();
        assert_eq!(c.truncation(&id).unwrap(), None);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"x\n")
            .unwrap();
        assert_eq!(c.truncation(&id).unwrap(), None, "growth is not truncation");
        std::fs::write(&path, "LINE ONE\nline two\nx\n").unwrap();
        assert_eq!(c.truncation(&id).unwrap(), Some(Truncation::Rewritten));
        std::fs::write(&path, "short\n").unwrap();
        assert_eq!(
            c.truncation(&id).unwrap(),
            Some(Truncation::Shrunk { size: 6 })
        );
        c.restart(0);
        assert_eq!(c.committed(), 0);
    }
}
