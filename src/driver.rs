//! The copy pool: directories are listed and entries copied as rayon tasks on `-j` workers,
//! so enumeration runs in parallel with copying and with itself. Each entry is compared with
//! what the destination holds (create, replace, fix metadata in place, or leave it), the
//! destination's extraneous entries are removed with --delete, per-entry outcomes are
//! reported and counted, and each directory's metadata is applied when its subtree is done.

use crate::commit::{
    CommitError, Location, Naming, StagedFor, TempEntry, adopt_staged, at_current, remove_stale,
    staged_dir, staged_for, temp_owner,
};
use crate::config::{Config, Reflink};
use crate::copy::{self, DeviceCache};
use crate::delete::{Doomed, Removal, Stop};
use crate::delta::{self, Change, MetaDiff, Policy, Verdict};
use crate::error::{Context, EntryError, EntryResult, shown};
use crate::filter::Filter;
use crate::links::{Claim, First, HardLinks};
use crate::lock::LOCK_NAME;
use crate::meta::{Applied, Created, MetaError, Node, Preserver};
use crate::report::Reporter;
use crate::sys::{self, Kind, Stat};
use crate::walk::Plan;
use crate::writeback::WriteBehind;
use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, TryLockError};

/// The hard-link groups of one run.
type Links<'e> = HardLinks<LinkTarget, PutOff<'e>>;
/// The duty of copying a hard-link group's first name.
type Group<'a, 'e> = First<'a, LinkTarget, PutOff<'e>>;

/// A directory being copied: open handles on both sides, shared by the tasks of its entries
/// and of its subdirectories. When the last of them is done the pair is dropped, and its drop
/// applies the directory's owner, mode and times: after all its contents are in place (so a
/// 0500 directory can still be filled, and our renames inside it do not bump its mtime),
/// through the open handle (so no path is resolved, however long).
struct DirPair<'e> {
    src: OwnedFd,
    src_path: PathBuf,
    /// Relative to SRC: what filters match and itemized lines show.
    rel: PathBuf,
    /// None only in a dry run, for a destination directory that does not exist yet.
    dst: Option<OwnedFd>,
    /// Its final path, and where it is while it is staged.
    dst_loc: Arc<Location>,
    /// The destination directory is new and staged under a temp name while this directory's
    /// entries are copied: they are created under their final names, with no rename each.
    hidden: bool,
    /// A staged directory a killed run left, resumed by this one: what it holds was written
    /// under final names and may have been cut off, so it is checked strictly.
    adopted: bool,
    dst_dev: u64,
    /// The source directory's metadata, to apply on completion; None for the destination
    /// directory of a single-file copy, which is not ours to change.
    meta: Option<Stat>,
    /// The destination directory was there before this run.
    existed: bool,
    /// How an existing destination directory's metadata differed from its source's when the
    /// run reached it (before our own renames inside changed its mtime).
    pre_diff: MetaDiff,
    /// This destination directory has a default ACL, so what we create in it inherits ACLs.
    passes_acls: bool,
    /// This destination directory was created in one that passes ACLs on.
    inherited_acls: bool,
    /// The owner, group and mode a directory this run created got, so that a chown or chmod
    /// that would change nothing is not made.
    created: Option<Created>,
    /// The destination is a local filesystem: files are created one at a time (see
    /// `Engine::create_lock`).
    local_dst: bool,
    /// The source directory is on a network or FUSE filesystem.
    remote_src: bool,
    /// With -x: a directory on another filesystem than SRC's; created, not entered.
    boundary: bool,
    /// Keeps the parent open, and its metadata pending, until this subtree is done.
    parent: Option<Arc<DirPair<'e>>>,
    engine: &'e Engine,
    /// The run's hard-link groups. They hold put-off names, and so their directories, until
    /// the run takes those back at the end of the walk.
    links: Arc<Links<'e>>,
    finished: bool,
}

/// A name new to the destination whose hard-link group may already be there under another
/// name (src/links.rs): its directory stays open, and unpublished, until the group decides.
struct PutOff<'e> {
    dir: Arc<DirPair<'e>>,
    _publish: Option<Arc<Publish<'e>>>,
    name: CString,
}

impl Drop for PutOff<'_> {
    fn drop(&mut self) {
        self.dir.engine.put_off_room.fetch_add(1, Ordering::Relaxed);
    }
}

impl DirPair<'_> {
    fn src_path(&self, name: &CStr) -> PathBuf {
        self.src_path.join(OsStr::from_bytes(name.to_bytes()))
    }

    fn dst_path(&self, name: &CStr) -> PathBuf {
        self.dst_loc.path().join(OsStr::from_bytes(name.to_bytes()))
    }

    fn rel(&self, name: &CStr) -> PathBuf {
        self.rel.join(OsStr::from_bytes(name.to_bytes()))
    }

    /// The destination handle, where the directory exists (everywhere but below a directory a
    /// dry run would create).
    fn dst(&self) -> Option<BorrowedFd<'_>> {
        self.dst.as_ref().map(|fd| fd.as_fd())
    }

    /// Applies the directory's metadata once. An interrupted run applies it where the
    /// directory is under its final name (so readers are not left facing mode 0700), and
    /// leaves a staged one in the staged mode for the next run to resume.
    fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        if crate::signal::received().is_some() && self.dst_loc.staged_name().is_some() {
            return;
        }
        let engine = self.engine;
        if engine.opts.count_deletions_only {
            return;
        }
        if self.dst_loc.is_abandoned() {
            return;
        }
        if crate::commit::staged_entry_stuck() && self.dst_loc.staged_name().is_some() {
            // Left staged (see Publish): keep the staged mode, by which the next run knows
            // to resume it.
            return;
        }
        if let Some(meta) = &self.meta {
            // Listed once its metadata is fixed (or, in a dry run, would be); a failure is
            // reported instead.
            let mut fixed = true;
            if let (Some(dst), false) = (self.dst(), engine.opts.dry_run) {
                let result = if self.existed {
                    engine.meta.sync_dir(self.src.as_fd(), dst, meta)
                } else {
                    engine
                        .meta
                        .apply_fd(
                            self.src.as_fd(),
                            dst,
                            meta,
                            self.inherited_acls,
                            self.created,
                            None,
                        )
                        .map(Some)
                };
                match result {
                    Ok(Some(applied)) => engine.note(applied, self.dst_dev, self.dst_loc.path()),
                    Ok(None) => {}
                    Err(e) => {
                        fixed = false;
                        engine
                            .rep
                            .failed(&meta_error(e, &self.src_path, self.dst_loc.path()))
                    }
                }
            }
            // A resumed directory was itemized as created (see `open_dir_pair`).
            if fixed && self.existed && !self.adopted && self.pre_diff.any() {
                engine
                    .rep
                    .itemize(Change::Meta(self.pre_diff), meta.mode, &self.rel, None);
                engine.rep.updated();
            }
        }
        if engine.opts.fsync
            && !engine.opts.dry_run
            && let Some(dst) = self.dst()
            && let Err(e) = sys::fsync(dst)
        {
            engine
                .rep
                .failed(&EntryError::new("fsync", self.dst_loc.path(), e));
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

/// Publishes a staged directory: renames it from its temp name to its final name in its
/// parent when the last of its entry tasks drops this. It holds the parent, whose metadata
/// is therefore applied after the rename, and the directory itself, whose metadata is too:
/// until then it keeps the staged mode (0700) by which a later run knows a killed run's
/// staged directory, even if the kill comes just before the rename.
struct Publish<'e> {
    /// Dropped first (fields drop in order): the directory is finished before its parent.
    _dir: Arc<DirPair<'e>>,
    parent: Arc<DirPair<'e>>,
    loc: Arc<Location>,
    /// With --fsync, the staged directory itself: its entries are made durable before the
    /// rename shows them, as a file's data is before its rename.
    durable: Option<OwnedFd>,
}

impl Drop for Publish<'_> {
    fn drop(&mut self) {
        let Some(pdst) = self.parent.dst() else {
            return;
        };
        if crate::signal::received().is_some() {
            // Interrupted: what the directory holds may be cut off. It stays staged (mode
            // 0700, its metadata not applied), and the next run resumes it, checking every
            // entry strictly.
            return;
        }
        let rep = &self.parent.engine.rep;
        if crate::commit::staged_entry_stuck() {
            // Back to the mode of a staged directory, by which the next run knows to resume it.
            if let Some(staged) = self.loc.staged_name() {
                let _ = sys::chmod_at(pdst, &staged, 0o700);
            }
            let why = io::Error::other(
                "not published: an incomplete entry in a staged directory could not be removed",
            );
            return rep.failed(&EntryError::new("rename", self.loc.path(), why));
        }
        if let Some(dir) = &self.durable
            && let Err(e) = sys::fsync(dir.as_fd())
        {
            // Left staged: the next run resumes it.
            return rep.failed(&EntryError::new("fsync", self.loc.path(), e));
        }
        let published = self
            .loc
            .publish(pdst, |temp, name| self.merge(pdst, temp, name));
        match published {
            Ok(()) => rep.verbose(|| format!("published directory {}", shown(self.loc.path()))),
            Err(e) => {
                rep.failed(&EntryError::new("rename", self.loc.path(), e));
                // Its mode is the source's by now, so no later run would take it for a staged
                // directory of ours: remove it, and the next run copies it again.
                if let Some(staged) = self.loc.staged_name() {
                    self.loc.abandon();
                    self.parent
                        .engine
                        .remove_staged(pdst, &staged, self.loc.path());
                }
            }
        }
    }
}

