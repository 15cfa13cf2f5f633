//! Every Linux system call treecopy makes, behind small functions that take directory handles
//! and names and return `io::Result`. Nothing else in the crate calls libc or nix for I/O.

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

/// The metadata of one entry, as lstat/fstat report it, reduced to what a copy needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    /// Allocated 512-byte blocks.
    pub blocks: u64,
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
    /// The last change of the inode's data or metadata (chmod, chown, xattrs), set by the
    /// kernel and by nobody else.
    pub ctime: (i64, i64),
}

impl Stat {
    fn from_raw(st: &libc::stat) -> Self {
        Stat {
            dev: st.st_dev,
            ino: st.st_ino,
            mode: st.st_mode,
            nlink: st.st_nlink,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: (st.st_atime, st.st_atime_nsec),
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }

    pub fn kind(&self) -> Kind {
        Kind::from_mode(self.mode)
    }

    /// Permission bits including setuid, setgid and sticky.
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }
}

/// The type of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    /// FIFO, socket, character or block device: recreated, never opened.
    Special,
}

impl Kind {
    pub fn from_mode(mode: u32) -> Kind {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFREG => Kind::File,
            libc::S_IFLNK => Kind::Symlink,
            _ => Kind::Special,
        }
    }
}

/// Formats a device number as `major:minor`, as /proc/self/mountinfo does.
pub fn dev_name(dev: u64) -> String {
    format!("{}:{}", libc::major(dev), libc::minor(dev))
}

pub fn cstring(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

pub fn os_string(name: &CStr) -> OsString {
    OsString::from_vec(name.to_bytes().to_vec())
}

fn at_cwd() -> BorrowedFd<'static> {
    // SAFETY: AT_FDCWD is a sentinel the *at calls accept in place of a directory handle.
    unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) }
}

/// Opens a directory by path (the roots of the copy), never following a final symlink.
pub fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    open_dir(at_cwd(), path.as_os_str())
}

/// Opens the directory `name` inside `dir` for listing and as a handle for *at calls.
pub fn open_dir<P: nix::NixPath + ?Sized>(dir: BorrowedFd<'_>, name: &P) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    Ok(nix::fcntl::openat(dir, name, flags, Mode::empty())?)
}

/// Opens a directory this run has just created, as a handle for *at calls only (O_PATH): on a
/// network or FUSE filesystem that is no request, where a full open is an OPENDIR and, at the
/// close, a RELEASEDIR. fchown, fchmod, futimens and the xattr calls below take such a handle;
/// listing and fsync do not. Without /proc (through which those calls reach it), a full open.
pub fn open_new_dir<P: nix::NixPath + ?Sized>(
    dir: BorrowedFd<'_>,
    name: &P,
) -> io::Result<OwnedFd> {
    static PROC_FDS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if !*PROC_FDS.get_or_init(|| Path::new("/proc/self/fd").is_dir()) {
        return open_dir(dir, name);
    }
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    Ok(nix::fcntl::openat(dir, name, flags, Mode::empty())?)
}

/// The path through /proc of what an O_PATH descriptor refers to, which the f* calls refuse
/// with EBADF; calls must follow its final symlink. Following it jumps to the inode the
/// descriptor holds: no lookup and no permission check, so no request to the filesystem
/// (a path ending in "/." would check the directory's permission, a GETATTR on FUSE).
pub fn fd_path(fd: BorrowedFd<'_>) -> std::path::PathBuf {
    use std::os::fd::AsRawFd;
    std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// `by_fd`, or for an O_PATH descriptor (EBADF) `by_path` on its /proc path (to follow).
pub fn on_fd<T>(
    fd: BorrowedFd<'_>,
    by_fd: impl FnOnce() -> io::Result<T>,
    by_path: impl FnOnce(&Path) -> io::Result<T>,
) -> io::Result<T> {
    match by_fd() {
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => by_path(&fd_path(fd)),
        result => result,
    }
}

/// Opens a source file for reading. O_NONBLOCK keeps a FIFO that replaced a regular file since
/// the listing from blocking the worker.
pub fn open_source<P: nix::NixPath + ?Sized>(dir: BorrowedFd<'_>, name: &P) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    open_noatime(dir, name, flags)
}

/// Opens a source directory for listing and as a handle for *at calls.
pub fn open_source_dir<P: nix::NixPath + ?Sized>(
    dir: BorrowedFd<'_>,
    name: &P,
) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    open_noatime(dir, name, flags)
}

