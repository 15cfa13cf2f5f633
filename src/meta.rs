//! Ownership, extended attributes (POSIX ACLs among them), permissions and timestamps of a
//! copied entry, in the order that keeps them: owner first (chown clears setuid/setgid and
//! security.capability), then xattrs, then mode, then times last.

use crate::delta::{Expect, MetaDiff};
use crate::sys::{self, Kind, Stat};
use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Which metadata step failed.
pub struct MetaError {
    pub op: &'static str,
    pub source: io::Error,
    /// The step read the source (its xattrs), so the message names the source's path.
    pub of_source: bool,
}

impl MetaError {
    fn on_source(self) -> Self {
        MetaError {
            of_source: true,
            ..self
        }
    }
}

fn step<T>(op: &'static str, r: io::Result<T>) -> Result<T, MetaError> {
    r.map_err(|source| MetaError {
        op,
        source,
        of_source: false,
    })
}

/// What applying metadata could not do without it being a failure of the entry.
#[derive(Debug, Default, Clone, Copy)]
#[must_use]
pub struct Applied {
    /// The destination filesystem refused extended attributes (EOPNOTSUPP).
    pub xattrs_unsupported: bool,
    /// An access ACL was written or removed, which rewrites the mode's group bits.
    pub acl_changed: bool,
}

/// What a new destination entry was created with, from an fstat right after its creation.
#[derive(Clone, Copy, Debug)]
pub struct Created {
    pub uid: u32,
    pub gid: u32,
    /// The permission bits (0o7777).
    pub perm: u32,
}

impl Created {
    pub fn of(st: &Stat) -> Self {
        Created {
            uid: st.uid,
            gid: st.gid,
            perm: st.perm(),
        }
    }
}

/// An entry whose metadata is read or written: a descriptor (an O_PATH one is reached through
/// /proc where an f* call refuses it), or a name in an open directory (symlinks and special
/// files, which are never opened).
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

    /// The names of the node's xattrs, without those that are a filesystem's own (see
    /// `is_internal_xattr`).
    fn list_xattrs(&self) -> io::Result<Vec<std::ffi::OsString>> {
        use xattr::FileExt;
        if let Node::At(dir, name) = *self
            && let Some(raw) = sys::list_xattrs_at(dir, name)
        {
            return Ok(raw?
                .split(|&b| b == 0)
                .filter(|n| !n.is_empty() && !is_internal_xattr(n))
                .map(|n| OsStr::from_bytes(n).to_os_string())
                .collect());
        }
        let names = match *self {
            Node::Fd(fd) => sys::on_fd(fd, || FdRef(fd).list_xattr(), |p| xattr::list_deref(p))?,
            Node::At(dir, name) => xattr::list(Self::proc_path(dir, name))?,
        };
        Ok(names.filter(|n| !is_internal_xattr(n.as_bytes())).collect())
    }

    fn get_xattr(&self, attr: &OsStr) -> io::Result<Option<Vec<u8>>> {
        use xattr::FileExt;
        match *self {
            Node::Fd(fd) => sys::on_fd(
                fd,
                || FdRef(fd).get_xattr(attr),
                |p| xattr::get_deref(p, attr),
            ),
            Node::At(dir, name) => xattr::get(Self::proc_path(dir, name), attr),
        }
    }

    fn remove_xattr(&self, attr: &OsStr) -> io::Result<()> {
        use xattr::FileExt;
        match *self {
            Node::Fd(fd) => sys::on_fd(
                fd,
                || FdRef(fd).remove_xattr(attr),
                |p| xattr::remove_deref(p, attr),
            ),
            Node::At(dir, name) => xattr::remove(Self::proc_path(dir, name), attr),
        }
    }

    fn set_xattr(&self, attr: &OsStr, value: &[u8]) -> io::Result<()> {
        use xattr::FileExt;
        match *self {
            Node::Fd(fd) => sys::on_fd(
                fd,
                || FdRef(fd).set_xattr(attr, value),
                |p| xattr::set_deref(p, attr, value),
            ),
            Node::At(dir, name) => xattr::set(Self::proc_path(dir, name), attr, value),
        }
    }
}

