//! One run per destination at a time: an exclusive lock on `DST/.treecopy.lock`, held for the
//! whole run and released by the kernel when the process ends, however it ends, so a lock left
//! by a killed run never blocks the next one. The file itself is removed at the end of a run.

use crate::error::shown;
use crate::sys;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

/// The lock file's name in DST. The run never copies, deletes or reports an entry of this
/// name at the top of DST (or of SRC).
pub const LOCK_NAME: &CStr = c".treecopy.lock";

/// A held lock on a destination directory.
pub struct DstLock<'d> {
    dir: BorrowedFd<'d>,
    file: Option<OwnedFd>,
    /// The directory's (atime, mtime) before the lock file was made.
    before: ((i64, i64), (i64, i64)),
}

/// Why the lock could not be taken.
pub enum LockError {
    /// Another live run holds it; its pid as it wrote it, if readable.
    Held(Option<i32>),
    Io(io::Error),
}

/// How long to sleep between attempts with `--wait`: short enough to start soon after the
/// other run ends, long enough to cost nothing.
const RETRY: Duration = Duration::from_millis(200);

impl<'d> DstLock<'d> {
    /// Takes the lock on the destination directory `dir`. With `wait`, polls until it is
    /// free (calling `waiting` once with the holder's pid) or a signal asks us to stop.
    pub fn acquire(
        dir: BorrowedFd<'d>,
        wait: bool,
        mut waiting: impl FnMut(Option<i32>),
    ) -> Result<Self, LockError> {
        let mut told = false;
        loop {
            // Creating the lock file changes the directory's times; they are put back so that
            // the run still sees (and itemizes) the directory as it found it.
            let before = sys::fstat(dir).map_err(LockError::Io)?;
            let file = sys::open_or_create_rw(dir, LOCK_NAME, 0o600).map_err(LockError::Io)?;
            if sys::try_lock_exclusive(file.as_fd()).map_err(LockError::Io)? {
                // The previous holder may have removed the file between our open and our lock:
                // then we hold a lock on a name nobody else can find. Start again.
                if still_linked(dir, &file) {
                    write_pid(&file);
                    let _ = sys::futimens(dir, before.atime, before.mtime);
                    return Ok(DstLock {
                        dir,
                        file: Some(file),
                        before: (before.atime, before.mtime),
                    });
                }
                continue;
            }
            let holder = read_pid(&file);
            if !wait {
                return Err(LockError::Held(holder));
            }
            if !std::mem::replace(&mut told, true) {
                waiting(holder);
            }
            if crate::signal::received().is_some() {
                return Err(LockError::Io(io::Error::from(io::ErrorKind::Interrupted)));
            }
            std::thread::sleep(RETRY);
        }
    }

    /// Removes the lock file, then releases the lock (closing the descriptor). A run waiting on
    /// the old file finds it unlinked and opens a new one. Removing the file changes the
    /// directory's times: they are set to `times` (the source's, which the run gave the
    /// directory), or else back to what they were before the lock.
    pub fn release(mut self, times: Option<((i64, i64), (i64, i64))>) {
        self.unlock(times);
    }

    fn unlock(&mut self, times: Option<((i64, i64), (i64, i64))>) {
        let Some(file) = self.file.take() else {
            return;
        };
        let _ = sys::unlink_at(self.dir, LOCK_NAME);
        let (atime, mtime) = times.unwrap_or(self.before);
        let _ = sys::futimens(self.dir, atime, mtime);
        drop(file);
    }
}

impl Drop for DstLock<'_> {
    /// A run refused or failed after taking the lock leaves DST as it found it.
    fn drop(&mut self) {
        self.unlock(None);
    }
}

fn still_linked(dir: BorrowedFd<'_>, file: &OwnedFd) -> bool {
    match (sys::fstat(file.as_fd()), sys::lstat_at(dir, LOCK_NAME)) {
        (Ok(held), Ok(named)) => (held.dev, held.ino) == (named.dev, named.ino),
        _ => false,
    }
}

fn write_pid(file: &OwnedFd) {
    let text = format!("{}\n", std::process::id());
    let _ = sys::set_len(file.as_fd(), 0);
    let _ = sys::pwrite(file.as_fd(), text.as_bytes(), 0);
}

fn read_pid(file: &OwnedFd) -> Option<i32> {
    let mut buf = [0u8; 32];
    let n = sys::pread(file.as_fd(), &mut buf, 0).ok()?;
    std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
}

/// The message for a lock held by another run.
pub fn held_message(dst: &Path, holder: Option<i32>) -> String {
    let by = holder
        .map(|pid| format!(" (pid {pid})"))
        .unwrap_or_default();
    format!(
        "destination {} is locked by another treecopy run{by}; use --wait to wait for it",
        shown(dst)
    )
}
