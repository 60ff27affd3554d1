//! The one metric schema (docs/metrics.md): every family's name, help, unit, type and
//! label names, and how its points are read from a [`View`]. `/metrics` (`server`) and the
//! live OTLP request (`export::otlp`) are formatters over [`families`]; neither defines a
//! family, a help string or a label itself.
//!
//! The `tokenmeter_*` self-metrics are in [`self_metrics`].
//!
//! Owns: the list of families and their points. Must not: format anything (text, protobuf),
//! or read shared state itself (the caller builds the [`View`] from snapshots).

use std::collections::BTreeMap;

use crate::aggregate::{
    invalid_field_names, Histogram, PairSnapshot, SeriesSnapshot, Snapshot, DURATION_BUCKETS,
};
use crate::parse::StatusClass;
use crate::source::{FileStatus, RegistrySummary};

mod self_metrics;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic, cumulative. The name given here has no `_total`: each formatter adds it the
    /// way its format wants (OpenMetrics after the family name, OTLP in the metric name).
    Counter,
    Gauge,
    Histogram,
}

/// A point's value.
#[derive(Clone, Copy, Debug)]
pub enum Value<'a> {
    Int(u64),
    Gauge(i64),
    /// An amount of money in units of 10^-12 currency (docs/spend.md): each formatter writes it
    /// as a decimal (exactly where the format allows, else as a double).
    Cost(u128),
    Histogram(&'a Histogram),
}

/// The label pairs of one point.
pub type Labels<'a> = Vec<(&'a str, &'a str)>;

/// One point: its labels, value, and the start of its series (ns since the epoch; 0 where
/// the series has no start of its own and the agent's start time applies).
pub struct Point<'a> {
    pub labels: Labels<'a>,
    pub value: Value<'a>,
    pub start_ns: i64,
}

/// Hands out the points of one family.
type Points = Box<dyn for<'v> Fn(&'v View<'v>, &mut dyn FnMut(Point<'v>)) + Send + Sync>;

/// How a per-series token family reads one series: `f` gets each point's own label (the one
/// after the series' labels and `metrics.labels`: `status_class`, `currency`, or none) and
/// its value; the second argument is the snapshot's currency. It reads the series' counters,
/// never its labels (backfill hands it counters alone). A series' labels are the same at every
/// step, so backfill formats a series' steps through this alone, without building label sets
/// per point.
pub type SeriesRead = std::sync::Arc<
    dyn for<'c> Fn(
            &SeriesSnapshot,
            Option<&'c str>,
            &mut dyn FnMut(Option<(&'static str, &'c str)>, Value<'static>),
        ) + Send
        + Sync,
>;

pub struct Family {
    pub name: String,
    pub help: &'static str,
    /// The OTLP unit (UCUM, with `{...}` annotations for counted things).
    pub unit: &'static str,
    pub kind: Kind,
    /// The label names of its points, in order (`metrics.labels` follow on token families).
    pub labels: &'static [&'static str],
    /// A token family (`metrics.prefix`), as opposed to a `tokenmeter_*` self-metric.
    pub token: bool,
    /// For the families with one or more points per series (labels `model`, `api_key_id`,
    /// `service_id`, `metrics.labels`, then their own): how they read a series. Their
    /// `points` are made from it.
    pub series: Option<SeriesRead>,
    /// For an extra token family, the index of its type in the extra names: its `series`
    /// reads nothing while a series' count of that type is 0, so a reader holding series
    /// whose counts of it are all 0 may skip the family (backfill does, per window).
    pub extra_index: Option<usize>,
    points: Points,
}

impl Family {
    /// Calls `f` for every point of this family in `view`.
    pub fn points<'v>(&self, view: &'v View<'v>, f: &mut dyn FnMut(Point<'v>)) {
        (self.points)(view, f)
    }

    /// The exposition name: counters end in `_total`.
    pub fn full_name(&self) -> String {
        match self.kind {
            Kind::Counter => format!("{}_total", self.name),
            _ => self.name.clone(),
        }
    }
}

/// The agent's own state, for the self-metrics (absent in backfill).
#[derive(Clone, Debug, Default)]
pub struct AgentView {
    pub files: std::sync::Arc<Vec<FileStatus>>,
    pub registry: RegistrySummary,
    /// OTLP pushes by outcome: success, rejected, failed.
    pub otlp: [u64; 3],
    /// State writes: success, failure.
    pub checkpoints: [u64; 2],
    /// `pricing.file` reloads: applied, refused; `None` while `pricing.file` is not set.
    pub pricing_reloads: Option<[u64; 2]>,
    /// `owners.file` reloads: applied, refused; `None` while `owners.file` is not set.
    pub owners_reloads: Option<[u64; 2]>,
    pub loki: Option<LokiView>,
}

