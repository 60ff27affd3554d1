//! The price table of docs/spend.md ("Spend"): the `[pricing]` and `[[budgets]]` config types and
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
//!
//! The parts, in the order a price goes through them: [`config`] (the config types and the
//! price-file syntax), [`units`] (decimal text ↔ integer units), [`glob`] (price patterns),
//! [`tree`] (the token-type tree), [`compile`] (validation into a [`PriceTable`]), [`select`]
//! (the entry in force: groups in file order, `from`; shared with `owners`), [`table`]
//! (the charge of a record), and [`budget`] (the
//! `[[budgets]]` checks).

use std::fmt;

mod budget;
mod compile;
mod config;
mod glob;
mod select;
mod table;
mod tree;
mod units;

pub use budget::{budget_cost_units, budget_owner, budget_window_secs, validate_budgets};
pub use config::{
    default_included_in, parse_price_file, parse_toml_file, Budget, PriceEntry, PriceFile, Pricing,
    Rate, Tier,
};
pub use glob::glob_matches;
pub use select::Groups;
pub use table::{Charge, EntryId, Linear, PriceTable, TypeCounts};
pub(crate) use units::write_digits_backwards;
pub use units::{format_units, units_to_f64};

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

/// The calendar-month budget window of docs/owners.md (UTC, month to date).
pub const MONTH_WINDOW: &str = "month";

/// The rolling budget windows of docs/spend.md and their length in seconds.
pub const BUDGET_WINDOWS: [(&str, u64); 3] =
    [("1d", 86_400), ("7d", 7 * 86_400), ("30d", 30 * 86_400)];

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

/// What the tests of the parts share: the config document, a compiled table, the instants.
#[cfg(test)]
mod test_support {
    use super::*;
    use serde::{Deserialize, Serialize};

    /// The config keys this module defines, as they sit in the main config file.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(super) struct Doc {
        #[serde(default)]
        pub(super) pricing: Pricing,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub(super) budgets: Vec<Budget>,
    }

    pub(super) fn doc(text: &str) -> Doc {
        toml::from_str(text).expect("test TOML parses")
    }

    pub(super) fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    pub(super) fn compile(
        text: &str,
        extras: &[&str],
    ) -> Result<(PriceTable, Vec<PricingWarning>), PricingError> {
        PriceTable::compile(&doc(text).pricing, &names(extras))
    }

    pub(super) fn table(text: &str, extras: &[&str]) -> PriceTable {
        compile(text, extras).expect("compiles").0
    }

    pub(super) fn rejected(text: &str, extras: &[&str]) -> PricingError {
        compile(text, extras).expect_err("must be a config error")
    }

    pub(super) fn charge(t: &PriceTable, counts: &[u64], valid: u64, is_2xx: bool) -> Charge {
        t.charge(EntryId(0), &TypeCounts::from_slice(counts, valid), is_2xx)
    }

    pub(super) const ALL: u64 = u64::MAX;
    // 2026-01-01, -02-01, -03-01 at 00:00:00Z, from `date -u -d 2026-01-01 +%s` etc.
    pub(super) const JAN: i64 = 1_767_225_600_000_000_000;
    pub(super) const FEB: i64 = 1_769_904_000_000_000_000;
    pub(super) const MAR: i64 = 1_772_323_200_000_000_000;

    pub(super) const SPEND_EXAMPLE: &str = r#"
        [[pricing.prices]]
        model = "gpt-4o-mini*"
        per_million = { input = 0.15, output = 0.60, cached_input = 0.075 }
    "#;
}
