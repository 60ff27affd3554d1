//! The store's owned, sorted copy ([`Snapshot`]) that exports, the server and the saved state
//! read, and the restore of a saved one.
//!
//! Owns: the snapshot types (their serde shape is the state file's) and [`Store::snapshot`],
//! [`Store::restore`]. Must not: write or read files (the caller saves and loads the state).

use serde::{Deserialize, Serialize};

use crate::parse::StatusClass;

use super::{Histogram, SelfStats, Store};

/// The unpriced and unmetered requests of one (model, service_id, team).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairSnapshot {
    pub model: String,
    pub service_id: String,
    /// docs/owners.md: empty without owners (and in states written before them).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub team: String,
    #[serde(default)]
    pub unpriced: u64,
    /// The tokens of the unpriced requests (0 in states written before it was counted).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub unpriced_tokens: u64,
    #[serde(default)]
    pub unmetered: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unpriced_start_ns: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unmetered_start_ns: i64,
}

/// One token series in a snapshot: every counter of one (model, api_key_id, service_id, team).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesSnapshot {
    pub model: String,
    pub api_key_id: String,
    pub service_id: String,
    /// docs/owners.md: the team the series' records were attributed to; empty without owners
    /// (and in states written before them).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub team: String,
    /// Indexed like [`StatusClass::ALL`].
    pub requests: [u64; 5],
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    /// In the order of [`Snapshot::extra_names`]; empty when all are 0 (most series: no
    /// allocation per series), so read it with `get(i)`, a missing value being 0.
    pub extra_tokens: Vec<u64>,
    /// When the series was created (ns since the epoch): the start of its cumulative
    /// counters, and the time of the 0 its first OTLP pushes carry. 0: unknown (a state of
    /// an older version, or replay); exporters then use the agent's start time.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_ns: i64,
    /// Cost in units of 10^-12 of the snapshot's currency (0 without pricing).
    #[serde(default, skip_serializing_if = "is_zero_units")]
    pub cost_units: u128,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

fn is_zero_units(n: &u128) -> bool {
    *n == 0
}

impl SeriesSnapshot {
    pub fn requests_total(&self) -> u64 {
        self.requests.iter().sum()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistogramSnapshot {
    pub model: String,
    pub service_id: String,
    pub status_class: String,
    pub histogram: Histogram,
}

/// A consistent, owned copy of the store, sorted by labels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub extra_names: Vec<String>,
    pub series: Vec<SeriesSnapshot>,
    pub durations: Vec<HistogramSnapshot>,
    pub stats: SelfStats,
    /// Unpriced and unmetered requests per (model, service_id), sorted; only pairs that have
    /// had either.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pairs: Vec<PairSnapshot>,
    /// The currency of `cost_units` when pricing is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// docs/owners.md: the team label's name while owners are configured (exports add the
    /// label then, and only then). Not saved: the config of the agent that reads a state
    /// decides.
    #[serde(skip)]
    pub team_label: Option<String>,
    /// The owners file's `[[budgets]]` in force (docs/owners.md), for the budget gauges; not
    /// saved (the file is read again on start).
    #[serde(skip)]
    pub owner_budgets: Vec<crate::pricing::Budget>,
}

impl Store {
    /// Continues from a saved snapshot (the daemon's state after a restart), so exported
    /// counters do not reset. Values come back as they were saved, folded ones included; the
    /// limits apply to what comes next. Extra token counters are matched by name.
    pub fn restore(&mut self, snap: &Snapshot, extra_names: &[String]) {
        self.end_runs();
        // With pricing off, the saved cost is kept in its currency (and saved again).
        if self.spend.currency.is_none() {
            self.spend.currency.clone_from(&snap.currency);
        }
        let extra_map: Vec<Option<usize>> = snap
            .extra_names
            .iter()
            .map(|n| extra_names.iter().position(|m| m == n))
            .collect();
        // Without owners, teams are dropped: their series continue as one, without the label.
        let with_teams = self.team_label.is_some();
        fn team(with_teams: bool, t: &str) -> &str {
            if with_teams {
                t
            } else {
                ""
            }
        }
        for x in &snap.series {
            let ids = [
                self.models.force(&x.model),
                self.keys.force(&x.api_key_id),
                self.services.force(&x.service_id),
                self.teams.force(team(with_teams, &x.team)),
            ];
            let idx = self.series_slot(ids);
            let c = &mut self.series[idx].1;
            for (a, b) in c.requests.iter_mut().zip(x.requests) {
                *a += b;
            }
            c.input += x.input_tokens;
            c.output += x.output_tokens;
            c.total += x.total_tokens;
            if x.start_ns != 0 {
                c.start_ns = x.start_ns;
            }
            // Cost continues only in the currency it was counted in (kept while pricing is off).
            if snap.currency.is_some()
                && (self.spend.currency.is_none() || snap.currency == self.spend.currency)
            {
                self.spend.cost[idx] = self.spend.cost[idx].saturating_add(x.cost_units);
            }
            for (i, v) in x.extra_tokens.iter().enumerate() {
                if let Some(Some(j)) = extra_map.get(i) {
                    self.extras[idx * self.n_extra + j] += v;
                }
            }
        }
        for h in &snap.durations {
            let Some(class) = StatusClass::ALL
                .iter()
                .find(|c| c.as_str() == h.status_class)
            else {
                continue;
            };
            let key = (
                self.models.force(&h.model),
                self.services.force(&h.service_id),
                *class,
            );
            let i = self.hist_slot(key);
            self.hists[i].1.add(&h.histogram);
        }
        let st = &snap.stats;
        self.stats.records += st.records;
        for (a, b) in self
            .stats
            .records_by_format
            .iter_mut()
            .zip(st.records_by_format)
        {
            *a += b;
        }
        // A state written before formats has records and no formats: all of them were read
        // with the keys of the `tokenmeter` format.
        let unattributed = st
            .records
            .saturating_sub(st.records_by_format.iter().sum::<u64>());
        self.stats.records_by_format[crate::parse::format::Format::Tokenmeter as usize] +=
            unattributed;
        for (a, b) in self.stats.skipped.iter_mut().zip(st.skipped) {
            *a += b;
        }
        for (a, b) in self.stats.invalid_fields.iter_mut().zip(&st.invalid_fields) {
            *a += b;
        }
        self.stats.total_mismatches += st.total_mismatches;
        self.stats.team_overflows += st.team_overflows;
        for (a, b) in self.stats.overflows.iter_mut().zip(st.overflows) {
            *a += b;
        }
        for (a, b) in self.stats.child_exceeds.iter_mut().zip(&st.child_exceeds) {
            *a += b;
        }
        for p in &snap.pairs {
            let ids = [
                self.models.force(&p.model),
                self.services.force(&p.service_id),
                self.teams.force(team(with_teams, &p.team)),
            ];
            let i = self.pair_slot(ids);
            let dst = &mut self.spend.pairs[i];
            dst.unpriced += p.unpriced;
            dst.unpriced_tokens = dst.unpriced_tokens.wrapping_add(p.unpriced_tokens);
            dst.unmetered += p.unmetered;
            if p.unpriced_start_ns != 0 {
                dst.unpriced_start_ns = p.unpriced_start_ns;
            }
            if p.unmetered_start_ns != 0 {
                dst.unmetered_start_ns = p.unmetered_start_ns;
            }
        }
    }