/// Opens with O_NOATIME so that copying leaves the source's access times alone, where the
/// kernel allows it (owner or CAP_FOWNER), and without it where it does not.
fn open_noatime<P: nix::NixPath + ?Sized>(
    dir: BorrowedFd<'_>,
    name: &P,
    flags: OFlag,
) -> io::Result<OwnedFd> {
    match nix::fcntl::openat(dir, name, flags | OFlag::O_NOATIME, Mode::empty()) {
        Err(Errno::EPERM) => Ok(nix::fcntl::openat(dir, name, flags, Mode::empty())?),
        other => Ok(other?),
    }
}

/// Opens a top-level source directory by path (its symlinks already resolved by the caller).
pub fn open_source_dir_path(path: &Path) -> io::Result<OwnedFd> {
    open_source_dir(at_cwd(), path.as_os_str())
}

/// Creates a new file that must not exist yet, for writing, owner-only until committed.
/// `direct`: opened with O_DIRECT (see `direct_io_any_alignment`).
pub fn create_exclusive(
    dir: BorrowedFd<'_>,
    name: &CStr,
    mode: u32,
    direct: bool,
) -> io::Result<OwnedFd> {
    let mut flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    if direct {
        flags |= OFlag::O_DIRECT;
    }
    Ok(nix::fcntl::openat(
        dir,
        name,
        flags,
        Mode::from_bits_truncate(mode),
    )?)
}

pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    Ok(Stat::from_raw(&nix::sys::stat::fstat(fd)?))
}

/// The id of the mount `fd` is on (statx STATX_MNT_ID, Linux 5.8), or None where the kernel
/// cannot tell. A bind mount of the same filesystem has the same st_dev as its parent and
/// only this tells it apart. AT_STATX_DONT_SYNC: the id is the client's own knowledge, so a
/// network filesystem need not be asked for fresh attributes.
pub fn mount_id(fd: BorrowedFd<'_>) -> Option<u64> {
    let flags = libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC;
    let stx = statx(fd, c"", flags, libc::STATX_MNT_ID).ok()?;
    (stx.stx_mask & libc::STATX_MNT_ID != 0).then_some(stx.stx_mnt_id)
}

/// Whether `path` (absolute, or relative to the working directory) no longer resolves, asked
/// of the filesystem itself: AT_STATX_FORCE_SYNC makes a network client revalidate with the
/// server rather than answer from its attribute cache, which may still hold a deleted entry.
pub fn gone_by_fresh_lookup(path: &Path) -> bool {
    let Ok(path) = cstring(path.as_os_str()) else {
        return false;
    };
    let flags = libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_FORCE_SYNC;
    statx(at_cwd(), &path, flags, libc::STATX_TYPE)
        .is_err_and(|e| e.raw_os_error() == Some(libc::ENOENT))
}

