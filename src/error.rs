//! A failed entry: the operation, the path it concerned and the OS error, so the driver can
//! report it once, count it, and go on with the rest of the tree.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What went wrong with one entry of the tree. Displayed as `open /src/a/b: Permission denied
/// (os error 13)`: operation, path, then the OS error exactly as the OS names it.
#[derive(Debug)]
pub struct EntryError {
    pub op: &'static str,
    pub path: PathBuf,
    /// The destination, for operations that involve both sides (a data copy).
    pub to: Option<PathBuf>,
    pub source: io::Error,
    /// The operation read the source tree: an ENOENT there means the entry was removed after
    /// it was listed, which a live tree does all the time (see `vanished`).
    pub on_source: bool,
    /// The source file was written to while it was copied (see `changed_while_copied`).
    pub changed: bool,
    /// `severity`, once worked out: for ESTALE that asks the server.
    severity: std::sync::OnceLock<Severity>,
}

/// How a failed entry counts: an error (exit 1), or a source entry that vanished or changed
/// during the run (a warning, exit 24 when nothing else failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Failed,
    Vanished,
    Changed,
}

/// The operation name used when work stops because a signal asked us to; such an entry is not
/// a failure, it is unfinished.
pub const INTERRUPTED: &str = "interrupted";

impl EntryError {
    pub fn new(op: &'static str, path: &Path, source: impl Into<io::Error>) -> Self {
        EntryError {
            op,
            path: path.to_path_buf(),
            to: None,
            source: source.into(),
            on_source: false,
            changed: false,
            severity: std::sync::OnceLock::new(),
        }
    }

    /// A source file whose size or modification time differed after its data was copied: the
    /// copy mixes two versions (or is cut short by a truncation), so it is not committed. Not a
    /// failure of the copy: a producer is still writing, and the next run copies the file.
    pub fn changed_while_copied(path: &Path) -> Self {
        EntryError {
            changed: true,
            ..Self::of_source(
                "copy",
                path,
                io::Error::other("the file changed while it was copied; not committed"),
            )
        }
    }

    pub fn severity(&self) -> Severity {
        *self.severity.get_or_init(|| {
            if self.changed {
                Severity::Changed
            } else if self.vanished() {
                Severity::Vanished
            } else {
                Severity::Failed
            }
        })
    }

    /// An error of an operation on the source tree.
    pub fn of_source(op: &'static str, path: &Path, source: impl Into<io::Error>) -> Self {
        EntryError {
            on_source: true,
            ..Self::new(op, path, source)
        }
    }

    /// An error of an operation that reads `from` and writes `to`, where the OS does not say
    /// which side failed.
    pub fn between(op: &'static str, from: &Path, to: &Path, source: impl Into<io::Error>) -> Self {
        EntryError {
            to: Some(to.to_path_buf()),
            ..Self::new(op, from, source)
        }
    }

    pub fn interrupted(path: &Path) -> Self {
        Self::new(
            INTERRUPTED,
            path,
            io::Error::from(io::ErrorKind::Interrupted),
        )
    }

    pub fn is_interruption(&self) -> bool {
        self.op == INTERRUPTED
    }

    /// The source entry was deleted between the listing and the copy: a warning and exit 24,
    /// as rsync does, not a failure, so a nightly run over a tree that producers keep rotating
    /// does not alert every night. ENOENT says so at once. ESTALE is what NFS answers when the
    /// file, or the directory treecopy holds open, was deleted on the server, but also what a
    /// server fault or an unexported share looks like; so the path is looked up afresh (the
    /// kernel retries a stale lookup with revalidation), and only a path that no longer
    /// resolves counts as vanished.
    fn vanished(&self) -> bool {
        if !self.on_source {
            return false;
        }
        match self.source.raw_os_error() {
            Some(libc::ENOENT) => true,
            Some(libc::ESTALE) => crate::sys::gone_by_fresh_lookup(&self.path),
            _ => false,
        }
    }
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.op, shown(&self.path))?;
        if let Some(to) = &self.to {
            write!(f, " -> {}", shown(to))?;
        }
        write!(f, ": {}", self.source)
    }
}

/// A path as a line of stderr shows it: control bytes, backslash and bytes that are not
/// UTF-8 become `\#ooo` (octal, as rsync and --itemize write them), so a name holding a
/// newline cannot split an error line or forge another, and the exact bytes can be recovered.
pub fn shown(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    // --itemize's escaping, then the bytes stdout may carry raw but a String cannot.
    let escaped = crate::delta::escape_path(path.as_os_str().as_bytes());
    let mut out = String::with_capacity(escaped.len());
    for chunk in escaped.utf8_chunks() {
        out.push_str(chunk.valid());
        for &b in chunk.invalid() {
            out.push_str(&format!("\\#{b:03o}"));
        }
    }
    out
}

impl std::error::Error for EntryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

pub type EntryResult<T> = Result<T, EntryError>;

/// Attaches an operation and a path to an OS error.
pub trait Context<T> {
    fn ctx(self, op: &'static str, path: &Path) -> EntryResult<T>;
    /// The same, for an operation on the source tree.
    fn src_ctx(self, op: &'static str, path: &Path) -> EntryResult<T>;
}

impl<T, E: Into<io::Error>> Context<T> for Result<T, E> {
    fn ctx(self, op: &'static str, path: &Path) -> EntryResult<T> {
        self.map_err(|e| EntryError::new(op, path, e))
    }

    fn src_ctx(self, op: &'static str, path: &Path) -> EntryResult<T> {
        self.map_err(|e| EntryError::of_source(op, path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    #[test]
    fn shown_paths_take_one_line_and_keep_their_bytes() {
        let path = Path::new(OsStr::from_bytes(
            b"/s/evil\ntreecopy: error: x\\y\xff\xc3\xa9",
        ));
        assert_eq!(
            shown(path),
            "/s/evil\\#012treecopy: error: x\\#134y\\#377\u{e9}"
        );
        let err = EntryError::new("open", path, io::Error::from_raw_os_error(libc::EACCES));
        assert_eq!(err.to_string().lines().count(), 1);
    }
}
