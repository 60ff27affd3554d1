//! The consistent cut: every file's identity and committed offset together with the counters
//! that exactly those lines produced, saved to and loaded from one versioned file.
//!
//! Owns: the on-disk format and its atomic replacement (write a temp file, fsync it, rename it
//! over the old one, fsync the directory), and recovery from a corrupt or unreadable file
//! (reported and moved aside, never silently ignored). Must not decide what is in the cut: the
//! daemon takes it under one lock so offsets and counters agree. Also owns the lock that keeps
//! a second agent off the same directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::aggregate::Snapshot;
use crate::source::{FileIdentity, FilePosition};

/// Bump when the format changes incompatibly; older versions are migrated where known
/// (version 1), others are moved aside, never misread.
pub const STATE_VERSION: u32 = 2;
pub const STATE_FILE: &str = "state.json";
pub const LOCK_FILE: &str = "lock";

/// Everything the daemon needs to continue exactly where it stopped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    pub version: u32,
    pub saved_at_ns: i64,
    /// Start time of every cumulative series (OTLP `start_time_unix_nano`): kept across
    /// restarts so exported counters continue instead of resetting.
    pub start_time_ns: i64,
    /// Every identity the registry knows (tailed, closed, or let go and remembered) with the
    /// offset up to which its lines are in `counters`.
    pub files: Vec<FilePosition>,
    /// Other readers of the same files, by name (e.g. `loki`), with the offsets up to which
    /// they have delivered.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub forwarders: BTreeMap<String, Vec<FilePosition>>,
    pub counters: std::sync::Arc<Snapshot>,
}

/// Version 1 (before the registry remembered let-go files): one `loki_offset` per file.
#[derive(Deserialize)]
struct StateFileV1 {
    saved_at_ns: i64,
    start_time_ns: i64,
    files: Vec<FileStateV1>,
    counters: Snapshot,
}

#[derive(Deserialize)]
struct FileStateV1 {
    path: PathBuf,
    identity: FileIdentity,
    offset: u64,
    #[serde(default)]
    loki_offset: Option<u64>,
}

impl From<StateFileV1> for StateFile {
    fn from(v1: StateFileV1) -> StateFile {
        let loki: Vec<FilePosition> = v1
            .files
            .iter()
            .filter_map(|f| {
                Some(FilePosition {
                    path: f.path.clone(),
                    identity: f.identity.clone(),
                    offset: f.loki_offset?,
                    let_go_ns: None,
                    unopened: false,
                    align: false,
                })
            })
            .collect();
        let mut forwarders = BTreeMap::new();
        if !loki.is_empty() {
            forwarders.insert("loki".to_string(), loki);
        }
        StateFile {
            version: STATE_VERSION,
            saved_at_ns: v1.saved_at_ns,
            start_time_ns: v1.start_time_ns,
            files: v1
                .files
                .into_iter()
                .map(|f| FilePosition {
                    path: f.path,
                    identity: f.identity,
                    offset: f.offset,
                    let_go_ns: None,
                    unopened: false,
                    align: false,
                })
                .collect(),
            forwarders,
            counters: v1.counters.into(),
        }
    }
}

/// What loading found.
#[derive(Debug)]
pub enum Loaded {
    /// No state yet: the very first start.
    Fresh,
    Resumed(Box<StateFile>),
    /// A state file that could not be used; it was moved to `moved_to` so the daemon can start.
    Corrupt {
        error: String,
        moved_to: PathBuf,
    },
}