/// statx(2) of `path` in `dir` (with AT_EMPTY_PATH and "", of `dir` itself).
fn statx(dir: BorrowedFd<'_>, path: &CStr, flags: i32, mask: u32) -> io::Result<libc::statx> {
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: a valid fd, a NUL-terminated path, and a buffer of the size the kernel writes.
    let rc = unsafe {
        libc::statx(
            dir.as_raw_fd(),
            path.as_ptr(),
            flags,
            mask,
            stx.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled the buffer (it returned 0).
    Ok(unsafe { stx.assume_init() })
}

/// lstat relative to a directory handle.
pub fn lstat_at<P: nix::NixPath + ?Sized>(dir: BorrowedFd<'_>, name: &P) -> io::Result<Stat> {
    let st = nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    Ok(Stat::from_raw(&st))
}

pub fn lstat_path(path: &Path) -> io::Result<Stat> {
    lstat_at(at_cwd(), path.as_os_str())
}

pub fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    Ok(nix::sys::stat::mkdirat(
        dir,
        name,
        Mode::from_bits_truncate(mode),
    )?)
}

pub fn rename_at(dir: BorrowedFd<'_>, from: &CStr, to: &CStr) -> io::Result<()> {
    rename_across_to(dir, from, dir, to)
}

/// Renames `from` in `from_dir` to `to` in `to_dir`, replacing a non-directory or an empty
/// directory there.
pub fn rename_across_to(
    from_dir: BorrowedFd<'_>,
    from: &CStr,
    to_dir: BorrowedFd<'_>,
    to: &CStr,
) -> io::Result<()> {
    Ok(nix::fcntl::renameat(from_dir, from, to_dir, to)?)
}

/// Renames `from` in `from_dir` to `to` in `to_dir`, failing with EEXIST where `to` exists
/// (RENAME_NOREPLACE). Where the filesystem lacks the flag (NFS: EINVAL), `to` is looked up
/// first and the rename is plain: the no-replace promise then holds but for a name made in
/// the moment between the two calls.
pub fn rename_noreplace(
    from_dir: BorrowedFd<'_>,
    from: &CStr,
    to_dir: BorrowedFd<'_>,
    to: &CStr,
) -> io::Result<()> {
    use nix::fcntl::{RenameFlags, renameat, renameat2};
    match renameat2(from_dir, from, to_dir, to, RenameFlags::RENAME_NOREPLACE) {
        Err(nix::errno::Errno::EINVAL) => match lstat_at(to_dir, to) {
            Ok(_) => Err(io::Error::from_raw_os_error(libc::EEXIST)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                Ok(renameat(from_dir, from, to_dir, to)?)
            }
            Err(e) => Err(e),
        },
        result => Ok(result?),
    }
}

pub fn unlink_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    Ok(nix::unistd::unlinkat(
        dir,
        name,
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    )?)
}

pub fn symlink_at(target: &OsStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    Ok(nix::unistd::symlinkat(target, dir, name)?)
}

pub fn readlink_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OsString> {
    Ok(nix::fcntl::readlinkat(dir, name)?)
}

pub fn mknod_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    let kind = SFlag::from_bits_truncate(mode & libc::S_IFMT);
    let perm = Mode::from_bits_truncate(0o600);
    Ok(nix::sys::stat::mknodat(dir, name, kind, perm, rdev)?)
}

fn ids(uid: Option<u32>, gid: Option<u32>) -> (Option<nix::unistd::Uid>, Option<nix::unistd::Gid>) {
    (
        uid.map(nix::unistd::Uid::from_raw),
        gid.map(nix::unistd::Gid::from_raw),
    )
}

/// chown of an open file, or of what an O_PATH descriptor refers to.
pub fn fchown(fd: BorrowedFd<'_>, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let (u, g) = ids(uid, gid);
    // AT_EMPTY_PATH: the descriptor itself, however it was opened.
    Ok(nix::unistd::fchownat(
        fd,
        c"",
        u,
        g,
        AtFlags::AT_EMPTY_PATH,
    )?)
}

/// chown of a name relative to a directory, never following a symlink.
pub fn lchown_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    uid: Option<u32>,
    gid: Option<u32>,
) -> io::Result<()> {
    let (u, g) = ids(uid, gid);
    Ok(nix::unistd::fchownat(
        dir,
        name,
        u,
        g,
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?)
}

/// chmod of an open file, or of what an O_PATH descriptor refers to.
pub fn fchmod(fd: BorrowedFd<'_>, perm: u32) -> io::Result<()> {
    let mode = Mode::from_bits_truncate(perm);
    on_fd(
        fd,
        || Ok(nix::sys::stat::fchmod(fd, mode)?),
        |path| {
            Ok(nix::sys::stat::fchmodat(
                at_cwd(),
                path,
                mode,
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )?)
        },
    )
}

fn timespec((sec, nsec): (i64, i64)) -> TimeSpec {
    TimeSpec::new(sec, nsec)
}

/// Sets the times of an open file, or of what an O_PATH descriptor refers to.
pub fn futimens(fd: BorrowedFd<'_>, atime: (i64, i64), mtime: (i64, i64)) -> io::Result<()> {
    let (atime, mtime) = (timespec(atime), timespec(mtime));
    on_fd(
        fd,
        || Ok(nix::sys::stat::futimens(fd, &atime, &mtime)?),
        |path| {
            Ok(nix::sys::stat::utimensat(
                at_cwd(),
                path,
                &atime,
                &mtime,
                UtimensatFlags::FollowSymlink,
            )?)
        },
    )
}

/// Sets the times of a name relative to a directory, never following a symlink.
pub fn lutimens_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    atime: (i64, i64),
    mtime: (i64, i64),
) -> io::Result<()> {
    Ok(nix::sys::stat::utimensat(
        dir,
        name,
        &timespec(atime),
        &timespec(mtime),
        UtimensatFlags::NoFollowSymlink,
    )?)
}

