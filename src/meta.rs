//! Ownership, extended attributes (POSIX ACLs among them), permissions and timestamps of a
//! copied entry, in the order that keeps them: owner first (chown clears setuid/setgid and
//! security.capability), then xattrs, then mode, then times last.

use crate::sys::{self, Stat};
use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Which metadata step failed.
pub struct MetaError {
    pub op: &'static str,
    pub source: io::Error,
}

fn step<T>(op: &'static str, r: io::Result<T>) -> Result<T, MetaError> {
    r.map_err(|source| MetaError { op, source })
}

/// What applying metadata could not do without it being a failure of the entry.
#[derive(Debug, Default, Clone, Copy)]
#[must_use]
pub struct Applied {
    /// The destination filesystem refused extended attributes (EOPNOTSUPP).
    pub xattrs_unsupported: bool,
}

/// An entry whose metadata is read or written: an open descriptor, or a name in an open
/// directory (symlinks and special files, which are never opened).
#[derive(Clone, Copy)]
pub enum Node<'a> {
    Fd(BorrowedFd<'a>),
    At(BorrowedFd<'a>, &'a CStr),
}

/// xattr's descriptor calls want a type that is AsRawFd; a borrowed descriptor is one.
struct FdRef<'a>(BorrowedFd<'a>);

impl AsRawFd for FdRef<'_> {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl xattr::FileExt for FdRef<'_> {}

impl Node<'_> {
    /// A path for the l*xattr calls that stays short however deep the entry is: the
    /// directory's handle through /proc, then the name, whose final symlink is not followed.
    fn proc_path(dir: BorrowedFd<'_>, name: &CStr) -> PathBuf {
        let mut path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        path.push(OsStr::from_bytes(name.to_bytes()));
        path
    }

    fn list_xattrs(&self) -> io::Result<Vec<std::ffi::OsString>> {
        use xattr::FileExt;
        let names = match *self {
            Node::Fd(fd) => FdRef(fd).list_xattr()?,
            Node::At(dir, name) => xattr::list(Self::proc_path(dir, name))?,
        };
        Ok(names.collect())
    }

    fn get_xattr(&self, attr: &OsStr) -> io::Result<Option<Vec<u8>>> {
        use xattr::FileExt;
        match *self {
            Node::Fd(fd) => FdRef(fd).get_xattr(attr),
            Node::At(dir, name) => xattr::get(Self::proc_path(dir, name), attr),
        }
    }

    fn remove_xattr(&self, attr: &OsStr) -> io::Result<()> {
        use xattr::FileExt;
        match *self {
            Node::Fd(fd) => FdRef(fd).remove_xattr(attr),
            Node::At(dir, name) => xattr::remove(Self::proc_path(dir, name), attr),
        }
    }

    fn set_xattr(&self, attr: &OsStr, value: &[u8]) -> io::Result<()> {
        use xattr::FileExt;
        match *self {
            Node::Fd(fd) => FdRef(fd).set_xattr(attr, value),
            Node::At(dir, name) => xattr::set(Self::proc_path(dir, name), attr, value),
        }
    }
}

/// The xattr names under which the kernel stores POSIX ACLs.
pub const ACL_ACCESS: &str = "system.posix_acl_access";
pub const ACL_DEFAULT: &str = "system.posix_acl_default";

fn errno_is(e: &io::Error, codes: &[i32]) -> bool {
    e.raw_os_error().is_some_and(|c| codes.contains(&c))
}

/// How metadata is reproduced in this run: who we are (root reproduces any owner; others
/// keep what the kernel allows, as `cp -a` does) and whether xattrs are copied.
#[derive(Debug, Clone, Copy)]
pub struct Preserver {
    pub root: bool,
    pub euid: u32,
    pub xattrs: bool,
}

impl Preserver {
    /// Whether entries created in this destination directory inherit ACLs: it has a default
    /// ACL (left by an earlier run, or inherited itself).
    pub fn passes_acls_on(&self, dir: BorrowedFd<'_>) -> bool {
        use xattr::FileExt;
        self.xattrs && matches!(FdRef(dir).get_xattr(ACL_DEFAULT), Ok(Some(_)))
    }

