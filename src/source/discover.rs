//! Discovery: which paths the globs match, and what a pod-log path says about its pod.
//!
//! Owns: glob compilation, the directory walk (which reports the directories it could not
//! list, so an unreadable directory is never mistaken for an empty one), and pod labels from
//! paths. Must not open files or keep state between scans: the registry does.

use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::DirEntryExt;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

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
    /// From either kubelet layout: `/var/log/pods/<ns>_<pod>_<uid>/<container>/N.log`, or the
    /// `/var/log/containers/<pod>_<ns>_<container>-<64 hex id>.log` symlinks.
    pub fn from_path(path: &Path) -> Option<PodLabels> {
        Self::from_pods_path(path).or_else(|| Self::from_containers_path(path))
    }

    fn from_containers_path(path: &Path) -> Option<PodLabels> {
        let stem = path.file_name()?.to_str()?.strip_suffix(".log")?;
        let mut parts = stem.splitn(3, '_');
        let (pod, namespace, rest) = (parts.next()?, parts.next()?, parts.next()?);
        let (container, id) = rest.rsplit_once('-')?;
        let hex_id = id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
        if pod.is_empty() || namespace.is_empty() || container.is_empty() || !hex_id {
            return None;
        }
        Some(PodLabels {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            container: container.to_string(),
        })
    }

    fn from_pods_path(path: &Path) -> Option<PodLabels> {
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

pub(crate) fn glob(pattern: &str) -> Result<globset::Glob, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(true).build()
}

/// One entry of a directory listing.
#[derive(Clone, Debug)]
pub struct DirItem {
    pub path: PathBuf,
    pub is_dir: bool,
    pub ino: u64,
}

/// The file-system calls the registry makes by path, injected so tests can make them fail
/// (EACCES, EMFILE, EIO) where a test cannot otherwise cause the fault (e.g. as root).
/// Reads through an open descriptor are not in it: they go to the file itself.
pub trait FileSystem: Send {
    /// Opens a regular file for reading. Never blocks: a FIFO or device put where a log was
    /// is opened non-blocking and refused, so it cannot wedge the reader.
    fn open(&self, path: &Path) -> io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)?;
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(file)
    }
    fn metadata(&self, path: &Path) -> io::Result<Metadata> {
        fs::metadata(path)
    }
    fn read_dir(&self, dir: &Path) -> io::Result<Vec<DirItem>> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir)? {
            let e = e?;
            let path = if dir == Path::new(".") {
                PathBuf::from(e.file_name())
            } else {
                e.path()
            };
            // A type that cannot be read counts as a file; its stat decides later.
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            out.push(DirItem {
                path,
                is_dir,
                ino: e.ino(),
            });
        }
        Ok(out)
    }
}

/// The real file system.
pub struct RealFs;
impl FileSystem for RealFs {}

/// The include and exclude globs of `source`, with the directories to walk.
pub struct Globs {
    include: GlobSet,
    exclude: GlobSet,
    /// (literal directory prefix, max depth below it) per include pattern.
    roots: Vec<(PathBuf, usize)>,
}

/// What one scan found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Matching paths (not yet checked to be regular files), sorted, without duplicates.
    pub paths: Vec<PathBuf>,
    /// Directories that exist but could not be listed (EACCES, EMFILE, EIO, ...): what is
    /// below them is unknown this time, not gone.
    pub failed_dirs: Vec<(PathBuf, io::Error)>,
}

impl Scan {
    /// Whether `path` lies below a directory that could not be listed.
    pub fn unknown(&self, path: &Path) -> bool {
        self.failed_dirs.iter().any(|(d, _)| path.starts_with(d))
    }
}

impl Globs {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Globs, globset::Error> {
        let mut inc = GlobSetBuilder::new();
        let mut roots = Vec::new();
        for p in include {
            inc.add(glob(p)?);
            roots.push(literal_root(p));
        }
        let mut exc = GlobSetBuilder::new();
        for p in exclude {
            exc.add(glob(p)?);
        }
        Ok(Globs {
            include: inc.build()?,
            exclude: exc.build()?,
            roots,
        })
    }

    pub fn scan(&self, fs: &dyn FileSystem) -> Scan {
        let mut scan = Scan::default();
        for (root, depth) in &self.roots {
            walk_reporting(
                fs,
                root,
                *depth,
                &mut |p| {
                    if self.include.is_match(p) && !self.excluded(p) {
                        scan.paths.push(p.to_path_buf());
                    }
                },
                &mut scan.failed_dirs,
            );
        }
        scan.paths.sort();
        scan.paths.dedup();
        scan
    }

    /// The include patterns (by index) that match none of `paths`.
    pub fn unmatched(&self, paths: &[PathBuf]) -> Vec<usize> {
        let mut hit = vec![false; self.include.len()];
        for p in paths {
            for i in self.include.matches(p) {
                hit[i] = true;
            }
            if hit.iter().all(|h| *h) {
                break;
            }
        }
        (0..hit.len()).filter(|i| !hit[*i]).collect()
    }

    fn excluded(&self, p: &Path) -> bool {
        self.exclude.is_match(p)
            || p.file_name()
                .is_some_and(|n| self.exclude.is_match(Path::new(n)))
    }
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

/// Calls `found` for every non-directory entry below `dir`, `depth` levels deep. Directories
/// that cannot be listed are skipped silently (replay's glob expansion).
pub(crate) fn walk(dir: &Path, depth: usize, found: &mut dyn FnMut(&Path)) {
    walk_reporting(&RealFs, dir, depth, found, &mut Vec::new());
}

/// [`walk`], collecting the directories that exist but could not be listed. A missing
/// directory (ENOENT, e.g. no pod yet, or ENOTDIR) is not a failure.
fn walk_reporting(
    fs: &dyn FileSystem,
    dir: &Path,
    depth: usize,
    found: &mut dyn FnMut(&Path),
    failed: &mut Vec<(PathBuf, io::Error)>,
) {
    if depth == 0 {
        return;
    }
    let items = match fs.read_dir(dir) {
        Ok(items) => items,
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) =>
        {
            return
        }
        Err(e) => {
            failed.push((dir.to_path_buf(), e));
            return;
        }
    };
    for item in items {
        if item.is_dir {
            walk_reporting(fs, &item.path, depth - 1, found, failed);
        } else {
            found(&item.path);
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
        let id = "0123456789abcdef".repeat(4);
        let l = PodLabels::from_path(Path::new(&format!(
            "/var/log/containers/envoy-default-gw-5d8f_envoy-gateway-system_envoy-{id}.log"
        )))
        .unwrap();
        assert_eq!(
            (l.namespace.as_str(), l.pod.as_str(), l.container.as_str()),
            ("envoy-gateway-system", "envoy-default-gw-5d8f", "envoy")
        );
        let l = PodLabels::from_path(Path::new(&format!(
            "/var/log/containers/gw_ns_shutdown-manager-{id}.log"
        )))
        .unwrap();
        assert_eq!(
            l.container, "shutdown-manager",
            "dashes stay in the container name"
        );
        assert_eq!(
            PodLabels::from_path(Path::new("/var/log/containers/a_b_c-notanid.log")),
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
