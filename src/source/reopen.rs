//! The one reopen: how a tailed file that has no descriptor is found and opened again, and
//! what it then is. Both readers of tailed files (the registry for metering, the Loki
//! forwarder for its own place) call [`reopen`], so they cannot disagree on it.
//!
//! Owns: the rule "reopen a file by identity" (device and inode, birth time, fingerprint of
//! the first bytes), the truncation-while-closed rule (shorter than the offset, or other first
//! bytes), looking for a renamed file beside its path ([`find_in_dir`]), the difference
//! between "cannot tell now" (an error: keep everything, retry) and "not there" or "not the
//! same file", and the retry delay after a failure ([`Backoff`]).
//!
//! Must not: decide what a caller does with the outcome (the registry forgets a reused
//! inode, the forwarder never decides a file is gone: it waits for the registry's word),
//! hold a descriptor, or read lines.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::cursor::{FileId, FileIdentity, Truncation};
use super::discover::FileSystem;

/// First delay before a file that failed to open is tried again (the daemon's).
pub const RETRY_FIRST: Duration = Duration::from_millis(500);
/// Longest delay between two attempts to open a failing file.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// What [`reopen`] found at (or beside) a file's last path.
#[derive(Debug)]
pub enum Reopened {
    /// The file, confirmed by identity and at least as long as the offset: continue there.
    Continue { file: File, len: u64 },
    /// The same inode, but what was before the offset is not there any more: shorter than
    /// the offset (`Shrunk`: truncated while closed) or other first bytes (`Rewritten`:
    /// rewritten in place, or the inode reused by another file after a delete). The caller
    /// decides between reading it from 0 and forgetting it.
    Restart {
        file: File,
        len: u64,
        why: Truncation,
    },
    /// Not at its path; found by identity beside it (renamed within its directory, as kubelet
    /// rotates): reopen it there. Nothing is opened yet.
    Moved(PathBuf),
    /// Not at its path (gone, or another file has the path now), and not found beside it, or
    /// the directory cannot be searched now. Whether it is gone is the scan's decision, never
    /// this one's: nothing is forgotten here.
    NotThere,
    /// Cannot tell now: opening failed with something other than ENOENT (EACCES, EMFILE,
    /// EIO, ...), or the identity could not be read. Never taken for "another file": the
    /// caller keeps its place and retries after a [`Backoff`].
    Unreadable { op: &'static str, error: io::Error },
}

/// Opens `path` and checks that it is `identity`, to continue at `offset`. Where the path
/// holds nothing or another file, the file is looked for beside it ([`Reopened::Moved`]).
pub fn reopen(fs: &dyn FileSystem, path: &Path, identity: &FileIdentity, offset: u64) -> Reopened {
    let file = match fs.open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return look_beside(fs, path, identity)
        }
        Err(error) => return Reopened::Unreadable { op: "open", error },
    };
    match check_open(&file, identity, offset) {
        Verdict::Continue { len } => Reopened::Continue { file, len },
        Verdict::Restart { len, why } => Reopened::Restart { file, len, why },
        // Another file has this path now (rotated: ours was renamed away).
        Verdict::OtherFile => look_beside(fs, path, identity),
        Verdict::Unreadable { op, error } => Reopened::Unreadable { op, error },
    }
}

/// What the rule says about a file already open (by whoever opened it).
#[derive(Debug)]
pub enum Verdict {
    /// Confirmed by identity, at least as long as the offset.
    Continue { len: u64 },
    /// Same inode, but shorter than the offset or with other first bytes.
    Restart { len: u64, why: Truncation },
    /// Another inode.
    OtherFile,
    /// Cannot tell now (the identity could not be read): never taken for another file.
    Unreadable { op: &'static str, error: io::Error },
}

/// The rule on a file already open: the part of [`reopen`] after the open, for a reader
/// handed a descriptor by another (the forwarder, by the registry's `Opened`).
pub fn check_open(file: &File, identity: &FileIdentity, offset: u64) -> Verdict {
    let same = match identity.check(file) {
        Ok(same) => same,
        // A transient read error is never taken for a rewrite.
        Err(error) => return Verdict::Unreadable { op: "read", error },
    };
    let len = match file.metadata() {
        Ok(m) if !same && FileId::of(&m) != identity.id() => return Verdict::OtherFile,
        Ok(m) => m.len(),
        Err(error) => return Verdict::Unreadable { op: "stat", error },
    };
    match (same, len < offset) {
        (true, false) => Verdict::Continue { len },
        (true, true) => Verdict::Restart {
            len,
            why: Truncation::Shrunk { size: len },
        },
        (false, _) => Verdict::Restart {
            len,
            why: Truncation::Rewritten,
        },
    }
}

fn look_beside(fs: &dyn FileSystem, path: &Path, identity: &FileIdentity) -> Reopened {
    match find_in_dir(fs, path, identity) {
        Ok(Some((found, _))) if found != path => Reopened::Moved(found),
        // Still at its path (the open failed for a moment) is for the next attempt, as is a
        // directory that cannot be searched now.
        _ => Reopened::NotThere,
    }
}

/// Looks for `identity` in the directory of `path` (a file renamed within its directory, as
/// kubelet rotates). Returns its path and size. A file with the same inode but other first
/// bytes is a reused inode, not ours; one that cannot be opened to check is taken as ours
/// (whoever opens it then checks it through [`reopen`]).
pub fn find_in_dir(
    fs: &dyn FileSystem,
    path: &Path,
    identity: &FileIdentity,
) -> io::Result<Option<(PathBuf, u64)>> {
    let id = identity.id();
    let ours = |p: &Path| match fs.open(p) {
        Ok(f) => identity.matches(&f),
        Err(_) => true,
    };
    if let Ok(m) = fs.metadata(path) {
        if m.is_file() && FileId::of(&m) == id {
            return Ok(ours(path).then(|| (path.to_path_buf(), m.len())));
        }
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let items = match fs.read_dir(dir) {
        Ok(items) => items,
        // The directory itself is gone: so is the file, as far as anyone can find it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    for item in items {
        if item.ino != id.ino || item.is_dir {
            continue;
        }
        if let Ok(m) = fs.metadata(&item.path) {
            if m.is_file() && FileId::of(&m) == id {
                return Ok(ours(&item.path).then(|| (item.path.clone(), m.len())));
            }
        }
    }
    Ok(None)
}

/// When a file that failed to open is tried again: `first` after the first failure, doubling
/// up to [`RETRY_MAX`]; a success starts it over.
///
/// Attempts are counted, not only timed: with a zero first delay (the model tests) every
/// attempt is due at once, so no outcome depends on how fast the machine is.
#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    delay: Duration,
    retry_at: Option<Instant>,
}

impl Backoff {
    pub fn new(first: Duration) -> Backoff {
        Backoff {
            first,
            delay: first,
            retry_at: None,
        }
    }

