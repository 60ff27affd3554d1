//! Sources: where lines come from. Files are read here (replayed or tailed) and handed
//! on as physical lines with their end offsets.
//!
//! Owns: opening files (plain or gzip by magic bytes), reading bytes, line splitting, offsets.
//! Knows nothing of JSON or envelopes: that starts in `decode`.

pub mod input;
pub mod lines;
pub mod tail;

pub use input::{expand_inputs, open_input, Input, InputError};
pub use lines::{AtEof, Line, LineReader};
pub use tail::{FileHandle, FileMeta, FileStatus, PodLabels, TailOptions, Tailer};
