//! Owners (docs/owners.md): the owners file's syntax (`[[owners]]` entries mapping api_key_id
//! globs to teams, optional `from`; `[[budgets]]`), its validation, and the team in force for
//! an api_key_id at an event time.
//!
//! Owns: [`OwnersFile`], [`OwnerTable`] and the config errors of an owners file. Selection is
//! pricing's ([`crate::pricing::Groups`]: groups in file order, the latest `from` in force), not
//! a second one. Must not: read the file from disk (the caller reads it and hands the text to
//! [`parse_owners_file`]), touch counters, or cache selections (it says for how long a
//! selection holds so the caller can).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::parse::OVERFLOW;

use crate::pricing::{
    budget_owner, parse_toml_file, validate_budgets, Budget, Groups, PricingError,
};

/// One `[[owners]]` entry of the owners file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerEntry {
    /// Glob over the api_key_id label value (after the 256-byte cut, before overflow folding).
    pub api_key_id: String,
    pub team: String,
    /// RFC 3339 with an offset: in force for records whose event time is at or after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// The contents of `owners.file`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnersFile {
    #[serde(default)]
    pub owners: Vec<OwnerEntry>,
    /// Budgets kept beside the owners (docs/owners.md "Budgets"), with the main config's.
    #[serde(default)]
    pub budgets: Vec<Budget>,
}

/// Parses an owners file. Keys in errors are relative to the file (`owners[2].from`); the key
/// is empty for a TOML syntax error, whose message gives the line.
pub fn parse_owners_file(text: &str) -> Result<OwnersFile, PricingError> {
    parse_toml_file(text)
}

/// A team as an index into [`OwnerTable::teams`].
pub type TeamId = u32;

/// The validated owners file: the team in force for a key at a time.
#[derive(Debug, Clone, Default)]
pub struct OwnerTable {
    groups: Groups<1, TeamId>,
    /// Every team an entry names, then the default team; indexed by [`TeamId`].
    teams: Vec<String>,
    default: TeamId,
    budgets: Vec<Budget>,
    /// The number of `[[owners]]` entries.
    entries: usize,
    /// The number of distinct teams the entries name (the default team not counted).
    named_teams: usize,
}

impl OwnerTable {
    /// Validates an owners file; `default` is `owners.default`. Errors name the entry by its
    /// index (`owners[2].team`) and its api_key_id pattern.
    pub fn compile(file: &OwnersFile, default: &str) -> Result<OwnerTable, PricingError> {
        let mut table = OwnerTable::default();
        let mut team_ids: HashMap<String, TeamId> = HashMap::new();
        let mut first_with: HashMap<(&str, Option<i64>), usize> = HashMap::new();
        let mut team_id = |teams: &mut Vec<String>, name: &str| -> TeamId {
            if let Some(&id) = team_ids.get(name) {
                return id;
            }
            teams.push(name.to_string());
            let id = (teams.len() - 1) as TeamId;
            team_ids.insert(name.to_string(), id);
            id
        };
        for (i, entry) in file.owners.iter().enumerate() {
            let key = format!("owners[{i}]");
            let error = |key: String, message: &str| PricingError {
                key,
                message: format!("(api_key_id {:?}): {message}", entry.api_key_id),
            };
            if entry.api_key_id.is_empty() {
                return Err(error(
                    format!("{key}.api_key_id"),
                    "the api_key_id pattern is empty; use \"*\" for every key",
                ));
            }
            if entry.team.is_empty() {
                return Err(error(format!("{key}.team"), "the team is empty"));
            }
            if entry.team == OVERFLOW {
                return Err(error(
                    format!("{key}.team"),
                    &format!("{OVERFLOW:?} is the value teams past limits.max_values.team fold into, not a team"),
                ));
            }
            let from = match &entry.from {
                None => None,
                Some(text) => Some(crate::timefmt::parse_rfc3339_nanos(text).ok_or_else(|| {
                    error(
                        format!("{key}.from"),
                        &format!(
                            "{text:?} is not an RFC 3339 time with an offset, e.g. \"2026-01-01T00:00:00Z\" (years 1678 to 2261)"
                        ),
                    )
                })?),
            };
            let identity = (entry.api_key_id.as_str(), from);
            if let Some(&earlier) = first_with.get(&identity) {
                return Err(error(
                    key,
                    &format!("same api_key_id and from as owners[{earlier}]"),
                ));
            }
            first_with.insert(identity, i);
            let team = team_id(&mut table.teams, &entry.team);
            table.groups.push([entry.api_key_id.as_str()], from, team);
        }
        table.entries = file.owners.len();
        table.named_teams = table.teams.len();
        table.default = team_id(&mut table.teams, default);
        validate_budgets(&file.budgets)?;
        table.budgets = file.budgets.clone();
        Ok(table)
    }

