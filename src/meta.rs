//! Ownership, permissions and timestamps of a copied entry, in the order that keeps them:
//! owner first (chown clears setuid/setgid), then mode, then times last.

use crate::sys::{self, Stat};
use std::ffi::CStr;
use std::io;
use std::os::fd::BorrowedFd;

/// Which metadata step failed.
pub struct MetaError {
    pub op: &'static str,
    pub source: io::Error,
}

fn step<T>(op: &'static str, r: io::Result<T>) -> Result<T, MetaError> {
    r.map_err(|source| MetaError { op, source })
}

/// Who we are, decided once per run: root reproduces any owner; others keep what the kernel
/// allows, as `cp -a` does.
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub root: bool,
    pub euid: u32,
}

impl Identity {
    pub fn current() -> Self {
        Identity {
            root: sys::is_root(),
            euid: nix::unistd::geteuid().as_raw(),
        }
    }

    /// Gives the new entry the source's owner where permitted. Returns the permission bits
    /// that are safe to apply: setuid/setgid are dropped when the owner or group could not be
    /// reproduced, so a copy never gains privileges its source did not grant.
    fn set_owner(
        &self,
        st: &Stat,
        chown: impl Fn(Option<u32>, Option<u32>) -> io::Result<()>,
    ) -> Result<u32, MetaError> {
        let refused = |e: &io::Error| matches!(e.raw_os_error(), Some(libc::EPERM | libc::EINVAL));
        let (uid_kept, gid_kept) = if self.root {
            match chown(Some(st.uid), Some(st.gid)) {
                Ok(()) => (true, true),
                // root_squash NFS and filesystems without owners refuse; the data still counts.
                Err(e) if refused(&e) => (false, false),
                Err(e) => {
                    return Err(MetaError {
                        op: "chown",
                        source: e,
                    });
                }
            }
        } else {
            let gid_kept = match chown(None, Some(st.gid)) {
                Ok(()) => true,
                Err(e) if refused(&e) => false,
                Err(e) => {
                    return Err(MetaError {
                        op: "chown",
                        source: e,
                    });
                }
            };
            (st.uid == self.euid, gid_kept)
        };
        let mut perm = st.perm();
        if !uid_kept {
            perm &= !libc::S_ISUID;
        }
        if !gid_kept {
            perm &= !libc::S_ISGID;
        }
        Ok(perm)
    }

    /// Owner, mode and times of an open file or directory.
    pub fn apply_fd(&self, fd: BorrowedFd<'_>, st: &Stat) -> Result<(), MetaError> {
        let perm = self.set_owner(st, |u, g| sys::fchown(fd, u, g))?;
        step("chmod", sys::fchmod(fd, perm))?;
        step("set times", sys::futimens(fd, st.atime, st.mtime))
    }

    /// Owner and times of a symlink (a symlink's mode is not settable on Linux).
    pub fn apply_symlink(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        st: &Stat,
    ) -> Result<(), MetaError> {
        self.set_owner(st, |u, g| sys::lchown_at(dir, name, u, g))?;
        step("set times", sys::lutimens_at(dir, name, st.atime, st.mtime))
    }

    /// Owner, mode and times of a FIFO, socket or device node, without opening it.
    pub fn apply_node(&self, dir: BorrowedFd<'_>, name: &CStr, st: &Stat) -> Result<(), MetaError> {
        let perm = self.set_owner(st, |u, g| sys::lchown_at(dir, name, u, g))?;
        step("chmod", sys::chmod_at(dir, name, perm))?;
        step("set times", sys::lutimens_at(dir, name, st.atime, st.mtime))
    }
}
