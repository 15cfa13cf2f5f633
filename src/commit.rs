//! The commit protocol: every entry is created under a unique temp name in its destination
//! directory and renamed over its final name only once it is complete, or, inside a new
//! directory that is itself still staged under a temp name, created under its final name there
//! (nothing under the directory's final path can be seen before the directory is renamed).
//! Finalising returns a Result; `Drop` only removes what was not committed, so no failure can
//! leave a half-written entry under a final name.

use crate::sys::{self, Kind};
use nix::errno::Errno;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Every temp name starts with this, followed by `<pid>.<sequence>`, so later runs can tell
/// leftovers of a killed run from entries of the tree.
pub const TEMP_PREFIX: &str = ".treecopy-tmp.";

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Set when an uncommitted entry under its final name in a staged directory could be neither
/// removed nor moved to a temp name: from then on no staged directory is published, since one
/// of them holds an incomplete entry under a final name. They stay hidden; the next run
/// resumes them.
static STUCK_IN_STAGED: AtomicBool = AtomicBool::new(false);

/// Whether staged directories must stay unpublished (see STUCK_IN_STAGED).
pub fn staged_entry_stuck() -> bool {
    STUCK_IN_STAGED.load(Ordering::Relaxed)
}

/// Our pid, asked once: it is part of every temp name, and getpid is a syscall per file.
fn pid() -> u32 {
    static PID: OnceLock<u32> = OnceLock::new();
    *PID.get_or_init(std::process::id)
}

pub fn next_temp_name() -> CString {
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    CString::new(format!("{TEMP_PREFIX}{}.{seq}", pid())).expect("temp names hold no NUL")
}

/// What an entry is created as.
#[derive(Clone, Copy)]
pub enum Naming<'n> {
    /// A fresh temp name, renamed over the final name on commit.
    Temp,
    /// The final name itself, in a directory still staged under a temp name: commit only
    /// closes it. The name must be free (it is created exclusively).
    Final(&'n CStr),
}

