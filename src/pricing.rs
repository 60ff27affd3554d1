//! The price table of SPEC §10 ("Spend"): the `[pricing]` and `[[budgets]]` config types and
//! the price-file syntax, their validation, exact rate arithmetic, the choice of the entry in
//! force for a record, and a record's cost in integer units of 10^-12 currency.
//!
//! Owns: what a rate, fee or budget cost is worth in units (read from its decimal text, never
//! through a float), the token-type tree (`input`/`output` under `total`, `included_in`), glob
//! matching of price patterns, the cost and "incomplete" verdict of one record, and the plain
//! decimal text of a cost.
//!
//! Must not touch: files, clocks, metrics or aggregation state. It does not read `pricing.file`
//! (the caller reads it and hands the text to [`parse_price_file`]), it does not count
//! unpriced or unmetered records (it only says whether a record's cost is incomplete), and it
//! does not cache selections (it says for how long a selection holds so the caller can).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Cost is kept in integer units of 10^-12 currency: this many units make one unit of currency.
pub const UNITS_PER_CURRENCY: u128 = 1_000_000_000_000;

/// The highest rate (currency per million tokens) and the highest fee (currency per request).
/// With counts at most 2^64 and at most 64 token types, a record's cost then stays far below
/// `u128::MAX`, so the saturation in [`PriceTable::charge`] is a guard that never bites.
pub const MAX_RATE: u128 = 1_000_000;

/// Index of `input` among the token types.
pub const INPUT: usize = 0;
/// Index of `output` among the token types.
pub const OUTPUT: usize = 1;
/// Index of `total` among the token types.
pub const TOTAL: usize = 2;
/// The built-in token types, at their indexes; `[fields.extra_tokens]` follow from index 3.
pub const BUILTIN_TYPES: [&str; 3] = ["input", "output", "total"];

/// Validity is a bit per type in a `u64`.
const MAX_TYPES: usize = 64;
/// Bits of input, output and total.
const CORE_TYPES: u64 = 1 << INPUT | 1 << OUTPUT | 1 << TOTAL;

/// The budget windows of SPEC §10 and their length in seconds.
pub const BUDGET_WINDOWS: [(&str, u64); 3] =
    [("1d", 86_400), ("7d", 7 * 86_400), ("30d", 30 * 86_400)];

/// Labels are cut to this many bytes (SPEC §3); a longer budget key can never match.
const MAX_LABEL_BYTES: usize = 256;

// ---------------------------------------------------------------------------------------------
// Config types
// ---------------------------------------------------------------------------------------------

/// `[pricing]`: pricing is off while `prices` is empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Pricing {
    /// The `currency` label of `llm_cost_total`.
    pub currency: String,
    /// A TOML file with `included_in` and `[[prices]]` that replace the inline ones; read by
    /// the caller (see [`parse_price_file`] and [`Pricing::with_price_file`]).
    pub file: String,
    /// Token type → the type whose count already includes it.
    pub included_in: BTreeMap<String, String>,
    pub prices: Vec<PriceEntry>,
}

impl Default for Pricing {
    fn default() -> Self {
        Self {
            currency: "USD".into(),
            file: String::new(),
            included_in: default_included_in(),
            prices: Vec::new(),
        }
    }
}

/// The default `included_in`: Envoy AI Gateway >= v0.5.0 counts cache reads and writes in
/// `input` and reasoning in `output`.
pub fn default_included_in() -> BTreeMap<String, String> {
    [
        ("cached_input", "input"),
        ("cache_creation_input", "input"),
        ("reasoning", "output"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

impl Pricing {
    /// The table with a price file's contents in place of the inline ones: the file's prices
    /// always, and its `included_in` when the file has one (else the inline one stays, so a
    /// shared list of prices need not repeat a deployment's tree).
    pub fn with_price_file(&self, file: PriceFile) -> Pricing {
        Pricing {
            currency: self.currency.clone(),
            file: self.file.clone(),
            included_in: file.included_in.unwrap_or_else(|| self.included_in.clone()),
            prices: file.prices,
        }
    }
}

/// One `[[pricing.prices]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceEntry {
    /// Glob over the model label value.
    pub model: String,
    /// Glob over the service_id label value.
    #[serde(default = "star")]
    pub service_id: String,
    /// RFC 3339 with an offset: in force for records whose event time is at or after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Token type → currency per 1,000,000 tokens.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_million: BTreeMap<String, Rate>,
    /// Currency per 2xx record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_request: Option<Rate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<Tier>,
}

fn star() -> String {
    "*".into()
}

/// Long-context rates: used for a record whose input count is above `above_input`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    pub above_input: u64,
    pub per_million: BTreeMap<String, Rate>,
}

/// A rate, fee or budget cost as written: a TOML number or a plain decimal string, kept as its
/// shortest round-trip decimal text (for a float, Rust's `Display` of `f64`, which is exactly
/// that and never uses an exponent; for an integer, its digits). A leading `-` is accepted
/// here so that validation can say which entry is negative.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rate(pub String);

impl Rate {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Rate {
    fn from(s: &str) -> Self {
        Rate(s.to_string())
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Rate {
    /// As the TOML number it was when that number reads back to the same text (so
    /// `check-config` prints what was written), else as the decimal string.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let Ok(i) = self.0.parse::<i64>() {
            if i.to_string() == self.0 {
                return s.serialize_i64(i);
            }
        }
        if is_plain_decimal(&self.0) {
            if let Ok(f) = self.0.parse::<f64>() {
                if f.is_finite() && f.to_string() == self.0 {
                    return s.serialize_f64(f);
                }
            }
        }
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RateVisitor;
        impl Visitor<'_> for RateVisitor {
            type Value = Rate;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number or a plain decimal string such as \"0.15\"")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Rate, E> {
                Ok(Rate(v.to_string()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Rate, E> {
                Ok(Rate(v.to_string()))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Rate, E> {
                if !v.is_finite() {
                    return Err(E::custom(format!(
                        "{v} is not a rate: write a finite number such as 0.15"
                    )));
                }
                // `Display` of an f64 is its shortest round-trip decimal, without exponent.
                Ok(Rate(v.to_string()))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Rate, E> {
                if is_plain_decimal(v) {
                    Ok(Rate(v.to_string()))
                } else {
                    Err(E::custom(format!(
                        "{v:?} is not a plain decimal: write digits with an optional fraction, \
                         such as \"0.15\" (no exponent, sign '+', spaces or separators)"
                    )))
                }
            }
        }
        d.deserialize_any(RateVisitor)
    }
}

/// One `[[budgets]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// An exact api_key_id, or `"*"`: the default for keys without an entry of their own.
    pub api_key_id: String,
    /// `"1d"`, `"7d"` or `"30d"` (rolling).
    pub window: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// In `pricing.currency`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Rate>,
}

/// The contents of `pricing.file`: the `[pricing]` table's `included_in` and `[[prices]]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub included_in: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub prices: Vec<PriceEntry>,
}

/// Parses a price file. Keys in errors are relative to the file (`prices[2].from`); the key is
/// empty for a TOML syntax error, whose message gives the line.
pub fn parse_price_file(text: &str) -> Result<PriceFile, PricingError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .and_then(|span| text.get(..span.start))
            .map(|before| before.matches('\n').count() + 1);
        let message = e.message().trim();
        PricingError {
            key: String::new(),
            message: match line {
                Some(line) => format!("invalid TOML at line {line}: {message}"),
                None => format!("invalid TOML: {message}"),
            },
        }
    })?;
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let path = e.path().to_string();
        PricingError {
            key: if path == "." { String::new() } else { path },
            message: e.inner().to_string(),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Errors and warnings
// ---------------------------------------------------------------------------------------------

/// A config error (exit 2): the key (dotted path, e.g. `pricing.prices[2].from`) and a message
/// that names the entry's model (or a budget's api_key_id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricingError {
    pub key: String,
    pub message: String,
}

impl fmt::Display for PricingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "key `{}`: {}", self.key, self.message)
        }
    }
}

impl std::error::Error for PricingError {}

/// Something `check-config` reports without failing: a rate that rounding changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricingWarning {
    pub key: String,
    pub message: String,
}

impl fmt::Display for PricingWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key `{}`: {}", self.key, self.message)
    }
}

// ---------------------------------------------------------------------------------------------
// Decimal text → units
// ---------------------------------------------------------------------------------------------

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

fn is_plain_decimal(s: &str) -> bool {
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
struct Amount {
    units: u128,
    rounded: bool,
}

/// `text` × 10^`scale` in units, rounded half to even; `limit` bounds the value as written.
fn amount_units(text: &str, scale: usize, limit: Option<u128>) -> Result<Amount, String> {
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
fn rate_units_per_token(text: &str) -> Result<(u64, bool), String> {
    let a = amount_units(text, 6, Some(MAX_RATE))?;
    // At most 10^6 × 10^6 = 10^12 by the limit, so this always fits.
    let units = u64::try_from(a.units).map_err(|_| format!("{text} is too large"))?;
    Ok((units, a.rounded))
}

/// Units of 10^-12 currency for a fee written in currency.
fn fee_units(text: &str) -> Result<(u64, bool), String> {
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

// ---------------------------------------------------------------------------------------------
// Globs
// ---------------------------------------------------------------------------------------------

/// Whether `text` matches `pattern`: case-sensitive, `*` matches any run of characters (`/`,
/// `.` and `:` included, and none), every other character — `?` and `[` too — only itself.
/// Linear backtracking to the last `*` only, so at most O(len(pattern) × len(text)) steps.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was and where in `text` its current match ends.
    let mut last_star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                last_star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match last_star {
                // Let that `*` swallow one more byte and retry the rest.
                Some((star_pi, star_ti)) => {
                    last_star = Some((star_pi, star_ti + 1));
                    pi = star_pi + 1;
                    ti = star_ti + 1;
                }
                None => return false,
            },
        }
    }
    p.get(pi..).unwrap_or_default().iter().all(|&c| c == b'*')
}

