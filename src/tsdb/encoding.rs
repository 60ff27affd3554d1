//! The byte-level encodings every TSDB file shares: Go's `encoding/binary` varints (LEB128,
//! zig-zag for signed), big-endian fixed-width integers, CRC32-Castagnoli (SSE4.2's `crc32`
//! instruction where the CPU has it, slice-by-8 tables elsewhere), and the content hash the
//! block ULIDs take their entropy from.
//!
//! Owns: these encodings, bit-exact with Go's (`encoding/binary.PutUvarint`/`PutVarint`,
//! `hash/crc32` with `crc32.Castagnoli`), as `tsdb/encoding/encoding.go` of Prometheus v2.53.3
//! (commit 1491d29fb1e8f8acbab29fd54fd4ce9be2cbd7bc) uses them. Must not know about any
//! file's layout. Pure, no I/O.

/// Appends `x` as Go's `binary.PutUvarint` does: 7 bits a byte, low first, high bit = more.
pub fn put_uvarint(out: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        out.push((x as u8) | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

/// Appends `x` as Go's `binary.PutVarint` does: zig-zag, then as a uvarint.
pub fn put_varint(out: &mut Vec<u8>, x: i64) {
    put_uvarint(out, zigzag(x));
}

/// Go's zig-zag mapping: 0, -1, 1, -2, … → 0, 1, 2, 3, ….
fn zigzag(x: i64) -> u64 {
    ((x as u64) << 1) ^ ((x >> 63) as u64)
}

/// How many bytes `put_uvarint(x)` appends.
pub fn uvarint_len(x: u64) -> usize {
    let bits = 64 - (x | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// The most bytes one varint takes.
pub const MAX_VARINT_LEN: usize = 10;

/// Writes varints and bytes into a slice the caller has made room in (at most
/// [`MAX_VARINT_LEN`] a varint), with a cursor: no capacity check and length update per byte
/// as `Vec::push` makes, for encoders of many small fields (an index has a dozen varints a
/// series, tens of millions over a month). Writing past the room is a bug of the caller's
/// bound, and panics.
pub struct SliceWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> SliceWriter<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        SliceWriter { buf, pos: 0 }
    }

    /// The bytes written.
    pub fn written(&self) -> &[u8] {
        &self.buf[..self.pos]
    }

    /// As [`put_uvarint`].
    pub fn uvarint(&mut self, mut x: u64) {
        while x >= 0x80 {
            self.buf[self.pos] = (x as u8) | 0x80;
            self.pos += 1;
            x >>= 7;
        }
        self.buf[self.pos] = x as u8;
        self.pos += 1;
    }

    /// As [`put_varint`].
    pub fn varint(&mut self, x: i64) {
        self.uvarint(zigzag(x));
    }

    /// The first `len` bytes of `word` (a caller's pre-encoded fields): all 8 are stored, so
    /// 8 bytes of room are needed.
    pub fn word_prefix(&mut self, word: &[u8; 8], len: usize) {
        self.buf[self.pos..self.pos + 8].copy_from_slice(word);
        self.pos += len.min(8);
    }
}

/// Appends a string as the index writes one (`PutUvarintStr`): its byte length, then the bytes.
pub fn put_uvarint_str(out: &mut Vec<u8>, s: &str) {
    put_uvarint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

pub fn put_be32(out: &mut Vec<u8>, x: u32) {
    out.extend_from_slice(&x.to_be_bytes());
}

pub fn put_be64(out: &mut Vec<u8>, x: u64) {
    out.extend_from_slice(&x.to_be_bytes());
}

/// Appends zero bytes until `out.len()` is a multiple of `align` (the index writer's
/// `AddPadding`).
pub fn pad_to(out: &mut Vec<u8>, align: usize) {
    let rem = out.len() % align;
    if rem != 0 {
        out.resize(out.len() + (align - rem), 0);
    }
}

/// The reflected Castagnoli polynomial (iSCSI, `crc32.Castagnoli` in Go).
const CASTAGNOLI: u32 = 0x82F6_3B78;

/// Slice-by-8 tables for CRC32-C, built at compile time.
static CRC_TABLES: [[u32; 256]; 8] = crc_tables();

const fn crc_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ CASTAGNOLI
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut s = 1;
        while s < 8 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            s += 1;
        }
        i += 1;
    }
    t
}

/// A running CRC32-Castagnoli, as Go's `crc32.New(crc32.MakeTable(crc32.Castagnoli))`.
#[derive(Clone, Copy, Debug)]
pub struct Crc32c(u32);

impl Default for Crc32c {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32c {
    pub fn new() -> Self {
        Crc32c(!0)
    }

