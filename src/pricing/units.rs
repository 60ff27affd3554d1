//! Exact rate arithmetic: a rate, fee or cost from its decimal text to integer units of 10^-12
//! currency (rounded half to even on the digits, never through a float), and units back to
//! plain decimal text or the nearest double.
//!
//! Owns: the decimal text ↔ units conversions and their limits. Must not: know entries, types
//! or budgets (callers name the key in their errors).

use super::{MAX_RATE, UNITS_PER_CURRENCY};

/// A plain decimal `-?[0-9]+(\.[0-9]+)?`, as its digit runs.
#[derive(Debug, Clone, Copy)]
struct Decimal<'a> {
    negative: bool,
    int: &'a [u8],
    frac: &'a [u8],
}

fn parse_decimal(s: &str) -> Option<Decimal<'_>> {
    let bytes = s.as_bytes();
    let (negative, unsigned) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, bytes),
    };
    let (int, frac) = match unsigned.iter().position(|&c| c == b'.') {
        Some(dot) => {
            let (int, dot_and_frac) = unsigned.split_at(dot);
            let frac = dot_and_frac.get(1..).unwrap_or_default();
            if frac.is_empty() {
                return None;
            }
            (int, frac)
        }
        None => (unsigned, &[][..]),
    };
    let digits = |run: &[u8]| run.iter().all(u8::is_ascii_digit);
    (!int.is_empty() && digits(int) && digits(frac)).then_some(Decimal {
        negative,
        int,
        frac,
    })
}

pub(super) fn is_plain_decimal(s: &str) -> bool {
    parse_decimal(s).is_some()
}

impl Decimal<'_> {
    fn is_zero(&self) -> bool {
        self.int.iter().chain(self.frac).all(|&c| c == b'0')
    }

    fn is_negative(&self) -> bool {
        self.negative && !self.is_zero()
    }

    /// Whether the (absolute) value is above `limit`.
    fn exceeds(&self, limit: u128) -> bool {
        let mut int: u128 = 0;
        for &c in self.int {
            match int
                .checked_mul(10)
                .and_then(|v| v.checked_add(u128::from(c - b'0')))
            {
                Some(v) => int = v,
                None => return true,
            }
        }
        int > limit || (int == limit && self.frac.iter().any(|&c| c != b'0'))
    }

    /// The absolute value × 10^`scale`, rounded half to even, and whether that was exact;
    /// `None` when it does not fit in a u128. Works on the digits: no float is involved.
    fn scaled_half_even(&self, scale: usize) -> Option<(u128, bool)> {
        let kept_frac = self.frac.iter().copied().chain(std::iter::repeat(b'0'));
        let mut value: u128 = 0;
        for c in self.int.iter().copied().chain(kept_frac.take(scale)) {
            value = value.checked_mul(10)?.checked_add(u128::from(c - b'0'))?;
        }
        let dropped = self.frac.get(scale..).unwrap_or_default();
        let Some((&first, rest)) = dropped.split_first() else {
            return Some((value, true));
        };
        let rest_nonzero = rest.iter().any(|&c| c != b'0');
        let exact = first == b'0' && !rest_nonzero;
        let round_up = first > b'5' || (first == b'5' && (rest_nonzero || value % 2 == 1));
        let value = if round_up {
            value.checked_add(1)?
        } else {
            value
        };
        Some((value, exact))
    }
}

/// A rate, fee or cost converted to units: the value and whether rounding changed it.
pub(super) struct Amount {
    pub(super) units: u128,
    pub(super) rounded: bool,
}

/// `text` × 10^`scale` in units, rounded half to even; `limit` bounds the value as written.
pub(super) fn amount_units(
    text: &str,
    scale: usize,
    limit: Option<u128>,
) -> Result<Amount, String> {
    let decimal = parse_decimal(text).ok_or_else(|| format!("{text:?} is not a plain decimal"))?;
    if decimal.is_negative() {
        return Err(format!("{text} is negative"));
    }
    if let Some(limit) = limit {
        if decimal.exceeds(limit) {
            return Err(format!("{text} is above {limit}"));
        }
    }
    let (units, exact) = decimal
        .scaled_half_even(scale)
        .ok_or_else(|| format!("{text} is too large"))?;
    Ok(Amount {
        units,
        rounded: !exact,
    })
}

/// Units of 10^-12 currency per token for a rate written as currency per million tokens.
pub(super) fn rate_units_per_token(text: &str) -> Result<(u64, bool), String> {
    let a = amount_units(text, 6, Some(MAX_RATE))?;
    // At most 10^6 × 10^6 = 10^12 by the limit, so this always fits.
    let units = u64::try_from(a.units).map_err(|_| format!("{text} is too large"))?;
    Ok((units, a.rounded))
}

/// Units of 10^-12 currency for a fee written in currency.
pub(super) fn fee_units(text: &str) -> Result<(u64, bool), String> {
    let a = amount_units(text, 12, Some(MAX_RATE))?;
    let units = u64::try_from(a.units).map_err(|_| format!("{text} is too large"))?;
    Ok((units, a.rounded))
}