impl Publish<'_> {
    /// The final name appeared while the directory was staged (someone else made it): what
    /// they put there is moved into the staged directory (where a name is in both, ours, the
    /// source's copy, wins; directories in both are merged), and the staged directory, which
    /// tasks may still be writing into by handle, then replaces the emptied one by rename. If
    /// that cannot be done (a non-directory took the name), the directory fails by name and
    /// its staged copy is removed.
    fn merge(&self, pdst: BorrowedFd<'_>, staged: &CStr, name: &CStr) {
        let engine = self.parent.engine;
        let path = self.loc.path();
        let merged = (|| -> io::Result<()> {
            let ours = sys::open_dir(pdst, staged)?;
            for _ in 0..MERGE_ROUNDS {
                let theirs = sys::open_dir(pdst, name).map_err(|e| match e.raw_os_error() {
                    Some(libc::ENOTDIR) | Some(libc::ELOOP) => io::Error::other(
                        "a non-directory of that name appeared during the copy; not replaced",
                    ),
                    _ => e,
                })?;
                pull_entries(engine, theirs.as_fd(), ours.as_fd(), path)?;
                // Plain rename: over an empty directory it is atomic. More entries may have
                // appeared meanwhile (ENOTEMPTY): pull again.
                match sys::rename_across_to(pdst, staged, pdst, name) {
                    Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => continue,
                    result => return result,
                }
            }
            Err(io::Error::from_raw_os_error(libc::ENOTEMPTY))
        })();
        if let Err(e) = merged {
            engine.rep.failed(&EntryError::new("rename", path, e));
            // Never published, so nothing of it is counted as deleted; no temp entry stays.
            // Abandoned first: should tasks still filling it keep the removal from finishing,
            // it keeps the staged mode, by which the next run removes it.
            self.loc.abandon();
            engine.remove_staged(pdst, staged, path);
        }
    }
}

/// How often a merge pulls entries that keep appearing before it gives up.
const MERGE_ROUNDS: usize = 4;

/// Moves every entry of `theirs` into `ours`. Where `ours` has the name too: two directories
/// are merged in turn, and theirs removed once empty; a non-directory of theirs is removed
/// (ours is the source's version); a directory against a non-directory fails that name
/// alone: theirs is kept, as a copy onto an existing tree keeps what it cannot replace.
fn pull_entries(
    engine: &Engine,
    theirs: BorrowedFd<'_>,
    ours: BorrowedFd<'_>,
    path: &Path,
) -> io::Result<()> {
    for (entry, _) in sys::list_dir(theirs)? {
        let taken = match sys::rename_noreplace(theirs, &entry, ours, &entry) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => true,
            result => {
                result?;
                false
            }
        };
        if !taken {
            continue;
        }
        let entry_path = path.join(OsStr::from_bytes(entry.to_bytes()));
        let kind = |dir| sys::lstat_at(dir, entry.as_c_str()).map(|st| st.kind());
        match (kind(theirs)?, kind(ours)?) {
            (Kind::Dir, Kind::Dir) => {
                let from = sys::open_dir(theirs, entry.as_c_str())?;
                let into = sys::open_dir(ours, entry.as_c_str())?;
                pull_entries(engine, from.as_fd(), into.as_fd(), &entry_path)?;
                sys::rmdir_at(theirs, &entry)?;
            }
            (a, b) if a != Kind::Dir && b != Kind::Dir => sys::unlink_at(theirs, &entry)?,
            (_, ours_kind) => {
                let why = io::Error::other(
                    "a directory and a non-directory of this name; the one made meanwhile is kept",
                );
                engine
                    .rep
                    .failed(&EntryError::new("rename", &entry_path, why));
                if ours_kind == Kind::Dir {
                    engine.remove_staged(ours, &entry, &entry_path);
                } else {
                    sys::unlink_at(ours, &entry)?;
                }
                sys::rename_noreplace(theirs, &entry, ours, &entry)?;
            }
        }
    }
    Ok(())
}

/// Where a hard-link group's first name was committed: by its directory's location, which
/// changes when a staged directory is published.
#[derive(Clone)]
struct LinkTarget {
    dir: Arc<Location>,
    name: CString,
    /// The device it is on: a name on another (a filesystem mounted inside DST) cannot be
    /// linked to it.
    dev: u64,
    /// A dry run would have written the first name anew: the other names, though still
    /// linked to the old copy, would be relinked.
    rewritten_by_dry_run: bool,
}

impl LinkTarget {
    /// The final path, for messages.
    fn path(&self) -> PathBuf {
        self.dir
            .path()
            .join(OsStr::from_bytes(self.name.to_bytes()))
    }
}

/// What the destination directory's listing says about a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hint {
    /// Not there (the directory is new, or its listing lacks the name).
    Absent,
    /// Listed, or unknown: ask with lstat.
    Look,
}

pub struct Engine {
    rep: Reporter,
    cache: DeviceCache,
    /// Large files on local disks are written out and dropped from the page cache while they
    /// are copied (src/writeback.rs).
    write_behind: WriteBehind,
    /// Requests of network sources made on helper threads (src/aside.rs).
    aside: crate::aside::Aside,
    meta: Preserver,
    /// How many more names may be put off (each holds its directory's two handles open).
    put_off_room: AtomicU64,
    opts: Options,
    filter: Filter,
    /// Serialises file creation on local destinations. There, creating is CPU work in the
    /// kernel's inode allocator, and concurrent allocations in one block group make ext4
    /// (without a journal, which skips recently freed inodes) rescan the group: W1 spent 70%
    /// of its kernel time there with 16 workers, and ran 1.3-2x faster with creation
    /// serialised while data, metadata and renames stay parallel (docs/benchmarks.md). On
    /// network filesystems a create is a round trip and stays parallel. Taken by
    /// `lock_create`, which polls before it sleeps.
    create_lock: Mutex<()>,
    /// In a dry run, the names the run would have taken (deleted or rewritten) from each
    /// destination inode (st_dev, st_ino) so far: the link counts it would then see.
    dry_unlinked: Mutex<HashMap<(u64, u64), u64>>,
    /// Destination devices already warned about refusing xattrs.
    xattrs_refused_on: Mutex<HashSet<u64>>,
    /// The device of SRC, for -x.
    root_dev: OnceLock<u64>,
    /// (st_dev, st_ino) of SRC and DST: a directory of one met on the other side means the copy
    /// would run into itself (bind mounts, DST an ancestor of SRC).
    roots: OnceLock<((u64, u64), (u64, u64))>,
    /// The destination root, for the first name a hard link's itemized line points to.
    dst_root: OnceLock<PathBuf>,
    /// Deletions still allowed by --max-delete (a backstop: the pre-pass already refused a run
    /// that would exceed it, but the tree may have changed since).
    delete_budget: Option<AtomicU64>,
    budget_reported: AtomicBool,
}

/// The parts of the Config the engine acts on.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub xattrs: bool,
    pub hard_links: bool,
    pub reflink: Reflink,
    pub policy: Policy,
    pub delete: bool,
    pub delete_excluded: bool,
    pub max_delete: Option<u64>,
    pub dry_run: bool,
    pub fsync: bool,
    pub verify: bool,
    pub one_file_system: bool,
    /// Only list directories and count what --delete would remove (the --max-delete
    /// pre-pass); implies a dry run.
    pub count_deletions_only: bool,
}

impl Options {
    pub fn of(cfg: &Config) -> Self {
        Options {
            xattrs: cfg.xattrs,
            hard_links: cfg.hard_links,
            reflink: cfg.reflink,
            policy: cfg.policy,
            delete: cfg.delete,
            delete_excluded: cfg.delete_excluded,
            max_delete: cfg.max_delete,
            dry_run: cfg.dry_run,
            fsync: cfg.fsync,
            verify: cfg.verify,
            one_file_system: cfg.one_file_system,
            count_deletions_only: false,
        }
    }

    /// The options of the pre-pass that counts deletions.
    pub fn counting_deletions(self) -> Self {
        Options {
            dry_run: true,
            count_deletions_only: true,
            max_delete: None,
            ..self
        }
    }
}

/// How an entry's destination is produced, once decided.
enum Write {
    /// Nothing there: a new entry.
    New,
    /// Replacing what is there; `content`: --checksum found different content; `old` is the
    /// destination's stat, for the itemized line.
    Over { old: Stat, content: bool },
}