/// Closes a file descriptor and reports the error, which dropping an OwnedFd would swallow: on
/// NFS a failed write may only surface here, and must stop the commit.
pub fn close(fd: OwnedFd) -> io::Result<()> {
    let raw = fd.into_raw_fd();
    // SAFETY: we own `raw` (just taken out of an OwnedFd) and never use it again.
    match unsafe { libc::close(raw) } {
        0 => Ok(()),
        _ => {
            let err = io::Error::last_os_error();
            // EINTR on close still released the descriptor on Linux; the data is not in doubt.
            if err.raw_os_error() == Some(libc::EINTR) {
                Ok(())
            } else {
                Err(err)
            }
        }
    }
}

pub fn dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    fd.try_clone_to_owned()
}

/// One copy_file_range(2) call from the current file offsets of both descriptors.
pub fn copy_file_range(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    len: usize,
) -> Result<usize, Errno> {
    nix::fcntl::copy_file_range(src, None, dst, None, len)
}

/// One sendfile(2) call from the source's current offset.
pub fn sendfile(dst: BorrowedFd<'_>, src: BorrowedFd<'_>, len: usize) -> Result<usize, Errno> {
    nix::sys::sendfile::sendfile64(dst, src, None, len)
}

pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    nix::unistd::read(fd, buf)
}

pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> Result<usize, Errno> {
    nix::unistd::write(fd, buf)
}

/// Whether process `pid` still exists (EPERM: it exists but belongs to someone else).
pub fn process_alive(pid: i32) -> bool {
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(Errno::ESRCH)
    )
}

/// Whether a live process `pid` may be a treecopy run, still writing the temp entries its pid
/// names: not if its command name says otherwise (the pid was reused, as after a reboot). If
/// the name cannot be read, it may be.
pub fn may_be_treecopy(pid: i32) -> bool {
    match std::fs::read(format!("/proc/{pid}/comm")) {
        Ok(comm) => comm.starts_with(b"treecopy"),
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    }
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Raises the open-file limit as far as allowed: deep or wide trees under many workers hold
/// two directory handles per directory in flight. Root may go past the hard limit.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    const WANTED: u64 = 1 << 20;
    if setrlimit(Resource::RLIMIT_NOFILE, WANTED, WANTED).is_err()
        && let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// The open-file limit in force (the soft one).
pub fn fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit};
    getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}

/// Lists a directory through its handle (a duplicate, so the handle stays usable for *at
/// calls), yielding names with the type the filesystem reported, if it reported one.
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<(CString, Option<Kind>)>> {
    let listing = nix::dir::Dir::from_fd(dup(dir)?)?;
    let mut entries = Vec::new();
    for entry in listing {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        use nix::dir::Type;
        let kind = match entry.file_type() {
            Some(Type::Directory) => Some(Kind::Dir),
            Some(Type::File) => Some(Kind::File),
            Some(Type::Symlink) => Some(Kind::Symlink),
            Some(Type::Fifo | Type::Socket | Type::CharacterDevice | Type::BlockDevice) => {
                Some(Kind::Special)
            }
            None => None,
        };
        entries.push((name.to_owned(), kind));
    }
    Ok(entries)
}

