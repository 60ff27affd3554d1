//! The file registry: the one owner of every tailed file's fate.
//!
//! Owns: which files are read, from which offset, with which descriptor, and what is
//! remembered about a file after it is let go. Every file the globs ever matched is an entry
//! keyed by its [`FileId`], with an explicit [`Fate`]:
//!
//! ```text
//!            open ok                    left the globs          read to its end, quiet
//! (new path) ───────► Reading ─────────────────────► Draining ───────────────────────► Remembered
//!     │ cap/error       ▲  │ idle, a descriptor         │ back in the globs                │
//!     ▼                 │  ▼ is needed elsewhere        ▼                                  │
//!  (pending) ─────────► │ Idle ── grew ──► Waiting ─────┘ (Reading)       same identity    │
//!                       └───────── open ok ──┘  ◄──────────────────────── seen again ──────┘
//! ```
//!
//! Invariants:
//! - an identity that has been counted is never forgotten while it may come back: a file
//!   that leaves the globs is remembered (identity + committed offset) for `remember_for`,
//!   and longer while it still exists in its directory; only a deleted file (no links left)
//!   is forgotten at once. Seen again at any path, it continues at its offset. Only a failed
//!   fingerprint or a shrunken size starts it again from 0.
//! - an error is not a deletion: a directory that cannot be listed, or a path whose `stat`
//!   or `open` fails with anything but ENOENT, leaves the entries below it as they are; the
//!   error is counted by reason, shown with the file, and warned about once (rate-limited).
//! - one descriptor per file, shared with other readers through [`SharedFile`], and at most
//!   `max_open_files` descriptors in all (counted whoever holds them): beyond it, idle files
//!   are closed and reopened by identity when they grow; files that cannot get one wait.
//!
//! Reopening a closed file (idle, waiting, remembered) follows the one rule of
//! [`super::reopen`], which the Loki forwarder follows too; errors are kept and counted by
//! [`super::file_error`].
//!
//! Other readers of the same files (the Loki forwarder) learn of them through
//! [`FileEvent`]s; the registry does not know who listens.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use super::cursor::{DescriptorCount, FileId, FileIdentity, SharedFile, TailCursor, Truncation};
use super::discover::{FileSystem, Globs, PodLabels, RealFs, Scan};
use super::file_error::{clear_error, record_error};
pub use super::file_error::{ErrorReason, FileError};
use super::reopen::{find_in_dir, reopen, Backoff, Reopened};
use crate::decode::Decoded;

/// Where a file first seen at start is read from (`source.start_at`): its end (only what is
/// written from now on; the state file's offsets win) or its beginning. A file that appears
/// later is always read from its beginning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    End,
    Beginning,
}

pub struct RegistryOptions {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub start_at: StartAt,
    pub glob_interval: Duration,
    /// Logical line limit (`source.max_line_bytes`).
    pub max_line_bytes: usize,
    /// Most descriptors held for tailed files at once (already resolved from `0` = auto).
    pub max_open_files: usize,
    /// How long a let-go identity is remembered (longer while it still exists).
    pub remember_for: Duration,
    /// How long a file that left the globs stays quiet at its end before it is let go (a
    /// runtime may still write a last line to a renamed file).
    pub let_go_after: Duration,
    /// First delay before a file that failed to open is tried again; it doubles up to 30 s.
    pub retry_first: Duration,
    /// A file with no new lines for this long is no longer read between scans: each scan
    /// wakes it (`fstat` on its descriptor) when its size changed, so thousands of quiet files
    /// cost one `fstat` per scan each instead of a read every 100 ms.
    pub dormant_after: Duration,
}

/// Where a file was when the state was saved (one entry of the state file).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FilePosition {
    /// Last path the file was seen under (informational; identity decides).
    pub path: PathBuf,
    pub identity: FileIdentity,
    /// Offset just past the last line whose counts are in the saved counters.
    pub offset: u64,
    /// When the file was let go (ns since the epoch), for a remembered file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub let_go_ns: Option<i64>,
    /// Never opened yet: the identity is device, inode and birth time only (the fingerprint
    /// is taken at the first open), and reading begins at 0, or (`align`) at the last line
    /// boundary at or before `offset`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unopened: bool,
    /// Present at the very first start with `start_at = "end"` (with `unopened`): `offset` is
    /// its size then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub align: bool,
}

/// What other readers of the tailed files are told.
#[derive(Debug)]
pub enum FileEvent {
    /// The registry opened a descriptor for the file; metering resumes at `committed`.
    Opened {
        identity: FileIdentity,
        path: PathBuf,
        labels: Option<PodLabels>,
        file: SharedFile,
        committed: u64,
    },
    /// The registry dropped its descriptor: idle (`left` = false), or let go after leaving
    /// the globs (`left` = true); `path` is where it is now (for a reader that reopens it).
    Closed {
        id: FileId,
        left: bool,
        path: PathBuf,
    },
    /// The file was truncated or rewritten: it is read again from 0.
    Truncated { id: FileId },
    /// The identity is forgotten: deleted, or remembered long enough.
    Forgotten { id: FileId },
}