impl Engine {
    pub fn new(rep: Reporter, opts: Options, filter: Filter) -> Self {
        Engine {
            rep,
            cache: DeviceCache::default(),
            write_behind: WriteBehind::default(),
            aside: crate::aside::Aside::default(),
            meta: Preserver::new(opts.xattrs),
            put_off_room: AtomicU64::new(0),
            opts,
            filter,
            create_lock: Mutex::new(()),
            xattrs_refused_on: Mutex::new(HashSet::new()),
            dry_unlinked: Mutex::new(HashMap::new()),
            root_dev: OnceLock::new(),
            roots: OnceLock::new(),
            dst_root: OnceLock::new(),
            delete_budget: opts.max_delete.map(AtomicU64::new),
            budget_reported: AtomicBool::new(false),
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
            .with_context(|| format!("open source directory {}", shown(src)))?;
        let src_stat =
            sys::fstat(src_fd.as_fd()).with_context(|| format!("stat {}", shown(src)))?;
        let _ = self.root_dev.set(src_stat.dev);
        let _ = self.dst_root.set(dst.to_path_buf());
        let dry_run = self.opts.dry_run;
        if !dst_exists && !dry_run {
            crate::walk::create_destination(dst)?;
        }
        let dst_fd = match (dst_exists, dry_run) {
            (false, true) => None,
            _ => Some(
                sys::open_dir_path(dst)
                    .with_context(|| format!("open destination directory {}", shown(dst)))?,
            ),
        };
        let mut created = None;
        let (dst_dev, pre_diff, passes_acls, local_dst) = match &dst_fd {
            Some(fd) => {
                let dst_stat =
                    sys::fstat(fd.as_fd()).with_context(|| format!("stat {}", shown(dst)))?;
                let _ = self
                    .roots
                    .set(((src_stat.dev, src_stat.ino), (dst_stat.dev, dst_stat.ino)));
                let pre_diff = if dst_exists {
                    self.reach_existing_dir(&src_fd, &src_stat, src, fd, &dst_stat, dst)?
                } else {
                    created = Some(Created::of(&dst_stat));
                    MetaDiff::default()
                };
                (
                    dst_stat.dev,
                    pre_diff,
                    self.meta.passes_acls_on(fd.as_fd()),
                    !sys::is_remote_fs(fd.as_fd()),
                )
            }
            None => (0, MetaDiff::default(), false, true),
        };
        self.rep.done_dir();
        if !dst_exists {
            self.created_dir(&src_stat, Path::new(""));
        }
        let remote_src = sys::is_remote_fs(src_fd.as_fd());
        // A new name of a hard-linked file may have its group's copy in DST already, under a
        // name the walk has not reached yet; and a group all new is copied under its first
        // name in path order, whatever order the walk reaches them in, so that a dry run
        // lists what the run does.
        if self.opts.hard_links && !self.opts.count_deletions_only {
            let room = sys::fd_limit() / 8;
            self.put_off_room.store(room, Ordering::Relaxed);
        }
        let links = Arc::new(Links::default());
        let root = Arc::new(DirPair {
            src: src_fd,
            src_path: src.to_path_buf(),
            rel: PathBuf::new(),
            dst: dst_fd,
            dst_loc: Location::root(dst),
            hidden: false,
            adopted: false,
            dst_dev,
            meta: Some(src_stat),
            existed: dst_exists,
            pre_diff,
            passes_acls,
            inherited_acls: !dst_exists && passes_acls,
            created,
            local_dst,
            remote_src,
            boundary: false,
            parent: None,
            engine: self,
            links: Arc::clone(&links),
            finished: false,
        });
        pool.scope(|scope| self.copy_dir(scope, Arc::clone(&root), dst_exists, None));
        // The groups whose names were all put off and not all reached (the others are outside
        // SRC, or excluded): each is copied under one name and linked under the others.
        loop {
            let groups = links.take_put_off();
            if groups.is_empty() || crate::signal::received().is_some() {
                break;
            }
            pool.scope(|scope| {
                for names in groups {
                    scope.spawn(move |_| self.claim_in_order(names));
                }
            });
        }
        drop(root);
        Ok(())
    }

    /// A group's put-off names that are all new, claimed again in path order: the first is
    /// copied and the others linked to it, whatever order the walk reached them in, so that a
    /// dry run and the run agree.
    fn claim_in_order(&self, mut names: Vec<PutOff<'_>>) {
        names.sort_by_cached_key(|n| n.dir.rel(&n.name));
        self.claim_again(names);
    }

    /// Put-off names, claimed again now that their group has decided (or the walk is over).
    fn claim_again(&self, names: Vec<PutOff<'_>>) {
        for name in names {
            if crate::signal::received().is_some() {
                return;
            }
            let at = At {
                dir: &name.dir,
                src_name: &name.name,
                dst_name: &name.name,
                owner: None,
            };
            let result = self.copy_file(&at, Hint::Look);
            self.report(result);
        }
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
            anyhow::bail!("source {} names no file", shown(src));
        };
        let src_fd = sys::open_source_dir_path(src_dir)
            .with_context(|| format!("open directory {}", shown(src_dir)))?;
        let _ = self.dst_root.set(dst_dir.to_path_buf());
        let dst_fd = sys::open_dir_path(dst_dir)
            .with_context(|| format!("open destination directory {}", shown(dst_dir)))?;
        let dst_dev = sys::fstat(dst_fd.as_fd())
            .with_context(|| format!("stat {}", shown(dst_dir)))?
            .dev;
        let passes_acls = self.meta.passes_acls_on(dst_fd.as_fd());
        let local_dst = !sys::is_remote_fs(dst_fd.as_fd());
        let remote_src = sys::is_remote_fs(src_fd.as_fd());
        let links = Arc::new(Links::default());
        let pair = DirPair {
            src: src_fd,
            src_path: src_dir.to_path_buf(),
            rel: PathBuf::new(),
            dst: Some(dst_fd),
            dst_loc: Location::root(dst_dir),
            hidden: false,
            adopted: false,
            dst_dev,
            meta: None,
            existed: true,
            pre_diff: MetaDiff::default(),
            passes_acls,
            inherited_acls: false,
            created: None,
            local_dst,
            remote_src,
            boundary: false,
            parent: None,
            engine: self,
            links: Arc::clone(&links),
            finished: false,
        };
        let src_name = sys::cstring(src_name)?;
        let dst_name = sys::cstring(dst_name)?;
        self.rep.found_entries(1);
        pool.install(|| {
            self.copy_entry(&pair, None, &src_name, &dst_name, Kind::File, Hint::Look);
        });
        Ok(())
    }

    /// An existing destination directory as the run reaches it: how its metadata differs from
    /// its source's (for --itemize, before our renames inside change its mtime), and, in a
    /// real run, opened up for writing if it must be.
    fn reach_existing_dir(
        &self,
        src: &OwnedFd,
        src_stat: &Stat,
        src_path: &Path,
        dst: &OwnedFd,
        dst_stat: &Stat,
        dst_path: &Path,
    ) -> EntryResult<MetaDiff> {
        let diff = self
            .meta
            .diff(
                Node::Fd(src.as_fd()),
                src_stat,
                Node::Fd(dst.as_fd()),
                dst_stat,
                self.opts.policy.modify_window_ns,
            )
            .map_err(|e| meta_error(e, src_path, dst_path))?;
        if !self.opts.dry_run {
            self.make_writable(dst, dst_stat).ctx("chmod", dst_path)?;
        }
        Ok(diff)
    }

    /// As non-root, an existing destination directory without owner write and search
    /// permission (a 0500 left by an earlier run) is opened up until the directory is finished.
    fn make_writable(&self, dir: &OwnedFd, st: &Stat) -> io::Result<()> {
        if self.meta.root || st.perm() & 0o300 == 0o300 {
            return Ok(());
        }
        sys::fchmod(dir.as_fd(), st.perm() | 0o700)
    }

