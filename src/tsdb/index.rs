//! A block's `index` file, format v2, built in memory for one block's series.
//!
//! Owns: the file's sections in the order and with the padding Prometheus's own writer gives
//! them — header (magic, version 2), symbol table, series (16-byte aligned, reference =
//! offset / 16), label indices (legacy, still written and read), postings (the all-series list
//! under `""="" ` first, then one per label pair), label offset table, postings offset table,
//! TOC — each with its length and CRC32-C. Must not know how chunks are encoded or stored: it
//! takes each chunk's time range and reference.
//!
//! Read from Prometheus v2.53.3 (commit 1491d29fb1e8f8acbab29fd54fd4ce9be2cbd7bc):
//! `tsdb/docs/format/index.md` and `tsdb/index/index.go` (`Writer.ensureStage`,
//! `writeMeta`, `AddSymbol`/`finishSymbols`, `AddSeries`, `writePostingsToTmpFiles`,
//! `writeLabelIndex`, `writePosting`/`writePostings`, `writeLabelIndexesOffsetTable`,
//! `writePostingsOffsetTable`, `writeTOC`, `EncodePostingsRaw`); where the doc and the
//! writer differ (the doc's header still says version 1) the writer wins.

use super::encoding::{
    crc32c, pad_to, put_be32, put_be64, put_uvarint, put_uvarint_str, SliceWriter, MAX_VARINT_LEN,
};
use std::io;

/// `MagicIndex`.
pub const MAGIC: u32 = 0xBAAA_D700;
/// `FormatV2`.
pub const FORMAT_V2: u8 = 2;

/// One chunk as the index lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkMeta {
    pub min_time: i64,
    pub max_time: i64,
    pub reference: u64,
}

/// One series for the index: its labels as numbers of the block's label pairs, increasing
/// (names strictly increasing), and its chunks in time order. Series must come sorted by label
/// set (their pair numbers compared in turn), with no two equal.
pub struct IndexSeries<'a> {
    pub labels: &'a [u32],
    pub chunks: &'a [ChunkMeta],
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// A section's 4-byte length placeholder at `start`, filled with the bytes since (less the
/// placeholder), then the CRC32-C of those bytes appended.
fn close_section(out: &mut Vec<u8>, start: usize, what: &str) -> io::Result<()> {
    let len = out.len() - start - 4;
    let len32 = u32::try_from(len).map_err(|_| invalid(format!("index {what} exceeds 4 GiB")))?;
    out[start..start + 4].copy_from_slice(&len32.to_be_bytes());
    let crc = crc32c(&out[start + 4..]);
    put_be32(out, crc);
    Ok(())
}

