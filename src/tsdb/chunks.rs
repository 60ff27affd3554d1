//! A block's `chunks/` directory: numbered segment files (`000001`, `000002`, …) of chunk
//! records, and the references the index uses to find them.
//!
//! Owns: the segment header, the chunk record (`len` uvarint, encoding byte, data, CRC32-C of
//! encoding and data), where segments are cut, and chunk references (segment index, counted
//! from 0 for `000001`, in the upper 32 bits; the record's byte offset in the lower 32).
//! Must not know what is in a chunk (that is `xor`) nor which series it belongs to.
//!
//! Read from Prometheus v2.53.3 (commit 1491d29fb1e8f8acbab29fd54fd4ce9be2cbd7bc):
//! `tsdb/docs/format/chunks.md`, `tsdb/chunks/chunks.go` (`cutSegmentFile`,
//! `Writer.WriteChunks`/`writeChunks`, `NewBlockChunkRef`, `Meta.writeHash`,
//! `DefaultChunkSegmentSize`, `segmentFile`'s `%0.6d` names).

use super::encoding::{put_uvarint, uvarint_len, Crc32c};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// `MagicChunks`.
pub const MAGIC: u32 = 0x85BD_40DD;
/// Magic, format version 1, 3 bytes of padding.
pub const SEGMENT_HEADER: [u8; 8] = [0x85, 0xBD, 0x40, 0xDD, 1, 0, 0, 0];
/// `DefaultChunkSegmentSize`: 512 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 512 * 1024 * 1024;
/// `chunkenc.EncXOR`.
pub const ENCODING_XOR: u8 = 1;

/// Bytes a chunk record of `data_len` data bytes takes in a segment.
pub fn record_len(data_len: usize) -> u64 {
    (uvarint_len(data_len as u64) + 1 + data_len + 4) as u64
}

/// Where the next chunk goes: the same rule drives the layout pass (references for the index)
/// and the write pass, so both agree by construction.
#[derive(Debug, Clone)]
pub struct Layout {
    segment_size: u64,
    /// Segment index (0 for `000001`); `None` before the first chunk.
    seq: Option<u64>,
    offset: u64,
}

impl Layout {
    /// A layout whose segments stay within `segment_size` bytes (a chunk bigger than a whole
    /// segment gets one of its own, as Prometheus does). The size must leave room for the
    /// header and keep offsets within 32 bits.
    pub fn new(segment_size: u64) -> io::Result<Layout> {
        if segment_size <= SEGMENT_HEADER.len() as u64 || segment_size > u64::from(u32::MAX) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("chunk segment size {segment_size} is not within 9 B .. 4 GiB"),
            ));
        }
        Ok(Layout {
            segment_size,
            seq: None,
            offset: 0,
        })
    }

    /// The reference of the next chunk, of `data_len` bytes, and whether it opens a segment.
    pub fn place(&mut self, data_len: usize) -> io::Result<(u64, bool)> {
        let len = record_len(data_len);
        let header = SEGMENT_HEADER.len() as u64;
        let new_segment = match self.seq {
            None => true,
            Some(_) => self.offset > header && self.offset.saturating_add(len) > self.segment_size,
        };
        if new_segment {
            self.seq = Some(self.seq.map_or(0, |s| s.saturating_add(1)));
            self.offset = header;
        }
        let seq = self.seq.unwrap_or(0);
        if self.offset > u64::from(u32::MAX) || seq > u64::from(u32::MAX) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "chunk reference beyond 32 bits of segment or offset",
            ));
        }
        let r = (seq << 32) | self.offset;
        self.offset = self.offset.saturating_add(len);
        Ok((r, new_segment))
    }
}

/// The file name of segment `seq` (0-based): `000001` for 0.
pub fn segment_name(seq: u64) -> String {
    format!("{:06}", seq.saturating_add(1))
}

/// Writes chunk records into segment files under one directory, in order.
pub struct SegmentWriter {
    dir: PathBuf,
    layout: Layout,
    current: Option<(BufWriter<File>, PathBuf)>,
    scratch: Vec<u8>,
    fsync: bool,
    /// Segment files written, each flushed and fsynced when the next one opens or at
    /// [`SegmentWriter::finish`].
    pub files: Vec<PathBuf>,
    pub bytes: u64,
}

impl SegmentWriter {
    /// A writer of segments of at most `segment_size` bytes into `dir`, each fsynced when
    /// complete if `fsync`.
    pub fn new(dir: &Path, segment_size: u64, fsync: bool) -> io::Result<SegmentWriter> {
        Ok(SegmentWriter {
            dir: dir.to_path_buf(),
            layout: Layout::new(segment_size)?,
            current: None,
            scratch: Vec::with_capacity(16),
            fsync,
            files: Vec::new(),
            bytes: 0,
        })
    }