    pub fn update(&mut self, data: &[u8]) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU supports SSE4.2 (checked just above).
            self.0 = unsafe { crc32c_sse42(self.0, data) };
            return;
        }
        self.0 = crc32c_tables(self.0, data);
    }

    pub fn finish(self) -> u32 {
        !self.0
    }
}

/// The running CRC (before the final inversion) advanced over `data`: slice-by-8 tables.
fn crc32c_tables(mut crc: u32, data: &[u8]) -> u32 {
    let t = &CRC_TABLES;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let lo = u32::from_le_bytes([w[0], w[1], w[2], w[3]]) ^ crc;
        let hi = u32::from_le_bytes([w[4], w[5], w[6], w[7]]);
        crc = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xff) as usize]
            ^ t[2][((hi >> 8) & 0xff) as usize]
            ^ t[1][((hi >> 16) & 0xff) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in words.remainder() {
        crc = (crc >> 8) ^ t[0][((crc ^ u32::from(b)) & 0xff) as usize];
    }
    crc
}

/// The same with SSE4.2's `crc32` instruction, which computes exactly CRC32-C (reflected,
/// polynomial 0x1EDC6F41) on the running value, 8 bytes at a time (little-endian).
///
/// # Safety
/// The CPU must support SSE4.2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn crc32c_sse42(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    let mut c = u64::from(crc);
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        c = _mm_crc32_u64(c, u64::from_le_bytes(b));
    }
    let mut c = c as u32;
    for &b in words.remainder() {
        c = _mm_crc32_u8(c, b);
    }
    c
}

/// CRC32-Castagnoli of `data` in one call.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut c = Crc32c::new();
    c.update(data);
    c.finish()
}

/// A 128-bit content hash for the ULIDs' entropy: two independent multiply-rotate lanes over
/// 8-byte little-endian words, each finished with MurmurHash3's 64-bit mixer, the length mixed
/// in. Not cryptographic (the input is the writer's own output, not chosen by an adversary);
/// defined here rather than taken from a crate so that the same content gives the same ULID
/// whatever a dependency does in its next release.
#[derive(Clone, Debug)]
pub struct ContentHash {
    a: u64,
    b: u64,
    len: u64,
    tail: [u8; 8],
    tail_len: usize,
}

const K1: u64 = 0x9E37_79B9_7F4A_7C15;
const K2: u64 = 0xC2B2_AE3D_27D4_EB4F;

impl Default for ContentHash {
    fn default() -> Self {
        Self::new()
    }
}

impl ContentHash {
    pub fn new() -> Self {
        ContentHash {
            a: 0x243F_6A88_85A3_08D3,
            b: 0x1319_8A2E_0370_7344,
            len: 0,
            tail: [0; 8],
            tail_len: 0,
        }
    }

    fn word(&mut self, w: u64) {
        self.a = (self.a ^ w).wrapping_mul(K1).rotate_left(29);
        self.b = (self.b ^ w.rotate_left(32))
            .wrapping_mul(K2)
            .rotate_left(31);
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len = self.len.wrapping_add(data.len() as u64);
        if self.tail_len > 0 {
            let take = (8 - self.tail_len).min(data.len());
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&data[..take]);
            self.tail_len += take;
            data = &data[take..];
            if self.tail_len < 8 {
                return;
            }
            self.word(u64::from_le_bytes(self.tail));
            self.tail_len = 0;
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.word(u64::from_le_bytes(b));
        }
        let rest = words.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    /// The 128 bits: (high lane, low lane).
    pub fn finish(mut self) -> (u64, u64) {
        let len = self.len;
        if self.tail_len > 0 {
            let mut last = [0u8; 8];
            last[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
            self.word(u64::from_le_bytes(last));
        }
        self.word(len);
        let a = fmix64(self.a ^ self.b.rotate_left(17));
        let b = fmix64(self.b ^ a);
        (a, b)
    }
}

/// MurmurHash3's 64-bit finalizer.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    k ^= k >> 33;
    k = k.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    k ^= k >> 33;
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uvarint(x: u64) -> Vec<u8> {
        let mut v = Vec::new();
        put_uvarint(&mut v, x);
        v
    }

    fn varint(x: i64) -> Vec<u8> {
        let mut v = Vec::new();
        put_varint(&mut v, x);
        v
    }

    /// Vectors as Go's `binary.PutUvarint` writes them (encoding/binary's varint_test.go
    /// values, checked by hand against LEB128).
    #[test]
    fn uvarint_matches_go_for_known_values() {
        assert_eq!(uvarint(0), [0x00]);
        assert_eq!(uvarint(1), [0x01]);
        assert_eq!(uvarint(127), [0x7f]);
        assert_eq!(uvarint(128), [0x80, 0x01]);
        assert_eq!(uvarint(300), [0xac, 0x02]);
        assert_eq!(uvarint(16_384), [0x80, 0x80, 0x01]);
        assert_eq!(
            uvarint(u64::MAX),
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
        for x in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ] {
            assert_eq!(uvarint_len(x), uvarint(x).len(), "{x}");
        }
    }