/// The Loki forwarder's counters.
#[derive(Clone, Debug, Default)]
pub struct LokiView {
    pub entries_sent: u64,
    pub entries_rejected: u64,
    pub bytes_sent: u64,
    pub retries: u64,
    pub lines_truncated: u64,
    pub redaction_failures: u64,
    pub lost_bytes: BTreeMap<String, u64>,
    /// Undelivered bytes per path (summed over identities sharing a path).
    pub lag: BTreeMap<String, u64>,
}

/// What the points are read from.
pub struct View<'a> {
    pub snap: &'a Snapshot,
    /// `metrics.labels`: on every token point.
    pub static_labels: Vec<(&'a str, &'a str)>,
    pub agent: Option<&'a AgentView>,
    /// The configured budgets (docs/spend.md), as gauges on a live agent (none in backfill).
    pub budgets: &'a [BudgetView],
    /// Label values of `tokenmeter_invalid_fields`, in the order of the snapshot's counts.
    invalid_names: Vec<String>,
    /// Label values of `tokenmeter_pricing_child_exceeds_parent`: the token types.
    type_names: Vec<String>,
    /// The owners file's budgets (docs/owners.md), as the snapshot brought them.
    owner_budgets: Vec<BudgetView>,
}

/// One `[[budgets]]` entry as its gauges show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetView {
    /// Empty for a team's budget.
    pub api_key_id: String,
    /// docs/owners.md: empty for a key's budget.
    pub team: String,
    pub window: String,
    pub tokens: Option<u64>,
    /// In units of 10^-12 of the pricing currency.
    pub cost_units: Option<u128>,
}

/// The configured budgets as their gauges show them.
pub fn budget_views(budgets: &[crate::pricing::Budget]) -> Vec<BudgetView> {
    budgets
        .iter()
        .map(|b| BudgetView {
            api_key_id: b.api_key_id.clone(),
            team: b.team.clone(),
            window: b.window.clone(),
            tokens: b.tokens,
            cost_units: crate::pricing::budget_cost_units(b),
        })
        .collect()
}

/// The token types of docs/spend.md in their index order: input, output, total, then the extras.
pub fn token_type_names(extra_names: &[String]) -> Vec<String> {
    let mut v = vec!["input".to_string(), "output".into(), "total".into()];
    v.extend(extra_names.iter().cloned());
    v
}

impl<'a> View<'a> {
    /// This view with the budgets' gauges.
    pub fn with_budgets(mut self, budgets: &'a [BudgetView]) -> Self {
        self.budgets = budgets;
        self
    }

    pub fn new(
        snap: &'a Snapshot,
        static_labels: &'a BTreeMap<String, String>,
        agent: Option<&'a AgentView>,
    ) -> Self {
        View {
            snap,
            static_labels: static_labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            agent,
            budgets: &[],
            invalid_names: invalid_field_names(&snap.extra_names),
            type_names: token_type_names(&snap.extra_names),
            owner_budgets: budget_views(&snap.owner_budgets),
        }
    }

    /// The team label (docs/owners.md) of a series or pair whose team is `team`: only while
    /// owners are configured, and never for the empty team (a series counted without owners).
    fn team_label<'v>(&'v self, team: &'v str) -> Option<(&'v str, &'v str)> {
        let name = self.snap.team_label.as_deref()?;
        (!team.is_empty()).then_some((name, team))
    }

    /// Every budget: the config's, then the owners file's.
    fn all_budgets(&self) -> impl Iterator<Item = &BudgetView> {
        self.budgets.iter().chain(&self.owner_budgets)
    }
}

fn series_labels<'v>(v: &'v View<'v>, x: &'v SeriesSnapshot) -> Labels<'v> {
    let mut l = vec![
        ("model", x.model.as_str()),
        ("api_key_id", x.api_key_id.as_str()),
        ("service_id", x.service_id.as_str()),
    ];
    l.extend(v.team_label(&x.team));
    l.extend(v.static_labels.iter().copied());
    l
}