    /// The team of a record whose api_key_id label value is `key` at event time `t_ns`, and
    /// the half-open interval `[from_ns, until_ns)` of event time over which it is the same
    /// for this key (`i64::MIN` / `i64::MAX` when unbounded). Keys no entry matches belong to
    /// the default team.
    pub fn select(&self, key: &str, t_ns: i64) -> (&str, i64, i64) {
        let (team, from, until) = self.select_id(key, t_ns);
        (self.team(team), from, until)
    }

    /// [`OwnerTable::select`] with the team as its id (see [`OwnerTable::team`]).
    pub fn select_id(&self, key: &str, t_ns: i64) -> (TeamId, i64, i64) {
        let (team, from, until) = self.groups.select([key], t_ns);
        (team.unwrap_or(self.default), from, until)
    }

    /// Whether any entry has a `from`: only then does a key's team depend on event time.
    pub fn time_dependent(&self) -> bool {
        self.groups.time_dependent()
    }

    /// The name of a team.
    pub fn team(&self, id: TeamId) -> &str {
        self.teams.get(id as usize).map_or("", String::as_str)
    }

    /// The number of `[[owners]]` entries' teams (the default team included).
    pub fn teams(&self) -> usize {
        self.teams.len()
    }

    /// The owners file's `[[budgets]]`.
    pub fn budgets(&self) -> &[Budget] {
        &self.budgets
    }

    /// What the file holds, as `check-config` says it: entries, the distinct teams they name,
    /// budgets.
    pub fn describe(&self) -> String {
        let n = |count: usize, one: &str, many: &str| {
            format!("{count} {}", if count == 1 { one } else { many })
        };
        format!(
            "{}, {}, {}",
            n(self.entries, "owners entry", "owners entries"),
            n(self.named_teams, "team", "distinct teams"),
            n(self.budgets.len(), "budget", "budgets")
        )
    }

