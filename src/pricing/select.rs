//! Selection of the entry in force (docs/spend.md "How cost is worked out", docs/owners.md
//! "Selection"): entries with identical patterns form a group; a record uses the first group,
//! in file order, whose patterns all match it and that has an entry in force at its event time
//! (`from` absent or at or before it), and within that group the entry with the latest `from`.
//!
//! Owns: the groups and that rule, for any number of patterns per entry and any value an entry
//! selects (a price entry's id, an owner entry's team). Must not: validate entries, know what
//! the patterns are matched against, or cache selections (it says for how long a selection
//! holds so the caller can).

use std::collections::HashMap;

use super::glob::Glob;

/// The entries of a table grouped by their patterns, in file order.
#[derive(Debug, Clone)]
pub struct Groups<const N: usize, V> {
    groups: Vec<Group<N, V>>,
    /// Each group's index by its patterns' text.
    index: HashMap<[String; N], usize>,
}

#[derive(Debug, Clone)]
struct Group<const N: usize, V> {
    patterns: [Glob; N],
    /// By `from`, ascending; `None` (always in force) first.
    entries: Vec<(Option<i64>, V)>,
}

impl<const N: usize, V> Default for Groups<N, V> {
    fn default() -> Self {
        Groups {
            groups: Vec::new(),
            index: HashMap::new(),
        }
    }
}

impl<const N: usize, V: Copy> Groups<N, V> {
    /// Adds an entry with these patterns, in file order: it joins the group of identical
    /// patterns, or starts a new group after the others. Two entries of a group with the same
    /// `from` are the caller's error to report (the later one would never be selected).
    pub fn push(&mut self, patterns: [&str; N], from: Option<i64>, value: V) {
        let text = patterns.map(str::to_string);
        let at = match self.index.get(&text) {
            Some(&at) => at,
            None => {
                self.groups.push(Group {
                    patterns: patterns.map(Glob::new),
                    entries: Vec::new(),
                });
                self.index.insert(text, self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        let entries = &mut self.groups[at].entries;
        // Kept sorted by `from` (stable: an equal `from` goes after, never selected first).
        let i = entries.partition_point(|&(f, _)| f <= from);
        entries.insert(i, (from, value));
    }

    /// Whether any entry has a `from`: only then does the selection depend on event time.
    pub fn time_dependent(&self) -> bool {
        self.groups
            .iter()
            .any(|g| g.entries.iter().any(|(from, _)| from.is_some()))
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The value in force for a record whose label values are `texts` (one per pattern) at
    /// event time `t_ns`, and the half-open interval `[from_ns, until_ns)` of event time over
    /// which the answer is the same for these texts (`i64::MIN` / `i64::MAX` when unbounded).
    pub fn select(&self, texts: [&str; N], t_ns: i64) -> (Option<V>, i64, i64) {
        // The earliest `from` after `t_ns` of the groups passed over: there the answer changes.
        let mut until = i64::MAX;
        for group in &self.groups {
            if !group.patterns.iter().zip(texts).all(|(p, t)| p.matches(t)) {
                continue;
            }
            let in_force = group
                .entries
                .partition_point(|&(from, _)| from.is_none_or(|f| f <= t_ns));
            if let Some(&(Some(next), _)) = group.entries.get(in_force) {
                until = until.min(next);
            }
            if let Some(&(from, v)) = in_force.checked_sub(1).and_then(|i| group.entries.get(i)) {
                return (Some(v), from.unwrap_or(i64::MIN), until);
            }
            // Nothing in force yet: the next group gets its chance.
        }
        (None, i64::MIN, until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_000;

    fn groups(entries: &[(&str, Option<i64>, u32)]) -> Groups<1, u32> {
        let mut g = Groups::default();
        for &(p, from, v) in entries {
            g.push([p], from, v);
        }
        g
    }

    #[test]
    fn an_entry_is_in_force_from_its_instant_exactly() {
        let g = groups(&[("k*", None, 1), ("k*", Some(T), 2)]);
        assert_eq!(g.select(["k1"], T - 1), (Some(1), i64::MIN, T));
        assert_eq!(g.select(["k1"], T), (Some(2), T, i64::MAX));
        assert!(g.time_dependent());
    }

    #[test]
    fn the_first_matching_group_in_file_order_wins_once_it_has_an_entry_in_force() {
        // The second group matches too but comes later; the first is not in force before T.
        let g = groups(&[("k-*", Some(T), 1), ("*", None, 2), ("k-1", None, 3)]);
        assert_eq!(g.select(["k-1"], T - 1), (Some(2), i64::MIN, T));
        assert_eq!(g.select(["k-1"], T), (Some(1), T, i64::MAX));
        assert_eq!(g.select(["x"], 0), (Some(2), i64::MIN, i64::MAX));
        let none = groups(&[("a*", None, 1)]);
        assert_eq!(none.select(["b"], 0), (None, i64::MIN, i64::MAX));
        assert!(!none.time_dependent());
    }

    #[test]
    fn entries_join_their_group_whatever_the_order_they_are_written_in() {
        let g = groups(&[("k", Some(2 * T), 3), ("*", None, 9), ("k", Some(T), 2)]);
        assert_eq!(g.select(["k"], T + 1), (Some(2), T, 2 * T));
        assert_eq!(g.select(["k"], 2 * T), (Some(3), 2 * T, i64::MAX));
        assert_eq!(g.select(["k"], 0), (Some(9), i64::MIN, T));
    }
}
