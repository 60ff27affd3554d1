//! The XOR ("Gorilla") float chunk, bit for bit as Prometheus's `chunkenc.XORChunk` appends it.
//!
//! Owns: the chunk's data bytes (the 2-byte big-endian sample count, then the bit stream).
//! Must not know where chunks are stored (that is `chunks`) nor cut chunks (the caller
//! decides when one is full). Pure, no I/O.
//!
//! Read from Prometheus v2.53.3 (commit 1491d29fb1e8f8acbab29fd54fd4ce9be2cbd7bc):
//! `tsdb/chunkenc/xor.go` (`xorAppender.Append`, `bitRange`, `xorWrite`),
//! `tsdb/chunkenc/bstream.go` (`writeBit`, `writeByte`, `writeBits`: most significant bit
//! first) and `tsdb/docs/format/chunks.md` ("XOR chunk data").
//!
//! - first sample: its timestamp as a varint, its value's 64 bits;
//! - second: the timestamp delta as a uvarint, the value XOR-encoded;
//! - then: the delta of deltas in the buckets `0` (0), `10`+14 bits, `110`+17, `1110`+20,
//!   `1111`+64 (the ranges of `bitRange`, one wider on the positive side), and the value
//!   XOR-encoded: `0` if equal, else `1`, then `0` + the meaningful bits when they fit the
//!   previous leading/trailing-zero window, or `1` + 5 bits of leading zeros (at most 31) + 6
//!   bits of significant-bit count (64 written as 0) + the bits.

/// Samples per chunk at most: what Prometheus's head cuts at, and so what its readers and
/// compactor are used to.
pub const MAX_SAMPLES_PER_CHUNK: usize = 120;

/// A stream of bits, most significant first, in bytes.
///
/// Go's `bstream` writer, operation for operation: besides the bits, its byte count is part
/// of the format as written, because `writeByte` always appends the next byte at once — a
/// stream whose last write was a byte on a byte boundary ends with an empty byte (a chunk of
/// one sample is 17 bytes, not 16), and Prometheus's blocks carry it. So the stream is its
/// bit count and whether it ends so; the bytes are those bits, then zeros.
#[derive(Debug)]
struct BitWriter {
    /// The stream's bytes, then at least [`SLACK`] zero bytes (so that up to 57 bits are
    /// OR'd in with one 8-byte read and write).
    buf: Vec<u8>,
    /// Bits written.
    bits: usize,
    /// Whether the last write was `writeByte` ending on a byte boundary: an empty byte
    /// follows.
    empty_last: bool,
}

/// Zero bytes kept past the stream's last byte.
const SLACK: usize = 16;

impl BitWriter {
    /// A stream of `prefix_bytes` zero bytes (the chunk's sample count).
    fn new(prefix_bytes: usize) -> Self {
        BitWriter {
            buf: vec![0; prefix_bytes + 4 * SLACK],
            bits: 8 * prefix_bytes,
            empty_last: false,
        }
    }

    /// Back to `prefix_bytes` zero bytes, keeping the buffer.
    fn reset(&mut self, prefix_bytes: usize) {
        let used = self.len();
        // Most chunks of a backfill are a few bytes: a fixed 32 bytes are zeroed with a few
        // stores, where a length known only at run time is a `memset` call (one per chunk,
        // millions a month). The bytes past `used` are zero already.
        match self.buf.get_mut(..32) {
            Some(head) if used <= 32 => head.fill(0),
            _ => self.buf[..used].fill(0),
        }
        self.bits = 8 * prefix_bytes;
        self.empty_last = false;
    }

