//! The FUSE filesystem: a passthrough to the backing directory that delays every reply
//! by one emulated round trip, optionally paces data per open file, and injects faults.
//!
//! Concurrency: fuser 0.18 runs `Config::n_threads` session loops (`--threads`), each
//! blocking in read(/dev/fuse). A session thread handles the request it read at once
//! (count, backing syscall, reply prepared) and hands the reply to the reply queue
//! (`replies`), which sends it when the request's deadline comes: arrival + latency, or
//! later when the stream's wire is busy. No thread sleeps per request, so the number of
//! requests in flight is not bounded by `--threads` (like an NFS server with many nfsd
//! threads) and N concurrent callers each see about one latency. With no latency the
//! reply is sent inline.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::faults::Faults;
use crate::inodes::{InodeTable, Key, ROOT};
use crate::pacing::{self, Stream};
use crate::replies::ReplyQueue;
use crate::stats::{Op, Stats};
use crate::sys::{self, Loc, RawDirEntry, SysResult};

/// Largest READ/WRITE the kernel may send: 1 MiB, like a typical NFS rsize/wsize.
pub const MAX_IO: u32 = 1 << 20;

/// Background requests the kernel may have in flight at once: enough for readahead to
/// keep many 1 MiB READs outstanding.
const MAX_BACKGROUND: u16 = 64;

/// How a file opened with `flags` (the caller's open(2) flags) is served. O_DIRECT opens
/// bypass the client's cache and may have several writes in flight at once, as on an NFS
/// client, which sends O_DIRECT writes to one file in parallel: FUSE takes a file's writes
/// one at a time under its inode lock unless the open is FOPEN_DIRECT_IO with
/// FOPEN_PARALLEL_DIRECT_WRITES (and then only writes that do not extend the file).
fn open_reply_flags(flags: i32) -> FopenFlags {
    if flags & libc::O_DIRECT != 0 {
        FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
    } else {
        FopenFlags::empty()
    }
}

/// How directory listings carry attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReaddirPlus {
    /// Kernel decides per listing (READDIRPLUS_AUTO), like the Linux NFS client.
    Auto,
    /// Always READDIRPLUS.
    Always,
    /// Plain READDIR; every stat after a listing costs a LOOKUP.
    Never,
}

/// Everything configurable about the emulation.
#[derive(Debug)]
pub struct Settings {
    pub latency: Duration,
    pub stream_bandwidth: Option<u64>,
    pub copy_file_range: bool,
    pub ttl: Duration,
    pub blksize: Option<u32>,
    pub readdirplus: ReaddirPlus,
    /// ESTALE for requests on deleted objects (NFS file-handle semantics).
    pub stale_handles: bool,
    pub faults: Faults,
    pub verbose: bool,
}

/// One open regular file (a FUSE file handle).
#[derive(Debug)]
struct OpenFile {
    fd: OwnedFd,
    /// Node id, to find a handle for attribute requests on unlinked-but-open files.
    ino: u64,
    /// Path at open time, kept only when path fault rules exist (for read/write faults).
    rel: Option<Vec<u8>>,
    /// Bytes written through this handle, for --fail-*-after.
    written: AtomicU64,
    stream: Option<Stream>,
}

/// One open directory: its fd and a snapshot of its entries; readdir offsets index it.
#[derive(Debug)]
struct DirHandle {
    fd: OwnedFd,
    entries: Mutex<Option<Vec<RawDirEntry>>>,
}

pub struct LatencyFs {
    /// Canonical backing root as bytes (no trailing slash).
    root: Vec<u8>,
    s: Settings,
    table: Mutex<InodeTable>,
    /// Held shared by every request while it resolves its backing path and acts on it, and
    /// exclusively by a rename while it renames and updates the table: a passthrough names
    /// files by path, so a directory renamed between the two steps would make a request on
    /// something below it fail with ENOENT, which an NFS server (file handles) never does.
    paths: RwLock<()>,
    files: RwLock<HashMap<u64, Arc<OpenFile>>>,
    dirs: RwLock<HashMap<u64, Arc<DirHandle>>>,
    next_fh: AtomicU64,
    stats: Arc<Stats>,
    replies: ReplyQueue,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking handler must not wedge the whole mount; the data stays consistent
    // because every critical section is a handful of map updates.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn key_of(st: &libc::stat) -> Key {
    (st.st_dev, st.st_ino)
}

