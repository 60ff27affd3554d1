//! Tailing: discovery by globs, file identity, reading appended lines, rotation.
//!
//! Owns: which files are read and from which offset. Files are identified by (device, inode)
//! plus a fingerprint of their first bytes, never by path, so:
//! - rename-and-create (kubelet: `0.log` → `0.log.<time>`, a new `0.log`): the renamed file keeps
//!   its identity and is read to its end through the open handle before it is let go; the new
//!   file is a new identity, read from 0;
//! - copytruncate: a file whose size drops below what was read, or whose first bytes change, is
//!   read again from 0;
//! - a deleted file is read to its end through the open handle, then let go;
//! - after a restart, a saved file that was renamed while the daemon was down is found again in
//!   its directory by identity and read to its end.
//!
//! Each file carries a caller-owned `T` (the decoder's partial-line state); the caller says
//! after each line whether the offset past it is a safe resume point (no partial pending), and
//! only those offsets are committed. Knows nothing of JSON or envelopes.

use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use super::lines::{AtEof, Line, LineReader};
use crate::config::StartAt;
use crate::state::{fingerprint, FileIdentity, FileState};

/// Bytes hashed for a file's fingerprint (fewer while the file is shorter).
const FINGERPRINT_BYTES: usize = 256;
/// Depth limit for `**` in include globs.
const MAX_WALK_DEPTH: usize = 16;

/// Kubernetes metadata from a pod-log path `/var/log/pods/<ns>_<pod>_<uid>/<container>/N.log`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodLabels {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

impl PodLabels {
    pub fn from_path(path: &Path) -> Option<PodLabels> {
        let container = path.parent()?;
        let pod_dir = container.parent()?.file_name()?.to_str()?;
        let mut parts = pod_dir.splitn(3, '_');
        let (namespace, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
        if namespace.is_empty() || pod.is_empty() || uid.is_empty() {
            return None;
        }
        Some(PodLabels {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            container: container.file_name()?.to_str()?.to_string(),
        })
    }
}

/// What the caller learns about the file a line came from.
#[derive(Clone, Debug)]
pub struct FileMeta {
    pub path: PathBuf,
    pub labels: Option<PodLabels>,
}

/// Where one tailed file stands, for `/status` and lag metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStatus {
    pub path: PathBuf,
    pub labels: Option<PodLabels>,
    pub dev: u64,
    pub ino: u64,
    /// Committed offset: every line before it is counted.
    pub offset: u64,
    pub size: u64,
    /// Renamed away or deleted: read to its end, then let go.
    pub draining: bool,
}

impl FileStatus {
    pub fn lag_bytes(&self) -> u64 {
        self.size.saturating_sub(self.offset)
    }
}

pub struct TailOptions {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub start_at: StartAt,
    pub glob_interval: Duration,
    /// Physical line limit for the line reader.
    pub max_line: usize,
}

struct Tracked<T> {
    meta: FileMeta,
    identity: FileIdentity,
    reader: LineReader<File>,
    committed: u64,
    size: u64,
    gone_since: Option<Instant>,
    sink: T,
    /// A second handle for an independent reader (Loki), valid after rename or delete.
    handle: Arc<File>,
    /// Where that reader starts: its saved offset, else where this reader started.
    second_start: u64,
}

/// A file as a second, independent reader (the Loki forwarder) sees it: its own handle, read
/// with positional reads so it never moves this reader's position.
#[derive(Clone, Debug)]
pub struct FileHandle {
    pub meta: FileMeta,
    pub dev: u64,
    pub ino: u64,
    /// The whole identity, so a second reader behind at shutdown can be saved and found again.
    pub identity: FileIdentity,
    pub file: Arc<File>,
    pub start: u64,
}

pub struct Tailer<T> {
    include: GlobSet,
    exclude: GlobSet,
    /// (literal directory prefix, max depth below it) per include pattern.
    roots: Vec<(PathBuf, usize)>,
    opts: TailOptions,
    files: Vec<Tracked<T>>,
    /// Saved positions not yet matched to an open file.
    saved: Vec<FileState>,
    first_scan_done: bool,
    /// No state existed: files present at the first scan start at `start_at`.
    first_start: bool,
    last_scan: Option<Instant>,
    bytes_read: u64,
    /// Makes the caller's per-file state for a new (or truncated) file.
    make: Box<dyn Fn() -> T + Send>,
}

pub(crate) fn glob(pattern: &str) -> Result<globset::Glob, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(true).build()
}