    /// Bytes of the stream as Go's writer leaves it.
    fn len(&self) -> usize {
        self.bits.div_ceil(8) + usize::from(self.empty_last)
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len()]
    }

    /// Appends the low `n` (at most 57) bits of `u`; the byte count is the caller's.
    fn put(&mut self, u: u64, n: u32) {
        debug_assert!((1..=57).contains(&n));
        let (at, shift) = (self.bits / 8, self.bits % 8);
        let mut word = [0u8; 8];
        word.copy_from_slice(&self.buf[at..at + 8]);
        let word = u64::from_be_bytes(word) | ((u << (64 - n)) >> shift);
        self.buf[at..at + 8].copy_from_slice(&word.to_be_bytes());
        self.bits += n as usize;
        if self.buf.len() < self.bits / 8 + SLACK {
            self.buf.resize(2 * self.buf.len(), 0);
        }
    }

    /// `writeBit`.
    fn write_bit(&mut self, bit: bool) {
        self.put(u64::from(bit), 1);
        self.empty_last = false;
    }

    /// `writeBits`: the `nbits` (at most 64) right-most bits of `u`, left to right, whole
    /// bytes first (`writeByte`), then the rest (`writeBit`).
    fn write_bits(&mut self, u: u64, nbits: u32) {
        if nbits == 0 {
            return;
        }
        if nbits > 57 {
            self.put(u >> 32, nbits - 32);
            self.put(u & 0xffff_ffff, 32);
        } else {
            self.put(u, nbits);
        }
        self.empty_last = nbits.is_multiple_of(8) && self.bits.is_multiple_of(8);
    }

    /// The first `len` of `b`'s bytes on a byte boundary, as as many `writeByte`s: copied,
    /// not shifted in. `b` past `len` must be zero (the stream is zero past its end); a copy
    /// of a fixed size stays inline (a `memcpy` call each would cost more than it saves).
    fn write_aligned<const N: usize>(&mut self, b: &[u8; N], len: usize) {
        debug_assert!(self.bits.is_multiple_of(8) && len <= N && b[len..].iter().all(|&x| x == 0));
        let at = self.bits / 8;
        if self.buf.len() < at + N + SLACK {
            self.buf.resize(2 * (at + N + SLACK), 0);
        }
        self.buf[at..at + N].copy_from_slice(b);
        self.bits += 8 * len;
        self.empty_last = len > 0;
    }
}

/// One XOR chunk being appended to.
/// `x` as an unsigned varint (the encoding of `encoding::put_uvarint`), on the stack: the
/// first two samples of every chunk write one, and most series of a sparse window have one or
/// two samples.
fn varint_bytes(mut x: u64) -> ([u8; 10], usize) {
    let mut buf = [0u8; 10];
    let mut n = 0;
    while x >= 0x80 {
        buf[n] = (x as u8) | 0x80;
        x >>= 7;
        n += 1;
    }
    buf[n] = x as u8;
    (buf, n + 1)
}

#[derive(Debug)]
pub struct XorChunk {
    bits: BitWriter,
    num: u16,
    t: i64,
    v: f64,
    t_delta: u64,
    leading: u8,
    trailing: u8,
    min_t: i64,
}

impl Default for XorChunk {
    fn default() -> Self {
        Self::new()
    }
}

impl XorChunk {
    pub fn new() -> Self {
        XorChunk {
            bits: BitWriter::new(2),
            num: 0,
            t: 0,
            v: 0.0,
            t_delta: 0,
            // Go's appender starts with 0xff: "no window yet".
            leading: 0xff,
            trailing: 0,
            min_t: 0,
        }
    }

    /// Empties the chunk, keeping its buffer.
    pub fn reset(&mut self) {
        self.bits.reset(2);
        self.num = 0;
        self.t = 0;
        self.v = 0.0;
        self.t_delta = 0;
        self.leading = 0xff;
        self.trailing = 0;
        self.min_t = 0;
    }

    pub fn num_samples(&self) -> usize {
        usize::from(self.num)
    }

    /// The first sample's timestamp (0 while empty).
    pub fn min_time(&self) -> i64 {
        self.min_t
    }

    /// The last sample's timestamp (0 while empty).
    pub fn max_time(&self) -> i64 {
        self.t
    }