    /// The up-to-date rules for entries of `dir`. In a resumed staged directory an entry may
    /// have been cut off mid-write under its final name (its times are set last, so its mtime
    /// is not the source's): only an exact size and mtime match counts as done there.
    fn policy_in(&self, dir: &DirPair) -> Policy {
        match dir.adopted {
            false => self.opts.policy,
            true => Policy {
                ignore_existing: false,
                update: false,
                modify_window_ns: 0,
                ..self.opts.policy
            },
        }
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
                "the filesystem of {} (device {}) does not support some extended attributes (or ACLs); those are not copied there",
                shown(path),
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

    fn created_dir(&self, st: &Stat, rel: &Path) {
        self.rep.created_dir();
        self.rep.itemize(Change::Created, st.mode, rel, None);
    }

    /// Lists one source directory and spawns a task per entry. Subdirectories are spawned
    /// first: the worker takes its newest tasks (this directory's files) itself, while idle
    /// workers steal the oldest (the subdirectories) and list them in parallel. Extraneous
    /// destination entries are removed (--delete) before the entries are copied.
    ///
    /// `publish`, for a directory staged under a temp name, renames it to its final name when
    /// dropped: each entry task holds it, so the directory appears once its own entries are
    /// complete (or failed, or interrupted); its subdirectories are staged in turn.
    fn copy_dir<'s>(
        &'s self,
        scope: &rayon::Scope<'s>,
        dir: Arc<DirPair<'s>>,
        dst_existed: bool,
        publish: Option<Arc<Publish<'s>>>,
    ) {
        if crate::signal::received().is_some() || dir.boundary {
            return;
        }
        let listing = match sys::list_dir(dir.src.as_fd()) {
            Ok(listing) => listing,
            Err(e) => {
                return self.report(Err(EntryError::of_source(
                    "read directory",
                    &dir.src_path,
                    e,
                )));
            }
        };
        // The destination's own names: which entries exist (so new ones need no lstat), and
        // what is left over for --delete once the source's names are taken out.
        let mut adoptable = HashMap::new();
        let mut dst_names = match (dst_existed, dir.dst()) {
            (true, Some(dst)) => self.destination_names(&dir, dst, &mut adoptable),
            _ => Some(HashMap::new()),
        };
        let mut others = Vec::with_capacity(listing.len());
        for (name, kind) in listing {
            // Lock files at any depth: another run's, into that directory as its DST.
            if temp_owner(name.to_bytes()).is_some() || name.as_c_str() == LOCK_NAME {
                // Another run's unfinished entry (SRC is being written by treecopy): never a
                // complete file.
                self.rep.excluded();
                self.rep.verbose(|| {
                    format!(
                        "not copied: {} (treecopy's own)",
                        shown(&dir.src_path(&name))
                    )
                });
                continue;
            }
            let kind = match kind {
                Some(kind) => kind,
                None => match sys::lstat_at(dir.src.as_fd(), name.as_c_str()) {
                    Ok(st) => st.kind(),
                    Err(e) => {
                        self.report(Err(EntryError::of_source("stat", &dir.src_path(&name), e)));
                        continue;
                    }
                },
            };
            if !self.filter.is_empty() && self.filter.excludes(&dir.rel(&name), kind == Kind::Dir) {
                self.rep.excluded();
                continue;
            }
            let listed = dst_names
                .as_mut()
                .map(|names| names.remove(name.as_c_str()));
            let hint = match listed {
                Some(None) => Hint::Absent,
                _ => Hint::Look,
            };
            if self.opts.count_deletions_only
                && kind != Kind::Dir
                && hint == Hint::Look
                && !self.policy_in(&dir).ignore_existing
                && let Some(dst) = dir.dst()
            {
                // A non-directory replaces a directory of DST: --delete removes that tree.
                let dst_kind = match listed.flatten().flatten() {
                    Some(kind) => Some(kind),
                    None => sys::lstat_at(dst, name.as_c_str()).ok().map(|st| st.kind()),
                };
                if dst_kind == Some(Kind::Dir) {
                    self.remove(dst, &name, &dir.rel(&name), &dir.dst_path(&name));
                }
            }
            if kind == Kind::Dir {
                let dir = Arc::clone(&dir);
                let leftover = (!adoptable.is_empty())
                    .then(|| adoptable.remove(&StagedFor::of(name.to_bytes())))
                    .flatten();
                scope.spawn(move |scope| self.enter_dir(scope, &dir, &name, hint, leftover));
            } else {
                others.push((name, kind, hint));
            }
        }
        if let Some(dst) = dir.dst() {
            for leftover in adoptable.into_values() {
                self.remove_staged(dst, &leftover, &dir.dst_path(&leftover));
            }
            // What a resumed directory holds beyond the source's names was never published.
            if dir.adopted
                && let Some(names) = dst_names.take()
            {
                for name in names.into_keys() {
                    self.remove_staged(dst, &name, &dir.dst_path(&name));
                }
            }
        }
        if self.opts.delete
            && let (Some(names), Some(dst)) = (dst_names, dir.dst())
        {
            self.delete_extraneous(&dir, dst, names);
        }
        if self.opts.count_deletions_only {
            return;
        }
        self.rep.found_entries(others.len() as u64);
        for (name, kind, hint) in others {
            let dir = Arc::clone(&dir);
            let publish = publish.clone();
            scope.spawn(move |_| {
                if crate::signal::received().is_some() {
                    return;
                }
                let owner = Some((&dir, publish.as_ref()));
                self.copy_entry(&dir, owner, &name, &name, kind, hint);
            });
        }
    }

    /// The names in an existing destination directory, without temp entries (those of dead
    /// runs are removed here) and the lock file. None if it cannot be listed: then every entry
    /// is looked up by name.
    ///
    /// A killed run's staged directories whose final name is free go into `adoptable`
    /// (keyed by what their temp names say of their final names), to be resumed; the others are
    /// removed.
    fn destination_names(
        &self,
        dir: &DirPair,
        dst: BorrowedFd<'_>,
        adoptable: &mut HashMap<StagedFor, CString>,
    ) -> Option<HashMap<CString, Option<Kind>>> {
        let listing = match sys::list_dir(dst) {
            Ok(listing) => listing,
            Err(e) => {
                self.rep.warn(&format!(
                    "read directory {}: {e}; leftover temp files there are not cleaned",
                    shown(dir.dst_loc.path())
                ));
                return None;
            }
        };
        if !self.opts.dry_run {
            let stale = remove_stale(dst, &listing);
            for name in stale.removed {
                self.rep
                    .verbose(|| format!("removed leftover {}", shown(&dir.dst_path(&name))));
            }
            for name in stale.dirs {
                let resumable = staged_for(name.to_bytes())
                    .filter(|key| !adoptable.contains_key(key))
                    .filter(|key| !listing.iter().any(|(l, _)| key.is(l.to_bytes())));
                match resumable {
                    Some(key) => {
                        adoptable.insert(key, name);
                    }
                    None => self.remove_staged(dst, &name, &dir.dst_path(&name)),
                }
            }
            for name in stale.foreign {
                self.rep.warn(&format!(
                    "{} looks like a leftover of a killed run but is not owned by this user with mode 0700; left alone",
                    shown(&dir.dst_path(&name))
                ));
            }
        }
        Some(
            listing
                .into_iter()
                .filter(|(name, _)| {
                    temp_owner(name.to_bytes()).is_none() && name.as_c_str() != LOCK_NAME
                })
                .collect(),
        )
    }

    /// Removes a directory staged under a temp name (a killed run's, or one whose final name
    /// was taken), with its contents: they were never under a final path, so they are neither
    /// itemized nor counted as deletions.
    fn remove_staged(&self, dst: BorrowedFd<'_>, name: &CStr, path: &Path) {
        let removal = Removal {
            dry_run: false,
            root: self.meta.root,
            visit: &|_| true,
            removed: &|_| {},
            failed: &|e| self.rep.warn(&format!("leftover entry not removed: {e}")),
            protect: self.roots.get().map(|(src, _)| *src),
        };
        match removal.remove(dst, name, Path::new(""), path) {
            Ok(()) => self
                .rep
                .verbose(|| format!("removed leftover {}", shown(path))),
            Err(Stop::Failed(e)) => {
                self.rep
                    .warn(&format!("leftover {} not removed: {}", shown(path), e))
            }
            Err(Stop::Budget | Stop::Kept) => {}
        }
    }

