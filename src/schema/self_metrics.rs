//! The self-metrics of docs/metrics.md ("The agent's own metrics"): every `tokenmeter_*`
//! family, read from the [`AgentView`] of a live agent (absent in backfill).
//!
//! Owns: the `tokenmeter_*` families' names, help, units, labels and points. Must not: define
//! a token family (that is the parent's) or format anything.

use std::collections::BTreeMap;

use super::{agent_metric, gauge, AgentView, Family, Kind, Labels, LokiView, Value, View};
use crate::aggregate::{SkipReason, OVERFLOW_LABELS};
use crate::source::{ErrorReason, FileStatus, FATE_NAMES};

/// Runs `f` with the agent view, when there is one.
fn with_agent<'v>(v: &'v View<'v>, f: impl FnOnce(&'v AgentView)) {
    if let Some(a) = v.agent {
        f(a)
    }
}

/// The `tokenmeter_*` families, in exposition order.
pub(super) fn self_metrics() -> Vec<Family> {
    use Kind::{Counter, Gauge};
    vec![
        agent_metric(
            "tokenmeter_lines",
            "Logical lines read, by result (records also by the format they were read with).",
            "{line}",
            Counter,
            &["result", "format"],
            Box::new(|v, f| {
                let st = &v.snap.stats;
                for format in crate::parse::format::Format::ALL {
                    f(
                        vec![("result", "record"), ("format", format.name())],
                        Value::Int(st.records_by_format[format as usize]),
                    );
                }
                for r in SkipReason::ALL {
                    f(vec![("result", r.as_str())], Value::Int(st.skipped[r as usize]));
                }
            }),
        ),
        agent_scalar(
            "tokenmeter_bytes_read",
            "Bytes read from log files.",
            "By",
            Counter,
            |a| a.registry.bytes_read,
        ),
        agent_scalar(
            "tokenmeter_files_watched",
            "Files being tailed (reading or draining).",
            "{file}",
            Gauge,
            |a| a.registry.by_state[0] + a.registry.by_state[1],
        ),
        agent_metric(
            "tokenmeter_files",
            "Known files by state: reading, draining (left the globs, read to its end), idle (closed to save descriptors), waiting (unread bytes, no descriptor yet), remembered (let go; identity and offset kept).",
            "{file}",
            Gauge,
            &["state"],
            Box::new(|v, f| {
                with_agent(v, |a| {
                    for (s, n) in FATE_NAMES.iter().zip(a.registry.by_state) {
                        f(vec![("state", *s)], Value::Gauge(gauge(n)));
                    }
                })
            }),
        ),
        agent_scalar(
            "tokenmeter_files_unreadable",
            "Files, paths and directories whose last stat, open, read or listing failed.",
            "{file}",
            Gauge,
            |a| a.registry.unreadable,
        ),
        agent_metric(
            "tokenmeter_file_errors",
            "Failed file operations (listing, stat, open, read), by reason: permission, descriptors, io, other.",
            "{error}",
            Counter,
            &["reason"],
            Box::new(|v, f| {
                with_agent(v, |a| {
                    for (r, n) in ErrorReason::ALL.iter().zip(a.registry.errors) {
                        f(vec![("reason", r.as_str())], Value::Int(n));
                    }
                })
            }),
        ),
        agent_scalar(
            "tokenmeter_open_files",
            "Descriptors of log files held (by the reader and the Loki forwarder).",
            "{file}",
            Gauge,
            |a| a.registry.open_descriptors,
        ),
        agent_scalar(
            "tokenmeter_open_files_limit",
            "Most log files held open at once (source.max_open_files, resolved).",
            "{file}",
            Gauge,
            |a| a.registry.max_open_files,
        ),
        agent_metric(
            "tokenmeter_file_lag_bytes",
            "Bytes of a file not counted yet.",
            "By",
            Gauge,
            &["path", "namespace", "pod", "container"],
            Box::new(|v, f| with_agent(v, |a| file_lag(a, f))),
        ),
        agent_metric(
            "tokenmeter_exports",
            "Export attempts by exporter and outcome.",
            "{request}",
            Counter,
            &["exporter", "outcome"],
            Box::new(|v, f| {
                with_agent(v, |a| {
                    for (outcome, n) in ["success", "rejected", "failed"].iter().zip(a.otlp) {
                        f(
                            vec![("exporter", "otlp"), ("outcome", *outcome)],
                            Value::Int(n),
                        );
                    }
                })
            }),
        ),
        agent_metric(
            "tokenmeter_series",
            "Token series in the store.",
            "{series}",
            Gauge,
            &[],
            Box::new(|v, f| f(vec![], Value::Gauge(gauge(v.snap.series.len() as u64)))),
        ),
        agent_metric(
            "tokenmeter_loki_entries",
            "Log entries forwarded to Loki, by outcome.",
            "{entry}",
            Counter,
            &["outcome"],
            Box::new(|v, f| {
                with_loki(v, |l| {
                    f(vec![("outcome", "sent")], Value::Int(l.entries_sent));
                    f(vec![("outcome", "rejected")], Value::Int(l.entries_rejected));
                })
            }),
        ),
        loki_counter(
            "tokenmeter_loki_bytes",
            "Request bytes accepted by Loki (compressed).",
            "By",
            |l| l.bytes_sent,
        ),
        loki_counter(
            "tokenmeter_loki_retries",
            "Loki push attempts that will be retried.",
            "{request}",
            |l| l.retries,
        ),
        agent_metric(
            "tokenmeter_loki_dropped",
            "Entries dropped, by reason (rejected: Loki answered 4xx; Loki stored the valid ones).",
            "{entry}",
            Counter,
            &["reason"],
            Box::new(|v, f| {
                with_loki(v, |l| {
                    f(vec![("reason", "rejected")], Value::Int(l.entries_rejected))
                })
            }),
        ),
        loki_counter(
            "tokenmeter_loki_truncated_lines",
            "Lines cut to loki.max_line_bytes.",
            "{line}",
            |l| l.lines_truncated,
        ),
        loki_counter(
            "tokenmeter_loki_redaction_failures",
            "Lines sent as a placeholder because loki.redact could not be applied with certainty.",
            "{line}",
            |l| l.redaction_failures,
        ),
        agent_metric(
            "tokenmeter_loki_lost_bytes",
            "Bytes that could not be forwarded (file gone or truncated first), by file.",
            "By",
            Counter,
            &["path"],
            Box::new(|v, f| {
                with_loki(v, |l| {
                    for (p, n) in &l.lost_bytes {
                        f(vec![("path", p.as_str())], Value::Int(*n));
                    }
                })
            }),
        ),
        agent_metric(
            "tokenmeter_loki_lag_bytes",
            "Bytes of a file not yet delivered to Loki.",
            "By",
            Gauge,
            &["path"],
            Box::new(|v, f| {
                with_loki(v, |l| {
                    for (p, n) in &l.lag {
                        f(vec![("path", p.as_str())], Value::Gauge(gauge(*n)));
                    }
                })
            }),
        ),
        agent_metric(
            "tokenmeter_overflow",
            "Records whose label was folded into __overflow__.",
            "{record}",
            Counter,
            &["label"],
            Box::new(|v, f| {
                for (l, n) in OVERFLOW_LABELS.iter().zip(v.snap.stats.overflows) {
                    f(vec![("label", *l)], Value::Int(n));
                }
                // The team's (docs/owners.md) only while owners are configured.
                if let Some(name) = v.snap.team_label.as_deref() {
                    f(vec![("label", name)], Value::Int(v.snap.stats.team_overflows));
                }
            }),
        ),
        agent_metric(
            "tokenmeter_invalid_fields",
            "Token fields with an invalid value.",
            "{field}",
            Counter,
            &["field"],
            Box::new(|v, f| {
                for (name, n) in v.invalid_names.iter().zip(&v.snap.stats.invalid_fields) {
                    f(vec![("field", name.as_str())], Value::Int(*n));
                }
            }),
        ),
        agent_metric(
            "tokenmeter_pricing_reloads",
            "Changes of pricing.file: applied, or refused (the prices in force stayed).",
            "{reload}",
            Counter,
            &["outcome"],
            Box::new(|v, f| {
                // Both outcomes from 0 while the file is set, so that the first refusal is an
                // increase an alert sees.
                with_agent(v, |a| {
                    if let Some([applied, refused]) = a.pricing_reloads {
                        f(vec![("outcome", "success")], Value::Int(applied));
                        f(vec![("outcome", "failure")], Value::Int(refused));
                    }
                })
            }),
        ),
        agent_metric(
            "tokenmeter_owners_reloads",
            "Changes of owners.file: applied, or refused (the owners in force stayed).",
            "{reload}",
            Counter,
            &["outcome"],
            Box::new(|v, f| {
                // Both outcomes from 0 while the file is set, so that the first refusal is an
                // increase an alert sees.
                with_agent(v, |a| {
                    if let Some([applied, refused]) = a.owners_reloads {
                        f(vec![("outcome", "success")], Value::Int(applied));
                        f(vec![("outcome", "failure")], Value::Int(refused));
                    }
                })
            }),
        ),
        agent_metric(
            "tokenmeter_pricing_child_exceeds_parent",
            "Records whose count of a token type was above its nearest priced ancestor's.",
            "{record}",
            Counter,
            &["type"],
            Box::new(|v, f| {
                for (name, n) in v.type_names.iter().zip(&v.snap.stats.child_exceeds) {
                    f(vec![("type", name.as_str())], Value::Int(*n));
                }
            }),
        ),
        agent_metric(
            "tokenmeter_total_mismatch",
            "Records whose total differs from input + output.",
            "{record}",
            Counter,
            &[],
            Box::new(|v, f| f(vec![], Value::Int(v.snap.stats.total_mismatches))),
        ),
        agent_metric(
            "tokenmeter_checkpoint_writes",
            "State file writes by outcome.",
            "{write}",
            Counter,
            &["outcome"],
            Box::new(|v, f| {
                with_agent(v, |a| {
                    f(vec![("outcome", "success")], Value::Int(a.checkpoints[0]));
                    f(vec![("outcome", "failure")], Value::Int(a.checkpoints[1]));
                })
            }),
        ),
        agent_metric(
            "tokenmeter_build_info",
            "Build information.",
            "1",
            Gauge,
            &["version"],
            Box::new(|v, f| {
                with_agent(v, |_| {
                    f(vec![("version", env!("CARGO_PKG_VERSION"))], Value::Gauge(1))
                })
            }),
        ),
    ]
}