    /// Refuses a budget of the owners file whose (api_key_id or team, window) the main
    /// config's `budgets` also has: both would be exported, as two series of one gauge.
    pub fn check_budgets_beside(&self, main: &[Budget]) -> Result<(), PricingError> {
        for (i, budget) in self.budgets.iter().enumerate() {
            let same = |b: &Budget| {
                b.api_key_id == budget.api_key_id
                    && b.team == budget.team
                    && b.window == budget.window
            };
            if let Some(n) = main.iter().position(same) {
                let (whose, name) = budget_owner(budget);
                return Err(PricingError {
                    key: format!("budgets[{i}]"),
                    message: format!(
                        "({whose} {name:?}): also defined in the main config's budgets[{n}]; define each budget once"
                    ),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-30T23:59:59Z and 2026-12-01T00:00:00Z, from `date -u -d ... +%s`.
    const NOV_LAST_SECOND: i64 = 1_796_083_199_000_000_000;
    const DEC: i64 = 1_796_083_200_000_000_000;

    fn table(text: &str) -> OwnerTable {
        let file = parse_owners_file(text).expect("test owners file parses");
        OwnerTable::compile(&file, "unassigned").expect("compiles")
    }

    fn rejected(text: &str) -> PricingError {
        let file = parse_owners_file(text).expect("test owners file parses");
        OwnerTable::compile(&file, "unassigned").expect_err("must be an error")
    }

    const EXAMPLE: &str = r#"
        [[owners]]
        api_key_id = "svc-batch-*"
        team = "data-platform"
        [[owners]]
        api_key_id = "svc-batch-*"
        team = "ml-research"
        from = "2026-12-01T00:00:00Z"
        [[owners]]
        api_key_id = "svc-*"
        team = "platform"
        [[owners]]
        api_key_id = "svc-batch-legacy"
        team = "never-selected"
    "#;

    #[test]
    fn a_key_changes_team_exactly_at_the_from_instant() {
        let t = table(EXAMPLE);
        assert_eq!(
            t.select("svc-batch-7", NOV_LAST_SECOND),
            ("data-platform", i64::MIN, DEC)
        );
        assert_eq!(
            t.select("svc-batch-7", DEC - 1),
            ("data-platform", i64::MIN, DEC)
        );
        assert_eq!(t.select("svc-batch-7", DEC), ("ml-research", DEC, i64::MAX));
        assert!(t.time_dependent());
    }

    #[test]
    fn the_first_group_in_file_order_wins_and_unmatched_keys_get_the_default_team() {
        let t = table(EXAMPLE);
        // "svc-batch-legacy" matches the first group before its own exact entry.
        assert_eq!(t.select("svc-batch-legacy", 0).0, "data-platform");
        assert_eq!(t.select("svc-chat", 0).0, "platform");
        assert_eq!(t.select("other", DEC), ("unassigned", i64::MIN, i64::MAX));
        // Globs are case-sensitive; `*` spans `/`, `.` and `:`.
        assert_eq!(t.select("SVC-chat", 0).0, "unassigned");
        let slash = table("[[owners]]\napi_key_id = \"org/*:prod\"\nteam = \"t\"\n");
        assert_eq!(slash.select("org/a.b/c:prod", 0).0, "t");
    }

    #[test]
    fn a_group_not_yet_in_force_lets_a_later_group_answer_until_its_from() {
        let t = table(
            "[[owners]]\napi_key_id = \"k\"\nteam = \"new\"\nfrom = \"2026-12-01T00:00:00Z\"\n\
             [[owners]]\napi_key_id = \"*\"\nteam = \"old\"\n",
        );
        assert_eq!(t.select("k", DEC - 1), ("old", i64::MIN, DEC));
        assert_eq!(t.select("k", DEC), ("new", DEC, i64::MAX));
        // The default team while nothing is in force yet, until the first `from`.
        let only_later = table(
            "[[owners]]\napi_key_id = \"k\"\nteam = \"new\"\nfrom = \"2026-12-01T01:00:00+01:00\"\n",
        );
        assert_eq!(
            only_later.select("k", DEC - 1),
            ("unassigned", i64::MIN, DEC)
        );
    }

    #[test]
    fn owners_file_errors_name_the_entry_and_its_pattern() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "api_key_id = \"\"\nteam = \"t\"",
                "owners[1].api_key_id",
                "empty",
            ),
            (
                "api_key_id = \"k\"\nteam = \"\"",
                "owners[1].team",
                "the team is empty",
            ),
            (
                "api_key_id = \"k\"\nteam = \"t\"\nfrom = \"2026-12-01\"",
                "owners[1].from",
                "not an RFC 3339 time",
            ),
            (
                "api_key_id = \"k\"\nteam = \"u\"\nfrom = \"2026-12-01T01:00:00+01:00\"",
                "owners[1]",
                "same api_key_id and from as owners[0]",
            ),
        ];
        let first =
            "[[owners]]\napi_key_id = \"k\"\nteam = \"t\"\nfrom = \"2026-12-01T00:00:00Z\"\n";
        for (entry, key, phrase) in cases {
            let e = rejected(&format!("{first}[[owners]]\n{entry}\n"));
            assert_eq!(e.key, *key, "{e}");
            assert!(e.message.starts_with("(api_key_id "), "{e}");
            assert!(e.message.contains(phrase), "{e}");
        }
        let e = parse_owners_file("[[owners]]\napi_key_id = \"k\"\nteem = \"t\"\n")
            .expect_err("unknown key");
        assert_eq!(e.key, "owners[0].teem", "{e}");
        // One line, as the main config's: the key says where, no trailing "in `owners`".
        assert_eq!(
            e.message,
            "unknown field `teem`, expected one of `api_key_id`, `team`, `from`"
        );
        let e = parse_owners_file("[[owners]\n").expect_err("syntax");
        assert!(e.message.starts_with("invalid TOML at line 1"), "{e}");
        let e = rejected("[[budgets]]\nteam = \"t\"\nwindow = \"week\"\ntokens = 1\n");
        assert_eq!(e.key, "budgets[0].window", "{e}");
    }

    #[test]
    fn owners_file_budgets_are_kept_for_the_gauges() {
        let t = table(
            "[[owners]]\napi_key_id = \"k*\"\nteam = \"t\"\n\
             [[budgets]]\nteam = \"t\"\nwindow = \"month\"\ncost = 12.5\n",
        );
        assert_eq!(t.budgets().len(), 1);
        assert_eq!(t.budgets()[0].team, "t");
        assert_eq!(t.teams(), 2);
        assert_eq!(t.team(0), "t");
        assert_eq!(t.team(1), "unassigned");
    }

    #[test]
    fn the_overflow_fold_value_is_not_a_team() {
        let e = rejected("[[owners]]\napi_key_id = \"k\"\nteam = \"__overflow__\"\n");
        assert_eq!(e.key, "owners[0].team", "{e}");
        assert_eq!(
            e.message,
            "(api_key_id \"k\"): \"__overflow__\" is the value teams past limits.max_values.team fold into, not a team"
        );
    }

    #[test]
    fn describe_counts_entries_distinct_teams_and_budgets() {
        assert_eq!(
            table(EXAMPLE).describe(),
            "4 owners entries, 4 distinct teams, 0 budgets"
        );
        let t = table(
            "[[owners]]\napi_key_id = \"a\"\nteam = \"t\"\n[[owners]]\napi_key_id = \"b\"\nteam = \"t\"\n\
             [[budgets]]\nteam = \"t\"\nwindow = \"month\"\ntokens = 1\n",
        );
        assert_eq!(t.describe(), "2 owners entries, 1 team, 1 budget");
        // The default team is not one the file names.
        assert_eq!(
            table("").describe(),
            "0 owners entries, 0 distinct teams, 0 budgets"
        );
    }
}
