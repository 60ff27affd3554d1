//! Exports: where counters leave the node. Each exporter reads the aggregation store's
//! snapshots (never its internals) and never changes counting.

pub mod http;
pub mod loki;
pub mod otlp;