    pub fn new(xattrs: bool) -> Self {
        Preserver {
            root: sys::is_root(),
            euid: nix::unistd::geteuid().as_raw(),
            xattrs,
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
        let refused = |e: &io::Error| errno_is(e, &[libc::EPERM, libc::EINVAL]);
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

    /// Copies every extended attribute `src` has to `dst`: user.*, and, where the kernel lets
    /// us read and write them (root), trusted.* and security.*; POSIX ACLs travel as
    /// system.posix_acl_access and system.posix_acl_default. `inherited`: `dst` was created in
    /// a directory with a default ACL and got ACLs its source does not have; they are removed.
    fn copy_xattrs(
        &self,
        src: Node<'_>,
        dst: Node<'_>,
        inherited: bool,
    ) -> Result<Applied, MetaError> {
        let mut applied = Applied::default();
        if !self.xattrs {
            return Ok(applied);
        }
        let names = match src.list_xattrs() {
            Ok(names) => names,
            // A source filesystem without xattrs has none to copy.
            Err(e) if errno_is(&e, &[libc::EOPNOTSUPP]) => Vec::new(),
            Err(e) => {
                return Err(MetaError {
                    op: "list xattrs of",
                    source: e,
                });
            }
        };
        if inherited {
            for acl in [ACL_ACCESS, ACL_DEFAULT] {
                if names.iter().any(|n| n == acl) {
                    continue;
                }
                match dst.remove_xattr(OsStr::new(acl)) {
                    Err(e) if !errno_is(&e, &[libc::ENODATA, libc::EOPNOTSUPP]) => {
                        return Err(MetaError {
                            op: "remove inherited ACL of",
                            source: e,
                        });
                    }
                    _ => {}
                }
            }
        }
        // Attributes an unprivileged user may not read or write (trusted.*, some security.*)
        // are skipped, as cp -a skips them.
        let privileged = |e: &io::Error| !self.root && errno_is(e, &[libc::EPERM, libc::EACCES]);
        for attr in names {
            let value = match src.get_xattr(&attr) {
                Ok(Some(value)) => value,
                Ok(None) => continue,
                Err(e) if privileged(&e) => continue,
                Err(e) => {
                    return Err(MetaError {
                        op: "read xattr of",
                        source: e,
                    });
                }
            };
            match dst.set_xattr(&attr, &value) {
                Ok(()) => {}
                Err(e) if errno_is(&e, &[libc::EOPNOTSUPP]) => {
                    applied.xattrs_unsupported = true;
                    return Ok(applied);
                }
                Err(e) if privileged(&e) => {}
                Err(e) => {
                    return Err(MetaError {
                        op: "set xattr on",
                        source: e,
                    });
                }
            }
        }
        Ok(applied)
    }

    /// Owner, xattrs, mode and times of an open file or directory; `src` is the open source;
    /// `inherited`: created in a directory with a default ACL.
    pub fn apply_fd(
        &self,
        src: BorrowedFd<'_>,
        fd: BorrowedFd<'_>,
        st: &Stat,
        inherited: bool,
    ) -> Result<Applied, MetaError> {
        let perm = self.set_owner(st, |u, g| sys::fchown(fd, u, g))?;
        let applied = self.copy_xattrs(Node::Fd(src), Node::Fd(fd), inherited)?;
        step("chmod", sys::fchmod(fd, perm))?;
        step("set times", sys::futimens(fd, st.atime, st.mtime))?;
        Ok(applied)
    }

    /// Owner, xattrs and times of a symlink (a symlink's mode is not settable on Linux).
    pub fn apply_symlink(
        &self,
        src: Node<'_>,
        dir: BorrowedFd<'_>,
        name: &CStr,
        st: &Stat,
    ) -> Result<Applied, MetaError> {
        self.set_owner(st, |u, g| sys::lchown_at(dir, name, u, g))?;
        // Symlinks carry no ACLs, so nothing inherited needs removing.
        let applied = self.copy_xattrs(src, Node::At(dir, name), false)?;
        step("set times", sys::lutimens_at(dir, name, st.atime, st.mtime))?;
        Ok(applied)
    }

    /// Owner, xattrs, mode and times of a FIFO, socket or device node, without opening it.
    pub fn apply_node(
        &self,
        src: Node<'_>,
        dir: BorrowedFd<'_>,
        name: &CStr,
        st: &Stat,
        inherited: bool,
    ) -> Result<Applied, MetaError> {
        let perm = self.set_owner(st, |u, g| sys::lchown_at(dir, name, u, g))?;
        let applied = self.copy_xattrs(src, Node::At(dir, name), inherited)?;
        step("chmod", sys::chmod_at(dir, name, perm))?;
        step("set times", sys::lutimens_at(dir, name, st.atime, st.mtime))?;
        Ok(applied)
    }
}
