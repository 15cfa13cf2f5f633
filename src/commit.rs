//! The commit protocol: every entry is created under a unique temp name in its destination
//! directory and renamed over its final name only once it is complete. Finalising returns a
//! Result; `Drop` only removes what was not committed, so no failure can leave a half-written
//! entry under a final name.

use crate::sys::{self, Kind};
use nix::errno::Errno;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Every temp name starts with this, followed by `<pid>.<sequence>`, so later runs can tell
/// leftovers of a killed run from entries of the tree.
pub const TEMP_PREFIX: &str = ".treecopy-tmp.";

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Our pid, asked once: it is part of every temp name, and getpid is a syscall per file.
fn pid() -> u32 {
    static PID: OnceLock<u32> = OnceLock::new();
    *PID.get_or_init(std::process::id)
}

fn next_temp_name() -> CString {
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    CString::new(format!("{TEMP_PREFIX}{}.{seq}", pid())).expect("temp names hold no NUL")
}

/// An entry under its temp name. Commit renames it; dropping it uncommitted removes it.
pub struct TempEntry<'d> {
    dir: BorrowedFd<'d>,
    name: CString,
    fd: Option<OwnedFd>,
    committed: bool,
}

/// Which step of the commit failed.
pub struct CommitError {
    pub op: &'static str,
    pub source: io::Error,
}

impl<'d> TempEntry<'d> {
    /// Tries fresh names until one is free: a name can only be taken by a leftover of an
    /// earlier process that had our pid.
    fn create_with(
        dir: BorrowedFd<'d>,
        mut make: impl FnMut(&CStr) -> io::Result<Option<OwnedFd>>,
    ) -> io::Result<Self> {
        loop {
            let name = next_temp_name();
            match make(&name) {
                Ok(fd) => {
                    return Ok(TempEntry {
                        dir,
                        name,
                        fd,
                        committed: false,
                    });
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// A new empty regular file (O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600), open for writing;
    /// with `direct`, also O_DIRECT.
    pub fn file(dir: BorrowedFd<'d>, direct: bool) -> io::Result<Self> {
        Self::create_with(dir, |name| {
            sys::create_exclusive(dir, name, direct).map(Some)
        })
    }

    pub fn symlink(dir: BorrowedFd<'d>, target: &OsStr) -> io::Result<Self> {
        Self::create_with(dir, |name| {
            sys::symlink_at(target, dir, name).map(|()| None)
        })
    }

    /// A new name for the existing file at `existing` (a hard link).
    pub fn hard_link(dir: BorrowedFd<'d>, existing: &std::path::Path) -> io::Result<Self> {
        Self::create_with(dir, |name| sys::link_at(existing, dir, name).map(|()| None))
    }

    /// A FIFO, socket or device node with the type bits of `mode`.
    pub fn node(dir: BorrowedFd<'d>, mode: u32, rdev: u64) -> io::Result<Self> {
        Self::create_with(dir, |name| {
            sys::mknod_at(dir, name, mode, rdev).map(|()| None)
        })
    }

    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|fd| fd.as_fd())
    }

    pub fn name(&self) -> &CStr {
        &self.name
    }

    pub fn dir(&self) -> BorrowedFd<'d> {
        self.dir
    }

    /// Closes the file, checking the close (where NFS reports late write errors), then renames
    /// it over `final_name`, replacing whatever non-directory was there atomically. With
    /// `durable`, the data is flushed to stable storage first (fsync), so that the name never
    /// points at data a crash could lose.
    pub fn commit(mut self, final_name: &CStr, durable: bool) -> Result<(), CommitError> {
        if durable && let Some(fd) = &self.fd {
            sys::fsync(fd.as_fd()).map_err(|source| CommitError {
                op: "fsync",
                source,
            })?;
        }
        if let Some(fd) = self.fd.take() {
            sys::close(fd).map_err(|source| CommitError {
                op: "close",
                source,
            })?;
        }
        sys::rename_at(self.dir, &self.name, final_name).map_err(|source| CommitError {
            op: "rename",
            source,
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for TempEntry<'_> {
    fn drop(&mut self) {
        self.fd.take();
        if !self.committed {
            let _ = sys::unlink_at(self.dir, &self.name);
        }
    }
}

/// The pid a temp name was made by, if `name` is one of ours.
pub fn temp_owner(name: &[u8]) -> Option<i32> {
    let rest = name.strip_prefix(TEMP_PREFIX.as_bytes())?;
    let dot = rest.iter().position(|&b| b == b'.')?;
    let (pid, seq) = (&rest[..dot], &rest[dot + 1..]);
    if seq.is_empty() || !seq.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(pid).ok()?.parse().ok()
}

/// Removes temp entries left in `dir` by runs that no longer exist (or by an earlier process
/// with our own pid: this run has not created anything in `dir` yet). A live other run's temp
/// files are left alone. Returns the names removed.
pub fn remove_stale(dir: BorrowedFd<'_>, listing: &[(CString, Option<Kind>)]) -> Vec<CString> {
    let me = pid() as i32;
    let mut removed = Vec::new();
    for (name, kind) in listing {
        if matches!(kind, Some(Kind::Dir)) {
            continue;
        }
        let Some(pid) = temp_owner(name.to_bytes()) else {
            continue;
        };
        if (pid == me || !sys::process_alive(pid))
            && !matches!(sys::unlink_at(dir, name), Err(e) if e.raw_os_error() != Some(Errno::ENOENT as i32))
        {
            removed.push(name.clone());
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_recognised() {
        let name = next_temp_name();
        assert_eq!(temp_owner(name.to_bytes()), Some(std::process::id() as i32));
        assert_eq!(temp_owner(b".treecopy-tmp.123.7"), Some(123));
        assert_eq!(temp_owner(b".treecopy-tmp.123."), None);
        assert_eq!(temp_owner(b".treecopy-tmp.abc.1"), None);
        assert_eq!(temp_owner(b".treecopy-tmp.12.x"), None);
        assert_eq!(temp_owner(b"treecopy-tmp.12.1"), None);
        assert_eq!(temp_owner(b"data.grib"), None);
    }
}