impl LatencyFs {
    pub fn new(root: &Path, settings: Settings, stats: Arc<Stats>) -> io::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        let root = root.as_os_str().as_bytes().to_vec();
        let st = Loc::new(&root, b"")
            .and_then(|l| sys::lstat(&l))
            .map_err(|e| io::Error::from_raw_os_error(e.code()))?;
        Ok(Self {
            root,
            s: settings,
            table: Mutex::new(InodeTable::new(key_of(&st))),
            paths: RwLock::new(()),
            files: RwLock::new(HashMap::new()),
            dirs: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            stats,
            replies: ReplyQueue::start()?,
        })
    }

    /// Counts the request and notes when its reply is due: one round trip from now. The
    /// caller then handles it at once and passes the reply to `answer`.
    fn begin(&self, op: Op) -> Call<'_> {
        let mut call = self.begin_renaming(op);
        call._paths = Some(self.paths.read().unwrap_or_else(|e| e.into_inner()));
        call
    }

    /// `begin` for a rename, which takes `paths` exclusively itself.
    fn begin_renaming(&self, op: Op) -> Call<'_> {
        self.stats.count(op);
        let arrived = Instant::now();
        Call {
            arrived,
            due: pacing::round_trip_done(arrived, self.s.latency),
            _paths: None,
        }
    }

    /// Counts a request that is answered without emulated latency.
    fn begin_undelayed(&self, op: Op) -> Call<'_> {
        self.stats.count(op);
        Call {
            arrived: Instant::now(),
            due: None,
            _paths: Some(self.paths.read().unwrap_or_else(|e| e.into_inner())),
        }
    }

    /// Sends a prepared reply when the call is due: inline when it is already, else
    /// from the reply queue's timer thread, so no session thread ever sleeps.
    fn answer(&self, call: Call<'_>, send: impl FnOnce() + Send + 'static) {
        match call.due {
            None => send(),
            Some(due) => self.replies.send_at(due, Box::new(send)),
        }
    }

    fn reply_entry(&self, call: Call<'_>, reply: ReplyEntry, r: SysResult<FileAttr>) {
        let ttl = self.s.ttl;
        self.answer(call, move || match r {
            Ok(attr) => reply.entry(&ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        });
    }

    fn reply_attr(&self, call: Call<'_>, reply: ReplyAttr, r: SysResult<FileAttr>) {
        let ttl = self.s.ttl;
        self.answer(call, move || match r {
            Ok(attr) => reply.attr(&ttl, &attr),
            Err(e) => reply.error(e),
        });
    }

    fn reply_empty(&self, call: Call<'_>, reply: ReplyEmpty, r: SysResult<()>) {
        self.answer(call, move || match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        });
    }

    fn reply_open(&self, call: Call<'_>, reply: ReplyOpen, flags: i32, r: SysResult<u64>) {
        let open_flags = open_reply_flags(flags);
        self.answer(call, move || match r {
            // No FOPEN_KEEP_CACHE: cached pages are dropped at open, so a reader sees what
            // the server has (close-to-open consistency).
            Ok(fh) => reply.opened(FileHandle(fh), open_flags),
            Err(e) => reply.error(e),
        });
    }

    fn reply_xattr(&self, call: Call<'_>, reply: ReplyXattr, size: u32, r: SysResult<Vec<u8>>) {
        self.answer(call, move || match r {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(e),
        });
    }

    fn rel(&self, ino: INodeNo) -> SysResult<Vec<u8>> {
        lock(&self.table).rel_path(ino.0)
    }

    fn child_rel(&self, parent: INodeNo, name: &OsStr) -> SysResult<Vec<u8>> {
        let mut r = self.rel(parent)?;
        if !r.is_empty() {
            r.push(b'/');
        }
        r.extend_from_slice(sys::os_bytes(name));
        Ok(r)
    }

    fn loc(&self, rel: &[u8]) -> SysResult<Loc> {
        Loc::new(&self.root, rel)
    }

    fn parent_of(&self, rel: &[u8]) -> SysResult<Loc> {
        match rel.iter().rposition(|&c| c == b'/') {
            Some(i) => self.loc(&rel[..i]),
            None => self.loc(b""),
        }
    }

    /// With --stale-handles, an ENOENT caused by `ino` itself having been deleted becomes
    /// ESTALE: an NFS client holds file handles, and the server answers a handle whose
    /// object is gone with NFS4ERR_STALE, which the client passes on.
    fn stale(&self, ino: INodeNo, e: Errno) -> Errno {
        if !self.s.stale_handles || e != Errno::ENOENT {
            return e;
        }
        let gone = match self.rel(ino) {
            Ok(rel) => self.loc(&rel).and_then(|loc| sys::lstat(&loc)).is_err(),
            Err(_) => true,
        };
        if gone { Errno::ESTALE } else { e }
    }

    fn fault(&self, op: Op, rel: &[u8]) -> SysResult<()> {
        match self.s.faults.path_fault(op, rel) {
            Some(e) => {
                self.stats.faults_injected.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
            None => Ok(()),
        }
    }

    fn attr(&self, id: u64, st: &libc::stat) -> FileAttr {
        // The root's node id is fixed at 1 by FUSE, but st_ino should still be the real one.
        let shown = if id == ROOT { st.st_ino } else { id };
        sys::attr_from_stat(st, shown, self.s.blksize)
    }

    /// Registers a new kernel reference to `name` in `parent` and builds its attributes.
    fn entry(&self, parent: INodeNo, name: &OsStr, st: &libc::stat) -> FileAttr {
        let key = key_of(st);
        let id = {
            let mut t = lock(&self.table);
            let id = t.id_for(key);
            t.remember(parent.0, name, id, key);
            self.stats
                .nodes_tracked
                .store(t.len() as u64, Ordering::Relaxed);
            id
        };
        self.attr(id, st)
    }

    fn file(&self, fh: FileHandle) -> SysResult<Arc<OpenFile>> {
        self.files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    fn dir(&self, fh: FileHandle) -> SysResult<Arc<DirHandle>> {
        self.dirs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    /// Any open handle on `ino`. The kernel sends GETATTR/SETATTR for fstat()/fchmod()
    /// without the handle, so an open file that was unlinked (no path left) is only
    /// reachable this way.
    fn any_file_for(&self, ino: INodeNo) -> Option<Arc<OpenFile>> {
        self.files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .find(|f| f.ino == ino.0)
            .cloned()
    }

    fn add_file(&self, ino: u64, fd: OwnedFd, rel: &[u8]) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let f = OpenFile {
            fd,
            ino,
            rel: self.s.faults.has_path_rules().then(|| rel.to_vec()),
            written: AtomicU64::new(0),
            stream: self.s.stream_bandwidth.map(Stream::new),
        };
        self.files
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, Arc::new(f));
        fh
    }

    fn file_fault(&self, op: Op, f: &OpenFile) -> SysResult<()> {
        match &f.rel {
            Some(rel) => self.fault(op, rel),
            None => Ok(()),
        }
    }

    /// Makes a newly created node belong to the caller, as an NFS server does with
    /// AUTH_SYS credentials: the daemon runs as root, so the backing fs made it root's.
    /// A group inherited from a set-group-ID parent directory is kept, as locally.
    fn give_to_caller(
        &self,
        req: &Request,
        rel: &[u8],
        path: &Loc,
        fd: Option<RawFd>,
        st: libc::stat,
        mode: u32,
    ) -> SysResult<libc::stat> {
        let uid = req.uid();
        let mut gid = req.gid();
        if st.st_uid == uid && st.st_gid == gid {
            return Ok(st);
        }
        if st.st_gid != gid {
            let parent = sys::lstat(&self.parent_of(rel)?)?;
            if parent.st_mode & libc::S_ISGID != 0 {
                gid = st.st_gid;
            }
        }
        if st.st_uid == uid && st.st_gid == gid {
            return Ok(st);
        }
        sys::chown(path, fd, uid, gid)?;
        let kind = st.st_mode & libc::S_IFMT;
        // chown(2) clears set-ID bits on non-directories; the creator asked for them.
        if kind != libc::S_IFDIR
            && kind != libc::S_IFLNK
            && mode & (libc::S_ISUID | libc::S_ISGID) != 0
        {
            sys::chmod(path, fd, mode & 0o7777)?;
        }
        match fd {
            Some(fd) => sys::fstat(
                // SAFETY: fd is borrowed from an OwnedFd that outlives this call.
                unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            ),
            None => sys::lstat(path),
        }
    }

    /// Shared tail of mknod/mkdir/symlink: fix ownership, stat, register.
    fn finish_new_node(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        rel: &[u8],
        path: &Loc,
        mode: u32,
    ) -> SysResult<FileAttr> {
        let st = sys::lstat(path)?;
        let st = self.give_to_caller(req, rel, path, None, st, mode)?;
        Ok(self.entry(parent, name, &st))
    }

    fn do_getattr(&self, ino: INodeNo, fh: Option<FileHandle>) -> SysResult<FileAttr> {
        if let Some(fh) = fh
            && let Ok(f) = self.file(fh)
        {
            return Ok(self.attr(ino.0, &sys::fstat(f.fd.as_fd())?));
        }
        let rel = match self.rel(ino) {
            Ok(rel) => rel,
            Err(e) => {
                return match self.any_file_for(ino) {
                    Some(f) => Ok(self.attr(ino.0, &sys::fstat(f.fd.as_fd())?)),
                    None => Err(e),
                };
            }
        };
        self.fault(Op::Getattr, &rel)?;
        let st = sys::lstat(&self.loc(&rel)?)?;
        // The name may now refer to another file (replaced directly in the backing dir).
        if lock(&self.table).key_of(ino.0) != Some(key_of(&st)) {
            return Err(Errno::ESTALE);
        }
        Ok(self.attr(ino.0, &st))
    }

    #[allow(clippy::too_many_arguments)]
    fn do_setattr(
        &self,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        fh: Option<FileHandle>,
    ) -> SysResult<FileAttr> {
        let rel = self.rel(ino);
        let file = match fh.and_then(|fh| self.file(fh).ok()) {
            Some(f) => Some(f),
            None if rel.is_err() => self.any_file_for(ino),
            None => None,
        };
        let fd = file.as_ref().map(|f| f.fd.as_raw_fd());
        // An open-but-unlinked file has no path; the handle still works. The "" stand-in
        // is never used as a path then: every sys:: call below prefers the fd.
        let rel = match (&rel, fd) {
            (Ok(r), _) => r.clone(),
            (Err(_), Some(_)) => Vec::new(),
            (Err(e), None) => return Err(*e),
        };
        self.fault(Op::Setattr, &rel)?;
        let path = self.loc(&rel)?;
        // Order matters: chown may clear set-ID bits that an explicit mode then restores,
        // and truncate changes mtime that an explicit utimens then overrides.
        if uid.is_some() || gid.is_some() {
            sys::chown(&path, fd, uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX))?;
        }
        if let Some(mode) = mode {
            sys::chmod(&path, fd, mode & 0o7777)?;
        }
        if let Some(size) = size {
            sys::truncate(&path, fd, size)?;
        }
        if atime.is_some() || mtime.is_some() {
            let times = [sys::timespec_from(atime), sys::timespec_from(mtime)];
            sys::utimens(&path, fd, &times)?;
        }
        let st = match &file {
            Some(f) => sys::fstat(f.fd.as_fd())?,
            None => sys::lstat(&path)?,
        };
        Ok(self.attr(ino.0, &st))
    }

    fn do_create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> SysResult<(FileAttr, u64)> {
        let rel = self.child_rel(parent, name)?;
        self.fault(Op::Create, &rel)?;
        let path = self.loc(&rel)?;
        let fd = sys::open_at(&path, backing_open_flags(flags) | libc::O_CREAT, mode)?;
        let st = sys::fstat(fd.as_fd())?;
        let st = self.give_to_caller(req, &rel, &path, Some(fd.as_raw_fd()), st, mode)?;
        let attr = self.entry(parent, name, &st);
        Ok((attr, self.add_file(attr.ino.0, fd, &rel)))
    }

    fn do_read(
        &self,
        call: &mut Call,
        fh: FileHandle,
        offset: u64,
        size: u32,
    ) -> SysResult<Vec<u8>> {
        let f = self.file(fh)?;
        self.file_fault(Op::Read, &f)?;
        let mut buf = vec![0u8; size as usize];
        let n = sys::pread_full(f.fd.as_fd(), &mut buf, offset)?;
        buf.truncate(n);
        call.paced(f.stream.as_ref(), n as u64);
        self.stats.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(buf)
    }

    fn do_write(
        &self,
        call: &mut Call,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
    ) -> SysResult<u32> {
        let f = self.file(fh)?;
        self.file_fault(Op::Write, &f)?;
        let allowed = self.s.faults.reserve_write(&f.written, data.len() as u64)? as usize;
        if allowed < data.len() {
            self.stats.faults_injected.fetch_add(1, Ordering::Relaxed);
        }
        let n = sys::pwrite_full(f.fd.as_fd(), &data[..allowed], offset)?;
        call.paced(f.stream.as_ref(), n as u64);
        self.stats
            .bytes_written
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n as u32)
    }

    fn load_dir<'a>(
        &self,
        dh: &'a DirHandle,
        offset: u64,
    ) -> SysResult<MutexGuard<'a, Option<Vec<RawDirEntry>>>> {
        let mut g = lock(&dh.entries);
        // Offset 0 is a fresh listing or a rewinddir(), which must see current contents.
        if offset == 0 || g.is_none() {
            *g = Some(sys::read_dir(dh.fd.as_fd())?);
        }
        Ok(g)
    }

    fn do_readdir(&self, fh: FileHandle, offset: u64, reply: &mut ReplyDirectory) -> SysResult<()> {
        let dh = self.dir(fh)?;
        let g = self.load_dir(&dh, offset)?;
        let entries = g.as_deref().unwrap_or_default();
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            let kind = match e.kind {
                Some(k) => k,
                // DT_UNKNOWN from the backing fs: ask it.
                None => match sys::lstat_at(dh.fd.as_fd(), &sys::cpath(e.name.as_encoded_bytes())?)
                {
                    Ok(st) => sys::kind_from_mode(st.st_mode),
                    Err(_) => continue,
                },
            };
            if reply.add(INodeNo(e.ino), i as u64 + 1, kind, &e.name) {
                break;
            }
        }
        Ok(())
    }

    fn do_readdirplus(
        &self,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: &mut ReplyDirectoryPlus,
    ) -> SysResult<()> {
        let dh = self.dir(fh)?;
        let g = self.load_dir(&dh, offset)?;
        let entries = g.as_deref().unwrap_or_default();
        let ttl = self.s.ttl;
        let mut dir_st: Option<libc::stat> = None;
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            let next = i as u64 + 1;
            let name = e.name.as_encoded_bytes();
            if name == b"." || name == b".." {
                // The kernel takes no lookup for these, only their d_ino; any sane
                // directory attributes do.
                let st = match dir_st {
                    Some(st) => st,
                    None => *dir_st.insert(sys::fstat(dh.fd.as_fd())?),
                };
                let mut attr = sys::attr_from_stat(&st, e.ino, self.s.blksize);
                attr.kind = FileType::Directory;
                if reply.add(
                    INodeNo(e.ino),
                    next,
                    &e.name,
                    &Duration::ZERO,
                    &attr,
                    Generation(0),
                ) {
                    break;
                }
                continue;
            }
            let st = match sys::lstat_at(dh.fd.as_fd(), &sys::cpath(name)?) {
                Ok(st) => st,
                // Removed since the snapshot: skip it, as a fresh getdents would.
                Err(_) => continue,
            };
            let key = key_of(&st);
            let id = lock(&self.table).id_for(key);
            let attr = self.attr(id, &st);
            if reply.add(INodeNo(id), next, &e.name, &ttl, &attr, Generation(0)) {
                break;
            }
            // Only entries that made it into the reply give the kernel a lookup reference.
            let mut t = lock(&self.table);
            t.remember(ino.0, &e.name, id, key);
            self.stats
                .nodes_tracked
                .store(t.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    fn do_copy_file_range(
        &self,
        fh_in: FileHandle,
        offset_in: u64,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
    ) -> SysResult<u32> {
        let fin = self.file(fh_in)?;
        let fout = self.file(fh_out)?;
        self.file_fault(Op::CopyFileRange, &fout)?;
        // A server-side copy still writes the destination: the write rules apply too.
        self.file_fault(Op::Write, &fout)?;
        // The reply carries a 32-bit count; callers loop on short copies.
        let len = len.min(1 << 30);
        let allowed = self.s.faults.reserve_write(&fout.written, len)?;
        if allowed < len {
            self.stats.faults_injected.fetch_add(1, Ordering::Relaxed);
        }
        let n = sys::copy_file_range(
            fin.fd.as_fd(),
            offset_in,
            fout.fd.as_fd(),
            offset_out,
            allowed as usize,
        )?;
        self.stats
            .bytes_copied
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n as u32)
    }
}

