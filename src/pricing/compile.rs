//! Validation of `[pricing]` (or a price file) into a [`PriceTable`]: each entry's patterns,
//! `from`, rates, fee and tiers checked and turned into units, with errors keyed by the entry.
//!
//! Owns: the config errors of the prices and the warnings about rates rounding changed. Must
//! not: select or charge (that is [`super::table`]).

use std::collections::{BTreeMap, HashMap};

use super::config::{PriceEntry, Pricing, Rate};
use super::select::Groups;
use super::table::{CompiledEntry, EntryId, PriceTable, RateSet};
use super::tree::TypeTree;
use super::units::{fee_units, format_units, rate_units_per_token};
use super::{PricingError, PricingWarning, INPUT, OUTPUT, TOTAL};

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
        let mut groups = Groups::default();
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
            groups.push([entry.model.as_str(), entry.service_id.as_str()], from, id);
            entries.push(compiled);
        }
        let table = PriceTable {
            currency: pricing.currency.clone(),
            tree,
            entries,
            groups,
        };
        Ok((table, warnings))
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

/// docs/spend.md: a `total` rate beside an `input` or `output` rate is an error.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::test_support::*;
    use crate::pricing::*;

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
}