    /// An owned copy, series sorted by (model, api_key_id, service_id, team).
    pub fn snapshot(&self, extra_names: &[String]) -> Snapshot {
        // Sort by each label's rank among its values: integer compares, not string compares.
        let (rm, rk, rs, rt) = (
            self.models.ranks(),
            self.keys.ranks(),
            self.services.ranks(),
            self.teams.ranks(),
        );
        let mut order: Vec<usize> = (0..self.series.len()).collect();
        order.sort_unstable_by_key(|&i| {
            let [m, k, s, t] = self.series[i].0;
            (
                rm[m as usize],
                rk[k as usize],
                rs[s as usize],
                rt[t as usize],
            )
        });
        let series: Vec<SeriesSnapshot> = order
            .into_iter()
            .map(|i| {
                let ([m, k, s, t], c) = &self.series[i];
                SeriesSnapshot {
                    model: self.models.get(*m).to_string(),
                    api_key_id: self.keys.get(*k).to_string(),
                    service_id: self.services.get(*s).to_string(),
                    team: self.teams.get(*t).to_string(),
                    requests: c.requests,
                    input_tokens: c.input,
                    output_tokens: c.output,
                    total_tokens: c.total,
                    extra_tokens: match &self.extras[i * self.n_extra..(i + 1) * self.n_extra] {
                        e if e.iter().all(|&n| n == 0) => Vec::new(),
                        e => e.to_vec(),
                    },
                    start_ns: c.start_ns,
                    cost_units: self.series_cost(i),
                }
            })
            .collect();
        let mut durations: Vec<HistogramSnapshot> = self
            .hists
            .iter()
            .map(|((m, s, c), h)| HistogramSnapshot {
                model: self.models.get(*m).to_string(),
                service_id: self.services.get(*s).to_string(),
                status_class: c.as_str().to_string(),
                histogram: h.clone(),
            })
            .collect();
        durations.sort_by(|a, b| {
            (&a.model, &a.service_id, &a.status_class).cmp(&(
                &b.model,
                &b.service_id,
                &b.status_class,
            ))
        });
        let mut pairs: Vec<_> = self
            .spend
            .pairs
            .iter()
            .filter(|p| p.unpriced > 0 || p.unmetered > 0)
            .map(|p| {
                let [m, s, t] = p.ids;
                let snap = PairSnapshot {
                    model: self.models.get(m).to_string(),
                    service_id: self.services.get(s).to_string(),
                    team: self.teams.get(t).to_string(),
                    unpriced: p.unpriced,
                    unpriced_tokens: p.unpriced_tokens,
                    unmetered: p.unmetered,
                    unpriced_start_ns: p.unpriced_start_ns,
                    unmetered_start_ns: p.unmetered_start_ns,
                };
                (rm[m as usize], rs[s as usize], rt[t as usize], snap)
            })
            .collect();
        pairs.sort_unstable_by_key(|p| (p.0, p.1, p.2));
        Snapshot {
            extra_names: extra_names.to_vec(),
            series,
            durations,
            stats: self.stats.clone(),
            pairs: pairs.into_iter().map(|p| p.3).collect(),
            currency: self.spend.currency.clone(),
            team_label: self.team_label.clone(),
            owner_budgets: self
                .owners
                .as_ref()
                .map(|o| o.budgets().to_vec())
                .unwrap_or_default(),
        }
    }
}
