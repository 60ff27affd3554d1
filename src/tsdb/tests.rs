//! The block writer's own checks: inputs it refuses, the files' fixed parts, determinism, and
//! that a failed or repeated write leaves only whole blocks. Whether Prometheus reads the
//! blocks is judged by promtool and Prometheus themselves in `tests/it/tsdb.rs`.

use super::*;
use std::collections::BTreeMap;

const H: i64 = 3_600_000;
/// 2026-11-20T00:00:00Z in ms.
const T0: i64 = 1_795_651_200_000;

fn counter(start: i64, step: i64, n: i64) -> Vec<(i64, f64)> {
    (0..n).map(|i| (start + i * step, (i * 3) as f64)).collect()
}

fn sample_block() -> Block {
    let mut b = Block::new(T0, T0 + 2 * H).unwrap();
    b.add_series(
        [("__name__", "tokens_total"), ("job", "tm"), ("model", "b")],
        counter(T0, 15_000, 300),
    )
    .unwrap();
    b.add_series(
        [("__name__", "tokens_total"), ("job", "tm"), ("model", "a")],
        counter(T0 + 5, 60_000, 100),
    )
    .unwrap();
    b.add_series([("__name__", "up")], [(T0 + 2 * H - 1, 1.0)])
        .unwrap();
    b
}

/// Every file under `dir`, relative path → bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn two_writes_of_the_same_series_give_byte_identical_directories() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ma = BlockWriter::new(a.path())
        .unwrap()
        .write(sample_block())
        .unwrap()
        .unwrap();
    // The same series added in another order.
    let mut blk = Block::new(T0, T0 + 2 * H).unwrap();
    blk.add_series([("__name__", "up")], [(T0 + 2 * H - 1, 1.0)])
        .unwrap();
    blk.add_series(
        [("__name__", "tokens_total"), ("job", "tm"), ("model", "a")],
        counter(T0 + 5, 60_000, 100),
    )
    .unwrap();
    blk.add_series(
        [("__name__", "tokens_total"), ("job", "tm"), ("model", "b")],
        counter(T0, 15_000, 300),
    )
    .unwrap();
    let mb = BlockWriter::new(b.path())
        .unwrap()
        .write(blk)
        .unwrap()
        .unwrap();
    assert_eq!(ma.ulid, mb.ulid);
    let (ta, tb) = (tree(a.path()), tree(b.path()));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>());
    assert!(ta == tb, "the bytes differ");
    assert_eq!(
        ta.keys().cloned().collect::<Vec<_>>(),
        [
            format!("{}/chunks/000001", ma.ulid),
            format!("{}/index", ma.ulid),
            format!("{}/meta.json", ma.ulid),
            format!("{}/tombstones", ma.ulid),
        ]
    );
    assert_eq!(ma.bytes, ta.values().map(|v| v.len() as u64).sum::<u64>());
}

#[test]
fn the_ulid_is_the_block_start_and_changes_with_the_content() {
    let d = tempfile::tempdir().unwrap();
    let w = BlockWriter::new(d.path()).unwrap();
    let m1 = w.write(sample_block()).unwrap().unwrap();
    let mut other = sample_block();
    other
        .add_series([("__name__", "down")], [(T0, 0.0)])
        .unwrap();
    let m2 = w.write(other).unwrap().unwrap();
    assert_ne!(m1.ulid, m2.ulid);
    assert_eq!(m1.ulid[..10], m2.ulid[..10], "same start, same time part");
    assert_eq!(&m1.ulid[..10], &ulid::encode(T0, 0).unwrap()[..10]);
}