    /// Removes what the destination directory holds that the source does not (--delete):
    /// excluded names stay unless --delete-excluded.
    fn delete_extraneous(
        &self,
        dir: &DirPair,
        dst: BorrowedFd<'_>,
        names: HashMap<CString, Option<Kind>>,
    ) {
        let mut names: Vec<_> = names.into_iter().collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, kind) in names {
            if crate::signal::received().is_some() {
                return;
            }
            let rel = dir.rel(&name);
            if !self.opts.delete_excluded && !self.filter.is_empty() {
                let is_dir = match kind {
                    Some(kind) => kind == Kind::Dir,
                    None => {
                        sys::lstat_at(dst, name.as_c_str()).is_ok_and(|st| st.kind() == Kind::Dir)
                    }
                };
                if self.filter.excludes(&rel, is_dir) {
                    continue;
                }
            }
            self.remove(dst, &name, &rel, &dir.dst_path(&name));
        }
    }

    /// Removes a destination entry and everything below it, itemizing and counting each;
    /// returns whether it is gone.
    fn remove(&self, dst: BorrowedFd<'_>, name: &CStr, rel: &Path, path: &Path) -> bool {
        let visit = |_: &Doomed<'_>| {
            if let Some(budget) = &self.delete_budget
                && budget
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
                    .is_err()
            {
                return false;
            }
            true
        };
        let removed = |doomed: &Doomed<'_>| {
            if let Some(inode) = doomed.inode {
                self.dry_unlink(inode);
            }
            self.rep
                .itemize(Change::Deleted, doomed.mode, doomed.rel, None);
            self.rep
                .verbose(|| format!("deleted {}", shown(doomed.rel)));
            self.rep.deleted();
        };
        let removal = Removal {
            dry_run: self.opts.dry_run,
            root: self.meta.root,
            visit: &visit,
            removed: &removed,
            failed: &|e| self.report(Err(e)),
            protect: self.roots.get().map(|(src, _)| *src),
        };
        match removal.remove(dst, name, rel, path) {
            Ok(()) => true,
            Err(Stop::Budget) => {
                if !self.budget_reported.swap(true, Ordering::SeqCst) {
                    self.rep.failed(&EntryError::new(
                        "delete",
                        path,
                        io::Error::other(format!(
                            "--max-delete {} reached; this and further entries are not deleted",
                            self.opts.max_delete.unwrap_or_default()
                        )),
                    ));
                }
                false
            }
            Err(Stop::Failed(e)) => {
                self.report(Err(e));
                false
            }
            Err(Stop::Kept) => false,
        }
    }

    /// Creates (or reuses) the destination directory for `name` and copies its contents.
    fn enter_dir<'s>(
        &'s self,
        scope: &rayon::Scope<'s>,
        parent: &Arc<DirPair<'s>>,
        name: &CStr,
        hint: Hint,
        leftover: Option<CString>,
    ) {
        if crate::signal::received().is_some() {
            return;
        }
        match self.open_dir_pair(parent, name, hint, leftover) {
            Ok(pair) => {
                self.rep.done_dir();
                let existed = pair.existed;
                let pair = Arc::new(pair);
                let publish = pair.hidden.then(|| {
                    let durable = self
                        .opts
                        .fsync
                        .then(|| pair.dst().map(|fd| fd.try_clone_to_owned()));
                    Arc::new(Publish {
                        _dir: Arc::clone(&pair),
                        parent: Arc::clone(parent),
                        loc: Arc::clone(&pair.dst_loc),
                        durable: durable.flatten().and_then(Result::ok),
                    })
                });
                self.copy_dir(scope, pair, existed, publish);
            }
            Err(err) => self.report(Err(err)),
        }
    }

    /// Opens the source directory `name` and creates or opens its destination.
    fn open_dir_pair<'s>(
        &'s self,
        parent: &Arc<DirPair<'s>>,
        name: &CStr,
        hint: Hint,
        leftover: Option<CString>,
    ) -> EntryResult<DirPair<'s>> {
        let src_path = parent.src_path(name);
        let dst_path = parent.dst_path(name);
        let rel = parent.rel(name);
        let src =
            sys::open_source_dir(parent.src.as_fd(), name).src_ctx("open directory", &src_path)?;
        let src_stat = sys::fstat(src.as_fd()).src_ctx("stat", &src_path)?;
        let into_itself = || {
            EntryError::new(
                "copy",
                &src_path,
                io::Error::other(
                    "the destination is inside this directory: not copied into itself",
                ),
            )
        };
        if let Some((_, dst_root)) = self.roots.get()
            && (src_stat.dev, src_stat.ino) == *dst_root
        {
            return Err(into_itself());
        }
        let boundary =
            self.opts.one_file_system && self.root_dev.get().is_some_and(|&d| d != src_stat.dev);
        let dry_run = self.opts.dry_run;
        let mut existed = false;
        let mut dst = None;
        // A new directory is created under a temp name and renamed once its entries are
        // complete (see `Publish`).
        let mut staged = None;
        let mut adopted = false;
        if let Some(pdst) = parent.dst() {
            if let Some(leftover) = leftover.filter(|_| !dry_run) {
                match adopt_staged(pdst, &leftover, name) {
                    Ok(ours) => {
                        self.rep.verbose(|| {
                            format!(
                                "resuming {} (left staged by a killed run)",
                                shown(&dst_path)
                            )
                        });
                        (staged, adopted, existed) = (Some(ours), true, true);
                    }
                    Err(e) => {
                        self.rep.warn(&format!(
                            "{}: cannot resume a killed run's copy ({e}); copying it again",
                            shown(&dst_path)
                        ));
                        self.remove_staged(pdst, &leftover, &parent.dst_path(&leftover));
                    }
                }
            }
            if adopted {
                // Resumed: its entries are compared like an existing directory's.
            } else if hint == Hint::Absent && !dry_run {
                staged = Some(staged_dir(pdst, name).ctx("create directory", &dst_path)?);
            } else {
                match sys::lstat_at(pdst, name) {
                    Ok(st) if st.kind() == Kind::Dir => existed = true,
                    Ok(_) if self.opts.delete => {
                        if !self.remove(pdst, name, &rel, &dst_path) {
                            return Err(EntryError::interrupted(&dst_path));
                        }
                    }
                    Ok(_) => {
                        return Err(EntryError::new(
                            "create directory",
                            &dst_path,
                            io::Error::other(
                                "a non-directory of that name is in the way (--delete replaces it)",
                            ),
                        ));
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(EntryError::new("stat", &dst_path, e)),
                }
                if !existed && !dry_run {
                    staged = Some(staged_dir(pdst, name).ctx("create directory", &dst_path)?);
                }
            }
            if existed || !dry_run {
                let at = staged.as_deref().unwrap_or(name);
                // A directory made here is never listed, and only fsynced with --fsync.
                let opened = if existed || self.opts.fsync {
                    sys::open_dir(pdst, at)
                } else {
                    sys::open_new_dir(pdst, at)
                };
                match opened {
                    Ok(fd) => dst = Some(fd),
                    Err(e) => {
                        if staged.is_some() {
                            let _ = sys::rmdir_at(pdst, at);
                        }
                        return Err(EntryError::new("open directory", &dst_path, e));
                    }
                }
            }
        }
        let mut pre_diff = MetaDiff::default();
        let (mut dst_dev, mut local_dst, mut passes_acls) =
            (parent.dst_dev, parent.local_dst, false);
        let mut created = None;
        if let Some(fd) = &dst {
            if !existed {
                // Answered from the attributes mkdir returned, where a network client caches
                // them: no round trip.
                created = sys::fstat(fd.as_fd()).ok().map(|st| Created::of(&st));
            } else {
                // An existing directory may be a mount point of another filesystem.
                let st = sys::fstat(fd.as_fd()).ctx("stat", &dst_path)?;
                if let Some((src_root, _)) = self.roots.get()
                    && (st.dev, st.ino) == *src_root
                {
                    return Err(EntryError::new(
                        "copy",
                        &dst_path,
                        io::Error::other(
                            "this destination directory is the source: not written into",
                        ),
                    ));
                }
                pre_diff =
                    self.reach_existing_dir(&src, &src_stat, &src_path, fd, &st, &dst_path)?;
                dst_dev = st.dev;
                local_dst = !sys::is_remote_fs(fd.as_fd());
            }
            // One mkdir'd here has a default ACL exactly when its parent passes one on.
            passes_acls = if existed {
                self.meta.passes_acls_on(fd.as_fd())
            } else {
                parent.passes_acls
            };
        }
        if (!existed || adopted) && !self.opts.count_deletions_only {
            self.created_dir(&src_stat, &rel);
        }
        // A source directory on another device may be another filesystem's mount point.
        let remote_src = if parent.meta.is_some_and(|m| m.dev == src_stat.dev) {
            parent.remote_src
        } else {
            sys::is_remote_fs(src.as_fd())
        };
        let hidden = staged.is_some();
        Ok(DirPair {
            adopted,
            src,
            src_path,
            rel,
            dst,
            dst_loc: Location::child(&parent.dst_loc, name, staged),
            hidden,
            dst_dev,
            meta: Some(src_stat),
            existed,
            pre_diff,
            passes_acls,
            inherited_acls: !existed && parent.passes_acls,
            created,
            local_dst,
            remote_src,
            boundary,
            parent: Some(Arc::clone(parent)),
            engine: self,
            links: Arc::clone(&parent.links),
            finished: false,
        })
    }

    /// Copies (or leaves, or fixes) the non-directory `src_name` of `dir` as `dst_name` in its
    /// destination directory, and reports the outcome.
    fn copy_entry<'e>(
        &self,
        dir: &DirPair<'e>,
        owner: Option<Owner<'_, 'e>>,
        src_name: &CStr,
        dst_name: &CStr,
        kind: Kind,
        hint: Hint,
    ) {
        let at = At {
            dir,
            src_name,
            dst_name,
            owner,
        };
        let result = match kind {
            Kind::File => self.copy_file(&at, hint),
            Kind::Symlink => self.copy_symlink(&at, hint),
            Kind::Special => self.copy_special(&at, hint),
            Kind::Dir => unreachable!("directories are entered, not copied as entries"),
        };
        self.report(result);
    }

    /// The destination entry of that name, if there is one.
    fn existing(&self, at: &At, hint: Hint) -> EntryResult<Option<Stat>> {
        let (Hint::Look, Some(dst)) = (hint, at.dir.dst()) else {
            return Ok(None);
        };
        match sys::lstat_at(dst, at.dst_name) {
            Ok(st) => Ok(Some(st)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(EntryError::new("stat", &at.dst_path(), e)),
        }
    }

    /// Decides what to do about an existing destination entry of a source entry `st`:
    /// Some(write) to write the entry (new or over the old one), None when it is done (up to
    /// date, kept, or its metadata fixed in place). `same_content` compares what the stats
    /// cannot (file content with --checksum, a symlink's target).
    fn settle(
        &self,
        at: &At,
        st: &Stat,
        old: Option<Stat>,
        first: &mut Option<Group<'_, '_>>,
        same_content: impl FnOnce() -> EntryResult<bool>,
    ) -> EntryResult<Option<Write>> {
        let Some(old) = old else {
            return Ok(Some(Write::New));
        };
        let mut verdict = delta::decide(st, Some(&old), &self.policy_in(at.dir));
        // A destination file sharing its inode with other names, whose source does not: fixing
        // it in place would change those names too.
        if st.kind() == Kind::File
            && self.links_of(&old) > 1
            && (st.nlink < 2 || !self.opts.hard_links)
            && matches!(verdict, Verdict::Same | Verdict::CompareContent)
        {
            verdict = Verdict::Replace;
        }
        let content_differs = match verdict {
            Verdict::Create => return Ok(Some(Write::New)),
            Verdict::Kept => {
                self.rep.skipped(file_size(st));
                // Kept, not checked: the group's other names get the source's data.
                if let Some(first) = first.take() {
                    self.claim_again(first.pass());
                }
                return Ok(None);
            }
            Verdict::Replace => false,
            Verdict::Same if st.kind() != Kind::Symlink => false,
            Verdict::Same | Verdict::CompareContent => !same_content()?,
        };
        if old.kind() == Kind::Dir {
            // Replacing a directory by a non-directory: only --delete removes the directory.
            return self.clear_directory(at, &old).map(|()| Some(Write::New));
        }
        if verdict == Verdict::Replace || content_differs {
            let content = verdict != Verdict::Replace;
            return Ok(Some(Write::Over { old, content }));
        }
        let dst = at
            .dir
            .dst()
            .expect("an existing entry has a destination directory");
        let src_node = Node::At(at.dir.src.as_fd(), at.src_name);
        let diff = self
            .meta
            .diff_rerun(
                src_node,
                st,
                Node::At(dst, at.dst_name),
                &old,
                self.opts.policy.modify_window_ns,
                self.opts.policy.checksum,
            )
            .map_err(|e| meta_error(e, &at.src_path(), &at.dst_path()))?;
        if diff.any() {
            if !self.opts.dry_run {
                let applied = self
                    .meta
                    .fix_in_place(src_node, dst, at.dst_name, st, &diff)
                    .map_err(|e| meta_error(e, &at.src_path(), &at.dst_path()))?;
                self.note(applied, at.dir.dst_dev, &at.dst_path());
            }
            self.rep
                .itemize(Change::Meta(diff), st.mode, &at.rel(), None);
            self.rep.updated();
        } else {
            self.rep.skipped(file_size(st));
        }
        if let Some(first) = first.take() {
            self.committed(first, at.target());
        }
        Ok(None)
    }

    /// Removes a destination directory that a non-directory replaces, with --delete; fails the
    /// entry otherwise.
    fn clear_directory(&self, at: &At, old: &Stat) -> EntryResult<()> {
        debug_assert_eq!(old.kind(), Kind::Dir);
        if !self.opts.delete {
            return Err(EntryError::new(
                "replace",
                &at.dst_path(),
                io::Error::other("a directory of that name is in the way (--delete replaces it)"),
            ));
        }
        let dst = at
            .dir
            .dst()
            .expect("an existing entry has a destination directory");
        if self.remove(dst, at.dst_name, &at.rel(), &at.dst_path()) {
            Ok(())
        } else {
            Err(EntryError::interrupted(&at.dst_path()))
        }
    }

    /// The itemized change for an entry written by this run.
    fn written(&self, how: &Write, st: &Stat) -> Change {
        match how {
            Write::Over { old, content } if old.kind() == st.kind() => Change::Data {
                content: *content,
                size: st.kind() == Kind::File && old.size != st.size,
                meta: self
                    .meta
                    .expect()
                    .diff(st, old, self.opts.policy.modify_window_ns),
            },
            _ => Change::Created,
        }
    }

    fn copy_file(&self, at: &At, hint: Hint) -> EntryResult<()> {
        let old = self.existing(at, hint)?;
        let dir = at.dir;
        // A new entry is opened at once (its fstat is all the stat it needs); an existing one
        // is compared by lstat first, so that an up-to-date file is never opened.
        let (src, st) = match old {
            None => {
                let src = sys::open_source(dir.src.as_fd(), at.src_name)
                    .src_ctx("open", &at.src_path())?;
                let st = sys::fstat(src.as_fd()).src_ctx("stat", &at.src_path())?;
                (Some(src), st)
            }
            Some(_) => (
                None,
                sys::lstat_at(dir.src.as_fd(), at.src_name).src_ctx("stat", &at.src_path())?,
            ),
        };
        if st.kind() != Kind::File {
            // Replaced by something else since the listing: never read a FIFO or device.
            return Err(changed_type("open", at, "a regular file"));
        }
        let mut first = match self.link_or_claim(&st, at, old.as_ref())? {
            LinkStep::Done => return Ok(()),
            LinkStep::Copy(first) => first,
        };
        let how = self.settle(at, &st, old, &mut first, || self.same_content(at))?;
        let Some(how) = how else {
            return Ok(());
        };
        let change = self.written(&how, &st);
        if self.opts.dry_run {
            // The run would give this name a new inode: the old one loses a name.
            if let Write::Over { old, .. } = &how
                && old.nlink > 1
            {
                self.dry_unlink((old.dev, old.ino));
            }
            self.rep.itemize(change, st.mode, &at.rel(), None);
            self.rep.done_file(data_bytes(&st));
            if let Some(first) = first {
                self.committed(
                    first,
                    LinkTarget {
                        rewritten_by_dry_run: true,
                        ..at.target()
                    },
                );
            }
            return Ok(());
        }
        let (src, st) = match src {
            Some(src) => (src, st),
            None => {
                let src = sys::open_source(dir.src.as_fd(), at.src_name)
                    .src_ctx("open", &at.src_path())?;
                let st = sys::fstat(src.as_fd()).src_ctx("stat", &at.src_path())?;
                (src, st)
            }
        };
        // From a network source, the xattr listing and the close are requests of their own
        // that the copy need not wait for (src/aside.rs).
        let src = Arc::new(src);
        let listed = (dir.remote_src && self.opts.xattrs).then(|| self.aside.list_xattrs(&src));
        let written = self.write_file(at, &src, &st, listed);
        if dir.remote_src {
            self.aside.close(src);
        }
        let bytes = match written {
            Ok(bytes) => bytes,
            Err(e) => {
                // The group's other names are the same inode: they changed too.
                if let Some(first) = first
                    && e.severity() != crate::error::Severity::Failed
                {
                    self.claim_again(first.failed_softly());
                }
                return Err(e);
            }
        };
        self.rep.itemize(change, st.mode, &at.rel(), None);
        self.rep.done_file(bytes);
        if let Some(first) = first {
            self.committed(first, at.target());
        }
        Ok(())
    }

    /// --checksum: whether the destination file holds the source's bytes.
    fn same_content(&self, at: &At) -> EntryResult<bool> {
        let dst = at
            .dir
            .dst()
            .expect("an existing entry has a destination directory");
        let src =
            sys::open_source(at.dir.src.as_fd(), at.src_name).src_ctx("open", &at.src_path())?;
        let old = sys::open_source(dst, at.dst_name).ctx("open", &at.dst_path())?;
        let (a, _) = crate::hash::hash_fd(src.as_fd())
            .map_err(|e| self.hash_error("read", &at.src_path(), e))?;
        let (b, _) = crate::hash::hash_fd(old.as_fd())
            .map_err(|e| self.hash_error("read", &at.dst_path(), e))?;
        Ok(a == b)
    }

    fn hash_error(&self, op: &'static str, path: &Path, e: nix::errno::Errno) -> EntryError {
        if e == nix::errno::Errno::EINTR && crate::signal::received().is_some() {
            EntryError::interrupted(path)
        } else {
            EntryError::new(op, path, e)
        }
    }

    /// Writes the file's data and metadata to a temp file and commits it over its name.
    /// Returns the bytes copied.
    fn write_file(
        &self,
        at: &At,
        src: &OwnedFd,
        st: &Stat,
        listed: Option<crate::aside::Pending>,
    ) -> EntryResult<u64> {
        let dir = at.dir;
        let dst_dir = dir.dst().expect("a real run has its destination directory");
        let (src_path, dst_path) = (&at.src_path(), &at.dst_path());
        let expected = data_bytes(st);
        self.rep.found_bytes(expected);
        // Chunks in parallel pay where each stream is latency-bound (NFS, FUSE); on a local
        // disk one file's writers take turns on its inode lock. A hard-linked file's other
        // names wait for this copy: a worker must not pick them up while it waits for this
        // file's chunks.
        let parallel =
            (dir.remote_src || !dir.local_dst) && (st.nlink < 2 || !self.opts.hard_links);
        // A file that will move as direct-I/O chunks to a network or FUSE server is created
        // for direct I/O too (it made 16 streams one on FUSE).
        let direct = !dir.local_dst
            && copy::chunks_with_direct_writes(parallel, st.size, st.dev, dir.dst_dev)
            && sys::direct_io_any_alignment(dst_dir);
        // A temp name in a shared directory is created 0600, so no one else can read what is
        // not yet the file's; in a staged directory (0700, ours) no one else can reach it, and
        // it gets its final permission bits at once, which saves the chmod. Not where they
        // lack owner read or write: chunk runners reopen it for writing and --verify reads it
        // back, which those bits would refuse (to anyone but root, and root on a root_squash
        // NFS export).
        let mode = match st.perm() & 0o777 {
            perm if dir.hidden && perm & 0o600 == 0o600 => perm,
            _ => 0o600,
        };
        let temp = {
            let _one_at_a_time = dir.local_dst.then(|| lock_create(&self.create_lock));
            TempEntry::file(dst_dir, at.naming(), mode, direct)
                .ctx("create temp file for", dst_path)?
        };
        let temp_fd = temp.fd().expect("a temp file is open");
        // Asked before the data changes the file, while a network client still holds the
        // attributes its create returned: no round trip.
        let created = sys::fstat(temp_fd).ok().map(|st| Created::of(&st));
        self.rep
            .verbose(|| format!("created {}", shown(&dir.dst_path(temp.name()))));
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
            parallel,
            src_remote: dir.remote_src,
            dst_remote: !dir.local_dst,
            chunk_workers: rayon::current_num_threads(),
            write_behind: dir.local_dst.then_some(&self.write_behind),
        };
        let (bytes, method) = copy::copy(&self.cache, &job, &self.rep)?;
        // The progress total counted the data the file was expected to hold: whatever the copy
        // found more or less, the bar still ends at its total.
        if bytes < expected {
            self.rep.copied_bytes(expected - bytes);
        } else {
            self.rep.found_bytes(bytes - expected);
        }
        // A producer still writing (or truncating) the file: the copy holds parts of two
        // versions, or stops short, and must not appear under the final name. From a network
        // source the attributes are usually still cached from the open: no round trip.
        let after = sys::fstat(src.as_fd()).src_ctx("stat", src_path)?;
        // The ctime too: a rewrite in place that puts the mtime back (touch -r, cp -p, rsync
        // --inplace) still moves it, and a copy of the old data would then pass every later
        // run's size-and-mtime check.
        if (after.size, after.mtime, after.ctime) != (st.size, st.mtime, st.ctime) {
            // Deleted meanwhile (its link count moved its ctime): vanished, as it would be had
            // the open come later.
            if after.nlink == 0 {
                return Err(EntryError::of_source(
                    "copy",
                    src_path,
                    nix::errno::Errno::ENOENT,
                ));
            }
            return Err(EntryError::changed_while_copied(src_path));
        }
        self.rep.verbose(|| {
            format!(
                "copied {} -> {}: {bytes} bytes by {}",
                shown(src_path),
                shown(dst_path),
                method.name()
            )
        });
        let applied = self
            .meta
            .apply_fd(
                src.as_fd(),
                temp_fd,
                st,
                dir.passes_acls,
                created,
                listed.map(crate::aside::Pending::wait),
            )
            .map_err(|e| meta_error(e, src_path, dst_path))?;
        self.note(applied, dir.dst_dev, dst_path);
        if self.opts.verify {
            self.verify(&temp, src, at)?;
        }
        self.commit(temp, at.dst_name, dir, dst_path)?;
        Ok(bytes)
    }

    /// --verify: reads the temp file back (from the disk, after --fsync) and compares its hash
    /// with the source's. Done before the rename, so a copy that does not match never appears
    /// under the final name.
    fn verify(&self, temp: &TempEntry<'_>, src: &OwnedFd, at: &At) -> EntryResult<()> {
        let written = temp.fd().expect("a temp file is open");
        if self.opts.fsync {
            sys::fsync(written).ctx("fsync", &at.dst_path())?;
            sys::drop_cache(written);
        }
        let back =
            sys::open_source(temp.dir(), temp.name()).ctx("open for verify", &at.dst_path())?;
        let (a, _) = crate::hash::hash_fd(src.as_fd())
            .map_err(|e| self.hash_error("read for verify", &at.src_path(), e))?;
        let (b, _) = crate::hash::hash_fd(back.as_fd())
            .map_err(|e| self.hash_error("read back for verify", &at.dst_path(), e))?;
        if a != b {
            return Err(EntryError::between(
                "verify",
                &at.src_path(),
                &at.dst_path(),
                io::Error::other("the copy's content differs from the source's"),
            ));
        }
        self.rep.verbose(|| {
            format!(
                "verified {} (content hash {})",
                shown(&at.dst_path()),
                a.to_hex()
            )
        });
        Ok(())
    }

    /// For an entry with more than one name: links this name to the group's copy when an
    /// earlier name was committed, or takes the duty to copy it. Entries with one name (or
    /// with --no-hard-links) are simply copied.
    fn link_or_claim<'a, 'e>(
        &self,
        st: &Stat,
        at: &At<'a, 'e>,
        old: Option<&Stat>,
    ) -> EntryResult<LinkStep<'a, 'e>> {
        if !self.opts.hard_links || st.nlink < 2 {
            return Ok(LinkStep::Copy(None));
        }
        let links = &at.dir.links;
        let key = (st.dev, st.ino);
        let claim = match at.owner {
            // Only files: the name is claimed again by copy_file.
            Some((dir, publish))
                if old.is_none() && st.kind() == Kind::File && self.room_to_put_off() =>
            {
                let name = PutOff {
                    dir: Arc::clone(dir),
                    _publish: publish.cloned(),
                    name: at.dst_name.to_owned(),
                };
                match links.put_off(key, st.nlink, name) {
                    Claim::PutOff => return Ok(LinkStep::Done),
                    Claim::AllNew(names) => {
                        self.claim_in_order(names);
                        return Ok(LinkStep::Done);
                    }
                    claim => claim,
                }
            }
            _ => links.claim(key, st.nlink),
        };
        match claim {
            Claim::PutOff | Claim::AllNew(_) => unreachable!("only put_off puts names off"),
            Claim::First(first) => Ok(LinkStep::Copy(Some(first))),
            // On another filesystem than the group's copy (one mounted inside DST): a copy of
            // its own there, as cp -a makes.
            Claim::LinkTo(existing) if existing.dev != at.dir.dst_dev => Ok(LinkStep::Copy(None)),
            Claim::LinkTo(existing) => {
                let linked = if old.is_some() && self.policy_in(at.dir).ignore_existing {
                    Ok(false)
                } else {
                    match self.link_file(at, &existing, old) {
                        // A bind mount of the same filesystem: the same device, another mount.
                        Err(e) if e.source.raw_os_error() == Some(libc::EXDEV) => {
                            return Ok(LinkStep::Copy(None));
                        }
                        linked => linked,
                    }
                };
                if linked? {
                    let existing = existing.path();
                    let target = self
                        .dst_root
                        .get()
                        .and_then(|root| existing.strip_prefix(root).ok());
                    let shown = target.map(|t| t.as_os_str().as_bytes()).unwrap_or(b"");
                    let extra = target.map(|_| (" => ", shown));
                    self.rep
                        .itemize(Change::HardLink, st.mode, &at.rel(), extra);
                    self.rep.done_hardlink();
                } else {
                    self.rep.skipped(0);
                }
                Ok(LinkStep::Done)
            }
            Claim::FirstFailed { .. } if crate::signal::received().is_some() => {
                Err(EntryError::interrupted(&at.dst_path()))
            }
            // The same inode: it changed (or went) under this name too.
            Claim::FirstFailed { soft: true } => {
                Err(EntryError::changed_while_copied(&at.src_path()))
            }
            Claim::FirstFailed { soft: false } => Err(EntryError::new(
                "hard link",
                &at.dst_path(),
                io::Error::other("the first name of this hard-linked file was not copied"),
            )),
        }
    }

    /// In a dry run, notes that the run would take a name from the destination inode
    /// (st_dev, st_ino), by deleting or rewriting it.
    fn dry_unlink(&self, inode: (u64, u64)) {
        if self.opts.dry_run {
            *lock_map(&self.dry_unlinked).entry(inode).or_default() += 1;
        }
    }

    /// A destination entry's link count, less the names a dry run would have taken from it
    /// by now (`dry_unlink`).
    fn links_of(&self, old: &Stat) -> u64 {
        if !self.opts.dry_run {
            return old.nlink;
        }
        let unlinked = lock_map(&self.dry_unlinked)
            .get(&(old.dev, old.ino))
            .copied();
        old.nlink.saturating_sub(unlinked.unwrap_or(0))
    }

    /// Takes room for one more put-off name, if there is any.
    fn room_to_put_off(&self) -> bool {
        self.put_off_room
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Settles a group's first name as committed at `target`, then links its put-off names.
    fn committed(&self, first: Group<'_, '_>, target: LinkTarget) {
        self.claim_again(first.committed(target));
    }

    /// Gives the name the inode already committed at `existing`, atomically replacing what
    /// was there. Returns false if it already is that inode (a run over a complete copy).
    fn link_file(&self, at: &At, existing: &LinkTarget, old: Option<&Stat>) -> EntryResult<bool> {
        let (from_dir, from_name) = (&existing.dir, &existing.name);
        if let Some(old) = old
            && !existing.rewritten_by_dry_run
            && let Ok(target) = at_current(from_dir, from_name, sys::lstat_long)
            && (target.dev, target.ino) == (old.dev, old.ino)
        {
            return Ok(false);
        }
        if let Some(old) = old.filter(|o| o.kind() == Kind::Dir) {
            self.clear_directory(at, old)?;
        }
        if self.opts.dry_run {
            return Ok(true);
        }
        let dst = at
            .dir
            .dst()
            .expect("a real run has its destination directory");
        let temp = at_current(from_dir, from_name, |path| {
            TempEntry::hard_link(dst, at.naming(), path)
        })
        .ctx("link", &at.dst_path())?;
        self.commit(temp, at.dst_name, at.dir, &at.dst_path())?;
        Ok(true)
    }

    fn commit(
        &self,
        temp: TempEntry<'_>,
        name: &CStr,
        dir: &DirPair,
        dst_path: &Path,
    ) -> EntryResult<()> {
        let temp_path =
            (self.rep.is_verbose() && !temp.in_place()).then(|| dir.dst_path(temp.name()));
        temp.commit(name, self.opts.fsync)
            .map_err(|CommitError { op, source }| EntryError::new(op, dst_path, source))?;
        if let Some(temp_path) = temp_path {
            self.rep
                .verbose(|| format!("renamed {} -> {}", shown(&temp_path), shown(dst_path)));
        }
        Ok(())
    }

    fn copy_symlink(&self, at: &At, hint: Hint) -> EntryResult<()> {
        let dir = at.dir;
        let st = sys::lstat_at(dir.src.as_fd(), at.src_name).src_ctx("stat", &at.src_path())?;
        if st.kind() != Kind::Symlink {
            return Err(changed_type("stat", at, "a symlink"));
        }
        let old = self.existing(at, hint)?;
        let mut first = match self.link_or_claim(&st, at, old.as_ref())? {
            LinkStep::Done => return Ok(()),
            LinkStep::Copy(first) => first,
        };
        let target =
            sys::readlink_at(dir.src.as_fd(), at.src_name).src_ctx("read link", &at.src_path())?;
        let read_old_target = std::cell::Cell::new(false);
        let same_target = || {
            // A symlink's size is its target's length: only equal sizes need a readlink.
            if old.is_some_and(|o| o.size != st.size) {
                return Ok(false);
            }
            let dst = dir
                .dst()
                .expect("an existing entry has a destination directory");
            let current = sys::readlink_at(dst, at.dst_name).ctx("read link", &at.dst_path())?;
            read_old_target.set(true);
            Ok(current == target)
        };
        let Some(how) = self.settle(at, &st, old, &mut first, same_target)? else {
            if read_old_target.get() && !self.opts.dry_run {
                // readlink may have set the copy's access time to now: put the source's back.
                let dst = dir
                    .dst()
                    .expect("an existing entry has a destination directory");
                sys::lutimens_at(dst, at.dst_name, st.atime, st.mtime)
                    .ctx("set times", &at.dst_path())?;
            }
            return Ok(());
        };
        let change = self.written(&how, &st);
        let shown = Some((" -> ", target.as_bytes()));
        if !self.opts.dry_run {
            let dst = dir.dst().expect("a real run has its destination directory");
            let temp = TempEntry::symlink(dst, at.naming(), &target)
                .ctx("create symlink", &at.dst_path())?;
            let applied = self
                .meta
                .apply_symlink(
                    Node::At(dir.src.as_fd(), at.src_name),
                    temp.dir(),
                    temp.name(),
                    &st,
                )
                .map_err(|e| meta_error(e, &at.src_path(), &at.dst_path()))?;
            self.note(applied, dir.dst_dev, &at.dst_path());
            self.commit(temp, at.dst_name, dir, &at.dst_path())?;
        }
        if let Some(first) = first {
            self.committed(first, at.target());
        }
        self.rep.itemize(change, st.mode, &at.rel(), shown);
        self.rep.done_symlink();
        Ok(())
    }

    /// FIFOs, sockets and device nodes are recreated, never opened: a FIFO would block.
    fn copy_special(&self, at: &At, hint: Hint) -> EntryResult<()> {
        let dir = at.dir;
        let st = sys::lstat_at(dir.src.as_fd(), at.src_name).src_ctx("stat", &at.src_path())?;
        if st.kind() != Kind::Special {
            // Replaced since the listing: a regular file made by mknod would be empty, and as
            // the first of a hard-link group it would empty every other name of the group.
            return Err(changed_type("stat", at, "a FIFO, socket or device"));
        }
        let old = self.existing(at, hint)?;
        let mut first = match self.link_or_claim(&st, at, old.as_ref())? {
            LinkStep::Done => return Ok(()),
            LinkStep::Copy(first) => first,
        };
        let Some(how) = self.settle(at, &st, old, &mut first, || Ok(true))? else {
            return Ok(());
        };
        let change = self.written(&how, &st);
        if !self.opts.dry_run {
            let dst = dir.dst().expect("a real run has its destination directory");
            let temp =
                TempEntry::node(dst, at.naming(), st.mode, st.rdev).ctx("mknod", &at.dst_path())?;
            let applied = self
                .meta
                .apply_node(
                    Node::At(dir.src.as_fd(), at.src_name),
                    temp.dir(),
                    temp.name(),
                    &st,
                    dir.passes_acls,
                )
                .map_err(|e| meta_error(e, &at.src_path(), &at.dst_path()))?;
            self.note(applied, dir.dst_dev, &at.dst_path());
            self.commit(temp, at.dst_name, dir, &at.dst_path())?;
        }
        if let Some(first) = first {
            self.committed(first, at.target());
        }
        self.rep.itemize(change, st.mode, &at.rel(), None);
        self.rep.done_special();
        Ok(())
    }
}