/// chmod of a name relative to a directory; only used on entries we just created (never a
/// symlink), because fchmodat cannot refuse to follow one on every kernel.
pub fn chmod_at(dir: BorrowedFd<'_>, name: &CStr, perm: u32) -> io::Result<()> {
    Ok(nix::sys::stat::fchmodat(
        dir,
        name,
        Mode::from_bits_truncate(perm),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )?)
}

/// Clones the whole of `src` into `dst` (shared extents), as `cp --reflink=always` does.
pub fn ficlone(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: FICLONE takes the source descriptor as its argument; both descriptors are open.
    let ret = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Runs `op` on the directory holding `path` and its final name. A path the kernel would
/// refuse as too long (PATH_MAX) is reached one directory handle at a time instead.
fn at_parent_of<T>(
    path: &Path,
    op: impl FnOnce(BorrowedFd<'_>, &CStr) -> io::Result<T>,
) -> io::Result<T> {
    if path.as_os_str().len() < libc::PATH_MAX as usize {
        return op(at_cwd(), &cstring(path.as_os_str())?);
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let name = cstring(name)?;
    let mut dir = open_dir_path(Path::new("/"))?;
    for part in parent.components().skip(1) {
        dir = open_dir(std::os::fd::AsFd::as_fd(&dir), part.as_os_str())?;
    }
    op(std::os::fd::AsFd::as_fd(&dir), &name)
}

/// lstat of a path of any length.
pub fn lstat_long(path: &Path) -> io::Result<Stat> {
    at_parent_of(path, lstat_at)
}

/// Makes `name` in `dir` a new name of the existing entry at `existing` (an absolute path of
/// any length; a final symlink there is linked itself, not followed).
pub fn link_at(existing: &Path, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    at_parent_of(existing, |from, from_name| {
        Ok(nix::unistd::linkat(
            from,
            from_name,
            dir,
            name,
            AtFlags::empty(),
        )?)
    })
}
/// The next data extent at or after `offset` in a file of `size` bytes, as (start, end), or
/// None when only a hole remains. Filesystems without hole tracking report all data.
pub fn next_data(fd: BorrowedFd<'_>, offset: u64, size: u64) -> io::Result<Option<(u64, u64)>> {
    use nix::unistd::{Whence, lseek};
    let start = match lseek(fd, offset as i64, Whence::SeekData) {
        Ok(start) => start as u64,
        Err(Errno::ENXIO) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let end = match lseek(fd, start as i64, Whence::SeekHole) {
        Ok(end) => (end as u64).min(size),
        Err(Errno::ENXIO) => size,
        Err(e) => return Err(e.into()),
    };
    Ok((start < end).then_some((start, end)))
}

pub fn seek_to(fd: BorrowedFd<'_>, offset: u64) -> io::Result<()> {
    nix::unistd::lseek(fd, offset as i64, nix::unistd::Whence::SeekSet)?;
    Ok(())
}

pub fn set_len(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    Ok(nix::unistd::ftruncate(fd, len as i64)?)
}

/// statfs f_type of NFS and of FUSE (linux/magic.h).
const NFS_MAGIC: i64 = 0x6969;
const FUSE_MAGIC: i64 = 0x65735546;

/// Whether the filesystem of `fd` answers over a network or through a user-space daemon,
/// where every call costs a round trip (f_type magics from linux/magic.h and the
/// filesystems' own headers).
pub fn is_remote_fs(fd: BorrowedFd<'_>) -> bool {
    const REMOTE: [i64; 10] = [
        NFS_MAGIC,
        FUSE_MAGIC,
        0xFF534D42_u32 as i64, // CIFS
        0xFE534D42_u32 as i64, // SMB2
        0x517B,                // SMB
        0x00C36400,            // Ceph
        0x0BD00BD0,            // Lustre
        0x47504653,            // GPFS
        0x01021997,            // 9p
        0x5346414F,            // AFS
    ];
    nix::sys::statfs::fstatfs(fd).is_ok_and(|fs| REMOTE.contains(&fs.filesystem_type().0))
}

/// Whether `fd`'s filesystem takes O_DIRECT I/O of any length at any offset from any buffer
/// (NFS and FUSE pass it to the server as it is), unlike block filesystems and Lustre.
pub fn direct_io_any_alignment(fd: BorrowedFd<'_>) -> bool {
    nix::sys::statfs::fstatfs(fd)
        .is_ok_and(|fs| [NFS_MAGIC, FUSE_MAGIC].contains(&fs.filesystem_type().0))
}

/// Takes an exclusive open-file-description lock on the whole of `fd` without waiting.
/// Returns false when another process holds it. OFD locks are released when the last
/// descriptor of the open file closes (a killed process releases them), work between
/// threads of one process, and are carried over NFS by the NFS lock protocol.
pub fn try_lock_exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock is a plain C struct; all-zero is a valid value that we then fill in.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_OFD_SETLK reads the flock struct we pass; the descriptor is open.
    let ret = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
    if ret == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EAGAIN | libc::EACCES) => Ok(false),
        _ => Err(err),
    }
}

/// Opens (creating if needed) a regular file for reading and writing, never through a
/// symlink.
pub fn open_or_create_rw(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    Ok(nix::fcntl::openat(
        dir,
        name,
        flags,
        Mode::from_bits_truncate(mode),
    )?)
}

pub fn fsync(fd: BorrowedFd<'_>) -> io::Result<()> {
    Ok(nix::unistd::fsync(fd)?)
}

/// Drops the cached pages of a file whose data is on disk, so that reading it back reads the
/// disk (or the server), not our own writes in the page cache.
pub fn drop_cache(fd: BorrowedFd<'_>) {
    // A length of 0 is to the end of the file.
    drop_cache_range(fd, 0, 0);
}

/// Writes a range of a file's dirty pages to disk (sync_file_range(2)), waiting for them, and
/// for what was already under writeback there, if `wait`: neither the file's metadata nor the
/// disk's cache, just the data's writeback.
pub fn write_out(fd: BorrowedFd<'_>, offset: u64, len: u64, wait: bool) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let flags = match wait {
        true => {
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER
        }
        false => libc::SYNC_FILE_RANGE_WRITE,
    };
    // SAFETY: plain syscall on a descriptor we borrow; no memory is passed.
    let ret = unsafe { libc::sync_file_range(fd.as_raw_fd(), offset as i64, len as i64, flags) };
    Errno::result(ret).map(drop)
}