/// A compiled price pattern: the common shapes skip the general matcher.
#[derive(Debug, Clone)]
enum Glob {
    Any,
    Exact(String),
    Prefix(String),
    Pattern(String),
}

impl Glob {
    fn new(pattern: &str) -> Glob {
        if !pattern.is_empty() && pattern.bytes().all(|c| c == b'*') {
            return Glob::Any;
        }
        match pattern.find('*') {
            None => Glob::Exact(pattern.to_string()),
            Some(at) if at + 1 == pattern.len() => Glob::Prefix(pattern[..at].to_string()),
            Some(_) => Glob::Pattern(pattern.to_string()),
        }
    }

    fn matches(&self, text: &str) -> bool {
        match self {
            Glob::Any => true,
            Glob::Exact(s) => s == text,
            Glob::Prefix(s) => text.starts_with(s.as_str()),
            Glob::Pattern(p) => glob_matches(p, text),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The token-type tree
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
struct TypeTree {
    names: Vec<String>,
    /// The type whose count includes this one's; `None` for a root.
    parent: Vec<Option<usize>>,
}

impl TypeTree {
    fn build(
        included_in: &BTreeMap<String, String>,
        extra_types: &[String],
        included_in_key: &str,
    ) -> Result<TypeTree, PricingError> {
        let mut names: Vec<String> = BUILTIN_TYPES.iter().map(|s| s.to_string()).collect();
        for extra in extra_types {
            if names.contains(extra) {
                return Err(PricingError {
                    key: format!("fields.extra_tokens.{extra}"),
                    message: format!(
                        "token type {extra:?} is defined twice (input, output and total are built in)"
                    ),
                });
            }
            names.push(extra.clone());
        }
        if names.len() > MAX_TYPES {
            return Err(PricingError {
                key: "fields.extra_tokens".into(),
                message: format!(
                    "pricing supports at most {} extra token types",
                    MAX_TYPES - 3
                ),
            });
        }
        let mut tree = TypeTree {
            parent: vec![None; names.len()],
            names,
        };
        tree.parent[INPUT] = Some(TOTAL);
        tree.parent[OUTPUT] = Some(TOTAL);
        for (child, parent) in included_in {
            let key = format!("{included_in_key}.{child}");
            if BUILTIN_TYPES.contains(&child.as_str()) {
                return Err(PricingError {
                    key,
                    message: format!(
                        "{child:?} cannot be placed: input and output are part of total, and total is part of nothing"
                    ),
                });
            }
            // SPEC: keys naming a type that [fields.extra_tokens] does not define are ignored
            // (the default names cache and reasoning types a deployment may not collect).
            let Some(child_index) = tree.index(child) else {
                continue;
            };
            let Some(parent_index) = tree.index(parent) else {
                return Err(PricingError {
                    key,
                    message: format!(
                        "unknown token type {parent:?}; known types: {}",
                        tree.names.join(", ")
                    ),
                });
            };
            tree.parent[child_index] = Some(parent_index);
        }
        // Only extras can be in a cycle (the built-ins' parents are fixed); a cycle is found
        // from its lowest-indexed member first, which makes the reported key deterministic.
        for start in TOTAL + 1..tree.names.len() {
            let mut path = vec![start];
            let mut current = tree.parent[start];
            while let Some(p) = current {
                path.push(p);
                if p == start {
                    let chain: Vec<&str> = path.iter().map(|&i| tree.names[i].as_str()).collect();
                    return Err(PricingError {
                        key: format!("{included_in_key}.{}", tree.names[start]),
                        message: format!("included_in has a cycle: {}", chain.join(" -> ")),
                    });
                }
                if path.len() > tree.names.len() {
                    break; // a cycle not through `start`: reported from its own member
                }
                current = tree.parent[p];
            }
        }
        Ok(tree)
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Ancestors of `i`, nearest first. The tree is acyclic once built.
    fn ancestors(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        std::iter::successors(self.parent.get(i).copied().flatten(), move |&a| {
            self.parent.get(a).copied().flatten()
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The compiled table
// ---------------------------------------------------------------------------------------------

/// An entry of the table, by its index in file order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EntryId(pub u32);

/// A record's token counts by type index (see [`PriceTable::type_names`]) and which of them
/// were measured. A type without its valid bit counts 0. The `total` count is SPEC §3's total
/// (the total field when valid, else input + output of the valid ones), valid when that exists.
#[derive(Clone, Copy, Debug)]
pub struct TypeCounts<'a> {
    /// Input, output and total (held apart from the extra types: a record has them as fields,
    /// and the common tables price only them).
    pub core: [u64; 3],
    /// The extra types, type index 3 onwards.
    pub extra: &'a [u64],
    /// Bit `i`: type `i` had a valid value.
    pub valid: u64,
}

impl<'a> TypeCounts<'a> {
    /// Counts laid out as one slice by type index (missing ones count 0).
    pub fn from_slice(counts: &'a [u64], valid: u64) -> Self {
        let at = |i: usize| counts.get(i).copied().unwrap_or(0);
        TypeCounts {
            core: [at(INPUT), at(OUTPUT), at(TOTAL)],
            extra: counts.get(3..).unwrap_or(&[]),
            valid,
        }
    }

    #[inline]
    fn is_valid(&self, i: usize) -> bool {
        i < MAX_TYPES && (self.valid >> i) & 1 == 1
    }

    /// The count of type `i`, 0 when it was not measured. Branch-free for the core types: it
    /// runs a few times per record. Type indices are below [`MAX_TYPES`] (the tree refuses more).
    #[inline]
    fn get(&self, i: usize) -> u64 {
        let measured = 0u64.wrapping_sub((self.valid >> (i % MAX_TYPES)) & 1);
        let count = match self.core.get(i) {
            Some(&c) => c,
            None => self.extra.get(i - 3).copied().unwrap_or(0),
        };
        count & measured
    }
}

/// The cost of one record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Charge {
    /// Cost in units of 10^-12 currency.
    pub units: u128,
    /// The entry prices only part of the record (SPEC "Unpriced"): the caller adds 1 to
    /// `llm_unpriced_requests_total`.
    pub incomplete: bool,
    /// Bit `i`: priced type `i`'s count is above its nearest priced ancestor's (the caller adds
    /// 1 to `tokenmeter_pricing_child_exceeds_parent_total{type=<name of i>}`).
    pub child_exceeds: u64,
}

/// A priced type of a rate set, with what `charge` needs precomputed.
#[derive(Debug, Clone)]
struct PricedType {
    ty: u8,
    units_per_token: u64,
    /// The nearest ancestor that has a rate in the same set.
    priced_ancestor: Option<u8>,
    /// Bit `c`: priced type `c` has this type as its nearest priced ancestor.
    priced_children: u64,
}

/// The rates in force for a record: an entry's own, or an entry's with a tier's laid over.
#[derive(Debug, Clone, Default)]
struct RateSet {
    priced: Vec<PricedType>,
    /// No priced type has a priced ancestor (so none has priced children either): each is
    /// charged its own count, and no child can exceed a parent. Most tables.
    flat: bool,
    /// Which of input, output and total no rate covers: only then can a record be
    /// incomplete (0 for most tables, so the per-record test is skipped).
    core_uncovered: u64,
    /// When `flat`: the rates of input, output and total (0 when not priced) and the priced
    /// extra types, so a record is charged with three multiplications and no loop.
    flat_core: [u64; 3],
    flat_extra: Vec<(u8, u64)>,
}

impl RateSet {
    /// A flat set's charge for `counts` (no fee): each priced type's own count. Each product
    /// fits in 128 bits.
    #[inline]
    fn flat_units(&self, counts: &TypeCounts<'_>) -> u128 {
        let [input, output, total] = self.flat_core;
        let mut units = (u128::from(counts.get(INPUT)) * u128::from(input))
            .saturating_add(u128::from(counts.get(OUTPUT)) * u128::from(output))
            .saturating_add(u128::from(counts.get(TOTAL)) * u128::from(total));
        for &(ty, rate) in &self.flat_extra {
            let own = counts.get(usize::from(ty));
            units = units.saturating_add(u128::from(own) * u128::from(rate));
        }
        units
    }

    /// SPEC §10 "Unpriced": a count > 0 of input or output (of total when neither is valid)
    /// that no rate of this set covers.
    #[inline]
    fn incomplete(&self, counts: &TypeCounts<'_>) -> bool {
        let uncovered = |i: usize| (self.core_uncovered >> i) & 1 == 1 && counts.get(i) > 0;
        self.core_uncovered != 0
            && (uncovered(INPUT)
                || uncovered(OUTPUT)
                || (!counts.is_valid(INPUT) && !counts.is_valid(OUTPUT) && uncovered(TOTAL)))
    }

    fn new(rates: &[Option<u64>], tree: &TypeTree) -> RateSet {
        let is_priced = |i: usize| rates.get(i).copied().flatten().is_some();
        let mut priced: Vec<PricedType> = Vec::new();
        let mut covered = 0u64;
        for (ty, rate) in rates.iter().enumerate() {
            if is_priced(ty) || tree.ancestors(ty).any(is_priced) {
                covered |= 1 << ty;
            }
            if let Some(units_per_token) = *rate {
                priced.push(PricedType {
                    ty: ty as u8,
                    units_per_token,
                    priced_ancestor: tree.ancestors(ty).find(|&a| is_priced(a)).map(|a| a as u8),
                    priced_children: 0,
                });
            }
        }
        let links: Vec<(u8, u8)> = priced
            .iter()
            .filter_map(|p| p.priced_ancestor.map(|a| (a, p.ty)))
            .collect();
        for (ancestor, child) in links {
            if let Some(p) = priced.iter_mut().find(|p| p.ty == ancestor) {
                p.priced_children |= 1 << child;
            }
        }
        let flat = priced.iter().all(|p| p.priced_ancestor.is_none());
        let mut flat_core = [0u64; 3];
        let mut flat_extra = Vec::new();
        for p in &priced {
            match flat_core.get_mut(usize::from(p.ty)) {
                Some(rate) => *rate = p.units_per_token,
                None => flat_extra.push((p.ty, p.units_per_token)),
            }
        }
        RateSet {
            flat_core,
            flat_extra,
            priced,
            flat,
            // Bit `i` of `covered`: type `i` or one of its ancestors has a rate.
            core_uncovered: !covered & CORE_TYPES,
        }
    }
}

#[derive(Debug, Clone)]
struct CompiledEntry {
    base: RateSet,
    /// By `above_input`, ascending.
    tiers: Vec<(u64, RateSet)>,
    fee_units: u64,
}

/// Entries with identical (`model`, `service_id`) patterns.
#[derive(Debug, Clone)]
struct Group {
    model: Glob,
    service_id: Glob,
    /// By `from`, ascending; `None` (always in force) first.
    entries: Vec<(Option<i64>, EntryId)>,
}

/// The validated, compiled price table.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    currency: String,
    tree: TypeTree,
    entries: Vec<CompiledEntry>,
    groups: Vec<Group>,
}

impl PriceTable {
    /// Validates and compiles `[pricing]`. `extra_types` are the `[fields.extra_tokens]` names
    /// in the order their counts follow input, output and total (sorted, as a BTreeMap
    /// iterates). Keys in errors read `pricing.prices[2]...`. `pricing.file` is not read here.
    pub fn compile(
        pricing: &Pricing,
        extra_types: &[String],
    ) -> Result<(PriceTable, Vec<PricingWarning>), PricingError> {
        Self::compile_with_prefix(pricing, extra_types, "pricing")
    }

    /// As [`PriceTable::compile`], with keys of `included_in` and prices under `key_prefix`
    /// (`"pricing"` for the main config, `""` for a price file: `prices[2]`).
    pub fn compile_with_prefix(
        pricing: &Pricing,
        extra_types: &[String],
        key_prefix: &str,
    ) -> Result<(PriceTable, Vec<PricingWarning>), PricingError> {
        let under = |rest: &str| {
            if key_prefix.is_empty() {
                rest.to_string()
            } else {
                format!("{key_prefix}.{rest}")
            }
        };
        if pricing.currency.is_empty() {
            return Err(PricingError {
                key: "pricing.currency".into(),
                message: "is empty: it becomes the `currency` label, e.g. \"USD\"".into(),
            });
        }
        let tree = TypeTree::build(&pricing.included_in, extra_types, &under("included_in"))?;
        let mut warnings = Vec::new();
        let mut entries = Vec::with_capacity(pricing.prices.len());
        let mut groups: Vec<Group> = Vec::new();
        let mut group_of: HashMap<(&str, &str), usize> = HashMap::new();
        let mut first_with: HashMap<(&str, &str, Option<i64>), usize> = HashMap::new();
        for (index, entry) in pricing.prices.iter().enumerate() {
            let context = EntryContext {
                key: under(&format!("prices[{index}]")),
                who: describe_entry(entry),
            };
            let (compiled, from) = compile_entry(entry, &tree, &context, &mut warnings)?;
            let identity = (entry.model.as_str(), entry.service_id.as_str(), from);
            if let Some(&earlier) = first_with.get(&identity) {
                return Err(context.error(
                    &context.key,
                    format!(
                        "same model, service_id and from as {}",
                        under(&format!("prices[{earlier}]"))
                    ),
                ));
            }
            first_with.insert(identity, index);
            let id = EntryId(
                u32::try_from(index)
                    .map_err(|_| context.error(&context.key, "too many price entries".into()))?,
            );
            let group = *group_of
                .entry((entry.model.as_str(), entry.service_id.as_str()))
                .or_insert_with(|| {
                    groups.push(Group {
                        model: Glob::new(&entry.model),
                        service_id: Glob::new(&entry.service_id),
                        entries: Vec::new(),
                    });
                    groups.len() - 1
                });
            groups[group].entries.push((from, id));
            entries.push(compiled);
        }
        for group in &mut groups {
            // Stable, and no two entries of a group share a `from` (checked above).
            group.entries.sort_by_key(|&(from, _)| from);
        }
        let table = PriceTable {
            currency: pricing.currency.clone(),
            tree,
            entries,
            groups,
        };
        Ok((table, warnings))
    }

    /// No prices: pricing is off.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The number of price entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The number of price entries (for log lines; same as [`PriceTable::len`]).
    pub fn entries(&self) -> usize {
        self.entries.len()
    }

    /// Whether any entry has a `from`: only then does the price depend on event time.
    pub fn time_dependent(&self) -> bool {
        self.groups
            .iter()
            .any(|g| g.entries.iter().any(|(from, _)| from.is_some()))
    }

    pub fn currency(&self) -> &str {
        &self.currency
    }

    /// `input`, `output`, `total`, then the extra types: the index of a name is its type index.
    pub fn type_names(&self) -> &[String] {
        &self.tree.names
    }

    /// The entry in force for a record with these `model` and `service_id` label values at
    /// event time `t_ns`, and the half-open interval `[from_ns, until_ns)` of event time over
    /// which the answer is the same for this (model, service_id) (`i64::MIN` / `i64::MAX` when
    /// unbounded), so the caller can cache it until the next `from` boundary.
    pub fn select(&self, model: &str, service_id: &str, t_ns: i64) -> (Option<EntryId>, i64, i64) {
        // The earliest `from` after `t_ns` of the groups passed over: there the answer changes.
        let mut until = i64::MAX;
        for group in &self.groups {
            if !group.model.matches(model) || !group.service_id.matches(service_id) {
                continue;
            }
            let in_force = group
                .entries
                .partition_point(|&(from, _)| from.is_none_or(|f| f <= t_ns));
            if let Some(&(Some(next), _)) = group.entries.get(in_force) {
                until = until.min(next);
            }
            if let Some(&(from, id)) = in_force.checked_sub(1).and_then(|i| group.entries.get(i)) {
                return (Some(id), from.unwrap_or(i64::MIN), until);
            }
            // Nothing in force yet: the next group gets its chance (SPEC "Selection").
        }
        (None, i64::MIN, until)
    }

    /// The rates of `entry` when it charges every record linearly — no tiers, no priced type
    /// inside another — so that its cost over many records is its cost of their summed
    /// counts (the store then sums first and multiplies once; see `aggregate`).
    #[inline]
    pub fn linear(&self, entry: EntryId) -> Option<Linear<'_>> {
        let e = self.entries.get(entry.0 as usize)?;
        (e.tiers.is_empty() && e.base.flat).then_some(Linear {
            rates: &e.base,
            fee_units: e.fee_units,
        })
    }

    /// The cost of one record priced by `entry`; `is_2xx` decides the fee. An unknown `entry`
    /// costs nothing.
    #[inline]
    pub fn charge(&self, entry: EntryId, counts: &TypeCounts<'_>, is_2xx: bool) -> Charge {
        let Some(e) = self.entries.get(entry.0 as usize) else {
            return Charge::default();
        };
        let rates = if e.tiers.is_empty() {
            &e.base
        } else {
            let input = counts.get(INPUT);
            e.tiers
                .iter()
                .rev()
                .find(|&&(above, _)| input > above)
                .map_or(&e.base, |(_, tiered)| tiered)
        };
        let mut units: u128 = 0;
        let mut child_exceeds = 0u64;
        if rates.flat {
            units = rates.flat_units(counts);
        } else {
            self.charge_tree(rates, counts, &mut units, &mut child_exceeds);
        }
        if is_2xx {
            units = units.saturating_add(u128::from(e.fee_units));
        }
        let incomplete = rates.incomplete(counts);
        Charge {
            units,
            incomplete,
            child_exceeds,
        }
    }

    /// The charge rule with priced descendants: each priced type is charged its count minus
    /// its priced children's, floored at 0; a child above its parent is flagged.
    fn charge_tree(
        &self,
        rates: &RateSet,
        counts: &TypeCounts<'_>,
        units: &mut u128,
        child_exceeds: &mut u64,
    ) {
        for p in &rates.priced {
            let own = counts.get(usize::from(p.ty));
            let mut below = 0u64;
            let mut children = p.priced_children;
            while children != 0 {
                below = below.saturating_add(counts.get(children.trailing_zeros() as usize));
                children &= children - 1;
            }
            // Both factors fit in 64 bits, so the product fits in 128.
            let cost = u128::from(own.saturating_sub(below)) * u128::from(p.units_per_token);
            *units = units.saturating_add(cost);
            if let Some(ancestor) = p.priced_ancestor {
                if own > counts.get(usize::from(ancestor)) {
                    *child_exceeds |= 1 << p.ty;
                }
            }
        }
    }
}

/// A linear entry's rates (see [`PriceTable::linear`]).
#[derive(Clone, Copy, Debug)]
pub struct Linear<'t> {
    rates: &'t RateSet,
    fee_units: u64,
}

impl Linear<'_> {
    /// The cost of records whose counts sum to `counts`, `requests_2xx` of them 2xx: exactly
    /// the sum of [`PriceTable::charge`] over them.
    pub fn cost(&self, counts: &TypeCounts<'_>, requests_2xx: u64) -> u128 {
        self.rates
            .flat_units(counts)
            .saturating_add(u128::from(requests_2xx) * u128::from(self.fee_units))
    }

    /// Whether some record could be priced only in part (input, output or total uncovered).
    #[inline]
    pub fn may_be_incomplete(&self) -> bool {
        self.rates.core_uncovered != 0
    }

    /// Whether a record with `counts` is priced only in part ([`Charge::incomplete`]).
    #[inline]
    pub fn incomplete(&self, counts: &TypeCounts<'_>) -> bool {
        self.rates.incomplete(counts)
    }
}

/// How errors about one entry name it.
struct EntryContext {
    key: String,
    who: String,
}

impl EntryContext {
    fn error(&self, key: &str, message: String) -> PricingError {
        PricingError {
            key: key.to_string(),
            message: format!("{}: {message}", self.who),
        }
    }
}

fn describe_entry(entry: &PriceEntry) -> String {
    if entry.service_id == "*" {
        format!("(model {:?})", entry.model)
    } else {
        format!(
            "(model {:?}, service_id {:?})",
            entry.model, entry.service_id
        )
    }
}

/// Validates one entry; returns it compiled and its `from` in ns.
fn compile_entry(
    entry: &PriceEntry,
    tree: &TypeTree,
    context: &EntryContext,
    warnings: &mut Vec<PricingWarning>,
) -> Result<(CompiledEntry, Option<i64>), PricingError> {
    let key = &context.key;
    if entry.model.is_empty() {
        return Err(context.error(
            &format!("{key}.model"),
            "the model pattern is empty; use \"*\" for every model".into(),
        ));
    }
    if entry.service_id.is_empty() {
        // Label values are never empty ("unknown" stands for a missing one): it would match nothing.
        return Err(context.error(
            &format!("{key}.service_id"),
            "the service_id pattern is empty; use \"*\" (the default) for every service".into(),
        ));
    }
    let from = match &entry.from {
        None => None,
        Some(text) => Some(crate::timefmt::parse_rfc3339_nanos(text).ok_or_else(|| {
            context.error(
                &format!("{key}.from"),
                format!(
                    "{text:?} is not an RFC 3339 time with an offset, e.g. \"2026-01-01T00:00:00Z\" \
                     (years 1678 to 2261)"
                ),
            )
        })?),
    };
    let per_million_key = format!("{key}.per_million");
    let base_rates = compile_rates(
        &entry.per_million,
        tree,
        &per_million_key,
        context,
        warnings,
    )?;
    let fee_units = match &entry.per_request {
        None => 0,
        Some(fee) => {
            let fee_key = format!("{key}.per_request");
            let (units, rounded) = fee_units(fee.as_str())
                .map_err(|m| context.error(&fee_key, format!("per_request fee {m}")))?;
            if rounded {
                warnings.push(PricingWarning {
                    key: fee_key,
                    message: format!(
                        "{}: fee {fee} is not a whole number of 10^-12 currency; it is applied as {}",
                        context.who,
                        format_units(u128::from(units))
                    ),
                });
            }
            units
        }
    };
    if entry.per_million.is_empty() && entry.per_request.is_none() && entry.tiers.is_empty() {
        return Err(context.error(
            key,
            "prices nothing: give per_million rates, a per_request fee or tiers".into(),
        ));
    }
    check_total_alone(&base_rates, context, key)?;
    let mut tiers: Vec<(u64, RateSet)> = Vec::with_capacity(entry.tiers.len());
    let mut seen_thresholds: Vec<u64> = Vec::new();
    for (t, tier) in entry.tiers.iter().enumerate() {
        let tier_key = format!("{key}.tiers[{t}]");
        if tier.per_million.is_empty() {
            return Err(context.error(&tier_key, "the tier has no per_million rates".into()));
        }
        if seen_thresholds.contains(&tier.above_input) {
            return Err(context.error(
                &tier_key,
                format!("two tiers with above_input = {}", tier.above_input),
            ));
        }
        seen_thresholds.push(tier.above_input);
        let tier_rates = compile_rates(
            &tier.per_million,
            tree,
            &format!("{tier_key}.per_million"),
            context,
            warnings,
        )?;
        // The tier replaces the entry's rates for the types it names, for the whole record.
        let merged: Vec<Option<u64>> = base_rates
            .iter()
            .zip(&tier_rates)
            .map(|(&own, &tiered)| tiered.or(own))
            .collect();
        check_total_alone(&merged, context, &tier_key)?;
        tiers.push((tier.above_input, RateSet::new(&merged, tree)));
    }
    tiers.sort_by_key(|&(above, _)| above);
    let compiled = CompiledEntry {
        base: RateSet::new(&base_rates, tree),
        tiers,
        fee_units,
    };
    Ok((compiled, from))
}

/// A `per_million` table as units per token by type index (`None`: no rate).
fn compile_rates(
    per_million: &BTreeMap<String, Rate>,
    tree: &TypeTree,
    key: &str,
    context: &EntryContext,
    warnings: &mut Vec<PricingWarning>,
) -> Result<Vec<Option<u64>>, PricingError> {
    let mut rates = vec![None; tree.names.len()];
    for (name, rate) in per_million {
        let rate_key = format!("{key}.{name}");
        let Some(ty) = tree.index(name) else {
            return Err(context.error(
                &rate_key,
                format!(
                    "unknown token type {name:?} in per_million; known types: {}",
                    tree.names.join(", ")
                ),
            ));
        };
        let (units, rounded) = rate_units_per_token(rate.as_str())
            .map_err(|m| context.error(&rate_key, format!("rate {m}")))?;
        if rounded {
            warnings.push(PricingWarning {
                key: rate_key,
                message: format!(
                    "{}: rate {rate} per million is not a whole number of 10^-12 currency per \
                     token; it is applied as {} per million",
                    context.who,
                    format_units(u128::from(units) * 1_000_000)
                ),
            });
        }
        rates[ty] = Some(units);
    }
    Ok(rates)
}

/// SPEC: a `total` rate beside an `input` or `output` rate is an error.
fn check_total_alone(
    rates: &[Option<u64>],
    context: &EntryContext,
    key: &str,
) -> Result<(), PricingError> {
    let has = |i: usize| rates.get(i).copied().flatten().is_some();
    if has(TOTAL) && (has(INPUT) || has(OUTPUT)) {
        return Err(context.error(
            key,
            "a total rate beside an input or output rate (counting together with the entry's \
             rates for a tier): price either total or input/output"
                .into(),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Budgets
// ---------------------------------------------------------------------------------------------

/// The length of a budget window in seconds; `None` for anything but `1d`, `7d`, `30d`.
pub fn budget_window_secs(window: &str) -> Option<u64> {
    BUDGET_WINDOWS
        .iter()
        .find(|(name, _)| *name == window)
        .map(|&(_, secs)| secs)
}

/// A budget's cost in units of 10^-12 currency (rounded half to even); `None` without a cost
/// or with one [`validate_budgets`] rejects.
pub fn budget_cost_units(budget: &Budget) -> Option<u128> {
    let cost = budget.cost.as_ref()?;
    amount_units(cost.as_str(), 12, None).ok().map(|a| a.units)
}

/// Checks `[[budgets]]` (keys `budgets[i]...`, messages naming the api_key_id): an empty
/// api_key_id, a window other than 1d/7d/30d, neither tokens nor cost, a negative or
/// unreadable cost, a duplicate (api_key_id, window). Warns about a cost rounding changed and
/// a key too long to ever match.
pub fn validate_budgets(budgets: &[Budget]) -> Result<Vec<PricingWarning>, PricingError> {
    let mut warnings = Vec::new();
    let mut first_with: HashMap<(&str, &str), usize> = HashMap::new();
    for (i, budget) in budgets.iter().enumerate() {
        let key = format!("budgets[{i}]");
        let who = format!("(api_key_id {:?})", budget.api_key_id);
        let error = |key: String, message: String| PricingError {
            key,
            message: format!("{who}: {message}"),
        };
        if budget.api_key_id.is_empty() {
            return Err(error(
                format!("{key}.api_key_id"),
                "is empty: write an exact api_key_id, or \"*\" for the default".into(),
            ));
        }
        if budget_window_secs(&budget.window).is_none() {
            return Err(error(
                format!("{key}.window"),
                format!(
                    "window {:?} is not one of \"1d\", \"7d\", \"30d\"",
                    budget.window
                ),
            ));
        }
        if budget.tokens.is_none() && budget.cost.is_none() {
            return Err(error(
                key,
                "has neither tokens nor cost: give a token budget, a cost budget or both".into(),
            ));
        }
        if let Some(cost) = &budget.cost {
            let cost_key = format!("{key}.cost");
            let amount = amount_units(cost.as_str(), 12, None)
                .map_err(|m| error(cost_key.clone(), format!("cost {m}")))?;
            if amount.rounded {
                warnings.push(PricingWarning {
                    key: cost_key,
                    message: format!(
                        "{who}: cost {cost} is not a whole number of 10^-12 currency; it is applied as {}",
                        format_units(amount.units)
                    ),
                });
            }
        }
        if budget.api_key_id.len() > MAX_LABEL_BYTES {
            warnings.push(PricingWarning {
                key: format!("{key}.api_key_id"),
                message: format!(
                    "{who}: longer than {MAX_LABEL_BYTES} bytes; label values are cut to that, so it never matches"
                ),
            });
        }
        let identity = (budget.api_key_id.as_str(), budget.window.as_str());
        if let Some(&earlier) = first_with.get(&identity) {
            return Err(error(
                key,
                format!("same api_key_id and window as budgets[{earlier}]"),
            ));
        }
        first_with.insert(identity, i);
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The config keys this module defines, as they sit in the main config file.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[serde(default)]
        pricing: Pricing,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        budgets: Vec<Budget>,
    }

    fn doc(text: &str) -> Doc {
        toml::from_str(text).expect("test TOML parses")
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn compile(
        text: &str,
        extras: &[&str],
    ) -> Result<(PriceTable, Vec<PricingWarning>), PricingError> {
        PriceTable::compile(&doc(text).pricing, &names(extras))
    }

    fn table(text: &str, extras: &[&str]) -> PriceTable {
        compile(text, extras).expect("compiles").0
    }

    fn rejected(text: &str, extras: &[&str]) -> PricingError {
        compile(text, extras).expect_err("must be a config error")
    }

    fn charge(t: &PriceTable, counts: &[u64], valid: u64, is_2xx: bool) -> Charge {
        t.charge(EntryId(0), &TypeCounts::from_slice(counts, valid), is_2xx)
    }

    const ALL: u64 = u64::MAX;
    // 2026-01-01, -02-01, -03-01 at 00:00:00Z, from `date -u -d 2026-01-01 +%s` etc.
    const JAN: i64 = 1_767_225_600_000_000_000;
    const FEB: i64 = 1_769_904_000_000_000_000;
    const MAR: i64 = 1_772_323_200_000_000_000;

    // ---- rates ------------------------------------------------------------------------------

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

    #[test]
    fn toml_numbers_keep_their_shortest_decimal_text() {
        let file = parse_price_file(
            r#"
            [[prices]]
            model = "m"
            per_million = { input = 2.5e-7, output = 0.60, cached_input = 3, reasoning = "0.10" }
            per_request = 1e6
            "#,
        )
        .unwrap();
        let rates = &file.prices[0].per_million;
        assert_eq!(rates["input"], Rate::from("0.00000025"));
        assert_eq!(rates["output"], Rate::from("0.6"));
        assert_eq!(rates["cached_input"], Rate::from("3"));
        assert_eq!(rates["reasoning"], Rate::from("0.10"));
        assert_eq!(file.prices[0].per_request, Some(Rate::from("1000000")));
        assert_eq!(file.prices[0].service_id, "*");
    }

    #[test]
    fn rates_that_are_not_plain_decimals_fail_at_their_key() {
        let e = parse_price_file("[[prices]]\nmodel = \"m\"\nper_million = { input = \"1e-7\" }\n")
            .unwrap_err();
        assert_eq!(e.key, "prices[0].per_million.input");
        assert!(e.message.contains("not a plain decimal"), "{e}");
        let e = parse_price_file("[[prices]]\nmodel = \"m\"\nper_million = { input = nan }\n")
            .unwrap_err();
        assert_eq!(e.key, "prices[0].per_million.input");
        assert!(e.message.contains("finite"), "{e}");
        let e = parse_price_file("[[prices]]\nmodel = \"m\"\nper_request = true\n").unwrap_err();
        assert_eq!(e.key, "prices[0].per_request");
    }

    #[test]
    fn warnings_name_exactly_the_rates_rounding_changed() {
        let (_, warnings) = compile(
            r#"
            [[pricing.prices]]
            model = "a"
            per_million = { input = 0.15, output = "0.0000005" }
            [[pricing.prices]]
            model = "b"
            per_million = { input = "0.0000015", output = 0.6 }
            per_request = "0.0000000000005"
            tiers = [{ above_input = 10, per_million = { input = 2.5e-7, output = 1.2 } }]
            "#,
            &[],
        )
        .unwrap();
        let keys: Vec<&str> = warnings.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "pricing.prices[0].per_million.output",
                "pricing.prices[1].per_million.input",
                "pricing.prices[1].per_request",
                "pricing.prices[1].tiers[0].per_million.input",
            ]
        );
        // 0.0000005 per million = 0.5 units per token → 0.
        assert_eq!(
            warnings[0].message,
            "(model \"a\"): rate 0.0000005 per million is not a whole number of 10^-12 currency \
             per token; it is applied as 0 per million"
        );
        // 0.0000015 → 2 units per token = 0.000002 per million.
        assert!(warnings[1].message.ends_with("rate 0.0000015 per million is not a whole number of 10^-12 currency per token; it is applied as 0.000002 per million"), "{}", warnings[1].message);
        assert!(
            warnings[2].message.contains("fee 0.0000000000005"),
            "{}",
            warnings[2].message
        );
        assert!(
            warnings[2].message.ends_with("applied as 0"),
            "{}",
            warnings[2].message
        );
        assert!(warnings[3].message.contains("rate 0.00000025 per million"));
    }

    // ---- arithmetic -------------------------------------------------------------------------

    const SPEC_EXAMPLE: &str = r#"
        [[pricing.prices]]
        model = "gpt-4o-mini*"
        per_million = { input = 0.15, output = 0.60, cached_input = 0.075 }
    "#;

    #[test]
    fn spec_example_charges_cached_input_at_its_rate_and_reasoning_as_output() {
        // Types: input, output, total, cached_input (3), reasoning (4); default included_in.
        let t = table(SPEC_EXAMPLE, &["cached_input", "reasoning"]);
        assert_eq!(
            t.type_names(),
            ["input", "output", "total", "cached_input", "reasoning"]
        );
        let c = charge(&t, &[1000, 500, 1500, 400, 200], ALL, true);
        // input 1000 - 400 cached = 600 × 150_000 = 90_000_000
        // cached 400 × 75_000                      = 30_000_000
        // output 500 (reasoning unpriced) × 600_000 = 300_000_000
        assert_eq!(c.units, 420_000_000);
        assert_eq!(format_units(c.units), "0.00042");
        assert!(!c.incomplete);
        assert_eq!(c.child_exceeds, 0);
    }

    #[test]
    fn a_type_without_a_valid_value_counts_zero() {
        let t = table(SPEC_EXAMPLE, &["cached_input", "reasoning"]);
        // cached_input's valid bit (3) unset: input is charged in full, 1000 × 150_000.
        let valid = 0b10111;
        let c = charge(&t, &[1000, 0, 1000, 400, 0], valid, true);
        assert_eq!(c.units, 150_000_000);
        // Counts shorter than the types: the missing ones are 0.
        let c = charge(&t, &[1000], ALL, true);
        assert_eq!(c.units, 150_000_000);
    }

    #[test]
    fn total_only_entry_charges_the_total_and_lets_parts_fall_under_it() {
        let t = table(
            "[[pricing.prices]]\nmodel = \"*\"\nper_million = { total = 1.0, cached_input = 0.5 }\n",
            &["cached_input"],
        );
        // total 1500 - cached 400 (nearest priced ancestor of cached_input is total) = 1100 ×
        // 1_000_000 + 400 × 500_000 = 1_100_000_000 + 200_000_000.
        let c = charge(&t, &[1000, 500, 1500, 400], ALL, true);
        assert_eq!(c.units, 1_300_000_000);
        assert!(!c.incomplete);
        // Only total measured: 1200 × 1_000_000.
        let c = charge(&t, &[0, 0, 1200, 0], 1 << TOTAL, true);
        assert_eq!(c.units, 1_200_000_000);
        assert!(!c.incomplete);
    }

    #[test]
    fn the_highest_tier_below_the_input_count_replaces_the_rates_it_names() {
        // Tiers written out of order on purpose.
        let t = table(
            r#"
            [[pricing.prices]]
            model = "*"
            per_million = { input = 0.15, output = 0.60 }
            tiers = [
              { above_input = 200000, per_million = { input = 0.5, output = 1.2, cached_input = 0.1 } },
              { above_input = 1000, per_million = { input = 0.30 } },
            ]
            "#,
            &["cached_input"],
        );
        // input 1000 is not above 1000: 1000 × 150_000 + 10 × 600_000.
        assert_eq!(
            charge(&t, &[1000, 10, 1010, 0], ALL, true).units,
            156_000_000
        );
        // 1001 > 1000: input 0.30, output keeps 0.60: 1001 × 300_000 + 10 × 600_000.
        assert_eq!(
            charge(&t, &[1001, 10, 1011, 0], ALL, true).units,
            306_300_000
        );
        // 300000 > 200000: input 0.5, output 1.2, and cached_input becomes priced (0.1):
        // (300000 - 100000) × 500_000 + 100000 × 100_000 + 10 × 1_200_000
        // = 100_000_000_000 + 10_000_000_000 + 12_000_000.
        assert_eq!(
            charge(&t, &[300_000, 10, 300_010, 100_000], ALL, true).units,
            110_012_000_000
        );
        // Below the tier, cached_input is not priced: it is part of input's 150_000.
        assert_eq!(
            charge(&t, &[1000, 0, 1000, 400], ALL, true).units,
            150_000_000
        );
    }

    #[test]
    fn the_fee_is_charged_for_2xx_records_only() {
        let t = table(
            "[[pricing.prices]]\nmodel = \"*\"\nper_million = { input = 0.15 }\nper_request = 0.002\n",
            &[],
        );
        // 100 × 150_000 = 15_000_000; fee 0.002 × 10^12 = 2_000_000_000.
        assert_eq!(charge(&t, &[100, 0, 100], ALL, false).units, 15_000_000);
        assert_eq!(charge(&t, &[100, 0, 100], ALL, true).units, 2_015_000_000);
        // A record without tokens pays only the fee.
        assert_eq!(charge(&t, &[], 0, true).units, 2_000_000_000);
        assert_eq!(charge(&t, &[], 0, false).units, 0);
    }

    #[test]
    fn a_child_above_its_priced_parent_is_charged_alone_and_flagged() {
        let t = table(SPEC_EXAMPLE, &["cached_input"]);
        // A pre-v0.5.0 log: cached 1200 > input 1000. input is charged max(0, 1000 - 1200) = 0;
        // cached 1200 × 75_000 = 90_000_000; output 0.
        let c = charge(&t, &[1000, 0, 1000, 1200], ALL, true);
        assert_eq!(c.units, 90_000_000);
        assert_eq!(c.child_exceeds, 1 << 3);
        // Equal counts are not "above".
        assert_eq!(
            charge(&t, &[1200, 0, 1200, 1200], ALL, true).child_exceeds,
            0
        );
    }

    #[test]
    fn a_child_without_a_priced_ancestor_is_never_flagged() {
        // input unpriced: cached_input has no priced ancestor (total unpriced too).
        let t = table(
            "[[pricing.prices]]\nmodel = \"*\"\nper_million = { output = 1, cached_input = 1 }\n",
            &["cached_input"],
        );
        let c = charge(&t, &[0, 0, 0, 1200], ALL, true);
        assert_eq!(c.child_exceeds, 0);
        assert_eq!(c.units, 1_200_000_000);
    }

    #[test]
    fn a_record_is_incomplete_when_input_or_output_has_no_rate_above_it() {
        let input_only = table(
            "[[pricing.prices]]\nmodel = \"*\"\nper_million = { input = 1 }\n",
            &[],
        );
        // Output 500 unpriced.
        let c = charge(&input_only, &[100, 500, 600], ALL, true);
        assert!(c.incomplete);
        assert_eq!(c.units, 100_000_000);
        // Output 0, or output not measured: nothing is missing.
        assert!(!charge(&input_only, &[100, 0, 100], ALL, true).incomplete);
        assert!(!charge(&input_only, &[100, 500, 100], 0b101, true).incomplete);
    }

    #[test]
    fn a_record_with_only_a_total_is_incomplete_unless_total_is_priced() {
        let split = table(
            "[[pricing.prices]]\nmodel = \"*\"\nper_million = { input = 1, output = 2 }\n",
            &[],
        );
        let c = charge(&split, &[0, 0, 1500], 1 << TOTAL, true);
        assert!(c.incomplete);
        assert_eq!(c.units, 0);
        assert!(!charge(&split, &[0, 0, 0], 1 << TOTAL, true).incomplete);
        // With input measured (as 0), the total is not looked at.
        assert!(!charge(&split, &[0, 0, 1500], 1 << INPUT | 1 << TOTAL, true).incomplete);
        let whole = table(
            "[[pricing.prices]]\nmodel = \"*\"\nper_million = { total = 1 }\n",
            &[],
        );
        assert!(!charge(&whole, &[0, 0, 1500], 1 << TOTAL, true).incomplete);
        assert!(!charge(&whole, &[1000, 500, 1500], ALL, true).incomplete);
    }

    #[test]
    fn an_extra_type_without_a_priced_ancestor_does_not_make_a_record_incomplete() {
        // reasoning is a root here (included_in does not place it), and nothing prices it.
        let t = table(
            "[pricing]\nincluded_in = {}\n[[pricing.prices]]\nmodel = \"*\"\nper_million = { input = 1, output = 1 }\n",
            &["reasoning"],
        );
        let c = charge(&t, &[10, 20, 30, 50], ALL, true);
        assert!(!c.incomplete);
        assert_eq!(c.units, 30_000_000);
    }

    #[test]
    fn a_fee_only_entry_leaves_token_counts_unpriced() {
        let t = table(
            "[[pricing.prices]]\nmodel = \"*\"\nper_request = 0.01\n",
            &[],
        );
        let c = charge(&t, &[10, 0, 10], ALL, true);
        assert_eq!(c.units, 10_000_000_000);
        assert!(c.incomplete);
        assert!(!charge(&t, &[], 0, true).incomplete);
    }

    #[test]
    fn an_unknown_entry_id_costs_nothing() {
        let t = table(SPEC_EXAMPLE, &["cached_input"]);
        let c = t.charge(EntryId(7), &TypeCounts::from_slice(&[5, 5, 10], ALL), true);
        assert_eq!(c, Charge::default());
    }

    #[test]
    fn huge_counts_saturate_instead_of_overflowing() {
        let t = table(
            "[[pricing.prices]]\nmodel = \"*\"\nper_million = { input = 1000000, output = 1000000 }\nper_request = 1000000\n",
            &[],
        );
        // (2^64 - 1) × 10^12 twice plus 10^18 fits u128 (≈ 3.7 × 10^31): exact, no saturation.
        let max = u128::from(u64::MAX);
        let c = charge(&t, &[u64::MAX, u64::MAX, u64::MAX], ALL, true);
        assert_eq!(
            c.units,
            2 * max * 1_000_000_000_000 + 1_000_000_000_000_000_000
        );
    }

    // ---- selection --------------------------------------------------------------------------

    const SELECTION: &str = r#"
        [[pricing.prices]]          # 0: group A
        model = "gpt-4o*"
        from = "2026-02-01T00:00:00Z"
        per_million = { input = 2 }
        [[pricing.prices]]          # 1: group B, shadowed by A for gpt-4o-mini
        model = "gpt-4o-mini"
        per_million = { input = 1 }
        [[pricing.prices]]          # 2: group A, always in force
        model = "gpt-4o*"
        per_million = { input = 3 }
        [[pricing.prices]]          # 3: group A
        model = "gpt-4o*"
        from = "2026-03-01T01:00:00+01:00"
        per_million = { input = 4 }
        [[pricing.prices]]          # 4: group X, in force from February only
        model = "claude-*"
        from = "2026-02-01T00:00:00Z"
        per_million = { input = 7 }
        [[pricing.prices]]          # 5: group C
        model = "*"
        service_id = "svc-eu-*"
        from = "2026-01-01T00:00:00Z"
        per_million = { input = 5 }
        [[pricing.prices]]          # 6: group D
        model = "*"
        per_million = { input = 6 }
    "#;

    #[test]
    fn within_the_first_matching_group_the_latest_from_in_force_wins() {
        let t = table(SELECTION, &[]);
        let m = "gpt-4o-mini";
        assert_eq!(t.select(m, "x", JAN), (Some(EntryId(2)), i64::MIN, FEB));
        assert_eq!(t.select(m, "x", FEB - 1), (Some(EntryId(2)), i64::MIN, FEB));
        assert_eq!(t.select(m, "x", FEB), (Some(EntryId(0)), FEB, MAR));
        assert_eq!(t.select(m, "x", MAR - 1), (Some(EntryId(0)), FEB, MAR));
        // "2026-03-01T01:00:00+01:00" is MAR.
        assert_eq!(t.select(m, "x", MAR), (Some(EntryId(3)), MAR, i64::MAX));
        assert_eq!(
            t.select(m, "x", i64::MAX),
            (Some(EntryId(3)), MAR, i64::MAX)
        );
    }

    #[test]
    fn a_group_with_nothing_in_force_yet_falls_through_until_its_first_from() {
        let t = table(SELECTION, &[]);
        let m = "claude-3:opus";
        assert_eq!(
            t.select(m, "svc-us", JAN),
            (Some(EntryId(6)), i64::MIN, FEB)
        );
        assert_eq!(
            t.select(m, "svc-us", FEB),
            (Some(EntryId(4)), FEB, i64::MAX)
        );
        // svc-eu-1 also matches group C (from JAN): the answer changes at JAN and at FEB.
        assert_eq!(
            t.select(m, "svc-eu-1", JAN - 1),
            (Some(EntryId(6)), i64::MIN, JAN)
        );
        assert_eq!(t.select(m, "svc-eu-1", JAN), (Some(EntryId(5)), JAN, FEB));
        assert_eq!(
            t.select(m, "svc-eu-1", FEB),
            (Some(EntryId(4)), FEB, i64::MAX)
        );
    }

    #[test]
    fn model_patterns_are_case_sensitive() {
        let t = table(SELECTION, &[]);
        assert_eq!(
            t.select("GPT-4o", "x", MAR),
            (Some(EntryId(6)), i64::MIN, i64::MAX)
        );
    }

    #[test]
    fn no_entry_gives_none_and_when_that_could_change() {
        let t = table(
            "[[pricing.prices]]\nmodel = \"gpt*\"\nfrom = \"2026-02-01T00:00:00Z\"\nper_million = { input = 1 }\n",
            &[],
        );
        assert_eq!(t.select("llama", "x", JAN), (None, i64::MIN, i64::MAX));
        assert_eq!(t.select("gpt-5", "x", JAN), (None, i64::MIN, FEB));
        assert_eq!(
            t.select("gpt-5", "x", FEB),
            (Some(EntryId(0)), FEB, i64::MAX)
        );
        let empty = table("", &[]);
        assert!(empty.is_empty());
        assert_eq!(empty.select("gpt-5", "x", JAN), (None, i64::MIN, i64::MAX));
    }

    #[test]
    fn star_matches_slashes_dots_colons_and_nothing() {
        assert!(glob_matches("*", ""));
        assert!(glob_matches("", ""));
        assert!(!glob_matches("", "a"));
        assert!(glob_matches("gpt-4o*", "gpt-4o"));
        assert!(glob_matches("gpt-4o*", "gpt-4o-mini-2024-07-18"));
        assert!(!glob_matches("gpt-4o*", "gpt-4"));
        assert!(glob_matches("*llama*", "meta/llama-3.1:8b"));
        assert!(glob_matches("*/*:*", "meta/llama-3.1:8b"));
        assert!(glob_matches("meta/*.1:8b", "meta/llama-3.1:8b"));
        assert!(glob_matches("a*b*c", "abc"));
        assert!(!glob_matches("a*b*c", "acb"));
        assert!(!glob_matches("GPT*", "gpt-4"));
        assert!(glob_matches("ü*r", "über"));
        // Adversarial for naive backtracking: fails fast.
        assert!(!glob_matches("a*a*a*a*a*a*a*b", &"a".repeat(10_000)));
    }

    #[test]
    fn question_mark_and_brackets_are_literal() {
        assert!(!glob_matches("gpt?", "gpt4"));
        assert!(glob_matches("gpt?", "gpt?"));
        assert!(!glob_matches("[ab]", "a"));
        assert!(glob_matches("[ab]*", "[ab]-x"));
        assert!(!glob_matches("\\*", "x"));
    }

    // ---- config errors ----------------------------------------------------------------------

    #[test]
    fn every_entry_error_names_the_entry_index_and_model() {
        let first = "[[pricing.prices]]\nmodel = \"ok\"\nper_million = { input = 1 }\n";
        let cases: &[(&str, &str, &str)] = &[
            // (second entry, expected key, a phrase of the message)
            ("per_million = { cachd = 1 }", "pricing.prices[1].per_million.cachd", "unknown token type"),
            ("per_million = { input = 1 }\ntiers = [{ above_input = 5, per_million = { cachd = 1 } }]", "pricing.prices[1].tiers[0].per_million.cachd", "unknown token type"),
            ("per_million = { input = -0.5 }", "pricing.prices[1].per_million.input", "negative"),
            ("per_request = \"-1\"", "pricing.prices[1].per_request", "negative"),
            ("per_million = { input = 1000000.000001 }", "pricing.prices[1].per_million.input", "above 1000000"),
            ("per_million = { input = 1 }\ntiers = [{ above_input = 5, per_million = { input = 2000000 } }]", "pricing.prices[1].tiers[0].per_million.input", "above 1000000"),
            ("per_request = 1000001", "pricing.prices[1].per_request", "above 1000000"),
            ("per_million = { total = 1, input = 1 }", "pricing.prices[1]", "total rate beside"),
            ("per_million = { total = 1 }\ntiers = [{ above_input = 5, per_million = { output = 2 } }]", "pricing.prices[1].tiers[0]", "total rate beside"),
            ("from = \"2026-01-01T00:00:00\"\nper_million = { input = 1 }", "pricing.prices[1].from", "RFC 3339"),
            ("from = \"2026-01-01\"\nper_million = { input = 1 }", "pricing.prices[1].from", "RFC 3339"),
            ("from = \"3000-01-01T00:00:00Z\"\nper_million = { input = 1 }", "pricing.prices[1].from", "RFC 3339"),
            ("service_id = \"\"\nper_million = { input = 1 }", "pricing.prices[1].service_id", "empty"),
            ("", "pricing.prices[1]", "prices nothing"),
            ("per_million = { input = 1 }\ntiers = [{ above_input = 5, per_million = {} }]", "pricing.prices[1].tiers[0]", "no per_million"),
            ("per_million = { input = 1 }\ntiers = [{ above_input = 5, per_million = { input = 2 } }, { above_input = 5, per_million = { input = 3 } }]", "pricing.prices[1].tiers[1]", "two tiers"),
        ];
        for (entry, key, phrase) in cases {
            let text = format!("{first}[[pricing.prices]]\nmodel = \"gpt-4o*\"\n{entry}\n");
            let e = rejected(&text, &["cached_input"]);
            assert_eq!(e.key, *key, "{entry}: {e}");
            assert!(e.message.starts_with("(model \"gpt-4o*\""), "{entry}: {e}");
            assert!(e.message.contains(phrase), "{entry}: {e}");
        }
    }

    #[test]
    fn an_unknown_type_lists_the_known_ones() {
        let e = rejected(
            "[[pricing.prices]]\nmodel = \"gpt-4o*\"\nper_million = { cachd = 1 }\n",
            &["cached_input"],
        );
        assert_eq!(e.key, "pricing.prices[0].per_million.cachd");
        assert_eq!(
            e.message,
            "(model \"gpt-4o*\"): unknown token type \"cachd\" in per_million; known types: \
             input, output, total, cached_input"
        );
    }

    #[test]
    fn an_empty_model_pattern_is_named_as_such() {
        let e = rejected(
            "[[pricing.prices]]\nmodel = \"\"\nper_million = { input = 1 }\n",
            &[],
        );
        assert_eq!(e.key, "pricing.prices[0].model");
        assert!(
            e.message
                .starts_with("(model \"\"): the model pattern is empty"),
            "{e}"
        );
    }

    #[test]
    fn two_entries_at_the_same_instant_are_duplicates_however_written() {
        let e = rejected(
            r#"
            [[pricing.prices]]
            model = "m"
            service_id = "s"
            from = "2026-01-01T00:00:00Z"
            per_million = { input = 1 }
            [[pricing.prices]]
            model = "m"
            service_id = "s"
            from = "2026-01-01T01:00:00+01:00"
            per_million = { input = 2 }
            "#,
            &[],
        );
        assert_eq!(e.key, "pricing.prices[1]");
        assert_eq!(
            e.message,
            "(model \"m\", service_id \"s\"): same model, service_id and from as pricing.prices[0]"
        );
        let e = rejected(
            "[[pricing.prices]]\nmodel = \"m\"\nper_million = { input = 1 }\n[[pricing.prices]]\nmodel = \"m\"\nper_request = 1\n",
            &[],
        );
        assert_eq!(e.key, "pricing.prices[1]");
        // Another service pattern, or another from, is not a duplicate.
        compile(
            "[[pricing.prices]]\nmodel = \"m\"\nper_million = { input = 1 }\n[[pricing.prices]]\nmodel = \"m\"\nservice_id = \"s\"\nper_million = { input = 1 }\n[[pricing.prices]]\nmodel = \"m\"\nfrom = \"2026-01-01T00:00:00Z\"\nper_million = { input = 1 }\n",
            &[],
        )
        .unwrap();
    }

    #[test]
    fn included_in_errors_name_the_key() {
        let e = rejected("[pricing]\nincluded_in = { input = \"total\" }\n", &[]);
        assert_eq!(e.key, "pricing.included_in.input");
        let e = rejected(
            "[pricing]\nincluded_in = { cached_input = \"inptu\" }\n",
            &["cached_input"],
        );
        assert_eq!(e.key, "pricing.included_in.cached_input");
        assert_eq!(
            e.message,
            "unknown token type \"inptu\"; known types: input, output, total, cached_input"
        );
        let e = rejected(
            "[pricing]\nincluded_in = { a = \"b\", b = \"a\" }\n",
            &["a", "b"],
        );
        assert_eq!(e.key, "pricing.included_in.a");
        assert_eq!(e.message, "included_in has a cycle: a -> b -> a");
        let e = rejected("[pricing]\nincluded_in = { c = \"c\" }\n", &["a", "c"]);
        assert_eq!(e.key, "pricing.included_in.c");
        assert_eq!(e.message, "included_in has a cycle: c -> c");
        // b -> c -> d -> c: found from c, not from b.
        let e = rejected(
            "[pricing]\nincluded_in = { b = \"c\", c = \"d\", d = \"c\" }\n",
            &["b", "c", "d"],
        );
        assert_eq!(e.key, "pricing.included_in.c");
        assert_eq!(e.message, "included_in has a cycle: c -> d -> c");
    }

    #[test]
    fn included_in_keys_of_undefined_types_are_ignored() {
        // The default names cached_input, cache_creation_input and reasoning; none defined.
        compile(
            SPEC_EXAMPLE.replace(", cached_input = 0.075", "").as_str(),
            &[],
        )
        .unwrap();
        compile("[pricing]\nincluded_in = { nothing = \"nowhere\" }\n", &[]).unwrap();
    }

    #[test]
    fn extra_types_may_not_shadow_builtins_and_currency_is_required() {
        let e = rejected("", &["total"]);
        assert_eq!(e.key, "fields.extra_tokens.total");
        let e = rejected("[pricing]\ncurrency = \"\"\n", &[]);
        assert_eq!(e.key, "pricing.currency");
    }

    #[test]
    fn a_price_file_prefix_keys_errors_relative_to_the_file() {
        let pricing = Pricing {
            prices: parse_price_file("[[prices]]\nmodel = \"m\"\nper_million = { x = 1 }\n")
                .unwrap()
                .prices,
            ..Pricing::default()
        };
        let e = PriceTable::compile_with_prefix(&pricing, &[], "").unwrap_err();
        assert_eq!(e.key, "prices[0].per_million.x");
    }

    // ---- price file, round trip -------------------------------------------------------------

    #[test]
    fn price_file_errors_carry_the_path_or_the_line() {
        let e = parse_price_file("[[prices]]\nmodel = \"m\"\nfrom = 5\n").unwrap_err();
        assert_eq!(e.key, "prices[0].from");
        // The rest of [pricing] does not belong in a price file.
        let e = parse_price_file("currency = \"USD\"\n").unwrap_err();
        assert_eq!(e.key, "currency");
        assert!(e.message.contains("unknown field"), "{e}");
        let e = parse_price_file("[[prices]]\nmodel = \"m\"\nper_million = {\n").unwrap_err();
        assert_eq!(e.key, "");
        assert!(e.message.starts_with("invalid TOML at line 3"), "{e}");
    }

    #[test]
    fn a_price_file_replaces_prices_and_its_included_in_if_it_has_one() {
        let inline = Pricing {
            included_in: [("a".to_string(), "input".to_string())].into(),
            prices: parse_price_file("[[prices]]\nmodel = \"old\"\nper_request = 1\n")
                .unwrap()
                .prices,
            ..Pricing::default()
        };
        let file = parse_price_file("[[prices]]\nmodel = \"new\"\nper_request = 1\n").unwrap();
        let merged = inline.with_price_file(file);
        assert_eq!(merged.prices[0].model, "new");
        assert_eq!(merged.included_in, inline.included_in);
        let file =
            parse_price_file("included_in = {}\n[[prices]]\nmodel = \"new\"\nper_request = 1\n")
                .unwrap();
        assert!(inline.with_price_file(file).included_in.is_empty());
    }

    #[test]
    fn the_config_prints_back_as_toml_that_reads_the_same() {
        let original = doc(r#"
            [pricing]
            currency = "EUR"
            included_in = { cached_input = "input" }
            [[pricing.prices]]
            model = "gpt-4o*"
            service_id = "svc"
            from = "2026-01-01T00:00:00Z"
            per_million = { input = 0.15, output = "0.10", cached_input = 2.5e-7, total = 3 }
            per_request = 0.0
            tiers = [{ above_input = 200000, per_million = { input = 0.3 } }]
            [[budgets]]
            api_key_id = "*"
            window = "30d"
            tokens = 500000000
            cost = 1200.0
            "#);
        let printed = toml::to_string_pretty(&original).unwrap();
        assert_eq!(doc(&printed), original, "{printed}");
        assert!(printed.contains("input = 0.15"), "{printed}");
        assert!(printed.contains("output = \"0.10\""), "{printed}");
        assert!(printed.contains("cost = 1200\n"), "{printed}");
        assert_eq!(
            Doc {
                pricing: Pricing::default(),
                budgets: vec![]
            },
            doc("")
        );
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

    // ---- budgets ----------------------------------------------------------------------------

    fn budgets(text: &str) -> Vec<Budget> {
        doc(text).budgets
    }

    #[test]
    fn budgets_are_checked_and_their_cost_read_exactly() {
        let list = budgets(
            r#"
            [[budgets]]
            api_key_id = "team-billing"
            window = "30d"
            tokens = 500000000
            cost = 1200.0
            [[budgets]]
            api_key_id = "*"
            window = "1d"
            tokens = 0
            [[budgets]]
            api_key_id = "team-billing"
            window = "7d"
            cost = "0.0000000000005"
            "#,
        );
        let warnings = validate_budgets(&list).unwrap();
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].key, "budgets[2].cost");
        assert!(warnings[0]
            .message
            .starts_with("(api_key_id \"team-billing\"): cost 0.0000000000005"));
        assert_eq!(budget_cost_units(&list[0]), Some(1_200_000_000_000_000));
        assert_eq!(budget_cost_units(&list[1]), None);
        assert_eq!(budget_cost_units(&list[2]), Some(0));
        assert_eq!(budget_window_secs("30d"), Some(2_592_000));
        assert_eq!(budget_window_secs("1d"), Some(86_400));
        assert_eq!(budget_window_secs("1w"), None);
    }

    #[test]
    fn every_budget_error_names_the_budget_and_key() {
        let ok = "[[budgets]]\napi_key_id = \"k\"\nwindow = \"1d\"\ntokens = 1\n";
        let cases: &[(&str, &str, &str)] = &[
            (
                "api_key_id = \"k\"\nwindow = \"2d\"\ntokens = 1",
                "budgets[1].window",
                "not one of",
            ),
            (
                "api_key_id = \"k\"\nwindow = \"1d\"\ncost = 5",
                "budgets[1]",
                "same api_key_id and window as budgets[0]",
            ),
            (
                "api_key_id = \"k\"\nwindow = \"7d\"",
                "budgets[1]",
                "neither tokens nor cost",
            ),
            (
                "api_key_id = \"k\"\nwindow = \"7d\"\ncost = -1.5",
                "budgets[1].cost",
                "negative",
            ),
            (
                "api_key_id = \"\"\nwindow = \"7d\"\ntokens = 1",
                "budgets[1].api_key_id",
                "empty",
            ),
        ];
        for (entry, key, phrase) in cases {
            let list = budgets(&format!("{ok}[[budgets]]\n{entry}\n"));
            let e = validate_budgets(&list).expect_err(entry);
            assert_eq!(e.key, *key, "{e}");
            assert!(e.message.starts_with("(api_key_id "), "{e}");
            assert!(e.message.contains(phrase), "{e}");
        }
        let long = Budget {
            api_key_id: "k".repeat(257),
            window: "1d".into(),
            tokens: Some(1),
            cost: None,
        };
        assert_eq!(
            validate_budgets(&[long]).unwrap()[0].key,
            "budgets[0].api_key_id"
        );
    }

    // ---- properties -------------------------------------------------------------------------

    /// Plain recursive glob semantics, exponential but obviously right on short inputs.
    fn reference_glob(p: &[u8], t: &[u8]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((b'*', rest)) => (0..=t.len()).any(|k| reference_glob(rest, &t[k..])),
            Some((c, rest)) => t.first() == Some(c) && reference_glob(rest, &t[1..]),
        }
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

    /// A random token-type tree with a random priced subset (SPEC-valid: no total beside
    /// input/output) and random per-token rates.
    #[derive(Debug, Clone)]
    struct Scenario {
        pricing: Pricing,
        extras: Vec<String>,
        parent: Vec<Option<usize>>,
        units: Vec<Option<u64>>,
    }

    /// `one_unit`: every priced type costs 1 unit per token, so the cost counts tokens.
    fn scenario(one_unit: bool) -> impl Strategy<Value = Scenario> {
        (
            0usize..=5,
            prop::array::uniform5(any::<u8>()),
            any::<u8>(),
            prop::array::uniform8(0u64..=1_000_000_000_000),
        )
            .prop_map(move |(n_extras, picks, mask, rates)| {
                let n = 3 + n_extras;
                let extras: Vec<String> = (0..n_extras).map(|i| format!("x{i}")).collect();
                let all: Vec<String> = BUILTIN_TYPES
                    .iter()
                    .map(|s| s.to_string())
                    .chain(extras.clone())
                    .collect();
                let mut parent = vec![Some(TOTAL), Some(TOTAL), None];
                let mut included_in = BTreeMap::new();
                for (i, &raw_pick) in picks.iter().enumerate().take(n_extras) {
                    let me = 3 + i;
                    // Only earlier types (or none) as parent: acyclic by construction.
                    let pick = usize::from(raw_pick) % (me + 1);
                    if pick == me {
                        parent.push(None);
                    } else {
                        parent.push(Some(pick));
                        included_in.insert(all[me].clone(), all[pick].clone());
                    }
                }
                let mut units: Vec<Option<u64>> = (0..n)
                    .map(|i| (mask >> i & 1 == 1).then_some(if one_unit { 1 } else { rates[i] }))
                    .collect();
                if units[TOTAL].is_some() && (units[INPUT].is_some() || units[OUTPUT].is_some()) {
                    units[TOTAL] = None;
                }
                let per_million: BTreeMap<String, Rate> = units
                    .iter()
                    .enumerate()
                    .filter_map(|(i, u)| {
                        u.map(|u| {
                            (
                                all[i].clone(),
                                Rate(format_units(u128::from(u) * 1_000_000)),
                            )
                        })
                    })
                    .collect();
                let per_request = per_million.is_empty().then(|| Rate::from("0"));
                let pricing = Pricing {
                    included_in,
                    prices: vec![PriceEntry {
                        model: "*".into(),
                        service_id: "*".into(),
                        from: None,
                        per_million,
                        per_request,
                        tiers: vec![],
                    }],
                    ..Pricing::default()
                };
                Scenario {
                    pricing,
                    extras,
                    parent,
                    units,
                }
            })
    }

    impl Scenario {
        fn ancestors(&self, i: usize) -> Vec<usize> {
            let mut out = vec![];
            let mut at = self.parent[i];
            while let Some(p) = at {
                out.push(p);
                at = self.parent[p];
            }
            out
        }

        fn nearest_priced_ancestor(&self, i: usize) -> Option<usize> {
            self.ancestors(i)
                .into_iter()
                .find(|&a| self.units[a].is_some())
        }

        /// Counts where every type's children add up to at most its own count.
        fn consistent_counts(&self, roots: &[u64; 8], shares: &[u64; 8]) -> Vec<u64> {
            let n = self.units.len();
            let mut count = vec![0u64; n];
            let mut left = vec![0u64; n];
            // total before its parts input and output; each extra after its parent.
            for t in [TOTAL, INPUT, OUTPUT].into_iter().chain(3..n) {
                count[t] = match self.parent[t] {
                    None => roots[t],
                    Some(p) => {
                        let part = left[p] * shares[t] / 1000;
                        left[p] -= part;
                        part
                    }
                };
                left[t] = count[t];
            }
            count
        }
    }

    proptest! {
        #[test]
        fn glob_agrees_with_the_recursive_definition(
            pattern in "[ab/.*]{0,8}", text in "[ab/.]{0,10}"
        ) {
            let expected = reference_glob(pattern.as_bytes(), text.as_bytes());
            prop_assert_eq!(glob_matches(&pattern, &text), expected);
            prop_assert_eq!(Glob::new(&pattern).matches(&text), expected);
        }

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

        #[test]
        fn a_toml_float_rate_keeps_the_value_it_was_written_with(v in any::<f64>()) {
            prop_assume!(v.is_finite());
            let rate = Rate::deserialize(toml::Value::Float(v)).unwrap();
            prop_assert!(is_plain_decimal(rate.as_str()), "{}", rate);
            prop_assert_eq!(rate.as_str().parse::<f64>().unwrap(), v);
            #[derive(Debug, PartialEq, Serialize, Deserialize)]
            struct One { r: Rate }
            let printed = toml::to_string(&One { r: rate.clone() }).unwrap();
            prop_assert_eq!(toml::from_str::<One>(&printed).unwrap(), One { r: rate }, "{}", printed);
        }

        /// Nothing is charged twice: with consistent counts (a type's parts add up to at most
        /// its count) and one unit per token everywhere, the tokens charged are exactly the
        /// counts of the top-most priced types, and no child exceeds its parent.
        #[test]
        fn every_token_under_a_top_most_priced_type_is_charged_exactly_once(
            s in scenario(true),
            roots in prop::array::uniform8(0u64..1_000_000_000),
            shares in prop::array::uniform8(0u64..=1000),
        ) {
            let (t, _) = PriceTable::compile(&s.pricing, &s.extras).unwrap();
            let counts = s.consistent_counts(&roots, &shares);
            let c = t.charge(EntryId(0), &TypeCounts::from_slice(&counts, ALL), false);
            prop_assert_eq!(c.child_exceeds, 0);
            let top_most: u128 = (0..counts.len())
                .filter(|&i| s.units[i].is_some() && s.nearest_priced_ancestor(i).is_none())
                .map(|i| u128::from(counts[i]))
                .sum();
            prop_assert_eq!(c.units, top_most);
        }

        /// The precomputed charge agrees with a direct reading of SPEC "Arithmetic" and
        /// "Unpriced" for any counts and validity, consistent or not.
        #[test]
        fn charge_agrees_with_a_direct_reading_of_the_spec(
            s in scenario(false),
            counts in prop::collection::vec(prop_oneof![0u64..2000, any::<u64>()], 8),
            valid in any::<u8>(),
            is_2xx in any::<bool>(),
        ) {
            let (t, warnings) = PriceTable::compile(&s.pricing, &s.extras).unwrap();
            prop_assert!(warnings.is_empty());
            let n = s.units.len();
            let count = |i: usize| if valid >> i & 1 == 1 { counts[i] } else { 0 };
            let mut units: u128 = 0;
            let mut exceeds = 0u64;
            for p in (0..n).filter(|&p| s.units[p].is_some()) {
                let below: u128 = (0..n)
                    .filter(|&c| s.units[c].is_some() && s.nearest_priced_ancestor(c) == Some(p))
                    .map(|c| u128::from(count(c)))
                    .sum();
                let own = u128::from(count(p));
                units += own.saturating_sub(below) * u128::from(s.units[p].unwrap());
                if let Some(a) = s.nearest_priced_ancestor(p) {
                    if count(p) > count(a) {
                        exceeds |= 1 << p;
                    }
                }
            }
            let priced_at_or_above = |i: usize| s.units[i].is_some() || s.ancestors(i).iter().any(|&a| s.units[a].is_some());
            let missing = |i: usize| count(i) > 0 && !priced_at_or_above(i);
            let incomplete = missing(INPUT)
                || missing(OUTPUT)
                || (valid & 0b11 == 0 && missing(TOTAL));
            let c = t.charge(EntryId(0), &TypeCounts::from_slice(&counts, u64::from(valid)), is_2xx);
            prop_assert_eq!(c, Charge { units, incomplete, child_exceeds: exceeds });
        }
    }
}
