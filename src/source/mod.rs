//! Sources: where lines come from. Files are read here (replayed or tailed) and handed on as
//! physical lines, or, for tailed files, as decoded logical lines with committed offsets.
//!
//! Rooms: `input` (opening a file to replay: plain or gzip), `lines` (splitting bytes into
//! physical lines), `discover` (globs, directory walk, pod labels), `cursor` (file identity,
//! the shared descriptor, one reader's place in a tailed file), `reopen` (the one rule for
//! opening a closed file again by identity, shared by the registry and the Loki forwarder),
//! `file_error` (errors by reason, kept with the path, warned about at a rate), `registry` (the
//! one owner of every tailed file's fate). Knows nothing of JSON: the cursor hands the
//! envelope decoder's output on without looking into it.

pub mod cursor;
pub mod discover;
pub mod file_error;
pub mod input;
pub mod lines;
pub mod registry;
pub mod reopen;

pub use cursor::{
    fingerprint, DescriptorCount, FileId, FileIdentity, SharedFile, TailCursor, Truncation,
};
pub use discover::{DirItem, FileSystem, PodLabels, RealFs};
pub use input::{expand_inputs, open_input, Input, InputError};
pub use lines::{AtEof, Line, LineReader};
pub use registry::{
    ErrorReason, FileEvent, FileMeta, FilePosition, FileStatus, Registry, RegistryOptions,
    RegistrySummary, StartAt, FATE_NAMES,
};
pub use reopen::{check_open, find_in_dir, reopen, Backoff, Reopened, Verdict};
