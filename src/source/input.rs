//! Opening a file to replay: plain, or gzip (multi-member) detected by its magic bytes, with a
//! shared counter of the bytes read from disk for progress reporting.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use flate2::read::MultiGzDecoder;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// An opened file, ready to be read from its start.
pub struct Input {
    pub path: PathBuf,
    /// Size on disk (compressed size for gzip).
    pub size: u64,
    pub modified_ns: Option<i64>,
    pub gzip: bool,
    /// A regular file, read again from its start when need be. Standard input (`-`) and a
    /// FIFO are read once, as they arrive: the bytes sniffed for the gzip magic are kept in
    /// `sniffed` and read first.
    pub seekable: bool,
    sniffed: Vec<u8>,
    file: File,
}

/// The argument naming standard input.
pub const STDIN: &str = "-";

/// A file that cannot be replayed, with its path.
#[derive(Debug)]
pub struct InputError {
    pub path: PathBuf,
    pub error: io::Error,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.error)
    }
}

impl std::error::Error for InputError {}

/// Expands replay arguments: a directory becomes its files, a glob (`*`, `?`, `[`) the files
/// it matches, each in name order; anything else stays as it is (and fails later, by name, if
/// it cannot be opened).
pub fn expand_inputs(args: &[PathBuf]) -> Result<Vec<PathBuf>, InputError> {
    let mut out = Vec::new();
    for a in args {
        let text = a.to_string_lossy();
        if a.as_os_str() == STDIN {
            out.push(a.clone());
        } else if a.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(a)
                .map_err(|error| InputError {
                    path: a.clone(),
                    error,
                })?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            out.extend(files);
        } else if !a.exists() && text.contains(['*', '?', '[']) {
            let matcher = super::discover::glob(&text)
                .map_err(|e| InputError {
                    path: a.clone(),
                    error: io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
                })?
                .compile_matcher();
            let (root, depth) = super::discover::literal_root(&text);
            let mut files = Vec::new();
            super::discover::walk(&root, depth, &mut |p| {
                if matcher.is_match(p) {
                    files.push(p.to_path_buf());
                }
            });
            if files.is_empty() {
                return Err(InputError {
                    path: a.clone(),
                    error: io::Error::new(io::ErrorKind::NotFound, "no file matches this pattern"),
                });
            }
            files.sort();
            out.extend(files);
        } else {
            out.push(a.clone());
        }
    }
    Ok(out)
}

/// Opens `path` (`-`: standard input) and sniffs its first bytes; fails for a missing or
/// unreadable file or a directory. A FIFO or standard input is opened once and read as a
/// stream.
pub fn open_input(path: &Path) -> Result<Input, InputError> {
    let err = |error| InputError {
        path: path.to_path_buf(),
        error,
    };
    let mut file = if path == Path::new(STDIN) {
        use std::os::fd::AsFd;
        File::from(io::stdin().as_fd().try_clone_to_owned().map_err(err)?)
    } else {
        File::open(path).map_err(err)?
    };
    let meta = file.metadata().map_err(err)?;
    if meta.is_dir() {
        return Err(err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "is a directory",
        )));
    }
    let mut magic = [0u8; 2];
    let mut got = 0;
    while got < 2 {
        match file.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(err(e)),
        }
    }
    let gzip = got == 2 && magic == GZIP_MAGIC;
    // Standard input is read as a stream even when it is a file (`< file`): it has no path
    // to open again from its start.
    let seekable = meta.is_file() && path != Path::new(STDIN);
    let (file, sniffed) = if seekable {
        (File::open(path).map_err(err)?, Vec::new()) // start again at byte 0
    } else {
        // A stream cannot be opened again: what was sniffed is read first.
        (file, magic[..got].to_vec())
    };
    let modified_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i64);
    Ok(Input {
        path: path.to_path_buf(),
        size: meta.len(),
        modified_ns,
        gzip,
        seekable,
        sniffed,
        file,
    })
}

impl Input {
    /// Another handle on the same open file, to read it again later even when its path has
    /// meanwhile been rotated, replaced or removed. It shares the offset of this one:
    /// [`Input::rewind`] it before reading.
    pub fn try_clone(&self) -> Result<Input, InputError> {
        let file = self.file.try_clone().map_err(|error| InputError {
            path: self.path.clone(),
            error,
        })?;
        Ok(Input {
            path: self.path.clone(),
            size: self.size,
            modified_ns: self.modified_ns,
            gzip: self.gzip,
            seekable: self.seekable,
            sniffed: self.sniffed.clone(),
            file,
        })
    }

    /// Back to the file's first byte.
    pub fn rewind(mut self) -> Result<Input, InputError> {
        match self.file.seek(io::SeekFrom::Start(0)) {
            Ok(_) => Ok(self),
            Err(error) => Err(InputError {
                path: self.path,
                error,
            }),
        }
    }

    /// The decompressed byte stream; `progress` is advanced by the bytes read from disk.
    pub fn into_reader(self, progress: Arc<AtomicU64>) -> Box<dyn Read + Send> {
        progress.fetch_add(self.sniffed.len() as u64, Ordering::Relaxed);
        let counted = Counting {
            inner: io::Cursor::new(self.sniffed).chain(self.file),
            count: progress,
        };
        if self.gzip {
            Box::new(MultiGzDecoder::new(BufReader::with_capacity(
                256 << 10,
                counted,
            )))
        } else {
            Box::new(counted)
        }
    }
}

struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}
