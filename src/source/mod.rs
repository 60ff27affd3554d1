//! Sources: where lines come from. Files are read here (replayed or tailed) and handed on as
//! physical lines, or, for tailed files, as decoded logical lines with committed offsets.
//!
//! Rooms: `input` (opening a file to replay: plain or gzip), `lines` (splitting bytes into
//! physical lines), `discover` (globs, directory walk, pod labels), `cursor` (file identity,
//! the shared descriptor, one reader's place in a tailed file), `registry` (the one owner of
//! every tailed file's fate). Knows nothing of JSON: the cursor hands the envelope decoder's
//! output on without looking into it.

pub mod cursor;
pub mod discover;
pub mod input;
pub mod lines;
pub mod registry;

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