    /// Appends a sample. The caller keeps timestamps increasing and cuts the chunk at
    /// [`MAX_SAMPLES_PER_CHUNK`]; the count is a `u16` and saturates rather than wraps.
    /// Appends one sample; times must increase (the caller checks).
    pub fn append(&mut self, t: i64, v: f64) {
        let mut t_delta = 0u64;
        match self.num {
            // The first two samples start on a byte boundary (after the count, after the
            // first sample's whole bytes): their bytes are copied in, not shifted. Most
            // chunks of a sparse window hold one or two samples.
            0 => {
                let (varint, n) = varint_bytes(((t << 1) ^ (t >> 63)) as u64);
                let mut b = [0u8; 18];
                b[..10].copy_from_slice(&varint);
                b[n..n + 8].copy_from_slice(&v.to_bits().to_be_bytes());
                self.bits.write_aligned(&b, n + 8);
                self.min_t = t;
            }
            1 => {
                t_delta = t.wrapping_sub(self.t) as u64;
                let (varint, n) = varint_bytes(t_delta);
                self.bits.write_aligned(&varint, n);
                self.write_value(v);
            }
            _ => {
                t_delta = t.wrapping_sub(self.t) as u64;
                let dod = t_delta.wrapping_sub(self.t_delta) as i64;
                if dod == 0 {
                    self.bits.write_bit(false);
                } else if bit_range(dod, 14) {
                    self.bits.write_bits(0b10, 2);
                    self.bits.write_bits(dod as u64, 14);
                } else if bit_range(dod, 17) {
                    self.bits.write_bits(0b110, 3);
                    self.bits.write_bits(dod as u64, 17);
                } else if bit_range(dod, 20) {
                    self.bits.write_bits(0b1110, 4);
                    self.bits.write_bits(dod as u64, 20);
                } else {
                    self.bits.write_bits(0b1111, 4);
                    self.bits.write_bits(dod as u64, 64);
                }
                self.write_value(v);
            }
        }
        self.t = t;
        self.v = v;
        self.t_delta = t_delta;
        self.num = self.num.saturating_add(1);
        self.bits.buf[..2].copy_from_slice(&self.num.to_be_bytes());
    }

    fn write_value(&mut self, v: f64) {
        let delta = v.to_bits() ^ self.v.to_bits();
        if delta == 0 {
            self.bits.write_bit(false);
            return;
        }
        self.bits.write_bit(true);
        let new_leading = (delta.leading_zeros() as u8).min(31);
        let new_trailing = delta.trailing_zeros() as u8;
        if self.leading != 0xff && new_leading >= self.leading && new_trailing >= self.trailing {
            self.bits.write_bit(false);
            let sig = 64 - u32::from(self.leading) - u32::from(self.trailing);
            self.bits.write_bits(delta >> self.trailing, sig);
            return;
        }
        self.leading = new_leading;
        self.trailing = new_trailing;
        self.bits.write_bit(true);
        self.bits.write_bits(u64::from(new_leading), 5);
        let sig = 64 - u32::from(new_leading) - u32::from(new_trailing);
        // 64 significant bits do not fit 6 bits: written as 0, read back as 64.
        self.bits.write_bits(u64::from(sig), 6);
        self.bits.write_bits(delta >> new_trailing, sig);
    }

    /// The chunk's bytes as they go to disk (after the length and encoding byte).
    pub fn bytes(&self) -> &[u8] {
        self.bits.bytes()
    }

    pub fn into_bytes(self) -> Vec<u8> {
        let len = self.bits.len();
        let mut b = self.bits.buf;
        b.truncate(len);
        b
    }
}

/// Go's `bitRange`: whether `x` fits the `nbits` bucket, -(2^(n-1)-1) ..= 2^(n-1).
fn bit_range(x: i64, nbits: u32) -> bool {
    let half = 1i64 << (nbits - 1);
    -(half - 1) <= x && x <= half
}

/// Decodes an XOR chunk back into samples, for this module's tests only: the writer's judges
/// are promtool and Prometheus, this reader only localizes a failure to the encoder.
#[cfg(test)]
pub fn decode(data: &[u8]) -> Vec<(i64, f64)> {
    struct Bits<'a> {
        d: &'a [u8],
        pos: usize,
    }
    impl Bits<'_> {
        fn bit(&mut self) -> bool {
            let b = self.d[self.pos / 8] >> (7 - self.pos % 8) & 1;
            self.pos += 1;
            b == 1
        }
        fn bits(&mut self, n: u32) -> u64 {
            (0..n).fold(0, |acc, _| acc << 1 | u64::from(self.bit()))
        }
        fn uvarint(&mut self) -> u64 {
            let (mut x, mut s) = (0u64, 0);
            loop {
                let b = self.bits(8);
                x |= (b & 0x7f) << s;
                if b < 0x80 {
                    return x;
                }
                s += 7;
            }
        }
    }
    let n = usize::from(u16::from_be_bytes([data[0], data[1]]));
    let mut r = Bits {
        d: &data[2..],
        pos: 0,
    };
    let mut out = Vec::new();
    let (mut t, mut v, mut delta) = (0i64, 0u64, 0i64);
    let (mut leading, mut trailing) = (0u32, 0u32);
    for i in 0..n {
        if i == 0 {
            let z = r.uvarint();
            t = ((z >> 1) as i64) ^ -((z & 1) as i64);
            v = r.bits(64);
        } else {
            if i == 1 {
                delta = r.uvarint() as i64;
            } else {
                let dod = if !r.bit() {
                    0
                } else if !r.bit() {
                    sign_extend(r.bits(14), 14)
                } else if !r.bit() {
                    sign_extend(r.bits(17), 17)
                } else if !r.bit() {
                    sign_extend(r.bits(20), 20)
                } else {
                    r.bits(64) as i64
                };
                delta = delta.wrapping_add(dod);
            }
            t = t.wrapping_add(delta);
            if r.bit() {
                if r.bit() {
                    leading = r.bits(5) as u32;
                    let mut sig = r.bits(6) as u32;
                    if sig == 0 {
                        sig = 64;
                    }
                    trailing = 64 - leading - sig;
                }
                let sig = 64 - leading - trailing;
                v ^= r.bits(sig) << trailing;
            }
        }
        out.push((t, f64::from_bits(v)));
    }
    out
}