/// One non-directory entry being copied: where it is on both sides. Its paths are built
/// only when needed (a message, an itemized line, a hard link's target): a rerun over a
/// million up-to-date files needs none of them.
struct At<'a, 'e> {
    dir: &'a DirPair<'e>,
    src_name: &'a CStr,
    dst_name: &'a CStr,
    /// What keeps the directory open and unpublished, for a name that may be put off.
    owner: Option<Owner<'a, 'e>>,
}

/// The shares of a directory (and of its publication, if staged) an entry's task holds.
type Owner<'a, 'e> = (&'a Arc<DirPair<'e>>, Option<&'a Arc<Publish<'e>>>);

impl At<'_, '_> {
    fn src_path(&self) -> PathBuf {
        self.dir.src_path(self.src_name)
    }

    fn dst_path(&self) -> PathBuf {
        self.dir.dst_path(self.dst_name)
    }

    fn rel(&self) -> PathBuf {
        self.dir.rel(self.dst_name)
    }

    /// What the entry is created as: under its final name in a staged directory, else under a
    /// temp name.
    fn naming(&self) -> Naming<'_> {
        if self.dir.hidden && !self.dir.adopted {
            Naming::Final(self.dst_name)
        } else {
            Naming::Temp
        }
    }

    /// Where the entry is, for later names of its hard-link group.
    fn target(&self) -> LinkTarget {
        LinkTarget {
            dir: Arc::clone(&self.dir.dst_loc),
            name: self.dst_name.to_owned(),
            dev: self.dir.dst_dev,
            rewritten_by_dry_run: false,
        }
    }
}

