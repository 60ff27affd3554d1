//! Block ULIDs (github.com/ulid/spec, as `github.com/oklog/ulid` writes them for Prometheus):
//! 48 bits of milliseconds, 80 bits of entropy, 26 characters of Crockford base32, most
//! significant first.
//!
//! Owns: the encoding only; the caller picks the time (the block's start) and the entropy
//! (a hash of the block's content), so the same block always gets the same name. Pure.

use std::io;

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// The largest time a ULID holds: 2^48 - 1 ms (year 10889).
pub const MAX_TIME: u64 = (1 << 48) - 1;

/// The ULID of `time_ms` and the low 80 bits of `entropy`. Fails for a time before the epoch
/// or beyond [`MAX_TIME`].
pub fn encode(time_ms: i64, entropy: u128) -> io::Result<String> {
    let time = u64::try_from(time_ms)
        .ok()
        .filter(|t| *t <= MAX_TIME)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("block start {time_ms} ms is outside a ULID's time range 0..2^48 ms"),
            )
        })?;
    let value = (u128::from(time) << 80) | (entropy & ((1u128 << 80) - 1));
    let mut out = String::with_capacity(26);
    for i in 0..26u32 {
        // 130 bits of characters for 128 bits of value: the first takes the top 3.
        let shift = 125 - 5 * i;
        let idx = ((value >> shift) & 31) as usize;
        out.push(char::from(ALPHABET[idx]));
    }
    Ok(out)
}

/// Whether `s` is a ULID as Prometheus's `ulid.ParseStrict` takes one: 26 characters of the
/// alphabet (upper or lower case), the first at most '7'.
pub fn is_ulid(s: &str) -> bool {
    s.len() == 26
        && s.bytes().enumerate().all(|(i, b)| {
            let b = b.to_ascii_uppercase();
            ALPHABET.contains(&b) && (i > 0 || b <= b'7')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_example_time_encodes_as_01aryz6s41() {
        // github.com/ulid/spec: 1469918176385 ms → "01ARYZ6S41".
        let id = encode(1_469_918_176_385, 0).unwrap();
        assert_eq!(id, "01ARYZ6S410000000000000000");
    }

    #[test]
    fn the_extremes_are_all_zeros_and_7z() {
        assert_eq!(encode(0, 0).unwrap(), "00000000000000000000000000");
        assert_eq!(
            encode(MAX_TIME as i64, u128::MAX).unwrap(),
            "7ZZZZZZZZZZZZZZZZZZZZZZZZZ"
        );
        // Entropy above 80 bits is dropped, never spills into the time.
        assert_eq!(encode(0, u128::MAX).unwrap(), "0000000000ZZZZZZZZZZZZZZZZ");
    }

    #[test]
    fn entropy_fills_the_last_sixteen_characters_most_significant_first() {
        // 80 bits = 16 characters of 5 bits: entropy 1 is the last character '1', 32 the
        // last two "10", 0x1F << 75 the first entropy character 'Z'.
        assert!(encode(0, 1).unwrap().ends_with("0000000000000001"));
        assert!(encode(0, 32).unwrap().ends_with("0000000000000010"));
        assert_eq!(&encode(0, 0x1F << 75).unwrap()[10..], "Z000000000000000");
    }

    #[test]
    fn only_26_crockford_characters_starting_at_most_with_7_are_ulids() {
        assert!(is_ulid("01ARYZ6S41TSV4RRFFQ69G5FAV"));
        assert!(is_ulid("01aryz6s41tsv4rrffq69g5fav"));
        assert!(is_ulid(&encode(MAX_TIME as i64, u128::MAX).unwrap()));
        assert!(!is_ulid("81ARYZ6S41TSV4RRFFQ69G5FAV"), "overflows 128 bits");
        assert!(
            !is_ulid("01ARYZ6S41TSV4RRFFQ69G5FAI"),
            "I is not in the alphabet"
        );
        assert!(!is_ulid("01ARYZ6S41TSV4RRFFQ69G5FA"));
        assert!(!is_ulid("checkpoint.00000001"));
    }

    #[test]
    fn times_before_the_epoch_or_past_2_pow_48_are_refused() {
        assert!(encode(-1, 0).is_err());
        assert!(encode((MAX_TIME + 1) as i64, 0).is_err());
    }
}