impl<T> Tailer<T> {
    /// `saved` are the positions from the state file; `None` means the very first start.
    /// `make` creates the per-file state handed to `poll`'s callback.
    pub fn new(
        opts: TailOptions,
        saved: Option<Vec<FileState>>,
        make: impl Fn() -> T + Send + 'static,
    ) -> Result<Self, globset::Error> {
        let mut inc = GlobSetBuilder::new();
        let mut roots = Vec::new();
        for p in &opts.include {
            inc.add(glob(p)?);
            roots.push(literal_root(p));
        }
        let mut exc = GlobSetBuilder::new();
        for p in &opts.exclude {
            exc.add(glob(p)?);
        }
        Ok(Tailer {
            include: inc.build()?,
            exclude: exc.build()?,
            roots,
            opts,
            files: Vec::new(),
            first_start: saved.is_none(),
            saved: saved.unwrap_or_default(),
            first_scan_done: false,
            last_scan: None,
            bytes_read: 0,
            make: Box::new(make),
        })
    }

    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    pub fn files_watched(&self) -> usize {
        self.files.len()
    }

    /// Reads what is available: rescans the globs when due, then up to `budget` lines per
    /// file. `on_line` returns whether the offset after the line is a safe resume point.
    /// Returns the number of lines handed out.
    pub fn poll<F>(&mut self, budget: usize, mut on_line: F) -> usize
    where
        F: FnMut(&FileMeta, &mut T, Line<'_>) -> bool,
    {
        let due = self
            .last_scan
            .is_none_or(|t| t.elapsed() >= self.opts.glob_interval);
        if due {
            self.rescan();
        }
        let mut total = 0;
        for f in &mut self.files {
            if due {
                check_truncation(f, &self.make);
            }
            let before = f.reader.bytes_read();
            let mut n = 0;
            while n < budget {
                match f.reader.next_line() {
                    Ok(Some(line)) => {
                        let end = match &line {
                            Line::Complete { end, .. } | Line::TooLong { end } => *end,
                        };
                        if on_line(&f.meta, &mut f.sink, line) {
                            f.committed = end;
                        }
                        n += 1;
                    }
                    Ok(None) => {
                        f.reader.clear_eof();
                        break;
                    }
                    Err(e) => {
                        tracing::warn!("{}: read error: {e}", f.meta.path.display());
                        f.reader.clear_eof();
                        break;
                    }
                }
            }
            self.bytes_read += f.reader.bytes_read() - before;
            f.size = f
                .size
                .max(f.reader.offset() + f.reader.pending_bytes() as u64);
            total += n;
        }
        // Let go of files renamed away or deleted once they are read to the end and quiet.
        let grace = (self.opts.glob_interval * 2).max(Duration::from_secs(2));
        self.files.retain(|f| {
            let done = f.gone_since.is_some_and(|t| t.elapsed() >= grace) && at_end(f);
            if done {
                tracing::info!(
                    "{}: rotated away or deleted, read to its end",
                    f.meta.path.display()
                );
            }
            !done
        });
        total
    }

    /// The committed position of every open file, for the state file.
    pub fn positions(&mut self) -> Vec<FileState> {
        let mut out: Vec<FileState> = self
            .files
            .iter_mut()
            .map(|f| {
                refresh_fingerprint(f);
                FileState {
                    path: f.meta.path.clone(),
                    identity: f.identity.clone(),
                    offset: f.committed,
                    // Where a second reader that has not taken the file yet would start; the
                    // daemon replaces it with what Loki accepted, or clears it without Loki.
                    loki_offset: Some(f.second_start),
                }
            })
            .collect();
        // Saved files not found yet (e.g. a directory that is briefly missing) keep their place.
        out.extend(self.saved.iter().cloned());
        out
    }

    /// Handles of every open file for a second reader.
    pub fn handles(&self) -> Vec<FileHandle> {
        self.files
            .iter()
            .map(|f| FileHandle {
                meta: f.meta.clone(),
                dev: f.identity.dev,
                ino: f.identity.ino,
                identity: f.identity.clone(),
                file: f.handle.clone(),
                start: f.second_start,
            })
            .collect()
    }

    pub fn statuses(&self) -> Vec<FileStatus> {
        self.files
            .iter()
            .map(|f| FileStatus {
                path: f.meta.path.clone(),
                labels: f.meta.labels.clone(),
                dev: f.identity.dev,
                ino: f.identity.ino,
                offset: f.committed,
                size: f.size,
                draining: f.gone_since.is_some(),
            })
            .collect()
    }

    fn rescan(&mut self) {
        self.last_scan = Some(Instant::now());
        let mut found = Vec::new();
        for (root, depth) in &self.roots {
            walk(root, *depth, &mut |p| {
                if self.include.is_match(p) && !self.excluded(p) {
                    found.push(p.to_path_buf());
                }
            });
        }
        found.sort();
        found.dedup();
        let mut seen = Vec::with_capacity(found.len());
        for path in found {
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            if !meta.is_file() {
                continue;
            }
            let id = (meta.dev(), meta.ino());
            seen.push(id);
            if let Some(f) = self
                .files
                .iter_mut()
                .find(|f| (f.identity.dev, f.identity.ino) == id)
            {
                if f.meta.path != path {
                    f.meta.labels = PodLabels::from_path(&path);
                    f.meta.path = path;
                }
                f.gone_since = None;
                continue;
            }
            if let Err(e) = self.open(&path, meta.len(), None) {
                tracing::warn!("{}: cannot open: {e}", path.display());
            }
        }
        let now = Instant::now();
        for f in &mut self.files {
            if !seen.contains(&(f.identity.dev, f.identity.ino)) {
                f.gone_since.get_or_insert(now);
            }
        }
        if !self.first_scan_done {
            self.first_scan_done = true;
            self.find_renamed_while_down();
        }
    }

    /// Saved files that no glob matched: renamed (rotated) while the daemon was down. Look for
    /// their identity in their old directory and read them to the end.
    fn find_renamed_while_down(&mut self) {
        let saved = std::mem::take(&mut self.saved);
        for s in saved {
            let dir = s.path.parent().unwrap_or(Path::new("."));
            let mut hit = None;
            if let Ok(entries) = fs::read_dir(dir) {
                for e in entries.flatten() {
                    if let Ok(m) = e.metadata() {
                        if m.is_file() && m.dev() == s.identity.dev && m.ino() == s.identity.ino {
                            hit = Some((e.path(), m.len()));
                            break;
                        }
                    }
                }
            }
            match hit {
                Some((path, len)) => {
                    if let Err(e) = self.open(&path, len, Some(&s)) {
                        tracing::warn!("{}: cannot open: {e}", path.display());
                    } else if let Some(f) = self.files.last_mut() {
                        f.gone_since = Some(Instant::now());
                        tracing::info!("{}: rotated while stopped, reading to its end", path.display());
                    }
                }
                None => tracing::warn!(
                    "{}: gone since the last run (deleted); lines after offset {} could not be read",
                    s.path.display(),
                    s.offset
                ),
            }
        }
    }

    fn excluded(&self, p: &Path) -> bool {
        self.exclude.is_match(p)
            || p.file_name()
                .is_some_and(|n| self.exclude.is_match(Path::new(n)))
    }

    /// Opens a file and decides where to start: its saved offset when its identity matches,
    /// the last line boundary for a file present at the very first start with `start_at =
    /// "end"`, else 0.
    fn open(&mut self, path: &Path, len: u64, saved: Option<&FileState>) -> io::Result<()> {
        let mut file = File::open(path)?;
        let meta = file.metadata()?;
        let (fp, fp_len) = read_fingerprint(&file, FINGERPRINT_BYTES)?;
        let identity = FileIdentity {
            dev: meta.dev(),
            ino: meta.ino(),
            fingerprint: fp,
            fingerprint_len: fp_len as u32,
        };
        let saved = saved.cloned().or_else(|| {
            let i = self
                .saved
                .iter()
                .position(|s| same_file(&s.identity, &file, &identity))?;
            Some(self.saved.swap_remove(i))
        });
        let second_saved = saved
            .as_ref()
            .and_then(|s| s.loki_offset)
            .filter(|o| *o <= len);
        let start = match saved {
            Some(s) if s.offset <= len => s.offset,
            Some(s) => {
                tracing::warn!(
                    "{}: shorter than its saved offset {} (truncated while stopped); reading from 0",
                    path.display(),
                    s.offset
                );
                0
            }
            None if self.first_start
                && !self.first_scan_done
                && self.opts.start_at == StartAt::End =>
            {
                last_line_boundary(&file, len)?
            }
            None => 0,
        };
        file.seek(SeekFrom::Start(start))?;
        let handle = Arc::new(file.try_clone()?);
        tracing::info!("{}: tailing from offset {start}", path.display());
        self.files.push(Tracked {
            meta: FileMeta {
                path: path.to_path_buf(),
                labels: PodLabels::from_path(path),
            },
            identity,
            reader: LineReader::new(file, start, self.opts.max_line, AtEof::KeepPartial),
            committed: start,
            size: len,
            gone_since: None,
            sink: (self.make)(),
            handle,
            second_start: second_saved.unwrap_or(start),
        });
        Ok(())
    }
}

/// Whether the saved identity is this file: same device and inode, and the same first bytes.
fn same_file(saved: &FileIdentity, file: &File, now: &FileIdentity) -> bool {
    if (saved.dev, saved.ino) != (now.dev, now.ino) {
        return false;
    }
    match read_fingerprint(file, saved.fingerprint_len as usize) {
        Ok((fp, len)) => len == saved.fingerprint_len as usize && fp == saved.fingerprint,
        Err(_) => false,
    }
}

fn read_fingerprint(file: &File, n: usize) -> io::Result<(u64, usize)> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match file.read_at(&mut buf[got..], got as u64) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((fingerprint(&buf[..got]), got))
}