/// A file's fate. Exactly one per known identity.
pub enum Fate {
    /// Descriptor held, read on every poll.
    Reading(TailCursor),
    /// Left the globs (renamed away, deleted, replaced): read to its end through its
    /// descriptor, then let go.
    Draining { cursor: TailCursor, since: Instant },
    /// No descriptor, nothing unread when it was closed (closed to free a descriptor).
    /// Reopened by identity when its size changes.
    Idle,
    /// Has unread bytes (or must be checked), no descriptor yet: the ceiling is reached or
    /// opening failed. `left`: it is outside the globs (drain it, then let it go).
    Waiting { left: bool },
    /// Let go, read to its end; identity and offset kept from `since_ns` (wall clock).
    Remembered { since_ns: i64 },
}

impl Fate {
    pub fn name(&self) -> &'static str {
        match self {
            Fate::Reading(_) => "reading",
            Fate::Draining { .. } => "draining",
            Fate::Idle => "idle",
            Fate::Waiting { .. } => "waiting",
            Fate::Remembered { .. } => "remembered",
        }
    }

    fn cursor(&self) -> Option<&TailCursor> {
        match self {
            Fate::Reading(c) | Fate::Draining { cursor: c, .. } => Some(c),
            _ => None,
        }
    }
}

/// The state names, in the order `/status` and the metrics list them.
pub const FATE_NAMES: [&str; 5] = ["reading", "draining", "idle", "waiting", "remembered"];

struct Entry {
    identity: FileIdentity,
    meta: FileMeta,
    /// Every logical line before it is counted.
    committed: u64,
    /// Size last seen.
    size: u64,
    fate: Fate,
    error: Option<FileError>,
    /// When opening it is tried again after a failure.
    retry: Backoff,
    /// Last time lines were read (or the file was opened): idle files close first.
    active: Instant,
    /// Read position and modification time when it was closed idle: the same size and
    /// mtime later mean untouched (a pending partial line does not count as new).
    idle_at: Option<(u64, std::time::SystemTime)>,
    /// Loaded from the state file and not yet found (in the globs or in its directory).
    from_state: bool,
    /// Loaded from the state file as let go (read to its end and remembered), not as a file
    /// still being read or waiting with unread bytes when the state was saved.
    saved_let_go: bool,
    /// Loaded from the state file and not opened (or let go) since: readiness waits for it.
    restored: bool,
    /// Its size changed since the last read: read it even if it is dormant.
    wake: bool,
    /// Never opened yet: where reading will begin (its identity is then only device, inode
    /// and birth time; the fingerprint is taken at the first open).
    first_open: Option<FirstOpen>,
}

/// Where reading begins in a file that was never opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FirstOpen {
    FromStart,
    /// `start_at = "end"` at the very first start: the last line boundary at or before this
    /// size (its size when it was first seen), so lines written after the start are counted
    /// even when the file could only be opened later.
    LineBefore(u64),
}

impl Entry {
    /// The one reaction to a truncation or rewrite of an open file: read it again from 0
    /// under its new identity, and tell the other readers.
    fn restart_truncated(&mut self, id: FileId, t: Truncation, events: &Option<Sender<FileEvent>>) {
        let (Fate::Reading(cursor) | Fate::Draining { cursor, .. }) = &mut self.fate else {
            return;
        };
        tracing::info!(
            "{}: {}; reading from 0",
            self.meta.path.display(),
            match t {
                Truncation::Shrunk { size } =>
                    format!("truncated (size {size} < read {})", cursor.read_to()),
                Truncation::Rewritten => "rewritten (its first bytes changed)".into(),
            }
        );
        cursor.restart(0);
        self.active = Instant::now();
        self.wake = true;
        self.committed = 0;
        if let Ok(identity) = FileIdentity::read(cursor.file().file()) {
            self.identity = identity;
        }
        self.size = cursor.file().size().unwrap_or(0);
        send(events, FileEvent::Truncated { id });
    }
}

/// What the caller learns about the file a line came from.
#[derive(Clone, Debug)]
pub struct FileMeta {
    pub path: PathBuf,
    pub labels: Option<PodLabels>,
}

/// Where one file stands, for `/status` and the lag metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStatus {
    pub path: PathBuf,
    pub labels: Option<PodLabels>,
    /// `None` for a path not opened yet.
    pub id: Option<FileId>,
    /// Committed offset: every line before it is counted.
    pub offset: u64,
    pub size: u64,
    /// One of [`FATE_NAMES`].
    pub state: &'static str,
    /// The last error, while it lasts: (reason, message, failures in a row).
    pub error: Option<(ErrorReason, String, u64)>,
}

impl FileStatus {
    pub fn lag_bytes(&self) -> u64 {
        self.size.saturating_sub(self.offset)
    }
}