    /// The slice writer's fields are the `put_*` functions' bytes, back to back, and a word
    /// prefix stores only its length.
    #[test]
    fn the_slice_writer_writes_what_the_vec_encoders_append() {
        let mut room = [0xAAu8; 64];
        let mut w = SliceWriter::new(&mut room);
        w.uvarint(300);
        w.varint(-64);
        w.word_prefix(&[1, 2, 3, 4, 5, 6, 7, 8], 3);
        w.uvarint(u64::MAX);
        let mut want = uvarint(300);
        want.extend(varint(-64));
        want.extend([1, 2, 3]);
        want.extend(uvarint(u64::MAX));
        assert_eq!(w.written(), &want[..]);
    }

    #[test]
    fn varint_is_zigzag_then_uvarint_as_in_go() {
        assert_eq!(varint(0), [0x00]);
        assert_eq!(varint(-1), [0x01]);
        assert_eq!(varint(1), [0x02]);
        assert_eq!(varint(-2), [0x03]);
        assert_eq!(varint(63), [0x7e]);
        assert_eq!(varint(-64), [0x7f]);
        assert_eq!(varint(64), [0x80, 0x01]);
        assert_eq!(varint(i64::MAX), uvarint(u64::MAX - 1));
        assert_eq!(varint(i64::MIN), uvarint(u64::MAX));
        // A millisecond timestamp of 2026: 1_795_651_200_000 → zig-zag 3_591_302_400_000.
        assert_eq!(varint(1_795_651_200_000), uvarint(3_591_302_400_000));
    }

    #[test]
    fn crc32c_of_the_standard_check_string_is_e3069283() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        // RFC 3720 B.4: 32 bytes of zeros, of 0xff, and an ascending run.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
    }

    #[test]
    fn crc32c_in_pieces_equals_crc32c_at_once() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for cut in [0, 1, 7, 8, 9, 500, 999, 1000] {
            let mut c = Crc32c::new();
            c.update(&data[..cut]);
            c.update(&data[cut..]);
            assert_eq!(c.finish(), crc32c(&data), "cut at {cut}");
        }
    }

    #[test]
    fn the_crc_instruction_and_the_tables_agree() {
        let data: Vec<u8> = (0..300u32).map(|i| (i * 31 + 7) as u8).collect();
        for len in [0, 1, 7, 8, 9, 16, 63, 300] {
            let soft = !crc32c_tables(!0, &data[..len]);
            assert_eq!(crc32c(&data[..len]), soft, "{len} bytes");
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("sse4.2") {
                // SAFETY: the CPU supports SSE4.2 (checked just above).
                let hard = !unsafe { crc32c_sse42(!0, &data[..len]) };
                assert_eq!(hard, soft, "{len} bytes");
            }
        }
    }

    #[test]
    fn content_hash_is_independent_of_how_the_input_is_split() {
        let data: Vec<u8> = (0..100u32).map(|i| (i * 13) as u8).collect();
        let mut whole = ContentHash::new();
        whole.update(&data);
        let whole = whole.finish();
        for cut in [0, 1, 3, 8, 15, 64, 99, 100] {
            let mut h = ContentHash::new();
            h.update(&data[..cut]);
            h.update(&data[cut..]);
            assert_eq!(h.finish(), whole, "cut at {cut}");
        }
    }

    #[test]
    fn content_hash_tells_apart_inputs_that_differ_in_one_bit_or_in_length() {
        let mut seen = std::collections::HashSet::new();
        let base = vec![0u8; 24];
        for len in 0..24 {
            let mut h = ContentHash::new();
            h.update(&base[..len]);
            assert!(seen.insert(h.finish()), "length {len}");
        }
        for bit in 0..(24 * 8) {
            let mut d = base.clone();
            d[bit / 8] ^= 1 << (bit % 8);
            let mut h = ContentHash::new();
            h.update(&d);
            assert!(seen.insert(h.finish()), "bit {bit}");
        }
    }

    #[test]
    fn padding_reaches_the_next_multiple_and_no_further() {
        let mut v = vec![1u8; 5];
        pad_to(&mut v, 16);
        assert_eq!(v.len(), 16);
        pad_to(&mut v, 16);
        assert_eq!(v.len(), 16);
        assert!(v[5..].iter().all(|&b| b == 0));
    }
}