fn refresh_fingerprint<T>(f: &mut Tracked<T>) {
    if (f.identity.fingerprint_len as usize) < FINGERPRINT_BYTES
        && f.size > f.identity.fingerprint_len as u64
    {
        if let Ok((fp, len)) = read_fingerprint(f.reader.get_ref(), FINGERPRINT_BYTES) {
            f.identity.fingerprint = fp;
            f.identity.fingerprint_len = len as u32;
        }
    }
}

/// Copytruncate: the file shrank below what was read, or its first bytes changed.
fn check_truncation<T>(f: &mut Tracked<T>, make: &dyn Fn() -> T) {
    let Ok(meta) = f.reader.get_ref().metadata() else {
        return;
    };
    let read_to = f.reader.offset() + f.reader.pending_bytes() as u64;
    let rewritten = match read_fingerprint(f.reader.get_ref(), f.identity.fingerprint_len as usize)
    {
        Ok((fp, len)) => len < f.identity.fingerprint_len as usize || fp != f.identity.fingerprint,
        Err(_) => false,
    };
    if meta.len() < read_to || rewritten {
        tracing::info!(
            "{}: truncated (size {} < read {read_to}, or first bytes changed); reading from 0",
            f.meta.path.display(),
            meta.len()
        );
        if f.reader.get_mut().seek(SeekFrom::Start(0)).is_ok() {
            f.reader.reset(0);
            f.committed = 0;
            f.sink = make();
            if let Ok((fp, len)) = read_fingerprint(f.reader.get_ref(), FINGERPRINT_BYTES) {
                f.identity.fingerprint = fp;
                f.identity.fingerprint_len = len as u32;
            }
        }
    }
    f.size = meta.len();
}