/// An entry under its temp name (or under its final name in a staged directory). Commit
/// renames it (or only closes it); dropping it uncommitted removes it.
pub struct TempEntry<'d> {
    dir: BorrowedFd<'d>,
    name: CString,
    fd: Option<OwnedFd>,
    in_place: bool,
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
        naming: Naming<'_>,
        mut make: impl FnMut(&CStr) -> io::Result<Option<OwnedFd>>,
    ) -> io::Result<Self> {
        if let Naming::Final(name) = naming {
            let fd = make(name)?;
            return Ok(TempEntry {
                dir,
                name: name.to_owned(),
                fd,
                in_place: true,
                committed: false,
            });
        }
        loop {
            let name = next_temp_name();
            match make(&name) {
                Ok(fd) => {
                    return Ok(TempEntry {
                        dir,
                        name,
                        fd,
                        in_place: false,
                        committed: false,
                    });
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// A new empty regular file (O_CREAT|O_EXCL|O_NOFOLLOW, with `mode` under the umask),
    /// open for writing; with `direct`, also O_DIRECT.
    pub fn file(
        dir: BorrowedFd<'d>,
        naming: Naming<'_>,
        mode: u32,
        direct: bool,
    ) -> io::Result<Self> {
        Self::create_with(dir, naming, |name| {
            sys::create_exclusive(dir, name, mode, direct).map(Some)
        })
    }

    pub fn symlink(dir: BorrowedFd<'d>, naming: Naming<'_>, target: &OsStr) -> io::Result<Self> {
        Self::create_with(dir, naming, |name| {
            sys::symlink_at(target, dir, name).map(|()| None)
        })
    }

    /// A new name for the existing file at `existing` (a hard link).
    pub fn hard_link(dir: BorrowedFd<'d>, naming: Naming<'_>, existing: &Path) -> io::Result<Self> {
        Self::create_with(dir, naming, |name| {
            sys::link_at(existing, dir, name).map(|()| None)
        })
    }

    /// A FIFO, socket or device node with the type bits of `mode`.
    pub fn node(dir: BorrowedFd<'d>, naming: Naming<'_>, mode: u32, rdev: u64) -> io::Result<Self> {
        Self::create_with(dir, naming, |name| {
            sys::mknod_at(dir, name, mode, rdev).map(|()| None)
        })
    }

    /// The entry is under its final name already (in a staged directory).
    pub fn in_place(&self) -> bool {
        self.in_place
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
        if !self.in_place {
            sys::rename_at(self.dir, &self.name, final_name).map_err(|source| CommitError {
                op: "rename",
                source,
            })?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for TempEntry<'_> {
    fn drop(&mut self) {
        self.fd.take();
        if self.committed || sys::unlink_at(self.dir, &self.name).is_ok() {
            return;
        }
        // A temp name that cannot be removed is a leftover the next run removes. A final name
        // in a staged directory must not stay: move it to a temp name, or else keep every
        // staged directory hidden.
        if self.in_place
            && sys::rename_noreplace(self.dir, &self.name, self.dir, &next_temp_name()).is_err()
        {
            STUCK_IN_STAGED.store(true, Ordering::Relaxed);
        }
    }
}

/// The pid a temp name was made by, if `name` is one of ours.
pub fn temp_owner(name: &[u8]) -> Option<i32> {
    parse_temp(name).map(|(pid, _)| pid)
}

/// The longest final name a staged directory's temp name carries as it is: NAME_MAX less the
/// longest rest of a temp name (the prefix, a pid of up to 7 digits, a sequence number of up
/// to 20, and two separators). A longer one is carried as a hash.
const CARRIED_NAME_MAX: usize = 255 - TEMP_PREFIX.len() - 7 - 20 - 2;

/// What a staged directory's temp name says of its final name, by which a later run finds the
/// killed run's copy of a directory to resume: the name, or, for one too long to carry, the
/// first 16 bytes of its BLAKE3 hash.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StagedFor {
    Name(Vec<u8>),
    Hash([u8; 16]),
}

impl StagedFor {
    pub fn of(final_name: &[u8]) -> Self {
        if final_name.len() <= CARRIED_NAME_MAX {
            return StagedFor::Name(final_name.to_vec());
        }
        let mut first = [0; 16];
        first.copy_from_slice(&blake3::hash(final_name).as_bytes()[..16]);
        StagedFor::Hash(first)
    }

    /// Whether `final_name` is the name this stands for.
    pub fn is(&self, final_name: &[u8]) -> bool {
        match self {
            StagedFor::Name(name) => name == final_name,
            StagedFor::Hash(_) => {
                final_name.len() > CARRIED_NAME_MAX && Self::of(final_name) == *self
            }
        }
    }
}

/// The final name a staged directory's temp name stands for, if it carries one.
pub fn staged_for(name: &[u8]) -> Option<StagedFor> {
    parse_temp(name).and_then(|(_, staged)| staged)
}

/// `<prefix><pid>.<seq>`; for a staged directory `<prefix><pid>.<seq>.<final name>`, or
/// `<prefix><pid>.<seq>#<32 hex digits>` where the final name is too long to carry.
fn parse_temp(name: &[u8]) -> Option<(i32, Option<StagedFor>)> {
    let rest = name.strip_prefix(TEMP_PREFIX.as_bytes())?;
    let dot = rest.iter().position(|&b| b == b'.')?;
    let (pid, rest) = (&rest[..dot], &rest[dot + 1..]);
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let staged = match &rest[digits..] {
        [] => None,
        [b'.', final_name @ ..] if !final_name.is_empty() => {
            Some(StagedFor::Name(final_name.to_vec()))
        }
        [b'#', hex @ ..] => Some(StagedFor::Hash(from_hex(hex)?)),
        _ => return None,
    };
    Some((std::str::from_utf8(pid).ok()?.parse().ok()?, staged))
}

fn from_hex(hex: &[u8]) -> Option<[u8; 16]> {
    if hex.len() != 32 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut bytes = [0; 16];
    for (byte, pair) in bytes.iter_mut().zip(hex.chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(bytes)
}

/// A fresh temp name for a directory that will be `final_name`, carrying that name (or its
/// hash), so that a later run can resume it if this one is killed.
fn next_staged_name(final_name: &CStr) -> CString {
    let mut bytes = next_temp_name().into_bytes();
    match StagedFor::of(final_name.to_bytes()) {
        StagedFor::Name(name) => {
            bytes.push(b'.');
            bytes.extend_from_slice(&name);
        }
        StagedFor::Hash(hash) => {
            bytes.push(b'#');
            for byte in hash {
                bytes.extend_from_slice(format!("{byte:02x}").as_bytes());
            }
        }
    }
    debug_assert!(bytes.len() <= 255);
    CString::new(bytes).expect("names hold no NUL")
}

/// Creates a new directory (mode 0700) under a fresh temp name in `dir`, returning the name.
/// Its contents are then created under their final names, and the directory is renamed to its
/// own final name once they are complete (see `Location`).
pub fn staged_dir(dir: BorrowedFd<'_>, final_name: &CStr) -> io::Result<CString> {
    with_staged_name(final_name, |name| sys::mkdir_at(dir, name, 0o700))
}

/// Runs `make` with fresh staged names for `final_name` until one is free (EEXIST: taken by
/// a leftover of an earlier process with our pid); returns the name it took.
fn with_staged_name(
    final_name: &CStr,
    make: impl Fn(&CStr) -> io::Result<()>,
) -> io::Result<CString> {
    loop {
        let name = next_staged_name(final_name);
        match make(&name) {
            Ok(()) => return Ok(name),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Takes over `leftover`, a killed run's staged directory for `final_name` in `dir`, by
/// renaming it to a fresh staged name of this run. Returns the new name.
pub fn adopt_staged(
    dir: BorrowedFd<'_>,
    leftover: &CStr,
    final_name: &CStr,
) -> io::Result<CString> {
    with_staged_name(final_name, |name| {
        sys::rename_noreplace(dir, leftover, dir, name)
    })
}

/// Where a destination directory is on disk. Messages name its final path; a hard link to a
/// file inside needs where it is now, which differs while it (or an ancestor) is still staged
/// under a temp name.
pub struct Location {
    parent: Option<Arc<Location>>,
    path: PathBuf,
    /// The temp name the directory has until it is published.
    staged: Mutex<Option<CString>>,
    /// Its publication failed and the staged directory was removed: nothing is left to finish.
    abandoned: AtomicBool,
}

impl Location {
    pub fn root(path: &Path) -> Arc<Self> {
        Arc::new(Location {
            parent: None,
            path: path.to_path_buf(),
            staged: Mutex::new(None),
            abandoned: AtomicBool::new(false),
        })
    }

    pub fn child(parent: &Arc<Location>, name: &CStr, staged: Option<CString>) -> Arc<Self> {
        Arc::new(Location {
            parent: Some(Arc::clone(parent)),
            path: parent.path.join(OsStr::from_bytes(name.to_bytes())),
            staged: Mutex::new(staged),
            abandoned: AtomicBool::new(false),
        })
    }

    /// The final path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path it has now. A loop, not recursion: trees may be 10,000 levels deep.
    pub fn current(&self) -> PathBuf {
        let mut names = Vec::new();
        let mut at = self;
        while let Some(parent) = &at.parent {
            let staged = at.staged.lock().unwrap_or_else(|e| e.into_inner());
            names.push(match &*staged {
                Some(temp) => temp.as_bytes().to_vec(),
                None => at.path.file_name().unwrap_or_default().as_bytes().to_vec(),
            });
            at = parent;
        }
        let mut path = at.path.clone();
        for name in names.iter().rev() {
            path.push(OsStr::from_bytes(name));
        }
        path
    }

    /// Renames the staged directory to its final name in `parent_dir` (its parent's handle),
    /// never over something of that name that appeared meanwhile (EEXIST, or on NFS ENOTEMPTY
    /// and ENOTDIR). Readers of `current` wait for the rename, so they never see the old name
    /// after it.
    ///
    /// Where the name was taken, `merge(temp, final)` moves the entries into what is there;
    /// the directory then counts as published (its entries live under the final path, or
    /// failed by name), and readers of `current` wait for the merge as for the rename.
    pub fn publish(
        &self,
        parent_dir: BorrowedFd<'_>,
        merge: impl FnOnce(&CStr, &CStr),
    ) -> io::Result<()> {
        let mut staged = self.staged.lock().unwrap_or_else(|e| e.into_inner());
        let (Some(temp), Some(name)) = (&*staged, self.path.file_name()) else {
            return Ok(());
        };
        let name = sys::cstring(name)?;
        match sys::rename_noreplace(parent_dir, temp, parent_dir, &name) {
            Ok(()) => {}
            Err(e)
                if e.raw_os_error().is_some_and(|n| {
                    [libc::EEXIST, libc::ENOTEMPTY, libc::ENOTDIR].contains(&n)
                }) =>
            {
                merge(temp, &name)
            }
            Err(e) => return Err(e),
        }
        *staged = None;
        Ok(())
    }

    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }

    pub fn is_abandoned(&self) -> bool {
        self.abandoned.load(Ordering::Relaxed)
    }

    /// The temp name, while the directory is staged.
    pub fn staged_name(&self) -> Option<CString> {
        self.staged
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Location {
    /// Frees the chain of ancestors this was the last holder of in a loop: a hard-link target
    /// 10,000 levels deep must not recurse through 10,000 drops.
    fn drop(&mut self) {
        let mut parent = self.parent.take();
        while let Some(loc) = parent.and_then(Arc::into_inner) {
            let mut loc = loc;
            parent = loc.parent.take();
        }
    }
}

/// Runs `op` on the current path of `name` in `dir`, again if it failed with ENOENT because a
/// staged ancestor was published meanwhile (each is renamed once, so this ends).
pub fn at_current<T>(
    dir: &Location,
    name: &CStr,
    op: impl Fn(&Path) -> io::Result<T>,
) -> io::Result<T> {
    let mut path = dir.current().join(OsStr::from_bytes(name.to_bytes()));
    loop {
        match op(&path) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let now = dir.current().join(OsStr::from_bytes(name.to_bytes()));
                if now == path {
                    return Err(e);
                }
                path = now;
            }
            result => return result,
        }
    }
}

/// What a destination directory's listing holds of killed runs.
#[derive(Default)]
pub struct Stale {
    /// Temp files, symlinks and nodes, removed.
    pub removed: Vec<CString>,
    /// Staged directories (ours, still 0700), for the caller to resume or remove with their
    /// contents.
    pub dirs: Vec<CString>,
    /// Directories that bear the temp-name pattern but are not ours with mode 0700: not
    /// something this program staged, so left alone.
    pub foreign: Vec<CString>,
}

/// Removes temp entries left in `dir` by runs that no longer exist (or by an earlier process
/// with our own pid: this run has not created anything in `dir` yet), and names their staged
/// directories. A live other run's temp entries are left alone.
pub fn remove_stale(dir: BorrowedFd<'_>, listing: &[(CString, Option<Kind>)]) -> Stale {
    let me = pid() as i32;
    let euid = nix::unistd::geteuid().as_raw();
    let mut stale = Stale::default();
    let staged = |stale: &mut Stale, name: &CString| match sys::lstat_at(dir, name.as_c_str()) {
        Ok(st) if st.uid == euid && st.perm() == 0o700 => stale.dirs.push(name.clone()),
        _ => stale.foreign.push(name.clone()),
    };
    for (name, kind) in listing {
        let Some(pid) = temp_owner(name.to_bytes()) else {
            continue;
        };
        if pid != me && sys::process_alive(pid) && sys::may_be_treecopy(pid) {
            continue;
        }
        if matches!(kind, Some(Kind::Dir)) {
            staged(&mut stale, name);
            continue;
        }
        match sys::unlink_at(dir, name) {
            Ok(()) => stale.removed.push(name.clone()),
            Err(e) if e.raw_os_error() == Some(Errno::ENOENT as i32) => {
                stale.removed.push(name.clone())
            }
            // A filesystem without d_type: the listing did not say it is a directory.
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => staged(&mut stale, name),
            Err(_) => {}
        }
    }
    stale
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
        assert_eq!(temp_owner(b".treecopy-tmp.123.7.fields"), Some(123));
        assert_eq!(
            staged_for(b".treecopy-tmp.123.7.fields.2026"),
            Some(StagedFor::Name(b"fields.2026".to_vec()))
        );
        assert_eq!(staged_for(b".treecopy-tmp.123.7"), None);
        assert_eq!(staged_for(b".treecopy-tmp.123.7."), None);
        assert_eq!(temp_owner(b".treecopy-tmp.123.7#00"), None);
        let signed = format!(".treecopy-tmp.123.7#+f{}", "0".repeat(30));
        assert_eq!(temp_owner(signed.as_bytes()), None);
        assert_eq!(temp_owner(b".treecopy-tmp.123.x.fields"), None);
        let longest = vec![b'n'; CARRIED_NAME_MAX];
        let longest_name = next_staged_name(&CString::new(longest.clone()).unwrap());
        assert!(StagedFor::of(&longest).is(&longest));
        assert_eq!(
            staged_for(longest_name.as_bytes()),
            Some(StagedFor::of(&longest))
        );
        for len in [CARRIED_NAME_MAX + 1, 255] {
            let long = vec![b'n'; len];
            let staged = next_staged_name(&CString::new(long.clone()).unwrap());
            assert!(staged.as_bytes().len() < 100, "{staged:?}");
            let key = staged_for(staged.as_bytes()).expect("carries a hash");
            assert!(matches!(key, StagedFor::Hash(_)));
            assert!(key.is(&long));
            assert!(!key.is(&vec![b'm'; len]));
        }
        let short = next_staged_name(c"2026");
        assert_eq!(
            staged_for(short.as_bytes()),
            Some(StagedFor::Name(b"2026".to_vec()))
        );
        assert_eq!(
            temp_owner(short.as_bytes()),
            Some(std::process::id() as i32)
        );
    }

    #[test]
    fn a_path_into_a_staged_directory_follows_its_publication() {
        let tmp = tempfile::tempdir().unwrap();
        let root_fd = sys::open_dir_path(tmp.path()).unwrap();
        let root = Location::root(tmp.path());
        let temp = staged_dir(root_fd.as_fd(), c"fields").unwrap();
        let loc = Location::child(&root, c"fields", Some(temp.clone()));
        assert_eq!(loc.path(), tmp.path().join("fields"));
        assert_eq!(
            loc.current(),
            tmp.path().join(OsStr::from_bytes(temp.to_bytes()))
        );
        let dir = sys::open_dir(root_fd.as_fd(), temp.as_c_str()).unwrap();
        let file = TempEntry::file(dir.as_fd(), Naming::Final(c"a.grib"), 0o600, false).unwrap();
        assert!(file.in_place());
        file.commit(c"a.grib", false).map_err(|e| e.source).unwrap();
        // The directory is published between the path's resolution and its use: the
        // operation fails on the old path and is retried on the new one.
        let calls = std::cell::Cell::new(0);
        let st = at_current(&loc, c"a.grib", |path| {
            calls.set(calls.get() + 1);
            if calls.get() == 1 {
                loc.publish(root_fd.as_fd(), |_, _| panic!("the final name is free"))?;
            }
            sys::lstat_long(path)
        })
        .unwrap();
        assert_eq!(calls.get(), 2);
        assert_eq!(st.kind(), Kind::File);
        assert_eq!(loc.current(), tmp.path().join("fields"));
        assert!(tmp.path().join("fields/a.grib").exists());
        // A name that is really missing fails once the path stops changing.
        let missing = at_current(&loc, c"b.grib", sys::lstat_long);
        assert_eq!(
            missing.err().and_then(|e| e.raw_os_error()),
            Some(libc::ENOENT)
        );
    }

    #[test]
    fn a_deep_location_is_resolved_and_freed_without_recursion() {
        // 5,000 levels on a 64 KiB stack: recursion would need several hundred KiB.
        let levels = 5_000;
        let worker = std::thread::Builder::new().stack_size(64 << 10);
        let handle = worker.spawn(move || {
            let root = Location::root(Path::new("/d"));
            let mut loc = Arc::clone(&root);
            for _ in 0..levels {
                loc = Location::child(&loc, c"a", None);
            }
            let deep = Location::child(&loc, c"b", Some(c".treecopy-tmp.1.2".to_owned()));
            drop(loc);
            let current = deep.current();
            assert_eq!(current.components().count(), levels + 3);
            assert!(current.ends_with("a/a/.treecopy-tmp.1.2"));
            assert!(deep.path().ends_with("a/a/b"));
            drop(deep);
            Arc::strong_count(&root)
        });
        assert_eq!(handle.unwrap().join().unwrap(), 1);
    }

    #[test]
    fn an_uncommitted_entry_under_its_final_name_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = sys::open_dir_path(tmp.path()).unwrap();
        let file = TempEntry::file(dir.as_fd(), Naming::Final(c"half.grib"), 0o600, false).unwrap();
        assert!(tmp.path().join("half.grib").exists());
        drop(file);
        assert!(!tmp.path().join("half.grib").exists());
        // The final name is created exclusively: what is there is never written through.
        fs_write(&tmp.path().join("taken"));
        let taken = TempEntry::file(dir.as_fd(), Naming::Final(c"taken"), 0o600, false);
        assert_eq!(
            taken.err().and_then(|e| e.raw_os_error()),
            Some(libc::EEXIST)
        );
        assert!(tmp.path().join("taken").exists());
    }

    fn fs_write(path: &Path) {
        std::fs::write(path, b"x").unwrap();
    }
}