/// A budget's owner label: `api_key_id`, or the team label for a team's budget.
fn budget_owner<'v>(v: &'v View<'v>, b: &'v BudgetView) -> (&'v str, &'v str) {
    if b.team.is_empty() {
        ("api_key_id", b.api_key_id.as_str())
    } else {
        (
            v.snap.team_label.as_deref().unwrap_or("team"),
            b.team.as_str(),
        )
    }
}

/// A per-series token counter: its points are the series' labels, `metrics.labels`, then the
/// label `read` gives (if any), with `read`'s values.
fn token(
    name: String,
    help: &'static str,
    unit: &'static str,
    labels: &'static [&'static str],
    read: SeriesRead,
) -> Family {
    let each = read.clone();
    Family {
        name,
        help,
        unit,
        kind: Kind::Counter,
        labels,
        token: true,
        series: Some(read),
        extra_index: None,
        points: Box::new(move |v, f| {
            let currency = v.snap.currency.as_deref();
            for x in &v.snap.series {
                each(x, currency, &mut |own, value| {
                    let mut labels = series_labels(v, x);
                    labels.extend(own);
                    f(Point {
                        labels,
                        value,
                        start_ns: x.start_ns,
                    })
                });
            }
        }),
    }
}

/// Builds a [`SeriesRead`] (the closure's signature is inferred from the bound).
fn read(
    f: impl for<'c> Fn(
            &SeriesSnapshot,
            Option<&'c str>,
            &mut dyn FnMut(Option<(&'static str, &'c str)>, Value<'static>),
        ) + Send
        + Sync
        + 'static,
) -> SeriesRead {
    std::sync::Arc::new(f)
}

/// A token counter with one point per series: `count` of it.
fn per_series(name: String, help: &'static str, count: fn(&SeriesSnapshot) -> u64) -> Family {
    const LABELS: &[&str] = &["model", "api_key_id", "service_id"];
    token(
        name,
        help,
        "{token}",
        LABELS,
        read(move |x, _, f| f(None, Value::Int(count(x)))),
    )
}

/// A self-metric's points: labels and value (its series start at the agent's start).
type AgentPoints =
    Box<dyn for<'v> Fn(&'v View<'v>, &mut dyn FnMut(Labels<'v>, Value<'v>)) + Send + Sync>;

fn agent_metric(
    name: &str,
    help: &'static str,
    unit: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    points: AgentPoints,
) -> Family {
    Family {
        name: name.to_string(),
        help,
        unit,
        kind,
        labels,
        token: false,
        series: None,
        extra_index: None,
        points: Box::new(move |v, f| {
            points(v, &mut |labels, value| {
                f(Point {
                    labels,
                    value,
                    start_ns: 0,
                })
            })
        }),
    }
}

/// Every family, in exposition order: the token counters of `prefix` (with one family per
/// extra token field), the duration histogram, then the self-metrics.
pub fn families(prefix: &str, extra_names: &[String]) -> Vec<Family> {
    let p = prefix;
    let mut out = vec![
        token(
            format!("{p}_requests"),
            "LLM requests by status class.",
            "{request}",
            &["model", "api_key_id", "service_id", "status_class"],
            read(|x, _, f| {
                for class in StatusClass::ALL {
                    let n = x.requests[class as usize];
                    if n > 0 {
                        f(Some(("status_class", class.as_str())), Value::Int(n));
                    }
                }
            }),
        ),
        per_series(format!("{p}_input_tokens"), "Input (prompt) tokens.", |x| {
            x.input_tokens
        }),
        per_series(
            format!("{p}_output_tokens"),
            "Output (completion) tokens.",
            |x| x.output_tokens,
        ),
        per_series(format!("{p}_tokens"), "Total tokens.", |x| x.total_tokens),
    ];
    for (i, name) in extra_names.iter().enumerate() {
        let mut family = token(
            format!("{p}_{name}_tokens"),
            "Extra token field.",
            "{token}",
            &["model", "api_key_id", "service_id"],
            read(move |x, _, f| {
                // A series of an extra type appears with its first non-zero value: the types
                // a gateway does not log cost nothing.
                let n = x.extra_tokens.get(i).copied().unwrap_or(0);
                if n > 0 {
                    f(None, Value::Int(n));
                }
            }),
        );
        family.extra_index = Some(i);
        out.push(family);
    }
    out.extend(spend_families(p));
    out.push(Family {
        name: format!("{p}_request_duration_seconds"),
        help: "Duration of LLM requests.",
        unit: "s",
        kind: Kind::Histogram,
        labels: &["model", "service_id", "status_class"],
        token: true,
        series: None,
        extra_index: None,
        points: Box::new(|v, f| {
            for h in &v.snap.durations {
                let mut l = vec![
                    ("model", h.model.as_str()),
                    ("service_id", h.service_id.as_str()),
                    ("status_class", h.status_class.as_str()),
                ];
                l.extend(v.static_labels.iter().copied());
                f(Point {
                    labels: l,
                    value: Value::Histogram(&h.histogram),
                    start_ns: 0,
                });
            }
        }),
    });
    out.extend(self_metrics::self_metrics());
    out
}