/// Flags for opening the backing file on behalf of a FUSE OPEN/CREATE.
fn backing_open_flags(flags: i32) -> i32 {
    // O_APPEND: the kernel already turned appends into writes at explicit offsets, and
    // pwrite on an O_APPEND fd would ignore them. O_DIRECT: our buffers are not aligned.
    // O_NOFOLLOW: the kernel resolved symlinks itself, a symlink swapped into the backing
    // dir must not be followed out of it.
    (flags & !(libc::O_APPEND | libc::O_DIRECT | libc::O_NOCTTY | libc::O_CREAT | libc::O_EXCL))
        | (flags & (libc::O_CREAT | libc::O_EXCL))
        | libc::O_CLOEXEC
        | libc::O_NOFOLLOW
}

/// One request's timing: when it arrived and when its reply is due.
struct Call<'a> {
    arrived: Instant,
    /// None: answer at once (no latency, or a request that is not delayed).
    due: Option<Instant>,
    /// Released once the request is handled, before its reply waits out the latency.
    _paths: Option<std::sync::RwLockReadGuard<'a, ()>>,
}

impl Call<'_> {
    /// Pushes the deadline back until `bytes` of data have crossed the open file's
    /// emulated wire (--stream-bandwidth), which they start to do when the request has
    /// reached the "server".
    fn paced(&mut self, stream: Option<&Stream>, bytes: u64) {
        if let Some(s) = stream {
            self.due = Some(s.transfer(bytes, self.due.unwrap_or(self.arrived)));
        }
    }
}

