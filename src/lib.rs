//! tokenmeter: meters LLM token usage from Envoy AI Gateway access logs.
//!
//! The pipeline, one module per stage, data flowing one way:
//! `source` (files → physical lines) → `decode` (envelopes, partials) → `parse` (a borrowed
//! record) → `aggregate` (counters) → exports. `pipeline` chains the stages for one line;
//! `replay` drives them over whole files; `cli` is wiring only.

pub mod aggregate;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod decode;
pub mod export;
pub mod json;
pub mod parse;
pub mod pipeline;
pub mod ratelog;
pub mod replay;
pub mod server;
pub mod source;
pub mod state;
pub mod timefmt;