/// A per-(model, service_id, team) counter's points: `read` gives the value and the start of
/// its series, and whether it has a point at all.
fn per_pair(read: fn(&PairSnapshot) -> (u64, i64, bool)) -> Points {
    Box::new(move |v, f| {
        for x in &v.snap.pairs {
            let (n, start_ns, shown) = read(x);
            if !shown {
                continue;
            }
            let mut l = vec![
                ("model", x.model.as_str()),
                ("service_id", x.service_id.as_str()),
            ];
            l.extend(v.team_label(&x.team));
            l.extend(v.static_labels.iter().copied());
            f(Point {
                labels: l,
                value: Value::Int(n),
                start_ns,
            });
        }
    })
}

/// docs/spend.md: cost per series, unpriced and unmetered requests per (model, service_id), and
/// the budgets. Cost has points only while pricing is on (the snapshot has a currency).
fn spend_families(p: &str) -> Vec<Family> {
    let pair_family =
        |name: String, help, unit, read: fn(&PairSnapshot) -> (u64, i64, bool)| Family {
            name,
            help,
            unit,
            kind: Kind::Counter,
            labels: &["model", "service_id"],
            token: true,
            series: None,
            extra_index: None,
            points: per_pair(read),
        };
    vec![
        token(
            format!("{p}_cost"),
            "Cost of the requests at the prices in force at their event time (docs/spend.md).",
            "{cost}",
            &["model", "api_key_id", "service_id", "currency"],
            read(|x, currency, f| {
                if let Some(currency) = currency {
                    f(Some(("currency", currency)), Value::Cost(x.cost_units));
                }
            }),
        ),
        pair_family(
            format!("{p}_unpriced_requests"),
            "Requests with tokens that no price entry (or only part of one) prices.",
            "{request}",
            |x| (x.unpriced, x.unpriced_start_ns, x.unpriced > 0),
        ),
        // Beside the requests: from the same records, so it starts with them (and may be 0).
        pair_family(
            format!("{p}_unpriced_tokens"),
            "Tokens (the total) of the requests that no price entry (or only part of one) prices.",
            "{token}",
            |x| (x.unpriced_tokens, x.unpriced_start_ns, x.unpriced > 0),
        ),
        pair_family(
            format!("{p}_unmetered_requests"),
            "2xx requests without any valid token count (e.g. the gateway wrote null).",
            "{request}",
            |x| (x.unmetered, x.unmetered_start_ns, x.unmetered > 0),
        ),
        Family {
            name: format!("{p}_budget_tokens"),
            help: "Token budget of an API key over a rolling window (\"*\": the default).",
            unit: "{token}",
            kind: Kind::Gauge,
            labels: &["api_key_id", "window"],
            token: true,
            series: None,
            extra_index: None,
            points: Box::new(|v, f| {
                for b in v.all_budgets() {
                    if let Some(t) = b.tokens {
                        let mut l = vec![budget_owner(v, b), ("window", b.window.as_str())];
                        l.extend(v.static_labels.iter().copied());
                        f(Point {
                            labels: l,
                            value: Value::Gauge(gauge(t)),
                            start_ns: 0,
                        });
                    }
                }
            }),
        },
        Family {
            name: format!("{p}_budget_cost"),
            help: "Cost budget of an API key over a rolling window (\"*\": the default).",
            unit: "{cost}",
            kind: Kind::Gauge,
            labels: &["api_key_id", "window", "currency"],
            token: true,
            series: None,
            extra_index: None,
            points: Box::new(|v, f| {
                let Some(currency) = v.snap.currency.as_deref() else {
                    return;
                };
                for b in v.all_budgets() {
                    if let Some(c) = b.cost_units {
                        let mut l = vec![
                            budget_owner(v, b),
                            ("window", b.window.as_str()),
                            ("currency", currency),
                        ];
                        l.extend(v.static_labels.iter().copied());
                        f(Point {
                            labels: l,
                            value: Value::Cost(c),
                            start_ns: 0,
                        });
                    }
                }
            }),
        },
    ]
}