fn at_end<T>(f: &Tracked<T>) -> bool {
    match f.reader.get_ref().metadata() {
        Ok(m) => f.reader.offset() + f.reader.pending_bytes() as u64 >= m.len(),
        Err(_) => true,
    }
}

/// Start for `start_at = "end"`: just past the last `\n`, so a line being written when the
/// daemon starts is counted whole when it completes.
fn last_line_boundary(file: &File, len: u64) -> io::Result<u64> {
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

/// The directory part of a glob before its first wildcard, and how deep below it matches
/// can be.
pub(crate) fn literal_root(pattern: &str) -> (PathBuf, usize) {
    let mut root = PathBuf::new();
    let mut depth = 0;
    let mut wild = false;
    for c in Path::new(pattern).components() {
        let s = c.as_os_str().to_string_lossy();
        if !wild && !s.contains(['*', '?', '[', '{']) {
            root.push(c);
            continue;
        }
        wild = true;
        depth += if s == "**" { MAX_WALK_DEPTH } else { 1 };
    }
    if !wild {
        // A literal path: its parent is the root, the file one level below.
        let parent = root.parent().map(Path::to_path_buf).unwrap_or_default();
        return (
            if parent.as_os_str().is_empty() {
                ".".into()
            } else {
                parent
            },
            1,
        );
    }
    if root.as_os_str().is_empty() {
        root = PathBuf::from(".");
    }
    (root, depth.min(MAX_WALK_DEPTH))
}

pub(crate) fn walk(dir: &Path, depth: usize, found: &mut dyn FnMut(&Path)) {
    if depth == 0 {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = if dir == Path::new(".") {
            PathBuf::from(e.file_name())
        } else {
            e.path()
        };
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            walk(&path, depth - 1, found);
        } else {
            found(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_labels_from_path() {
        let l = PodLabels::from_path(Path::new(
            "/var/log/pods/envoy-gateway-system_envoy-default-gw-5d8f_3f9c2a1e-7b1d/envoy/0.log",
        ))
        .unwrap();
        assert_eq!(l.namespace, "envoy-gateway-system");
        assert_eq!(l.pod, "envoy-default-gw-5d8f");
        assert_eq!(l.container, "envoy");
        assert_eq!(
            PodLabels::from_path(Path::new("/var/log/envoy/access.log")),
            None
        );
    }

    #[test]
    fn literal_roots() {
        assert_eq!(
            literal_root("/var/log/pods/envoy-gateway-system_*/envoy/*.log"),
            (PathBuf::from("/var/log/pods"), 3)
        );
        assert_eq!(
            literal_root("/var/log/envoy/access.log"),
            (PathBuf::from("/var/log/envoy"), 1)
        );
        assert_eq!(literal_root("samples/**/*.log").0, PathBuf::from("samples"));
        assert_eq!(literal_root("*.log"), (PathBuf::from("."), 1));
    }
}