pub fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// Loads the state from `dir`. An unparsable or wrong-version file is moved aside
/// (`state.json.corrupt-<unix seconds>`) and reported. A file that cannot be read (permission
/// denied, an I/O error) is an error and stays where it is: it may be perfectly good (e.g. one
/// written by an agent that ran as another uid), and starting fresh would reset every counter
/// and skip the lines written since it was saved.
pub fn load(dir: &Path) -> io::Result<Loaded> {
    let path = state_path(dir);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::Fresh),
        Err(e) => {
            let mut msg = format!("{}: cannot read: {e}", path.display());
            if e.kind() == io::ErrorKind::PermissionDenied {
                msg.push_str(&ownership_hint(&path).unwrap_or_default());
            }
            return Err(io::Error::new(e.kind(), msg));
        }
    };
    #[derive(Deserialize)]
    struct Version {
        version: u32,
    }
    let parsed = match serde_json::from_slice::<Version>(&bytes) {
        Ok(Version { version: 1 }) => {
            serde_json::from_slice::<StateFileV1>(&bytes).map(StateFile::from)
        }
        Ok(Version {
            version: STATE_VERSION,
        }) => serde_json::from_slice::<StateFile>(&bytes),
        Ok(Version { version }) => {
            return move_aside(
                &path,
                format!("version {version} (this build reads 1 and {STATE_VERSION})"),
            )
        }
        Err(e) => Err(e),
    };
    match parsed {
        Ok(s) => Ok(Loaded::Resumed(Box::new(s))),
        Err(e) => move_aside(&path, format!("not a valid state file: {e}")),
    }
}

/// The start time of the counters of the agent that keeps its state in `dir` (the
/// `start_time_ns` of its state file: its very first start, kept across restarts), read
/// without taking the lock or changing anything: the agent may be running. For
/// `replay --to live`.
pub fn read_start_time(dir: &Path) -> Result<i64, StartTimeError> {
    let path = state_path(dir);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StartTimeError::Missing { path })
        }
        Err(e) => {
            return Err(StartTimeError::Invalid {
                path,
                error: format!("cannot read: {e}"),
            })
        }
    };
    #[derive(Deserialize)]
    struct Head {
        version: u32,
        start_time_ns: i64,
    }
    match serde_json::from_slice::<Head>(&bytes) {
        Ok(h) if h.version == 1 || h.version == STATE_VERSION => Ok(h.start_time_ns),
        Ok(h) => Err(StartTimeError::Invalid {
            path,
            error: format!(
                "version {} (this build reads 1 and {STATE_VERSION})",
                h.version
            ),
        }),
        Err(e) => Err(StartTimeError::Invalid {
            path,
            error: format!("not a valid state file: {e}"),
        }),
    }
}

/// Why [`read_start_time`] found no start time.
#[derive(Debug)]
pub enum StartTimeError {
    /// No state file: no agent has run with this `state_dir` (on this machine).
    Missing {
        path: PathBuf,
    },
    Invalid {
        path: PathBuf,
        error: String,
    },
}

impl std::fmt::Display for StartTimeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartTimeError::Missing { path } => write!(f, "no state file {}", path.display()),
            StartTimeError::Invalid { path, error } => {
                write!(f, "state file {}: {error}", path.display())
            }
        }
    }
}

fn move_aside(path: &Path, error: String) -> io::Result<Loaded> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let moved_to = path.with_file_name(format!("{STATE_FILE}.corrupt-{secs}"));
    fs::rename(path, &moved_to)?;
    Ok(Loaded::Corrupt { error, moved_to })
}

/// Writes the state atomically: a crash at any moment leaves either the old or the new file.
pub fn save(dir: &Path, state: &StateFile) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let path = state_path(dir);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        // Streamed: at 50,000 series the JSON is ~10 MB that need not be in memory at once.
        let mut w = io::BufWriter::with_capacity(256 * 1024, f);
        serde_json::to_writer(&mut w, state).map_err(io::Error::other)?;
        w.flush()?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    fs::rename(&tmp, &path)?;
    // The rename itself must reach the disk before we rely on it.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The exclusive lock on a state directory, held for the daemon's lifetime (released by the
/// kernel when the process ends, however it ends, so a killed daemon leaves no stale lock).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

