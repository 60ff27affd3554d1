//! Unit tests of the forwarder's files: one state change each, driven by hand-made registry
//! events and a file system that fails on demand.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Files, ForwarderStatus, Forwarding, Sink};
use crate::config::Config;
use crate::decode::Decoded;
use crate::source::{
    DescriptorCount, FileEvent, FileId, FileIdentity, FileSystem, RealFs, SharedFile,
};

/// Fails every open with `errno` while it is set; counts the opens tried.
#[derive(Clone, Default)]
struct Flaky {
    errno: Arc<Mutex<Option<i32>>>,
    opens: Arc<AtomicUsize>,
}

impl FileSystem for Flaky {
    fn open(&self, path: &Path) -> io::Result<File> {
        self.opens.fetch_add(1, Ordering::Relaxed);
        match *self.errno.lock().unwrap() {
            Some(e) => Err(io::Error::from_raw_os_error(e)),
            None => RealFs.open(path),
        }
    }
}

#[derive(Default)]
struct Lines(Vec<(FileId, String)>);

impl Sink for Lines {
    fn full(&self) -> bool {
        false
    }
    fn line(&mut self, id: FileId, _: &str, d: Decoded<'_>) {
        if let Decoded::Line(l) = d {
            self.0.push((id, l.text.to_string()));
        }
    }
}

struct Setup {
    dir: tempfile::TempDir,
    files: Files,
    fs: Flaky,
    count: DescriptorCount,
}

fn setup(retry_first: Duration) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let count = DescriptorCount::default();
    let mut files = Files::new(
        &Config::default(),
        "node",
        Vec::new(),
        Arc::new(ForwarderStatus::default()),
        (count.clone(), 8),
    );
    let fs = Flaky::default();
    files.fs = Box::new(fs.clone());
    files.retry_first = retry_first;
    Setup {
        dir,
        files,
        fs,
        count,
    }
}

impl Setup {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn append(&self, name: &str, text: &str) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(name))
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    /// The registry opens `name` (from `committed`) and tells the forwarder.
    fn opened(&mut self, name: &str, committed: u64) -> FileId {
        let file = SharedFile::open(&self.path(name), &self.count).unwrap();
        let identity = FileIdentity::read(file.file()).unwrap();
        let id = identity.id();
        self.files.apply(FileEvent::Opened {
            identity,
            path: self.path(name),
            labels: None,
            file,
            committed,
        });
        id
    }

    /// Reads what there is; Loki accepts it.
    fn deliver(&mut self) -> Vec<String> {
        let mut lines = Lines::default();
        self.files.read(&mut lines);
        let marks = self.files.marks();
        self.files.acknowledge(marks);
        lines.0.into_iter().map(|(_, l)| l).collect()
    }

    /// Reads what there is; Loki does not answer.
    fn read_unanswered(&mut self) -> Vec<String> {
        let mut lines = Lines::default();
        self.files.read(&mut lines);
        lines.0.into_iter().map(|(_, l)| l).collect()
    }

    fn state(&self, id: FileId) -> &'static str {
        match self.files.files.get(&id).map(|f| &f.state) {
            Some(Forwarding::Open { .. }) => "open",
            Some(Forwarding::Parked) => "parked",
            Some(Forwarding::Behind { .. }) => "behind",
            None => "none",
        }
    }

    fn acked(&self, id: FileId) -> u64 {
        self.files.files.get(&id).map_or(0, |f| f.acked)
    }

    /// The registry closes the file (idle) while Loki has not all of it.
    fn closed_behind(&mut self, name: &str) -> FileId {
        self.append(name, "one\ntwo\n");
        let id = self.opened(name, 0);
        assert_eq!(self.deliver(), ["one", "two"]);
        self.append(name, "three\n");
        self.files.apply(FileEvent::Closed {
            id,
            left: false,
            path: self.path(name),
        });
        assert_eq!(self.state(id), "behind");
        assert_eq!(self.count.open(), 0, "the descriptor is given back");
        id
    }
}

#[test]
fn a_file_closed_before_everything_was_read_is_reopened_by_identity_and_read_on() {
    let mut s = setup(Duration::ZERO);
    let id = s.closed_behind("a.log");
    assert_eq!(s.deliver(), ["three"]);
    assert_eq!(s.acked(id), 14);
    assert_eq!(
        s.state(id),
        "parked",
        "delivered: the descriptor is dropped"
    );
    assert_eq!(s.count.open(), 0);
}