/// Drops a range's clean cached pages (dirty ones stay).
pub fn drop_cache_range(fd: BorrowedFd<'_>, offset: u64, len: u64) {
    use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
    let _ = posix_fadvise(
        fd,
        offset as i64,
        len as i64,
        PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
}

/// Reads at an offset, leaving the file offset alone.
pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> Result<usize, Errno> {
    nix::sys::uio::pread(fd, buf, offset as i64)
}

pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: u64) -> Result<usize, Errno> {
    nix::sys::uio::pwrite(fd, buf, offset as i64)
}

/// Removes the empty directory `name` in `dir`.
pub fn rmdir_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    Ok(nix::unistd::unlinkat(
        dir,
        name,
        nix::unistd::UnlinkatFlags::RemoveDir,
    )?)
}

/// The xattr names of `name` in `dir` (not following a symlink) as the raw NUL-separated
/// list, through listxattrat(2) (Linux 6.13): one call, no path through /proc. None where the
/// kernel lacks it, so the caller takes the slower way.
pub fn list_xattrs_at(dir: BorrowedFd<'_>, name: &CStr) -> Option<io::Result<Vec<u8>>> {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    // The same number on every architecture that uses the unified syscall table.
    const SYS_LISTXATTRAT: libc::c_long = 465;
    static MISSING: AtomicBool = AtomicBool::new(false);
    if MISSING.load(Ordering::Relaxed) {
        return None;
    }
    let call = |buf: &mut [u8]| {
        // SAFETY: listxattrat writes at most buf.len() bytes into buf; name is NUL-terminated.
        unsafe {
            libc::syscall(
                SYS_LISTXATTRAT,
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
                buf.as_mut_ptr(),
                buf.len(),
            )
        }
    };
    let mut buf = vec![0u8; 256];
    loop {
        let n = call(&mut buf);
        if n >= 0 {
            buf.truncate(n as usize);
            return Some(Ok(buf));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENOSYS) => {
                MISSING.store(true, Ordering::Relaxed);
                return None;
            }
            Some(libc::ERANGE) => {
                let needed = call(&mut []);
                if needed < 0 {
                    return Some(Err(io::Error::last_os_error()));
                }
                buf.resize(needed as usize + 1, 0);
            }
            _ => return Some(Err(err)),
        }
    }
}