/// Plain decimal text of `units` / 10^12: at most 12 fractional digits, trailing zeros (and a
/// trailing `.`) removed, computed on integers only. `0` → `"0"`, `1` → `"0.000000000001"`,
/// `1_500_000_000_000` → `"1.5"`.
pub fn format_units(units: u128) -> String {
    // Digits written backwards into a stack buffer, two at a time: u128's own formatting and
    // division are library calls, and this runs once per series in a summary.
    let mut buf = [0u8; 48];
    let mut at = buf.len();
    // u64 division when it fits (below ~18.4 million currency): u128's is a library call.
    let (whole, frac) = match u64::try_from(units) {
        Ok(u) => (
            u128::from(u / UNITS_PER_CURRENCY as u64),
            u % UNITS_PER_CURRENCY as u64,
        ),
        Err(_) => (
            units / UNITS_PER_CURRENCY,
            (units % UNITS_PER_CURRENCY) as u64,
        ),
    };
    if frac != 0 {
        // Trailing zeros dropped; the rest written with its leading zeros.
        let (mut f, mut width) = (frac, 12usize);
        while f % 10 == 0 {
            f /= 10;
            width -= 1;
        }
        at = write_digits_backwards(&mut buf[..at], f, width);
        at -= 1;
        buf[at] = b'.';
    }
    at = match u64::try_from(whole) {
        Ok(w) => write_digits_backwards(&mut buf[..at], w, 1),
        Err(_) => {
            let mut w = whole;
            loop {
                at -= 1;
                buf[at] = b'0' + (w % 10) as u8;
                w /= 10;
                if w == 0 {
                    break at;
                }
            }
        }
    };
    let text = &buf[at..];
    debug_assert!(text.iter().all(|&b| b.is_ascii_digit() || b == b'.'));
    // SAFETY: only ASCII digits and '.' were written, which is UTF-8.
    unsafe { std::str::from_utf8_unchecked(text) }.to_owned()
}

