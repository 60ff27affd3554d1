//! RFC 3339 timestamps to and from Unix nanoseconds, without allocation.
//!
//! Owns: the timestamp syntax of CRI/docker envelopes and Envoy's `%START_TIME%`.
//! Pure; knows nothing of where the text came from.

/// Now, in nanoseconds since the epoch (0 if the clock is before it).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` (also with `t`/space as separator and
/// lowercase `z`) into nanoseconds since the Unix epoch. Fractions beyond nanoseconds are
/// truncated.
pub fn parse_rfc3339_nanos(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    // Consecutive access-log lines share their date, hour and minute: the days-from-civil
    // arithmetic and the checks of those 16 bytes are done once per minute (per thread).
    let key: [u8; 16] = b[..16].try_into().ok()?;
    let base = MINUTE.with(|c| {
        let (k, base) = c.get();
        if k == key {
            return Some(base);
        }
        let base = minute_base(b)?;
        c.set((key, base));
        Some(base)
    })?;
    rest_of_rfc3339(b, base)
}

thread_local! {
    /// The last minute prefix parsed and its seconds since the epoch (an impossible key at
    /// first: it contains no digits).
    static MINUTE: std::cell::Cell<([u8; 16], i64)> = const { std::cell::Cell::new(([0; 16], 0)) };
}

fn digits(b: &[u8], from: usize, len: usize) -> Option<i64> {
    let mut v = 0i64;
    for &c in b.get(from..from + len)? {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as i64;
    }
    Some(v)
}

/// `YYYY-MM-DDTHH:MM` (the first 16 bytes) checked, as seconds since the epoch (UTC, before
/// the offset).
fn minute_base(b: &[u8]) -> Option<i64> {
    let year = digits(b, 0, 4)?;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60)
}

/// `:SS[.fraction](Z|±HH:MM)` after a checked minute prefix worth `base` seconds.
fn rest_of_rfc3339(b: &[u8], base: i64) -> Option<i64> {
    // Envoy's own `%START_TIME%`: `:SS.mmmZ`, checked as one 8-byte word.
    if let Some(&word) = b.get(16..).and_then(|rest| <&[u8; 8]>::try_from(rest).ok()) {
        let v = u64::from_le_bytes(word);
        // Byte lanes (little-endian): `:` S S `.` m m m `Z`/`z`.
        const DIGITS: u64 = 0x00FF_FFFF_00FF_FF00;
        const HIGH: u64 = 0x0080_8080_0080_8000;
        const FIXED: u64 = 0x5A00_0000_2E00_003A; // `Z`, `.`, `:`
        const ZERO: u64 = 0x0030_3030_0030_3000;
        let fixed_ok = (v & !DIGITS & !0x2000_0000_0000_0000) == FIXED; // `z` is `Z` | 0x20
                                                                        // Each digit lane below 0x80, at least `0` and at most `9`.
        let ascii = v & HIGH == 0;
        let at_least_0 = ((v | HIGH) - ZERO) & HIGH == HIGH;
        let at_most_9 = (v & DIGITS).wrapping_add(0x0046_4646_0046_4600) & HIGH == 0;
        if fixed_ok && ascii && at_least_0 && at_most_9 {
            let d = (v & DIGITS) - ZERO;
            let digit = |lane: u32| ((d >> (8 * lane)) & 0xFF) as i64;
            let second = digit(1) * 10 + digit(2);
            if second > 60 {
                return None;
            }
            let millis = digit(4) * 100 + digit(5) * 10 + digit(6);
            return (base + second)
                .checked_mul(1_000_000_000)?
                .checked_add(millis * 1_000_000);
        }
    }
    rest_of_rfc3339_general(b, base)
}

/// [`rest_of_rfc3339`] for every form.
fn rest_of_rfc3339_general(b: &[u8], base: i64) -> Option<i64> {
    let second = digits(b, 17, 2)?;
    if b[16] != b':' || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        let mut scale = 100_000_000i64;
        while let Some(&c) = b.get(i) {
            if !c.is_ascii_digit() {
                break;
            }
            nanos += (c - b'0') as i64 * scale;
            scale /= 10;
            i += 1;
        }
        if i == start {
            return None;
        }
    }
    let offset_secs = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        &sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let h = digits(b, i + 1, 2)?;
            let m = digits(b, i + 4, 2)?;
            if h > 23 || m > 59 {
                return None;
            }
            let off = h * 3600 + m * 60;
            if sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let secs = base + second - offset_secs;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// Formats nanoseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, milliseconds).