    /// Whether an attempt may be made at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.delay.is_zero() || self.retry_at.is_none_or(|t| now >= t)
    }

    /// An attempt failed: the next one waits the current delay, which then doubles.
    pub fn failed(&mut self) {
        self.retry_at = Some(Instant::now() + self.delay);
        self.delay = (self.delay * 2).min(RETRY_MAX);
    }

    /// An attempt succeeded: the next failure waits `first` again.
    pub fn succeeded(&mut self) {
        self.retry_at = None;
        self.delay = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::RealFs;
    use std::io::Write;

    fn identity_of(path: &Path) -> FileIdentity {
        FileIdentity::read(&File::open(path).unwrap()).unwrap()
    }

    struct Failing(i32);
    impl FileSystem for Failing {
        fn open(&self, _: &Path) -> io::Result<File> {
            Err(io::Error::from_raw_os_error(self.0))
        }
    }

    #[test]
    fn the_same_file_continues_at_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, "one\ntwo\n").unwrap();
        let id = identity_of(&p);
        match reopen(&RealFs, &p, &id, 4) {
            Reopened::Continue { len, .. } => assert_eq!(len, 8),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn shorter_than_the_offset_is_a_truncation_and_other_first_bytes_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        // Fingerprinted on its first line, read to the end of its second.
        std::fs::write(&p, "one\n").unwrap();
        let id = identity_of(&p);
        std::fs::write(&p, "one\ntwo\n").unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(4).unwrap();
        assert!(matches!(
            reopen(&RealFs, &p, &id, 8),
            Reopened::Restart {
                why: Truncation::Shrunk { size: 4 },
                ..
            }
        ));
        f.set_len(0).unwrap();
        (&f).write_all(b"ONE\ntwo\n").unwrap();
        assert!(matches!(
            reopen(&RealFs, &p, &id, 0),
            Reopened::Restart {
                why: Truncation::Rewritten,
                ..
            }
        ));
    }

    #[test]
    fn a_rotated_file_is_found_beside_its_path_and_a_new_one_there_is_not_taken_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, "one\n").unwrap();
        let id = identity_of(&p);
        std::fs::rename(&p, dir.path().join("a.log.1")).unwrap();
        match reopen(&RealFs, &p, &id, 4) {
            Reopened::Moved(to) => assert_eq!(to, dir.path().join("a.log.1")),
            other => panic!("{other:?}"),
        }
        std::fs::write(&p, "new\n").unwrap();
        assert!(matches!(reopen(&RealFs, &p, &id, 4), Reopened::Moved(_)));
        std::fs::remove_file(dir.path().join("a.log.1")).unwrap();
        assert!(matches!(reopen(&RealFs, &p, &id, 4), Reopened::NotThere));
    }

    #[test]
    fn a_failing_open_is_cannot_tell_now_never_another_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        std::fs::write(&p, "one\n").unwrap();
        let id = identity_of(&p);
        for errno in [libc::EACCES, libc::EMFILE, libc::EIO] {
            match reopen(&Failing(errno), &p, &id, 4) {
                Reopened::Unreadable { op: "open", error } => {
                    assert_eq!(error.raw_os_error(), Some(errno))
                }
                other => panic!("{errno}: {other:?}"),
            }
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_ceiling_and_starts_over_after_a_success() {
        let mut b = Backoff::new(Duration::from_millis(500));
        let now = Instant::now();
        assert!(b.due(now));
        b.failed();
        assert!(!b.due(now), "the first retry waits");
        for _ in 0..10 {
            b.failed();
        }
        assert_eq!(b.delay, RETRY_MAX);
        b.succeeded();
        assert!(b.due(now));
        assert_eq!(b.delay, Duration::from_millis(500));
        let mut zero = Backoff::new(Duration::ZERO);
        zero.failed();
        assert!(
            zero.due(now),
            "no delay: due at once, whatever the clock says"
        );
    }
}