/// Writes `n` in decimal, at least `min_digits` digits (leading zeros), ending at the end of
/// `buf`; returns where the digits start. `buf` holds 20 digits at least.
pub(crate) fn write_digits_backwards(buf: &mut [u8], mut n: u64, min_digits: usize) -> usize {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
                                2021222324252627282930313233343536373839\
                                4041424344454647484950515253545556575859\
                                6061626364656667686970717273747576777879\
                                8081828384858687888990919293949596979899";
    let end = buf.len();
    let mut at = end;
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        at -= 2;
        buf[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        at -= 2;
        buf[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        at -= 1;
        buf[at] = b'0' + n as u8;
    }
    while end - at < min_digits {
        at -= 1;
        buf[at] = b'0';
    }
    at
}

/// `units` / 10^12 as the nearest f64, for exporters that write doubles.
pub fn units_to_f64(units: u128) -> f64 {
    const EXACT_IN_F64: u128 = 1 << f64::MANTISSA_DIGITS;
    if units <= EXACT_IN_F64 {
        // Both operands are exact in f64 and IEEE division rounds correctly once.
        return units as f64 / 1e12;
    }
    // Above 2^53 units (~9007 currency) the conversion would round twice; reading the exact
    // decimal text rounds once.
    format_units(units).parse().unwrap_or(f64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rate_text_becomes_units_per_token_exactly() {
        // r per million × 10^12 units / 10^6 tokens = r × 10^6 units per token.
        assert_eq!(rate_units_per_token("0.15"), Ok((150_000, false)));
        assert_eq!(rate_units_per_token("0.075"), Ok((75_000, false)));
        assert_eq!(rate_units_per_token("0.6"), Ok((600_000, false)));
        assert_eq!(rate_units_per_token("0.000001"), Ok((1, false)));
        assert_eq!(rate_units_per_token("0.0000010000"), Ok((1, false)));
        assert_eq!(rate_units_per_token("0"), Ok((0, false)));
        assert_eq!(rate_units_per_token("-0.0"), Ok((0, false)));
        assert_eq!(
            rate_units_per_token("1000000"),
            Ok((1_000_000_000_000, false))
        );
        assert_eq!(
            rate_units_per_token("1000000.000"),
            Ok((1_000_000_000_000, false))
        );
        assert_eq!(rate_units_per_token("0001.5"), Ok((1_500_000, false)));
    }

    #[test]
    fn rounding_to_units_is_half_to_even_on_the_digits() {
        // Units per token = rate × 10^6: 0.5 → 0, 1.5 → 2, 2.5 → 2, 3.5 → 4 (ties to even).
        assert_eq!(rate_units_per_token("0.0000005"), Ok((0, true)));
        assert_eq!(rate_units_per_token("0.0000015"), Ok((2, true)));
        assert_eq!(rate_units_per_token("0.0000025"), Ok((2, true)));
        assert_eq!(rate_units_per_token("0.0000035"), Ok((4, true)));
        // Not ties: 2.50000001 → 3, 2.49999999 → 2, 0.25 → 0.
        assert_eq!(rate_units_per_token("0.00000250000001"), Ok((3, true)));
        assert_eq!(rate_units_per_token("0.00000249999999"), Ok((2, true)));
        assert_eq!(rate_units_per_token("0.00000025"), Ok((0, true)));
        // 0.15000049 per million → 150000.49 → 150000.
        assert_eq!(rate_units_per_token("0.15000049"), Ok((150_000, true)));
    }

    #[test]
    fn fees_become_units_of_ten_to_the_minus_twelve() {
        assert_eq!(fee_units("0.0000000000005"), Ok((0, true)));
        assert_eq!(fee_units("0.0000000000015"), Ok((2, true)));
        assert_eq!(fee_units("0.01"), Ok((10_000_000_000, false)));
        assert_eq!(fee_units("1000000"), Ok((1_000_000_000_000_000_000, false)));
        assert!(fee_units("1000000.1").is_err());
    }

    #[test]
    fn rates_above_a_million_negative_or_not_plain_decimals_are_refused() {
        let above = rate_units_per_token("1000000.000001").unwrap_err();
        assert!(above.contains("above 1000000"), "{above}");
        // Above 10^6 even though it would round to exactly 10^12 units.
        assert!(rate_units_per_token("1000000.0000001").is_err());
        assert!(rate_units_per_token("99999999999999999999999999999999999999999").is_err());
        let negative = rate_units_per_token("-0.1").unwrap_err();
        assert!(negative.contains("negative"), "{negative}");
        for text in [
            "", ".5", "5.", "+1", "1e-7", "0x10", " 1", "1,5", "NaN", "inf", "--1",
        ] {
            assert!(!is_plain_decimal(text), "{text:?}");
            assert!(rate_units_per_token(text).is_err(), "{text:?}");
        }
    }

    // ---- decimal text -----------------------------------------------------------------------

    #[test]
    fn units_are_written_as_plain_decimals() {
        assert_eq!(format_units(0), "0");
        assert_eq!(format_units(1), "0.000000000001");
        assert_eq!(format_units(1_500_000_000_000), "1.5");
        assert_eq!(format_units(1_000_000_000_000), "1");
        assert_eq!(format_units(420_000_000), "0.00042");
        assert_eq!(format_units(10_000_000_000_010), "10.00000000001");
        // u128::MAX = 340282366920938463463374607431768211455.
        assert_eq!(
            format_units(u128::MAX),
            "340282366920938463463374607.431768211455"
        );
    }

    #[test]
    fn units_become_the_nearest_double() {
        assert_eq!(units_to_f64(0), 0.0);
        assert_eq!(units_to_f64(1_500_000_000_000), 1.5);
        assert_eq!(units_to_f64(420_000_000), 0.00042);
        assert_eq!(units_to_f64(1), 1e-12);
        assert_eq!(units_to_f64(10u128.pow(30)), 1e18);
        // 12345678.900000000001 is nearest to the double 12345678.9.
        assert_eq!(units_to_f64(12_345_678_900_000_000_001), 12_345_678.9);
        assert_eq!(
            units_to_f64(u128::MAX),
            340_282_366_920_938_463_463_374_607.431_768_211_455
        );
    }

    /// Decimal text back to units by splitting at the point, independent of `format_units`.
    fn parse_units(text: &str) -> Option<u128> {
        let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
        if frac.len() > 12 || frac.ends_with('0') || text.ends_with('.') {
            return None;
        }
        let padded = format!("{frac:0<12}");
        whole
            .parse::<u128>()
            .ok()?
            .checked_mul(UNITS_PER_CURRENCY)?
            .checked_add(padded.parse().ok()?)
    }

    proptest! {
        #[test]
        fn format_units_reads_back_to_the_same_units(units in any::<u128>()) {
            let text = format_units(units);
            prop_assert_eq!(parse_units(&text), Some(units), "{}", text);
        }

        #[test]
        fn units_to_f64_is_the_nearest_double(units in any::<u128>()) {
            let expected: f64 = format_units(units).parse().unwrap();
            prop_assert_eq!(units_to_f64(units), expected);
        }

        #[test]
        fn rate_rounding_agrees_with_integer_division(
            whole in 0u64..1_000_000,
            // Random digits, and exact ties: a 5 (then only zeros) right after the sixth fraction digit.
            frac in prop_oneof!["[0-9]{0,20}", "[0-9]{6}50{0,6}", "[0-9]{0,6}"]
        ) {
            let text = if frac.is_empty() { whole.to_string() } else { format!("{whole}.{frac}") };
            // rate × 10^6 = N × 10^6 / 10^k, N the digits without the point, k the fraction digits.
            let k = frac.len() as u32;
            let n = u128::from(whole) * 10u128.pow(k) + frac.parse::<u128>().unwrap_or(0);
            let (q, r, d) = (n * 1_000_000 / 10u128.pow(k), n * 1_000_000 % 10u128.pow(k), 10u128.pow(k));
            let up = 2 * r > d || (2 * r == d && q % 2 == 1);
            let expected = (u64::try_from(q + u128::from(up)).unwrap(), r != 0);
            prop_assert_eq!(rate_units_per_token(&text), Ok(expected));
        }
    }
}
