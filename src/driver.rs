//! The copy pool: directories are listed and entries copied as rayon tasks on `-j` workers,
//! so enumeration runs in parallel with copying and with itself; per-entry outcomes are
//! reported and counted; each directory's metadata is applied when its subtree is done.

use crate::commit::{CommitError, TempEntry, remove_stale};
use crate::config::{Config, Reflink};
use crate::copy::{self, DeviceCache};
use crate::error::{Context, EntryError, EntryResult};
use crate::links::{Claim, First, HardLinks};
use crate::meta::{Applied, MetaError, Node, Preserver};
use crate::report::Reporter;
use crate::sys::{self, Kind, Stat};
use crate::walk::Plan;
use std::collections::HashSet;
use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A directory being copied: open handles on both sides, shared by the tasks of its entries
/// and of its subdirectories. When the last of them is done the pair is dropped, and its drop
/// applies the directory's owner, mode and times: after all its contents are in place (so a
/// 0500 directory can still be filled, and our renames inside it do not bump its mtime),
/// through the open handle (so no path is resolved, however long).
struct DirPair<'e> {
    src: OwnedFd,
    src_path: PathBuf,
    dst: OwnedFd,
    dst_path: PathBuf,
    dst_dev: u64,
    /// The source directory's metadata, to apply on completion; None for the destination
    /// directory of a single-file copy, which is not ours to change.
    meta: Option<Stat>,
    /// This destination directory has a default ACL, so what we create in it inherits ACLs.
    passes_acls: bool,
    /// This destination directory was created in one that passes ACLs on.
    inherited_acls: bool,
    /// The destination is a local filesystem: files are created one at a time (see
    /// `Engine::create_lock`).
    local_dst: bool,
    /// Keeps the parent open, and its metadata pending, until this subtree is done.
    parent: Option<Arc<DirPair<'e>>>,
    engine: &'e Engine,
    finished: bool,
}

impl DirPair<'_> {
    fn src_path(&self, name: &CStr) -> PathBuf {
        self.src_path.join(OsStr::from_bytes(name.to_bytes()))
    }

    fn dst_path(&self, name: &CStr) -> PathBuf {
        self.dst_path.join(OsStr::from_bytes(name.to_bytes()))
    }

    /// Applies the directory's metadata once. An interrupted run leaves it for the next run.
    fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) || crate::signal::received().is_some() {
            return;
        }
        if let Some(meta) = &self.meta {
            let engine = self.engine;
            match engine.meta.apply_fd(
                self.src.as_fd(),
                self.dst.as_fd(),
                meta,
                self.inherited_acls,
            ) {
                Ok(applied) => engine.note(applied, self.dst_dev, &self.dst_path),
                Err(e) => engine.rep.failed(&meta_error(e, &self.dst_path)),
            }
        }
    }
}

impl Drop for DirPair<'_> {
    /// Finishes this directory, then every ancestor whose last reference this was. A loop,
    /// not recursive drops: a tree 10,000 levels deep must not exhaust a worker's stack.
    fn drop(&mut self) {
        self.finish();
        let mut parent = self.parent.take();
        while let Some(pair) = parent.and_then(Arc::into_inner) {
            let mut pair = pair;
            pair.finish();
            parent = pair.parent.take();
        }
    }
}

pub struct Engine {
    rep: Reporter,
    cache: DeviceCache,
    meta: Preserver,
    links: HardLinks,
    opts: Options,
    /// Serialises file creation on local destinations. There, creating is CPU work in the
    /// kernel's inode allocator, and concurrent allocations in one block group make ext4
    /// (without a journal, which skips recently freed inodes) rescan the group: W1 spent 70%
    /// of its kernel time there with 16 workers, and ran 1.3-2x faster with creation
    /// serialised while data, metadata and renames stay parallel (docs/benchmarks.md). On
    /// network filesystems a create is a round trip and stays parallel.
    create_lock: Mutex<()>,
    /// Destination devices already warned about refusing xattrs.
    xattrs_refused_on: Mutex<HashSet<u64>>,
}

/// The parts of the Config the engine acts on.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub xattrs: bool,
    pub hard_links: bool,
    pub reflink: Reflink,
}

impl Options {
    pub fn of(cfg: &Config) -> Self {
        Options {
            xattrs: cfg.xattrs,
            hard_links: cfg.hard_links,
            reflink: cfg.reflink,
        }
    }
}

