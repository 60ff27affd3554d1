//! Backfill (docs/backfill.md, `replay --openmetrics` / `--tsdb` / `--push` / `--from` /
//! `--to`): counted records bucketed by `--step` into block windows as they are read, each
//! window's cumulative samples written as OpenMetrics text or TSDB blocks, or pushed as OTLP
//! with historical timestamps.
//!
//! Owns, one room each: `windows` (steps, block windows, `late` / `untimed` / `outside`),
//! `samples` (a series' cumulative values and how they are read through the schema), the
//! three formats (`openmetrics`, `tsdb`, `push`), and `emitter` (where windows go, on a writer
//! thread).
//! Must not: read files or decide their order (`replay` does and hands records in), change
//! counting, or define a metric family or an OTLP envelope of its own (`schema`,
//! `export::otlp` own them, so a backfill looks like what a live agent would have sent).

pub mod emitter;
pub mod openmetrics;
pub mod push;
pub mod samples;
pub mod tsdb;
pub mod windows;

pub use emitter::{Emitted, Emitter, Output, Written};
pub use samples::{Cumulative, SeriesLabels, SeriesSamples};
pub use windows::{Shape, StepStream, Window};