#[test]
fn meta_json_is_a_level_one_block_with_itself_as_source_and_its_stats() {
    let d = tempfile::tempdir().unwrap();
    let m = BlockWriter::new(d.path())
        .unwrap()
        .write(sample_block())
        .unwrap()
        .unwrap();
    assert_eq!((m.num_series, m.num_samples), (3, 401));
    // 300 samples → 3 chunks of ≤ 120, 100 → 1, 1 → 1.
    assert_eq!(m.num_chunks, 5);
    let text = fs::read_to_string(m.dir.join("meta.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["ulid"], m.ulid.as_str());
    assert_eq!(v["minTime"], T0);
    assert_eq!(v["maxTime"], T0 + 2 * H);
    assert_eq!(v["stats"]["numSamples"], 401);
    assert_eq!(v["stats"]["numSeries"], 3);
    assert_eq!(v["stats"]["numChunks"], 5);
    assert_eq!(v["compaction"]["level"], 1);
    assert_eq!(v["compaction"]["sources"][0], m.ulid.as_str());
    assert_eq!(v["version"], 1);
    // Go's MarshalIndent with tabs: the same text Prometheus writes for such a block.
    assert!(text.starts_with("{\n\t\"ulid\": \""), "{text}");
    assert!(text.ends_with("\n\t\"version\": 1\n}"), "{text}");
}

#[test]
fn the_empty_tombstones_file_is_magic_version_and_the_crc_of_nothing() {
    assert_eq!(
        empty_tombstones(),
        [0x01, 0x30, 0xBA, 0x30, 0x01, 0, 0, 0, 0]
    );
}

#[test]
fn a_block_without_samples_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let mut b = Block::new(T0, T0 + H).unwrap();
    b.add_series([("__name__", "x")], std::iter::empty())
        .unwrap();
    assert_eq!(b.num_series(), 0);
    assert!(BlockWriter::new(d.path())
        .unwrap()
        .write(b)
        .unwrap()
        .is_none());
    assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
}

#[test]
fn bad_series_are_refused_without_keeping_any_of_them() {
    let mut b = Block::new(T0, T0 + H).unwrap();
    let one = [(T0, 1.0)];
    // Labels out of order, duplicated, or with an empty name.
    assert!(b.add_series([("b", "1"), ("a", "1")], one).is_err());
    assert!(b.add_series([("a", "1"), ("a", "2")], one).is_err());
    assert!(b.add_series([("", "1")], one).is_err());
    // Only empty values: no label at all.
    assert!(b.add_series([("a", "")], one).is_err());
    // Samples outside [min, max), repeated or going back.
    assert!(b.add_series([("a", "1")], [(T0 - 1, 1.0)]).is_err());
    assert!(b.add_series([("a", "1")], [(T0 + H, 1.0)]).is_err());
    assert!(b.add_series([("a", "1")], [(T0, 1.0), (T0, 2.0)]).is_err());
    assert!(b
        .add_series([("a", "1")], [(T0 + 5, 1.0), (T0 + 4, 2.0)])
        .is_err());
    assert_eq!((b.num_series(), b.num_samples()), (0, 0));
    assert!(b.labels.is_empty() && b.data.is_empty() && b.chunks.is_empty());
    // A good series after the refused ones is whole.
    b.add_series([("a", "1"), ("b", "")], [(T0, 1.0), (T0 + 1, 2.0)])
        .unwrap();
    assert_eq!(b.series_labels(&b.series[0]), [("a", "1")]);
    assert_eq!(b.chunks.len(), 1);
    // Ranges that cannot be a block.
    assert!(Block::new(T0, T0).is_err());
    assert!(Block::new(-1, H).is_err());
    assert!(Block::new(1 << 48, (1 << 48) + H).is_err());
}

#[test]
fn an_empty_label_value_is_dropped_as_prometheus_drops_it() {
    let d = tempfile::tempdir().unwrap();
    let mut b = Block::new(T0, T0 + H).unwrap();
    b.add_series([("__name__", "x"), ("model", "")], [(T0, 1.0)])
        .unwrap();
    assert_eq!(b.series_labels(&b.series[0]), [("__name__", "x")]);
    // …so the same series without the label is a duplicate, reported at write.
    b.add_series([("__name__", "x")], [(T0, 2.0)]).unwrap();
    let err = BlockWriter::new(d.path()).unwrap().write(b).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("added twice"), "{err}");
    assert_eq!(
        fs::read_dir(d.path()).unwrap().count(),
        0,
        "no directory left"
    );
}

#[test]
fn chunks_hold_at_most_120_samples_and_decode_to_what_was_added() {
    let mut b = Block::new(T0, T0 + 2 * H).unwrap();
    let samples = counter(T0, 1000, 241);
    b.add_series([("__name__", "x")], samples.clone()).unwrap();
    let s = b.series[0];
    let chunks = &b.chunks[s.chunks.0..s.chunks.1];
    let decoded: Vec<Vec<(i64, f64)>> = chunks
        .iter()
        .map(|c| xor::decode(&b.data[c.start..c.start + c.len]))
        .collect();
    let sizes: Vec<usize> = decoded.iter().map(Vec::len).collect();
    assert_eq!(sizes, [120, 120, 1]);
    assert_eq!(decoded.concat(), samples);
    assert_eq!(chunks[1].min_time, T0 + 120_000);
    assert_eq!(chunks[1].max_time, T0 + 239_000);
}