    fn close_current(&mut self) -> io::Result<()> {
        if let Some((w, path)) = self.current.take() {
            let f = w.into_inner().map_err(|e| e.into_error())?;
            if self.fsync {
                f.sync_all()?;
            }
            self.files.push(path);
        }
        Ok(())
    }

    /// Writes one XOR chunk's data and returns its reference; `expect` is the reference the
    /// layout pass gave it (a mismatch is an internal error, reported rather than written).
    pub fn write(&mut self, data: &[u8], expect: u64) -> io::Result<u64> {
        let (r, new_segment) = self.layout.place(data.len())?;
        if r != expect {
            return Err(io::Error::other(format!(
                "chunk reference {r:#x} differs from the planned {expect:#x}"
            )));
        }
        if new_segment || self.current.is_none() {
            self.close_current()?;
            let path = self.dir.join(segment_name(r >> 32));
            let mut w = BufWriter::with_capacity(1 << 20, File::create(&path)?);
            w.write_all(&SEGMENT_HEADER)?;
            self.bytes = self.bytes.saturating_add(SEGMENT_HEADER.len() as u64);
            self.current = Some((w, path));
        }
        let Some((w, _)) = self.current.as_mut() else {
            return Err(io::Error::other("no open chunk segment"));
        };
        // The record whole, then one write: length, encoding, data, CRC of encoding and data.
        self.scratch.clear();
        put_uvarint(&mut self.scratch, data.len() as u64);
        let encoding_at = self.scratch.len();
        self.scratch.push(ENCODING_XOR);
        self.scratch.extend_from_slice(data);
        let mut crc = Crc32c::new();
        crc.update(&self.scratch[encoding_at..]);
        self.scratch.extend_from_slice(&crc.finish().to_be_bytes());
        w.write_all(&self.scratch)?;
        self.bytes = self.bytes.saturating_add(record_len(data.len()));
        Ok(r)
    }

    /// Flushes (and fsyncs, if asked) the last segment.
    pub fn finish(mut self) -> io::Result<(Vec<PathBuf>, u64)> {
        self.close_current()?;
        Ok((self.files, self.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_chunk_sits_after_the_eight_byte_header_of_segment_zero() {
        let mut l = Layout::new(DEFAULT_SEGMENT_SIZE).unwrap();
        assert_eq!(l.place(100).unwrap(), (8, true));
        // 1 byte of length, 1 of encoding, 100 of data, 4 of CRC.
        assert_eq!(l.place(10).unwrap(), (8 + 106, false));
    }

    #[test]
    fn a_chunk_that_would_pass_the_segment_size_opens_the_next_segment() {
        // 8 header + 2 records of 106 = 220; a third would end at 326 > 300.
        let mut l = Layout::new(300).unwrap();
        assert_eq!(l.place(100).unwrap(), (8, true));
        assert_eq!(l.place(100).unwrap(), (114, false));
        assert_eq!(l.place(100).unwrap(), ((1 << 32) | 8, true));
        // A chunk larger than a segment still gets written, alone in its segment.
        assert_eq!(l.place(1000).unwrap(), ((2 << 32) | 8, true));
        assert_eq!(l.place(1).unwrap(), ((3 << 32) | 8, true));
    }

    #[test]
    fn segment_files_are_numbered_from_000001() {
        assert_eq!(segment_name(0), "000001");
        assert_eq!(segment_name(41), "000042");
    }

    #[test]
    fn a_record_is_length_encoding_data_and_crc32c_of_encoding_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = SegmentWriter::new(dir.path(), DEFAULT_SEGMENT_SIZE, true).unwrap();
        let data = [0x00, 0x01, 0xd0, 0x0f, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0];
        assert_eq!(w.write(&data, 8).unwrap(), 8);
        let (files, bytes) = w.finish().unwrap();
        assert_eq!(files.len(), 1);
        let got = std::fs::read(&files[0]).unwrap();
        assert_eq!(bytes, got.len() as u64);
        assert_eq!(&got[..8], &[0x85, 0xBD, 0x40, 0xDD, 1, 0, 0, 0]);
        assert_eq!(got[8], 12);
        assert_eq!(got[9], 1);
        assert_eq!(&got[10..22], &data);
        let mut enc_data = vec![1u8];
        enc_data.extend_from_slice(&data);
        let crc = crate::tsdb::encoding::crc32c(&enc_data);
        assert_eq!(&got[22..26], &crc.to_be_bytes());
        assert_eq!(got.len(), 26);
    }

    #[test]
    fn segment_sizes_beyond_32_bit_offsets_or_below_the_header_are_refused() {
        assert!(Layout::new(8).is_err());
        assert!(Layout::new(u64::from(u32::MAX) + 1).is_err());
        assert!(Layout::new(9).is_ok());
    }
}