pub fn format_rfc3339_millis(nanos: i64) -> String {
    let secs = nanos.div_euclid(1_000_000_000);
    let millis = nanos.rem_euclid(1_000_000_000) / 1_000_000;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uncached: the minute prefix parsed every time.
    fn uncached(s: &str) -> Option<i64> {
        let b = s.as_bytes();
        if b.len() < 20 {
            return None;
        }
        rest_of_rfc3339(b, minute_base(b)?)
    }

    proptest::proptest! {
        /// The per-minute cache never changes an answer: sequences of timestamps sharing
        /// prefixes, valid or not, parse as they do uncached.
        #[test]
        fn the_minute_cache_never_changes_an_answer(
            items in proptest::collection::vec(
                (0u8..3, 0i64..120, 0u32..1_000_000, proptest::sample::select(vec![
                    "Z", "z", "+01:00", "-05:30", "+24:00", "", "Zx",
                ]), proptest::sample::select(vec![
                    "2026-11-26T10:0", "2026-11-26T10:5", "2026-02-29T23:5", "2024-02-29T23:5",
                    "2026-11-26t10:0", "2026-13-01T00:0", "2026-11-26 10:0", "2026-11-26T24:0",
                ])),
                1..40,
            )
        ) {
            for (kind, sec, frac, offset, prefix) in items {
                let s = match kind {
                    0 => format!("{prefix}{}:{:02}{offset}", sec % 10, sec % 61),
                    1 => format!("{prefix}{}:{:02}.{frac:06}{offset}", sec % 10, sec % 61),
                    _ => format!("{prefix}{}:{:02}.{offset}", sec % 10, sec % 61),
                };
                proptest::prop_assert_eq!(parse_rfc3339_nanos(&s), uncached(&s), "{}", s);
            }
        }
    }

    proptest::proptest! {
        /// The fast path for Envoy's `:SS.mmmZ` answers as the general parser does, digits or
        /// not, in range or not.
        #[test]
        fn the_millisecond_fast_path_answers_as_the_general_parser(
            chars in proptest::collection::vec(
                proptest::sample::select(vec![b'0', b'5', b'6', b'9', b'/', b':', b'a', b'.', b'Z', b'z', 0x80, 0xb9, 0xff]),
                5,
            ),
            end in proptest::sample::select(vec![b'Z', b'z', b'+', b'.', 0xda, 0x7a, 0x5b]),
            base in 0i64..4_000_000_000,
        ) {
            let mut b = b"2026-11-26T10:01".to_vec();
            b.extend_from_slice(&[b':', chars[0], chars[1], b'.', chars[2], chars[3], chars[4], end]);
            proptest::prop_assert_eq!(
                rest_of_rfc3339(&b, base),
                rest_of_rfc3339_general(&b, base),
                "{}", String::from_utf8_lossy(&b)
            );
        }
    }

    #[test]
    fn parses_envoy_and_cri_timestamps() {
        // 2026-03-17T09:14:02.113Z, checked with `date -u -d ... +%s%N`.
        assert_eq!(
            parse_rfc3339_nanos("2026-03-17T09:14:02.113Z"),
            Some(1_773_738_842_113_000_000)
        );
        assert_eq!(
            parse_rfc3339_nanos("2026-03-17T09:14:08.896007972Z"),
            Some(1_773_738_848_896_007_972)
        );
        assert_eq!(parse_rfc3339_nanos("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(
            parse_rfc3339_nanos("2024-02-29T00:00:00Z"),
            Some(1_709_164_800_000_000_000)
        );
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "2026-03-17",
            "2026-03-17T09:14:02",
            "2026-13-17T09:14:02Z",
            "2023-02-29T00:00:00Z",
            "2026-03-17T09:14:02.Z",
            "2026-03-17T09:14:02ZZ",
            "2026-03-17T24:00:00Z",
            "-",
        ] {
            assert_eq!(parse_rfc3339_nanos(s), None, "{s}");
        }
    }

    #[test]
    fn formats_round_trip() {
        let n = parse_rfc3339_nanos("2026-11-26T10:15:00.250Z").unwrap();
        assert_eq!(format_rfc3339_millis(n), "2026-11-26T10:15:00.250Z");
    }
}
