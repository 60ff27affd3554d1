//! The consistent cut: every file's identity and committed offset together with the counters
//! that exactly those lines produced, saved to and loaded from one versioned file.
//!
//! Owns: the on-disk format and its atomic replacement (write a temp file, fsync it, rename it
//! over the old one, fsync the directory), and recovery from a corrupt or unreadable file
//! (reported and moved aside, never silently ignored). Must not decide what is in the cut: the
//! daemon takes it under one lock so offsets and counters agree.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::aggregate::Snapshot;

/// Bump when the format changes incompatibly; older files are then moved aside, not misread.
pub const STATE_VERSION: u32 = 1;
pub const STATE_FILE: &str = "state.json";

/// A file's identity: device and inode, plus a fingerprint of its first bytes so a reused inode
/// is not mistaken for the old file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    /// Hash of the first `fingerprint_len` bytes (FNV-1a, 64 bit).
    pub fingerprint: u64,
    pub fingerprint_len: u32,
}

/// Where reading of one file stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileState {
    /// Last path the file was seen under (informational; identity decides).
    pub path: PathBuf,
    pub identity: FileIdentity,
    /// Offset just past the last line whose counts are in `counters`.
    pub offset: u64,
    /// Offset just past the last line the Loki forwarder had delivered (2xx), when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loki_offset: Option<u64>,
}

/// Everything the daemon needs to continue exactly where it stopped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    pub version: u32,
    pub saved_at_ns: i64,
    /// Start time of every cumulative series (OTLP `start_time_unix_nano`): kept across
    /// restarts so exported counters continue instead of resetting.
    pub start_time_ns: i64,
    pub files: Vec<FileState>,
    pub counters: Snapshot,
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

/// Loads the state from `dir`. An unreadable, unparsable or wrong-version file is moved aside
/// (`state.json.corrupt-<unix seconds>`) and reported.
pub fn load(dir: &Path) -> io::Result<Loaded> {
    let path = state_path(dir);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Loaded::Fresh),
        Err(e) => return move_aside(&path, format!("cannot read: {e}")),
    };
    match serde_json::from_slice::<StateFile>(&bytes) {
        Ok(s) if s.version == STATE_VERSION => Ok(Loaded::Resumed(Box::new(s))),
        Ok(s) => move_aside(
            &path,
            format!("version {} (this build reads {STATE_VERSION})", s.version),
        ),
        Err(e) => move_aside(&path, format!("not a valid state file: {e}")),
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
    let bytes = serde_json::to_vec(state).map_err(io::Error::other)?;
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, &path)?;
    // The rename itself must reach the disk before we rely on it.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// FNV-1a over `bytes`: a cheap, stable fingerprint (not a security measure).
pub fn fingerprint(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{SelfStats, Snapshot};

    fn sample() -> StateFile {
        StateFile {
            version: STATE_VERSION,
            saved_at_ns: 2,
            start_time_ns: 1,
            files: vec![FileState {
                path: "/var/log/pods/a/envoy/0.log".into(),
                identity: FileIdentity {
                    dev: 1,
                    ino: 2,
                    fingerprint: 3,
                    fingerprint_len: 4,
                },
                offset: 5,
                loki_offset: Some(3),
            }],
            counters: Snapshot {
                extra_names: vec![],
                series: vec![],
                durations: vec![],
                stats: SelfStats::default(),
            },
        }
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
    fn corrupt_state_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(state_path(dir.path()), b"{\"version\":1,\"trunc").unwrap();
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
}