/// Why the state directory could not be locked.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it; its pid as it wrote it into the lock file.
    Held {
        path: PathBuf,
        pid: Option<u32>,
    },
    Io {
        path: PathBuf,
        error: io::Error,
    },
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Held { path, pid } => write!(
                f,
                "{} is locked by another tokenmeter ({}); one agent per state_dir",
                path.display(),
                match pid {
                    Some(p) => format!("pid {p}"),
                    None => "pid unknown".to_string(),
                }
            ),
            LockError::Io { path, error } => {
                write!(f, "{}: cannot lock: {error}", path.display())?;
                if error.kind() == io::ErrorKind::PermissionDenied {
                    let dir = path.parent().unwrap_or(path);
                    let hint = ownership_hint(dir).or_else(|| ownership_hint(path));
                    f.write_str(&hint.unwrap_or_default())?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for LockError {}

/// For a permission error in the state directory: when `path` belongs to another uid than the
/// one the agent runs as, says so and how to fix it (the usual cause: a state directory left by
/// an install that ran the agent as another uid, e.g. the earlier 65532 manifests, while the
/// agent now runs as uid 0 without `CAP_DAC_OVERRIDE`, so it is bound by the owner's mode bits).
fn ownership_hint(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path).ok()?;
    // SAFETY: geteuid and getegid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if meta.uid() == uid {
        return None;
    }
    let dir = if meta.is_dir() {
        path
    } else {
        path.parent().unwrap_or(path)
    };
    Some(format!(
        " ({} is owned by uid {} (mode {:o}) and this agent runs as uid {uid}: give the state \
         directory to the agent's uid, e.g. `chown -R {uid}:{gid} {}` on the node; \
         docs/install.md \"Upgrading from the uid-65532 manifests\")",
        path.display(),
        meta.uid(),
        meta.mode() & 0o7777,
        dir.display()
    ))
}

