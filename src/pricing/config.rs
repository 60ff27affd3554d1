//! The `[pricing]` and `[[budgets]]` config types and the price-file syntax: what a config or
//! price file says, read by serde, with a rate kept as the decimal text it was written as.
//!
//! Owns: the serde shape of `[pricing]`, `[[pricing.prices]]`, `[[budgets]]` and a price file,
//! and the reading of a rate's text. Must not: validate entries (that is [`super::compile`] and
//! [`super::budget`]), turn a rate into units, or read the price file from disk (the caller
//! reads it and hands the text to [`parse_price_file`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::units::is_plain_decimal;
use super::PricingError;

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
    /// Empty when the budget names a `team`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_key_id: String,
    /// A team of docs/owners.md (exactly one of `api_key_id` and `team`), or `"*"`: the
    /// default for teams without an entry of their own.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub team: String,
    /// `"1d"`, `"7d"` or `"30d"` (rolling), or `"month"` (the calendar month in UTC so far).
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
    parse_toml_file(text)
}

/// Parses a TOML file (a price file, an owners file) into `T`. Keys in errors are relative to
/// the file; the key is empty for a TOML syntax error, whose message gives the line.
pub fn parse_toml_file<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, PricingError> {
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
            message: e.inner().message().trim().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::test_support::*;
    use proptest::prelude::*;

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

    proptest! {
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
    }
}
