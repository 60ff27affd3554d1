//! Merging a store counted apart (one part of a replay on its own thread) into another, as if
//! its records had been counted there one by one, or refusing when a label would fold.
//!
//! Owns: [`Store::absorb`] and the checks that let a part be abandoned early. Must not: count
//! records (that is the store's `add_at`).

use super::interner::Interner;
use super::Store;

impl Store {
    /// Whether this [`Store::unlimited`] part holds more label values or series than the
    /// store it is for may: then [`Store::absorb`] refuses it whatever that store holds (its
    /// values and series would be at least the part's), so counting it further only costs
    /// memory, without bound (e.g. a key per request).
    pub fn beyond_merge_limits(&self) -> bool {
        self.merge_limits.is_some_and(|[m, k, s, t, n]| {
            self.models.values.len() > m
                || self.keys.values.len() > k
                || self.services.values.len() > s
                || self.teams.values.len() > t
                || self.series.len() > n
        })
    }

    /// Marks this part as counted only in part: [`Store::absorb`] refuses it.
    pub fn abandon(&mut self) {
        self.abandoned = true;
    }

    /// Adds the counts of `part`, an [`Store::unlimited`] store that counted the input read
    /// after everything counted here (the next file of a replay), with the same prices and
    /// clock, as if its records had been counted here one by one. Its series join in the
    /// order they were created in `part`, which is the order their first records came in.
    ///
    /// Refused (`false`, nothing changed) when a label value or a series of `part` would be
    /// folded here (a limit of docs/metrics.md reached): folding is decided record by record, so the
    /// caller counts that input again here. Without folding every counter is a sum, so the
    /// result is the one reading in order gives — except the duration histograms' float
    /// sums, added in another order (not in replay's outputs).
    pub fn absorb(&mut self, part: &Store) -> bool {
        debug_assert_eq!(self.n_extra, part.n_extra);
        if part.abandoned {
            return false;
        }
        self.end_runs();
        // Whether everything fits: counted conservatively (a new value or series counts even
        // where the limit would have let it in, e.g. `__overflow__` itself): refusing is
        // always exact.
        let new_values = |mine: &Interner, theirs: &Interner| {
            theirs
                .values
                .iter()
                .filter(|v| !mine.ids.contains_key(v.as_ref()))
                .count()
        };
        let fits = |mine: &Interner, theirs: &Interner| {
            mine.values.len().saturating_add(new_values(mine, theirs)) <= mine.limit
        };
        // The empty team (owners off) never counts against the limit: it never folds.
        let fits_teams = |mine: &Interner, theirs: &Interner| {
            let named = |i: &Interner| i.values.iter().filter(|v| !v.is_empty()).count();
            let new = theirs
                .values
                .iter()
                .filter(|v| !v.is_empty() && !mine.ids.contains_key(v.as_ref()))
                .count();
            named(mine).saturating_add(new) <= mine.limit
        };
        if !fits(&self.models, &part.models)
            || !fits(&self.keys, &part.keys)
            || !fits(&self.services, &part.services)
            || !fits_teams(&self.teams, &part.teams)
        {
            return false;
        }
        let existing = |[m, k, s, t]: [u32; 4]| -> Option<[u32; 4]> {
            Some([
                *self.models.ids.get(part.models.get(m))?,
                *self.keys.ids.get(part.keys.get(k))?,
                *self.services.ids.get(part.services.get(s))?,
                *self.teams.ids.get(part.teams.get(t))?,
            ])
        };
        let new_series = part
            .series
            .iter()
            .filter(|(ids, _)| {
                existing(*ids).is_none_or(|ids| !self.series_index.contains_key(&ids))
            })
            .count();
        if self.series.len().saturating_add(new_series) > self.max_series {
            return false;
        }

        // Part's label ids to ours (nothing folds: checked above).
        let pair = |[m, s]: [u32; 2], store: &mut Store| {
            [
                store.models.force(part.models.get(m)),
                store.services.force(part.services.get(s)),
            ]
        };
        for (i, ([m, k, s, t], c)) in part.series.iter().enumerate() {
            let [m, s] = pair([*m, *s], self);
            let t = self.teams.force(part.teams.get(*t));
            let ids = [m, self.keys.force(part.keys.get(*k)), s, t];
            let idx = self.series_slot(ids);
            let mine = &mut self.series[idx].1;
            for (n, add) in mine.requests.iter_mut().zip(c.requests) {
                *n += add;
            }
            // Token counters wrap as in `add_at` (no run is open here: ended above).
            mine.input = mine.input.wrapping_add(c.input);
            mine.output = mine.output.wrapping_add(c.output);
            mine.total = mine.total.wrapping_add(c.total);
            let n = self.n_extra;
            for (slot, add) in self.extras[idx * n..(idx + 1) * n]
                .iter_mut()
                .zip(&part.extras[i * n..(i + 1) * n])
            {
                *slot = slot.wrapping_add(*add);
            }
            self.spend.cost[idx] = self.spend.cost[idx].saturating_add(part.series_cost(i));
        }
        for ((m, s, class), h) in &part.hists {
            let [m, s] = pair([*m, *s], self);
            let at = self.hist_slot((m, s, *class));
            self.hists[at].1.add(h);
        }
        for p in &part.spend.pairs {
            let [m, s, t] = p.ids;
            let [m, s] = pair([m, s], self);
            let ids = [m, s, self.teams.force(part.teams.get(t))];
            let at = self.pair_slot(ids);
            let mine = &mut self.spend.pairs[at];
            mine.unpriced_tokens = mine.unpriced_tokens.wrapping_add(p.unpriced_tokens);
            for (n, start, add, add_start) in [
                (
                    &mut mine.unpriced,
                    &mut mine.unpriced_start_ns,
                    p.unpriced,
                    p.unpriced_start_ns,
                ),
                (
                    &mut mine.unmetered,
                    &mut mine.unmetered_start_ns,
                    p.unmetered,
                    p.unmetered_start_ns,
                ),
            ] {
                if *n == 0 && add > 0 {
                    *start = add_start;
                }
                *n += add;
            }
        }
        let (st, theirs) = (&mut self.stats, &part.stats);
        st.records += theirs.records;
        for (n, add) in st
            .records_by_format
            .iter_mut()
            .zip(theirs.records_by_format)
        {
            *n += add;
        }
        for (n, add) in st.skipped.iter_mut().zip(theirs.skipped) {
            *n += add;
        }
        for (n, add) in st.invalid_fields.iter_mut().zip(&theirs.invalid_fields) {
            *n += add;
        }
        st.total_mismatches += theirs.total_mismatches;
        st.team_overflows += theirs.team_overflows;
        for (n, add) in st.overflows.iter_mut().zip(theirs.overflows) {
            *n += add;
        }
        if st.child_exceeds.len() < theirs.child_exceeds.len() {
            st.child_exceeds.resize(theirs.child_exceeds.len(), 0);
        }
        for (n, add) in st.child_exceeds.iter_mut().zip(&theirs.child_exceeds) {
            *n += add;
        }
        true
    }
}