/// The index file's bytes, from the block's symbols (every label name and value the series
/// use, sorted and unique, and the empty string, as in every block Prometheus writes: its
/// head's symbols come from its postings, whose all-series list is keyed `""=""`), its label
/// pairs (name, value) as symbol numbers, sorted and unique, each used by a series, and its
/// series.
pub fn build(
    symbols: &[&str],
    pairs: &[(u32, u32)],
    series: &[IndexSeries<'_>],
) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(series.len().saturating_mul(128).saturating_add(1024));
    put_be32(&mut out, MAGIC);
    out.push(FORMAT_V2);

    let num_symbols = u32::try_from(symbols.len())
        .map_err(|_| invalid("more than 2^32 symbols in one block".into()))?;
    let toc_symbols = out.len() as u64;
    let start = out.len();
    put_be32(&mut out, 0);
    put_be32(&mut out, num_symbols);
    for s in symbols {
        put_uvarint_str(&mut out, s);
    }
    close_section(&mut out, start, "symbol table")?;

    // Postings by counting: where each pair's list starts in `lists`; the series come in
    // order, so each list fills in increasing order.
    let mut next = vec![0usize; pairs.len() + 1];
    for s in series {
        for &p in s.labels {
            next[p as usize + 1] += 1;
        }
    }
    for p in 0..pairs.len() {
        next[p + 1] += next[p];
    }
    let bounds = next.clone();
    let mut lists = vec![0u32; next[pairs.len()]];

    // Each pair's two varints (name, value) packed once a block, when they fit 8 bytes: a
    // series' label is then one 8-byte store and a shorter length, not two varint loops
    // (tens of millions of labels over a month of sparse windows). Length 0: not packed.
    let mut varints = Vec::with_capacity(20);
    let packed: Vec<([u8; 8], usize)> = pairs
        .iter()
        .map(|&(n, v)| {
            varints.clear();
            put_uvarint(&mut varints, u64::from(n));
            put_uvarint(&mut varints, u64::from(v));
            let mut w = [0u8; 8];
            match w.get_mut(..varints.len()) {
                Some(head) => {
                    head.copy_from_slice(&varints);
                    (w, varints.len())
                }
                None => (w, 0),
            }
        })
        .collect();

    // Series, each at a multiple of 16; its reference is offset / 16. An entry is encoded
    // into `entry` (room for its most bytes made once, grown only for a longer series), then
    // appended after its length: no capacity check per varint.
    let toc_series = out.len() as u64;
    let mut all = Vec::with_capacity(series.len());
    let mut entry: Vec<u8> = Vec::new();
    for s in series {
        pad_to(&mut out, 16);
        let id = u32::try_from(out.len() / 16)
            .map_err(|_| invalid("index series section exceeds 64 GiB".into()))?;
        let room = MAX_VARINT_LEN * (2 + 2 * s.labels.len() + 3 * s.chunks.len());
        if entry.len() < room {
            entry.resize(room, 0);
        }
        let mut w = SliceWriter::new(&mut entry);
        w.uvarint(s.labels.len() as u64);
        for &p in s.labels {
            match packed[p as usize] {
                (word, len) if len > 0 => w.word_prefix(&word, len),
                _ => {
                    let (n, v) = pairs[p as usize];
                    w.uvarint(u64::from(n));
                    w.uvarint(u64::from(v));
                }
            }
            lists[next[p as usize]] = id;
            next[p as usize] += 1;
        }
        w.uvarint(s.chunks.len() as u64);
        if let Some((first, rest)) = s.chunks.split_first() {
            w.varint(first.min_time);
            w.uvarint(first.max_time.wrapping_sub(first.min_time) as u64);
            w.uvarint(first.reference);
            let (mut t0, mut ref0) = (first.max_time, first.reference as i64);
            for c in rest {
                w.uvarint(c.min_time.wrapping_sub(t0) as u64);
                w.uvarint(c.max_time.wrapping_sub(c.min_time) as u64);
                w.varint((c.reference as i64).wrapping_sub(ref0));
                t0 = c.max_time;
                ref0 = c.reference as i64;
            }
        }
        let bytes = w.written();
        put_uvarint(&mut out, bytes.len() as u64);
        out.extend_from_slice(bytes);
        put_be32(&mut out, crc32c(bytes));
        all.push(id);
    }
    let postings = pairs
        .iter()
        .enumerate()
        .map(|(p, &pair)| (pair, &lists[bounds[p]..bounds[p + 1]]));

    // Label indices: for each name, its values' symbol references (no longer read for
    // lookups, but written by Prometheus 2.53 and listed by the TOC).
    let toc_label_indices = out.len() as u64;
    let mut label_index_offsets: Vec<(u32, u64)> = Vec::new();
    let mut rest = pairs;
    while let Some(&(name, _)) = rest.first() {
        let n = rest.iter().take_while(|p| p.0 == name).count();
        let values = rest[..n].iter().map(|p| p.1);
        rest = &rest[n..];
        pad_to(&mut out, 4);
        label_index_offsets.push((name, out.len() as u64));
        let start = out.len();
        put_be32(&mut out, 0);
        put_be32(&mut out, 1);
        put_be32(&mut out, n as u32);
        for v in values {
            put_be32(&mut out, v);
        }
        close_section(&mut out, start, "label index")?;
    }

    // Postings: the all-series list first, then one per label pair in (name, value) order.
    let toc_postings = out.len() as u64;
    let mut posting_offsets: Vec<(&str, &str, u64)> = Vec::with_capacity(pairs.len() + 1);
    let write_posting = |out: &mut Vec<u8>, ids: &[u32]| {
        pad_to(out, 4);
        let offset = out.len() as u64;
        let start = out.len();
        put_be32(out, 0);
        put_be32(out, ids.len() as u32);
        // All the references at once into zeroed room: a tight loop, no capacity check each.
        let at = out.len();
        out.resize(at + 4 * ids.len(), 0);
        for (b, &id) in out[at..].chunks_exact_mut(4).zip(ids) {
            b.copy_from_slice(&id.to_be_bytes());
        }
        close_section(out, start, "postings list")?;
        Ok::<u64, io::Error>(offset)
    };
    pad_to(&mut out, 4);
    let off = write_posting(&mut out, &all)?;
    posting_offsets.push(("", "", off));
    for ((n, v), ids) in postings {
        let (name, value) = (symbols[n as usize], symbols[v as usize]);
        let off = write_posting(&mut out, ids)?;
        posting_offsets.push((name, value, off));
    }

    // Label offset table.
    let toc_label_table = out.len() as u64;
    let start = out.len();
    put_be32(&mut out, 0);
    put_be32(&mut out, label_index_offsets.len() as u32);
    for &(name, off) in &label_index_offsets {
        put_uvarint(&mut out, 1);
        put_uvarint_str(&mut out, symbols[name as usize]);
        put_uvarint(&mut out, off);
    }
    close_section(&mut out, start, "label offset table")?;

    // Postings offset table.
    let toc_postings_table = out.len() as u64;
    let start = out.len();
    put_be32(&mut out, 0);
    let count = u32::try_from(posting_offsets.len())
        .map_err(|_| invalid("more than 2^32 label pairs in one block".into()))?;
    put_be32(&mut out, count);
    for &(name, value, off) in &posting_offsets {
        put_uvarint(&mut out, 2);
        put_uvarint_str(&mut out, name);
        put_uvarint_str(&mut out, value);
        put_uvarint(&mut out, off);
    }
    close_section(&mut out, start, "postings offset table")?;

    // TOC.
    let toc_start = out.len();
    for r in [
        toc_symbols,
        toc_series,
        toc_label_indices,
        toc_label_table,
        toc_postings,
        toc_postings_table,
    ] {
        put_be64(&mut out, r);
    }
    let crc = crc32c(&out[toc_start..]);
    put_be32(&mut out, crc);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsdb::encoding::put_varint;

    fn labels<'a>(pairs: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        pairs.to_vec()
    }

    /// A series by text: labels, chunks.
    type TextSeries<'a> = (Vec<(&'a str, &'a str)>, Vec<ChunkMeta>);

    /// `build` of series given by text, sorted, as `Block` numbers them.
    fn build_text(series: &[TextSeries<'_>]) -> Vec<u8> {
        use std::collections::BTreeSet;
        let mut symbols: BTreeSet<&str> = BTreeSet::from([""]);
        let mut pairs: BTreeSet<(&str, &str)> = BTreeSet::new();
        for (labels, _) in series {
            for &(n, v) in labels {
                symbols.extend([n, v]);
                pairs.insert((n, v));
            }
        }
        let symbols: Vec<&str> = symbols.into_iter().collect();
        let pairs: Vec<(&str, &str)> = pairs.into_iter().collect();
        let sym = |s: &str| symbols.binary_search(&s).unwrap() as u32;
        let numbered: Vec<(u32, u32)> = pairs.iter().map(|&(n, v)| (sym(n), sym(v))).collect();
        let keys: Vec<Vec<u32>> = series
            .iter()
            .map(|(labels, _)| {
                labels
                    .iter()
                    .map(|p| pairs.binary_search(p).unwrap() as u32)
                    .collect()
            })
            .collect();
        let input: Vec<IndexSeries<'_>> = series
            .iter()
            .zip(&keys)
            .map(|((_, chunks), k)| IndexSeries { labels: k, chunks })
            .collect();
        build(&symbols, &numbered, &input).unwrap()
    }

    fn be32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    fn be64(b: &[u8], at: usize) -> u64 {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[at..at + 8]);
        u64::from_be_bytes(x)
    }

    fn toc(b: &[u8]) -> [u64; 6] {
        let at = b.len() - 52;
        std::array::from_fn(|i| be64(b, at + 8 * i))
    }

    /// One series `{__name__="up", job="a"}` with one chunk, checked byte by byte against the
    /// layout `index.go` writes.
    #[test]
    fn a_one_series_index_has_every_section_where_the_go_writer_puts_it() {
        let l = labels(&[("__name__", "up"), ("job", "a")]);
        let idx = build_text(&[(
            l.clone(),
            vec![ChunkMeta {
                min_time: 1000,
                max_time: 2000,
                reference: 8,
            }],
        )]);
        assert_eq!(&idx[..5], &[0xBA, 0xAA, 0xD7, 0x00, 2]);
        let [sym, ser, li, lt, po, pt] = toc(&idx);
        // Symbols at 5: "", "__name__", "a", "job", "up".
        assert_eq!(sym, 5);
        let len = be32(&idx, 5) as usize;
        assert_eq!(be32(&idx, 9), 5);
        assert_eq!(&idx[13..23], b"\x00\x08__name__");
        assert_eq!(
            be32(&idx, 9 + len),
            crc32c(&idx[9..9 + len]),
            "the symbol CRC covers the count and the strings"
        );
        // Series right after (unpadded in the TOC), the entry itself at the next 16.
        assert_eq!(ser, (9 + len + 4) as u64);
        let at = (ser as usize).div_ceil(16) * 16;
        assert!(idx[ser as usize..at].iter().all(|&b| b == 0));
        let entry_len = idx[at] as usize;
        let entry = &idx[at + 1..at + 1 + entry_len];
        // 2 labels: (1 "__name__", 4 "up"), (3 "job", 2 "a"); 1 chunk: mint varint 1000,
        // maxt-mint 1000, ref 8.
        assert_eq!(
            entry,
            &[2, 1, 4, 3, 2, 1, 0xd0, 0x0f, 0xe8, 0x07, 8],
            "labels then chunk metas"
        );
        assert_eq!(be32(&idx, at + 1 + entry_len), crc32c(entry));
        // Label indices start where the series end; the first is 4-aligned.
        assert_eq!(li, (at + 1 + entry_len + 4) as u64);
        let first = (li as usize).div_ceil(4) * 4;
        assert_eq!(be32(&idx, first), 4 + 4 + 4, "names, entries, one value");
        assert_eq!(be32(&idx, first + 4), 1);
        assert_eq!(be32(&idx, first + 8), 1);
        assert_eq!(be32(&idx, first + 12), 4, "__name__'s value up is symbol 4");
        // Postings: all-series list first, 4-aligned, holding the series' reference.
        let p0 = (po as usize).div_ceil(4) * 4;
        assert_eq!(be32(&idx, p0), 8, "count and one reference");
        assert_eq!(be32(&idx, p0 + 4), 1);
        assert_eq!(be32(&idx, p0 + 8), (at / 16) as u32);
        assert_eq!(be32(&idx, p0 + 12), crc32c(&idx[p0 + 4..p0 + 12]));
        // Label offset table: 2 names.
        assert_eq!(be32(&idx, lt as usize + 4), 2);
        // Postings offset table: "" "", __name__=up, job=a.
        assert_eq!(be32(&idx, pt as usize + 4), 3);
        let pt = pt as usize;
        assert_eq!(&idx[pt + 8..pt + 12], &[2, 0, 0, p0 as u8]);
        // The TOC ends the file with its CRC.
        let n = idx.len();
        assert_eq!(be32(&idx, n - 4), crc32c(&idx[n - 52..n - 4]));
    }

    #[test]
    fn later_chunk_metas_are_deltas_to_the_previous_chunk() {
        let l = labels(&[("__name__", "x")]);
        let idx = build_text(&[(
            l.clone(),
            vec![
                ChunkMeta {
                    min_time: 0,
                    max_time: 100,
                    reference: 8,
                },
                ChunkMeta {
                    min_time: 110,
                    max_time: 150,
                    reference: 60,
                },
                ChunkMeta {
                    min_time: 151,
                    max_time: 151,
                    reference: (1 << 32) | 8,
                },
            ],
        )]);
        let ser = toc(&idx)[1] as usize;
        let at = ser.div_ceil(16) * 16;
        let len = idx[at] as usize;
        let mut want = vec![1, 1, 2, 3, 0, 100, 8, 10, 40];
        put_varint(&mut want, 52);
        want.extend_from_slice(&[1, 0]);
        put_varint(&mut want, ((1i64 << 32) | 8) - 60);
        assert_eq!(&idx[at + 1..at + 1 + len], &want[..]);
    }

    /// An entry of 200 chunks is longer than 127 bytes: its length takes two varint bytes,
    /// and its CRC covers the entry alone (not the length).
    #[test]
    fn an_entry_longer_than_127_bytes_has_a_two_byte_length_before_it() {
        let l = labels(&[("__name__", "x")]);
        let chunks: Vec<ChunkMeta> = (0..200)
            .map(|i| ChunkMeta {
                min_time: 1000 * i,
                max_time: 1000 * i + 500,
                reference: 8 + 40 * i as u64,
            })
            .collect();
        let idx = build_text(&[(l, chunks.clone())]);
        let at = (toc(&idx)[1] as usize).div_ceil(16) * 16;
        // Labels (1 pair), then 200 chunk metas as deltas.
        let mut want = vec![1, 1, 2];
        put_uvarint(&mut want, 200);
        put_varint(&mut want, 0);
        put_uvarint(&mut want, 500);
        put_uvarint(&mut want, 8);
        for w in chunks.windows(2) {
            put_uvarint(&mut want, (w[1].min_time - w[0].max_time) as u64);
            put_uvarint(&mut want, 500);
            put_varint(&mut want, 40);
        }
        assert!(want.len() > 127);
        let mut len = Vec::new();
        put_uvarint(&mut len, want.len() as u64);
        assert_eq!(len.len(), 2);
        assert_eq!(&idx[at..at + 2], &len[..]);
        assert_eq!(&idx[at + 2..at + 2 + want.len()], &want[..]);
        assert_eq!(be32(&idx, at + 2 + want.len()), crc32c(&want));
    }

    #[test]
    fn series_references_are_offsets_over_16_and_postings_list_them_in_order() {
        let a = labels(&[("__name__", "m"), ("k", "1")]);
        let b = labels(&[("__name__", "m"), ("k", "2")]);
        let c = labels(&[("__name__", "n"), ("k", "1")]);
        let chunk = |r| {
            vec![ChunkMeta {
                min_time: 0,
                max_time: 0,
                reference: r,
            }]
        };
        let idx = build_text(&[
            (a.clone(), chunk(8)),
            (b.clone(), chunk(30)),
            (c.clone(), chunk(60)),
        ]);
        let po = toc(&idx)[4] as usize;
        let p0 = po.div_ceil(4) * 4;
        assert_eq!(be32(&idx, p0 + 4), 3);
        let refs: Vec<u32> = (0..3).map(|i| be32(&idx, p0 + 8 + 4 * i)).collect();
        assert!(refs.windows(2).all(|w| w[0] < w[1]));
        for r in &refs {
            let at = *r as usize * 16;
            assert_eq!(
                idx[at + 1],
                2,
                "a series entry (2 labels) at reference × 16"
            );
        }
        // k=1 lists the first and the third series.
        let pt = toc(&idx)[5] as usize;
        let entries = be32(&idx, pt + 4);
        assert_eq!(entries, 1 + 2 + 2, "all, __name__=m|n, k=1|2");
    }
}
