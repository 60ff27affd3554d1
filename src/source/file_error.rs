//! What went wrong with a tailed file or directory, while it lasts: the reason self-metrics
//! count it by, the last error kept with the path, and the warning rate (once, then every 5
//! minutes while it lasts).
//!
//! Owns: [`ErrorReason`], [`FileError`], and recording and clearing them. Must not decide
//! what an error means for a file (the registry does: an error is never a deletion) nor
//! retry anything ([`super::reopen::Backoff`] does).

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often a warning about the same failing path is repeated while it keeps failing.
const WARN_EVERY: Duration = Duration::from_secs(300);

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

/// Counts the error, keeps it as the path's last error, and warns when it is new (or has
/// lasted another `WARN_EVERY`).
pub(crate) fn record_error(
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
pub(crate) fn clear_error(slot: &mut Option<FileError>, op: &str, path: &Path) {
    if slot.as_ref().is_some_and(|e| e.op == op) {
        *slot = None;
        tracing::info!("{}: {op} works again", path.display());
    }
}