/// The xattr names of an open file (for crate::aside, which lists them ahead).
pub fn list_xattrs_fd(fd: BorrowedFd<'_>) -> io::Result<Vec<std::ffi::OsString>> {
    Node::Fd(fd).list_xattrs()
}

/// Whether an xattr is a filesystem's own record rather than the file's: XFS lists each POSIX
/// ACL a second time as trusted.SGI_ACL_FILE / trusted.SGI_ACL_DEFAULT (removing that alias
/// removes the ACL; copying it elsewhere writes XFS's on-disk format as a plain xattr), and
/// keeps DMAPI, MAC and capability records under trusted.SGI_*; security.evm is written only
/// by the kernel. cp -a skips the same names (libattr's /etc/xattr.conf).
fn is_internal_xattr(name: &[u8]) -> bool {
    const EXACT: [&[u8]; 5] = [
        b"trusted.SGI_ACL_FILE",
        b"trusted.SGI_ACL_DEFAULT",
        b"trusted.SGI_CAP_FILE",
        b"trusted.SGI_MAC_FILE",
        b"security.evm",
    ];
    const PREFIXES: [&[u8]; 4] = [b"trusted.SGI_DMI_", b"xfsroot.", b"afs.", b"user.Beagle."];
    EXACT.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The xattr names under which the kernel stores POSIX ACLs.
pub const ACL_ACCESS: &str = "system.posix_acl_access";
pub const ACL_DEFAULT: &str = "system.posix_acl_default";

fn errno_is(e: &io::Error, codes: &[i32]) -> bool {
    e.raw_os_error().is_some_and(|c| codes.contains(&c))
}

/// How metadata is reproduced in this run: who we are (root reproduces any owner; others
/// keep what the kernel allows, as `cp -a` does) and whether xattrs are copied.
#[derive(Debug, Clone)]
pub struct Preserver {
    pub root: bool,
    pub euid: u32,
    pub xattrs: bool,
    /// The groups an unprivileged run may give its files (its effective and supplementary
    /// groups); root may give any.
    pub groups: Vec<u32>,
}

impl Preserver {
    /// Whether entries created in this destination directory inherit ACLs: it has a default
    /// ACL (left by an earlier run, or inherited itself).
    pub fn passes_acls_on(&self, dir: BorrowedFd<'_>) -> bool {
        use xattr::FileExt;
        self.xattrs && matches!(FdRef(dir).get_xattr(ACL_DEFAULT), Ok(Some(_)))
    }

    pub fn new(xattrs: bool) -> Self {
        let mut groups: Vec<u32> = nix::unistd::getgroups()
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_default();
        groups.push(nix::unistd::getegid().as_raw());
        Preserver {
            root: sys::is_root(),
            euid: nix::unistd::geteuid().as_raw(),
            xattrs,
            groups,
        }
    }

    /// What an up-to-date destination entry should look like, for this run.
    pub fn expect(&self) -> Expect<'_> {
        Expect {
            root: self.root,
            euid: self.euid,
            groups: &self.groups,
        }
    }

    /// How an existing destination entry's metadata differs from what a copy of `st` would
    /// have: owner, group, mode, mtime (within `window_ns`), and xattrs/ACLs when copied.
    pub fn diff(
        &self,
        src: Node<'_>,
        st: &Stat,
        dst: Node<'_>,
        dst_st: &Stat,
        window_ns: u64,
    ) -> Result<MetaDiff, MetaError> {
        let mut diff = self.expect().diff(st, dst_st, window_ns);
        if self.xattrs {
            let (acls, others) = self.xattr_diff(src, dst)?;
            diff.acls = acls;
            diff.xattrs = others;
        }
        Ok(diff)
    }

    /// As `diff`, for an entry found up to date on a rerun: xattrs and ACLs are compared only
    /// if `must_read_xattrs` says they can differ, so that the usual rerun costs no xattr call
    /// at all (two `lstat`s per file).
    pub fn diff_rerun(
        &self,
        src: Node<'_>,
        st: &Stat,
        dst: Node<'_>,
        dst_st: &Stat,
        window_ns: u64,
        thorough: bool,
    ) -> Result<MetaDiff, MetaError> {
        if crate::delta::must_read_xattrs(st, dst_st, thorough) {
            return self.diff(src, st, dst, dst_st, window_ns);
        }
        Ok(self.expect().diff(st, dst_st, window_ns))
    }

    /// The xattrs a copy would carry: every readable one of `node`, sorted by name.
    fn readable_xattrs(
        &self,
        node: Node<'_>,
    ) -> Result<Vec<(std::ffi::OsString, Vec<u8>)>, MetaError> {
        let names = match node.list_xattrs() {
            Ok(names) => names,
            Err(e) if errno_is(&e, &[libc::EOPNOTSUPP]) => Vec::new(),
            Err(e) => return step("list xattrs of", Err(e)),
        };
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            match node.get_xattr(&name) {
                Ok(Some(value)) => out.push((name, value)),
                Ok(None) => {}
                Err(e) if !self.root && errno_is(&e, &[libc::EPERM, libc::EACCES]) => {}
                Err(e) => return step("read xattr of", Err(e)),
            }
        }
        out.sort();
        Ok(out)
    }

    /// Whether the ACLs, and the other xattrs, of `dst` differ from those of `src`. The usual
    /// case, neither having any, costs one list call each.
    fn xattr_diff(&self, src: Node<'_>, dst: Node<'_>) -> Result<(bool, bool), MetaError> {
        let a = self.readable_xattrs(src).map_err(MetaError::on_source)?;
        let b = self.readable_xattrs(dst)?;
        if a == b {
            return Ok((false, false));
        }
        let is_acl = |n: &OsStr| n == ACL_ACCESS || n == ACL_DEFAULT;
        let part = |v: &[(std::ffi::OsString, Vec<u8>)], acl: bool| {
            v.iter()
                .filter(|(n, _)| is_acl(n) == acl)
                .cloned()
                .collect::<Vec<_>>()
        };
        Ok((
            part(&a, true) != part(&b, true),
            part(&a, false) != part(&b, false),
        ))
    }

    /// Makes the xattrs of `dst` those of `src`: sets every one of the source's, removes the
    /// ones the source does not have.
    fn sync_xattrs(&self, src: Node<'_>, dst: Node<'_>) -> Result<Applied, MetaError> {
        let mut applied = Applied::default();
        let want = self.readable_xattrs(src).map_err(MetaError::on_source)?;
        let have = self.readable_xattrs(dst)?;
        for (name, _) in have
            .iter()
            .filter(|(n, _)| !want.iter().any(|(w, _)| w == n))
        {
            match dst.remove_xattr(name) {
                Err(e) if !errno_is(&e, &[libc::ENODATA, libc::EOPNOTSUPP]) => {
                    return step("remove xattr of", Err(e));
                }
                _ => {}
            }
        }
        for (name, value) in want.iter().filter(|pair| !have.contains(pair)) {
            self.set_one_xattr(dst, name, value, &mut applied)?;
        }
        Ok(applied)
    }

    /// Sets one xattr on `dst`. A filesystem that refuses the attribute's namespace (ACLs on a
    /// noacl mount) is noted in `applied`, not failed, and may still take the others; an
    /// attribute an unprivileged user may not write (trusted.*) is skipped, as cp -a does.
    fn set_one_xattr(
        &self,
        dst: Node<'_>,
        name: &OsStr,
        value: &[u8],
        applied: &mut Applied,
    ) -> Result<(), MetaError> {
        match dst.set_xattr(name, value) {
            Ok(()) => Ok(()),
            Err(e) if errno_is(&e, &[libc::EOPNOTSUPP]) => {
                applied.xattrs_unsupported = true;
                Ok(())
            }
            Err(e) if !self.root && errno_is(&e, &[libc::EPERM, libc::EACCES]) => Ok(()),
            Err(e) => step("set xattr on", Err(e)),
        }
    }

    /// Fixes, in place, the metadata of an existing destination entry whose data is up to
    /// date: only what `diff` says differs, in the order that keeps it (chown, which clears
    /// setuid/setgid, before chmod; times last, since the other changes leave mtime alone).
    pub fn fix_in_place(
        &self,
        src: Node<'_>,
        dir: BorrowedFd<'_>,
        name: &CStr,
        st: &Stat,
        diff: &MetaDiff,
    ) -> Result<Applied, MetaError> {
        let symlink = st.kind() == Kind::Symlink;
        let mut perm = self.expect().perm(st);
        let owner_changed = diff.owner || diff.group;
        if owner_changed {
            perm = self.set_owner(st, None, |u, g| sys::lchown_at(dir, name, u, g))?;
        }
        let mut applied = Applied::default();
        // The kernel drops security.capability on chown: the xattrs are compared again.
        let caps_dropped = owner_changed && !symlink && self.xattrs;
        if diff.acls || diff.xattrs || caps_dropped {
            applied = self.sync_xattrs(src, Node::At(dir, name))?;
        }
        // chown cleared setuid/setgid and a changed ACL may have rewritten the group bits.
        if !symlink && (diff.perms || owner_changed || diff.acls) {
            step("chmod", sys::chmod_nofollow_at(dir, name, perm))?;
        }
        if diff.mtime {
            step("set times", sys::lutimens_at(dir, name, st.atime, st.mtime))?;
        }
        Ok(applied)
    }

    /// Owner, xattrs, mode and times of an existing destination directory, unless they are
    /// already those of the source (a rerun). Returns None when nothing needed doing.
    pub fn sync_dir(
        &self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        st: &Stat,
    ) -> Result<Option<Applied>, MetaError> {
        let now = step("stat", sys::fstat(dst))?;
        let diff = self.diff(Node::Fd(src), st, Node::Fd(dst), &now, 0)?;
        if !diff.any() {
            // Access times do not make a directory differ (listing it may have just changed
            // its own), but they are put back.
            if now.atime != st.atime {
                step("set times", sys::futimens(dst, st.atime, st.mtime))?;
            }
            return Ok(None);
        }
        let perm = self.set_owner(st, Some((now.uid, now.gid)), |u, g| sys::fchown(dst, u, g))?;
        let applied = if diff.acls || diff.xattrs {
            self.sync_xattrs(Node::Fd(src), Node::Fd(dst))?
        } else {
            Applied::default()
        };
        step("chmod", sys::fchmod(dst, perm))?;
        step("set times", sys::futimens(dst, st.atime, st.mtime))?;
        Ok(Some(applied))
    }

    /// Gives the new entry the source's owner where permitted. Returns the permission bits
    /// that are safe to apply: setuid/setgid are dropped when the owner or group could not be
    /// reproduced, so a copy never gains privileges its source did not grant. `current`: the
    /// entry's owner and group where known; no chown is made that would change nothing (on NFS
    /// it is a round trip, on FUSE three).
    fn set_owner(
        &self,
        st: &Stat,
        current: Option<(u32, u32)>,
        chown: impl Fn(Option<u32>, Option<u32>) -> io::Result<()>,
    ) -> Result<u32, MetaError> {
        let refused = |e: &io::Error| errno_is(e, &[libc::EPERM, libc::EINVAL]);
        let (uid_kept, gid_kept) = if current == Some((st.uid, st.gid)) {
            (true, true)
        } else if self.root {
            match chown(Some(st.uid), Some(st.gid)) {
                Ok(()) => (true, true),
                // root_squash NFS and filesystems without owners refuse; the data still counts.
                Err(e) if refused(&e) => (false, false),
                Err(e) => {
                    return Err(MetaError {
                        op: "chown",
                        source: e,
                        of_source: false,
                    });
                }
            }
        } else if current.is_some_and(|(_, gid)| gid == st.gid) {
            (st.uid == self.euid, true)
        } else {
            let gid_kept = match chown(None, Some(st.gid)) {
                Ok(()) => true,
                Err(e) if refused(&e) => false,
                Err(e) => {
                    return Err(MetaError {
                        op: "chown",
                        source: e,
                        of_source: false,
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
    /// `listed`: `src`'s names, where they were listed ahead.
    fn copy_xattrs(
        &self,
        src: Node<'_>,
        dst: Node<'_>,
        inherited: bool,
        listed: Option<crate::aside::Names>,
    ) -> Result<Applied, MetaError> {
        let mut applied = Applied::default();
        if !self.xattrs {
            return Ok(applied);
        }
        let names = match listed.unwrap_or_else(|| src.list_xattrs()) {
            Ok(names) => names,
            // A source filesystem without xattrs has none to copy.
            Err(e) if errno_is(&e, &[libc::EOPNOTSUPP]) => Vec::new(),
            Err(e) => {
                return Err(MetaError {
                    op: "list xattrs of",
                    source: e,
                    of_source: true,
                });
            }
        };
        if inherited {
            for acl in [ACL_ACCESS, ACL_DEFAULT] {
                if names.iter().any(|n| n == acl) {
                    continue;
                }
                match dst.remove_xattr(OsStr::new(acl)) {
                    Ok(()) => applied.acl_changed = true,
                    Err(e) if !errno_is(&e, &[libc::ENODATA, libc::EOPNOTSUPP]) => {
                        return Err(MetaError {
                            op: "remove inherited ACL of",
                            source: e,
                            of_source: false,
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
                        of_source: true,
                    });
                }
            };
            applied.acl_changed |= attr == ACL_ACCESS;
            self.set_one_xattr(dst, &attr, &value, &mut applied)?;
        }
        Ok(applied)
    }

    /// Owner, xattrs, mode and times of an open file or directory; `src` is the open source;
    /// `inherited`: created in a directory with a default ACL; `listed`: `src`'s xattr names,
    /// where they were listed ahead.
    /// `created`: the owner, group and permission bits `fd` was created with, where known: a
    /// chown or chmod that would change nothing is not made (on NFS each is a round trip).
    pub fn apply_fd(
        &self,
        src: BorrowedFd<'_>,
        fd: BorrowedFd<'_>,
        st: &Stat,
        inherited: bool,
        created: Option<Created>,
        listed: Option<crate::aside::Names>,
    ) -> Result<Applied, MetaError> {
        let owner = created.map(|c| (c.uid, c.gid));
        let perm = self.set_owner(st, owner, |u, g| sys::fchown(fd, u, g))?;
        let applied = self.copy_xattrs(Node::Fd(src), Node::Fd(fd), inherited, listed)?;
        // A chown clears only setuid and setgid, which a mode that needs no chmod lacks.
        let unchanged = created.is_some_and(|c| c.perm == perm && perm & 0o7000 == 0);
        if !unchanged || applied.acl_changed {
            step("chmod", sys::fchmod(fd, perm))?;
        }
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
        self.set_owner(st, None, |u, g| sys::lchown_at(dir, name, u, g))?;
        // Symlinks carry no ACLs, so nothing inherited needs removing.
        let applied = self.copy_xattrs(src, Node::At(dir, name), false, None)?;
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
        let perm = self.set_owner(st, None, |u, g| sys::lchown_at(dir, name, u, g))?;
        let applied = self.copy_xattrs(src, Node::At(dir, name), inherited, None)?;
        step("chmod", sys::chmod_at(dir, name, perm))?;
        step("set times", sys::lutimens_at(dir, name, st.atime, st.mtime))?;
        Ok(applied)
    }
}
