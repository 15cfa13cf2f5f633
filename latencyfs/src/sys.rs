//! Thin wrappers around the libc calls latencyfs makes against the backing store.
//!
//! Every wrapper returns `Result<_, Errno>` so that a failing backing syscall can be handed
//! to the kernel unchanged: the point of a passthrough filesystem is that callers see the
//! same errno they would have seen on the backing directory.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo, TimeOrNow};

pub type SysResult<T> = Result<T, Errno>;

/// The calling thread's errno as a FUSE error (EIO if errno is somehow 0).
pub fn last_errno() -> Errno {
    Errno::from_i32(
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO),
    )
}

fn check(rc: libc::c_int) -> SysResult<libc::c_int> {
    if rc < 0 { Err(last_errno()) } else { Ok(rc) }
}

fn check_size(rc: libc::ssize_t) -> SysResult<usize> {
    if rc < 0 {
        Err(last_errno())
    } else {
        Ok(rc as usize)
    }
}

/// Names coming from the kernel never contain NUL, but paths built from them are
/// checked anyway rather than trusted.
pub fn cpath(bytes: &[u8]) -> SysResult<CString> {
    CString::new(bytes).map_err(|_| Errno::EINVAL)
}

/// Where a backing file is, for the `*at` syscalls: normally an absolute path (with
/// AT_FDCWD); for paths too long for the kernel (PATH_MAX) an fd of the parent directory,
/// reached one component at a time, plus the last name. An NFS server has no path length
/// limit either, since it works from file handles.
#[derive(Debug)]
pub struct Loc {
    dir: Option<OwnedFd>,
    name: CString,
}

/// Room left for the kernel's own NUL and some slack below PATH_MAX.
const SHORT_PATH: usize = libc::PATH_MAX as usize - 2;

impl Loc {
    /// `root` is absolute; `rel` is relative to it ("" for the root itself).
    pub fn new(root: &[u8], rel: &[u8]) -> SysResult<Loc> {
        if root.len() + 1 + rel.len() <= SHORT_PATH {
            let mut p = Vec::with_capacity(root.len() + 1 + rel.len());
            p.extend_from_slice(root);
            if !rel.is_empty() {
                p.push(b'/');
                p.extend_from_slice(rel);
            }
            return Ok(Loc {
                dir: None,
                name: cpath(&p)?,
            });
        }
        let (parent, last) = match rel.iter().rposition(|&c| c == b'/') {
            Some(i) => (&rel[..i], &rel[i + 1..]),
            None => (&b""[..], rel),
        };
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let mut dir = open(&cpath(root)?, flags, 0)?;
        for comp in parent.split(|&c| c == b'/').filter(|c| !c.is_empty()) {
            // SAFETY: valid dir fd and NUL-terminated component; the new fd is ours.
            let fd =
                check(unsafe { libc::openat(dir.as_raw_fd(), cpath(comp)?.as_ptr(), flags, 0) })?;
            // SAFETY: fd was just returned by openat.
            dir = unsafe { OwnedFd::from_raw_fd(fd) };
        }
        Ok(Loc {
            dir: Some(dir),
            name: cpath(last)?,
        })
    }

    fn dirfd(&self) -> RawFd {
        self.dir.as_ref().map_or(libc::AT_FDCWD, |d| d.as_raw_fd())
    }

    fn name(&self) -> *const libc::c_char {
        self.name.as_ptr()
    }

    /// A path for the syscalls that have no `*at` form (the l*xattr family).
    fn path(&self) -> SysResult<CString> {
        match &self.dir {
            None => Ok(self.name.clone()),
            Some(d) => {
                let mut p = format!("/proc/self/fd/{}/", d.as_raw_fd()).into_bytes();
                p.extend_from_slice(self.name.as_bytes());
                cpath(&p)
            }
        }
    }
}