impl Engine {
    pub fn new(rep: Reporter, opts: Options) -> Self {
        Engine {
            rep,
            cache: DeviceCache::default(),
            meta: Preserver::new(opts.xattrs),
            links: HardLinks::default(),
            opts,
            create_lock: Mutex::new(()),
            xattrs_refused_on: Mutex::new(HashSet::new()),
        }
    }

    /// Runs the plan on `pool`. Entry failures are reported and counted; only a failure to
    /// start at all (the roots) is returned as an error.
    pub fn run(&self, plan: &Plan, pool: &rayon::ThreadPool) -> anyhow::Result<()> {
        match plan {
            Plan::Tree {
                src,
                dst,
                dst_exists,
            } => self.run_tree(src, dst, *dst_exists, pool),
            Plan::File {
                src,
                dst_dir,
                dst_name,
            } => self.run_file(src, dst_dir, dst_name, pool),
        }
    }

    fn run_tree(
        &self,
        src: &Path,
        dst: &Path,
        dst_exists: bool,
        pool: &rayon::ThreadPool,
    ) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let src_fd = sys::open_source_dir_path(src)
            .with_context(|| format!("open source directory {}", src.display()))?;
        let src_stat =
            sys::fstat(src_fd.as_fd()).with_context(|| format!("stat {}", src.display()))?;
        if !dst_exists {
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("create directory {}", parent.display()))?;
            }
            match std::fs::create_dir(dst) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(e).with_context(|| format!("create directory {}", dst.display()));
                }
                _ => {}
            }
        }
        let dst_fd = sys::open_dir_path(dst)
            .with_context(|| format!("open destination directory {}", dst.display()))?;
        let dst_stat =
            sys::fstat(dst_fd.as_fd()).with_context(|| format!("stat {}", dst.display()))?;
        self.make_writable(&dst_fd, &dst_stat)
            .with_context(|| format!("chmod {}", dst.display()))?;
        self.rep.done_dir();
        let passes_acls = self.meta.passes_acls_on(dst_fd.as_fd());
        let local_dst = !sys::is_remote_fs(dst_fd.as_fd());
        let root = Arc::new(DirPair {
            src: src_fd,
            src_path: src.to_path_buf(),
            dst: dst_fd,
            dst_path: dst.to_path_buf(),
            dst_dev: dst_stat.dev,
            meta: Some(src_stat),
            passes_acls,
            inherited_acls: !dst_exists && passes_acls,
            local_dst,
            parent: None,
            engine: self,
            finished: false,
        });
        pool.scope(|scope| self.copy_dir(scope, root, true));
        Ok(())
    }

    fn run_file(
        &self,
        src: &Path,
        dst_dir: &Path,
        dst_name: &OsStr,
        pool: &rayon::ThreadPool,
    ) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let (Some(src_dir), Some(src_name)) = (src.parent(), src.file_name()) else {
            anyhow::bail!("source {} names no file", src.display());
        };
        let src_fd = sys::open_source_dir_path(src_dir)
            .with_context(|| format!("open directory {}", src_dir.display()))?;
        let dst_fd = sys::open_dir_path(dst_dir)
            .with_context(|| format!("open destination directory {}", dst_dir.display()))?;
        let dst_dev = sys::fstat(dst_fd.as_fd())
            .with_context(|| format!("stat {}", dst_dir.display()))?
            .dev;
        let passes_acls = self.meta.passes_acls_on(dst_fd.as_fd());
        let local_dst = !sys::is_remote_fs(dst_fd.as_fd());
        let pair = DirPair {
            src: src_fd,
            src_path: src_dir.to_path_buf(),
            dst: dst_fd,
            dst_path: dst_dir.to_path_buf(),
            dst_dev,
            meta: None,
            passes_acls,
            inherited_acls: false,
            local_dst,
            parent: None,
            engine: self,
            finished: false,
        };
        let src_name = sys::cstring(src_name)?;
        let dst_name = sys::cstring(dst_name)?;
        self.rep.found_entries(1);
        pool.install(|| self.copy_file_as(&pair, &src_name, &dst_name));
        Ok(())
    }

    /// As non-root, an existing destination directory without owner write and search
    /// permission (a 0500 left by an earlier run) is opened up until the directory is finished.
    fn make_writable(&self, dir: &OwnedFd, st: &Stat) -> io::Result<()> {
        if self.meta.root || st.perm() & 0o300 == 0o300 {
            return Ok(());
        }
        sys::fchmod(dir.as_fd(), st.perm() | 0o700)
    }

    pub fn reporter(&self) -> &Reporter {
        &self.rep
    }

    /// Warns once per destination device about what its filesystem refused.
    fn note(&self, applied: Applied, dst_dev: u64, path: &Path) {
        if applied.xattrs_unsupported
            && self
                .xattrs_refused_on
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(dst_dev)
        {
            self.rep.warn(&format!(
                "the filesystem of {} (device {}) does not support extended attributes; xattrs and ACLs are not copied there",
                path.display(),
                sys::dev_name(dst_dev)
            ));
        }
    }

    fn report(&self, result: EntryResult<()>) {
        if let Err(err) = result
            && !err.is_interruption()
        {
            self.rep.failed(&err);
        }
    }

    /// Lists one source directory and spawns a task per entry. Subdirectories are spawned
    /// first: the worker takes its newest tasks (this directory's files) itself, while idle
    /// workers steal the oldest (the subdirectories) and list them in parallel.
    fn copy_dir<'s>(&'s self, scope: &rayon::Scope<'s>, dir: Arc<DirPair<'s>>, dst_existed: bool) {
        if crate::signal::received().is_some() {
            return;
        }
        let listing = match sys::list_dir(dir.src.as_fd()) {
            Ok(listing) => listing,
            Err(e) => {
                return self.report(Err(EntryError::new("read directory", &dir.src_path, e)));
            }
        };
        if dst_existed {
            self.remove_leftovers(&dir);
        }
        let mut others = Vec::with_capacity(listing.len());
        for (name, kind) in listing {
            let kind = match kind {
                Some(kind) => kind,
                None => match sys::lstat_at(dir.src.as_fd(), name.as_c_str()) {
                    Ok(st) => st.kind(),
                    Err(e) => {
                        self.report(Err(EntryError::new("stat", &dir.src_path(&name), e)));
                        continue;
                    }
                },
            };
            if kind == Kind::Dir {
                let dir = Arc::clone(&dir);
                scope.spawn(move |scope| self.enter_dir(scope, &dir, &name));
            } else {
                others.push((name, kind));
            }
        }
        self.rep.found_entries(others.len() as u64);
        for (name, kind) in others {
            let dir = Arc::clone(&dir);
            scope.spawn(move |_| {
                if crate::signal::received().is_some() {
                    return;
                }
                match kind {
                    Kind::File => self.copy_file_as(&dir, &name, &name),
                    Kind::Symlink => self.report(self.copy_symlink(&dir, &name)),
                    Kind::Special => self.report(self.copy_special(&dir, &name)),
                    Kind::Dir => unreachable!("directories are spawned above"),
                }
            });
        }
    }

    /// Removes temp files a killed run left in a destination directory we did not create.
    fn remove_leftovers(&self, dir: &DirPair) {
        match sys::list_dir(dir.dst.as_fd()) {
            Ok(listing) => {
                for name in remove_stale(dir.dst.as_fd(), &listing) {
                    self.rep
                        .verbose(|| format!("removed leftover {}", dir.dst_path(&name).display()));
                }
            }
            Err(e) => self.rep.warn(&format!(
                "read directory {}: {e}; leftover temp files there are not cleaned",
                dir.dst_path.display()
            )),
        }
    }

    /// Creates (or reuses) the destination directory for `name` and copies its contents.
    fn enter_dir<'s>(&'s self, scope: &rayon::Scope<'s>, parent: &Arc<DirPair<'s>>, name: &CStr) {
        if crate::signal::received().is_some() {
            return;
        }
        match self.open_dir_pair(parent, name) {
            Ok((pair, existed)) => {
                self.rep.done_dir();
                self.copy_dir(scope, Arc::new(pair), existed);
            }
            Err(err) => self.report(Err(err)),
        }
    }

    /// Opens the source directory `name` and creates or opens its destination. Returns the
    /// pair and whether the destination existed.
    fn open_dir_pair<'s>(
        &'s self,
        parent: &Arc<DirPair<'s>>,
        name: &CStr,
    ) -> EntryResult<(DirPair<'s>, bool)> {
        let src_path = parent.src_path(name);
        let dst_path = parent.dst_path(name);
        let src =
            sys::open_source_dir(parent.src.as_fd(), name).ctx("open directory", &src_path)?;
        let src_stat = sys::fstat(src.as_fd()).ctx("stat", &src_path)?;
        let existed = match sys::mkdir_at(parent.dst.as_fd(), name, 0o700) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => true,
            Err(e) => return Err(EntryError::new("create directory", &dst_path, e)),
        };
        let dst = sys::open_dir(parent.dst.as_fd(), name).ctx("open directory", &dst_path)?;
        let dst_dev = if existed {
            // An existing directory may be a mount point of another filesystem.
            let st = sys::fstat(dst.as_fd()).ctx("stat", &dst_path)?;
            self.make_writable(&dst, &st).ctx("chmod", &dst_path)?;
            st.dev
        } else {
            parent.dst_dev
        };
        let passes_acls = self.meta.passes_acls_on(dst.as_fd());
        // A directory that existed may be a mount point of another filesystem.
        let local_dst = if existed {
            !sys::is_remote_fs(dst.as_fd())
        } else {
            parent.local_dst
        };
        let pair = DirPair {
            src,
            src_path,
            dst,
            dst_path,
            dst_dev,
            meta: Some(src_stat),
            passes_acls,
            inherited_acls: !existed && parent.passes_acls,
            local_dst,
            parent: Some(Arc::clone(parent)),
            engine: self,
            finished: false,
        };
        Ok((pair, existed))
    }

    /// Copies the regular file `src_name` of `dir` to `dst_name` in its destination directory,
    /// and reports the outcome.
    fn copy_file_as(&self, dir: &DirPair, src_name: &CStr, dst_name: &CStr) {
        let src_path = dir.src_path(src_name);
        let dst_path = dir.dst_path(dst_name);
        match self.copy_file(dir, src_name, dst_name, &src_path, &dst_path) {
            Ok(FileOutcome::Copied(bytes)) => self.rep.done_file(bytes),
            Ok(FileOutcome::Linked) => self.rep.done_hardlink(),
            Err(err) => self.report(Err(err)),
        }
    }

    fn copy_file(
        &self,
        dir: &DirPair,
        src_name: &CStr,
        dst_name: &CStr,
        src_path: &Path,
        dst_path: &Path,
    ) -> EntryResult<FileOutcome> {
        let src = sys::open_source(dir.src.as_fd(), src_name).ctx("open", src_path)?;
        let st = sys::fstat(src.as_fd()).ctx("stat", src_path)?;
        if st.kind() != Kind::File {
            // Replaced by something else since the listing: never read a FIFO or device.
            return Err(EntryError::new(
                "open",
                src_path,
                io::Error::other("changed type during the copy; not a regular file"),
            ));
        }
        let first = match self.link_or_claim(&st, dir, dst_name, dst_path)? {
            LinkStep::Linked => return Ok(FileOutcome::Linked),
            LinkStep::Copy(first) => first,
        };
        self.rep.found_bytes(st.size);
        let temp = {
            let _one_at_a_time = dir.local_dst.then(|| lock(&self.create_lock));
            TempEntry::file(dir.dst.as_fd()).ctx("create temp file for", dst_path)?
        };
        let temp_fd = temp.fd().expect("a temp file is open");
        self.rep
            .verbose(|| format!("created {}", dir.dst_path(temp.name()).display()));
        let job = copy::Job {
            src: src.as_fd(),
            dst: temp_fd,
            size: st.size,
            blocks: st.blocks,
            src_dev: st.dev,
            dst_dev: dir.dst_dev,
            src_path,
            dst_path,
            reflink: self.opts.reflink,
        };
        let (bytes, method) = copy::copy(&self.cache, &job, &self.rep)?;
        self.rep.verbose(|| {
            format!(
                "copied {} -> {}: {bytes} bytes by {}",
                src_path.display(),
                dst_path.display(),
                method.name()
            )
        });
        let applied = self
            .meta
            .apply_fd(src.as_fd(), temp_fd, &st, dir.passes_acls)
            .map_err(|e| meta_error(e, dst_path))?;
        self.note(applied, dir.dst_dev, dst_path);
        self.commit(temp, dst_name, dir, dst_path)?;
        if let Some(first) = first {
            first.committed(dst_path);
        }
        Ok(FileOutcome::Copied(bytes))
    }

    /// For an entry with more than one name: links this name to the group's copy when an
    /// earlier name was committed, or takes the duty to copy it. Entries with one name (or
    /// with --no-hard-links) are simply copied.
    fn link_or_claim(
        &self,
        st: &Stat,
        dir: &DirPair,
        dst_name: &CStr,
        dst_path: &Path,
    ) -> EntryResult<LinkStep<'_>> {
        if !self.opts.hard_links || st.nlink < 2 {
            return Ok(LinkStep::Copy(None));
        }
        match self.links.claim((st.dev, st.ino), st.nlink) {
            Claim::First(first) => Ok(LinkStep::Copy(Some(first))),
            Claim::LinkTo(existing) => {
                self.link_file(dir, dst_name, &existing, dst_path)?;
                Ok(LinkStep::Linked)
            }
            Claim::FirstFailed if crate::signal::received().is_some() => {
                Err(EntryError::interrupted(dst_path))
            }
            Claim::FirstFailed => Err(EntryError::new(
                "hard link",
                dst_path,
                io::Error::other("the first name of this hard-linked file was not copied"),
            )),
        }
    }

    /// Gives `dst_name` the inode already committed at `existing`, atomically replacing what
    /// was there; nothing to do if it is already that inode (a run over a complete copy).
    fn link_file(
        &self,
        dir: &DirPair,
        dst_name: &CStr,
        existing: &Path,
        dst_path: &Path,
    ) -> EntryResult<()> {
        if let (Ok(target), Ok(current)) = (
            sys::lstat_long(existing),
            sys::lstat_at(dir.dst.as_fd(), dst_name),
        ) && (target.dev, target.ino) == (current.dev, current.ino)
        {
            return Ok(());
        }
        let temp = TempEntry::hard_link(dir.dst.as_fd(), existing).ctx("link", dst_path)?;
        self.commit(temp, dst_name, dir, dst_path)
    }

    fn commit(
        &self,
        temp: TempEntry<'_>,
        name: &CStr,
        dir: &DirPair,
        dst_path: &Path,
    ) -> EntryResult<()> {
        let temp_path = self.rep.is_verbose().then(|| dir.dst_path(temp.name()));
        temp.commit(name)
            .map_err(|CommitError { op, source }| EntryError::new(op, dst_path, source))?;
        if let Some(temp_path) = temp_path {
            self.rep
                .verbose(|| format!("renamed {} -> {}", temp_path.display(), dst_path.display()));
        }
        Ok(())
    }

    fn copy_symlink(&self, dir: &DirPair, name: &CStr) -> EntryResult<()> {
        let src_path = dir.src_path(name);
        let dst_path = dir.dst_path(name);
        let st = sys::lstat_at(dir.src.as_fd(), name).ctx("stat", &src_path)?;
        let first = match self.link_or_claim(&st, dir, name, &dst_path)? {
            LinkStep::Linked => {
                self.rep.done_hardlink();
                return Ok(());
            }
            LinkStep::Copy(first) => first,
        };
        let target = sys::readlink_at(dir.src.as_fd(), name).ctx("read link", &src_path)?;
        let temp = TempEntry::symlink(dir.dst.as_fd(), &target).ctx("create symlink", &dst_path)?;
        let applied = self
            .meta
            .apply_symlink(
                Node::At(dir.src.as_fd(), name),
                temp.dir(),
                temp.name(),
                &st,
            )
            .map_err(|e| meta_error(e, &dst_path))?;
        self.note(applied, dir.dst_dev, &dst_path);
        self.commit(temp, name, dir, &dst_path)?;
        if let Some(first) = first {
            first.committed(&dst_path);
        }
        self.rep.done_symlink();
        Ok(())
    }

    /// FIFOs, sockets and device nodes are recreated, never opened: a FIFO would block.
    fn copy_special(&self, dir: &DirPair, name: &CStr) -> EntryResult<()> {
        let src_path = dir.src_path(name);
        let dst_path = dir.dst_path(name);
        let st = sys::lstat_at(dir.src.as_fd(), name).ctx("stat", &src_path)?;
        let first = match self.link_or_claim(&st, dir, name, &dst_path)? {
            LinkStep::Linked => {
                self.rep.done_hardlink();
                return Ok(());
            }
            LinkStep::Copy(first) => first,
        };
        let temp = TempEntry::node(dir.dst.as_fd(), st.mode, st.rdev).ctx("mknod", &dst_path)?;
        let applied = self
            .meta
            .apply_node(
                Node::At(dir.src.as_fd(), name),
                temp.dir(),
                temp.name(),
                &st,
                dir.passes_acls,
            )
            .map_err(|e| meta_error(e, &dst_path))?;
        self.note(applied, dir.dst_dev, &dst_path);
        self.commit(temp, name, dir, &dst_path)?;
        if let Some(first) = first {
            first.committed(&dst_path);
        }
        self.rep.done_special();
        Ok(())
    }
}

/// What to do with a name that may share its inode with others.
enum LinkStep<'a> {
    /// Linked to the group's copy: done.
    Linked,
    /// Copy it; with the group's duty when it has other names.
    Copy(Option<First<'a>>),
}

/// How a regular file's name was produced.
enum FileOutcome {
    /// Data copied, this many bytes.
    Copied(u64),
    /// Linked to an earlier name of the same source inode.
    Linked,
}

fn lock(mutex: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn meta_error(e: MetaError, path: &Path) -> EntryError {
    EntryError::new(e.op, path, e.source)
}
