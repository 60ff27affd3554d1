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
//! Other readers of the same files (the Loki forwarder) learn of them through
//! [`FileEvent`]s; the registry does not know who listens.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use super::cursor::{DescriptorCount, FileId, FileIdentity, SharedFile, TailCursor, Truncation};
use super::discover::{FileSystem, Globs, PodLabels, RealFs, Scan};
use crate::config::StartAt;
use crate::decode::Decoded;

/// How often a warning about the same failing path is repeated while it keeps failing.
const WARN_EVERY: Duration = Duration::from_secs(300);
/// Longest delay between two attempts to open a failing file.
const RETRY_MAX: Duration = Duration::from_secs(30);

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
    /// the globs (`left` = true).
    Closed { id: FileId, left: bool },
    /// The file was truncated or rewritten: it is read again from 0.
    Truncated { id: FileId },
    /// The identity is forgotten: deleted, or remembered long enough.
    Forgotten { id: FileId },
}

/// Why an operation on a file failed, as self-metrics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorReason {
    /// EACCES, EPERM.
    Permission,
    /// EMFILE, ENFILE: out of descriptors.
    Descriptors,
    /// EIO.
    Io,
    Other,
}

impl ErrorReason {
    pub const ALL: [ErrorReason; 4] = [
        ErrorReason::Permission,
        ErrorReason::Descriptors,
        ErrorReason::Io,
        ErrorReason::Other,
    ];

    pub fn of(e: &io::Error) -> ErrorReason {
        match e.raw_os_error() {
            Some(libc::EACCES) | Some(libc::EPERM) => ErrorReason::Permission,
            Some(libc::EMFILE) | Some(libc::ENFILE) => ErrorReason::Descriptors,
            Some(libc::EIO) => ErrorReason::Io,
            _ => ErrorReason::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorReason::Permission => "permission",
            ErrorReason::Descriptors => "descriptors",
            ErrorReason::Io => "io",
            ErrorReason::Other => "other",
        }
    }
}

/// The last error of a file or directory, while it lasts.
#[derive(Clone, Debug)]
pub struct FileError {
    /// What failed: "list directory", "stat", "open" or "read"; only a success of the same
    /// operation clears it.
    pub op: &'static str,
    pub reason: ErrorReason,
    pub message: String,
    /// Failures in a row.
    pub count: u64,
    warned: Instant,
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
    retry_at: Option<Instant>,
    retry_delay: Duration,
    /// Last time lines were read (or the file was opened): idle files close first.
    active: Instant,
    /// Modification time when it was closed idle: unchanged size and mtime mean untouched.
    idle_mtime: Option<std::time::SystemTime>,
    /// Loaded from the state file and not yet found (in the globs or in its directory).
    from_state: bool,
}

/// A matched path not opened yet (new, or waiting for a descriptor, or failing to open).
struct Pending {
    /// Matched at the very first scan of a first start: begins at `start_at`.
    at_first_start: bool,
    error: Option<FileError>,
    retry_at: Option<Instant>,
    retry_delay: Duration,
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
    /// Files per state, in [`FATE_NAMES`] order (pending paths count as waiting).
    pub by_state: [u64; 5],
    /// Files, paths and directories whose last operation failed.
    pub unreadable: u64,
    /// Errors by reason, in [`ErrorReason::ALL`] order, since start.
    pub errors: [u64; 4],
    pub open_descriptors: u64,
    pub max_open_files: u64,
    pub bytes_read: u64,
}