pub fn lstat(loc: &Loc) -> SysResult<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid dirfd/name and out-pointer.
    check(unsafe {
        libc::fstatat(
            loc.dirfd(),
            loc.name(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so it filled the struct.
    Ok(unsafe { st.assume_init() })
}

/// `fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW)`: stats a directory entry relative to an
/// open directory, which stays correct even if the directory was renamed meanwhile.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> SysResult<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid fd, NUL-terminated name, valid out-pointer.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded.
    Ok(unsafe { st.assume_init() })
}

pub fn fstat(fd: BorrowedFd<'_>) -> SysResult<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid fd and out-pointer.
    check(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded.
    Ok(unsafe { st.assume_init() })
}

fn open(path: &CStr, flags: i32, mode: u32) -> SysResult<OwnedFd> {
    // SAFETY: NUL-terminated path; the returned fd is owned by us from here on.
    let fd = check(unsafe { libc::open(path.as_ptr(), flags, mode as libc::c_uint) })?;
    // SAFETY: fd was just returned by open and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn open_at(loc: &Loc, flags: i32, mode: u32) -> SysResult<OwnedFd> {
    // SAFETY: valid dirfd/name; the returned fd is owned by us from here on.
    let fd = check(unsafe { libc::openat(loc.dirfd(), loc.name(), flags, mode as libc::c_uint) })?;
    // SAFETY: fd was just returned by open and is not owned elsewhere.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// pread until `buf` is full or EOF: a FUSE read must return the full size except at EOF,
/// otherwise the kernel zero-fills the rest of the page.
pub fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> SysResult<usize> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer/length pair stays inside buf.
        let rc = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                buf[done..].as_mut_ptr().cast(),
                buf.len() - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        match check_size(rc) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e == Errno::EINTR => continue,
            // Data already read is still good; the error will show up on the next read.
            Err(_) if done > 0 => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// pwrite everything, or report how much got written before an error (a short count is
/// what a real ENOSPC looks like to the writer, and the next write then fails).
pub fn pwrite_full(fd: BorrowedFd<'_>, data: &[u8], offset: u64) -> SysResult<usize> {
    let mut done = 0;
    while done < data.len() {
        // SAFETY: the pointer/length pair stays inside data.
        let rc = unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                data[done..].as_ptr().cast(),
                data.len() - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        match check_size(rc) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e == Errno::EINTR => continue,
            Err(_) if done > 0 => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// One directory entry as the backing `getdents` returned it.
#[derive(Debug, Clone)]
pub struct RawDirEntry {
    pub name: OsString,
    pub ino: u64,
    pub kind: Option<FileType>,
}

/// Reads a whole directory through `dirfd` (rewinding it first). latencyfs snapshots the
/// listing per directory handle so that readdir offsets are simple indexes.
pub fn read_dir(dirfd: BorrowedFd<'_>) -> SysResult<Vec<RawDirEntry>> {
    // fdopendir takes ownership of the fd it is given, so hand it a duplicate.
    // SAFETY: plain fcntl on a valid fd.
    let dup = check(unsafe { libc::fcntl(dirfd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: dup is a valid directory fd we own; on success DIR owns it.
    let dir = unsafe { libc::fdopendir(dup) };
    if dir.is_null() {
        let e = last_errno();
        // SAFETY: fdopendir failed, so dup is still ours to close.
        unsafe { libc::close(dup) };
        return Err(e);
    }
    // The dup shares its file offset with the handle's fd, which an earlier listing moved.
    // SAFETY: dir is a valid DIR*.
    unsafe { libc::rewinddir(dir) };
    let mut out = Vec::new();
    let result = loop {
        // SAFETY: resetting errno so that end-of-directory and errors can be told apart.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: dir is a valid DIR*; the entry is only read before the next readdir call.
        let ent = unsafe { libc::readdir64(dir) };
        if ent.is_null() {
            // SAFETY: reading errno.
            let err = unsafe { *libc::__errno_location() };
            break if err == 0 {
                Ok(())
            } else {
                Err(Errno::from_i32(err))
            };
        }
        // SAFETY: ent points to a valid dirent64 whose d_name is NUL-terminated.
        let (name, ino, dtype) = unsafe {
            let e = &*ent;
            (
                CStr::from_ptr(e.d_name.as_ptr()).to_bytes().to_vec(),
                e.d_ino,
                e.d_type,
            )
        };
        out.push(RawDirEntry {
            name: OsString::from_vec(name),
            ino,
            kind: kind_from_dtype(dtype),
        });
    };
    // SAFETY: dir is valid and closed exactly once (this also closes dup).
    unsafe { libc::closedir(dir) };
    result.map(|()| out)
}

fn kind_from_dtype(d: u8) -> Option<FileType> {
    Some(match d {
        libc::DT_REG => FileType::RegularFile,
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        _ => return None,
    })
}

pub fn kind_from_mode(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// A (seconds, nanoseconds) timestamp as SystemTime, correct for pre-1970 times too.
fn system_time(sec: i64, nsec: i64) -> SystemTime {
    let nanos = Duration::from_nanos(nsec.clamp(0, 999_999_999) as u64);
    if sec >= 0 {
        UNIX_EPOCH + Duration::from_secs(sec as u64) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + nanos
    }
}

/// The kernel's 32-bit device encoding (`new_encode_dev`), which is what FUSE carries.
pub fn encode_dev(dev: u64) -> u32 {
    let (major, minor) = (libc::major(dev) as u64, libc::minor(dev) as u64);
    ((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)) as u32
}

/// Inverse of [`encode_dev`], for the `rdev` of a FUSE mknod request.
pub fn decode_dev(dev: u32) -> u64 {
    let major = (dev & 0xfff00) >> 8;
    let minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
    libc::makedev(major, minor)
}

/// Builds the FUSE attributes from a backing `stat`. `ino` is the number the kernel will
/// show as st_ino (see the inode table for why that is normally the backing st_ino).
pub fn attr_from_stat(st: &libc::stat, ino: u64, blksize: Option<u32>) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: system_time(st.st_atime, st.st_atime_nsec),
        mtime: system_time(st.st_mtime, st.st_mtime_nsec),
        ctime: system_time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: kind_from_mode(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: encode_dev(st.st_rdev),
        blksize: blksize.unwrap_or(st.st_blksize as u32),
        flags: 0,
    }
}

/// Converts a setattr time to the timespec for utimensat.
///
/// fuser 0.18 builds pre-1970 times as `UNIX_EPOCH - Duration::new(-sec, nsec)` (its
/// conversion has a TODO there), so the exact inverse of that is used here; the
/// integration test pins this with a pre-epoch timestamp.
pub fn timespec_from(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => libc::timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as i64,
            },
            Err(e) => {
                let d = e.duration();
                libc::timespec {
                    tv_sec: -(d.as_secs() as i64),
                    tv_nsec: d.subsec_nanos() as i64,
                }
            }
        },
    }
}

pub fn utimens(loc: &Loc, fd: Option<RawFd>, times: &[libc::timespec; 2]) -> SysResult<()> {
    // SAFETY: valid dirfd/name/fd and a two-element timespec array.
    let rc = unsafe {
        match fd {
            Some(fd) => libc::futimens(fd, times.as_ptr()),
            None => libc::utimensat(
                loc.dirfd(),
                loc.name(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            ),
        }
    };
    check(rc).map(drop)
}

pub fn chmod(loc: &Loc, fd: Option<RawFd>, mode: u32) -> SysResult<()> {
    // SAFETY: valid dirfd/name/fd.
    let rc = unsafe {
        match fd {
            Some(fd) => libc::fchmod(fd, mode),
            None => libc::fchmodat(loc.dirfd(), loc.name(), mode, 0),
        }
    };
    check(rc).map(drop)
}

/// lchown semantics (never follows a symlink); `u32::MAX` leaves an id unchanged.
pub fn chown(loc: &Loc, fd: Option<RawFd>, uid: u32, gid: u32) -> SysResult<()> {
    // SAFETY: valid dirfd/name/fd.
    let rc = unsafe {
        match fd {
            Some(fd) => libc::fchown(fd, uid, gid),
            None => libc::fchownat(loc.dirfd(), loc.name(), uid, gid, libc::AT_SYMLINK_NOFOLLOW),
        }
    };
    check(rc).map(drop)
}

pub fn truncate(loc: &Loc, fd: Option<RawFd>, size: u64) -> SysResult<()> {
    // There is no truncateat(); a long path goes through a short-lived fd instead (only
    // regular files are ever truncated, so opening cannot block).
    let temp;
    let fd = match (fd, &loc.dir) {
        (Some(fd), _) => Some(fd),
        (None, None) => None,
        (None, Some(_)) => {
            temp = open_at(loc, libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC, 0)?;
            Some(temp.as_raw_fd())
        }
    };
    // SAFETY: valid path/fd.
    let rc = unsafe {
        match fd {
            Some(fd) => libc::ftruncate(fd, size as libc::off_t),
            None => libc::truncate(loc.name(), size as libc::off_t),
        }
    };
    check(rc).map(drop)
}

pub fn readlink(loc: &Loc) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: buf is writable for its full length.
    let n = check_size(unsafe {
        libc::readlinkat(loc.dirfd(), loc.name(), buf.as_mut_ptr().cast(), buf.len())
    })?;
    buf.truncate(n);
    Ok(buf)
}

pub fn mknod(loc: &Loc, mode: u32, rdev: u64) -> SysResult<()> {
    // SAFETY: valid dirfd/name.
    check(unsafe { libc::mknodat(loc.dirfd(), loc.name(), mode, rdev) }).map(drop)
}

pub fn mkdir(loc: &Loc, mode: u32) -> SysResult<()> {
    // SAFETY: valid dirfd/name.
    check(unsafe { libc::mkdirat(loc.dirfd(), loc.name(), mode) }).map(drop)
}

pub fn symlink(target: &CStr, loc: &Loc) -> SysResult<()> {
    // SAFETY: valid target, dirfd and name.
    check(unsafe { libc::symlinkat(target.as_ptr(), loc.dirfd(), loc.name()) }).map(drop)
}

pub fn link(old: &Loc, new: &Loc) -> SysResult<()> {
    // SAFETY: valid dirfds/names; flags 0 = do not follow a symlink source (link(2)).
    check(unsafe { libc::linkat(old.dirfd(), old.name(), new.dirfd(), new.name(), 0) }).map(drop)
}

pub fn unlink(loc: &Loc) -> SysResult<()> {
    // SAFETY: valid dirfd/name.
    check(unsafe { libc::unlinkat(loc.dirfd(), loc.name(), 0) }).map(drop)
}

pub fn rmdir(loc: &Loc) -> SysResult<()> {
    // SAFETY: valid dirfd/name.
    check(unsafe { libc::unlinkat(loc.dirfd(), loc.name(), libc::AT_REMOVEDIR) }).map(drop)
}

pub fn rename(old: &Loc, new: &Loc, flags: u32) -> SysResult<()> {
    // SAFETY: valid dirfds/names; renameat2 passes NOREPLACE/EXCHANGE/WHITEOUT through.
    check(unsafe { libc::renameat2(old.dirfd(), old.name(), new.dirfd(), new.name(), flags) })
        .map(drop)
}

pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> SysResult<()> {
    // SAFETY: valid fd.
    let rc = unsafe {
        if datasync {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    };
    check(rc).map(drop)
}

pub fn statvfs(loc: &Loc) -> SysResult<libc::statvfs> {
    let path = loc.path()?;
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: valid path and out-pointer.
    check(unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) })?;
    // SAFETY: statvfs succeeded.
    Ok(unsafe { st.assume_init() })
}

/// `lgetxattr`/`llistxattr` share the "size 0 asks for the size" convention; `name` None
/// means list.
pub fn get_or_list_xattr(loc: &Loc, name: Option<&CStr>, size: usize) -> SysResult<Vec<u8>> {
    let path = loc.path()?;
    let mut buf = vec![0u8; size];
    let ptr = if size == 0 {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr()
    };
    // SAFETY: ptr is null with size 0, or valid for `size` bytes.
    let n = check_size(unsafe {
        match name {
            Some(name) => libc::lgetxattr(path.as_ptr(), name.as_ptr(), ptr.cast(), size),
            None => libc::llistxattr(path.as_ptr(), ptr.cast(), size),
        }
    })?;
    if size == 0 {
        // Caller only wanted the length; encode it as a vector of that length.
        buf.resize(n, 0);
    } else {
        buf.truncate(n);
    }
    Ok(buf)
}

pub fn set_xattr(loc: &Loc, name: &CStr, value: &[u8], flags: i32) -> SysResult<()> {
    let path = loc.path()?;
    // SAFETY: valid path/name and value slice.
    check(unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

pub fn remove_xattr(loc: &Loc, name: &CStr) -> SysResult<()> {
    let path = loc.path()?;
    // SAFETY: valid path/name.
    check(unsafe { libc::lremovexattr(path.as_ptr(), name.as_ptr()) }).map(drop)
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> SysResult<()> {
    // SAFETY: valid fd.
    check(unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })
    .map(drop)
}

pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> SysResult<i64> {
    // SAFETY: valid fd.
    let rc = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    if rc < 0 { Err(last_errno()) } else { Ok(rc) }
}

/// Server-side copy between two backing files (what NFSv4.2 COPY does on the server).
pub fn copy_file_range(
    fd_in: BorrowedFd<'_>,
    off_in: u64,
    fd_out: BorrowedFd<'_>,
    off_out: u64,
    len: usize,
) -> SysResult<usize> {
    let mut oi = off_in as libc::loff_t;
    let mut oo = off_out as libc::loff_t;
    // SAFETY: valid fds and offset pointers.
    check_size(unsafe {
        libc::copy_file_range(
            fd_in.as_raw_fd(),
            &mut oi,
            fd_out.as_raw_fd(),
            &mut oo,
            len,
            0,
        )
    })
}

pub fn os_bytes(s: &OsStr) -> &[u8] {
    s.as_bytes()
}