/// A self-metric with one unlabelled point read from the agent view.
fn agent_scalar(
    name: &str,
    help: &'static str,
    unit: &'static str,
    kind: Kind,
    read: fn(&AgentView) -> u64,
) -> Family {
    agent_metric(
        name,
        help,
        unit,
        kind,
        &[],
        Box::new(move |v, f| {
            with_agent(v, |a| {
                let n = read(a);
                f(
                    vec![],
                    match kind {
                        Kind::Gauge => Value::Gauge(gauge(n)),
                        _ => Value::Int(n),
                    },
                )
            })
        }),
    )
}

/// A Loki counter with one unlabelled point (absent without the forwarder).
fn loki_counter(
    name: &str,
    help: &'static str,
    unit: &'static str,
    read: fn(&LokiView) -> u64,
) -> Family {
    agent_metric(
        name,
        help,
        unit,
        Kind::Counter,
        &[],
        Box::new(move |v, f| with_loki(v, |l| f(vec![], Value::Int(read(l))))),
    )
}

fn with_loki<'v>(v: &'v View<'v>, f: impl FnOnce(&'v LokiView)) {
    if let Some(l) = v.agent.and_then(|a| a.loki.as_ref()) {
        f(l)
    }
}

/// One series per path (a remembered identity and a new file can share a path: their lags
/// are summed); remembered files are left out (nothing to read).
fn file_lag<'v>(a: &'v AgentView, f: &mut dyn FnMut(Labels<'v>, Value<'v>)) {
    let mut by_path: BTreeMap<&std::path::Path, (&FileStatus, u64)> = BTreeMap::new();
    for s in a
        .files
        .iter()
        .filter(|s| s.id.is_some() && s.state != "remembered")
    {
        let slot = by_path.entry(&s.path).or_insert((s, 0));
        slot.1 = slot.1.saturating_add(s.lag_bytes());
    }
    for (path, (s, lag)) in by_path {
        let Some(path) = path.to_str() else { continue };
        let mut l = vec![("path", path)];
        if let Some(pl) = &s.labels {
            l.push(("namespace", pl.namespace.as_str()));
            l.push(("pod", pl.pod.as_str()));
            l.push(("container", pl.container.as_str()));
        }
        f(l, Value::Gauge(gauge(lag)));
    }
}

