//! The integration tests, as one test binary (`cargo test --test it`): one link of the crate
//! instead of one per file, and one `common` module the files share (the daemon spawner, the
//! replay runner, the fixture reader, the real backends). Each file is a module named after
//! what it tests; `cargo test --test it <module>::` runs one of them.

mod common;

mod assets;
mod backfill;
mod daemon;
mod faults;
mod formats;
mod image;
mod invoice;
mod invoice_month;
mod loki;
mod owners;
mod properties;
mod replay_cli;
mod spend;
mod tsdb;
mod tsdb_replay;