fn name_cstr(name: &OsStr) -> SysResult<CString> {
    sys::cpath(sys::os_bytes(name))
}

impl Filesystem for LatencyFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let mut wanted = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_AUTO_INVAL_DATA
            | InitFlags::FUSE_ASYNC_DIO
            | InitFlags::FUSE_CACHE_SYMLINKS;
        match self.s.readdirplus {
            ReaddirPlus::Auto => {
                wanted |= InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO
            }
            ReaddirPlus::Always => wanted |= InitFlags::FUSE_DO_READDIRPLUS,
            ReaddirPlus::Never => {}
        }
        // Deliberately not FUSE_WRITEBACK_CACHE: writes go to the server when write()
        // is called and size/mtime come from the server, as with NFS close-to-open.
        let supported = config.capabilities();
        let granted = wanted & supported;
        let missing = wanted - supported;
        if let Err(e) = config.add_capabilities(granted) {
            eprintln!("latencyfs: kernel refused capabilities {e:?}");
        }
        if missing.contains(InitFlags::FUSE_PARALLEL_DIROPS) {
            eprintln!(
                "latencyfs: warning: kernel lacks FUSE_PARALLEL_DIROPS; lookups in one directory will be serialized"
            );
        }
        let _ = config.set_max_write(MAX_IO);
        // The kernel offers its readahead maximum; take up to 1 MiB of it.
        if let Err(nearest) = config.set_max_readahead(MAX_IO) {
            let _ = config.set_max_readahead(nearest);
        }
        // Background requests (readahead, async reads, async releases) in flight at once,
        // like an NFS client's RPC slot table. Not tied to --threads: session threads
        // never wait for the latency, so any number of requests can be in flight.
        let _ = config.set_max_background(MAX_BACKGROUND);
        let _ = config.set_congestion_threshold(MAX_BACKGROUND / 4 * 3);
        if self.s.verbose {
            eprintln!(
                "latencyfs: kernel ABI {:?}; granted {:?}; not supported by kernel {:?}",
                config.kernel_abi(),
                granted,
                missing
            );
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let call = self.begin(Op::Lookup);
        let r = (|| {
            let rel = self.child_rel(parent, name)?;
            self.fault(Op::Lookup, &rel)?;
            let st = sys::lstat(&self.loc(&rel)?)?;
            Ok(self.entry(parent, name, &st))
        })()
        .map_err(|e| self.stale(parent, e));
        self.reply_entry(call, reply, r);
    }

    // FORGET has no reply and no NFS counterpart (it is client-side cache eviction), so
    // it is counted but not delayed.
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.stats.count(Op::Forget);
        let mut t = lock(&self.table);
        t.forget(ino.0, nlookup);
        self.stats
            .nodes_tracked
            .store(t.len() as u64, Ordering::Relaxed);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let call = self.begin(Op::Getattr);
        let r = self.do_getattr(ino, fh).map_err(|e| self.stale(ino, e));
        self.reply_attr(call, reply, r);
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let call = self.begin(Op::Setattr);
        let r = self.do_setattr(ino, mode, uid, gid, size, atime, mtime, fh);
        self.reply_attr(call, reply, r);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let call = self.begin(Op::Readlink);
        let r = (|| {
            let rel = self.rel(ino)?;
            self.fault(Op::Readlink, &rel)?;
            sys::readlink(&self.loc(&rel)?)
        })();
        self.answer(call, move || match r {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let call = self.begin(Op::Mknod);
        let r = (|| {
            let rel = self.child_rel(parent, name)?;
            self.fault(Op::Mknod, &rel)?;
            let path = self.loc(&rel)?;
            sys::mknod(&path, mode, sys::decode_dev(rdev))?;
            self.finish_new_node(req, parent, name, &rel, &path, mode)
        })();
        self.reply_entry(call, reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let call = self.begin(Op::Mkdir);
        let r = (|| {
            let rel = self.child_rel(parent, name)?;
            self.fault(Op::Mkdir, &rel)?;
            let path = self.loc(&rel)?;
            sys::mkdir(&path, mode)?;
            self.finish_new_node(req, parent, name, &rel, &path, mode | libc::S_IFDIR)
        })();
        self.reply_entry(call, reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let call = self.begin(Op::Unlink);
        let r = (|| {
            let rel = self.child_rel(parent, name)?;
            self.fault(Op::Unlink, &rel)?;
            sys::unlink(&self.loc(&rel)?)?;
            lock(&self.table).unlinked(parent.0, name);
            Ok(())
        })();
        self.reply_empty(call, reply, r);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let call = self.begin(Op::Rmdir);
        let r = (|| {
            let rel = self.child_rel(parent, name)?;
            self.fault(Op::Rmdir, &rel)?;
            sys::rmdir(&self.loc(&rel)?)?;
            lock(&self.table).unlinked(parent.0, name);
            Ok(())
        })();
        self.reply_empty(call, reply, r);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let call = self.begin(Op::Symlink);
        let r = (|| {
            let rel = self.child_rel(parent, link_name)?;
            self.fault(Op::Symlink, &rel)?;
            let path = self.loc(&rel)?;
            sys::symlink(&name_cstr(target.as_os_str())?, &path)?;
            self.finish_new_node(req, parent, link_name, &rel, &path, libc::S_IFLNK | 0o777)
        })();
        self.reply_entry(call, reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let call = self.begin_renaming(Op::Rename);
        let r = (|| {
            let _exclusive = self.paths.write().unwrap_or_else(|e| e.into_inner());
            let from = self.child_rel(parent, name)?;
            let to = self.child_rel(newparent, newname)?;
            self.fault(Op::Rename, &from)?;
            self.fault(Op::Rename, &to)?;
            sys::rename(&self.loc(&from)?, &self.loc(&to)?, flags.bits())?;
            let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
            lock(&self.table).renamed(parent.0, name, newparent.0, newname, exchange);
            Ok(())
        })();
        self.reply_empty(call, reply, r);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let call = self.begin(Op::Link);
        let r = (|| {
            let old = self.rel(ino)?;
            let new = self.child_rel(newparent, newname)?;
            self.fault(Op::Link, &new)?;
            let new_path = self.loc(&new)?;
            sys::link(&self.loc(&old)?, &new_path)?;
            let st = sys::lstat(&new_path)?;
            Ok(self.entry(newparent, newname, &st))
        })();
        self.reply_entry(call, reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let call = self.begin(Op::Open);
        let r = (|| {
            let rel = self.rel(ino)?;
            self.fault(Op::Open, &rel)?;
            let fd = sys::open_at(&self.loc(&rel)?, backing_open_flags(flags.0), 0)?;
            Ok(self.add_file(ino.0, fd, &rel))
        })()
        .map_err(|e| self.stale(ino, e));
        self.reply_open(call, reply, flags.0, r);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let in_flight = self.stats.io_started(false);
        let mut call = self.begin(Op::Read);
        let r = self.do_read(&mut call, fh, offset, size);
        self.answer(call, move || {
            match r {
                Ok(buf) => reply.data(&buf),
                Err(e) => reply.error(e),
            }
            // In flight until the answer has left.
            drop(in_flight);
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let in_flight = self.stats.io_started(true);
        let mut call = self.begin(Op::Write);
        let r = self.do_write(&mut call, fh, offset, data);
        self.answer(call, move || {
            match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e),
            }
            drop(in_flight);
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Every close() sends FLUSH and waits for it, like an NFS close flushing to the
        // server. Data already went to the backing file at write time.
        // A fault here is what an NFS client reports at close: a write the server refused
        // after accepting it into the client's cache.
        let call = self.begin(Op::Flush);
        let r = self.file(fh).and_then(|f| self.file_fault(Op::Flush, &f));
        self.reply_empty(call, reply, r);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let call = self.begin(Op::Release);
        let removed = self
            .files
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        self.reply_empty(call, reply, removed.map(drop).ok_or(Errno::EBADF));
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let call = self.begin(Op::Fsync);
        let r = self.file(fh).and_then(|f| {
            self.file_fault(Op::Fsync, &f)?;
            sys::fsync(f.fd.as_fd(), datasync)
        });
        self.reply_empty(call, reply, r);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let call = self.begin(Op::Opendir);
        let r = (|| {
            let rel = self.rel(ino)?;
            self.fault(Op::Opendir, &rel)?;
            let fd = sys::open_at(
                &self.loc(&rel)?,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                0,
            )?;
            let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
            let dh = DirHandle {
                fd,
                entries: Mutex::new(None),
            };
            self.dirs
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(fh, Arc::new(dh));
            Ok(fh)
        })()
        .map_err(|e| self.stale(ino, e));
        self.reply_open(call, reply, 0, r);
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let call = self.begin(Op::Readdir);
        let r = self.do_readdir(fh, offset, &mut reply);
        self.answer(call, move || match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let call = self.begin(Op::Readdirplus);
        let r = self.do_readdirplus(ino, fh, offset, &mut reply);
        self.answer(call, move || match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let call = self.begin(Op::Releasedir);
        let removed = self
            .dirs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        self.reply_empty(call, reply, removed.map(drop).ok_or(Errno::EBADF));
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let call = self.begin(Op::Fsyncdir);
        let r = self
            .dir(fh)
            .and_then(|d| sys::fsync(d.fd.as_fd(), datasync));
        self.reply_empty(call, reply, r);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let call = self.begin(Op::Statfs);
        let r = self.loc(b"").and_then(|p| sys::statvfs(&p));
        self.answer(call, move || match r {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(e),
        });
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let call = self.begin(Op::Setxattr);
        let r = (|| {
            let rel = self.rel(ino)?;
            self.fault(Op::Setxattr, &rel)?;
            sys::set_xattr(&self.loc(&rel)?, &name_cstr(name)?, value, flags)
        })();
        self.reply_empty(call, reply, r);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        // FUSE superblocks never get SB_NOSEC, so the kernel asks for security.capability
        // before every write(2) to know whether to strip it. An NFS client answers that
        // locally (it has no security.* xattr handler), so delaying it would double the
        // cost of every write compared to NFS. It is still counted and passed through.
        let call = if sys::os_bytes(name) == b"security.capability" {
            self.begin_undelayed(Op::Getxattr)
        } else {
            self.begin(Op::Getxattr)
        };
        let r = (|| {
            let rel = self.rel(ino)?;
            self.fault(Op::Getxattr, &rel)?;
            sys::get_or_list_xattr(&self.loc(&rel)?, Some(&name_cstr(name)?), size as usize)
        })()
        .map_err(|e| self.stale(ino, e));
        self.reply_xattr(call, reply, size, r);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let call = self.begin(Op::Listxattr);
        let r = (|| {
            let rel = self.rel(ino)?;
            self.fault(Op::Listxattr, &rel)?;
            sys::get_or_list_xattr(&self.loc(&rel)?, None, size as usize)
        })()
        .map_err(|e| self.stale(ino, e));
        self.reply_xattr(call, reply, size, r);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let call = self.begin(Op::Removexattr);
        let r = (|| {
            let rel = self.rel(ino)?;
            self.fault(Op::Removexattr, &rel)?;
            sys::remove_xattr(&self.loc(&rel)?, &name_cstr(name)?)
        })();
        self.reply_empty(call, reply, r);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let call = self.begin(Op::Create);
        let r = self.do_create(req, parent, name, mode, flags);
        let ttl = self.s.ttl;
        let open_flags = open_reply_flags(flags);
        self.answer(call, move || match r {
            Ok((attr, fh)) => reply.created(&ttl, &attr, Generation(0), FileHandle(fh), open_flags),
            Err(e) => reply.error(e),
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let call = self.begin(Op::Fallocate);
        let r = self
            .file(fh)
            .and_then(|f| sys::fallocate(f.fd.as_fd(), mode, offset, length));
        self.reply_empty(call, reply, r);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        // Only SEEK_DATA/SEEK_HOLE reach us (NFSv4.2 SEEK); plain seeks stay in the kernel.
        let call = self.begin(Op::Lseek);
        let r = self
            .file(fh)
            .and_then(|f| sys::lseek(f.fd.as_fd(), offset, whence));
        self.answer(call, move || match r {
            Ok(off) => reply.offset(off),
            Err(e) => reply.error(e),
        });
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let call = self.begin(Op::CopyFileRange);
        if !self.s.copy_file_range {
            // Like a server without NFSv4.2 COPY. ENOSYS rather than EOPNOTSUPP: the kernel
            // then remembers and never sends COPY_FILE_RANGE again (as the NFS client drops
            // its COPY capability after NFS4ERR_NOTSUPP, and NFSv3 has no COPY at all),
            // while EOPNOTSUPP would cost one wasted round trip per call. Either way the
            // kernel (6.18) falls back to an in-kernel splice copy through READ/WRITE
            // requests, so copy_file_range(2) itself still succeeds for the caller.
            self.answer(call, move || reply.error(Errno::ENOSYS));
            return;
        }
        let r = if flags.is_empty() {
            self.do_copy_file_range(fh_in, offset_in, fh_out, offset_out, len)
        } else {
            Err(Errno::EINVAL)
        };
        self.answer(call, move || match r {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        });
    }
}