#[test]
fn small_segments_spread_chunks_over_numbered_files() {
    let d = tempfile::tempdir().unwrap();
    let m = BlockWriter::new(d.path())
        .unwrap()
        .with_segment_size(256)
        .unwrap()
        .write(sample_block())
        .unwrap()
        .unwrap();
    let names: Vec<String> = {
        let mut v: Vec<String> = fs::read_dir(m.dir.join("chunks"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert!(names.len() >= 3, "{names:?}");
    assert_eq!(names[0], "000001");
    for n in &names {
        let len = fs::metadata(m.dir.join("chunks").join(n)).unwrap().len();
        assert!(len <= 256 || names.len() == 5, "{n}: {len} bytes");
    }
}

#[test]
fn writing_a_block_again_replaces_it_with_the_same_bytes_and_leaves_no_temporary_directory() {
    let d = tempfile::tempdir().unwrap();
    let w = BlockWriter::new(d.path()).unwrap();
    let m = w.write(sample_block()).unwrap().unwrap();
    let before = tree(d.path());
    // A leftover from an interrupted run of the same block is cleared first.
    fs::create_dir_all(d.path().join(format!("{}{TMP_SUFFIX}/chunks", m.ulid))).unwrap();
    let again = w.write(sample_block()).unwrap().unwrap();
    assert_eq!(again, m);
    assert!(tree(d.path()) == before);
    let names: Vec<String> = fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, std::slice::from_ref(&m.ulid));
}

#[test]
fn a_write_that_fails_half_way_leaves_no_directory_at_all() {
    for stage in ["chunks", "index", "meta", "rename"] {
        let d = tempfile::tempdir().unwrap();
        let w = BlockWriter::new(d.path()).unwrap();
        FAIL_AT.with(|f| f.set(Some(stage)));
        let res = w.write(sample_block());
        FAIL_AT.with(|f| f.set(None));
        assert!(res.is_err(), "{stage}");
        let left: Vec<_> = fs::read_dir(d.path()).unwrap().collect();
        assert!(left.is_empty(), "{stage}: {left:?}");
    }
}

#[test]
fn block_windows_are_aligned_to_multiples_of_the_range_as_prometheus_aligns_them() {
    let r = DEFAULT_BLOCK_RANGE_MS;
    assert_eq!(block_window(T0, r), Some((T0, T0 + r)));
    assert_eq!(block_window(T0 + r - 1, r), Some((T0, T0 + r)));
    assert_eq!(block_window(T0 + r, r), Some((T0 + r, T0 + 2 * r)));
    assert_eq!(block_window(0, r), Some((0, r)));
    assert_eq!(block_window(-1, r), Some((-r, 0)));
    assert_eq!(block_window(T0, 0), None);
    assert_eq!(block_window(i64::MAX, r), None);
}

#[test]
fn stale_temporaries_of_interrupted_writes_are_removed_and_nothing_else() {
    let d = tempfile::tempdir().unwrap();
    let w = BlockWriter::new(d.path()).unwrap();
    let m = w.write(sample_block()).unwrap().unwrap();
    let id = ulid::encode(T0, 7).unwrap();
    for name in [
        format!("{id}{TMP_SUFFIX}"),
        format!("{id}{DELETE_SUFFIX}"),
        "notaulid.tmp-for-creation".to_string(),
        "wal".to_string(),
    ] {
        fs::create_dir_all(d.path().join(name).join("chunks")).unwrap();
    }
    fs::write(d.path().join(format!("{id}.tmp-for-creation.txt")), b"").unwrap();
    assert_eq!(remove_stale_temporaries(d.path()).unwrap(), 2);
    let mut left: Vec<String> = fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut want = vec![
        m.ulid.clone(),
        "notaulid.tmp-for-creation".to_string(),
        "wal".to_string(),
        format!("{id}.tmp-for-creation.txt"),
    ];
    want.sort();
    assert_eq!(left, want);
}

proptest::proptest! {
    /// Any increasing timestamps and any float bits (NaNs included) come back from the
    /// encoder exactly, through the test decoder and the block's chunk cutting.
    #[test]
    fn any_series_round_trips_through_the_xor_chunks_bit_for_bit(
        gaps in proptest::collection::vec(1i64..10_000_000, 1..400),
        bits in proptest::collection::vec(proptest::num::u64::ANY, 400),
        repeat in proptest::collection::vec(proptest::bool::ANY, 400),
    ) {
        let mut t = T0;
        let mut samples = Vec::new();
        let mut prev = 0u64;
        for (i, g) in gaps.iter().enumerate() {
            let b = if repeat[i] { prev } else { bits[i] };
            samples.push((t, f64::from_bits(b)));
            prev = b;
            t += g;
        }
        let mut b = Block::new(T0, t + 1).unwrap();
        b.add_series([("__name__", "p")], samples.clone()).unwrap();
        let s = b.series[0];
        let mut back = Vec::new();
        for c in &b.chunks[s.chunks.0..s.chunks.1] {
            let d = xor::decode(&b.data[c.start..c.start + c.len]);
            proptest::prop_assert!(d.len() <= 120);
            proptest::prop_assert_eq!(d.first().map(|x| x.0), Some(c.min_time));
            proptest::prop_assert_eq!(d.last().map(|x| x.0), Some(c.max_time));
            back.extend(d);
        }
        let want: Vec<(i64, u64)> = samples.iter().map(|(t, v)| (*t, v.to_bits())).collect();
        let got: Vec<(i64, u64)> = back.iter().map(|(t, v)| (*t, v.to_bits())).collect();
        proptest::prop_assert_eq!(got, want);
    }
}

#[test]
fn a_last_window_can_end_after_its_last_sample_but_never_before_it() {
    let d = tempfile::tempdir().unwrap();
    let mut b = sample_block();
    assert_eq!(b.sample_range(), Some((T0, T0 + 2 * H - 1)));
    assert!(
        b.shrink_max_time(T0 + 2 * H - 1).is_err(),
        "would drop the last sample"
    );
    assert!(b.shrink_max_time(T0 + 2 * H + 1).is_err(), "cannot grow");
    let mut early = Block::new(T0, T0 + 2 * H).unwrap();
    early
        .add_series([("__name__", "x")], [(T0 + 10, 1.0), (T0 + 20, 2.0)])
        .unwrap();
    assert!(early.shrink_max_time(T0 + 20).is_err());
    early.shrink_max_time(T0 + 21).unwrap();
    let m = BlockWriter::new(d.path())
        .unwrap()
        .write(early)
        .unwrap()
        .unwrap();
    assert_eq!((m.min_time, m.max_time), (T0, T0 + 21));
    let meta = fs::read_to_string(m.dir.join("meta.json")).unwrap();
    assert!(
        meta.contains(&format!("\"maxTime\": {},", T0 + 21)),
        "{meta}"
    );
}

#[test]
fn without_fsync_the_bytes_are_the_same_and_sync_makes_them_durable_at_once() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    BlockWriter::new(a.path())
        .unwrap()
        .write(sample_block())
        .unwrap();
    let w = BlockWriter::new(b.path()).unwrap().with_fsync(false);
    w.write(sample_block()).unwrap();
    w.sync().unwrap();
    assert!(tree(a.path()) == tree(b.path()));
}

#[test]
fn series_added_by_interned_pairs_write_the_same_block_as_by_name() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let by_name = BlockWriter::new(a.path())
        .unwrap()
        .write(sample_block())
        .unwrap()
        .unwrap();
    let mut blk = Block::new(T0, T0 + 2 * H).unwrap();
    let name = blk.label("__name__", "tokens_total").unwrap();
    let job = blk.label("job", "tm").unwrap();
    let empty = blk.label("x", "").unwrap();
    let up = blk.label("__name__", "up").unwrap();
    let (ma, mb) = (
        blk.label("model", "a").unwrap(),
        blk.label("model", "b").unwrap(),
    );
    // Any order of pairs; an empty value is no label; a pair interned but unused is no symbol.
    blk.label("unused", "nowhere").unwrap();
    blk.add_series_refs(&[up], [(T0 + 2 * H - 1, 1.0)]).unwrap();
    blk.add_series_refs(&[mb, job, name, empty], counter(T0, 15_000, 300))
        .unwrap();
    blk.add_series_refs(&[job, ma, name], counter(T0 + 5, 60_000, 100))
        .unwrap();
    let by_ref = BlockWriter::new(b.path())
        .unwrap()
        .write(blk)
        .unwrap()
        .unwrap();
    assert_eq!(by_name.ulid, by_ref.ulid);
    assert_eq!(tree(a.path()), tree(b.path()));
}

#[test]
fn a_label_name_twice_is_refused_by_the_write() {
    let dir = tempfile::tempdir().unwrap();
    let mut blk = Block::new(T0, T0 + H).unwrap();
    let (a1, a2) = (blk.label("a", "1").unwrap(), blk.label("a", "2").unwrap());
    assert!(blk.label("", "1").is_err());
    blk.add_series_refs(&[a1, a2], [(T0, 1.0)]).unwrap();
    let err = BlockWriter::new(dir.path())
        .unwrap()
        .write(blk)
        .unwrap_err();
    assert!(err.to_string().contains("twice"), "{err}");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_write_error_names_the_file_and_keeps_its_kind() {
    let path = std::path::Path::new("/blocks/01JABC.tmp-for-creation/index");
    let e = of_path(path)(io::Error::from(io::ErrorKind::StorageFull));
    assert_eq!(e.kind(), io::ErrorKind::StorageFull);
    assert!(
        e.to_string()
            .starts_with("/blocks/01JABC.tmp-for-creation/index: "),
        "{e}"
    );
}
