//! tokenmeter: meters LLM token usage from Envoy AI Gateway access logs.
//!
//! The pipeline, one module per stage, data flowing one way (`layers` gives the import order
//! and a test keeps it):
//! `source` (files → physical lines) → `decode` (envelopes, partials) → `parse` (a borrowed
//! record) → `aggregate` (counters) → exports. `pipeline` chains the stages for one line;
//! `replay` drives them over whole files, handing records to `backfill` (step windows written as
//! OpenMetrics or pushed as OTLP); `cli` is wiring only.
//!
//! The daemon side: `source::registry` owns every tailed file's fate, `forwarder` forwards the
//! same files to Loki (fed by the registry's events), `health` holds the handles the server
//! reads, `shutdown` the one deadline, `daemon` wires them, `server` exposes them.

pub mod aggregate;
pub mod backfill;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod decode;
pub mod endpoint;
pub mod export;
pub mod forwarder;
pub mod health;
pub mod json;
pub mod layers;
pub mod owners;
pub mod parse;
pub mod pipeline;
pub mod pricing;
pub mod ratelog;
pub mod replay;
pub mod schema;
pub mod server;
pub mod shutdown;
pub mod source;
pub mod state;
pub mod timefmt;
pub mod tsdb;