/// A count as a gauge value (saturating).
fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Per-bucket (not cumulative) counts with their upper bounds, the last one `+Inf`: what
/// `prometheus-client` takes (it sums them up into the cumulative `le` buckets itself).
pub fn bucket_counts(h: &Histogram) -> Vec<(f64, u64)> {
    DURATION_BUCKETS
        .iter()
        .copied()
        .chain([f64::INFINITY])
        .zip(h.buckets)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `llm_*` and `tokenmeter_*` names in `text`: a name starts where no name character, `:`
    /// or `/` comes before it (`api_key_id:llm_tokens:increase1h` is a rule, not a family), runs
    /// over `[a-z0-9_<>]` (`llm_<extra>_tokens_total`), and one ending in `_` is a pattern such
    /// as `tokenmeter_*`, not a name.
    fn metric_names_in(text: &str) -> Vec<String> {
        let is_name = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_<>".contains(c);
        let mut out = Vec::new();
        for prefix in ["llm_", "tokenmeter_"] {
            for (at, _) in text.match_indices(prefix) {
                let before = text[..at].chars().next_back();
                if before
                    .is_some_and(|c| is_name(c) || c.is_ascii_alphanumeric() || ":/.-".contains(c))
                {
                    continue;
                }
                let name: String = text[at..].chars().take_while(|&c| is_name(c)).collect();
                if !name.ends_with('_') {
                    out.push(name);
                }
            }
        }
        out
    }

    /// docs/metrics.md is the metric reference and cannot go stale: it has a row
    /// `| `<family>` | <its labels> |` for every family of the schema (default prefix, the
    /// built-in extra token types and the `<extra>` placeholder), and every `llm_*` or
    /// `tokenmeter_*` name on the page is a family (or a histogram's series) of the schema.
    #[test]
    fn docs_metrics_md_lists_every_family_with_its_labels_and_names_no_other() {
        let doc = include_str!("../docs/metrics.md");
        let mut extra: Vec<String> = crate::config::DEFAULT_EXTRA_TOKENS
            .iter()
            .map(|s| s.to_string())
            .collect();
        extra.push("<extra>".to_string());
        let mut known = std::collections::BTreeSet::new();
        for f in families("llm", &extra) {
            let name = f.full_name();
            let labels = if f.labels.is_empty() {
                "—".to_string()
            } else {
                let quoted: Vec<String> = f.labels.iter().map(|l| format!("`{l}`")).collect();
                quoted.join(", ")
            };
            let row = format!("| `{name}` | {labels} |");
            assert!(
                doc.lines().any(|l| l.starts_with(&row)),
                "docs/metrics.md has no row starting {row:?}: add the family, or correct its labels"
            );
            if f.kind == Kind::Histogram {
                for suffix in ["_bucket", "_sum", "_count"] {
                    known.insert(format!("{name}{suffix}"));
                }
            }
            known.insert(name);
        }
        let named = metric_names_in(doc);
        assert!(
            named.len() >= known.len(),
            "the scan found too few names: {named:?}"
        );
        for name in named {
            assert!(
                known.contains(&name),
                "docs/metrics.md names `{name}`, which is no family of src/schema.rs"
            );
        }
    }

    #[test]
    fn metric_names_in_skips_rules_patterns_and_paths() {
        let names = metric_names_in(
            "`llm_tokens_total{model}`, api_key_id:llm_tokens:increase1h, `tokenmeter_*`, \
             llm_<extra>_tokens_total, config/tokenmeter_x, xllm_y, tokenmeter_series.",
        );
        assert_eq!(
            names,
            [
                "llm_tokens_total",
                "llm_<extra>_tokens_total",
                "tokenmeter_series"
            ]
        );
    }

    #[test]
    fn names_are_unique_and_counters_end_in_total_once() {
        let fams = families("llm", &["reasoning".to_string()]);
        let mut names: Vec<String> = fams.iter().map(Family::full_name).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
        for f in &fams {
            assert!(!f.name.ends_with("_total"), "{}", f.name);
            assert!(f.token == f.name.starts_with("llm_"), "{}", f.name);
        }
    }
}