/// What to do with a name that may share its inode with others.
enum LinkStep<'a, 'e> {
    /// Linked to the group's copy (or already was): done.
    Done,
    /// Copy it; with the group's duty when it has other names.
    Copy(Option<Group<'a, 'e>>),
}

/// The bytes a copy of the file is expected to move: its size, or for a sparse file (fewer
/// blocks allocated than its size needs) what is allocated, its data. No blocks at all says
/// nothing (pseudo-files, FUSE filesystems that report none): the size.
fn data_bytes(st: &Stat) -> u64 {
    match st.blocks {
        0 => st.size,
        blocks => st.size.min(blocks.saturating_mul(512)),
    }
}

fn file_size(st: &Stat) -> u64 {
    if st.kind() == Kind::File { st.size } else { 0 }
}

fn lock_map<K, V>(map: &Mutex<HashMap<K, V>>) -> std::sync::MutexGuard<'_, HashMap<K, V>> {
    map.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock(mutex: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes the create lock. A create holds it for about 9 us. A waiter that the mutex puts to
/// sleep is woken by the release but must then wait for a CPU, and meanwhile the lock stands
/// free: on W1 (ext4) it was held 45% of the time while, on average, two of four workers
/// waited for it. So a waiter polls it first, spinning briefly and then yielding its CPU to
/// the holder or to workers with other work, and sleeps only after that (W1 1.3-1.45 s
/// against 1.85-2.5 s; docs/design.md).
fn lock_create(mutex: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    const SPINS: u32 = 200;
    // A yield costs a system call (1-5 us here), so this bounds the polling at a few ms.
    const YIELDS: u32 = 1000;
    for round in 0..SPINS + YIELDS {
        match mutex.try_lock() {
            Ok(guard) => return guard,
            Err(TryLockError::Poisoned(e)) => return e.into_inner(),
            Err(TryLockError::WouldBlock) if round < SPINS => std::hint::spin_loop(),
            Err(TryLockError::WouldBlock) => std::thread::yield_now(),
        }
    }
    lock(mutex)
}

/// A source entry found to be of another type than its listing said: it was replaced during
/// the run. Failed, not guessed at; the next run copies it as what it then is.
fn changed_type(op: &'static str, at: &At, was: &str) -> EntryError {
    EntryError::of_source(
        op,
        &at.src_path(),
        io::Error::other(format!("changed type during the copy; no longer {was}")),
    )
}

/// A metadata step's error, naming the side it failed on.
fn meta_error(e: MetaError, src_path: &Path, dst_path: &Path) -> EntryError {
    if e.of_source {
        EntryError::of_source(e.op, src_path, e.source)
    } else {
        EntryError::new(e.op, dst_path, e.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_create_lock_excludes_and_survives_a_poisoned_holder() {
        let mutex = Mutex::new(());
        let inside = AtomicBool::new(false);
        let entered = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..2000 {
                        let _guard = lock_create(&mutex);
                        assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                        entered.fetch_add(1, Ordering::Relaxed);
                        inside.store(false, Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(entered.load(Ordering::Relaxed), 16_000);
        // A worker that panicked while creating must not stop the others from creating.
        let _ = std::thread::scope(|s| {
            s.spawn(|| {
                let _guard = lock_create(&mutex);
                panic!("a create panicked");
            })
            .join()
        });
        assert!(mutex.is_poisoned());
        drop(lock_create(&mutex));
    }
}