/// chmod of a name relative to a directory that refuses to follow a symlink, through
/// fchmodat2(2) (Linux 6.6); where the kernel lacks it, plain fchmodat on an entry we have
/// just seen is not a symlink.
pub fn chmod_nofollow_at(dir: BorrowedFd<'_>, name: &CStr, perm: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    const SYS_FCHMODAT2: libc::c_long = 452;
    static MISSING: AtomicBool = AtomicBool::new(false);
    if !MISSING.load(Ordering::Relaxed) {
        // SAFETY: fchmodat2 reads the NUL-terminated name; the directory handle is open.
        let ret = unsafe {
            libc::syscall(
                SYS_FCHMODAT2,
                dir.as_raw_fd(),
                name.as_ptr(),
                perm as libc::mode_t,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if ret == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ENOSYS) {
            return Err(err);
        }
        MISSING.store(true, Ordering::Relaxed);
    }
    chmod_at(dir, name, perm)
}

/// Moves a descriptor's offset by `delta` (past the end leaves a hole when written after).
pub fn seek_by(fd: BorrowedFd<'_>, delta: i64) -> io::Result<()> {
    nix::unistd::lseek(fd, delta, nix::unistd::Whence::SeekCur)?;
    Ok(())
}

/// Whether `fd` is on a filesystem whose file sizes say nothing of their content (procfs,
/// sysfs, debugfs, tracefs, securityfs, configfs, cgroup).
pub fn is_pseudo_fs(fd: BorrowedFd<'_>) -> bool {
    const PSEUDO: [i64; 8] = [
        0x9fa0,     // procfs
        0x62656572, // sysfs
        0x64626720, // debugfs
        0x74726163, // tracefs
        0x73636673, // securityfs
        0x62656570, // configfs
        0x27e0eb,   // cgroup
        0x63677270, // cgroup2
    ];
    // Unknown: treat as pseudo, which only costs copying to the end of the data.
    nix::sys::statfs::fstatfs(fd).map_or(true, |fs| PSEUDO.contains(&fs.filesystem_type().0))
}

/// One copy_file_range(2) call at explicit offsets, leaving both descriptors' offsets alone:
/// several workers can copy chunks of one file through the same descriptors.
pub fn copy_file_range_at(
    src: BorrowedFd<'_>,
    src_offset: u64,
    dst: BorrowedFd<'_>,
    dst_offset: u64,
    len: usize,
) -> Result<usize, Errno> {
    let mut off_in = src_offset as i64;
    let mut off_out = dst_offset as i64;
    nix::fcntl::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), len)
}

/// A new open file description of the file open at `fd` (through /proc/self/fd, so no name
/// is looked up again): its own offset, and on NFS-like mounts its own stream. With `direct`,
/// O_DIRECT: on NFS each read or write is then one RPC of the caller's size, bypassing the
/// client's readahead and page cache, and direct writes to one file may run in parallel.
/// None where that fails; the caller then shares `fd`.
pub fn reopen(fd: BorrowedFd<'_>, write: bool, direct: bool) -> Option<OwnedFd> {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let access = if write {
        OFlag::O_WRONLY
    } else {
        OFlag::O_RDONLY
    };
    let mut flags = access | OFlag::O_CLOEXEC;
    if direct {
        flags |= OFlag::O_DIRECT;
    }
    open_noatime(at_cwd(), path.as_str(), flags).ok()
}

/// Whether `path`, or its nearest existing ancestor, is on a network or FUSE filesystem.
pub fn is_remote_path(path: &Path) -> bool {
    path.ancestors()
        .find_map(|p| {
            open_dir_path(p)
                .ok()
                .or_else(|| open_source(at_cwd(), p.as_os_str()).ok())
        })
        .is_some_and(|fd| is_remote_fs(std::os::fd::AsFd::as_fd(&fd)))
}