/// Takes the lock on `dir` (`flock` on `dir/lock`) without waiting, and writes this
/// process's pid into the lock file for the message a second daemon prints.
pub fn lock(dir: &Path) -> Result<StateLock, LockError> {
    let path = dir.join(LOCK_FILE);
    let io_err = |error| LockError::Io {
        path: path.clone(),
        error,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let pid = fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            return Err(LockError::Held { path, pid });
        }
        Err(fs::TryLockError::Error(e)) => return Err(io_err(e)),
    }
    file.set_len(0).map_err(io_err)?;
    file.write_all(format!("{}\n", std::process::id()).as_bytes())
        .map_err(io_err)?;
    Ok(StateLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{SelfStats, Snapshot};

    fn identity() -> FileIdentity {
        FileIdentity {
            dev: 1,
            ino: 2,
            fingerprint: 3,
            fingerprint_len: 4,
            born_ns: Some(6),
        }
    }

    fn sample() -> StateFile {
        let mut forwarders = BTreeMap::new();
        forwarders.insert(
            "loki".to_string(),
            vec![FilePosition {
                path: "/var/log/pods/a/envoy/0.log".into(),
                identity: identity(),
                offset: 3,
                let_go_ns: None,
                unopened: false,
                align: false,
            }],
        );
        StateFile {
            version: STATE_VERSION,
            saved_at_ns: 2,
            start_time_ns: 1,
            files: vec![FilePosition {
                path: "/var/log/pods/a/envoy/0.log".into(),
                identity: identity(),
                offset: 5,
                let_go_ns: Some(7),
                unopened: false,
                align: false,
            }],
            forwarders,
            counters: Snapshot {
                extra_names: vec![],
                series: vec![],
                durations: vec![],
                stats: SelfStats::default(),
                pairs: vec![],
                currency: None,
                team_label: None,
                owner_budgets: vec![],
            }
            .into(),
        }
    }

    /// The version 2 format, byte for byte: a change here must bump the version.
    const GOLDEN_V2: &str = r#"{"version":2,"saved_at_ns":2,"start_time_ns":1,"files":[{"path":"/var/log/pods/a/envoy/0.log","identity":{"dev":1,"ino":2,"fingerprint":3,"fingerprint_len":4,"born_ns":6},"offset":5,"let_go_ns":7}],"forwarders":{"loki":[{"path":"/var/log/pods/a/envoy/0.log","identity":{"dev":1,"ino":2,"fingerprint":3,"fingerprint_len":4,"born_ns":6},"offset":3}]},"counters":{"extra_names":[],"series":[],"durations":[],"stats":"#;

    #[test]
    fn version_2_golden_format() {
        let text = serde_json::to_string(&sample()).unwrap();
        assert!(text.starts_with(GOLDEN_V2), "{text}");
    }

    #[test]
    fn version_1_is_migrated_with_its_loki_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let v2 = serde_json::to_value(sample()).unwrap();
        let v1 = format!(
            r#"{{"version":1,"saved_at_ns":2,"start_time_ns":1,"files":[{{"path":"/var/log/pods/a/envoy/0.log","identity":{{"dev":1,"ino":2,"fingerprint":3,"fingerprint_len":4}},"offset":5,"loki_offset":3}},{{"path":"/b.log","identity":{{"dev":1,"ino":9,"fingerprint":3,"fingerprint_len":4}},"offset":8}}],"counters":{}}}"#,
            v2["counters"]
        );
        fs::write(state_path(dir.path()), v1).unwrap();
        let Loaded::Resumed(s) = load(dir.path()).unwrap() else {
            panic!("not migrated")
        };
        assert_eq!(s.version, STATE_VERSION);
        assert_eq!(s.files.len(), 2);
        assert_eq!((s.files[0].offset, s.files[1].offset), (5, 8));
        assert_eq!(s.files[0].let_go_ns, None);
        let loki = &s.forwarders["loki"];
        assert_eq!(loki.len(), 1, "only files that had a Loki offset");
        assert_eq!((loki[0].identity.ino, loki[0].offset), (2, 3));
        assert_eq!(
            loki[0].identity.born_ns, None,
            "version 1 had no birth time"
        );
    }

    #[test]
    fn round_trip_and_fresh() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(load(dir.path()).unwrap(), Loaded::Fresh));
        save(dir.path(), &sample()).unwrap();
        match load(dir.path()).unwrap() {
            Loaded::Resumed(s) => assert_eq!(*s, sample()),
            other => panic!("{other:?}"),
        }
        assert!(!dir.path().join("state.json.tmp").exists());
    }

    #[test]
    fn start_time_is_read_without_touching_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_start_time(dir.path()),
            Err(StartTimeError::Missing { .. })
        ));
        save(dir.path(), &sample()).unwrap();
        assert_eq!(read_start_time(dir.path()).unwrap(), 1);
        fs::write(state_path(dir.path()), b"{\"version\":2,\"trunc").unwrap();
        let e = read_start_time(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a valid state file"), "{e}");
        // Unlike `load`, a broken file is left where it is (the agent owns it).
        assert!(state_path(dir.path()).exists());
    }

    #[test]
    fn corrupt_state_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(state_path(dir.path()), b"{\"version\":2,\"trunc").unwrap();
        match load(dir.path()).unwrap() {
            Loaded::Corrupt { moved_to, error } => {
                assert!(moved_to.exists(), "{error}");
                assert!(!state_path(dir.path()).exists());
            }
            other => panic!("{other:?}"),
        }
        // The next start is fresh.
        assert!(matches!(load(dir.path()).unwrap(), Loaded::Fresh));
    }

    #[test]
    fn other_versions_are_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = sample();
        s.version = 99;
        fs::write(state_path(dir.path()), serde_json::to_vec(&s).unwrap()).unwrap();
        assert!(matches!(load(dir.path()).unwrap(), Loaded::Corrupt { .. }));
    }

    #[test]
    fn a_second_lock_names_the_holder_and_a_released_lock_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock(dir.path()).unwrap();
        match lock(dir.path()) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("{other:?}"),
        }
        drop(first);
        lock(dir.path()).expect("released when its holder is gone");
    }
}