/// Counts for the self-metrics, taken with [`Registry::summary`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistrySummary {
    /// Files per state, in [`FATE_NAMES`] order.
    pub by_state: [u64; 5],
    /// Files, paths and directories whose last operation failed.
    pub unreadable: u64,
    /// Errors by reason, in [`ErrorReason::ALL`] order, since start.
    pub errors: [u64; 4],
    pub open_descriptors: u64,
    pub max_open_files: u64,
    pub bytes_read: u64,
    /// Include patterns that matched no file at the last scan.
    pub unmatched_globs: Vec<String>,
}

pub struct Registry {
    fs: Box<dyn FileSystem>,
    globs: Globs,
    opts: RegistryOptions,
    entries: BTreeMap<FileId, Entry>,
    /// Matched paths whose `stat` failed (no identity known): reported, nothing else.
    stat_errors: BTreeMap<PathBuf, FileError>,
    /// Paths skipped because they are not UTF-8 (labels and the state need text), warned once.
    non_utf8: std::collections::HashSet<PathBuf>,
    /// Directories that could not be listed at the last scan.
    dir_errors: BTreeMap<PathBuf, FileError>,
    descriptors: DescriptorCount,
    /// No state existed: files present at the first start begin at `start_at`.
    first_start: bool,
    /// When this registry was made (ns since the epoch): on a first start, a file found later
    /// whose birth time is before it was present at the start (e.g. in a directory that
    /// could not be listed then).
    started_ns: i64,
    first_scan_done: bool,
    last_scan: Option<Instant>,
    bytes_read: u64,
    errors: [u64; 4],
    events: Option<Sender<FileEvent>>,
    /// Include patterns that matched no file at the last scan (warned about once each).
    unmatched: Vec<usize>,
    warned_unmatched: std::collections::HashSet<usize>,
}

impl Registry {
    /// `saved`: the positions of the state file; `None` means the very first start.
    /// `events`: where other readers of the files hear about them.
    pub fn new(
        opts: RegistryOptions,
        saved: Option<Vec<FilePosition>>,
        events: Option<Sender<FileEvent>>,
    ) -> Result<Self, globset::Error> {
        let globs = Globs::new(&opts.include, &opts.exclude)?;
        let first_start = saved.is_none();
        let now_ns = crate::timefmt::now_ns();
        let mut entries = BTreeMap::new();
        for s in saved.unwrap_or_default() {
            let id = s.identity.id();
            let first_open = match (s.unopened || s.align, s.align) {
                (false, _) => None,
                (true, true) => Some(FirstOpen::LineBefore(s.offset)),
                (true, false) => Some(FirstOpen::FromStart),
            };
            entries.insert(
                id,
                Entry {
                    meta: FileMeta {
                        labels: PodLabels::from_path(&s.path),
                        path: s.path,
                    },
                    identity: s.identity,
                    committed: s.offset,
                    size: s.offset,
                    // Known, not opened yet: the first scan finds it in the globs or in its
                    // directory (renamed while the daemon was down) and reopens it by
                    // identity; otherwise it stays remembered.
                    fate: Fate::Remembered {
                        since_ns: s.let_go_ns.unwrap_or(now_ns),
                    },
                    error: None,
                    retry: Backoff::new(opts.retry_first),
                    active: Instant::now(),
                    idle_at: None,
                    from_state: true,
                    saved_let_go: s.let_go_ns.is_some(),
                    restored: true,
                    wake: false,
                    first_open,
                },
            );
        }
        Ok(Registry {
            fs: Box::new(RealFs),
            globs,
            opts,
            entries,
            stat_errors: BTreeMap::new(),
            non_utf8: Default::default(),
            dir_errors: BTreeMap::new(),
            descriptors: DescriptorCount::default(),
            first_start,
            started_ns: now_ns,
            first_scan_done: false,
            last_scan: None,
            bytes_read: 0,
            errors: [0; 4],
            events,
            unmatched: Vec::new(),
            warned_unmatched: Default::default(),
        })
    }

    /// Replaces the file-system calls (tests inject faults through it).
    pub fn with_fs(mut self, fs: Box<dyn FileSystem>) -> Self {
        self.fs = fs;
        self
    }

