//! The `[[budgets]]` checks of docs/spend.md: windows, a budget's cost in units, and the config
//! errors and warnings of the list.
//!
//! Owns: what a budget entry may say. Must not: track spend against a budget (that is
//! `aggregate`'s).

use std::collections::HashMap;

use super::config::Budget;
use super::units::{amount_units, format_units};
use super::{PricingError, PricingWarning, BUDGET_WINDOWS, MONTH_WINDOW};
use crate::parse::MAX_LABEL_BYTES;

/// The length of a rolling budget window in seconds; `None` for anything but `1d`, `7d`,
/// `30d` (a calendar month, [`MONTH_WINDOW`], has no fixed length).
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

/// Checks `[[budgets]]` (keys `budgets[i]...`, messages naming the api_key_id or team): neither
/// or both of api_key_id and team, a window other than 1d/7d/30d/month, a team budget over a
/// rolling window or a key budget over `month` (no shipped rule evaluates them), neither tokens nor
/// cost, a negative or unreadable cost, a duplicate (api_key_id or team, window). Warns about a
/// cost rounding changed and a key or team too long to ever match.
pub fn validate_budgets(budgets: &[Budget]) -> Result<Vec<PricingWarning>, PricingError> {
    let mut warnings = Vec::new();
    let mut first_with: HashMap<(&str, &str, &str), usize> = HashMap::new();
    for (i, budget) in budgets.iter().enumerate() {
        let key = format!("budgets[{i}]");
        let (whose, name) = budget_owner(budget);
        let who = format!("({whose} {name:?})");
        let error = |key: String, message: String| PricingError {
            key,
            message: format!("{who}: {message}"),
        };
        if budget.api_key_id.is_empty() && budget.team.is_empty() {
            return Err(error(
                format!("{key}.api_key_id"),
                "is empty: write an exact api_key_id (or a team), or \"*\" for the default".into(),
            ));
        }
        if !budget.api_key_id.is_empty() && !budget.team.is_empty() {
            return Err(error(
                key,
                "names both api_key_id and team: a budget is a key's or a team's".into(),
            ));
        }
        if budget_window_secs(&budget.window).is_none() && budget.window != MONTH_WINDOW {
            return Err(error(
                format!("{key}.window"),
                format!(
                    "window {:?} is not one of \"1d\", \"7d\", \"30d\", \"month\"",
                    budget.window
                ),
            ));
        }
        // The shipped rules (docs/dashboards-and-rules.md) evaluate key budgets over the rolling
        // windows and team budgets over the calendar month only: any other pairing would be
        // exported and never alert.
        let is_team = budget.api_key_id.is_empty();
        if is_team && budget.window != MONTH_WINDOW {
            return Err(error(
                format!("{key}.window"),
                "a team budget's window must be \"month\" (team budgets are calendar months; rolling windows are per API key)".into(),
            ));
        }
        if !is_team && budget.window == MONTH_WINDOW {
            return Err(error(
                format!("{key}.window"),
                "a key budget's window must be \"1d\", \"7d\" or \"30d\" (calendar-month budgets are per team)".into(),
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
        if name.len() > MAX_LABEL_BYTES {
            warnings.push(PricingWarning {
                key: format!("{key}.{whose}"),
                message: format!(
                    "{who}: longer than {MAX_LABEL_BYTES} bytes; label values are cut to that, so it never matches"
                ),
            });
        }
        let identity = (
            budget.api_key_id.as_str(),
            budget.team.as_str(),
            budget.window.as_str(),
        );
        if let Some(&earlier) = first_with.get(&identity) {
            return Err(error(
                key,
                format!("same {whose} and window as budgets[{earlier}]"),
            ));
        }
        first_with.insert(identity, i);
    }
    Ok(warnings)
}

/// Whose budget it is: `("api_key_id", key)` for a key's, else `("team", name)`.
pub fn budget_owner(budget: &Budget) -> (&'static str, &str) {
    if budget.team.is_empty() || !budget.api_key_id.is_empty() {
        ("api_key_id", budget.api_key_id.as_str())
    } else {
        ("team", budget.team.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pricing::test_support::*;

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
    fn team_budgets_take_a_calendar_month_and_are_told_apart_from_key_budgets() {
        let list = budgets(
            r#"
            [[budgets]]
            team = "search"
            window = "month"
            cost = 1000
            [[budgets]]
            api_key_id = "search"
            window = "30d"
            tokens = 5
            [[budgets]]
            team = "*"
            window = "month"
            tokens = 7
            "#,
        );
        assert_eq!(validate_budgets(&list), Ok(Vec::new()));
        assert_eq!(budget_owner(&list[0]), ("team", "search"));
        assert_eq!(budget_owner(&list[1]), ("api_key_id", "search"));
        assert_eq!(budget_window_secs(MONTH_WINDOW), None);
        let dup = budgets(
            "[[budgets]]\nteam = \"t\"\nwindow = \"month\"\ntokens = 1\n[[budgets]]\nteam = \"t\"\nwindow = \"month\"\ncost = 2\n",
        );
        let e = validate_budgets(&dup).expect_err("duplicate team budget");
        assert_eq!(e.key, "budgets[1]");
        assert_eq!(
            e.message,
            "(team \"t\"): same team and window as budgets[0]"
        );
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
            (
                "api_key_id = \"k\"\nteam = \"t\"\nwindow = \"7d\"\ntokens = 1",
                "budgets[1]",
                "names both api_key_id and team",
            ),
            (
                "api_key_id = \"k\"\nwindow = \"year\"\ntokens = 1",
                "budgets[1].window",
                "\"month\"",
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
            team: String::new(),
            window: "1d".into(),
            tokens: Some(1),
            cost: None,
        };
        assert_eq!(
            validate_budgets(&[long]).unwrap()[0].key,
            "budgets[0].api_key_id"
        );
    }

    #[test]
    fn budgets_no_shipped_rule_evaluates_are_refused_naming_the_entry_and_why() {
        let team_30d = budgets("[[budgets]]\nteam = \"x\"\nwindow = \"30d\"\ncost = 1\n");
        let e = validate_budgets(&team_30d).expect_err("a team budget over a rolling window");
        assert_eq!(e.key, "budgets[0].window");
        assert_eq!(
            e.message,
            "(team \"x\"): a team budget's window must be \"month\" (team budgets are calendar months; rolling windows are per API key)"
        );
        for window in ["1d", "7d"] {
            let list = budgets(&format!(
                "[[budgets]]\nteam = \"*\"\nwindow = \"{window}\"\ntokens = 1\n"
            ));
            assert_eq!(
                validate_budgets(&list).expect_err(window).key,
                "budgets[0].window"
            );
        }
        let key_month = budgets(
            "[[budgets]]\napi_key_id = \"k\"\nwindow = \"1d\"\ntokens = 1\n\
             [[budgets]]\napi_key_id = \"a\"\nwindow = \"month\"\ntokens = 1\n",
        );
        let e = validate_budgets(&key_month).expect_err("a key budget over a calendar month");
        assert_eq!(e.key, "budgets[1].window");
        assert_eq!(
            e.message,
            "(api_key_id \"a\"): a key budget's window must be \"1d\", \"7d\" or \"30d\" (calendar-month budgets are per team)"
        );
    }
}