pub struct Registry {
    fs: Box<dyn FileSystem>,
    globs: Globs,
    opts: RegistryOptions,
    entries: BTreeMap<FileId, Entry>,
    pending: BTreeMap<PathBuf, Pending>,
    /// Directories that could not be listed at the last scan.
    dir_errors: BTreeMap<PathBuf, FileError>,
    descriptors: DescriptorCount,
    /// No state existed: files present at the first scan start at `start_at`.
    first_start: bool,
    first_scan_done: bool,
    last_scan: Option<Instant>,
    bytes_read: u64,
    errors: [u64; 4],
    events: Option<Sender<FileEvent>>,
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
                    retry_at: None,
                    retry_delay: opts.retry_first,
                    active: Instant::now(),
                    idle_mtime: None,
                    from_state: true,
                },
            );
        }
        Ok(Registry {
            fs: Box::new(RealFs),
            globs,
            opts,
            entries,
            pending: BTreeMap::new(),
            dir_errors: BTreeMap::new(),
            descriptors: DescriptorCount::default(),
            first_start,
            first_scan_done: false,
            last_scan: None,
            bytes_read: 0,
            errors: [0; 4],
            events,
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

    /// Whether some file has unread bytes and is waiting for a descriptor it could get (not
    /// one that fails to open).
    pub fn waiting_for_descriptor(&self) -> bool {
        self.entries
            .values()
            .any(|e| matches!(e.fate, Fate::Waiting { .. }) && e.error.is_none())
            || self.pending.values().any(|p| p.error.is_none())
    }

    /// Rescans the globs when due: new paths, files that left or came back, truncations,
    /// descriptors given and taken back, remembered identities expired. Cheap when not due.
    pub fn maintain(&mut self) {
        let due = self
            .last_scan
            .is_none_or(|t| t.elapsed() >= self.opts.glob_interval);
        if due {
            let scan = self.globs.scan(self.fs.as_ref());
            self.apply_scan(&scan);
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
        for e in self.entries.values_mut() {
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
                    let p = self.pending.entry(path.clone()).or_insert(Pending {
                        at_first_start: first_scan && self.first_start,
                        error: None,
                        retry_at: None,
                        retry_delay: self.opts.retry_first,
                    });
                    record_error(&mut self.errors, &mut p.error, path, "stat", &e);
                    continue;
                }
            };
            if !meta.is_file() {
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
                    e.fate = match std::mem::replace(&mut e.fate, Fate::Idle) {
                        Fate::Draining { cursor, .. } => Fate::Reading(cursor),
                        // Closed by us and untouched since (same size and mtime: an inode
                        // reused by a new file would differ).
                        Fate::Idle
                            if len == e.committed && e.idle_mtime == meta.modified().ok() =>
                        {
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
                    self.pending.remove(path);
                }
                None => {
                    self.pending.entry(path.clone()).or_insert(Pending {
                        at_first_start: first_scan && self.first_start,
                        error: None,
                        retry_at: None,
                        retry_delay: self.opts.retry_first,
                    });
                }
            }
        }
        // Pending paths that are no longer matched were never opened: nothing to keep.
        self.pending
            .retain(|p, _| scan.paths.binary_search(p).is_ok() || scan.unknown(p));

        let now = Instant::now();
        let now_ns = crate::timefmt::now_ns();
        for (id, e) in self.entries.iter_mut() {
            if seen.contains(id) {
                continue;
            }
            if scan.unknown(&e.meta.path) || unknown_paths.contains(&e.meta.path) {
                // Cannot tell: an error is not a deletion.
                continue;
            }
            let from_state = std::mem::take(&mut e.from_state);
            e.fate = match std::mem::replace(&mut e.fate, Fate::Idle) {
                Fate::Reading(cursor) => {
                    // Renamed within its directory (rotation): show it under its new name.
                    if let Some((path, _)) =
                        find_in_dir(self.fs.as_ref(), &e.meta.path, &e.identity)
                    {
                        e.meta.labels = PodLabels::from_path(&path).or(e.meta.labels.take());
                        e.meta.path = path;
                    }
                    Fate::Draining { cursor, since: now }
                }
                d @ Fate::Draining { .. } => d,
                Fate::Remembered { since_ns } if !from_state => Fate::Remembered { since_ns },
                // Closed and now outside the globs (or saved and not matched at the first
                // scan: renamed while the daemon was down): look for it in its directory.
                // Found, it is opened once more and read to its end, so what was appended
                // after it was closed is counted and other readers can finish it too.
                other => match find_in_dir(self.fs.as_ref(), &e.meta.path, &e.identity) {
                    Some((path, len)) => {
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
                        if from_state || len != e.committed || matches!(other, Fate::Waiting { .. })
                        {
                            Fate::Waiting { left: true }
                        } else {
                            Fate::Remembered { since_ns: now_ns }
                        }
                    }
                    None => match other {
                        Fate::Remembered { since_ns } => {
                            if from_state {
                                tracing::info!(
                                    "{}: not found since the last run (deleted or moved away); its identity is remembered at offset {}",
                                    e.meta.path.display(),
                                    e.committed
                                );
                            }
                            Fate::Remembered { since_ns }
                        }
                        _ => Fate::Remembered { since_ns: now_ns },
                    },
                },
            };
        }
    }

    /// Copytruncate and rewrites of open files: read again from 0.
    fn check_truncations(&mut self) {
        for (id, e) in self.entries.iter_mut() {
            let cursor = match &mut e.fate {
                Fate::Reading(c) | Fate::Draining { cursor: c, .. } => c,
                _ => continue,
            };
            match cursor.truncation(&e.identity) {
                Ok(None) => {}
                Ok(Some(t)) => {
                    tracing::info!(
                        "{}: {}; reading from 0",
                        e.meta.path.display(),
                        match t {
                            Truncation::Shrunk { size } =>
                                format!("truncated (size {size} < read {})", cursor.read_to()),
                            Truncation::Rewritten => "rewritten (its first bytes changed)".into(),
                        }
                    );
                    cursor.restart(0);
                    e.committed = 0;
                    if let Ok(identity) = FileIdentity::read(cursor.file().file()) {
                        e.identity = identity;
                    }
                    e.size = cursor.file().size().unwrap_or(0);
                    send(&self.events, FileEvent::Truncated { id: *id });
                }
                Err(err) => {
                    record_error(&mut self.errors, &mut e.error, &e.meta.path, "stat", &err)
                }
            }
        }
    }

    /// Gives descriptors to waiting files and new paths, oldest first, within the ceiling;
    /// closes idle files to make room when something waits.
    fn open_wanted(&mut self) {
        let now = Instant::now();
        let mut known: Vec<FileId> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.fate, Fate::Waiting { .. }))
            .filter(|(_, e)| e.retry_at.is_none_or(|t| now >= t))
            .map(|(id, _)| *id)
            .collect();
        known.sort_by_key(|id| self.entries.get(id).map(|e| e.active));
        let fresh: Vec<PathBuf> = self
            .pending
            .iter()
            .filter(|(_, p)| p.retry_at.is_none_or(|t| now >= t))
            .map(|(p, _)| p.clone())
            .collect();
        for id in known {
            if !self.make_room() {
                return;
            }
            if !self.reopen(id) {
                // Out of descriptors: nothing else will open now either.
                if self
                    .entries
                    .get(&id)
                    .and_then(|e| e.error.as_ref())
                    .is_some_and(|e| e.reason == ErrorReason::Descriptors)
                {
                    return;
                }
            }
        }
        for path in fresh {
            if !self.make_room() {
                return;
            }
            if let Err(ErrorReason::Descriptors) = self.open_new(&path) {
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
        let quiet = self.opts.glob_interval;
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
            e.idle_mtime = e
                .fate
                .cursor()
                .and_then(|c| c.file().file().metadata().ok())
                .and_then(|m| m.modified().ok());
            e.fate = Fate::Idle;
            send(&self.events, FileEvent::Closed { id, left: false });
        }
        true
    }

    /// Opens a known identity again (idle, remembered, or waiting). Returns whether it opened.
    fn reopen(&mut self, id: FileId) -> bool {
        let Some(e) = self.entries.get_mut(&id) else {
            return false;
        };
        let left = matches!(e.fate, Fate::Waiting { left: true });
        let file = match self
            .fs
            .open(&e.meta.path)
            .map(|f| SharedFile::new(f, &self.descriptors))
        {
            Ok(f) => f,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                // Moved or deleted since the scan: look for it by identity next to its path;
                // the next scan decides about it.
                if let Some((path, _)) = find_in_dir(self.fs.as_ref(), &e.meta.path, &e.identity) {
                    e.meta.labels = PodLabels::from_path(&path);
                    e.meta.path = path;
                }
                return false;
            }
            Err(err) => {
                record_error(&mut self.errors, &mut e.error, &e.meta.path, "open", &err);
                backoff(&mut e.retry_at, &mut e.retry_delay);
                return false;
            }
        };
        let len = file.size().unwrap_or(0);
        let same = e.identity.matches(file.file());
        let start = if !same {
            if FileId::of(&match file.file().metadata() {
                Ok(m) => m,
                Err(_) => return false,
            }) != id
            {
                // Another file now has this path; the scan will find ours (or not) later.
                return false;
            }
            if left {
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
            tracing::info!(
                "{}: first bytes changed while closed (rewritten); reading from 0",
                e.meta.path.display()
            );
            send(&self.events, FileEvent::Truncated { id });
            0
        } else if len < e.committed {
            tracing::info!(
                "{}: shorter ({len}) than its offset {} (truncated while closed); reading from 0",
                e.meta.path.display(),
                e.committed
            );
            send(&self.events, FileEvent::Truncated { id });
            0
        } else {
            e.committed
        };
        if start == 0 {
            if let Ok(identity) = FileIdentity::read(file.file()) {
                e.identity = identity;
            }
        }
        clear_error(&mut e.error, "open", &e.meta.path);
        clear_error(&mut e.error, "stat", &e.meta.path);
        e.retry_at = None;
        e.retry_delay = self.opts.retry_first;
        e.committed = start;
        e.size = len;
        e.active = Instant::now();
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

    /// Opens a path seen for the first time.
    fn open_new(&mut self, path: &Path) -> Result<(), ErrorReason> {
        let Some(p) = self.pending.get_mut(path) else {
            return Ok(());
        };
        let opened = self
            .fs
            .open(path)
            .map(|f| SharedFile::new(f, &self.descriptors))
            .and_then(|f| Ok((FileIdentity::read(f.file())?, f.size()?, f)));
        let (identity, len, file) = match opened {
            Ok(x) => x,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                self.pending.remove(path);
                return Ok(());
            }
            Err(err) => {
                let reason = ErrorReason::of(&err);
                record_error(&mut self.errors, &mut p.error, path, "open", &err);
                backoff(&mut p.retry_at, &mut p.retry_delay);
                return Err(reason);
            }
        };
        let at_first_start = p.at_first_start;
        self.pending.remove(path);
        let id = identity.id();
        if self.entries.contains_key(&id) {
            // Known identity under a new path between scans (renamed): the next scan moves
            // the entry; this descriptor is not needed.
            return Ok(());
        }
        let start = if at_first_start && self.opts.start_at == StartAt::End {
            match last_line_boundary(file.file(), len) {
                Ok(o) => o,
                Err(err) => {
                    let mut error = None;
                    record_error(&mut self.errors, &mut error, path, "read", &err);
                    return Err(ErrorReason::of(&err));
                }
            }
        } else {
            0
        };
        tracing::info!("{}: tailing from offset {start}", path.display());
        let meta = FileMeta {
            path: path.to_path_buf(),
            labels: PodLabels::from_path(path),
        };
        send(
            &self.events,
            FileEvent::Opened {
                identity: identity.clone(),
                path: meta.path.clone(),
                labels: meta.labels.clone(),
                file: file.clone(),
                committed: start,
            },
        );
        self.entries.insert(
            id,
            Entry {
                identity,
                meta,
                committed: start,
                size: len,
                fate: Fate::Reading(TailCursor::new(file, start, self.opts.max_line_bytes)),
                error: None,
                retry_at: None,
                retry_delay: self.opts.retry_first,
                active: Instant::now(),
                idle_mtime: None,
                from_state: false,
            },
        );
        Ok(())
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
            if find_in_dir(self.fs.as_ref(), &e.meta.path, &e.identity).is_some() {
                *since_ns = now_ns;
            } else {
                forget.push(*id);
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
            })
            .collect()
    }

    /// Every file and pending path, sorted by path.
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
        out.extend(self.pending.iter().map(|(path, p)| FileStatus {
            path: path.clone(),
            labels: PodLabels::from_path(path),
            id: None,
            offset: 0,
            size: 0,
            state: "waiting",
            error: err(&p.error),
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
        s.by_state[3] += self.pending.len() as u64;
        s.unreadable += self.pending.values().filter(|p| p.error.is_some()).count() as u64;
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

/// Counts the error, keeps it as the path's last error, and warns when it is new (or has
/// lasted another `WARN_EVERY`).
fn record_error(
    counts: &mut [u64; 4],
    slot: &mut Option<FileError>,
    path: &Path,
    op: &'static str,
    err: &io::Error,
) {
    let reason = ErrorReason::of(err);
    counts[reason as usize] = counts[reason as usize].saturating_add(1);
    let message = format!("{op}: {err}");
    match slot {
        Some(e) if e.reason == reason && e.op == op => {
            e.count = e.count.saturating_add(1);
            e.message = message;
            if e.warned.elapsed() >= WARN_EVERY {
                e.warned = Instant::now();
                tracing::warn!(
                    "{}: {} (failing {} times in a row; kept, retried)",
                    path.display(),
                    e.message,
                    e.count
                );
            }
        }
        _ => {
            tracing::warn!(
                "{}: {message}; its place is kept and it is retried",
                path.display()
            );
            *slot = Some(FileError {
                op,
                reason,
                message,
                count: 1,
                warned: Instant::now(),
            });
        }
    }
}

/// Clears the last error if it came from `op`, which just succeeded.
fn clear_error(slot: &mut Option<FileError>, op: &str, path: &Path) {
    if slot.as_ref().is_some_and(|e| e.op == op) {
        *slot = None;
        tracing::info!("{}: {op} works again", path.display());
    }
}

fn backoff(retry_at: &mut Option<Instant>, delay: &mut Duration) {
    *retry_at = Some(Instant::now() + *delay);
    *delay = (*delay * 2).min(RETRY_MAX);
}

/// Looks for `identity` in the directory of `path` (a file renamed within its directory, as
/// kubelet rotates). Returns its path and size. A file with the same inode but other first
/// bytes is a reused inode, not ours; one that cannot be opened to check is taken as ours.
fn find_in_dir(
    fs: &dyn FileSystem,
    path: &Path,
    identity: &FileIdentity,
) -> Option<(PathBuf, u64)> {
    let id = identity.id();
    let ours = |p: &Path| match fs.open(p) {
        Ok(f) => identity.matches(&f),
        Err(_) => true,
    };
    if let Ok(m) = fs.metadata(path) {
        if m.is_file() && FileId::of(&m) == id {
            return ours(path).then(|| (path.to_path_buf(), m.len()));
        }
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    for item in fs.read_dir(dir).ok()? {
        if item.ino != id.ino || item.is_dir {
            continue;
        }
        if let Ok(m) = fs.metadata(&item.path) {
            if m.is_file() && FileId::of(&m) == id {
                return ours(&item.path).then(|| (item.path.clone(), m.len()));
            }
        }
    }
    None
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
mod model;