#[test]
fn transient_open_failures_keep_the_place_and_back_off() {
    let mut s = setup(Duration::from_secs(3600));
    let id = s.closed_behind("a.log");
    for errno in [libc::EACCES, libc::EMFILE, libc::ENOENT] {
        *s.fs.errno.lock().unwrap() = Some(errno);
        s.files.files.get_mut(&id).unwrap().state = Forwarding::Behind {
            retry: crate::source::Backoff::new(Duration::from_secs(3600)),
        };
        let before = s.fs.opens.load(Ordering::Relaxed);
        assert!(s.deliver().is_empty());
        assert!(s.fs.opens.load(Ordering::Relaxed) > before, "tried once");
        assert_eq!(s.state(id), "behind", "errno {errno}: still behind");
        assert_eq!(s.acked(id), 8, "errno {errno}: its place is kept");
        let tried = s.fs.opens.load(Ordering::Relaxed);
        assert!(s.deliver().is_empty());
        assert_eq!(
            s.fs.opens.load(Ordering::Relaxed),
            tried,
            "errno {errno}: not tried again before its backoff"
        );
    }
    *s.fs.errno.lock().unwrap() = None;
    s.files.files.get_mut(&id).unwrap().state = Forwarding::Behind {
        retry: crate::source::Backoff::new(Duration::ZERO),
    };
    assert_eq!(s.deliver(), ["three"]);
}

#[test]
fn a_file_rotated_while_closed_is_followed_beside_its_path_and_the_new_one_not_taken_for_it() {
    let mut s = setup(Duration::ZERO);
    let id = s.closed_behind("a.log");
    std::fs::rename(s.path("a.log"), s.path("a.log.1")).unwrap();
    s.append("a.log", "NEW FILE\n");
    assert_eq!(s.deliver(), ["three"]);
    assert_eq!(s.files.files[&id].path, s.path("a.log.1"));
}

#[test]
fn a_file_rewritten_while_closed_is_never_read_at_its_old_offset() {
    let mut s = setup(Duration::ZERO);
    let id = s.closed_behind("a.log");
    // Same inode, other content, longer than the old offset.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(s.path("a.log"))
        .unwrap();
    f.set_len(0).unwrap();
    (&f).write_all(b"OTHER\nCONTENT\nHERE\n").unwrap();
    assert!(s.deliver().is_empty(), "no byte of the other content");
    assert_eq!(s.state(id), "parked", "the registry's Opened brings it");
    let lost = s.files.status.stats.lost_bytes.lock().unwrap().clone();
    assert_eq!(lost.values().sum::<u64>(), 6, "{lost:?}");
}

#[test]
fn the_registrys_opened_continues_a_closed_file_at_the_forwarders_own_place() {
    let mut s = setup(Duration::from_secs(3600));
    let id = s.closed_behind("a.log");
    // Metering has read it all (committed 14); Loki has 8: the forwarder continues at 8.
    s.opened("a.log", 14);
    assert_eq!(s.deliver(), ["three"]);
    assert_eq!(s.acked(id), 14);
}

#[test]
fn a_file_shrunk_while_closed_is_read_from_0_when_the_registry_opens_it() {
    let mut s = setup(Duration::from_secs(3600));
    s.append("a.log", "one\n");
    let id = s.opened("a.log", 0);
    s.append("a.log", "two\nthree\n");
    assert_eq!(s.deliver(), ["one", "two", "three"]);
    s.files.apply(FileEvent::Closed {
        id,
        left: false,
        path: s.path("a.log"),
    });
    assert_eq!(s.state(id), "parked");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(s.path("a.log"))
        .unwrap();
    f.set_len(4).unwrap();
    s.opened("a.log", 0);
    s.append("a.log", "four\n");
    assert_eq!(s.deliver(), ["one", "four"]);
}

#[test]
fn a_batch_in_flight_at_a_restart_is_sent_again_from_the_acknowledged_offset() {
    let mut s = setup(Duration::ZERO);
    s.append("a.log", "one\n");
    let id = s.opened("a.log", 0);
    assert_eq!(s.deliver(), ["one"]);
    s.append("a.log", "two\n");
    assert_eq!(s.read_unanswered(), ["two"]);
    let saved = s.files.positions().0;
    assert_eq!(saved[0].offset, 4, "only what Loki accepted is saved");
    let mut again = Files::new(
        &Config::default(),
        "node",
        saved,
        Arc::new(ForwarderStatus::default()),
        (s.count.clone(), 8),
    );
    std::mem::swap(&mut s.files, &mut again);
    drop(again);
    s.opened("a.log", 8);
    assert_eq!(s.deliver(), ["two"]);
    assert_eq!(s.acked(id), 8);
}