#[cfg(test)]
mod tests {
    use super::super::families;
    use super::*;
    use crate::aggregate::Store;
    use crate::config::Config;

    /// The points of family `name` in `view`: (labels, value).
    fn points_of(view: &View<'_>, name: &str) -> Vec<(Vec<(String, String)>, u64)> {
        let family = families("llm", &[])
            .into_iter()
            .find(|f| f.full_name() == name)
            .unwrap_or_else(|| panic!("no family {name}"));
        let mut out = Vec::new();
        family.points(view, &mut |p| {
            let labels = p.labels.iter().map(|(k, v)| (k.to_string(), v.to_string()));
            let Value::Int(n) = p.value else {
                panic!("{name} is a counter")
            };
            out.push((labels.collect(), n));
        });
        out
    }

    fn outcomes(success: u64, failure: u64) -> Vec<(Vec<(String, String)>, u64)> {
        let l = |o: &str| vec![("outcome".to_string(), o.to_string())];
        vec![(l("success"), success), (l("failure"), failure)]
    }

    #[test]
    fn reload_counters_are_exported_from_0_while_their_file_is_set_and_absent_otherwise() {
        let snap = Store::new(&Config::default()).snapshot(&[]);
        let labels = BTreeMap::new();
        for name in [
            "tokenmeter_owners_reloads_total",
            "tokenmeter_pricing_reloads_total",
        ] {
            let set = |reloads: Option<[u64; 2]>| AgentView {
                owners_reloads: reloads,
                pricing_reloads: reloads,
                ..AgentView::default()
            };
            // Set, nothing reloaded yet: both outcomes at 0, so a first refusal is an increase.
            let agent = set(Some([0, 0]));
            let view = View::new(&snap, &labels, Some(&agent));
            assert_eq!(points_of(&view, name), outcomes(0, 0), "{name}");
            let agent = set(Some([0, 1]));
            let view = View::new(&snap, &labels, Some(&agent));
            assert_eq!(points_of(&view, name), outcomes(0, 1), "{name}");
            // Not set: no series at all.
            let agent = set(None);
            let view = View::new(&snap, &labels, Some(&agent));
            assert_eq!(points_of(&view, name), Vec::new(), "{name}");
        }
    }
}
