//! The compiled price table: the choice of the entry in force for a record (by model,
//! service_id and event time) and the cost of one record, or of many summed when an entry is
//! linear.
//!
//! Owns: [`PriceTable`] and what it holds, selection, the charge rule (docs/spend.md "How cost is worked out"
//! and "Unpriced"). Must not: validate config (that is [`super::compile`]), read decimal text,
//! or cache selections (it says for how long a selection holds so the caller can).

use super::select::Groups;
use super::tree::TypeTree;
use super::{CORE_TYPES, INPUT, MAX_TYPES, OUTPUT, TOTAL};

/// An entry of the table, by its index in file order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EntryId(pub u32);

/// A record's token counts by type index (see [`PriceTable::type_names`]) and which of them
/// were measured. A type without its valid bit counts 0. The `total` count is the total of docs/guarantees.md "What counts"
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
    /// The entry prices only part of the record (docs/spend.md "How cost is worked out"): the caller adds 1 to
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
pub(super) struct RateSet {
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

    /// docs/spend.md "How cost is worked out": a count > 0 of input or output (of total when neither is valid)
    /// that no rate of this set covers.
    #[inline]
    fn incomplete(&self, counts: &TypeCounts<'_>) -> bool {
        let uncovered = |i: usize| (self.core_uncovered >> i) & 1 == 1 && counts.get(i) > 0;
        self.core_uncovered != 0
            && (uncovered(INPUT)
                || uncovered(OUTPUT)
                || (!counts.is_valid(INPUT) && !counts.is_valid(OUTPUT) && uncovered(TOTAL)))
    }

    pub(super) fn new(rates: &[Option<u64>], tree: &TypeTree) -> RateSet {
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
pub(super) struct CompiledEntry {
    pub(super) base: RateSet,
    /// By `above_input`, ascending.
    pub(super) tiers: Vec<(u64, RateSet)>,
    pub(super) fee_units: u64,
}

/// The validated, compiled price table.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    pub(super) currency: String,
    pub(super) tree: TypeTree,
    pub(super) entries: Vec<CompiledEntry>,
    /// Entries grouped by (`model`, `service_id`) patterns.
    pub(super) groups: Groups<2, EntryId>,
}

impl PriceTable {
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
        self.groups.time_dependent()
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
        self.groups.select([model, service_id], t_ns)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::test_support::*;
    use crate::pricing::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    // ---- arithmetic -------------------------------------------------------------------------

    #[test]
    fn spec_example_charges_cached_input_at_its_rate_and_reasoning_as_output() {
        // Types: input, output, total, cached_input (3), reasoning (4); default included_in.
        let t = table(SPEND_EXAMPLE, &["cached_input", "reasoning"]);
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
        let t = table(SPEND_EXAMPLE, &["cached_input", "reasoning"]);
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
        let t = table(SPEND_EXAMPLE, &["cached_input"]);
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
        let t = table(SPEND_EXAMPLE, &["cached_input"]);
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

    /// A random token-type tree with a random priced subset (valid by docs/spend.md: no total beside
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

        /// The precomputed charge agrees with a direct reading of docs/spend.md "How cost is worked out" and
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