    /// The descriptor count other holders of [`SharedFile`]s share with the registry.
    pub fn descriptors(&self) -> DescriptorCount {
        self.descriptors.clone()
    }

    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Files being tailed (reading or draining).
    pub fn files_watched(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.fate.cursor().is_some())
            .count()
    }

    /// Files waiting for a descriptor they could get (not failing to open).
    pub fn waiting(&self) -> usize {
        self.entries
            .values()
            .filter(|e| matches!(e.fate, Fate::Waiting { .. }) && e.error.is_none())
            .count()
    }

    /// Whether a file known from the state is still waiting to be read again (for a descriptor
    /// it can get: not one that fails). Until none is, the counters may be behind what the
    /// previous run exported. Files new since then do not hold readiness back, so a ceiling
    /// lower than the number of busy files cannot keep the agent unready.
    pub fn restoring(&self) -> bool {
        self.entries
            .values()
            .any(|e| e.restored && matches!(e.fate, Fate::Waiting { .. }) && e.error.is_none())
    }

    /// Rescans the globs when due: new paths, files that left or came back, truncations,
    /// descriptors given and taken back, remembered identities expired. Cheap when not due.
    pub fn maintain(&mut self) {
        let due = self
            .last_scan
            .is_none_or(|t| t.elapsed() >= self.opts.glob_interval);
        if due {
            let scan = self.globs.scan(self.fs.as_ref());
            self.unmatched = self.globs.unmatched(&scan.paths);
            for i in &self.unmatched {
                if self.warned_unmatched.insert(*i) {
                    tracing::warn!(
                        "source.include {:?} matches no file (yet); it is looked at again at every scan",
                        self.opts.include.get(*i).map(String::as_str).unwrap_or("")
                    );
                }
            }
            self.apply_scan(&scan);
            self.wake_grown();
            self.check_truncations();
            self.open_wanted();
            self.expire_remembered();
            self.let_go_drained();
        }
    }

    /// Hands out up to `budget` physical lines per open file to `on_line(file, line_no,
    /// decoded)`, then lets go of drained files. Returns the number of physical lines read.
    pub fn read<F>(&mut self, budget: usize, mut on_line: F) -> usize
    where
        F: FnMut(&FileMeta, u64, Decoded<'_>),
    {
        let mut total = 0;
        let now = Instant::now();
        for (id, e) in self.entries.iter_mut() {
            let dormant = now.duration_since(e.active) >= self.opts.dormant_after;
            let wake = std::mem::take(&mut e.wake);
            let cursor = match &mut e.fate {
                Fate::Reading(c) if !dormant || wake => c,
                Fate::Draining { cursor: c, .. } => c,
                _ => continue,
            };
            // New bytes? One `fstat`. Checked before reading, so a file truncated and written
            // past the old offset since the last read is read from 0, never at the old offset.
            match cursor.file().size() {
                Ok(len) if len == cursor.read_to() => continue,
                Ok(_) => match cursor.truncation(&e.identity) {
                    Ok(Some(t)) => e.restart_truncated(*id, t, &self.events),
                    Ok(None) => {}
                    Err(err) => {
                        record_error(&mut self.errors, &mut e.error, &e.meta.path, "read", &err);
                        continue;
                    }
                },
                Err(err) => {
                    record_error(&mut self.errors, &mut e.error, &e.meta.path, "read", &err);
                    continue;
                }
            }
            let Entry {
                meta,
                fate,
                committed,
                size,
                identity,
                error,
                active,
                ..
            } = e;
            let cursor = match fate {
                Fate::Reading(c) | Fate::Draining { cursor: c, .. } => c,
                _ => continue,
            };
            let before = cursor.bytes_read();
            let result = cursor.read(budget, |no, d| on_line(meta, no, d));
            self.bytes_read += cursor.bytes_read() - before;
            *committed = cursor.committed();
            *size = (*size).max(cursor.read_to());
            match result {
                Ok(n) => {
                    if n > 0 {
                        *active = now;
                        identity.refresh(cursor.file().file(), *size);
                    }
                    total += n;
                    clear_error(error, "read", &meta.path);
                }
                Err(err) => {
                    record_error(&mut self.errors, error, &meta.path, "read", &err);
                }
            }
        }
        if total == 0 {
            self.let_go_drained();
        }
        total
    }

    /// [`Registry::maintain`] then [`Registry::read`].
    pub fn poll<F>(&mut self, budget: usize, on_line: F) -> usize
    where
        F: FnMut(&FileMeta, u64, Decoded<'_>),
    {
        self.maintain();
        self.read(budget, on_line)
    }

    /// Matches the scan against the entries: new paths become pending, known identities
    /// follow their path, files outside the globs start draining (or are looked for in their
    /// directory), and nothing below a failed directory or path changes.
    fn apply_scan(&mut self, scan: &Scan) {
        self.last_scan = Some(Instant::now());
        let first_scan = !self.first_scan_done;
        self.first_scan_done = true;
        // Directory errors: reported once, kept while they last.
        let mut dir_errors = BTreeMap::new();
        for (dir, err) in &scan.failed_dirs {
            let mut slot = self.dir_errors.remove(dir);
            record_error(&mut self.errors, &mut slot, dir, "list directory", err);
            if let Some(s) = slot {
                dir_errors.insert(dir.clone(), s);
            }
        }
        for dir in self.dir_errors.keys() {
            tracing::info!("{}: can be listed again", dir.display());
        }
        // (Directories that failed again were moved to `dir_errors` above.)
        self.dir_errors = dir_errors;

        let mut seen = std::collections::HashSet::new();
        let mut unknown_paths: Vec<PathBuf> = Vec::new();
        let mut stat_errors = BTreeMap::new();
        for path in &scan.paths {
            let meta = match self.fs.metadata(path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    unknown_paths.push(path.clone());
                    if let Some(known) = self.entries.values_mut().find(|k| k.meta.path == *path) {
                        record_error(&mut self.errors, &mut known.error, path, "stat", &e);
                        continue;
                    }
                    let mut slot = self.stat_errors.remove(path);
                    record_error(&mut self.errors, &mut slot, path, "stat", &e);
                    stat_errors.extend(slot.map(|s| (path.clone(), s)));
                    continue;
                }
            };
            if !meta.is_file() {
                continue; // a FIFO, socket or device in the log directory is never opened
            }
            if path.to_str().is_none() {
                if self.non_utf8.insert(path.clone()) {
                    tracing::warn!(
                        "{}: the file name is not UTF-8; skipped (labels and the state need text)",
                        path.display()
                    );
                }
                continue;
            }
            let id = FileId::of(&meta);
            seen.insert(id);
            match self.entries.get_mut(&id) {
                Some(e) => {
                    clear_error(&mut e.error, "stat", path);
                    if e.meta.path != *path {
                        e.meta.labels = PodLabels::from_path(path);
                        e.meta.path = path.clone();
                    }
                    let len = meta.len();
                    if matches!(e.fate, Fate::Reading(_)) && len != e.size {
                        e.wake = true;
                    }
                    e.fate = match std::mem::replace(&mut e.fate, Fate::Idle) {
                        Fate::Draining { cursor, .. } => Fate::Reading(cursor),
                        // Closed by us and untouched since (same size and mtime: an inode
                        // reused by a new file would differ).
                        Fate::Idle if meta.modified().ok().map(|m| (len, m)) == e.idle_at => {
                            Fate::Idle
                        }
                        // Otherwise it is opened and its identity checked before its offset
                        // is trusted.
                        Fate::Idle | Fate::Remembered { .. } | Fate::Waiting { .. } => {
                            Fate::Waiting { left: false }
                        }
                        other => other,
                    };
                    if e.fate.cursor().is_none() {
                        e.size = len;
                    }
                    e.from_state = false;
                }
                None => {
                    // A new file: an entry at once, keyed by its identity, so it is followed
                    // if it is renamed before it gets a descriptor.
                    let len = meta.len();
                    let born = FileIdentity::born_ns(&meta);
                    let present_at_start = self.first_start
                        && (first_scan || born.is_some_and(|b| b < self.started_ns));
                    let first_open = if present_at_start && self.opts.start_at == StartAt::End {
                        FirstOpen::LineBefore(len)
                    } else {
                        FirstOpen::FromStart
                    };
                    self.entries.insert(
                        id,
                        Entry {
                            identity: FileIdentity::unopened(&meta),
                            meta: FileMeta {
                                path: path.clone(),
                                labels: PodLabels::from_path(path),
                            },
                            committed: match first_open {
                                FirstOpen::LineBefore(n) => n,
                                FirstOpen::FromStart => 0,
                            },
                            size: len,
                            fate: Fate::Waiting { left: false },
                            error: None,
                            retry: Backoff::new(self.opts.retry_first),
                            active: Instant::now(),
                            idle_at: None,
                            from_state: false,
                            saved_let_go: false,
                            restored: false,
                            wake: false,
                            first_open: Some(first_open),
                        },
                    );
                }
            }
        }
        for path in self.stat_errors.keys() {
            if !stat_errors.contains_key(path) {
                tracing::info!("{}: stat works again (or it is gone)", path.display());
            }
        }
        self.stat_errors = stat_errors;

        let now = Instant::now();
        let now_ns = crate::timefmt::now_ns();
        let mut forget = Vec::new();
        for (id, e) in self.entries.iter_mut() {
            if seen.contains(id) {
                continue;
            }
            if scan.unknown(&e.meta.path) || unknown_paths.contains(&e.meta.path) {
                // Cannot tell: an error is not a deletion.
                continue;
            }
            let from_state = e.from_state;
            let found = match &e.fate {
                Fate::Draining { .. } => continue,
                Fate::Remembered { .. } if !from_state => continue,
                Fate::Reading(_) => None,
                // Closed and now outside the globs (or saved and not matched at the first
                // scan: renamed while the daemon was down): look for it in its directory.
                _ => match find_in_dir(self.fs.as_ref(), &e.meta.path, &e.identity) {
                    Ok(found) => Some(found),
                    Err(err) => {
                        // Cannot tell: an error is not a deletion.
                        record_error(
                            &mut self.errors,
                            &mut e.error,
                            &e.meta.path,
                            "list directory",
                            &err,
                        );
                        continue;
                    }
                },
            };
            e.from_state = false;
            e.fate = match (std::mem::replace(&mut e.fate, Fate::Idle), found) {
                (Fate::Reading(cursor), _) => {
                    // Renamed within its directory (rotation): show it under its new name.
                    if let Ok(Some((path, _))) =
                        find_in_dir(self.fs.as_ref(), &e.meta.path, &e.identity)
                    {
                        e.meta.labels = PodLabels::from_path(&path).or(e.meta.labels.take());
                        e.meta.path = path;
                    }
                    Fate::Draining { cursor, since: now }
                }
                // Found: opened once more and read to its end (with the let-go grace), so
                // what was appended after it was closed is counted and other readers can
                // finish it too.
                // Let go empty, and now outside the globs: nothing of its content can
                // confirm it is still the file it was (a copy may have been written into
                // it), so it is not read again: never count a line twice. (One saved while
                // it still waited with unread bytes is read: found by the forwarder's model
                // test, a restart lost them.)
                (Fate::Remembered { since_ns }, Some(Some(_)))
                    if e.identity.fingerprint_len == 0
                        && e.first_open.is_none()
                        && e.saved_let_go =>
                {
                    e.restored = false;
                    Fate::Remembered { since_ns }
                }
                (_, Some(Some((path, len)))) => {
                    if path != e.meta.path {
                        tracing::info!(
                            "{}: renamed to {}; reading it to its end",
                            e.meta.path.display(),
                            path.display()
                        );
                        e.meta.labels = PodLabels::from_path(&path);
                        e.meta.path = path;
                    }
                    e.size = len;
                    Fate::Waiting { left: true }
                }
                (other, _) => {
                    if e.first_open.is_some() {
                        // Never opened and gone: nothing of it was counted.
                        forget.push(*id);
                        other
                    } else {
                        e.restored = false;
                        match other {
                            Fate::Remembered { since_ns } => {
                                tracing::info!(
                                    "{}: not found since the last run (deleted or moved away); its identity is remembered at offset {}",
                                    e.meta.path.display(),
                                    e.committed
                                );
                                Fate::Remembered { since_ns }
                            }
                            _ => Fate::Remembered { since_ns: now_ns },
                        }
                    }
                }
            };
        }
        for id in forget {
            self.entries.remove(&id);
            send(&self.events, FileEvent::Forgotten { id });
        }
    }

    /// Wakes dormant open files whose size changed, through the descriptor they hold (so a
    /// path that cannot be looked at, e.g. under an unlistable directory, still wakes).
    fn wake_grown(&mut self) {
        let now = Instant::now();
        for e in self.entries.values_mut() {
            let Fate::Reading(cursor) = &e.fate else {
                continue;
            };
            if now.duration_since(e.active) < self.opts.dormant_after {
                continue;
            }
            if cursor
                .file()
                .size()
                .is_ok_and(|len| len != cursor.read_to())
            {
                e.wake = true;
            }
        }
    }

    /// Copytruncate and rewrites of open files that did not grow: read again from 0. Dormant
    /// files are left to the read path, which checks before it reads the bytes that woke
    /// them (only a rewrite to exactly the same size goes unnoticed until the file grows).
    fn check_truncations(&mut self) {
        let now = Instant::now();
        for (id, e) in self.entries.iter_mut() {
            let Some(cursor) = e.fate.cursor() else {
                continue;
            };
            if matches!(e.fate, Fate::Reading(_))
                && now.duration_since(e.active) >= self.opts.dormant_after
            {
                continue;
            }
            match cursor.truncation(&e.identity) {
                Ok(None) => {}
                Ok(Some(t)) => e.restart_truncated(*id, t, &self.events),
                Err(err) => {
                    record_error(&mut self.errors, &mut e.error, &e.meta.path, "stat", &err)
                }
            }
        }
    }

    /// Gives descriptors to waiting files, those read before first, then new ones in the
    /// order they were found (the newest wait longest), within the ceiling; closes idle files
    /// to make room when something waits.
    fn open_wanted(&mut self) {
        let now = Instant::now();
        let mut waiting: Vec<(bool, Instant, FileId)> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.fate, Fate::Waiting { .. }))
            .filter(|(_, e)| e.retry.due(now))
            .map(|(id, e)| (e.first_open.is_some(), e.active, *id))
            .collect();
        waiting.sort();
        for (_, _, id) in waiting {
            if !self.make_room() {
                return;
            }
            if !self.reopen(id)
                && self
                    .entries
                    .get(&id)
                    .and_then(|e| e.error.as_ref())
                    .is_some_and(|e| e.reason == ErrorReason::Descriptors)
            {
                // Out of descriptors: nothing else will open now either.
                return;
            }
        }
        // Another reader (the Loki forwarder) waits for descriptors: close idle files for it
        // (metering's own waiting files came first).
        for _ in 0..self.descriptors.wanted() {
            if self.descriptors.open() < self.opts.max_open_files || !self.close_idle() {
                return;
            }
        }
    }

    /// Whether a descriptor may be opened now, closing the longest-idle file if needed.
    fn make_room(&mut self) -> bool {
        if self.descriptors.open() < self.opts.max_open_files {
            return true;
        }
        self.close_idle() && self.descriptors.open() < self.opts.max_open_files
    }

    /// Closes the longest-idle file (read to its end, quiet for a glob interval). Returns
    /// whether there was one. Another reader may still hold its descriptor a while.
    fn close_idle(&mut self) -> bool {
        // While files known from the state still wait to be read again (readiness waits for
        // them), any file read to its end may be closed for them, quiet or not.
        let quiet = if self.restoring() {
            Duration::ZERO
        } else {
            self.opts.glob_interval
        };
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| match &e.fate {
                Fate::Reading(c) => e.active.elapsed() >= quiet && c.at_end(),
                _ => false,
            })
            .min_by_key(|(_, e)| e.active)
            .map(|(id, _)| *id);
        let Some(id) = victim else {
            return false;
        };
        if let Some(e) = self.entries.get_mut(&id) {
            e.idle_at = e.fate.cursor().and_then(|c| {
                let modified = c.file().file().metadata().ok()?.modified().ok()?;
                Some((c.read_to(), modified))
            });
            e.fate = Fate::Idle;
            send(
                &self.events,
                FileEvent::Closed {
                    id,
                    left: false,
                    path: e.meta.path.clone(),
                },
            );
        }
        true
    }

    /// Opens a known identity again (idle, remembered, or waiting). Returns whether it opened.
    fn reopen(&mut self, id: FileId) -> bool {
        let Some(e) = self.entries.get_mut(&id) else {
            return false;
        };
        let left = matches!(e.fate, Fate::Waiting { left: true });
        // A file never opened has no offset to check yet (its identity so far is device,
        // inode and birth time): where it starts is decided below.
        let offset = if e.first_open.is_some() {
            0
        } else {
            e.committed
        };
        let (file, len, restart) = match reopen(self.fs.as_ref(), &e.meta.path, &e.identity, offset)
        {
            Reopened::Continue { file, len } => (file, len, None),
            Reopened::Restart { file, len, why } => (file, len, Some(why)),
            Reopened::Moved(path) => {
                // Moved since the scan: followed by identity; the next scan decides about it.
                e.meta.labels = PodLabels::from_path(&path);
                e.meta.path = path;
                return false;
            }
            // Gone, or another file has the path: the scan will find ours (or not) later.
            Reopened::NotThere => return false,
            Reopened::Unreadable { op, error } => {
                // Cannot tell now: retried, never taken for a rewrite.
                record_error(&mut self.errors, &mut e.error, &e.meta.path, op, &error);
                e.retry.failed();
                return false;
            }
        };
        let file = SharedFile::new(file, &self.descriptors);
        let start = match (e.first_open, restart) {
            (Some(first), None) => match first {
                FirstOpen::FromStart => 0,
                FirstOpen::LineBefore(n) => match last_line_boundary(file.file(), n.min(len)) {
                    Ok(o) => o,
                    Err(err) => {
                        record_error(&mut self.errors, &mut e.error, &e.meta.path, "read", &err);
                        e.retry.failed();
                        return false;
                    }
                },
            },
            (_, Some(Truncation::Rewritten)) if left => {
                // Outside the globs, same inode, other first bytes: our file was deleted and
                // its inode reused by a file we were never asked to read.
                tracing::info!(
                    "{}: not the file it was (inode reused); forgotten",
                    e.meta.path.display()
                );
                self.entries.remove(&id);
                send(&self.events, FileEvent::Forgotten { id });
                return false;
            }
            (_, Some(Truncation::Rewritten)) => {
                tracing::info!(
                    "{}: first bytes changed while closed (rewritten); reading from 0",
                    e.meta.path.display()
                );
                send(&self.events, FileEvent::Truncated { id });
                0
            }
            (_, Some(Truncation::Shrunk { .. })) => {
                tracing::info!(
                    "{}: shorter ({len}) than its offset {} (truncated while closed); reading from 0",
                    e.meta.path.display(),
                    e.committed
                );
                send(&self.events, FileEvent::Truncated { id });
                0
            }
            (None, None) => e.committed,
        };
        if start == 0 || e.first_open.is_some() {
            if let Ok(identity) = FileIdentity::read(file.file()) {
                e.identity = identity;
            }
        }
        if e.first_open.take().is_some() {
            tracing::info!("{}: tailing from offset {start}", e.meta.path.display());
        }
        e.restored = false;
        clear_error(&mut e.error, "open", &e.meta.path);
        clear_error(&mut e.error, "stat", &e.meta.path);
        e.retry.succeeded();
        e.committed = start;
        e.size = len;
        e.active = Instant::now();
        e.wake = true; // read at once, whatever came before
        tracing::debug!("{}: tailing from offset {start}", e.meta.path.display());
        let cursor = TailCursor::new(file.clone(), start, self.opts.max_line_bytes);
        e.fate = if left {
            Fate::Draining {
                cursor,
                since: Instant::now(),
            }
        } else {
            Fate::Reading(cursor)
        };
        send(
            &self.events,
            FileEvent::Opened {
                identity: e.identity.clone(),
                path: e.meta.path.clone(),
                labels: e.meta.labels.clone(),
                file,
                committed: start,
            },
        );
        true
    }

    /// Draining files read to their end and quiet for the grace: deleted ones are
    /// forgotten, the others remembered.
    fn let_go_drained(&mut self) {
        let grace = self.opts.let_go_after;
        let now_ns = crate::timefmt::now_ns();
        let mut forget = Vec::new();
        for (id, e) in self.entries.iter_mut() {
            let Fate::Draining { cursor, since } = &e.fate else {
                continue;
            };
            if since.elapsed() < grace || !cursor.at_end() {
                continue;
            }
            let deleted = cursor.file().links().is_ok_and(|n| n == 0);
            send(
                &self.events,
                FileEvent::Closed {
                    id: *id,
                    left: true,
                    path: e.meta.path.clone(),
                },
            );
            if deleted {
                tracing::info!(
                    "{}: deleted, read to its end; forgotten",
                    e.meta.path.display()
                );
                forget.push(*id);
            } else {
                tracing::info!(
                    "{}: left the globs, read to its end; remembered at offset {}",
                    e.meta.path.display(),
                    e.committed
                );
                e.fate = Fate::Remembered { since_ns: now_ns };
            }
        }
        for id in forget {
            self.entries.remove(&id);
            send(&self.events, FileEvent::Forgotten { id });
        }
    }

    /// Forgets identities remembered longer than `remember_for`, unless they still exist in
    /// their directory (then they are kept another period).
    fn expire_remembered(&mut self) {
        let now_ns = crate::timefmt::now_ns();
        let limit = self.opts.remember_for.as_nanos().min(i64::MAX as u128) as i64;
        let mut forget = Vec::new();
        for (id, e) in self.entries.iter_mut() {
            let Fate::Remembered { since_ns } = &mut e.fate else {
                continue;
            };
            if now_ns.saturating_sub(*since_ns) < limit {
                continue;
            }
            match find_in_dir(self.fs.as_ref(), &e.meta.path, &e.identity) {
                Ok(Some(_)) => *since_ns = now_ns,
                Ok(None) => forget.push(*id),
                Err(_) => {} // cannot tell: asked again at the next scan
            }
        }
        for id in forget {
            self.entries.remove(&id);
            send(&self.events, FileEvent::Forgotten { id });
        }
    }

    /// Every known identity with its committed offset, for the state file.
    pub fn positions(&self) -> Vec<FilePosition> {
        self.entries
            .values()
            .map(|e| FilePosition {
                path: e.meta.path.clone(),
                identity: e.identity.clone(),
                offset: e.committed,
                let_go_ns: match e.fate {
                    Fate::Remembered { since_ns } => Some(since_ns),
                    _ => None,
                },
                unopened: e.first_open.is_some(),
                align: matches!(e.first_open, Some(FirstOpen::LineBefore(_))),
            })
            .collect()
    }

    /// Every file, and the paths and directories that cannot be looked at, sorted by path.
    pub fn statuses(&self) -> Vec<FileStatus> {
        let err =
            |e: &Option<FileError>| e.as_ref().map(|e| (e.reason, e.message.clone(), e.count));
        let mut out: Vec<FileStatus> = self
            .entries
            .iter()
            .map(|(id, e)| FileStatus {
                path: e.meta.path.clone(),
                labels: e.meta.labels.clone(),
                id: Some(*id),
                offset: e.committed,
                size: e.size,
                state: e.fate.name(),
                error: err(&e.error),
            })
            .collect();
        out.extend(self.stat_errors.iter().map(|(path, e)| FileStatus {
            path: path.clone(),
            labels: PodLabels::from_path(path),
            id: None,
            offset: 0,
            size: 0,
            state: "unknown",
            error: err(&Some(e.clone())),
        }));
        out.extend(self.dir_errors.iter().map(|(path, e)| FileStatus {
            path: path.clone(),
            labels: None,
            id: None,
            offset: 0,
            size: 0,
            state: "unlistable",
            error: err(&Some(e.clone())),
        }));
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    pub fn summary(&self) -> RegistrySummary {
        let mut s = RegistrySummary {
            errors: self.errors,
            open_descriptors: self.descriptors.open() as u64,
            max_open_files: self.opts.max_open_files as u64,
            bytes_read: self.bytes_read,
            unmatched_globs: self
                .unmatched
                .iter()
                .filter_map(|i| self.opts.include.get(*i).cloned())
                .collect(),
            ..Default::default()
        };
        for e in self.entries.values() {
            let i = FATE_NAMES
                .iter()
                .position(|n| *n == e.fate.name())
                .unwrap_or(0);
            s.by_state[i] += 1;
            s.unreadable += e.error.is_some() as u64;
        }
        s.unreadable += self.stat_errors.len() as u64;
        s.unreadable += self.dir_errors.len() as u64;
        s
    }
}

fn send(events: &Option<Sender<FileEvent>>, ev: FileEvent) {
    if let Some(tx) = events {
        // A listener that went away (shutdown) does not stop metering.
        let _ = tx.send(ev);
    }
}

/// Start for `start_at = "end"`: just past the last `\n`, so a line being written when the
/// daemon starts is counted whole when it completes.
fn last_line_boundary(file: &fs::File, len: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut pos = len;
    let mut buf = [0u8; 4096];
    while pos > 0 {
        let n = (pos as usize).min(buf.len());
        let start = pos - n as u64;
        file.read_exact_at(&mut buf[..n], start)?;
        if let Some(i) = memchr::memrchr(b'\n', &buf[..n]) {
            return Ok(start + i as u64 + 1);
        }
        pos = start;
    }
    Ok(0)
}

#[cfg(test)]
#[path = "registry_model.rs"]
pub(crate) mod model;