/// Go's reader: a value above 2^(n-1) in the n-bit bucket is negative.
#[cfg(test)]
fn sign_extend(x: u64, n: u32) -> i64 {
    if x > (1 << (n - 1)) {
        x as i64 - (1i64 << n)
    } else {
        x as i64
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stack_varints_equal_the_encoding_modules() {
        for x in [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut want = Vec::new();
            crate::tsdb::encoding::put_uvarint(&mut want, x);
            let (buf, n) = super::varint_bytes(x);
            assert_eq!(&buf[..n], &want[..], "{x}");
        }
        for t in [0i64, -1, 1, i64::MIN, i64::MAX, 1_764_000_000_000] {
            let mut want = Vec::new();
            crate::tsdb::encoding::put_varint(&mut want, t);
            let (buf, n) = super::varint_bytes(((t << 1) ^ (t >> 63)) as u64);
            assert_eq!(&buf[..n], &want[..], "{t}");
        }
    }

    use super::*;

    fn chunk(samples: &[(i64, f64)]) -> Vec<u8> {
        let mut c = XorChunk::new();
        for &(t, v) in samples {
            c.append(t, v);
        }
        c.into_bytes()
    }

    #[test]
    fn one_sample_is_count_varint_timestamp_raw_value_bits_and_go_s_empty_last_byte() {
        // 1000 → zig-zag 2000 → 0xd0 0x0f; 1.0 = 0x3ff0000000000000; then the byte Go's
        // `writeByte` appends after the value's last byte (a one-sample chunk in a block
        // Prometheus writes has it too).
        assert_eq!(
            chunk(&[(1000, 1.0)]),
            [0x00, 0x01, 0xd0, 0x0f, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 0]
        );
        // Zero and a negative timestamp.
        assert_eq!(chunk(&[(0, 0.0)]), [0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            chunk(&[(-1, -2.0)]),
            [0, 1, 0x01, 0xc0, 0x00, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn equal_values_cost_one_bit_and_a_steady_step_one_more() {
        // t: 0, 15000, 30000, 45000 with the value 5.0 throughout.
        // Header 00 04; ts0 varint(0) = 00; v0 = 40 14 00..; delta uvarint(15000) = 98 75;
        // v1 equal: bit 0; dod 0: bit 0; v2 equal: 0; dod 0: 0; v3 equal: 0 → 00000 + 3 pad.
        let got = chunk(&[(0, 5.0), (15_000, 5.0), (30_000, 5.0), (45_000, 5.0)]);
        assert_eq!(
            got,
            [0x00, 0x04, 0x00, 0x40, 0x14, 0, 0, 0, 0, 0, 0, 0x98, 0x75, 0x00]
        );
    }

    #[test]
    fn a_changed_value_writes_its_leading_zeros_and_significant_bits() {
        // 1.0 → 2.0: xor = 0x7ff0000000000000 (3ff0… ^ 4000…), leading 1, trailing 52,
        // 11 significant bits 0b11111111111.
        // Bits after the uvarint delta (01): 1 (changed), 1 (new window), 00001 (leading),
        // 001011 (11), 11111111111 → 1100 0010 | 0101 1111 | 1111 1111: 24 bits, no padding.
        let got = chunk(&[(0, 1.0), (1, 2.0)]);
        assert_eq!(
            got,
            [0x00, 0x02, 0x00, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 0x01, 0xc2, 0x5f, 0xff]
        );
        // 2.0 → 3.0: xor 0x0008000000000000, leading 12, trailing 51 < 52: a new window;
        // 3.0 → 2.0 is the same xor, inside that window: reused.
        let got = chunk(&[(0, 1.0), (1, 2.0), (2, 3.0), (3, 2.0)]);
        assert_eq!(decode(&got), [(0, 1.0), (1, 2.0), (2, 3.0), (3, 2.0)]);
    }

    #[test]
    fn delta_of_delta_buckets_switch_at_go_bit_range_edges() {
        // dod = 8192 fits 14 bits (the positive side is one wider), 8193 needs 17.
        let fits = chunk(&[(0, 0.0), (1, 0.0), (2 + 8192, 0.0)]);
        let wider = chunk(&[(0, 0.0), (1, 0.0), (2 + 8193, 0.0)]);
        // After 12 bytes (header, ts0, v0, delta 1): 0 (v1 equal), then 10 + 14 bits + 0, or
        // 110 + 17 bits + 0: 18 or 22 bits, 3 bytes either way.
        assert_eq!(fits.len(), 15);
        assert_eq!(wider.len(), 15);
        assert_eq!(
            fits[12], 0b0101_0000,
            "0, 10, then dod 8192 = 10 0000 0000 0000"
        );
        assert_eq!(
            wider[12], 0b0110_0001,
            "0, 110, then dod 8193 = 0 0010 0000 0000 0001"
        );
        // -8191 fits 14 bits, -8192 does not (uvarint(10000) is 2 bytes: bits start at 13).
        let neg = chunk(&[(0, 0.0), (10_000, 0.0), (10_000 + 10_000 - 8191, 0.0)]);
        assert_eq!(neg[13] >> 5, 0b010);
        assert_eq!(decode(&neg)[2].0, 10_000 + 10_000 - 8191);
        let neg = chunk(&[(0, 0.0), (10_000, 0.0), (10_000 + 10_000 - 8192, 0.0)]);
        assert_eq!(neg[13] >> 4, 0b0110);
        assert_eq!(decode(&neg)[2].0, 10_000 + 10_000 - 8192);
    }

    #[test]
    fn large_gaps_and_huge_values_round_trip_through_the_reader() {
        let samples = [
            (1_795_651_200_000, 0.0),
            (1_795_651_200_001, 9_007_199_254_740_992.0), // 2^53
            (1_795_651_215_000, 9_007_199_254_740_991.0),
            (1_795_651_215_001, -1.0),
            (1_795_737_600_000, -0.0), // a day later: dod needs 64 bits
            (1_795_737_600_001, 1e-300),
            (1_895_737_600_000, f64::MAX), // years later
            (1_895_737_600_000 + (1 << 19), f64::MIN_POSITIVE), // 20-bit bucket edge
            (1_895_737_600_000 + (1 << 19) + 1, 123_456.789),
        ];
        let data = chunk(&samples);
        let back = decode(&data);
        assert_eq!(back.len(), samples.len());
        for (a, b) in back.iter().zip(samples.iter()) {
            assert_eq!(a.0, b.0);
            assert_eq!(a.1.to_bits(), b.1.to_bits(), "{} vs {}", a.1, b.1);
        }
    }

    #[test]
    fn sixty_four_significant_bits_are_written_as_zero() {
        // Values whose xor has bit 63 and bit 0 set: no leading nor trailing zeros.
        let a = f64::from_bits(0x0000_0000_0000_0000);
        let b = f64::from_bits(0x8000_0000_0000_0001);
        let data = chunk(&[(0, a), (1, b)]);
        // After 00 02 | 00 | 8 zero bytes | 01: 1, 1, 00000, 000000, then the 64 bits.
        assert_eq!(data[12], 0b1100_0000);
        assert_eq!(
            data[13], 0b0000_0100,
            "sig 64 written as 000000, then 1 0 0 of the xor"
        );
        assert_eq!(decode(&data), [(0, a), (1, b)]);
    }

    #[test]
    fn counters_rising_every_step_round_trip() {
        let samples: Vec<(i64, f64)> = (0..120)
            .map(|i| (1_700_000_000_000 + i * 60_000, (i * i * 37) as f64))
            .collect();
        let data = chunk(&samples);
        assert_eq!(u16::from_be_bytes([data[0], data[1]]), 120);
        assert_eq!(decode(&data), samples);
    }
}
